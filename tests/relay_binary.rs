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
