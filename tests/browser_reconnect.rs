//! The demo page in headless Chromium comes back by itself after the relay restarts
//! (`tests/browser/reconnect.mjs`): a persistent relay and its HTTP server stop and start again
//! on the same ports and data folder while the page is connected; the page notices, reconnects
//! with its backoff, and rejoins as the same user, over WebTransport (whose certificate pin
//! changes with the restart: the page fetches the new one) and over the WebSocket fallback.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use neonet::config::RelayConfig;
use neonet::relay::{Relay, RelayHandle, RelayHooks};

/// A relay and its HTTP server on fixed loopback ports, persisting in `dir`.
struct Running {
    relay: RelayHandle,
    http_stop: tokio::sync::oneshot::Sender<()>,
    http_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(dir: &Path, quic: SocketAddr, http: SocketAddr) -> Running {
    let mut config = RelayConfig::for_tests(dir);
    config.listen = quic;
    config.persist = true;
    let relay = Relay::start_with(config, RelayHooks::default())
        .await
        .expect("relay starts");
    let listener = tokio::net::TcpListener::bind(http)
        .await
        .expect("the HTTP port is free again");
    let (http_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = Arc::new(neonet::metrics::Metrics::new(Default::default()));
    let http_task = tokio::spawn(neonet::http::serve_with_browsers(
        listener,
        metrics,
        relay.browser_access(),
        async {
            let _ = stopped.await;
        },
    ));
    Running {
        relay,
        http_stop,
        http_task,
    }
}

async fn stop(r: Running) {
    r.relay.shutdown().await.expect("relay stops");
    let _ = r.http_stop.send(());
    let _ = r.http_task.await;
}

/// Free loopback ports for the relay's QUIC (UDP) and HTTP (TCP) sides.
fn free_ports() -> (SocketAddr, SocketAddr) {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (udp.local_addr().unwrap(), tcp.local_addr().unwrap())
}

fn the_page_comes_back_after_a_relay_restart_over(transport: &str) {
    let Some((chromium, live_view)) = common::browser_prerequisites() else {
        return;
    };
    let script = live_view.with_file_name("reconnect.mjs");
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (quic, http) = free_ports();
    let mut running = Some(rt.block_on(start(dir.path(), quic, http)));
    let mut child = Command::new("node")
        .arg(&script)
        .arg(format!("http://{http}"))
        .args(["--transport", transport])
        .arg("--chromium")
        .arg(&chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut stdout = String::new();
    // Wait for the page to say it joined (or for the script to end without joining).
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        stdout.push_str(&line);
        if line.trim() == "joined" {
            // The restart: everything down, a moment of outage, everything up again.
            rt.block_on(async {
                stop(running.take().expect("running once")).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            });
            let again = rt.block_on(start(dir.path(), quic, http));
            let rest = {
                let mut rest = String::new();
                std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
                rest
            };
            stdout.push_str(&rest);
            let status = child.wait().expect("node ends");
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            rt.block_on(stop(again));
            println!("{stdout}");
            assert!(
                status.success(),
                "reconnect.mjs over {transport} failed ({status}):\n{stdout}\n{stderr}"
            );
            return;
        }
    }
    let status = child.wait().expect("node ends");
    if let Some(r) = running {
        rt.block_on(stop(r));
    }
    panic!("the page never joined over {transport} ({status}):\n{stdout}");
}

#[test]
fn the_demo_page_comes_back_by_itself_after_the_relay_restarts_over_webtransport() {
    the_page_comes_back_after_a_relay_restart_over("webtransport");
}

#[test]
fn the_demo_page_comes_back_by_itself_after_the_relay_restarts_over_websocket() {
    the_page_comes_back_after_a_relay_restart_over("websocket");
}
