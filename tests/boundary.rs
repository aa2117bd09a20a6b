//! The sans-IO boundary is enforced by Cargo: `neonet-proto` depends on no async runtime,
//! socket, TLS, database, clock or OS randomness crate.

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
