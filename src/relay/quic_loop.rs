//! The relay's QUIC port driven from **one event loop on one thread** (`neonet-quic`), over
//! quinn-proto (quinn's protocol engine, without quinn's tasks): [`crate::config::QuicDriver::Loop`].
//!
//! quinn (the default driver, [`super::accept`]) runs a task per connection and per stream:
//! every packet in wakes the endpoint task, which hands it over a channel to its connection's
//! task; every datagram out wakes that connection's task, which encrypts and sends it with a
//! system call of its own. Measured with the load tool's fan-out instrument on this project's
//! machines, the same protocol driven from one loop costs 23–44% less CPU per client-tick
//! (README, "Capacity"). This loop owns the UDP socket and every native connection:
//!
//! - **in**: `recvmmsg` with GRO (quinn-udp), each packet straight into quinn-proto's
//!   `Endpoint` and its `Connection`; stream bytes through the same sans-IO framing as the task
//!   driver ([`quic::ChannelStream`], the client channel's limits) to the [`Inbound`] queue;
//!   datagrams into the core's [`SharedInbox`]. A full [`Inbound`] queue holds the connection's
//!   messages in order and stops reading its streams until they are taken (QUIC flow control
//!   then holds the peer back), as a task driver's awaiting `send` would;
//! - **out**: the core's transmits land in each connection's [`Outbox`] (a short lock, never a
//!   wait) and the first one since the loop last looked wakes it (an `eventfd`); the loop moves
//!   them into quinn-proto, polls every touched connection for packets and sends them in
//!   batches of up to [`udp_batch::SEND_BATCH`] per `sendmmsg` across connections;
//! - **timers**: one heap of connection deadlines ([`udp_batch::Deadlines`]).
//!
//! Every policy is the same as the task driver's and lives in the same places: the accept
//! defences ([`Defences::screen_attempt`]: Retry, handshake cap, per-address gate), the
//! connection limit (a permit of the same semaphore, taken once the handshake completes), the
//! per-channel send queue bound ([`quic::CHANNEL_QUEUE_BYTES_MAX`], the slow peer closed with
//! [`quic::CLOSE_CODE_OVERFLOW`]), flush-then-close ([`quic::CLOSE_FLUSH_TIMEOUT`]), the
//! handshake timeout ([`HANDSHAKE_TIMEOUT`]), migration.
//!
//! What it does not serve: browsers. WebTransport (HTTP/3) stays on quinn, on a port of its own
//! ([`super::webtransport_port`]) that `/connect.json` names; this port offers only the native
//! ALPN. Linux only (`sendmmsg`, `eventfd`). Replies leave from the socket's bound address: bind
//! `listen` to the address clients reach when the host has several.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, ServerConfig,
    StreamEvent, StreamId, VarInt, WriteError,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use neonet_proto::server::{ConnId, InboxQuota, Transmit, TransportKind};
use neonet_proto::transform::PathSignals;
use neonet_proto::wire::codec::FrameDecoder;
use neonet_proto::wire::msg::{Channel, CloseReason};

use super::accept::{Admitted, Defences, Screened, SharedInbox};
use super::{ConnIds, Inbound, Link, HANDSHAKE_TIMEOUT};
use crate::metrics::Metrics;
use crate::quic::udp_batch::{self, Deadlines, RecvBatch, SendQueue};
use crate::quic::TransportError;
use crate::quic::{self, ChannelStream, ChannelsSeen, ProtoRead, CHANNEL_QUEUE_BYTES_MAX};
use crate::tls;

/// Shortest interval between two waits for packets, 1 ms: waking for every packet costs a
/// `poll` and a `recvmmsg` each; waiting a millisecond gathers that millisecond's packets
/// (about 30 at 1,000 clients × 30 Hz) into one batch, for at most 1 ms of added latency.
const COALESCE: Duration = Duration::from_millis(1);

/// Longest the loop sleeps with nothing due, 50 ms, so a shutdown is noticed promptly.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// How long a connection's held [`Inbound`] messages wait before the loop tries the full queue
/// again, 1 ms: the core takes up to `INBOUND_BATCH_MAX` frames per wake-up.
const HELD_RETRY: Duration = Duration::from_millis(1);

/// How long the loop waits for connections closed at shutdown to finish closing after it closed
/// the stragglers itself, 1 s (their peers are told; waiting longer only delays the exit).
const CLOSE_ALL_GRACE: Duration = Duration::from_secs(1);

/// Most `recvmmsg` batches read per wake-up, 64 (up to 64 × 32 buffers, GRO segments apart):
/// the socket is emptied before anything else, as quinn's endpoint driver does. An overloaded
/// relay then slows its ticks rather than dropping packets at the socket: with 8 batches, 1,000
/// clients on one saturated core overflowed the 4 MiB receive buffer (64,525 drops in 60 s,
/// 7 handshakes failed), where quinn's driver dropped none. Still bounded, so a flood cannot
/// keep the loop from its timers for ever.
const RECV_BATCHES_PER_WAKE: usize = 64;

/// A Linux `eventfd`: how the core's thread (and shutdown) wakes the loop out of `poll`.
struct EventFd(OwnedFd);

impl EventFd {
    fn new() -> std::io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor nobody else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (never, at 2^64) or EAGAIN
        // means a wake-up is already pending.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn clear(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EAGAIN when nothing was pending.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }
}

/// What the loop, the core's links and the relay handle share.
struct Shared {
    /// Connections whose [`Outbox`] has something the loop has not taken yet.
    dirty: Mutex<Vec<usize>>,
    wake: EventFd,
    /// Cleared at shutdown: new attempts are refused.
    accepting: AtomicBool,
    /// Set at shutdown once the core has closed its sessions: the loop ends when every
    /// connection is gone, and closes the stragglers itself at this deadline.
    drain_until: Mutex<Option<Instant>>,
}

impl Shared {
    fn new() -> std::io::Result<Shared> {
        Ok(Shared {
            dirty: Mutex::new(Vec::new()),
            wake: EventFd::new()?,
            accepting: AtomicBool::new(true),
            drain_until: Mutex::new(None),
        })
    }

    fn mark(&self, key: usize) {
        let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = d.is_empty();
        d.push(key);
        drop(d);
        if was_empty {
            self.wake.wake();
        }
    }
}

/// Why the core asked a connection to close.
enum CloseAsk {
    /// `Transmit::Close`: flush the streams, then close with this code and text.
    Flush { code: u32, text: String },
    /// A channel's queue passed its bound: close at once ([`quic::CLOSE_CODE_OVERFLOW`]).
    Overflow,
}

/// What the core queued for one connection since the loop last took it.
#[derive(Default)]
struct OutboxQueue {
    /// Per channel, whole frames (length prefixes included), in order.
    frames: [Vec<u8>; Channel::ALL.len()],
    datagrams: Vec<Vec<u8>>,
    close: Option<CloseAsk>,
    /// The loop took a close or the connection is gone: later transmits are dropped.
    shut: bool,
    /// In [`Shared::dirty`] already.
    listed: bool,
}

/// One connection's outbound side as the core sees it ([`LoopLink`]), and the path figures
/// the loop keeps current for it.
struct Outbox {
    key: usize,
    shared: Arc<Shared>,
    queue: Mutex<OutboxQueue>,
    /// Per channel, bytes the loop holds that quinn-proto has not taken yet (flow control).
    unsent: [AtomicUsize; Channel::ALL.len()],
    /// `max_datagram_size`, 0 for none.
    max_datagram: AtomicUsize,
    rtt_us: AtomicU64,
    cwnd: AtomicU64,
    congestion_events: AtomicU64,
    remote: Mutex<SocketAddr>,
}

impl Outbox {
    /// An empty outbox for connection `key` at `remote`, its figures not yet published.
    fn new(key: usize, shared: Arc<Shared>, remote: SocketAddr) -> Outbox {
        Outbox {
            key,
            shared,
            queue: Mutex::new(OutboxQueue::default()),
            unsent: Default::default(),
            max_datagram: AtomicUsize::new(0),
            rtt_us: AtomicU64::new(0),
            cwnd: AtomicU64::new(0),
            congestion_events: AtomicU64::new(0),
            remote: Mutex::new(remote),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxQueue> {
        // Every update is one append or swap: a panic cannot leave it half done.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists the connection for the loop, once per take.
    fn list(&self, mut q: std::sync::MutexGuard<'_, OutboxQueue>) {
        if !q.listed {
            q.listed = true;
            drop(q);
            self.shared.mark(self.key);
        }
    }
}

/// The [`Link`] the core gets for a connection of the loop.
struct LoopLink(Arc<Outbox>);

impl Link for LoopLink {
    fn transmit(&self, transmit: Transmit) {
        let o = &self.0;
        let mut q = o.lock();
        if q.shut || q.close.is_some() {
            // Closing: what comes after the close is dropped, as the task driver's queue does.
            return;
        }
        match transmit {
            Transmit::Frame { channel, frame, .. } => {
                let ch = channel as usize;
                let queued = q.frames[ch].len() + o.unsent[ch].load(Relaxed);
                // A frame bigger than the bound (a snapshot) still goes through an empty queue.
                if queued > 0 && queued + frame.len() > CHANNEL_QUEUE_BYTES_MAX {
                    tracing::warn!(peer = %*o.remote.lock().unwrap_or_else(|e| e.into_inner()),
                        "the {channel:?} channel's send queue is full: closing the slow peer");
                    q.close = Some(CloseAsk::Overflow);
                } else {
                    q.frames[ch].extend_from_slice(&frame);
                }
            }
            Transmit::Datagram { data, .. } => q.datagrams.push(data),
            Transmit::Close { reason, detail, .. } => {
                q.close = Some(CloseAsk::Flush {
                    code: quic::close_code(reason).into_inner() as u32,
                    text: quic::close_text(reason, &detail),
                });
            }
        }
        o.list(q);
    }

    fn max_datagram_size(&self) -> Option<usize> {
        Some(self.0.max_datagram.load(Relaxed)).filter(|&n| n > 0)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(*self.0.remote.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn rtt(&self) -> Option<Duration> {
        Some(Duration::from_micros(self.0.rtt_us.load(Relaxed)))
    }

    fn path_signals(&self) -> Option<PathSignals> {
        Some(PathSignals {
            rtt_us: self.0.rtt_us.load(Relaxed),
            cwnd_bytes: self.0.cwnd.load(Relaxed),
            congestion_events: self.0.congestion_events.load(Relaxed),
        })
    }

    fn queued_bytes(&self) -> Option<usize> {
        let q = self.0.lock();
        (0..Channel::ALL.len())
            .map(|ch| q.frames[ch].len() + self.0.unsent[ch].load(Relaxed))
            .max()
    }
}

/// Where the loop hands what it reads, and the limits it applies: the same as the task
/// driver's.
pub(super) struct Ctx {
    /// One permit per open connection (`connections_max`), shared with the WebTransport port.
    pub(super) permits: Arc<Semaphore>,
    pub(super) defences: Arc<Defences>,
    pub(super) conn_ids: Arc<ConnIds>,
    pub(super) inbound: mpsc::Sender<Inbound>,
    pub(super) inbox: Arc<SharedInbox>,
    pub(super) metrics: Option<Arc<Metrics>>,
}

/// The running loop, held by the relay's handle.
pub(super) struct LoopHandle {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoopHandle")
    }
}

impl LoopHandle {
    /// Refuses new attempts from now on.
    pub(super) fn stop_accepting(&self) {
        self.shared.accepting.store(false, Relaxed);
        self.shared.wake.wake();
    }

    /// Waits (blocking) until every connection has closed, closing the ones still open after
    /// `grace` with `ServerShutdown`, then ends the loop.
    pub(super) fn finish(mut self, grace: Duration) {
        *self
            .shared
            .drain_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + grace);
        self.shared.wake.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LoopHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Dropped without a shutdown (a failed start): end the loop at once.
            *self
                .shared
                .drain_until
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            self.shared.wake.wake();
        }
    }
}

/// The loop's socket and endpoint, bound but not yet running ([`bind`], then
/// [`Bound::spawn`]): the relay binds its ports before it starts its core.
pub(super) struct Bound {
    socket: UdpSocket,
    state: quinn_udp::UdpSocketState,
    endpoint: Endpoint,
    /// The bound address.
    pub(super) local: SocketAddr,
    /// The socket's buffers as the kernel granted them.
    pub(super) buffers: quic::SocketBuffers,
}

/// Binds `addr` for native connections only (ALPN `neonet/1`), certificates from `resolver`.
pub(super) fn bind(
    addr: SocketAddr,
    resolver: Arc<tls::AlpnCertResolver>,
    idle_timeout: Duration,
) -> Result<Bound, TransportError> {
    let mut crypto = tls::relay_server_crypto(resolver)?;
    crypto.alpn_protocols = vec![neonet_proto::wire::msg::ALPN.to_vec()];
    let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| TransportError::Tls(tls::TlsError::Quic(e.to_string())))?;
    let mut server = ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(quic::transport_config(idle_timeout)));
    // As the task driver: a client whose address changes keeps its connection.
    server.migration(true);
    let (socket, buffers) = quic::bind_udp(addr, quic::SOCKET_BUFFER_BYTES)?;
    let err = |source| TransportError::Socket { addr, source };
    let local = socket.local_addr().map_err(err)?;
    let state = quinn_udp::UdpSocketState::new((&socket).into()).map_err(err)?;
    Ok(Bound {
        socket,
        state,
        endpoint: Endpoint::new(
            Arc::new(EndpointConfig::default()),
            Some(Arc::new(server)),
            true,
            None,
        ),
        local,
        buffers,
    })
}

impl Bound {
    /// Starts the loop on its own thread (`neonet-quic`).
    pub(super) fn spawn(self, ctx: Ctx) -> Result<LoopHandle, TransportError> {
        let addr = self.local;
        let err = |source| TransportError::Socket { addr, source };
        let shared = Arc::new(Shared::new().map_err(err)?);
        let mut lp = Loop {
            socket: self.socket,
            state: self.state,
            endpoint: self.endpoint,
            accepting: true,
            conns: HashMap::new(),
            timers: Deadlines::default(),
            touched: Vec::new(),
            held: Vec::new(),
            orphans: Vec::new(),
            out: SendQueue::new(),
            recv: RecvBatch::new(),
            scratch: Vec::new(),
            taken: Vec::new(),
            spare_datagrams: Vec::new(),
            shared: shared.clone(),
            ctx,
            closed_all: None,
        };
        let thread = std::thread::Builder::new()
            .name("neonet-quic".into())
            .spawn(move || lp.run())
            .map_err(err)?;
        Ok(LoopHandle {
            shared,
            thread: Some(thread),
        })
    }
}

/// One channel's sending stream, opened on its first frame.
#[derive(Default)]
struct SendChannel {
    id: Option<StreamId>,
    /// The channel id byte is still to be written first.
    header_sent: bool,
    /// Bytes quinn-proto has not taken yet, from `sent` on.
    pending: Vec<u8>,
    sent: usize,
    /// `finish` called.
    finishing: bool,
    /// The peer has everything (finished and acknowledged), or the stream is gone.
    done: bool,
}

impl SendChannel {
    fn unsent(&self) -> usize {
        self.pending.len() - self.sent
    }
}

/// A close the core asked for, waiting for the streams to flush.
struct Closing {
    code: u32,
    text: String,
    until: Instant,
}

/// One connection of the loop.
struct LoopConn {
    conn: quinn_proto::Connection,
    /// The deadline filed in the timer heap.
    filed: Option<Instant>,
    /// The defences' hold on this attempt (address slot; handshake count until connected).
    admitted: Option<Admitted>,
    handshake_until: Option<Instant>,
    /// Its id once the handshake completed and it holds a connection slot.
    id: Option<ConnId>,
    permit: Option<OwnedSemaphorePermit>,
    outbox: Option<Arc<Outbox>>,
    /// `Inbound::Connect` reached the core: its datagrams may go to the inbox.
    announced: bool,
    recv: HashMap<StreamId, ChannelStream>,
    seen: ChannelsSeen,
    /// Streams with bytes left unread while messages are held.
    unread: Vec<StreamId>,
    send: [SendChannel; Channel::ALL.len()],
    /// Messages for the core that the full queue did not take yet, in order.
    held: VecDeque<Inbound>,
    quota: InboxQuota,
    closing: Option<Closing>,
    /// `Inbound::Disconnect` is queued.
    gone: bool,
    remote: SocketAddr,
}

struct Loop {
    socket: UdpSocket,
    state: quinn_udp::UdpSocketState,
    endpoint: Endpoint,
    accepting: bool,
    conns: HashMap<usize, LoopConn>,
    timers: Deadlines,
    /// Connections to drive (events, packets out, deadline) before the next wait.
    touched: Vec<usize>,
    /// Connections holding messages the full queue did not take.
    held: Vec<usize>,
    /// Messages of connections already removed (drained) that the full queue did not take
    /// yet, each connection's in order: its last frames and its `Disconnect`.
    orphans: Vec<VecDeque<Inbound>>,
    out: SendQueue,
    recv: RecvBatch,
    scratch: Vec<u8>,
    /// Reused: the dirty list taken from [`Shared`].
    taken: Vec<usize>,
    /// Reused: one outbox's datagrams.
    spare_datagrams: Vec<Vec<u8>>,
    shared: Arc<Shared>,
    ctx: Ctx,
    /// When the loop closed every remaining connection itself at the end of a shutdown.
    closed_all: Option<Instant>,
}

impl Loop {
    fn run(&mut self) {
        tracing::debug!(addr = ?self.socket.local_addr().ok(), "single-loop QUIC driver running");
        let mut last_wake = Instant::now();
        loop {
            let now = Instant::now();
            if self.accepting && !self.shared.accepting.load(Relaxed) {
                self.accepting = false;
                self.endpoint.set_server_config(None);
            }
            self.take_outboxes(now);
            self.timers_due(now);
            self.retry_held();
            self.drive_touched(now);
            self.out.flush(&self.socket);
            if self.ending(now) {
                break;
            }

            // Wait for packets or a wake-up until the next deadline, at most once per
            // `COALESCE`.
            let mut wake = self.timers.next().unwrap_or(now + IDLE_WAIT);
            wake = wake.min(now + IDLE_WAIT);
            if !self.held.is_empty() || !self.orphans.is_empty() {
                wake = wake.min(now + HELD_RETRY);
            }
            let since = last_wake.elapsed();
            if since < COALESCE {
                std::thread::sleep(COALESCE - since);
            }
            let wait = wake.saturating_duration_since(Instant::now());
            let mut fds = [
                libc::pollfd {
                    fd: self.socket.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.shared.wake.0.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if !wait.is_zero() {
                let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
                // SAFETY: two valid pollfds for the duration of the call.
                unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            }
            last_wake = Instant::now();
            if fds[1].revents != 0 {
                self.shared.wake.clear();
            }
            self.receive();
        }
        tracing::debug!("single-loop QUIC driver stopped");
    }

    /// At shutdown: whether the loop is done (every connection gone, or the grace after
    /// closing the stragglers is over); closes the stragglers at the drain deadline.
    fn ending(&mut self, now: Instant) -> bool {
        let Some(until) = *self
            .shared
            .drain_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        else {
            return false;
        };
        if self.conns.is_empty() {
            return true;
        }
        match self.closed_all {
            None if now >= until => {
                tracing::warn!(
                    open = self.conns.len(),
                    "connections did not close in time; closing them"
                );
                let code = quic::close_code(CloseReason::ServerShutdown);
                for (&key, c) in self.conns.iter_mut() {
                    c.conn
                        .close(now, code, Bytes::from_static(b"server shutting down"));
                    self.touched.push(key);
                }
                self.drive_touched(now);
                self.out.flush(&self.socket);
                self.closed_all = Some(now);
                false
            }
            Some(t) => now >= t + CLOSE_ALL_GRACE,
            None => false,
        }
    }

    /// Reads the waiting packets (at most [`RECV_BATCHES_PER_WAKE`] batches) into the endpoint.
    fn receive(&mut self) {
        let mut attempts = Vec::new();
        for _ in 0..RECV_BATCHES_PER_WAKE {
            match self.recv.recv(&self.socket, &self.state) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "receiving on the QUIC socket");
                    break;
                }
            }
            let now = Instant::now();
            for (meta, seg) in self.recv.packets() {
                self.scratch.clear();
                match self.endpoint.handle(
                    now,
                    meta.addr,
                    meta.dst_ip,
                    udp_batch::ecn(meta),
                    BytesMut::from(seg),
                    &mut self.scratch,
                ) {
                    Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                        if let Some(c) = self.conns.get_mut(&ch.0) {
                            c.conn.handle_event(ev);
                            self.touched.push(ch.0);
                        }
                    }
                    Some(DatagramEvent::NewConnection(incoming)) => attempts.push(incoming),
                    Some(DatagramEvent::Response(t)) => {
                        self.out
                            .slot(&self.socket)
                            .extend_from_slice(&self.scratch[..t.size]);
                        self.out.push(t.destination);
                    }
                    None => {}
                }
            }
            let now = Instant::now();
            for incoming in attempts.drain(..) {
                self.incoming(incoming, now);
            }
        }
    }

    /// A new attempt: the connection limit, then the defences, then the handshake.
    fn incoming(&mut self, incoming: quinn_proto::Incoming, now: Instant) {
        let peer = incoming.remote_address();
        let mut buf = Vec::new();
        let response = if self.ctx.permits.available_permits() == 0 {
            tracing::warn!(%peer, "connection limit reached; refusing");
            Some(self.endpoint.refuse(incoming, &mut buf))
        } else {
            match self.ctx.defences.screen_attempt(
                peer,
                incoming.remote_address_validated(),
                incoming.may_retry(),
            ) {
                Screened::Retry => match self.endpoint.retry(incoming, &mut buf) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        self.endpoint.ignore(e.into_incoming());
                        None
                    }
                },
                Screened::Ignore => {
                    self.endpoint.ignore(incoming);
                    None
                }
                Screened::Refuse => Some(self.endpoint.refuse(incoming, &mut buf)),
                Screened::Admit(admitted) => {
                    match self.endpoint.accept(incoming, now, &mut buf, None) {
                        Ok((ch, conn)) => {
                            self.conns.insert(
                                ch.0,
                                LoopConn {
                                    remote: conn.remote_address(),
                                    conn,
                                    filed: None,
                                    admitted: Some(admitted),
                                    handshake_until: Some(now + HANDSHAKE_TIMEOUT),
                                    id: None,
                                    permit: None,
                                    outbox: None,
                                    announced: false,
                                    recv: HashMap::new(),
                                    seen: ChannelsSeen::default(),
                                    unread: Vec::new(),
                                    send: Default::default(),
                                    held: VecDeque::new(),
                                    quota: InboxQuota::default(),
                                    closing: None,
                                    gone: false,
                                },
                            );
                            self.touched.push(ch.0);
                            None
                        }
                        Err(e) => {
                            tracing::info!(%peer, error = %e.cause, "handshake failed");
                            e.response
                        }
                    }
                }
            }
        };
        if let Some(t) = response {
            let slot = self.out.slot(&self.socket);
            slot.extend_from_slice(&buf[..t.size]);
            self.out.push(t.destination);
        }
    }

    /// Moves what the core queued into the connections.
    fn take_outboxes(&mut self, now: Instant) {
        std::mem::swap(
            &mut self.taken,
            &mut self.shared.dirty.lock().unwrap_or_else(|e| e.into_inner()),
        );
        let mut taken = std::mem::take(&mut self.taken);
        for &key in &taken {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            let Some(outbox) = c.outbox.clone() else {
                continue;
            };
            let close;
            let mut wrote = [false; Channel::ALL.len()];
            {
                let mut q = outbox.lock();
                q.listed = false;
                for (ch, frames) in q.frames.iter_mut().enumerate() {
                    if frames.is_empty() {
                        continue;
                    }
                    let s = &mut c.send[ch];
                    if s.done {
                        // The peer stopped the stream (or it failed): dropped, as the task
                        // driver's stopped writer drops what is queued after.
                        frames.clear();
                        continue;
                    }
                    wrote[ch] = true;
                    if s.unsent() == 0 {
                        // The common case: the whole take becomes the pending bytes, no copy.
                        s.pending = std::mem::take(frames);
                        s.sent = 0;
                    } else {
                        s.pending.extend_from_slice(frames);
                        frames.clear();
                    }
                    outbox.unsent[ch].store(s.unsent(), Relaxed);
                }
                std::mem::swap(&mut q.datagrams, &mut self.spare_datagrams);
                close = q.close.take();
                // Keep later transmits out: the close is in hand.
                q.shut |= close.is_some();
            }
            for d in self.spare_datagrams.drain(..) {
                // Dropped when the path cannot take it now (oldest first), as quinn does.
                let _ = c.conn.datagrams().send(Bytes::from(d), true);
            }
            for (ch, w) in wrote.into_iter().enumerate() {
                if w {
                    c.write(ch);
                }
            }
            match close {
                Some(CloseAsk::Overflow) => {
                    c.conn.close(
                        now,
                        VarInt::from_u32(quic::CLOSE_CODE_OVERFLOW),
                        Bytes::from_static(b"send queue full: reading too slowly"),
                    );
                }
                Some(CloseAsk::Flush { code, text }) if c.closing.is_none() => {
                    c.closing = Some(Closing {
                        code,
                        text,
                        until: now + quic::CLOSE_FLUSH_TIMEOUT,
                    });
                }
                _ => {}
            }
            self.touched.push(key);
        }
        taken.clear();
        self.taken = taken;
    }

    /// Handles every connection deadline that is due.
    fn timers_due(&mut self, now: Instant) {
        while let Some((t, key)) = self.timers.pop_due(now) {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            if !Deadlines::popped(t, &mut c.filed) {
                continue;
            }
            if c.conn.poll_timeout().is_some_and(|at| at <= now) {
                c.conn.handle_timeout(now);
            }
            if c.handshake_until.is_some_and(|at| at <= now) {
                c.handshake_until = None;
                if c.conn.is_handshaking() && !c.conn.is_closed() {
                    tracing::info!(peer = %c.remote, "handshake timed out");
                    c.conn.close(
                        now,
                        VarInt::from_u32(0),
                        Bytes::from_static(b"handshake timed out"),
                    );
                }
            }
            self.touched.push(key);
        }
    }

    /// Offers held messages to the core's queue again.
    fn retry_held(&mut self) {
        self.orphans.retain_mut(|held| {
            flush_held(held, &self.ctx.inbound);
            !held.is_empty()
        });
        if self.held.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.held.len() {
            let key = self.held[i];
            let Some(c) = self.conns.get_mut(&key) else {
                self.held.swap_remove(i);
                continue;
            };
            c.flush_held(&self.ctx);
            if c.held.is_empty() {
                self.held.swap_remove(i);
                self.touched.push(key);
            } else {
                i += 1;
            }
        }
    }

    /// Drives every touched connection: endpoint and application events, the close in
    /// progress, packets out, its next deadline; a drained connection is removed once the core
    /// has its `Disconnect`.
    fn drive_touched(&mut self, now: Instant) {
        if self.touched.is_empty() {
            return;
        }
        self.touched.sort_unstable();
        self.touched.dedup();
        let touched = std::mem::take(&mut self.touched);
        for &key in &touched {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            let ch = ConnectionHandle(key);
            loop {
                let mut progressed = false;
                while let Some(ev) = c.conn.poll_endpoint_events() {
                    progressed = true;
                    if let Some(back) = self.endpoint.handle_event(ch, ev) {
                        c.conn.handle_event(back);
                    }
                }
                while let Some(ev) = c.conn.poll() {
                    progressed = true;
                    c.event(ev, key, &self.ctx, &self.shared, now);
                }
                if !progressed {
                    break;
                }
            }
            if c.held.is_empty() && !c.unread.is_empty() {
                for id in std::mem::take(&mut c.unread) {
                    c.read(id, &self.ctx);
                }
            }
            c.progress_close(now);
            if c.conn.is_closed() {
                // Closed by either side (quinn-proto reports no `ConnectionLost` for a local
                // close): the core hears it now, and the slot and address are free now, as
                // with the task driver; the connection itself lingers while it drains.
                c.lost(&self.ctx);
            }
            loop {
                let slot = self.out.slot(&self.socket);
                match c.conn.poll_transmit(now, 1, slot) {
                    Some(t) => self.out.push(t.destination),
                    None => break,
                }
            }
            c.publish_figures();
            if !c.held.is_empty() && !self.held.contains(&key) {
                self.held.push(key);
            }
            if c.conn.is_drained() {
                // The endpoint has freed the handle (a new connection may get it): what the core
                // has not taken yet waits on its own, in order.
                c.lost(&self.ctx);
                let held = std::mem::take(&mut c.held);
                self.conns.remove(&key);
                if !held.is_empty() {
                    self.orphans.push(held);
                }
                continue;
            }
            let next = [
                c.conn.poll_timeout(),
                c.handshake_until,
                c.closing.as_ref().map(|x| x.until),
            ]
            .into_iter()
            .flatten()
            .min();
            self.timers.file(key, next, &mut c.filed);
        }
        let mut touched = touched;
        touched.clear();
        if self.touched.is_empty() {
            self.touched = touched;
        }
    }
}

impl LoopConn {
    /// One application event of the connection.
    fn event(&mut self, ev: Event, key: usize, ctx: &Ctx, shared: &Arc<Shared>, now: Instant) {
        match ev {
            Event::Connected => self.connected(key, ctx, shared, now),
            Event::ConnectionLost { reason } => {
                tracing::debug!(conn = ?self.id.map(|c| c.0), peer = %self.remote, %reason, "connection closed");
                self.lost(ctx);
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                while let Some(id) = self.conn.streams().accept(Dir::Uni) {
                    self.recv.insert(id, ChannelStream::default());
                    self.read(id, ctx);
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => self.read(id, ctx),
            Event::Stream(StreamEvent::Writable { id }) => {
                if let Some(ch) = self.send.iter().position(|s| s.id == Some(id)) {
                    self.write(ch);
                }
            }
            Event::Stream(StreamEvent::Finished { id }) => {
                if let Some(ch) = self.send.iter().position(|s| s.id == Some(id)) {
                    self.send_done(ch);
                }
            }
            Event::Stream(StreamEvent::Stopped { id, .. }) => {
                if let Some(ch) = self.send.iter().position(|s| s.id == Some(id)) {
                    // The peer refuses the rest: nothing of it is sent or resent (quinn's
                    // `SendStream` resets on drop likewise).
                    let _ = self.conn.send_stream(id).reset(VarInt::from_u32(0));
                    self.send_done(ch);
                }
            }
            Event::Stream(StreamEvent::Available { dir: Dir::Uni }) => {
                for ch in 0..self.send.len() {
                    if self.send[ch].id.is_none() && self.send[ch].unsent() > 0 {
                        self.write(ch);
                    }
                }
            }
            Event::DatagramReceived => {
                while let Some(d) = self.conn.datagrams().recv() {
                    // Unreliable by nature: before the core knows the connection (its queue
                    // full), dropped rather than held.
                    if let (true, Some(id)) = (self.announced, self.id) {
                        ctx.inbox.push(id, d, &mut self.quota);
                    }
                }
            }
            _ => {}
        }
    }

    /// The handshake completed: take a connection slot and announce the connection.
    fn connected(&mut self, key: usize, ctx: &Ctx, shared: &Arc<Shared>, now: Instant) {
        self.handshake_until = None;
        if let Some(a) = self.admitted.as_mut() {
            a.handshake_done();
        }
        // The connection slot is taken only now: a half-open handshake holds none.
        let Ok(permit) = ctx.permits.clone().try_acquire_owned() else {
            tracing::warn!(peer = %self.remote, "connection limit reached; closing");
            self.conn.close(
                now,
                quic::close_code(CloseReason::PlayerLimit),
                Bytes::from_static(b"server full: connection limit reached"),
            );
            return;
        };
        self.permit = Some(permit);
        let id = ctx.conn_ids.next();
        self.id = Some(id);
        let outbox = Arc::new(Outbox::new(key, shared.clone(), self.remote));
        self.outbox = Some(outbox.clone());
        self.publish_figures();
        if let Some(m) = &ctx.metrics {
            m.connection_opened();
        }
        tracing::debug!(conn = id.0, peer = %self.remote, transport = ?TransportKind::Quic, "connected");
        self.send_inbound(
            ctx,
            Inbound::Connect {
                conn: id,
                transport: TransportKind::Quic,
                link: Arc::new(LoopLink(outbox)),
            },
        );
    }

    /// The connection is gone: tell the core (once).
    fn lost(&mut self, ctx: &Ctx) {
        if self.gone {
            return;
        }
        self.gone = true;
        // Nothing more is read: the `Disconnect` is the connection's last message.
        self.unread.clear();
        self.permit = None;
        self.admitted = None;
        if let Some(o) = &self.outbox {
            // Nothing the core queues from now on can be sent.
            o.lock().shut = true;
        }
        if let Some(id) = self.id {
            if let Some(m) = &ctx.metrics {
                m.connection_closed();
            }
            self.send_inbound(ctx, Inbound::Disconnect { conn: id });
        }
    }

    /// Hands `m` to the core's queue, or holds it (in order) while the queue is full.
    fn send_inbound(&mut self, ctx: &Ctx, m: Inbound) {
        if self.held.is_empty() {
            let connect = matches!(m, Inbound::Connect { .. });
            match ctx.inbound.try_send(m) {
                Ok(()) => self.announced |= connect,
                Err(mpsc::error::TrySendError::Full(m)) => self.held.push_back(m),
                // The core is gone (shutdown): nobody to tell.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        } else {
            self.held.push_back(m);
        }
    }

    /// Offers the held messages to the core's queue, in order.
    fn flush_held(&mut self, ctx: &Ctx) {
        if flush_held(&mut self.held, &ctx.inbound) {
            self.announced = true;
        }
    }

    /// Reads what stream `id` has: complete frames to the core, in order, by the channel's
    /// rules; a broken stream is stopped and reported. Left unread while messages are held.
    fn read(&mut self, id: StreamId, ctx: &Ctx) {
        let Some(conn_id) = self.id else {
            return;
        };
        if self.gone {
            return;
        }
        if !self.held.is_empty() {
            if !self.unread.contains(&id) {
                self.unread.push(id);
            }
            return;
        }
        let Some(reader) = self.recv.get_mut(&id) else {
            return;
        };
        let mut frames = Vec::new();
        let read = reader.read_proto(
            &mut self.conn,
            id,
            &self.seen,
            FrameDecoder::for_client_channel,
            &mut frames,
        );
        if let (false, Some(channel)) = (frames.is_empty(), reader.channel()) {
            self.send_inbound(
                ctx,
                Inbound::Frames {
                    conn: conn_id,
                    channel,
                    frames,
                },
            );
        }
        match read {
            ProtoRead::Blocked => {}
            ProtoRead::Ended | ProtoRead::Gone => {
                self.recv.remove(&id);
            }
            ProtoRead::Failed(error) => {
                self.recv.remove(&id);
                self.send_inbound(
                    ctx,
                    Inbound::StreamError {
                        conn: conn_id,
                        error,
                    },
                );
            }
        }
    }

    /// Hands channel `ch`'s pending bytes to quinn-proto, opening its stream first (the
    /// channel's id byte, its priority) if need be; finishes it when closing.
    fn write(&mut self, ch: usize) {
        let s = &mut self.send[ch];
        if s.done {
            return;
        }
        let id = match s.id {
            Some(id) => id,
            None => {
                if s.unsent() == 0 {
                    return;
                }
                // None: the peer's stream limit is reached; `Available` retries.
                let Some(id) = self.conn.streams().open(Dir::Uni) else {
                    return;
                };
                let _ = self
                    .conn
                    .send_stream(id)
                    .set_priority(quic::priority(Channel::ALL[ch]));
                s.id = Some(id);
                id
            }
        };
        let mut stream = self.conn.send_stream(id);
        if !s.header_sent {
            match stream.write(&[Channel::ALL[ch] as u8]) {
                Ok(1) => s.header_sent = true,
                Ok(_) | Err(WriteError::Blocked) => return,
                Err(_) => return self.send_done(ch),
            }
        }
        while s.sent < s.pending.len() {
            match stream.write(&s.pending[s.sent..]) {
                Ok(0) => break,
                Ok(n) => s.sent += n,
                Err(WriteError::Blocked) => break,
                Err(_) => return self.send_done(ch),
            }
        }
        if s.sent == s.pending.len() && !s.pending.is_empty() {
            // All taken: the next take can become `pending` without a copy.
            s.pending = Vec::new();
            s.sent = 0;
        }
        if let Some(o) = &self.outbox {
            o.unsent[ch].store(s.unsent(), Relaxed);
        }
    }

    /// Channel `ch`'s stream is over (the peer has everything, stopped it, or it failed):
    /// nothing more is written to it, and its bytes no longer count as queued.
    fn send_done(&mut self, ch: usize) {
        let s = &mut self.send[ch];
        s.done = true;
        s.pending = Vec::new();
        s.sent = 0;
        if let Some(o) = &self.outbox {
            o.unsent[ch].store(0, Relaxed);
        }
    }

    /// A close in progress: finish every stream once its bytes are taken; close the connection
    /// once the peer has them all, or at the flush deadline.
    fn progress_close(&mut self, now: Instant) {
        let Some(until) = self.closing.as_ref().map(|c| c.until) else {
            return;
        };
        let mut flushed = true;
        for ch in 0..self.send.len() {
            if self.send[ch].unsent() > 0 {
                self.write(ch);
            }
            let s = &mut self.send[ch];
            if s.done {
                continue;
            }
            match s.id {
                Some(id) if s.unsent() == 0 => {
                    if !s.finishing {
                        s.finishing = true;
                        if self.conn.send_stream(id).finish().is_err() {
                            s.done = true;
                            continue;
                        }
                    }
                    flushed = false;
                }
                None if s.unsent() == 0 => {}
                _ => flushed = false,
            }
        }
        if flushed || now >= until || self.conn.is_closed() {
            let closing = self.closing.take().expect("checked above");
            if !self.conn.is_closed() {
                self.conn.close(
                    now,
                    VarInt::from_u32(closing.code),
                    Bytes::from(closing.text.into_bytes()),
                );
            }
        }
    }

    /// Keeps the figures the core reads through the link current.
    fn publish_figures(&mut self) {
        let Some(o) = &self.outbox else {
            return;
        };
        o.max_datagram
            .store(self.conn.datagrams().max_size().unwrap_or(0), Relaxed);
        let path = self.conn.stats().path;
        o.rtt_us.store(path.rtt.as_micros() as u64, Relaxed);
        o.cwnd.store(path.cwnd, Relaxed);
        o.congestion_events.store(path.congestion_events, Relaxed);
        let remote = self.conn.remote_address();
        if remote != self.remote {
            self.remote = remote;
            *o.remote.lock().unwrap_or_else(|e| e.into_inner()) = remote;
        }
    }
}

/// Offers `held` to the core's queue, in order, until it is full; whether an
/// `Inbound::Connect` went through.
fn flush_held(held: &mut VecDeque<Inbound>, inbound: &mpsc::Sender<Inbound>) -> bool {
    let mut connect = false;
    while let Some(m) = held.pop_front() {
        let is_connect = matches!(m, Inbound::Connect { .. });
        match inbound.try_send(m) {
            Ok(()) => connect |= is_connect,
            Err(mpsc::error::TrySendError::Full(m)) => {
                held.push_front(m);
                break;
            }
            // The core is gone (shutdown): nobody to tell.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                held.clear();
                break;
            }
        }
    }
    connect
}

#[cfg(test)]
mod tests {
    use super::*;
    use neonet_proto::wire::msg::CloseReason;

    fn outbox(key: usize) -> (Arc<Shared>, Arc<Outbox>) {
        let shared = Arc::new(Shared::new().expect("eventfd"));
        let outbox = Arc::new(Outbox::new(
            key,
            shared.clone(),
            SocketAddr::from(([127, 0, 0, 1], 9)),
        ));
        (shared, outbox)
    }

    fn frame(channel: Channel, bytes: usize) -> Transmit {
        Transmit::Frame {
            conn: ConnId(1),
            channel,
            frame: vec![0; bytes].into(),
        }
    }

    fn dirty(shared: &Shared) -> Vec<usize> {
        shared.dirty.lock().unwrap().clone()
    }

    #[test]
    fn an_outbox_lists_its_connection_once_per_take_and_wakes_the_loop_once() {
        let (shared, o) = outbox(7);
        let link = LoopLink(o.clone());
        link.transmit(frame(Channel::Chat, 10));
        link.transmit(Transmit::Datagram {
            conn: ConnId(1),
            tick: neonet_proto::time::Tick(1),
            data: vec![1, 2, 3],
        });
        link.transmit(frame(Channel::Chat, 5));
        assert_eq!(dirty(&shared), [7], "listed once until the loop takes it");
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into a live u64.
        let r = unsafe { libc::read(shared.wake.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
        assert_eq!((r, n), (8, 1), "one wake-up for the whole burst");
        assert_eq!(link.queued_bytes(), Some(15));
        // The loop takes it: the next transmit lists it again.
        o.lock().listed = false;
        shared.dirty.lock().unwrap().clear();
        link.transmit(frame(Channel::World, 1));
        assert_eq!(dirty(&shared), [7]);
    }

    #[test]
    fn a_channel_past_its_bound_closes_the_slow_peer_and_later_transmits_are_dropped() {
        let (_shared, o) = outbox(1);
        let link = LoopLink(o.clone());
        // A frame bigger than the bound (a snapshot) goes through an empty queue.
        link.transmit(frame(Channel::World, CHANNEL_QUEUE_BYTES_MAX + 10));
        assert!(o.lock().close.is_none());
        o.lock().frames[Channel::World as usize].clear();
        // Bytes the loop holds unsent (flow control) count against the bound.
        o.unsent[Channel::World as usize].store(CHANNEL_QUEUE_BYTES_MAX - 4, Relaxed);
        link.transmit(frame(Channel::World, 4));
        assert!(o.lock().close.is_none(), "exactly at the bound");
        link.transmit(frame(Channel::Chat, 100));
        assert!(
            o.lock().close.is_none(),
            "another channel has its own bound"
        );
        link.transmit(frame(Channel::World, 1));
        assert!(matches!(o.lock().close, Some(CloseAsk::Overflow)));
        link.transmit(frame(Channel::Chat, 100));
        link.transmit(Transmit::Close {
            conn: ConnId(1),
            reason: CloseReason::Moderation,
            detail: String::new(),
        });
        let q = o.lock();
        assert_eq!(
            q.frames[Channel::Chat as usize].len(),
            100,
            "dropped after the close"
        );
        assert!(
            matches!(q.close, Some(CloseAsk::Overflow)),
            "the first close stands"
        );
    }

    #[test]
    fn the_link_reports_the_figures_the_loop_publishes() {
        let (_shared, o) = outbox(1);
        let link = LoopLink(o.clone());
        assert_eq!(link.max_datagram_size(), None, "no datagrams yet");
        o.max_datagram.store(1200, Relaxed);
        o.rtt_us.store(25_000, Relaxed);
        o.cwnd.store(64_000, Relaxed);
        o.congestion_events.store(2, Relaxed);
        assert_eq!(link.max_datagram_size(), Some(1200));
        assert_eq!(link.rtt(), Some(Duration::from_millis(25)));
        assert_eq!(
            link.path_signals(),
            Some(PathSignals {
                rtt_us: 25_000,
                cwnd_bytes: 64_000,
                congestion_events: 2
            })
        );
        assert_eq!(
            link.remote_addr(),
            Some(SocketAddr::from(([127, 0, 0, 1], 9)))
        );
    }
}
