//! The load tool as a process: `neonet-load sim` for both scenarios and a short
//! `neonet-load run --spawn-relay`, checking the reports they print.

use std::process::Command;

use serde_json::Value;

fn load_tool() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_neonet-load"));
    cmd.arg("--log").arg("warn");
    cmd
}

fn number(v: &Value, key: &str) -> f64 {
    v.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("`{key}` missing or not a number in {v:#}"))
}

fn sim(args: &[&str]) -> Value {
    let out = load_tool()
        .arg("sim")
        .args(args)
        .arg("--json")
        .output()
        .expect("running neonet-load sim");
    assert!(
        out.status.success(),
        "neonet-load sim {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("sim --json prints JSON")
}

#[test]
fn sim_cubes_reports_bandwidth() {
    let v = sim(&[
        "--scenario",
        "cubes",
        "--seconds",
        "3",
        "--loss",
        "0.05",
        "--rtt-ms",
        "100",
        "--seed",
        "3",
    ]);
    assert_eq!(v["scenario"], "cubes");
    assert_eq!(
        number(&v, "entities"),
        901.0,
        "cubes default to Fiedler's 901"
    );
    assert_eq!(number(&v, "hz"), 60.0, "cubes default to 60 Hz");
    let kbps = number(&v, "kbps_per_client");
    assert!(kbps > 1.0 && kbps < 5_000.0, "kbps_per_client {kbps}");
    let bytes = number(&v, "bytes_per_entity_update");
    let baseline = number(&v, "baseline_bytes_per_entity_update");
    assert!(
        bytes > 0.0 && bytes < baseline,
        "{bytes} B vs baseline {baseline} B"
    );
    assert!(number(&v, "updates_per_s") > 0.0);
    assert_eq!(number(&v["network"], "loss"), 0.05);
    assert_eq!(number(&v["network"], "rtt_ms"), 100.0);
    assert_eq!(number(&v["network"], "jitter_ms"), 0.0);
    assert!(
        v.get("prediction_error_p99_m").is_none(),
        "prediction figures are for crowd only"
    );
}

#[test]
fn sim_crowd_reports_prediction_and_interpolation() {
    let v = sim(&[
        "--scenario",
        "crowd",
        "--entities",
        "30",
        "--seconds",
        "3",
        "--rtt-ms",
        "100",
        "--jitter-ms",
        "20",
        "--loss",
        "0.05",
    ]);
    assert_eq!(v["scenario"], "crowd");
    assert_eq!(number(&v, "hz"), 30.0, "crowd defaults to 30 Hz");
    assert!(number(&v, "bytes_per_entity_update") > 0.0);
    assert!(number(&v, "baseline_bytes_per_entity_update") > 0.0);
    assert!(number(&v, "kbps_per_client") > 0.0);
    assert_eq!(number(&v["network"], "jitter_ms"), 20.0);
    assert!(number(&v, "prediction_corrections_per_s") >= 0.0);
    let err = number(&v, "prediction_error_p99_m");
    assert!((0.0..10.0).contains(&err), "prediction_error_p99_m {err}");
    let delay = number(&v, "interpolation_delay_ms");
    assert!(
        delay > 0.0 && delay < 1_000.0,
        "interpolation_delay_ms {delay}"
    );
    let ierr = number(&v, "interpolation_error_p99_m");
    assert!(
        (0.0..10.0).contains(&ierr),
        "interpolation_error_p99_m {ierr}"
    );
    assert!(number(&v, "underruns_per_s") >= 0.0);
}

#[test]
fn sim_is_deterministic_and_refuses_bad_flags() {
    let args = ["--scenario", "crowd", "--entities", "10", "--seconds", "2"];
    assert_eq!(
        sim(&args),
        sim(&args),
        "the same seed gives the same report"
    );
    let out = load_tool()
        .args(["sim", "--loss", "2"])
        .output()
        .expect("running neonet-load sim");
    assert_eq!(out.status.code(), Some(2), "a usage error exits with 2");
}

#[test]
fn run_against_a_spawned_relay_reports_every_figure() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let json = dir.path().join("report.json");
    let out = load_tool()
        .args([
            "run",
            "--spawn-relay",
            "--clients",
            "5",
            "--duration",
            "3s",
            "--ramp",
            "1s",
            "--chat-per-s",
            "1",
            "--edits-per-s",
            "5",
            "--seed",
            "11",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("running neonet-load run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "neonet-load run failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("clients_connected"), "the table:\n{stdout}");
    let v: Value = serde_json::from_slice(&std::fs::read(&json).expect("the JSON report"))
        .expect("valid JSON");
    assert_eq!(number(&v, "clients_target"), 5.0);
    assert_eq!(number(&v, "clients_connected"), 5.0, "{v:#}");
    assert_eq!(number(&v, "clients_failed"), 0.0, "{v:#}");
    assert_eq!(number(&v, "disconnects"), 0.0, "{v:#}");
    assert_eq!(number(&v, "errors"), 0.0, "{v:#}");
    let join = &v["join_ms"];
    assert!(number(join, "p50") > 0.0 && number(join, "p99") >= number(join, "p50"));
    let updates = &v["update_latency_ms"];
    for q in ["p50", "p99", "p999"] {
        let ms = number(updates, q);
        assert!((0.0..1_000.0).contains(&ms), "update_latency_ms {q} = {ms}");
    }
    assert!(
        number(&v, "updates_received") > 0.0,
        "walkers see each other move"
    );
    assert!(number(&v["kbps_per_client"], "in") > 0.0);
    assert!(number(&v["kbps_per_client"], "out") > 0.0);
    // 5 clients × (1 chat + 5 edits)/s, plus one blueprint each: about 30 acknowledged per s.
    let acked = number(&v, "acked_changes_per_s");
    assert!(acked > 5.0, "acked_changes_per_s {acked}");
    let acks = &v["ack_latency_ms"];
    assert!(number(acks, "p99") >= number(acks, "p50"));
    assert!(
        number(&v["relay"], "ticks") > 0.0,
        "the spawned relay's figures"
    );
    assert!(number(&v["relay"], "joins") >= 5.0);
}

/// A relay as `neonet-relay` starts with no flags: its world's default rank is visitor, who may
/// chat and move but not edit. Returns its runtime (the relay runs while it lives), address and
/// certificate fingerprint.
fn default_relay(
    dir: &std::path::Path,
) -> (
    tokio::runtime::Runtime,
    neonet::relay::RelayHandle,
    std::net::SocketAddr,
    String,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let relay = rt
        .block_on(neonet::relay::Relay::start_with(
            neonet::config::RelayConfig::for_tests(dir),
            neonet::relay::RelayHooks::default(),
        ))
        .expect("the relay starts");
    let (addr, fingerprint) = (relay.local_addr(), relay.cert_fingerprint().to_string());
    (rt, relay, addr, fingerprint)
}

/// `run --addr` against a relay whose default rank is visitor: moving and chatting succeed;
/// edits are refused for rank, which a run does not expect, so it exits with status 1 and says
/// why (while `Busy` and `RateLimited`, the relay shedding load, would not fail it).
#[test]
fn run_fails_on_refusals_it_does_not_expect() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (rt, relay, addr, fingerprint) = default_relay(dir.path());
    let run = |extra: &[&str]| {
        let json = dir.path().join("report.json");
        let out = load_tool()
            .args([
                "run",
                "--addr",
                &addr.to_string(),
                "--cert-sha256",
                &fingerprint,
            ])
            .args([
                "--clients",
                "3",
                "--duration",
                "2s",
                "--ramp",
                "0s",
                "--seed",
                "5",
            ])
            .args(["--chat-per-s", "1"])
            .args(extra)
            .arg("--json")
            .arg(&json)
            .output()
            .expect("running neonet-load run");
        let v: Value = serde_json::from_slice(&std::fs::read(&json).expect("the JSON report"))
            .expect("valid JSON");
        (out, v)
    };

    let (out, v) = run(&[]);
    assert!(
        out.status.success(),
        "moving and chatting as visitors succeed ({:?}): {v:#}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(number(&v, "errors"), 0.0, "{v:#}");
    assert_eq!(number(&v, "refusals_unexpected"), 0.0, "{v:#}");

    let (out, v) = run(&["--edits-per-s", "2"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "edits refused for rank fail the run: {v:#}"
    );
    assert_eq!(number(&v, "clients_connected"), 3.0, "{v:#}");
    assert!(number(&v, "refusals_unexpected") > 0.0, "{v:#}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("refusals_unexpected"),
        "the table:\n{stdout}"
    );
    assert!(
        stdout.contains("edits need builder rank"),
        "the table:\n{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("only Busy and RateLimited are"),
        "says why it failed:\n{stderr}"
    );
    rt.block_on(relay.shutdown()).expect("clean shutdown");
}
