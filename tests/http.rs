//! The relay's operator HTTP server, in process on 127.0.0.1:0, with a simulated relay feeding
//! its [`Metrics`]: `/health`, `/metrics`, `/status`, the live view's assets, and the live view
//! itself in headless Chromium (`tests/browser/live_view.mjs`).
//!
//! The browser part runs when `/usr/bin/chromium` (or `$CHROMIUM_PATH`), `node` and
//! `tests/browser/node_modules` are present, which `.ci/install-browser` arranges; under
//! `CI=true` their absence is a failure, elsewhere it is a skip with a message.
//! Set `NEONET_SCREENSHOT=/tmp/view.png` to keep a screenshot of the page.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use neonet::metrics::{EntityBytesBatch, Metrics, MetricsConfig, Status, UserReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Simulated tick period: the relay's default 30 Hz.
const TICK: Duration = Duration::from_millis(33);
/// Simulated clients; one more joins part-way through so the connection count changes too.
const CLIENTS: u64 = 6;
/// NPC entities each client receives updates for, besides the moving players.
const NPCS: u32 = 12;
/// Longest the browser script may run before it is killed: its own steps are bounded by
/// 20 s each, this only guards against a hung Chromium.
const BROWSER_RUN_MAX: Duration = Duration::from_secs(150);

/// A relay-shaped load on a [`Metrics`]: clients join, one of them walks (its entity's updates
/// fan out to everyone), NPCs wander, inputs arrive, ticks are timed.
struct SimRelay {
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl SimRelay {
    fn start(metrics: Arc<Metrics>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            let mut batch = EntityBytesBatch::new();
            let mut bytes_in = vec![0u64; CLIENTS as usize + 1];
            let mut bytes_out = vec![0u64; CLIENTS as usize + 1];
            let mut joined = 0u64;
            let mut tick = 0u64;
            while !flag.load(Ordering::Relaxed) {
                interval.tick().await;
                let started = Instant::now();
                // Five clients at once, the sixth after ~2 s.
                let want = if tick < 60 { CLIENTS - 1 } else { CLIENTS };
                while joined < want {
                    metrics.connection_opened();
                    metrics.record_join();
                    metrics.record_message_in("Join");
                    metrics.record_stream_in(180);
                    joined += 1;
                }
                metrics.set_entity_count((joined as usize) + NPCS as usize);
                for client in 0..joined {
                    // Each client sends its input; client 0 is walking, so its input is larger.
                    let input = if client == 0 { 48 } else { 20 };
                    metrics.record_datagram_in(input);
                    metrics.record_message_in("Input");
                    bytes_in[client as usize] += input as u64;
                    // Entities in interest: every player (the walker's updates are the big
                    // ones) and the NPCs, which move every third tick.
                    let players = (0..joined).map(|p| (p as u32 + 1, if p == 0 { 40 } else { 14 }));
                    let npcs = (0..NPCS)
                        .filter(|n| (tick + u64::from(*n)) % 3 == 0)
                        .map(|n| (1000 + n, 22 + (n as usize % 4) * 6));
                    for (entity, bytes) in players.chain(npcs) {
                        metrics.record_datagram_out(bytes);
                        metrics.record_message_out("EntityUpdate");
                        metrics.record_trail(entity, client + 1, bytes);
                        batch.add(entity, bytes);
                        bytes_out[client as usize] += bytes as u64;
                    }
                }
                metrics.merge_entity_bytes(&mut batch);
                metrics.set_persist_queue_depth((tick % 7) as usize);
                if tick % 30 == 0 {
                    metrics.record_persist_commit(Duration::from_micros(800 + tick % 500));
                }
                if tick % 8 == 0 {
                    // Client c's player is entity c + 1.
                    metrics.publish_entity_names(
                        (0..joined).map(|c| (c as u32 + 1, format!("player-{}", c + 1))),
                    );
                    metrics.publish_users((0..joined).map(|c| {
                        UserReport {
                            session_id: c + 1,
                            name: format!("player-{}", c + 1),
                            addr: format!("127.0.0.1:{}", 40000 + c)
                                .parse()
                                .expect("literal address"),
                            rtt_ms: 20.0 + (c as f64) * 15.0 + (tick % 10) as f64,
                            bytes_in: bytes_in[c as usize],
                            bytes_out: bytes_out[c as usize],
                        }
                    }));
                }
                metrics.record_tick(started.elapsed());
                tick += 1;
            }
        });
        SimRelay { stop, task }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("sim relay task");
    }
}

/// The HTTP server under test with its shutdown switch.
struct Server {
    url: String,
    addr: std::net::SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start_server(metrics: Arc<Metrics>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(neonet::http::serve(listener, metrics, async {
        let _ = rx.await;
    }));
    Server {
        url: format!("http://{addr}/"),
        addr,
        shutdown: tx,
        task,
    }
}

impl Server {
    async fn stop(self) {
        let _ = self.shutdown.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops after shutdown")
            .expect("server task")
            .expect("server result");
    }
}

/// One response: status code, lower-cased headers, body.
struct Response {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 GET (Connection: close); the crate has no HTTP client and the test needs
/// nothing more.
async fn get(addr: std::net::SocketAddr, path: &str) -> Response {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .expect("read");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Response {
        code,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        s = &rest[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_serve_health_metrics_status_and_the_view() {
    let metrics = Arc::new(Metrics::new(MetricsConfig::default()));
    let server = start_server(metrics.clone()).await;
    let sim = SimRelay::start(metrics.clone());
    // Let a few ticks and a users report happen.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let health = get(server.addr, "/health").await;
    assert_eq!(health.code, 200);
    let v: serde_json::Value = serde_json::from_str(&health.body).expect("health JSON");
    assert_eq!(v["status"], "ok");

    let prom = get(server.addr, "/metrics").await;
    assert_eq!(prom.code, 200);
    assert!(prom
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain")));
    for name in [
        "neonet_connections",
        "neonet_joins_total",
        "neonet_tick_duration_seconds_bucket",
        "neonet_tick_overruns_total",
        "neonet_bytes_in_total{channel=\"datagram\"}",
        "neonet_bytes_out_total{channel=\"datagram\"}",
        "neonet_datagrams_in_total",
        "neonet_datagrams_out_total",
        "neonet_messages_in_total{type=\"Input\"}",
        "neonet_messages_out_total{type=\"EntityUpdate\"}",
        "neonet_persist_queue_depth",
        "neonet_persist_commit_seconds_bucket",
        "neonet_rate_limit_hits_total",
        "neonet_entity_bytes_out_top{entity=\"1\",rank=\"1\"}",
    ] {
        assert!(
            prom.body.contains(name),
            "/metrics lacks {name}:\n{}",
            prom.body
        );
    }
    metrics.record_drop("datagram_too_large");
    metrics.record_rate_limit_hit();
    let prom = get(server.addr, "/metrics").await;
    assert!(prom
        .body
        .contains("neonet_drops_total{reason=\"datagram_too_large\"} 1"));
    assert!(prom.body.contains("neonet_rate_limit_hits_total 1"));

    let st = get(server.addr, "/status").await;
    assert_eq!(st.code, 200);
    let s1: Status = serde_json::from_str(&st.body).expect("status JSON");
    assert_eq!(s1.connections, (CLIENTS - 1) as i64);
    assert!(s1.bandwidth.datagrams_out > 0 && s1.bandwidth.bytes_out > 0);
    assert!(s1.tick.ticks > 0 && s1.tick.p99_ms >= s1.tick.p50_ms);
    assert!(!s1.users.is_empty() && s1.users[0].name == "player-1");
    // The walking player's entity costs the most bytes, and is shown with its user's name.
    assert_eq!(s1.top_entities[0].entity_id, 1);
    assert_eq!(s1.top_entities[0].name.as_deref(), Some("player-1"));
    assert!(s1.top_entities.iter().any(|e| e.name.is_none()), "NPCs");
    // The chart's recent figures, sampled by the ticks (~600 ms of them), oldest first.
    assert!(s1.history.len() >= 2, "{:?}", s1.history);
    assert!(s1.history.windows(2).all(|w| w[0].age_ms > w[1].age_ms));
    assert!(s1.history.iter().any(|p| p.kbps_out > 0.0));
    assert!(!s1.trails.is_empty());

    // The figures move while the clients do.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s2: Status =
        serde_json::from_str(&get(server.addr, "/status").await.body).expect("status JSON");
    assert!(s2.bandwidth.datagrams_out > s1.bandwidth.datagrams_out);
    assert!(s2.trail_next_seq > s1.trail_next_seq);

    // `since` keeps only newer trail samples.
    let path = format!("/status?since={}", s2.trail_next_seq);
    let s3: Status = serde_json::from_str(&get(server.addr, &path).await.body).expect("JSON");
    assert!(s3.trails.iter().all(|t| t.seq >= s2.trail_next_seq));
    assert!(!s3.history.is_empty());
    let path = format!("/status?since={}&history=false", s2.trail_next_seq);
    let s4: Status = serde_json::from_str(&get(server.addr, &path).await.body).expect("JSON");
    assert!(s4.history.is_empty() && s4.bandwidth.bytes_out > 0);
    assert_eq!(get(server.addr, "/status?since=nope").await.code, 400);

    let index = get(server.addr, "/").await;
    assert_eq!(index.code, 200);
    assert!(index
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    assert!(index
        .header("content-security-policy")
        .is_some_and(|c| c.contains("default-src 'self'")));
    for id in [
        "id=\"connections\"",
        "id=\"kbps-out\"",
        "id=\"tick-ms\"",
        "id=\"trails\"",
    ] {
        assert!(index.body.contains(id), "index lacks {id}");
    }
    for asset in ["/app.js", "/app.css"] {
        let r = get(server.addr, asset).await;
        assert_eq!(r.code, 200, "{asset}");
        assert!(!r.body.is_empty());
    }
    assert_eq!(get(server.addr, "/nope").await.code, 404);

    sim.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_in_one_process_keep_their_own_figures() {
    let a = Arc::new(Metrics::default());
    let b = Arc::new(Metrics::default());
    let (sa, sb) = (start_server(a.clone()).await, start_server(b.clone()).await);
    a.record_datagram_out(1234);
    b.record_datagram_out(10);
    let pa = get(sa.addr, "/metrics").await.body;
    let pb = get(sb.addr, "/metrics").await.body;
    assert!(pa.contains("neonet_bytes_out_total{channel=\"datagram\"} 1234"));
    assert!(pb.contains("neonet_bytes_out_total{channel=\"datagram\"} 10"));
    sa.stop().await;
    sb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_view_shows_figures_and_trails_moving_in_headless_chromium() {
    let Some((chromium, script)) = common::browser_prerequisites() else {
        return;
    };

    let metrics = Arc::new(Metrics::default());
    let server = start_server(metrics.clone()).await;
    let sim = SimRelay::start(metrics.clone());

    let mut cmd = Command::new("node");
    // Let the relay build up some history first: the page must open with its chart filled.
    tokio::time::sleep(Duration::from_millis(800)).await;
    cmd.arg(&script)
        .arg(&server.url)
        .args(["--expect-history", "--expect-entity-names"])
        .arg("--chromium")
        .arg(&chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(shot) = std::env::var_os("NEONET_SCREENSHOT") {
        cmd.arg("--screenshot").arg(shot);
    }
    let output = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("spawn node");
        let deadline = Instant::now() + BROWSER_RUN_MAX;
        loop {
            if child.try_wait().expect("wait node").is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().expect("node output")
    })
    .await
    .expect("browser runner");

    sim.stop().await;
    server.stop().await;

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "live_view.mjs failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}
