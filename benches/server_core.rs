//! The relay core's per-client tick cost: a whole `ServerCore` tick of 1,000 joined clients,
//! each within interest of about 100 walking players, with every client's acks arriving
//! through `handle_datagram` as a real client's would ([`CoreCrowd`]). Criterion reports the
//! time per client-tick (one element = one client's datagram handled and its tick written);
//! the players' moves and the clients' ack encoding are inside the timed section too (a small
//! share). For repeatable figures on a loaded machine count instructions instead:
//! `proto/examples/server_ticks.rs` under callgrind.
//!
//! Run: `cargo bench --bench server_core` (add `-- --quick` for a short run).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use neonet_proto::transform::scenario::CoreCrowd;

fn bench_core_crowd(c: &mut Criterion) {
    let mut crowd = CoreCrowd::new(1000);
    // Joins settled, baselines acknowledged: the steady state of walking players.
    for _ in 0..20 {
        crowd.tick();
    }
    crowd.reset_updates();
    for _ in 0..10 {
        crowd.tick();
    }
    println!(
        "server_core/1000_clients_100_visible: {:.1} entity updates per client-tick",
        crowd.updates() as f64 / (10 * crowd.clients()) as f64
    );
    let mut group = c.benchmark_group("server_core");
    group.sample_size(10);
    group.throughput(Throughput::Elements(crowd.clients() as u64));
    group.bench_function("1000_clients_100_visible", |b| b.iter(|| crowd.tick()));
    group.finish();
}

criterion_group!(benches, bench_core_crowd);
criterion_main!(benches);
