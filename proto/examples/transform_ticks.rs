//! Runs the transform benches' scenes for a fixed number of ticks, for instruction counts under
//! callgrind (steady under load, unlike wall time). Only `timed` is the measured section:
//!
//! ```text
//! cargo build --release -p neonet-proto --example transform_ticks
//! valgrind --tool=callgrind --toggle-collect='transform_ticks::timed' \
//!     target/release/examples/transform_ticks client100 200
//! ```
//! Instructions per tick = the reported `Ir` / ticks. Run natively it prints the wall time per
//! measured tick (noisy on a loaded machine: compare builds by alternating runs). Scenes: `client100`, `client1000`
//! (one client, crowd at the origin), `server` (100 clients × 1,000 entities after the bench's
//! 10 warm-up ticks: still mostly first contacts) and `server-steady` (after 60).

use std::hint::black_box;

use neonet_proto::time::{Tick, Time};
use neonet_proto::transform::scenario::CrowdSamples;
use neonet_proto::transform::{AckHeader, ClientReplicator, Seq, TickInput, TransformConfig};
use neonet_proto::types::Vec3;

const TICK_US: u64 = 33_333;
const MAX_DATAGRAM: usize = 1162;

type World = CrowdSamples;

/// The measured ticks.
#[inline(never)]
fn timed(
    servers: &mut [ClientReplicator],
    world: &World,
    tick: u64,
    viewer: impl Fn(usize) -> Option<Vec3>,
    out: &mut Vec<Vec<u8>>,
) -> usize {
    run(servers, world, tick, viewer, out)
}

/// The warm-up ticks (not measured).
#[inline(never)]
fn warm(
    servers: &mut [ClientReplicator],
    world: &World,
    tick: u64,
    viewer: impl Fn(usize) -> Option<Vec3>,
    out: &mut Vec<Vec<u8>>,
) -> usize {
    run(servers, world, tick, viewer, out)
}

#[inline(always)]
fn run(
    servers: &mut [ClientReplicator],
    world: &World,
    tick: u64,
    viewer: impl Fn(usize) -> Option<Vec3>,
    out: &mut Vec<Vec<u8>>,
) -> usize {
    let mut bytes = 0;
    for (i, server) in servers.iter_mut().enumerate() {
        out.clear();
        let input = TickInput {
            tick: Tick(tick),
            now: Time(tick * TICK_US),
            viewer: viewer(i),
            entities: &world.samples,
            max_datagram_size: MAX_DATAGRAM,
            own_blob: None,
        };
        bytes += black_box(server.write_tick(&input, out).expect("valid input")).bytes;
        if let Some(last) = out.last() {
            let ack = AckHeader {
                latest: Seq(u16::from_le_bytes([last[1], last[2]])),
                received: u64::MAX,
            };
            server.handle_ack(&ack, Time(tick * TICK_US));
        }
    }
    bytes
}

fn main() {
    let mut args = std::env::args().skip(1);
    let scene = args.next().unwrap_or_else(|| "client100".into());
    let ticks: u64 = args.next().map_or(200, |s| s.parse().expect("ticks"));
    let (entities, clients, warmup) = match scene.as_str() {
        "client100" => (100, 1, 30),
        "client1000" => (1000, 1, 30),
        "server" => (1000, 100, 10),
        "server-steady" => (1000, 100, 60),
        _ => panic!("scene: client100 | client1000 | server | server-steady"),
    };
    let mut world = World::new(entities);
    let mut servers: Vec<ClientReplicator> = (0..clients)
        .map(|_| ClientReplicator::new(TransformConfig::default(), None).expect("config"))
        .collect();
    let server_scene = clients > 1;
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut spent = std::time::Duration::ZERO;
    for tick in 0..warmup + ticks {
        world.step();
        let w = &world;
        let viewer = |c: usize| {
            if server_scene {
                Some(w.samples[c * 10].position)
            } else {
                Some(Vec3::ZERO)
            }
        };
        if tick >= warmup {
            let start = std::time::Instant::now();
            bytes += timed(&mut servers, w, tick, viewer, &mut out);
            spent += start.elapsed();
        } else {
            warm(&mut servers, w, tick, viewer, &mut out);
        }
    }
    println!(
        "{scene}: {ticks} ticks, {bytes} bytes, {:.2} µs per tick",
        spent.as_secs_f64() * 1e6 / ticks as f64
    );
}
