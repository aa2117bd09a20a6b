//! `neonet-load fanout` runs end to end at a tiny scale and prints a CPU-per-datagram figure for
//! the bare quinn fan-out and for the relay (no timing assertions: the figures depend on the
//! machine and on whatever else runs on it).

use std::process::Command;

mod common;
use common::relay_bin;

/// Runs `neonet-load fanout` with `extra` flags on 3 clients for a 2 s window; returns stdout.
fn fanout(extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_neonet-load"))
        .args([
            "--log",
            "warn",
            "fanout",
            "--clients",
            "3",
            "--seconds",
            "2",
        ])
        .args(["--warmup", "1", "--relay-bin"])
        .arg(relay_bin())
        .args(extra)
        .output()
        .expect("neonet-load runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "fanout failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn fanout_reports_cpu_per_datagram_for_bare_and_relay() {
    let stdout = fanout(&["--json"]);
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let runs = report["runs"].as_array().expect("runs");
    for target in ["bare", "relay"] {
        let run = runs
            .iter()
            .find(|r| r["target"] == target)
            .unwrap_or_else(|| panic!("no {target} run in {stdout}"));
        assert_eq!(run["clients_connected"], 3, "{stdout}");
        assert!(run["datagrams_sent"].as_u64().unwrap() > 0, "{stdout}");
        let us = run["server_cpu_us_per_datagram"].as_f64();
        assert!(us.is_some_and(|us| us >= 0.0), "{target}: {stdout}");
    }
    assert!(report["ratio_relay_to_bare"].as_f64().is_some(), "{stdout}");
}

#[test]
fn fanout_bare_prints_a_table() {
    let stdout = fanout(&["--target", "bare", "--bytes", "100"]);
    assert!(stdout.contains("µs/dgram"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("bare ")), "{stdout}");
    assert!(!stdout.contains("ratio"), "{stdout}");
}

#[test]
fn a_bare_run_with_up_bytes_moves_datagrams_both_ways_and_counts_what_the_server_received() {
    let stdout = fanout(&["--target", "bare", "--up-bytes", "48", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let run = &report["runs"][0];
    assert_eq!(run["target"], "bare", "{stdout}");
    assert_eq!(run["up_datagram_bytes"], 48, "{stdout}");
    // 3 clients at 30 Hz for a 2 s window send ≈ 180; any at all proves the path works.
    let datagrams_in = run["datagrams_in"].as_u64().expect("datagrams_in counted");
    assert!(datagrams_in > 0, "{stdout}");
}

#[test]
fn a_bare_run_without_up_bytes_reports_no_datagrams_in() {
    let stdout = fanout(&["--target", "bare", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert!(report["runs"][0]["datagrams_in"].is_null(), "{stdout}");
    assert!(report["runs"][0]["up_datagram_bytes"].is_null(), "{stdout}");
}
