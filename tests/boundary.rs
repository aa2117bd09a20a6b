//! Dependency boundaries, enforced over `cargo tree`: the sans-IO engine `neonet-proto` depends
//! on no async runtime, socket, TLS, database, clock or OS randomness crate, and a game that uses
//! only the client (`neonet` without its default `relay` feature) compiles none of the relay's
//! database, HTTP, metrics or command-line crates, nor the load tool's.

use std::process::Command;

/// Crates whose presence in `neonet-proto`'s normal dependency tree would break the boundary.
const FORBIDDEN: [&str; 12] = [
    "tokio",
    "quinn",
    "quinn-proto",
    "rustls",
    "ring",
    "redb",
    "socket2",
    "mio",
    "getrandom",
    "rand",
    "async-std",
    "tokio-tungstenite",
];

/// Crates a game using only the client must not compile: the relay's database (redb), HTTP
/// server (axum, hyper), metrics exporter and command line (clap), and the load tool's progress
/// bar and histograms (indicatif, hdrhistogram).
const NOT_IN_THE_CLIENT: [&str; 8] = [
    "redb",
    "axum",
    "hyper",
    "clap",
    "indicatif",
    "hdrhistogram",
    "metrics",
    "metrics-exporter-prometheus",
];

/// `cargo tree --offline -e normal --prefix none` for `args` (package and features), from this
/// workspace; one crate a line, name first.
fn normal_tree(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_game_using_only_the_client_compiles_no_relay_database_http_metrics_or_cli_crates() {
    let tree = normal_tree(&["-p", "neonet", "--no-default-features"]);
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        assert!(
            !NOT_IN_THE_CLIENT.contains(&name),
            "neonet without its relay feature depends on {name}:\n{tree}"
        );
    }
    // The transport is there: the tree is the client's, not an empty one.
    assert!(
        tree.lines().any(|l| l.starts_with("quinn ")),
        "unexpected tree:\n{tree}"
    );
    // And the relay does bring them: the list names what the feature gates.
    let relay = normal_tree(&["-p", "neonet"]);
    for name in ["redb", "axum", "clap", "metrics-exporter-prometheus"] {
        assert!(
            relay.lines().any(|l| l.starts_with(&format!("{name} "))),
            "the relay feature no longer pulls {name} in:\n{relay}"
        );
    }
}

#[test]
fn the_proto_crate_depends_on_no_runtime_socket_tls_database_or_os_randomness() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "neonet-proto",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        assert!(
            !FORBIDDEN.contains(&name),
            "neonet-proto depends on {name}:\n{tree}"
        );
    }
    assert!(tree.contains("postcard"), "unexpected tree:\n{tree}");
}

#[test]
fn the_product_compiles_the_engine_without_its_simulation_and_scenario_helpers() {
    let sim = "neonet-proto feature \"sim\"";
    for args in [
        &["-p", "neonet"][..],
        &["-p", "neonet", "--no-default-features"][..],
    ] {
        let tree = normal_tree(&[args, &["-e", "features"]].concat());
        assert!(
            !tree.lines().any(|l| l.starts_with(sim)),
            "{args:?} turns on {sim}:\n{tree}"
        );
    }
    // The load tool does turn it on: the line this test looks for is the one Cargo prints.
    let tool = normal_tree(&["-p", "neonet-load", "-e", "features"]);
    assert!(
        tool.lines().any(|l| l.starts_with(sim)),
        "unexpected tree:\n{tool}"
    );
}
