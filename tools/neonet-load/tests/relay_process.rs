//! `neonet-load run` with the relay as a process of its own and light clients: every figure of
//! the relay process (its CPU per client-tick, its memory) is reported, and the light clients
//! join, walk, chat, edit and measure update latency like full ones. No timing assertions.

use std::process::Command;

use serde_json::Value;

mod common;
use common::relay_bin;

fn number(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v:#}"))
}

#[test]
fn light_clients_against_a_relay_process_report_its_cpu_and_memory() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_neonet-load"))
        .args([
            "--log",
            "warn",
            "run",
            "--spawn-relay",
            "--relay-process",
            "--client",
            "light",
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
            "--rss-interval",
            "1s",
            "--seed",
            "12",
            "--json",
        ])
        .arg(&json)
        .arg("--relay-bin")
        .arg(relay_bin())
        .output()
        .expect("running neonet-load run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "neonet-load run failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("relay_us_per_client_tick"), "{stdout}");
    let v: Value = serde_json::from_slice(&std::fs::read(&json).expect("the JSON report"))
        .expect("valid JSON");
    assert_eq!(v["setup"]["client"], "light");
    assert_eq!(number(&v, "clients_connected"), 5.0, "{v:#}");
    assert_eq!(number(&v, "errors"), 0.0, "{v:#}");
    assert_eq!(number(&v, "disconnects"), 0.0, "{v:#}");
    assert!(
        number(&v, "updates_received") > 0.0,
        "walkers see each other"
    );
    assert!(number(&v, "records_per_datagram") > 0.0);
    assert!(number(&v["update_latency_ms"], "p99") >= number(&v["update_latency_ms"], "p50"));
    assert!(number(&v, "acked_changes_per_s") > 5.0, "{v:#}");
    assert!(number(&v, "relay_us_per_client_tick") > 0.0, "{v:#}");
    assert!(number(&v, "relay_cpu_cores") > 0.0, "{v:#}");
    let rss = &v["relay_rss"];
    assert!(number(rss, "max_bytes") > 0.0, "{v:#}");
    assert!(
        rss["samples"].as_array().is_some_and(|s| s.len() >= 2),
        "{v:#}"
    );
    assert!(
        number(&v["relay"], "joins") >= 5.0,
        "the relay process's own figures"
    );
}
