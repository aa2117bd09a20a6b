//! The live network view of a real relay, in headless Chromium, while a real client walks:
//! the `neonet-relay` binary runs as a child process (zero config in a temporary folder, ports
//! chosen by the OS), a native client joins over QUIC and moves, and
//! `tests/browser/live_view.mjs` checks that the page's figures and packet trails change.
//!
//! Needs `/usr/bin/chromium`, `node` and `tests/browser/node_modules` (`.ci/install-browser`);
//! under `CI=true` their absence is a failure, elsewhere a skip with a message.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use neonet::client::{CharacterInput, Client, ClientOptions};
use neonet::tls::{Fingerprint, Trust};

/// Longest the browser script may run; its own waits are bounded, this guards a hung browser.
const BROWSER_RUN_MAX: Duration = Duration::from_secs(150);
/// Longest the relay may take to print its addresses.
const RELAY_START_MAX: Duration = Duration::from_secs(30);

struct RelayChild {
    child: Child,
    udp: String,
    http: String,
    fingerprint: String,
    _dir: tempfile::TempDir,
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_relay() -> RelayChild {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_neonet-relay"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("relay starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut udp, mut http, mut fp) = (None, None, None);
    let end = Instant::now() + RELAY_START_MAX;
    while (udp.is_none() || http.is_none() || fp.is_none()) && Instant::now() < end {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if let Some(a) = line.strip_prefix("neonet-relay listening on udp ") {
            udp = Some(a.trim().to_string());
        } else if let Some(u) = line.strip_prefix("status and metrics on ") {
            http = Some(u.trim().to_string());
        } else if let Some(f) = line.strip_prefix("certificate sha-256: ") {
            fp = Some(f.trim().to_string());
        }
    }
    RelayChild {
        child,
        udp: udp.expect("relay printed its UDP address"),
        http: http.expect("relay printed its HTTP address"),
        fingerprint: fp.expect("relay printed its fingerprint"),
        _dir: dir,
    }
}

#[test]
fn the_live_view_of_a_real_relay_changes_while_a_client_moves() {
    let Some((chromium, script)) = common::browser_prerequisites() else {
        return;
    };
    let relay = start_relay();
    let fingerprint: Fingerprint = relay.fingerprint.parse().expect("fingerprint parses");
    let options = |name: &str| ClientOptions {
        name: name.into(),
        trust: Trust::Sha256(fingerprint),
        connect_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let walker = Client::connect(relay.udp.as_str(), options("walker")).expect("walker joins");
    let watcher = Client::connect(relay.udp.as_str(), options("watcher")).expect("watcher joins");
    // Walk in a slow circle for as long as the browser looks.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mover = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut yaw: u16 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                walker.set_input(CharacterInput {
                    move_z: 127,
                    yaw,
                    ..Default::default()
                });
                yaw = yaw.wrapping_add(600);
                std::thread::sleep(Duration::from_millis(50));
            }
            walker.close();
        })
    };
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .arg(format!("{}/", relay.http.trim_end_matches('/')))
        .arg("--chromium")
        .arg(&chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(shot) = std::env::var_os("NEONET_SCREENSHOT") {
        cmd.arg("--screenshot").arg(shot);
    }
    let mut child = cmd.spawn().expect("spawn node");
    let deadline = Instant::now() + BROWSER_RUN_MAX;
    while child.try_wait().expect("wait node").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("node output");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    mover.join().unwrap();
    watcher.close();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "live_view.mjs against the real relay failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}
