//! The impairment proxy over real loopback sockets: a UDP echo server behind the proxy.
//!
//! No assertion depends on how long anything takes, only on what arrives; every wait is bounded
//! so a broken proxy fails the test instead of hanging it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use neonet_proxy::{Proxy, ProxyConfig, ProxyHandle, ProxyLimits, ProxyStats};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

/// Longest any single wait in these tests lasts before the test fails: generous, because the
/// two shared cores may be busy with other builds.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// How long to keep listening for extra (duplicate) datagrams once everything expected arrived.
const SETTLE: Duration = Duration::from_millis(200);

/// What the echo server saw: each datagram's source and payload, in arrival order.
type Seen = Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

/// An echo server that records, per source address, the payloads it saw.
struct Echo {
    addr: SocketAddr,
    seen: Seen,
    task: JoinHandle<()>,
}

impl Echo {
    async fn start() -> Echo {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                log.lock().unwrap().push((from, buf[..len].to_vec()));
                let _ = socket.send_to(&buf[..len], from).await;
            }
        });
        Echo { addr, seen, task }
    }

    fn seen(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(upstream: SocketAddr) -> ProxyConfig {
    ProxyConfig::passthrough("127.0.0.1:0".parse().unwrap(), upstream)
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

/// Waits (bounded) until the proxy's counters satisfy `done`, returning them.
async fn stats_until(proxy: &ProxyHandle, done: impl Fn(&ProxyStats) -> bool) -> ProxyStats {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let stats = proxy.stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "counters never settled: {stats:?}"
        );
        sleep(Duration::from_millis(5)).await;
    }
}

fn counts(values: &[u32]) -> HashMap<u32, usize> {
    let mut map = HashMap::new();
    for v in values {
        *map.entry(*v).or_insert(0) += 1;
    }
    map
}

#[tokio::test]
async fn without_impairment_every_datagram_arrives_once() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(config(echo.addr)).unwrap();
    let socket = client().await;
    send_numbered(&socket, proxy.local_addr(), 200).await;
    let got = receive(&socket, 200).await;
    assert_eq!(got.len(), 200, "duplicates arrived");
    assert_eq!(counts(&got).len(), 200);
    let stats = stats_until(&proxy, |s| s.to_client.packets_out == 200).await;
    assert_eq!(stats.to_upstream.packets_in, 200);
    assert_eq!(stats.to_upstream.packets_out, 200);
    assert_eq!(stats.to_client.packets_in, 200);
    assert_eq!(stats.to_upstream.dropped + stats.to_client.dropped, 0);
    assert_eq!(stats.flows_opened, 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn total_loss_delivers_nothing() {
    let echo = Echo::start().await;
    let mut cfg = config(echo.addr);
    cfg.loss = 1.0;
    let proxy = Proxy::start(cfg).unwrap();
    let socket = client().await;
    send_numbered(&socket, proxy.local_addr(), 50).await;
    let stats = stats_until(&proxy, |s| s.to_upstream.dropped == 50).await;
    assert_eq!(stats.to_upstream.packets_out, 0);
    let mut buf = [0u8; 64];
    assert!(
        timeout(SETTLE, socket.recv_from(&mut buf)).await.is_err(),
        "a datagram got through total loss"
    );
    assert!(echo.seen().is_empty());
    proxy.shutdown().await;
}

#[tokio::test]
async fn total_duplication_doubles_each_direction() {
    let echo = Echo::start().await;
    let mut cfg = config(echo.addr);
    cfg.dup = 1.0;
    let proxy = Proxy::start(cfg).unwrap();
    let socket = client().await;
    send_numbered(&socket, proxy.local_addr(), 50).await;
    // Each datagram reaches the echo twice; each of its two replies is doubled on the way back.
    let got = receive(&socket, 200).await;
    assert_eq!(got.len(), 200);
    assert!(counts(&got).values().all(|&n| n == 4), "{:?}", counts(&got));
    let at_echo: Vec<u32> = echo
        .seen()
        .iter()
        .map(|(_, p)| u32::from_be_bytes(p[..].try_into().unwrap()))
        .collect();
    assert_eq!(at_echo.len(), 100);
    assert!(counts(&at_echo).values().all(|&n| n == 2));
    let stats = stats_until(&proxy, |s| s.to_client.packets_out == 200).await;
    assert_eq!(stats.to_upstream.duplicated, 50);
    assert_eq!(stats.to_client.duplicated, 100);
    proxy.shutdown().await;
}

#[tokio::test]
async fn delay_and_jitter_keep_order_and_deliver_everything() {
    let echo = Echo::start().await;
    let mut cfg = config(echo.addr);
    cfg.delay_ms = 20;
    cfg.jitter_ms = 10;
    cfg.seed = 5;
    let proxy = Proxy::start(cfg).unwrap();
    let socket = client().await;
    send_numbered(&socket, proxy.local_addr(), 100).await;
    let got = receive(&socket, 100).await;
    assert_eq!(got, (0..100).collect::<Vec<u32>>());
    proxy.shutdown().await;
}

#[tokio::test]
async fn reordering_delivers_everything_once_out_of_order() {
    let echo = Echo::start().await;
    let mut cfg = config(echo.addr);
    cfg.reorder = 0.5;
    cfg.seed = 11;
    let proxy = Proxy::start(cfg).unwrap();
    let socket = client().await;
    send_numbered(&socket, proxy.local_addr(), 100).await;
    let got = receive(&socket, 100).await;
    assert_eq!(got.len(), 100);
    assert_eq!(counts(&got).len(), 100);
    let inversions = got.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(inversions > 0, "nothing was reordered: {got:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn each_client_flow_gets_its_own_upstream_socket() {
    const CLIENTS: u32 = 20;
    let echo = Echo::start().await;
    let proxy = Proxy::start(config(echo.addr)).unwrap();
    let mut sockets = Vec::new();
    for i in 0..CLIENTS {
        let socket = client().await;
        socket
            .send_to(&payload(i), proxy.local_addr())
            .await
            .unwrap();
        sockets.push(socket);
    }
    for (i, socket) in sockets.iter().enumerate() {
        let mut buf = [0u8; 64];
        let (len, _) = timeout(WAIT_LIMIT, socket.recv_from(&mut buf))
            .await
            .expect("no reply")
            .unwrap();
        assert_eq!(&buf[..len], &payload(i as u32), "client {i}");
    }
    let seen = echo.seen();
    let sources: HashSet<SocketAddr> = seen.iter().map(|(from, _)| *from).collect();
    assert_eq!(sources.len(), CLIENTS as usize);
    assert!(!sources.contains(&proxy.local_addr()));
    let stats = proxy.stats();
    assert_eq!(stats.flows_opened, u64::from(CLIENTS));
    assert_eq!(stats.flows_active, u64::from(CLIENTS));
    proxy.shutdown().await;
}

#[tokio::test]
async fn flows_beyond_the_cap_are_refused() {
    let echo = Echo::start().await;
    let limits = ProxyLimits {
        max_flows: 2,
        ..ProxyLimits::default()
    };
    let proxy = Proxy::start_with_limits(config(echo.addr), limits).unwrap();
    let sockets = [client().await, client().await, client().await];
    for (i, socket) in sockets.iter().enumerate() {
        socket
            .send_to(&payload(i as u32), proxy.local_addr())
            .await
            .unwrap();
    }
    let stats = stats_until(&proxy, |s| s.to_upstream.packets_in == 3).await;
    assert_eq!(stats.flows_opened, 2);
    assert_eq!(stats.flows_rejected, 1);
    assert_eq!(stats.to_upstream.overflowed, 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn idle_flows_expire_and_reopen() {
    let echo = Echo::start().await;
    let limits = ProxyLimits {
        flow_idle_timeout: Duration::from_millis(100),
        ..ProxyLimits::default()
    };
    let proxy = Proxy::start_with_limits(config(echo.addr), limits).unwrap();
    let socket = client().await;
    socket
        .send_to(&payload(1), proxy.local_addr())
        .await
        .unwrap();
    assert_eq!(receive(&socket, 1).await, vec![1]);
    stats_until(&proxy, |s| s.flows_expired == 1 && s.flows_active == 0).await;
    socket
        .send_to(&payload(2), proxy.local_addr())
        .await
        .unwrap();
    assert_eq!(receive(&socket, 1).await, vec![2]);
    assert_eq!(proxy.stats().flows_opened, 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn shutdown_and_drop_release_the_port() {
    let echo = Echo::start().await;
    let proxy = Proxy::start(config(echo.addr)).unwrap();
    let addr = proxy.local_addr();
    let socket = client().await;
    socket.send_to(&payload(1), addr).await.unwrap();
    assert_eq!(receive(&socket, 1).await, vec![1]);
    proxy.shutdown().await;
    let rebound = UdpSocket::bind(addr)
        .await
        .expect("port still taken after shutdown");
    drop(rebound);

    // Dropping the handle stops the proxy without waiting: the port frees up soon after.
    let mut cfg = config(echo.addr);
    cfg.listen = addr;
    let proxy = Proxy::start(cfg).unwrap();
    drop(proxy);
    let deadline = Instant::now() + WAIT_LIMIT;
    while UdpSocket::bind(addr).await.is_err() {
        assert!(Instant::now() < deadline, "port still taken after drop");
        sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn invalid_config_and_missing_runtime_are_errors() {
    let mut cfg = config("127.0.0.1:9".parse().unwrap());
    cfg.dup = -0.1;
    assert!(Proxy::start(cfg).is_err());
    let cfg = config("127.0.0.1:9".parse().unwrap());
    let outside = std::thread::spawn(move || Proxy::start(cfg).map(|_| ()))
        .join()
        .unwrap();
    assert!(outside.is_err());
}

/// Sends 200 datagrams through a lossy, duplicating proxy; returns what came back and the
/// settled counters.
async fn lossy_run(seed: u64) -> (Vec<u32>, ProxyStats) {
    let echo = Echo::start().await;
    let mut cfg = config(echo.addr);
    cfg.loss = 0.3;
    cfg.dup = 0.2;
    cfg.seed = seed;
    let proxy = Proxy::start(cfg).unwrap();
    let socket = client().await;
    send_numbered(&socket, proxy.local_addr(), 200).await;
    // Everything sent has been decided once the upstream direction's counters add up, and the
    // replies once the client direction's do.
    let settled = |d: &neonet_proxy::DirectionStats| {
        d.packets_out + d.send_failed + d.dropped + d.overflowed == d.packets_in + d.duplicated
    };
    let stats = stats_until(&proxy, |s| {
        s.to_upstream.packets_in == 200
            && settled(&s.to_upstream)
            && s.to_client.packets_in == s.to_upstream.packets_out
            && settled(&s.to_client)
    })
    .await;
    let got = receive(&socket, stats.to_client.packets_out as usize).await;
    proxy.shutdown().await;
    (got, stats)
}

#[tokio::test]
async fn the_same_seed_gives_the_same_losses() {
    let (got_a, stats_a) = lossy_run(42).await;
    let (got_b, stats_b) = lossy_run(42).await;
    assert_eq!(stats_a.to_client.packets_out as usize, got_a.len());
    assert!(stats_a.to_upstream.dropped > 0 && stats_a.to_upstream.duplicated > 0);
    assert_eq!(got_a, got_b, "seed 42 gave two different traces");
    assert_eq!(stats_a, stats_b);
    let (got_c, _) = lossy_run(43).await;
    assert_ne!(got_a, got_c, "seeds 42 and 43 gave the same trace");
}

/// Without any runtime: the proxy on its own thread, blocking sockets on both ends.
#[test]
fn a_proxy_on_its_own_thread_serves_blocking_callers() {
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    echo.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_echo = stop.clone();
    let echo_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop_echo.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((len, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..len], from);
            }
        }
    });

    let mut cfg = config(echo_addr);
    cfg.delay_ms = 5;
    let proxy = Proxy::start_on_thread(cfg, ProxyLimits::default()).unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(WAIT_LIMIT)).unwrap();
    for i in 0..10u32 {
        client.send_to(&payload(i), proxy.local_addr()).unwrap();
    }
    let mut buf = [0u8; 64];
    for i in 0..10u32 {
        let (len, _) = client
            .recv_from(&mut buf)
            .expect("no reply through the proxy thread");
        assert_eq!(&buf[..len], &payload(i));
    }
    assert_eq!(proxy.stats().to_upstream.packets_in, 10);
    let addr = proxy.local_addr();
    proxy.shutdown();
    std::net::UdpSocket::bind(addr).expect("port still taken after shutdown");

    // Bad settings come back as an error from the caller's thread.
    let mut bad = config(echo_addr);
    bad.reorder = 2.0;
    assert!(Proxy::start_on_thread(bad, ProxyLimits::default()).is_err());

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    echo_thread.join().unwrap();
}

#[tokio::test]
async fn a_bandwidth_limit_queues_what_fits_and_drops_the_rest_at_the_tail() {
    let echo = Echo::start().await;
    let mut cfg = config(echo.addr);
    // 8 kbit/s is 1,000 bytes/s on the wire; 472-byte payloads are 500 bytes with their IPv4
    // and UDP headers; a 1 s queue holds 1,000 bytes: two datagrams, whatever the timing of a
    // burst sent in much less than the 0.5 s the first one takes to leave.
    cfg.rate_kbps = 8;
    cfg.queue_ms = 1_000;
    let proxy = Proxy::start(cfg).unwrap();
    let socket = client().await;
    for i in 0..100u32 {
        let mut d = vec![0u8; 500 - neonet_proxy::WIRE_HEADER_BYTES];
        d[..4].copy_from_slice(&payload(i));
        socket.send_to(&d, proxy.local_addr()).await.unwrap();
    }
    let stats = stats_until(&proxy, |s| {
        let up = &s.to_upstream;
        up.packets_in == 100 && up.packets_out + up.queue_dropped == 100
    })
    .await;
    let up = stats.to_upstream;
    assert_eq!(up.packets_out, 2, "{stats:?}");
    assert_eq!(up.queue_dropped, 98);
    assert_eq!(up.dropped + up.overflowed, 0);
    // The first two got through, in order: a router's tail drop.
    let deadline = Instant::now() + WAIT_LIMIT;
    while echo.seen().len() < 2 {
        assert!(Instant::now() < deadline, "the echo never saw both");
        sleep(Duration::from_millis(5)).await;
    }
    let at_echo: Vec<u32> = echo
        .seen()
        .iter()
        .map(|(_, d)| u32::from_be_bytes(d[..4].try_into().unwrap()))
        .collect();
    assert_eq!(at_echo, vec![0, 1]);
    proxy.shutdown().await;
}
