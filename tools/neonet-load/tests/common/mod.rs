//! What the load tool's integration tests share.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `neonet-relay` executable, built for this test's profile into this test's target
/// directory. It is a binary of another package (`neonet`), so Cargo does not hand it to this
/// package's tests as it does `neonet-load`; building it here is a no-op when it is up to date.
pub fn relay_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let load = Path::new(env!("CARGO_BIN_EXE_neonet-load"));
        let profile_dir = load.parent().expect("the load tool's directory");
        let target_dir = profile_dir.parent().expect("the target directory");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "--offline",
                "--quiet",
                "-p",
                "neonet",
                "--bin",
                "neonet-relay",
            ])
            .args(["--profile", profile, "--message-format", "json"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "building neonet-relay failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "neonet-relay")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the neonet-relay executable")
    })
}
