//! A userspace UDP impairment proxy for real-socket tests and the load tool.
//!
//! This kernel has no `tc netem`, so loss, delay, jitter, duplication and reordering on real
//! sockets come from here instead. The proxy listens on one UDP socket; every client flow (one
//! client source address) gets its own upstream socket, so the upstream server sees one peer per
//! client exactly as it would without the proxy, and replies travel back through the same flow.
//!
//! ```text
//! client A ─┐                 ┌─ flow A: upstream socket A ─┐
//! client B ─┼─ listen socket ─┼─ flow B: upstream socket B ─┼─ upstream server
//! client C ─┘                 └─ flow C: upstream socket C ─┘
//! ```
//!
//! ## Impairment model (per flow, per direction)
//! Each datagram, in arrival order:
//! 1. is lost with probability `loss`;
//! 2. otherwise is duplicated with probability `dup` (the copy leaves right after the original);
//! 3. is scheduled to leave after `delay_ms` plus a uniform jitter in `[-jitter_ms, +jitter_ms]`,
//!    but never before the datagram ahead of it: jitter alone does not reorder, so reordering is
//!    controlled by `reorder` only;
//! 4. with probability `reorder` is held back and swapped with the next datagram of its direction
//!    (it leaves right after that one), or leaves after [`REORDER_MAX_HOLD`] if none follows.
//!
//! With a bandwidth limit (`rate_kbps`), each flow direction is also a bottleneck link, as a
//! router's: before the delay, a datagram waits its turn to be sent at that rate (its UDP
//! payload plus [`WIRE_HEADER_BYTES`]), behind a queue of at most `queue_ms` of that rate; a
//! datagram arriving at a full queue is dropped (tail drop, counted as `queue_dropped`). A
//! sender faster than the rate sees its delay grow, then its datagrams dropped.
//!
//! Every flow direction draws from its own generator forked from `seed` in the order flows open,
//! so the same seed and the same traffic give the same decisions.
//!
//! ## Limits
//! Flows ([`MAX_FLOWS`]), datagrams queued per flow direction
//! ([`MAX_QUEUED_PACKETS_PER_DIRECTION`]), bytes queued across the proxy ([`MAX_QUEUED_BYTES`]) and
//! datagram size ([`MAX_DATAGRAM_BYTES`]) are bounded; whatever breaks a limit is dropped and
//! counted as `overflowed`. Flows idle for [`FLOW_IDLE_TIMEOUT`] are closed.
//!
//! ## Running it
//! [`Proxy::start`] runs the proxy on the caller's Tokio runtime and returns a [`ProxyHandle`]:
//! [`ProxyHandle::shutdown`] stops it and waits until its sockets are closed; dropping the
//! handle stops it too, without waiting. [`Proxy::start_on_thread`] runs it on a thread of its
//! own instead, for blocking callers, and returns a [`ProxyThread`] that stops it when dropped.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use neonet_proto::rng::Rng;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// How long a flow may see no datagram in either direction before it is closed: 60 s, twice
/// quinn's default 30 s idle timeout, so the proxy never ends a flow its endpoints still keep.
pub const FLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Most concurrent client flows: 4096, four times the load tool's 1,000-client target. Each flow
/// costs one socket (a file descriptor) and one task; datagrams from further clients are dropped.
pub const MAX_FLOWS: usize = 4096;

/// Most datagrams waiting in one flow direction (delayed, held or not yet scheduled): 1024. At
/// 60 Hz with a 1 s delay a flow holds 60; the rest is room for handshake flights and bursts.
pub const MAX_QUEUED_PACKETS_PER_DIRECTION: usize = 1024;

/// Most payload bytes waiting across the whole proxy: 64 MiB, so memory stays bounded however
/// many flows are open and however long the delay.
pub const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// Largest datagram relayed, in bytes: 9000 (an Ethernet jumbo frame payload), well above the
/// 1452 B ceiling of quinn's path MTU discovery. Larger datagrams are dropped as `overflowed`.
pub const MAX_DATAGRAM_BYTES: usize = 9000;

/// Longest a datagram chosen for reordering waits for a later one to overtake it: 100 ms (three
/// ticks at 30 Hz), so a quiet flow still gets it, late, rather than never.
pub const REORDER_MAX_HOLD: Duration = Duration::from_millis(100);

/// Bytes the limited link carries per datagram besides its UDP payload: the IPv4 (20) and UDP
/// (8) headers, which a real link's rate carries too.
pub const WIRE_HEADER_BYTES: usize = 28;

/// Default queue of a bandwidth-limited direction, milliseconds at its rate: a router's usual
/// 100–250 ms of buffer, at the short end (a deeper one only adds delay before the drops).
pub const QUEUE_MS_DEFAULT: u64 = 200;

/// Receive and send buffer requested for the listening socket, in bytes: 4 MiB (this machine's
/// `net.core.rmem_max`). The default (~208 KiB) overflows under loopback bursts from hundreds of
/// clients (see `numbers.md`); the kernel silently caps the request at its maximum.
pub const LISTEN_SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Receive and send buffer requested for each flow's upstream socket, in bytes: 1 MiB, enough
/// for one client's burst (a server snapshot flight) without reserving 4 MiB per flow.
pub const FLOW_SOCKET_BUFFER_BYTES: usize = 1024 * 1024;

/// Datagrams in flight from the listening task to one flow's task: 256. The flow task drains it
/// continuously; a full channel means that task is starved, and further datagrams are dropped.
const FLOW_CHANNEL_CAPACITY: usize = 256;

/// Most datagrams a task takes from a socket or channel per wake-up: 64, enough to amortize
/// the wake-up over a burst while still checking for shutdown and sweeps between bursts.
const RECV_BATCH: usize = 64;

/// Longest interval between sweeps for idle flows: 1 s (a sweep is O(flows)).
const SWEEP_INTERVAL_MAX: Duration = Duration::from_secs(1);

/// What the proxy does to traffic, and where it listens and relays to.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// Address the proxy listens on for clients; port 0 picks a free port
    /// (see [`ProxyHandle::local_addr`]).
    pub listen: SocketAddr,
    /// Address of the server every flow is relayed to.
    pub upstream: SocketAddr,
    /// Probability in `[0, 1]` that a datagram is lost, per direction.
    pub loss: f64,
    /// Fixed one-way delay added in each direction, in milliseconds (round trip adds twice this).
    pub delay_ms: u64,
    /// Uniform jitter added to the delay, in `[-jitter_ms, +jitter_ms]` milliseconds (clamped at
    /// zero total delay). Jitter never reorders on its own.
    pub jitter_ms: u64,
    /// Probability in `[0, 1]` that a datagram is sent twice, per direction.
    pub dup: f64,
    /// Probability in `[0, 1]` that a datagram is swapped with the next one of its direction.
    pub reorder: f64,
    /// Bandwidth of each flow direction, kbit/s on the wire (UDP payload plus
    /// [`WIRE_HEADER_BYTES`]); 0 for unlimited.
    pub rate_kbps: u64,
    /// Queue in front of that bandwidth, milliseconds at the rate; a datagram that would wait
    /// longer is dropped (tail drop). Only with `rate_kbps`; [`QUEUE_MS_DEFAULT`] is usual.
    pub queue_ms: u64,
    /// Seed of every random decision; the same seed and traffic give the same decisions.
    pub seed: u64,
}

impl ProxyConfig {
    /// A proxy that relays without impairment (seed 0): a starting point to change fields on.
    pub fn passthrough(listen: SocketAddr, upstream: SocketAddr) -> ProxyConfig {
        ProxyConfig {
            listen,
            upstream,
            loss: 0.0,
            delay_ms: 0,
            jitter_ms: 0,
            dup: 0.0,
            reorder: 0.0,
            rate_kbps: 0,
            queue_ms: QUEUE_MS_DEFAULT,
            seed: 0,
        }
    }

    fn validate(&self) -> io::Result<()> {
        for (name, p) in [
            ("loss", self.loss),
            ("dup", self.dup),
            ("reorder", self.reorder),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("proxy {name} must be a probability in [0, 1], got {p}"),
                ));
            }
        }
        Ok(())
    }

    fn impairment(&self) -> Impairment {
        Impairment {
            loss: self.loss,
            delay: Duration::from_millis(self.delay_ms),
            jitter: Duration::from_millis(self.jitter_ms),
            dup: self.dup,
            reorder: self.reorder,
            rate_bytes_per_s: self.rate_kbps.saturating_mul(1000) / 8,
            queue_bytes: (self.rate_kbps.saturating_mul(self.queue_ms) / 8) as usize,
        }
    }
}

/// The proxy's limits. [`Default`] gives the documented constants; tests lower them to reach
/// the limits quickly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Idle time after which a flow is closed. Default [`FLOW_IDLE_TIMEOUT`].
    pub flow_idle_timeout: Duration,
    /// Most concurrent flows. Default [`MAX_FLOWS`].
    pub max_flows: usize,
    /// Most datagrams waiting per flow direction. Default [`MAX_QUEUED_PACKETS_PER_DIRECTION`].
    pub max_queued_packets_per_direction: usize,
    /// Most payload bytes waiting across the proxy. Default [`MAX_QUEUED_BYTES`].
    pub max_queued_bytes: usize,
}

impl Default for ProxyLimits {
    fn default() -> ProxyLimits {
        ProxyLimits {
            flow_idle_timeout: FLOW_IDLE_TIMEOUT,
            max_flows: MAX_FLOWS,
            max_queued_packets_per_direction: MAX_QUEUED_PACKETS_PER_DIRECTION,
            max_queued_bytes: MAX_QUEUED_BYTES,
        }
    }
}

/// Counters for one direction of traffic, summed over all flows.
///
/// Once traffic has settled: `packets_out + send_failed = packets_in - dropped - overflowed -
/// queue_dropped + duplicated`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DirectionStats {
    /// Datagrams received in this direction.
    pub packets_in: u64,
    /// Datagrams sent on (duplicates included).
    pub packets_out: u64,
    /// Datagrams lost on purpose (the `loss` setting).
    pub dropped: u64,
    /// Extra copies made (the `dup` setting).
    pub duplicated: u64,
    /// Datagrams dropped because a limit was hit: flow cap, queue caps, datagram size.
    pub overflowed: u64,
    /// Datagrams dropped by the bandwidth limit's full queue (the `rate_kbps` setting).
    pub queue_dropped: u64,
    /// Sends the operating system refused (for example, nobody listening upstream).
    pub send_failed: u64,
}

/// A snapshot of the proxy's counters; see [`ProxyHandle::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProxyStats {
    /// Client → upstream traffic.
    pub to_upstream: DirectionStats,
    /// Upstream → client traffic.
    pub to_client: DirectionStats,
    /// Flows open now.
    pub flows_active: u64,
    /// Flows opened since start.
    pub flows_opened: u64,
    /// First datagrams of new clients refused because [`ProxyLimits::max_flows`] were open.
    pub flows_rejected: u64,
    /// Flows closed for being idle.
    pub flows_expired: u64,
    /// Payload bytes waiting in the proxy now.
    pub queued_bytes: u64,
}

/// Entry point: see [`Proxy::start`].
#[derive(Debug)]
pub struct Proxy;

impl Proxy {
    /// Binds the listening socket and starts relaying on the current Tokio runtime, with the
    /// default [`ProxyLimits`].
    ///
    /// Fails with `InvalidInput` when a probability is outside `[0, 1]` or when not called
    /// within a Tokio runtime, and with the bind error when the address is taken.
    pub fn start(config: ProxyConfig) -> io::Result<ProxyHandle> {
        Proxy::start_with_limits(config, ProxyLimits::default())
    }

    /// As [`Proxy::start`], with explicit limits.
    pub fn start_with_limits(config: ProxyConfig, limits: ProxyLimits) -> io::Result<ProxyHandle> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the proxy must be started within a Tokio runtime: {e}"),
            )
        })?;
        let std_socket = bind_udp(config.listen, LISTEN_SOCKET_BUFFER_BYTES)?;
        let listen = Arc::new(UdpSocket::from_std(std_socket)?);
        let local_addr = listen.local_addr()?;
        let shared = Arc::new(Shared::new());
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        let listener = Listener {
            listen,
            upstream: config.upstream,
            impairment: config.impairment(),
            limits,
            shared: shared.clone(),
            rng: Rng::new(config.seed),
            flows: HashMap::new(),
            tasks: JoinSet::new(),
        };
        let task = runtime.spawn(listener.run(shutdown_rx));
        tracing::debug!(%local_addr, upstream = %config.upstream, "proxy started");
        Ok(ProxyHandle {
            local_addr,
            shared,
            shutdown_tx: Some(shutdown_tx),
            task: Some(task),
        })
    }
}

/// A running proxy. Dropping it stops the proxy; [`ProxyHandle::shutdown`] also waits.
#[derive(Debug)]
pub struct ProxyHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown_tx: Option<watch::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ProxyHandle {
    /// The address clients should send to (the bound listen address, with its real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the counters. Each counter is read atomically, the set is not: while
    /// traffic flows, the figures may be a few datagrams apart.
    pub fn stats(&self) -> ProxyStats {
        self.shared.snapshot()
    }

    /// Stops relaying, drops every queued datagram and waits until all sockets are closed.
    pub async fn shutdown(mut self) {
        self.shutdown_tx.take();
        if let Some(task) = self.task.take() {
            // The listener task only ends by shutdown or runtime teardown; either is fine here.
            let _ = task.await;
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        // Dropping the sender wakes the listener task, which closes every flow and its socket.
        self.shutdown_tx.take();
    }
}

impl Proxy {
    /// Starts the proxy on a thread of its own with a single-threaded Tokio runtime, for
    /// callers without a runtime (blocking clients, synchronous tests) and for load runs
    /// where the proxy must not compete with client tasks for the same runtime.
    pub fn start_on_thread(config: ProxyConfig, limits: ProxyLimits) -> io::Result<ProxyThread> {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("neonet-proxy".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match Proxy::start_with_limits(config, limits) {
                        Ok(handle) => {
                            let _ = started_tx.send(Ok((handle.local_addr, handle.shared.clone())));
                            // Stop when told to, or when the `ProxyThread` is dropped.
                            let _ = stop_rx.await;
                            handle.shutdown().await;
                        }
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                        }
                    }
                });
            })?;
        match started_rx.recv() {
            Ok(Ok((local_addr, shared))) => Ok(ProxyThread {
                local_addr,
                shared,
                stop_tx: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("the proxy thread ended before starting"))
            }
        }
    }
}

/// A proxy running on its own thread (see [`Proxy::start_on_thread`]). Dropping it stops the
/// proxy and waits for the thread, like [`ProxyThread::shutdown`].
#[derive(Debug)]
pub struct ProxyThread {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop_tx: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProxyThread {
    /// The address clients should send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the counters; see [`ProxyHandle::stats`].
    pub fn stats(&self) -> ProxyStats {
        self.shared.snapshot()
    }

    /// Stops the proxy and waits until its thread has closed every socket and ended. Blocks:
    /// call it outside async code, or from `spawn_blocking`.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop_tx.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic on the proxy thread has already been reported by the panic hook.
            let _ = thread.join();
        }
    }
}

impl Drop for ProxyThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, Default)]
struct DirectionCounters {
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    overflowed: AtomicU64,
    queue_dropped: AtomicU64,
    send_failed: AtomicU64,
}

impl DirectionCounters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            packets_in: self.packets_in.load(Ordering::Relaxed),
            packets_out: self.packets_out.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            overflowed: self.overflowed.load(Ordering::Relaxed),
            queue_dropped: self.queue_dropped.load(Ordering::Relaxed),
            send_failed: self.send_failed.load(Ordering::Relaxed),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// State shared by the handle, the listener task and every flow task.
#[derive(Debug)]
struct Shared {
    to_upstream: DirectionCounters,
    to_client: DirectionCounters,
    flows_active: AtomicU64,
    flows_opened: AtomicU64,
    flows_rejected: AtomicU64,
    flows_expired: AtomicU64,
    queued_bytes: AtomicUsize,
    /// Origin of the millisecond activity stamps.
    epoch: Instant,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            to_upstream: DirectionCounters::default(),
            to_client: DirectionCounters::default(),
            flows_active: AtomicU64::new(0),
            flows_opened: AtomicU64::new(0),
            flows_rejected: AtomicU64::new(0),
            flows_expired: AtomicU64::new(0),
            queued_bytes: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    fn snapshot(&self) -> ProxyStats {
        ProxyStats {
            to_upstream: self.to_upstream.snapshot(),
            to_client: self.to_client.snapshot(),
            flows_active: self.flows_active.load(Ordering::Relaxed),
            flows_opened: self.flows_opened.load(Ordering::Relaxed),
            flows_rejected: self.flows_rejected.load(Ordering::Relaxed),
            flows_expired: self.flows_expired.load(Ordering::Relaxed),
            queued_bytes: self.queued_bytes.load(Ordering::Relaxed) as u64,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Counts `len` bytes as queued, unless that would break `max`.
    fn reserve(&self, len: usize, max: usize) -> bool {
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before + len > max {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn release(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
    }
}

/// Binds a non-blocking UDP socket with raised buffers.
fn bind_udp(addr: SocketAddr, buffer_bytes: usize) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps the request at net.core.{r,w}mem_max, and a smaller buffer
    // only means more overflow drops, not a broken proxy.
    let _ = socket.set_recv_buffer_size(buffer_bytes);
    let _ = socket.set_send_buffer_size(buffer_bytes);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The impairment settings of one direction.
#[derive(Clone, Copy, Debug)]
struct Impairment {
    loss: f64,
    delay: Duration,
    jitter: Duration,
    dup: f64,
    reorder: f64,
    /// The bottleneck's rate, bytes per second on the wire; 0 for none.
    rate_bytes_per_s: u64,
    /// The bottleneck's queue, bytes.
    queue_bytes: usize,
}

/// A datagram waiting to leave.
#[derive(Debug)]
struct Queued {
    at: Instant,
    /// Tie-break among datagrams due at the same instant: arrival order.
    seq: u64,
    data: Vec<u8>,
    copies: u8,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// Reversed, so that [`BinaryHeap`] (a max-heap) pops the earliest first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// What [`DirectionQueue::admit`] did with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admit {
    /// Lost on purpose.
    Lost,
    /// The direction's queue is full.
    Overflow,
    /// The bandwidth limit's queue is full (tail drop).
    QueueFull,
    /// Scheduled (or held for reordering), with a duplicate if `duplicated`.
    Queued { duplicated: bool },
}

/// The impairment of one flow direction, without I/O: time is an argument.
#[derive(Debug)]
struct DirectionQueue {
    impairment: Impairment,
    rng: Rng,
    max_packets: usize,
    heap: BinaryHeap<Queued>,
    /// A datagram held back for reordering, and when it must leave regardless.
    held: Option<(Queued, Instant)>,
    /// Departure of the last scheduled datagram: later ones never leave before it.
    last_at: Option<Instant>,
    /// When the bandwidth limit has sent everything queued so far.
    link_free_at: Option<Instant>,
    next_seq: u64,
}

impl DirectionQueue {
    fn new(impairment: Impairment, rng: Rng, max_packets: usize) -> DirectionQueue {
        DirectionQueue {
            impairment,
            rng,
            max_packets,
            heap: BinaryHeap::new(),
            held: None,
            last_at: None,
            link_free_at: None,
            next_seq: 0,
        }
    }

    fn len(&self) -> usize {
        self.heap.len() + usize::from(self.held.is_some())
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn admit(&mut self, now: Instant, data: Vec<u8>) -> Admit {
        if self.len() >= self.max_packets {
            return Admit::Overflow;
        }
        let imp = self.impairment;
        if self.rng.chance(imp.loss) {
            return Admit::Lost;
        }
        let duplicated = self.rng.chance(imp.dup);
        // The bottleneck: wait for the bytes ahead, then for this datagram's own bytes.
        let mut sent = now;
        if imp.rate_bytes_per_s > 0 {
            let free = self.link_free_at.unwrap_or(now).max(now);
            let backlog = (free - now).as_secs_f64() * imp.rate_bytes_per_s as f64;
            let wire = data.len() + WIRE_HEADER_BYTES;
            if backlog + wire as f64 > imp.queue_bytes.max(wire) as f64 {
                return Admit::QueueFull;
            }
            sent = free + Duration::from_secs_f64(wire as f64 / imp.rate_bytes_per_s as f64);
            self.link_free_at = Some(sent);
        }
        let mut at = sent + imp.delay;
        if !imp.jitter.is_zero() {
            let jitter_s = imp.jitter.as_secs_f64();
            let offset_s = self.rng.range_f64(-jitter_s, jitter_s);
            at = if offset_s >= 0.0 {
                at + Duration::from_secs_f64(offset_s)
            } else {
                at.checked_sub(Duration::from_secs_f64(-offset_s))
                    .unwrap_or(sent)
                    .max(sent)
            };
        }
        if let Some(last) = self.last_at {
            at = at.max(last);
        }
        self.last_at = Some(at);
        let seq = self.seq();
        let packet = Queued {
            at,
            seq,
            data,
            copies: if duplicated { 2 } else { 1 },
        };
        if self.held.is_none() && self.rng.chance(imp.reorder) {
            self.held = Some((packet, at + REORDER_MAX_HOLD));
        } else {
            self.heap.push(packet);
            if let Some((mut held, _)) = self.held.take() {
                // Swap: the held datagram leaves right after the one that overtook it.
                held.at = at;
                held.seq = self.seq();
                self.heap.push(held);
            }
        }
        Admit::Queued { duplicated }
    }

    /// When [`DirectionQueue::pop_due`] next has something, if ever.
    fn next_deadline(&self) -> Option<Instant> {
        let heap = self.heap.peek().map(|q| q.at);
        let held = self.held.as_ref().map(|(_, deadline)| *deadline);
        match (heap, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next datagram due at `now`, earliest first.
    fn pop_due(&mut self, now: Instant) -> Option<Queued> {
        if self
            .held
            .as_ref()
            .is_some_and(|(_, deadline)| *deadline <= now)
        {
            if let Some((mut held, deadline)) = self.held.take() {
                held.at = deadline;
                held.seq = self.seq();
                self.heap.push(held);
            }
        }
        if self.heap.peek().is_some_and(|q| q.at <= now) {
            return self.heap.pop();
        }
        None
    }

    /// Empties the queue, returning the payload bytes it held.
    fn clear(&mut self) -> usize {
        let held = self.held.take().map(|(q, _)| q.data.len()).unwrap_or(0);
        held + self.heap.drain().map(|q| q.data.len()).sum::<usize>()
    }
}

/// The listener task's view of one flow.
#[derive(Debug)]
struct FlowEntry {
    tx: mpsc::Sender<Vec<u8>>,
    /// Milliseconds since [`Shared::epoch`] of the last datagram in either direction.
    activity_ms: Arc<AtomicU64>,
}

/// The task owning the listening socket: demultiplexes clients into flows.
struct Listener {
    listen: Arc<UdpSocket>,
    upstream: SocketAddr,
    impairment: Impairment,
    limits: ProxyLimits,
    shared: Arc<Shared>,
    rng: Rng,
    flows: HashMap<SocketAddr, FlowEntry>,
    tasks: JoinSet<()>,
}

impl Listener {
    async fn run(mut self, mut shutdown: watch::Receiver<()>) {
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES + 1];
        let sweep_every =
            (self.limits.flow_idle_timeout / 2).clamp(Duration::from_millis(1), SWEEP_INTERVAL_MAX);
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let listen = self.listen.clone();
        loop {
            tokio::select! {
                // Resolves when the handle sends or is dropped: either way, stop.
                _ = shutdown.changed() => break,
                received = listen.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        self.on_datagram(&buf[..len], from);
                        // Drain what else is waiting without another trip through `select!`.
                        for _ in 1..RECV_BATCH {
                            let Ok((len, from)) = listen.try_recv_from(&mut buf) else {
                                break;
                            };
                            self.on_datagram(&buf[..len], from);
                        }
                    }
                    // Unconnected UDP receive errors are transient (ICMP reports); keep going.
                    Err(e) => tracing::trace!(error = %e, "proxy receive error"),
                },
                _ = sweep.tick() => self.sweep(),
            }
        }
        self.flows.clear();
        self.tasks.shutdown().await;
        tracing::debug!(local_addr = ?self.listen.local_addr().ok(), "proxy stopped");
    }

    fn on_datagram(&mut self, data: &[u8], from: SocketAddr) {
        let shared = self.shared.clone();
        let counters = &shared.to_upstream;
        bump(&counters.packets_in);
        if data.len() > MAX_DATAGRAM_BYTES {
            bump(&counters.overflowed);
            return;
        }
        if !self.flows.contains_key(&from) {
            if self.flows.len() >= self.limits.max_flows {
                bump(&self.shared.flows_rejected);
                bump(&counters.overflowed);
                return;
            }
            match self.open_flow(from) {
                Ok(entry) => {
                    self.flows.insert(from, entry);
                }
                Err(e) => {
                    tracing::warn!(client = %from, error = %e, "proxy could not open a flow");
                    bump(&counters.overflowed);
                    return;
                }
            }
        }
        let Some(entry) = self.flows.get(&from) else {
            return;
        };
        entry
            .activity_ms
            .store(self.shared.now_ms(), Ordering::Relaxed);
        if !self
            .shared
            .reserve(data.len(), self.limits.max_queued_bytes)
        {
            bump(&counters.overflowed);
            return;
        }
        match entry.tx.try_send(data.to_vec()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.release(data.len());
                bump(&counters.overflowed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The flow task ended (it only does so on shutdown or a panic): forget it so
                // the client's next datagram opens a fresh flow.
                self.shared.release(data.len());
                bump(&counters.overflowed);
                self.flows.remove(&from);
            }
        }
    }

    fn open_flow(&mut self, client: SocketAddr) -> io::Result<FlowEntry> {
        let bind_ip = match self.upstream {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let std_socket = bind_udp(SocketAddr::new(bind_ip, 0), FLOW_SOCKET_BUFFER_BYTES)?;
        // Connected: the kernel then delivers only the upstream's datagrams to this socket.
        std_socket.connect(self.upstream)?;
        let upstream = UdpSocket::from_std(std_socket)?;
        let (tx, rx) = mpsc::channel(FLOW_CHANNEL_CAPACITY);
        let activity_ms = Arc::new(AtomicU64::new(self.shared.now_ms()));
        let max = self.limits.max_queued_packets_per_direction;
        let flow = Flow {
            client,
            upstream,
            listen: self.listen.clone(),
            rx,
            shared: self.shared.clone(),
            max_queued_bytes: self.limits.max_queued_bytes,
            to_upstream: DirectionQueue::new(self.impairment, self.rng.fork(), max),
            to_client: DirectionQueue::new(self.impairment, self.rng.fork(), max),
            activity_ms: activity_ms.clone(),
        };
        bump(&self.shared.flows_opened);
        self.shared.flows_active.fetch_add(1, Ordering::Relaxed);
        self.tasks.spawn(flow.run());
        tracing::trace!(%client, "proxy flow opened");
        Ok(FlowEntry { tx, activity_ms })
    }

    fn sweep(&mut self) {
        let now_ms = self.shared.now_ms();
        let idle_ms = self.limits.flow_idle_timeout.as_millis() as u64;
        let shared = &self.shared;
        self.flows.retain(|client, entry| {
            let last = entry.activity_ms.load(Ordering::Relaxed);
            let keep = now_ms.saturating_sub(last) < idle_ms;
            if !keep {
                // Dropping the sender ends the flow task, which closes its socket.
                bump(&shared.flows_expired);
                tracing::trace!(%client, "proxy flow expired");
            }
            keep
        });
        // Collect finished flow tasks so the set does not grow with every flow ever opened.
        while self.tasks.try_join_next().is_some() {}
    }
}

/// One client flow: its upstream socket and both directions' queues.
struct Flow {
    client: SocketAddr,
    upstream: UdpSocket,
    listen: Arc<UdpSocket>,
    rx: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    max_queued_bytes: usize,
    to_upstream: DirectionQueue,
    to_client: DirectionQueue,
    activity_ms: Arc<AtomicU64>,
}

impl Flow {
    async fn run(mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES + 1];
        loop {
            let deadline = match (
                self.to_upstream.next_deadline(),
                self.to_client.next_deadline(),
            ) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // Only polled when `deadline` is set; the fallback merely gives the branch a value.
            let timer = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now));
            tokio::select! {
                from_client = self.rx.recv() => match from_client {
                    Some(data) => {
                        self.on_client(data);
                        for _ in 1..RECV_BATCH {
                            let Ok(data) = self.rx.try_recv() else { break };
                            self.on_client(data);
                        }
                    }
                    // The listener dropped this flow: idle, or the proxy is stopping.
                    None => break,
                },
                from_upstream = self.upstream.recv(&mut buf) => match from_upstream {
                    Ok(len) => {
                        self.on_upstream(&buf[..len]);
                        for _ in 1..RECV_BATCH {
                            let Ok(len) = self.upstream.try_recv(&mut buf) else { break };
                            self.on_upstream(&buf[..len]);
                        }
                    }
                    // ICMP port unreachable from a closed upstream port: keep the flow.
                    Err(e) => tracing::trace!(client = %self.client, error = %e, "proxy upstream receive error"),
                },
                _ = timer, if deadline.is_some() => {}
            }
            self.flush().await;
        }
        let queued = self.to_upstream.clear() + self.to_client.clear();
        self.shared.release(queued);
        // The receiver may still hold datagrams the listener reserved bytes for.
        self.rx.close();
        while let Ok(data) = self.rx.try_recv() {
            self.shared.release(data.len());
        }
        self.shared.flows_active.fetch_sub(1, Ordering::Relaxed);
    }

    fn on_client(&mut self, data: Vec<u8>) {
        let len = data.len();
        let admitted = self.to_upstream.admit(Instant::now(), data);
        count_admit(&self.shared, &self.shared.to_upstream, admitted, len);
    }

    fn on_upstream(&mut self, data: &[u8]) {
        let counters = &self.shared.to_client;
        bump(&counters.packets_in);
        self.activity_ms
            .store(self.shared.now_ms(), Ordering::Relaxed);
        if data.len() > MAX_DATAGRAM_BYTES
            || !self.shared.reserve(data.len(), self.max_queued_bytes)
        {
            bump(&counters.overflowed);
            return;
        }
        let admitted = self.to_client.admit(Instant::now(), data.to_vec());
        count_admit(&self.shared, counters, admitted, data.len());
    }

    /// Sends everything due now, in both directions.
    async fn flush(&mut self) {
        let now = Instant::now();
        while let Some(packet) = self.to_upstream.pop_due(now) {
            for _ in 0..packet.copies {
                let sent = self.upstream.send(&packet.data).await;
                count_send(&self.shared.to_upstream, sent.is_ok());
            }
            self.shared.release(packet.data.len());
        }
        while let Some(packet) = self.to_client.pop_due(now) {
            for _ in 0..packet.copies {
                let sent = self.listen.send_to(&packet.data, self.client).await;
                count_send(&self.shared.to_client, sent.is_ok());
            }
            self.shared.release(packet.data.len());
        }
    }
}

/// Counts the outcome of [`DirectionQueue::admit`], releasing the bytes of a datagram that
/// will not be queued.
fn count_admit(shared: &Shared, counters: &DirectionCounters, admitted: Admit, len: usize) {
    match admitted {
        Admit::Lost => {
            shared.release(len);
            bump(&counters.dropped);
        }
        Admit::Overflow => {
            shared.release(len);
            bump(&counters.overflowed);
        }
        Admit::QueueFull => {
            shared.release(len);
            bump(&counters.queue_dropped);
        }
        Admit::Queued { duplicated } => {
            if duplicated {
                bump(&counters.duplicated);
            }
        }
    }
}

fn count_send(counters: &DirectionCounters, ok: bool) {
    bump(if ok {
        &counters.packets_out
    } else {
        &counters.send_failed
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn impairment() -> Impairment {
        Impairment {
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            dup: 0.0,
            reorder: 0.0,
            rate_bytes_per_s: 0,
            queue_bytes: 0,
        }
    }

    fn drain(q: &mut DirectionQueue, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(p) = q.pop_due(now) {
            for _ in 0..p.copies {
                out.push(p.data[0]);
            }
        }
        out
    }

    #[test]
    fn jitter_never_reorders() {
        let imp = Impairment {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(15),
            ..impairment()
        };
        let mut q = DirectionQueue::new(imp, Rng::new(7), 1024);
        let start = Instant::now();
        for i in 0..200u8 {
            let now = start + Duration::from_millis(u64::from(i));
            assert_eq!(q.admit(now, vec![i]), Admit::Queued { duplicated: false });
        }
        let out = drain(&mut q, start + Duration::from_secs(10));
        assert_eq!(out, (0..200).collect::<Vec<u8>>());
    }

    #[test]
    fn nothing_leaves_before_its_delay() {
        let imp = Impairment {
            delay: Duration::from_millis(50),
            ..impairment()
        };
        let mut q = DirectionQueue::new(imp, Rng::new(1), 1024);
        let start = Instant::now();
        q.admit(start, vec![1]);
        assert!(q.pop_due(start + Duration::from_millis(49)).is_none());
        assert_eq!(q.next_deadline(), Some(start + Duration::from_millis(50)));
        assert!(q.pop_due(start + Duration::from_millis(50)).is_some());
    }

    #[test]
    fn reorder_swaps_with_the_next_datagram() {
        let imp = Impairment {
            reorder: 1.0,
            ..impairment()
        };
        let mut q = DirectionQueue::new(imp, Rng::new(3), 1024);
        let now = Instant::now();
        q.admit(now, vec![1]);
        assert!(q.pop_due(now).is_none(), "the first datagram is held");
        q.admit(now, vec![2]);
        q.admit(now, vec![3]);
        q.admit(now, vec![4]);
        q.admit(now, vec![5]);
        assert_eq!(drain(&mut q, now), vec![2, 1, 4, 3]);
        // The last one is held until REORDER_MAX_HOLD passes with nothing to overtake it.
        assert_eq!(q.next_deadline(), Some(now + REORDER_MAX_HOLD));
        assert_eq!(drain(&mut q, now + REORDER_MAX_HOLD), vec![5]);
    }

    #[test]
    fn loss_and_dup_extremes() {
        let now = Instant::now();
        let mut lossy = DirectionQueue::new(
            Impairment {
                loss: 1.0,
                ..impairment()
            },
            Rng::new(1),
            1024,
        );
        assert_eq!(lossy.admit(now, vec![1]), Admit::Lost);
        let mut dup = DirectionQueue::new(
            Impairment {
                dup: 1.0,
                ..impairment()
            },
            Rng::new(1),
            1024,
        );
        assert_eq!(dup.admit(now, vec![1]), Admit::Queued { duplicated: true });
        assert_eq!(drain(&mut dup, now), vec![1, 1]);
    }

    #[test]
    fn queue_cap_overflows() {
        let imp = Impairment {
            delay: Duration::from_secs(1),
            ..impairment()
        };
        let mut q = DirectionQueue::new(imp, Rng::new(1), 2);
        let now = Instant::now();
        q.admit(now, vec![1]);
        q.admit(now, vec![2]);
        assert_eq!(q.admit(now, vec![3]), Admit::Overflow);
        assert_eq!(q.clear(), 2);
    }

    #[test]
    fn a_rate_limited_direction_paces_queues_then_drops_at_the_tail() {
        // 80 kbit/s = 10,000 bytes/s; 100-byte payloads are 128 bytes on the wire, 12.8 ms each;
        // a 100 ms queue holds 1,000 bytes: 7 datagrams.
        let imp = Impairment {
            rate_bytes_per_s: 10_000,
            queue_bytes: 1_000,
            ..impairment()
        };
        let mut q = DirectionQueue::new(imp, Rng::new(1), 1024);
        let now = Instant::now();
        let admitted: Vec<Admit> = (0..10).map(|i| q.admit(now, vec![i; 100])).collect();
        let queued = admitted
            .iter()
            .filter(|a| matches!(a, Admit::Queued { .. }))
            .count();
        assert_eq!(queued, 7, "{admitted:?}");
        assert!(admitted[7..].iter().all(|a| *a == Admit::QueueFull));
        // They leave one serialization time apart, the first after its own.
        let step = Duration::from_micros(12_800);
        assert!(q.pop_due(now + step - Duration::from_micros(10)).is_none());
        assert_eq!(q.pop_due(now + step).map(|p| p.data[0]), Some(0));
        assert!(q
            .pop_due(now + step * 2 - Duration::from_micros(10))
            .is_none());
        assert_eq!(q.pop_due(now + step * 2).map(|p| p.data[0]), Some(1));
        // Once the queue has drained, a datagram is admitted again.
        assert!(matches!(
            q.admit(now + step * 8, vec![9; 100]),
            Admit::Queued { .. }
        ));
    }

    #[test]
    fn invalid_probabilities_are_refused() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut config = ProxyConfig::passthrough(addr, addr);
        config.loss = 1.5;
        assert!(config.validate().is_err());
        config.loss = f64::NAN;
        assert!(config.validate().is_err());
    }
}
