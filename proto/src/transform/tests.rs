//! Behaviour tests of the transform stream: replicator and receiver together.

use super::scenario::{bench_run, BenchParams};

#[test]
fn bench_runner_small_cubes_and_crowd() {
    let mut p = BenchParams::cubes();
    p.seconds = 5.0;
    let r = bench_run(&p);
    eprintln!("{r:#?}");
    let mut p = BenchParams::crowd();
    p.seconds = 5.0;
    let r = bench_run(&p);
    eprintln!("{r:#?}");
}

/// The target runs at full length: `cargo test -p neonet-proto --release -- --ignored
/// --nocapture target_figures`.
#[test]
#[ignore]
fn target_figures() {
    for (name, mut p) in [
        ("cubes 0% loss", BenchParams::cubes()),
        ("cubes 5% loss", BenchParams { loss: 0.05, ..BenchParams::cubes() }),
        ("crowd", BenchParams::crowd()),
    ] {
        p.seconds = 60.0;
        let r = bench_run(&p);
        eprintln!("{name}: {r:#?}");
    }
}
