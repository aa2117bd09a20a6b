//! The load tool's impairment proxy as a process: `neonet-load proxy` relays between a client
//! and a UDP echo server, and `neonet-load run --via-proxy` reports the proxy's counters. (The
//! proxy library itself is tested in `tools/neonet-proxy/tests/proxy.rs`.)
//!
//! No assertion depends on how long anything takes, only on what arrives; every wait is bounded
//! so a broken tool fails the test instead of hanging it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

/// Longest any single wait in these tests lasts before the test fails: generous, because the
/// two shared cores may be busy with other builds.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// How long to keep listening for extra (duplicate) datagrams once everything expected arrived.
const SETTLE: Duration = Duration::from_millis(200);

/// A UDP echo server.
struct Echo {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Echo {
    async fn start() -> Echo {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let _ = socket.send_to(&buf[..len], from).await;
            }
        });
        Echo { addr, task }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

fn payload(i: u32) -> [u8; 4] {
    i.to_be_bytes()
}

/// Sends `count` numbered datagrams, pausing briefly every few so loopback buffers never
/// overflow (which would look like loss).
async fn send_numbered(socket: &UdpSocket, to: SocketAddr, count: u32) {
    for i in 0..count {
        socket.send_to(&payload(i), to).await.unwrap();
        if i % 16 == 15 {
            sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Receives until `expected` datagrams arrived, then for [`SETTLE`] more to catch extras.
/// Returns the payloads in arrival order; panics after [`WAIT_LIMIT`].
async fn receive(socket: &UdpSocket, expected: usize) -> Vec<u32> {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + WAIT_LIMIT;
    while got.len() < expected {
        let (len, _) = timeout(deadline - Instant::now(), socket.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("only {} of {expected} datagrams arrived", got.len()))
            .unwrap();
        got.push(u32::from_be_bytes(buf[..len].try_into().unwrap()));
    }
    while let Ok(Ok((len, _))) = timeout(SETTLE, socket.recv_from(&mut buf)).await {
        got.push(u32::from_be_bytes(buf[..len].try_into().unwrap()));
    }
    got
}

/// `neonet-load proxy` as a process: it logs its listen address, relays, and takes its flags.
#[tokio::test]
async fn the_proxy_subcommand_relays() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    /// Kills the child even when an assertion fails, so no process outlives the test.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let echo = Echo::start().await;
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_neonet-load"))
            .args(["--log", "info", "proxy", "--listen", "127.0.0.1:0"])
            .args(["--upstream", &echo.addr.to_string()])
            .args(["--loss", "0", "--delay-ms", "1", "--jitter-ms", "1"])
            .args(["--dup", "0", "--reorder", "0", "--seed", "1"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    // The first log line names the bound address; read it off the blocking pipe on a thread.
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line).map(|_| line)
    });
    let line = timeout(WAIT_LIMIT, line).await.unwrap().unwrap().unwrap();
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("listen="))
        .unwrap_or_else(|| panic!("no listen address in {line:?}"))
        .parse()
        .unwrap();
    let socket = client().await;
    send_numbered(&socket, addr, 20).await;
    assert_eq!(receive(&socket, 20).await, (0..20).collect::<Vec<u32>>());
    drop(child);
}
/// `neonet-load run` writes its report, with the impairment proxy's counters, and exits
/// non-zero when clients fail (here: nothing but a UDP echo listens at the address).
#[tokio::test]
async fn the_run_subcommand_reports_failed_clients_with_a_nonzero_exit() {
    let echo = Echo::start().await;
    let dir = std::env::temp_dir().join(format!("neonet-load-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_neonet-load"))
        .args(["--log", "warn", "run", "--addr", &echo.addr.to_string()])
        .args([
            "--clients",
            "2",
            "--ramp",
            "0s",
            "--duration",
            "1s",
            "--seed",
            "1",
        ])
        .args(["--via-proxy", "--loss", "0.5", "--json"])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("neonet-load run did not finish");
        }
        sleep(Duration::from_millis(20)).await;
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert_eq!(status.code(), Some(1), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(report["clients_target"], 2);
    assert_eq!(report["clients_connected"], 0);
    assert_eq!(report["clients_failed"], 2);
    assert!(report["acked_changes_per_s"].is_null());
    assert!(report["proxy"]["to_upstream"].is_object());
    assert!(stdout.contains("clients_failed"), "{stdout}");
}
