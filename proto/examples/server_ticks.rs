//! Whole `ServerCore` ticks for many joined clients, each within interest of about 100 moving
//! players, with every client's acks coming back as a real client's would (two ticks later,
//! through `handle_datagram`): the relay core's per-client tick work, deterministic, for
//! instruction counts under callgrind (the world: [`CoreCrowd`]). The measured sections are the
//! core's own calls, `core_datagram` and `core_timeout`, after the warm-up ticks:
//!
//! ```text
//! cargo build --profile profiling -p neonet-proto --example server_ticks
//! valgrind --tool=callgrind --toggle-collect='server_ticks::core_*' \
//!     target/profiling/examples/server_ticks 1000 20
//! ```
//!
//! Instructions per client-tick = the reported `Ir` / (clients × ticks). The run prints the
//! entity updates per client-tick and a digest of every byte sent, which must not change when
//! only the speed of the code changes.

use std::hint::black_box;

use neonet_proto::server::{ConnId, ServerCore};
use neonet_proto::time::Time;
use neonet_proto::transform::scenario::CoreCrowd;

/// Warm-up ticks before the measured ones: joins settled, baselines acknowledged.
const WARMUP_TICKS: u64 = 20;

/// The core's work on a client datagram, measured (the bench's own work around it is not).
#[inline(never)]
fn core_datagram(core: &mut ServerCore, conn: ConnId, data: &[u8], now: Time) {
    core.handle_datagram(conn, data, now);
}

/// The core's tick, measured.
#[inline(never)]
fn core_timeout(core: &mut ServerCore, now: Time) {
    core.handle_timeout(now);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let clients: usize = args.next().map_or(1000, |s| s.parse().expect("clients"));
    let ticks: u64 = args.next().map_or(30, |s| s.parse().expect("ticks"));
    let mut crowd = CoreCrowd::new(clients);
    for _ in 0..WARMUP_TICKS {
        crowd.tick();
    }
    crowd.reset_updates();
    let start = std::time::Instant::now();
    for _ in 0..ticks {
        black_box(&mut crowd).tick_via(core_datagram, core_timeout);
    }
    let spent = start.elapsed();
    let client_ticks = (clients as u64 * ticks) as f64;
    println!(
        "{clients} clients, {ticks} ticks: {:.1} entity updates per client-tick, digest {:016x}, {:.2} µs per client-tick (wall, noisy)",
        crowd.updates() as f64 / client_ticks,
        crowd.digest(),
        spent.as_secs_f64() * 1e6 / client_ticks,
    );
}
