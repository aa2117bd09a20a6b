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
