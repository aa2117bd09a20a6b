//! The `neonet-relay` binary as a user runs it: what it prints when it refuses to start, and
//! logs fit for a file.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Bound on the first relay printing its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn relay(data: &Path, certs: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_neonet-relay"));
    cmd.arg("--data-dir")
        .arg(data)
        .arg("--cert-dir")
        .arg(certs)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-http",
            "--log-level",
            "info",
        ])
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    cmd
}

/// Kills the first relay even when an assertion fails.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_second_relay_on_the_same_data_folder_says_why_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let (data, certs) = (dir.path().join("data"), dir.path().join("certs"));

    let mut first = Running(
        relay(&data, &certs)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the relay binary starts"),
    );
    let stdout = first.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = lines
            .recv_timeout(START_TIMEOUT)
            .expect("the first relay prints its address");
        if line.starts_with("neonet-relay listening on udp ") {
            break;
        }
    }

    let second = relay(&data, &certs)
        .output()
        .expect("the relay binary runs");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains("error: starting the relay: ")
            && stderr.contains("another neonet relay is using this data folder"),
        "stderr:\n{stderr}"
    );
    assert!(
        !stderr.to_lowercase().contains("stack backtrace"),
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.lines().count() <= 3,
        "a refused start is a few lines, got:\n{stderr}"
    );

    // Logs piped to a file (here a pipe) carry no colour codes.
    let _ = first.0.kill();
    let _ = first.0.wait();
    let mut logs = String::new();
    first
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.contains("starting neonet-relay"), "logs:\n{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI escapes in piped logs:\n{logs}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escapes in piped logs:\n{stderr}"
    );
}

/// `neonet-relay token` mints a token signed with the key in the data folder (made if absent),
/// carrying what its flags say; a bad rank or ttl is refused with a message.
#[test]
fn the_token_subcommand_mints_a_token_the_relay_key_verifies() {
    use neonet::proto::server::{Authenticator, TokenIssuer};
    use neonet::proto::types::{Rank, UserId};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_neonet-relay"))
        .args([
            "token", "--user", "5", "--name", "ann", "--rank", "admin", "--ttl", "2h",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = neonet::auth::JwtTokens::load_or_create(&data)
        .unwrap()
        .verify(token.trim())
        .unwrap();
    assert_eq!(claims.user, UserId(5));
    assert_eq!(claims.name.as_deref(), Some("ann"));
    assert_eq!(claims.rank, Some(Rank::Admin));
    assert_eq!(claims.issuer, TokenIssuer::Relay);
    assert_eq!(claims.expires_at_s.unwrap() - claims.issued_at_s, 2 * 3600);
    for bad in [["--rank", "king"], ["--ttl", "2y"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_neonet-relay"))
            .args(["token", "--user", "5", "--name", "ann"])
            .args(bad)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(bad[1]), "{err}");
    }
}
