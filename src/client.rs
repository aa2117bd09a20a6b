//! The native client: a non-async facade over [`ClientCore`] for game loops.
//!
//! A background thread runs a single-threaded tokio runtime with the quinn connection. The core
//! lives behind a mutex shared with that thread: the game calls [`Client`] methods from its frame
//! loop (each takes the lock briefly and never waits for the network), the background thread
//! feeds the core what arrives and sends what the core queues. Async programs that run many
//! clients (the load tool) use [`Client::connect_async`] instead: the same background work runs
//! as a task on their runtime, each client still on its own UDP socket.
//!
//! Why one module of about 1,000 lines: the facade and its background task are one concern (a
//! connection's life: connect, drive the core, flush, close) sharing one private state (the
//! core behind its mutex, the wake-ups, the channel writers); the QUIC plumbing both use lives
//! in [`crate::quic`].
//!
//! ```no_run
//! use std::time::Duration;
//! use neonet::client::{Client, ClientEvent, ClientOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("127.0.0.1:4433", ClientOptions::named("ada"))?;
//! client.send_chat("hello")?;
//! loop {
//!     // once per frame: take events, then send
//!     while let Some(event) = client.poll_event() {
//!         match event {
//!             ClientEvent::Chat(m) => println!("<{}> {}", m.from_name, m.body),
//!             ClientEvent::Disconnected { reason, detail } => {
//!                 println!("disconnected: {reason} ({detail})");
//!                 return Ok(());
//!             }
//!             _ => {}
//!         }
//!     }
//!     std::thread::sleep(Duration::from_millis(16));
//! }
//! # }
//! ```
//!
//! ## Guarantees
//! - [`Client::connect`] returns once the client has joined (the `Joined` event is then waiting
//!   in [`Client::poll_event`]) or with a typed [`ConnectError`]; it never waits longer than
//!   [`ClientOptions::connect_timeout`].
//! - Nothing the server sends can panic the client; a server breaking the protocol ends the
//!   session with a `Disconnected` event.
//! - Reliable messages arrive in order within a channel. Streams are not ordered with each
//!   other; the core holds messages that overtake the snapshot and applies them after it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, ConnectionError};
use tokio::sync::{mpsc, Notify};

use neonet_proto::client::{ClientConfig, ClientFigures, ClientTransmit};
use neonet_proto::types::{
    Blueprint, BlueprintId, BlueprintPatch, Bytes as PropBytes, EntityId, EntityPatch, Rank, ReqId,
    Transform, UserId, Vec3,
};
use neonet_proto::wire::codec::{self, FrameDecoder};
use neonet_proto::wire::msg::CloseReason;
use neonet_proto::Time;

use crate::quic::{self, ChannelWriters, StreamEvent, TransportError};
use crate::tls::Trust;

pub use neonet_proto::client::{
    ClientCore, ClientEvent, ClientState, ClientWorld, ReconnectConfig, PENDING_REQUESTS_MAX,
};
pub use neonet_proto::predict::{CharacterInput, CorrectionStats};

/// Reads queued from the stream readers to the client's task (each holds every complete frame
/// of one stream read: usually one packet's worth, ≈ 1.2 kB, at most
/// [`quic::STREAM_READ_CHUNK_BYTES`] plus a partial frame). Full: readers wait and QUIC flow
/// control slows the server. Small on purpose: every channel's reads share this queue, so an
/// acknowledgement (Control) waits behind whatever World broadcast is queued here; 64 reads are
/// a few milliseconds of work, while a backlog left in QUIC stays per stream, where the
/// server's stream priorities put Control first.
pub const INBOUND_QUEUE_LEN: usize = 64;
/// Frames handled per lock of the core, so a fast server cannot keep the game's frame loop
/// waiting on the lock long. Reads are taken whole: a lock handles the read that passes this
/// bound to its end, then takes no more.
pub const INBOUND_BATCH_MAX: usize = 1024;
/// Default bound on connecting and joining.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// How to connect.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Display name to join with (1–64 bytes, no control characters).
    pub name: String,
    /// A token from an earlier session ([`Client::token`]) to come back as the same user.
    pub token: Option<String>,
    /// How to authenticate the relay. Default: the development certificate in `./certs/`.
    pub trust: Trust,
    /// TLS server name. Default `localhost` (the development certificate's name).
    pub server_name: String,
    /// Bound on the QUIC handshake plus the join. Default 10 s.
    pub connect_timeout: Duration,
    /// QUIC idle timeout: a peer silent this long is dead. Default
    /// [`crate::quic::IDLE_TIMEOUT_MS_DEFAULT`] (3 s).
    pub idle_timeout: Duration,
    /// How to come back after a lost connection (see the module documentation); `None`: a lost
    /// connection ends the session. Default: on, with [`ReconnectConfig::default`] and a seed
    /// from the clock.
    pub reconnect: Option<ReconnectConfig>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            name: "player".into(),
            token: None,
            trust: Trust::default(),
            server_name: crate::tls::DEFAULT_SERVER_NAME.into(),
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            idle_timeout: Duration::from_millis(crate::quic::IDLE_TIMEOUT_MS_DEFAULT),
            reconnect: Some(ReconnectConfig {
                // Jitter only: any varying seed will do.
                seed: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                ..ReconnectConfig::default()
            }),
        }
    }
}

impl ClientOptions {
    /// Default options with a display name.
    pub fn named(name: impl Into<String>) -> ClientOptions {
        ClientOptions {
            name: name.into(),
            ..ClientOptions::default()
        }
    }
}

/// Why [`Client::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address could not be resolved.
    #[error("resolving {addr}: {source}")]
    Resolve {
        /// The address given.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The address resolved to nothing.
    #[error("{0} resolves to no address")]
    NoAddress(String),
    /// The socket or TLS configuration could not be set up (a missing `./certs/dev-cert.der`, say).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// quinn refused to start the connection (a bad server name, say).
    #[error("starting the connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed: unreachable, certificate not trusted, ALPN mismatch.
    #[error("QUIC handshake: {0}")]
    Handshake(#[from] ConnectionError),
    /// No handshake or no join within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server closed the session before the join completed.
    #[error("refused by the server: {reason} ({detail})")]
    Refused {
        /// Why.
        reason: CloseReason,
        /// Detail from the server.
        detail: String,
    },
    /// The background thread or its runtime could not start.
    #[error("starting the network thread: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Why a call on a connected [`Client`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The session has ended; nothing more can be sent.
    #[error("disconnected: {reason} ({detail})")]
    Closed {
        /// Why.
        reason: CloseReason,
        /// Detail.
        detail: String,
    },
    /// A datagram larger than the path allows now.
    #[error("datagram of {len} bytes exceeds the path's {max}-byte limit")]
    DatagramTooLarge {
        /// Its size, bytes.
        len: usize,
        /// The limit now, bytes.
        max: usize,
    },
    /// The connection does not carry datagrams (the peer disabled them).
    #[error("the connection does not carry datagrams")]
    DatagramsUnsupported,
}

/// Why [`Client::wait_for`] returned without a match.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// Nothing matched within the timeout.
    #[error("timed out")]
    Timeout,
    /// The session ended and no queued event matched.
    #[error("disconnected: {reason} ({detail})")]
    Closed {
        /// Why.
        reason: CloseReason,
        /// Detail.
        detail: String,
    },
}

struct Inner {
    core: Mutex<ClientCore>,
    /// Signalled whenever the background changed the core (events may be waiting).
    changed: Condvar,
    /// The same, for async waiters.
    changed_async: Notify,
    /// Counts the changes signalled, so an async waiter never misses one made while it was
    /// not waiting ([`Client::changed`]).
    changes: AtomicU64,
    /// Wakes the background thread to send what the core queued.
    wake: Notify,
    /// The core time (µs) the background sleeps until, `u64::MAX` when it has no timeout.
    /// Written and read only with the core locked, so a caller of [`Client::with_core`] sees
    /// either this or the core's new timeout and wakes the background only when it must.
    sleeping_until_us: AtomicU64,
    /// `close()` was called: leave, and stop after a bounded wait.
    closing: AtomicBool,
    start: Instant,
    /// Arrivals of server datagrams, kept only once [`Client::log_datagrams`] asked for them.
    datagram_log: Mutex<DatagramLog>,
    /// The current connection (replaced on every reconnection).
    conn: Mutex<Option<Connection>>,
    /// The endpoint and the runtime it runs on, for [`Client::rebind`].
    endpoint: Mutex<Option<(quinn::Endpoint, tokio::runtime::Handle)>>,
    /// The relay's address.
    remote: SocketAddr,
}

/// A bounded record of server datagrams as they arrived (off unless asked for).
#[derive(Debug, Default)]
struct DatagramLog {
    /// Most arrivals kept; 0 keeps none.
    capacity: usize,
    arrivals: std::collections::VecDeque<DatagramArrival>,
    /// Arrivals dropped because nobody took them in time.
    overflowed: u64,
}

/// One server datagram and when it arrived, on the client core's clock (the `now` it was handed
/// to the core with, so it compares directly with the core's clock sync).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatagramArrival {
    /// When it arrived, on the core's clock.
    pub at: Time,
    /// The datagram as received (refcounted: keeping it costs no copy).
    pub data: Bytes,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, ClientCore> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Time {
        Time(self.start.elapsed().as_micros() as u64)
    }

    fn conn(&self) -> Option<Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_conn(&self, conn: Connection) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
    }

    fn notify_changed(&self) {
        self.changed.notify_all();
        self.changes.fetch_add(1, Ordering::Release);
        self.changed_async.notify_waiters();
    }
}

/// A connection to a relay. See the module documentation.
pub struct Client {
    inner: Arc<Inner>,
    background: Background,
    /// The change count [`Client::changed`] last returned at.
    seen_changes: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("remote", &self.inner.remote)
            .field("state", self.inner.lock().state())
            .finish()
    }
}

fn closed_error(state: &ClientState) -> Option<ClientError> {
    match state {
        ClientState::Closed { reason, detail } => Some(ClientError::Closed {
            reason: *reason,
            detail: detail.clone(),
        }),
        _ => None,
    }
}

/// What joining ended with.
fn join_outcome(state: &ClientState) -> Option<Result<(), ConnectError>> {
    match state {
        ClientState::Joined => Some(Ok(())),
        ClientState::Closed { reason, detail } => Some(Err(ConnectError::Refused {
            reason: *reason,
            detail: detail.clone(),
        })),
        ClientState::Joining | ClientState::Reconnecting { .. } | ClientState::Offline { .. } => {
            None
        }
    }
}

/// Everything `connect` needs before the network: the address, the quinn configuration and the
/// shared state with its fresh core.
struct Prepared {
    remote: SocketAddr,
    quinn_config: quinn::ClientConfig,
    server_name: String,
    timeout: Duration,
    inner: Arc<Inner>,
}

fn prepare(
    addr: impl ToSocketAddrs,
    options: &ClientOptions,
    camera: Option<Vec3>,
) -> Result<Prepared, ConnectError> {
    let shown = || {
        addr.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map_or_else(|| "address".to_string(), |a| a.to_string())
    };
    let remote: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|source| ConnectError::Resolve {
            addr: shown(),
            source,
        })?
        .next()
        .ok_or_else(|| ConnectError::NoAddress(shown()))?;
    let quinn_config = quic::client_config(&options.trust, options.idle_timeout)?;
    let config = ClientConfig {
        name: options.name.clone(),
        token: options.token.clone(),
    };
    let mut core = match camera {
        None => ClientCore::new(config, Time::ZERO),
        Some(camera) => ClientCore::new_spectator(config, camera, Time::ZERO),
    };
    core.set_reconnect(options.reconnect.clone());
    let inner = Arc::new(Inner {
        core: Mutex::new(core),
        changed: Condvar::new(),
        changed_async: Notify::new(),
        changes: AtomicU64::new(0),
        wake: Notify::new(),
        sleeping_until_us: AtomicU64::new(0),
        closing: AtomicBool::new(false),
        start: Instant::now(),
        datagram_log: Mutex::new(DatagramLog::default()),
        conn: Mutex::new(None),
        endpoint: Mutex::new(None),
        remote,
    });
    Ok(Prepared {
        remote,
        quinn_config,
        server_name: options.server_name.clone(),
        timeout: options.connect_timeout,
        inner,
    })
}

/// The QUIC handshake, on the current tokio runtime.
async fn handshake(p: &Prepared) -> Result<(Dialer, Connection), ConnectError> {
    let endpoint = quic::client_endpoint(p.remote)?;
    *p.inner.endpoint.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((endpoint.clone(), tokio::runtime::Handle::current()));
    let dialer = Dialer {
        endpoint,
        config: p.quinn_config.clone(),
        remote: p.remote,
        server_name: p.server_name.clone(),
        timeout: p.timeout,
    };
    let conn = dialer.dial().await?;
    p.inner.set_conn(conn.clone());
    Ok((dialer, conn))
}

/// What opening a connection to the relay takes, kept for reconnections (on the same endpoint,
/// so a rebound socket stays in use).
struct Dialer {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    remote: SocketAddr,
    server_name: String,
    timeout: Duration,
}

impl Dialer {
    async fn dial(&self) -> Result<Connection, ConnectError> {
        let connecting =
            self.endpoint
                .connect_with(self.config.clone(), self.remote, &self.server_name)?;
        match tokio::time::timeout(self.timeout, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ConnectError::Timeout(self.timeout)),
        }
    }
}

/// The session until it ends: each connection until it is lost, then, while the core asks for
/// it ([`ClientCore::poll_connect`]), a new one on the same endpoint; finally a bounded wait for
/// the endpoint to finish closing.
async fn run_to_end(inner: Arc<Inner>, dialer: Dialer, conn: Connection) {
    let mut conn = Some(conn);
    loop {
        if let Some(c) = conn.take() {
            inner.set_conn(c.clone());
            run(inner.clone(), c).await;
        }
        if !wait_for_redial(&inner).await {
            break;
        }
        match dialer.dial().await {
            Ok(c) => {
                let now = inner.now();
                inner.lock().handle_connected(now);
                conn = Some(c);
            }
            Err(e) => {
                let now = inner.now();
                inner
                    .lock()
                    .handle_transport_lost(CloseReason::Timeout, e.to_string(), now);
                inner.notify_changed();
            }
        }
    }
    inner.notify_changed();
    let _ = tokio::time::timeout(quic::CLOSE_FLUSH_TIMEOUT, dialer.endpoint.wait_idle()).await;
}

/// Between connections: runs the core's timers until it asks for a new connection (`true`) or
/// the session is over, closed or left (`false`).
async fn wait_for_redial(inner: &Inner) -> bool {
    loop {
        let timeout = {
            let mut core = inner.lock();
            if inner.closing.load(Ordering::Acquire)
                && !matches!(core.state(), ClientState::Closed { .. })
            {
                core.handle_disconnect(CloseReason::ClientLeft, "left".into());
            }
            let now = inner.now();
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
            if matches!(core.state(), ClientState::Closed { .. }) {
                return false;
            }
            if core.poll_connect() {
                return true;
            }
            let t = core.poll_timeout();
            inner
                .sleeping_until_us
                .store(t.map_or(u64::MAX, |t| t.0), Ordering::Relaxed);
            t
        };
        inner.notify_changed();
        let deadline = timeout
            .map(|t| inner.start + Duration::from_micros(t.0))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
}

impl Client {
    /// Connects to a relay at `addr` (`"127.0.0.1:4433"`, `"host:4433"` or a `SocketAddr`) and
    /// joins, with the network on a background thread of its own. Blocks for at most
    /// `options.connect_timeout`. Do not call it from async code: see [`Client::connect_async`].
    pub fn connect(
        addr: impl ToSocketAddrs,
        options: ClientOptions,
    ) -> Result<Client, ConnectError> {
        Self::connect_as(addr, options, None)
    }

    /// Like [`Client::connect`], joining as a **spectator**: no player entity, the world chosen
    /// around `camera` (metres; move it with [`Client::set_camera`]), no player state sent.
    /// For observers, replay recorders and dashboards.
    pub fn connect_spectator(
        addr: impl ToSocketAddrs,
        options: ClientOptions,
        camera: Vec3,
    ) -> Result<Client, ConnectError> {
        Self::connect_as(addr, options, Some(camera))
    }

    fn connect_as(
        addr: impl ToSocketAddrs,
        options: ClientOptions,
        camera: Option<Vec3>,
    ) -> Result<Client, ConnectError> {
        let p = prepare(addr, &options, camera)?;
        let (setup_tx, setup_rx) = std::sync::mpsc::channel::<Result<Connection, ConnectError>>();
        let bg = p.inner.clone();
        let inner = p.inner.clone();
        let timeout = p.timeout;
        let thread = std::thread::Builder::new()
            .name("neonet-client".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = setup_tx.send(Err(ConnectError::Runtime(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    match handshake(&p).await {
                        Ok((dialer, conn)) => {
                            if setup_tx.send(Ok(conn.clone())).is_err() {
                                // `connect` gave up waiting: nobody will use this connection.
                                conn.close(quic::close_code(CloseReason::ClientLeft), b"");
                                return;
                            }
                            run_to_end(bg, dialer, conn).await;
                        }
                        Err(e) => {
                            let _ = setup_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(ConnectError::Runtime)?;
        match setup_rx.recv_timeout(timeout + Duration::from_secs(1)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err(ConnectError::Timeout(timeout)),
        };
        let client = Client {
            inner,
            background: Background::Thread(Some(thread)),
            seen_changes: AtomicU64::new(0),
        };
        // Wait for the join (or its refusal) within what is left of the timeout.
        let deadline = client.inner.start + timeout;
        let mut core = client.inner.lock();
        loop {
            if let Some(outcome) = join_outcome(core.state()) {
                drop(core);
                return outcome.map(|()| client);
            }
            let now = Instant::now();
            if now >= deadline {
                drop(core);
                return Err(ConnectError::Timeout(timeout));
            }
            core = client
                .inner
                .changed
                .wait_timeout(core, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Like [`Client::connect`], for async callers (a load tool running many clients on one
    /// runtime): the network runs as a task on the current tokio runtime instead of a thread,
    /// each client still on its own UDP socket. The per-frame methods stay non-blocking. End it
    /// with [`Client::close_async`]; dropping it leaves without waiting.
    pub async fn connect_async(
        addr: SocketAddr,
        options: ClientOptions,
    ) -> Result<Client, ConnectError> {
        let p = prepare(addr, &options, None)?;
        let (dialer, conn) = handshake(&p).await?;
        let inner = p.inner.clone();
        let task = tokio::spawn(run_to_end(inner.clone(), dialer, conn));
        let client = Client {
            inner,
            background: Background::Task(Some(task)),
            seen_changes: AtomicU64::new(0),
        };
        let deadline = tokio::time::Instant::from_std(client.inner.start + p.timeout);
        let shared = client.inner.clone();
        loop {
            let changed = shared.changed_async.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let outcome = join_outcome(shared.lock().state());
            if let Some(outcome) = outcome {
                return outcome.map(|()| client);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(ConnectError::Timeout(p.timeout));
            }
        }
    }

    // ---- per frame ----

    /// The next event, if any. Call every frame until `None`.
    pub fn poll_event(&self) -> Option<ClientEvent> {
        self.inner.lock().poll_event()
    }

    /// Blocks until an event matching `pred` arrives (events before it are consumed), the
    /// session ends, or `timeout` passes. For tests and tools; games use [`Client::poll_event`].
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&ClientEvent) -> bool,
    ) -> Result<ClientEvent, WaitError> {
        let deadline = Instant::now() + timeout;
        let mut core = self.inner.lock();
        loop {
            while let Some(ev) = core.poll_event() {
                if pred(&ev) {
                    return Ok(ev);
                }
            }
            if let ClientState::Closed { reason, detail } = core.state() {
                return Err(WaitError::Closed {
                    reason: *reason,
                    detail: detail.clone(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout);
            }
            core = self
                .inner
                .changed
                .wait_timeout(core, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn send<R>(&self, f: impl FnOnce(&mut ClientCore) -> R) -> Result<R, ClientError> {
        let r = {
            let mut core = self.inner.lock();
            if let Some(e) = closed_error(core.state()) {
                return Err(e);
            }
            f(&mut core)
        };
        self.inner.wake.notify_one();
        Ok(r)
    }

    /// Says something in chat. The server stamps the sender; it comes back as a `Chat` event.
    pub fn send_chat(&self, body: impl Into<String>) -> Result<ReqId, ClientError> {
        self.send(|c| c.send_chat(body))
    }

    /// Runs a command, name first (`["chat", "clear"]`, `["name", "ada"]`).
    pub fn send_command(&self, args: Vec<String>) -> Result<ReqId, ClientError> {
        self.send(|c| c.send_command(args))
    }

    // ---- moderation: the typed moderation commands ([`ClientCore::kick`] and the rest). A
    // user is named by display name or `#ID`; each answers `Acked` or `Refused` (after a
    // `CommandReply` saying why). ----

    /// `/kick NAME [reason]`: disconnects a player of lower rank; the reason is shown to them.
    pub fn kick(&self, name: &str, reason: Option<&str>) -> Result<ReqId, ClientError> {
        self.send(|c| c.kick(name, reason))
    }

    /// `/mute NAME [duration]` (`"10m"`, `"2h"`, `"7d"`; `None`: until unmuted).
    pub fn mute(&self, name: &str, duration: Option<&str>) -> Result<ReqId, ClientError> {
        self.send(|c| c.mute(name, duration))
    }

    /// `/unmute NAME`.
    pub fn unmute(&self, name: &str) -> Result<ReqId, ClientError> {
        self.send(|c| c.unmute(name))
    }

    /// `/ban NAME [duration] [reason]` (admin): for `duration` or for good; the reason is
    /// shown to them at every refused join.
    pub fn ban(
        &self,
        name: &str,
        duration: Option<&str>,
        reason: Option<&str>,
    ) -> Result<ReqId, ClientError> {
        self.send(|c| c.ban(name, duration, reason))
    }

    /// `/unban NAME` (admin).
    pub fn unban(&self, name: &str) -> Result<ReqId, ClientError> {
        self.send(|c| c.unban(name))
    }

    /// `/rank NAME RANK` (admin).
    pub fn set_rank(&self, name: &str, rank: Rank) -> Result<ReqId, ClientError> {
        self.send(|c| c.set_rank(name, rank))
    }

    /// `/revoke NAME` (admin): invalidates every token of the user and disconnects them.
    pub fn revoke_tokens(&self, name: &str) -> Result<ReqId, ClientError> {
        self.send(|c| c.revoke_tokens(name))
    }

    /// `/help`: answered with a `CommandReply` listing what this user's rank may do.
    pub fn help(&self) -> Result<ReqId, ClientError> {
        self.send(|c| c.help())
    }

    /// Adds a blueprint (builder rank).
    pub fn add_blueprint(&self, blueprint: Blueprint) -> Result<ReqId, ClientError> {
        self.send(|c| c.add_blueprint(blueprint))
    }

    /// Modifies a blueprint at the version after the one this client knows. If someone else got
    /// there first, the change is refused (`Conflict`) and the current blueprint comes back as
    /// `BlueprintModified`.
    pub fn modify_blueprint(
        &self,
        id: BlueprintId,
        patch: BlueprintPatch,
    ) -> Result<ReqId, ClientError> {
        self.send(|c| c.modify_blueprint(id, patch))
    }

    /// Places an app (builder rank); its id arrives with `EntityAdded`.
    pub fn add_entity(
        &self,
        blueprint: BlueprintId,
        transform: Transform,
        props: Vec<(String, PropBytes)>,
    ) -> Result<ReqId, ClientError> {
        self.send(|c| c.add_entity(blueprint, transform, props))
    }

    /// Modifies an entity's fields (its owner, or builder rank).
    pub fn modify_entity(&self, id: EntityId, patch: EntityPatch) -> Result<ReqId, ClientError> {
        self.send(|c| c.modify_entity(id, patch))
    }

    /// Removes an app (builder rank).
    pub fn remove_entity(&self, id: EntityId) -> Result<ReqId, ClientError> {
        self.send(|c| c.remove_entity(id))
    }

    /// Fires an event on an entity, to everyone else or to one player.
    pub fn send_entity_event(
        &self,
        entity: EntityId,
        name: impl Into<String>,
        data: PropBytes,
        to: Option<EntityId>,
    ) -> Result<(), ClientError> {
        self.send(|c| c.send_entity_event(entity, name, data, to))
    }

    /// Sends an unreliable datagram now (not through the core). It must fit
    /// [`Client::max_datagram_size`], which changes with path MTU discovery.
    pub fn send_datagram(&self, data: impl Into<Bytes>) -> Result<(), ClientError> {
        if let Some(e) = closed_error(self.inner.lock().state()) {
            return Err(e);
        }
        let data = data.into();
        let len = data.len();
        let Some(conn) = self.inner.conn() else {
            return Err(ClientError::DatagramsUnsupported);
        };
        conn.send_datagram(data).map_err(|e| match e {
            quinn::SendDatagramError::TooLarge => ClientError::DatagramTooLarge {
                len,
                max: conn.max_datagram_size().unwrap_or(0),
            },
            quinn::SendDatagramError::UnsupportedByPeer | quinn::SendDatagramError::Disabled => {
                ClientError::DatagramsUnsupported
            }
            quinn::SendDatagramError::ConnectionLost(e) => ClientError::Closed {
                reason: CloseReason::Timeout,
                detail: e.to_string(),
            },
        })
    }

    /// The largest datagram the path carries now, `None` if datagrams are unsupported.
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.inner.conn()?.max_datagram_size()
    }

    // ---- state ----

    /// A copy of the world mirror. See [`Client::with_world`] to avoid the copy.
    pub fn world(&self) -> ClientWorld {
        self.inner.lock().world().clone()
    }

    /// Runs `f` on the world mirror, holding the lock (keep `f` short).
    pub fn with_world<R>(&self, f: impl FnOnce(&ClientWorld) -> R) -> R {
        f(self.inner.lock().world())
    }

    /// Runs `f` on the core itself (for the transform and prediction layers), then sends what it
    /// queued. Holds the lock: keep `f` short.
    pub fn with_core<R>(&self, f: impl FnOnce(&mut ClientCore) -> R) -> R {
        let mut core = self.inner.lock();
        let r = f(&mut core);
        // Wake the background only for work it would not do anyway: something to send, a
        // timeout earlier than the one it sleeps until, or a session `f` ended. A game steering
        // every frame (its input is sampled at the next prediction tick) then costs no extra
        // wake-up.
        let sleeping_until = self.inner.sleeping_until_us.load(Ordering::Relaxed);
        let due = core.poll_timeout().map_or(u64::MAX, |t| t.0);
        let ended = matches!(core.state(), ClientState::Closed { .. });
        if core.has_transmits() || due < sleeping_until || ended {
            self.inner.wake.notify_one();
        }
        r
    }

    // ---- movement ----

    /// Sets the input the local player moves with (held until changed). Sampled every client
    /// tick, predicted at once and sent redundantly to the server.
    pub fn set_input(&self, input: CharacterInput) {
        self.inner.lock().set_input(input);
    }

    /// The local player's predicted transform to render now. `None` until the first
    /// authoritative state arrived.
    pub fn player_transform(&self) -> Option<neonet_proto::types::Transform> {
        let now = self.inner.now();
        self.inner.lock().player_transform(now)
    }

    /// Starts a render frame `dt_s` seconds after the previous one; returns the server tick
    /// (fractional) to render remote entities at with [`Client::entity_transform`].
    pub fn begin_frame(&self, dt_s: f32) -> Option<f64> {
        let now = self.inner.now();
        self.inner.lock().begin_frame(now, dt_s)
    }

    /// A remote entity's interpolated transform at render tick `at` (from `begin_frame`).
    pub fn entity_transform(
        &self,
        id: EntityId,
        at: f64,
    ) -> Option<neonet_proto::types::Transform> {
        self.inner.lock().entity_transform(id, at)
    }

    /// A remote entity's latest authoritative transform and its server tick.
    pub fn latest_transform(
        &self,
        id: EntityId,
    ) -> Option<(neonet_proto::time::Tick, neonet_proto::types::Transform)> {
        self.inner.lock().latest_transform(id)
    }

    /// Prediction correction statistics, once moving.
    pub fn correction_stats(&self) -> Option<CorrectionStats> {
        self.inner.lock().correction_stats()
    }

    /// Own player entity.
    pub fn player(&self) -> Option<EntityId> {
        self.inner.lock().player()
    }

    /// Own user.
    pub fn user(&self) -> Option<UserId> {
        self.inner.lock().user()
    }

    /// Own effective rank.
    pub fn rank(&self) -> Rank {
        self.inner.lock().rank()
    }

    /// The token to come back as the same user ([`ClientOptions::token`]).
    pub fn token(&self) -> Option<String> {
        self.inner.lock().token().map(str::to_string)
    }

    /// Where the session is.
    pub fn state(&self) -> ClientState {
        self.inner.lock().state().clone()
    }

    /// Latest measured round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.inner.lock().rtt()
    }

    /// The relay's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.inner.remote
    }

    /// The local address the client's UDP socket is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &*self
            .inner
            .endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            Some((endpoint, _)) => endpoint.local_addr(),
            None => Err(std::io::Error::other("not connected")),
        }
    }

    /// Moves the client onto a new UDP socket (a new local port), as when a phone changes
    /// networks: QUIC migrates the connection to the new address and the session goes on, with
    /// no reconnection. Returns the new local address.
    pub fn rebind(&self) -> Result<SocketAddr, TransportError> {
        let (endpoint, handle) = self
            .inner
            .endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| TransportError::Socket {
                addr: self.inner.remote,
                source: std::io::Error::other("no endpoint"),
            })?;
        let bind: SocketAddr = if self.inner.remote.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let (socket, _) = quic::bind_udp(bind, quic::CLIENT_SOCKET_BUFFER_BYTES)?;
        let _runtime = handle.enter();
        let err = |source| TransportError::Socket { addr: bind, source };
        endpoint.rebind(socket).map_err(err)?;
        endpoint.local_addr().map_err(err)
    }

    /// Tries to reconnect at once: from [`ClientState::Offline`], or cutting a backoff short.
    pub fn reconnect_now(&self) {
        let now = self.inner.now();
        self.inner.lock().reconnect_now(now);
        self.inner.wake.notify_one();
    }

    /// Moves a spectator's camera (metres). No-op for a player.
    pub fn set_camera(&self, position: Vec3) {
        self.with_core(|c| c.set_camera(position));
    }

    /// Whether this client joined as a spectator.
    pub fn is_spectator(&self) -> bool {
        self.inner.lock().is_spectator()
    }

    /// This connection's figures as the client core counted them: bytes, frames and datagrams
    /// each way, own-state bytes, server datagrams lost, RTT, prediction corrections (budget
    /// use is the server's: [`neonet_proto::server::ServerCore::conn_figures`]).
    pub fn figures(&self) -> ClientFigures {
        self.inner.lock().figures()
    }

    /// The QUIC connection's counters: UDP bytes and datagrams each way, packets lost, RTT and
    /// congestion window (for tools measuring traffic; games rarely need them).
    pub fn connection_stats(&self) -> quinn::ConnectionStats {
        self.inner
            .conn()
            .map_or_else(quinn::ConnectionStats::default, |c| c.stats())
    }

    /// Starts (or, with 0, stops) keeping the server datagrams that arrive, with their arrival
    /// time, up to `capacity` of them (the oldest are dropped beyond that), for
    /// [`Client::take_datagram_arrivals`]. For measuring tools (latency from the server tick in
    /// each datagram to its arrival, sequence gaps); off by default, and datagrams that arrived
    /// before the call are not kept.
    pub fn log_datagrams(&self, capacity: usize) {
        let mut log = self
            .inner
            .datagram_log
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        log.capacity = capacity;
        while log.arrivals.len() > capacity {
            log.arrivals.pop_front();
            log.overflowed += 1;
        }
    }

    /// Moves every datagram arrival kept since the last call into `out` (oldest first) and
    /// returns how many were dropped since then because more than the capacity arrived.
    pub fn take_datagram_arrivals(&self, out: &mut Vec<DatagramArrival>) -> u64 {
        let mut log = self
            .inner
            .datagram_log
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        out.extend(log.arrivals.drain(..));
        std::mem::take(&mut log.overflowed)
    }

    /// Waits until the background has changed the core (a frame or datagram arrived, the
    /// session ended) since the previous call returned (or since the client was created):
    /// events may then be waiting in [`Client::poll_event`]. A change made while the caller was
    /// busy elsewhere is not missed: the call then returns at once. For async callers that react
    /// to events as they arrive rather than once per frame (the load tool timing
    /// acknowledgements).
    pub async fn changed(&self) {
        let seen = self.seen_changes.load(Ordering::Acquire);
        loop {
            let notified = self.inner.changed_async.notified();
            tokio::pin!(notified);
            // Registered before reading the count: a change after the read wakes it.
            notified.as_mut().enable();
            let now = self.inner.changes.load(Ordering::Acquire);
            if now != seen {
                self.seen_changes.store(now, Ordering::Release);
                return;
            }
            notified.await;
        }
    }

    /// The time now on the client core's clock (what the background hands the core as `now`).
    pub fn core_now(&self) -> Time {
        self.inner.now()
    }

    /// Leaves: says goodbye, waits (bounded) for the server to close, and stops the network
    /// thread. Dropping a `Client` does the same.
    pub fn close(mut self) {
        self.shutdown();
    }

    /// Leaves like [`Client::close`], awaiting the background task (from
    /// [`Client::connect_async`]) instead of blocking a thread.
    pub async fn close_async(mut self) {
        self.begin_leaving();
        match &mut self.background {
            Background::Task(task) => {
                if let Some(task) = task.take() {
                    let _ = task.await;
                }
            }
            Background::Thread(thread) => {
                if let Some(thread) = thread.take() {
                    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                }
            }
        }
    }

    /// Says goodbye and tells the background to stop after a bounded wait.
    fn begin_leaving(&self) {
        if self.inner.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let mut core = self.inner.lock();
            if core.state() != &ClientState::Joining || core.session().is_some() {
                core.leave();
            }
        }
        self.inner.wake.notify_one();
    }

    fn shutdown(&mut self) {
        self.begin_leaving();
        // A thread is joined (bounded: it stops soon after `closing`); a task finishes on its
        // own runtime, since blocking here could be blocking that runtime.
        if let Background::Thread(thread) = &mut self.background {
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Where a client's network runs.
enum Background {
    /// Its own thread and runtime ([`Client::connect`]).
    Thread(Option<std::thread::JoinHandle<()>>),
    /// A task on the caller's runtime ([`Client::connect_async`]).
    Task(Option<tokio::task::JoinHandle<()>>),
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Maps how a connection ended to a close reason and detail.
fn close_of(e: &ConnectionError) -> (CloseReason, String) {
    match e {
        ConnectionError::ApplicationClosed(c) => {
            let text = String::from_utf8_lossy(&c.reason).into_owned();
            let code = c.error_code.into_inner();
            match quic::close_reason_of(code) {
                // The close text is `reason: detail` (`quic::close_text`); the detail alone is
                // what the `Close` frame carries, so a client sees the same detail whichever
                // arrives first.
                Some(r) => {
                    let detail = text
                        .strip_prefix(&format!("{r}: "))
                        .map_or(text.clone(), str::to_string);
                    (r, detail)
                }
                // The transport's own codes are no protocol violation of ours: the server gave
                // up on a client that read too slowly, or a bridge lost its relay. Both are a
                // dropped connection, which is what `Timeout` means to a game (reconnect).
                None if code == u64::from(quic::CLOSE_CODE_OVERFLOW) => (
                    CloseReason::Timeout,
                    format!("the server dropped this client, which read too slowly ({text})"),
                ),
                None if code == u64::from(quic::CLOSE_CODE_UPSTREAM) => (
                    CloseReason::Timeout,
                    format!("the bridge lost its relay ({text})"),
                ),
                None => (CloseReason::ProtocolViolation, text),
            }
        }
        ConnectionError::TimedOut => (
            CloseReason::Timeout,
            "no answer from the server (idle timeout)".into(),
        ),
        ConnectionError::LocallyClosed => (CloseReason::ClientLeft, "closed locally".into()),
        other => (CloseReason::Timeout, other.to_string()),
    }
}

/// Sends what the core queued. `Err` if a channel's queue overflowed (the server reads too
/// slowly).
fn flush(
    inner: &Inner,
    conn: &Connection,
    writers: &ChannelWriters,
    out: &mut Vec<ClientTransmit>,
) -> Result<(), quic::QueueFull> {
    {
        let mut core = inner.lock();
        out.extend(std::iter::from_fn(|| core.poll_transmit()));
    }
    for t in out.drain(..) {
        match t {
            ClientTransmit::Frame { channel, frame } => writers.try_send(channel, &frame)?,
            ClientTransmit::Datagram(d) => {
                let _ = conn.send_datagram(Bytes::from(d));
            }
        }
    }
    Ok(())
}

/// The background task: feed the core, send its output, until the session ends.
async fn run(inner: Arc<Inner>, conn: Connection) {
    let (tx, mut rx) = mpsc::channel::<StreamEvent>(INBOUND_QUEUE_LEN);
    let streams = tokio::spawn(quic::accept_streams(
        conn.clone(),
        FrameDecoder::for_server_channel,
        tx,
        |e| e,
    ));
    let datagrams = {
        let conn = conn.clone();
        let inner = inner.clone();
        tokio::spawn(async move {
            while let Ok(d) = conn.read_datagram().await {
                let now = inner.now();
                inner.lock().handle_datagram(&d, now);
                {
                    let mut log = inner.datagram_log.lock().unwrap_or_else(|e| e.into_inner());
                    if log.capacity > 0 {
                        if log.arrivals.len() >= log.capacity {
                            log.arrivals.pop_front();
                            log.overflowed += 1;
                        }
                        log.arrivals.push_back(DatagramArrival { at: now, data: d });
                    }
                }
                inner.notify_changed();
            }
        })
    };
    let writers = ChannelWriters::spawn(&conn);
    // What the core queued, taken under the lock and sent outside it (reused).
    let mut transmits: Vec<ClientTransmit> = Vec::new();
    let mut leave_deadline: Option<Instant> = None;
    let mut connection_gone = false;
    let mut streams_done = false;
    loop {
        if let Err(e) = flush(&inner, &conn, &writers, &mut transmits) {
            let now = inner.now();
            inner
                .lock()
                .handle_transport_lost(CloseReason::Timeout, e.to_string(), now);
            conn.close(
                quinn::VarInt::from_u32(quic::CLOSE_CODE_OVERFLOW),
                b"send queue full",
            );
        }
        let (closed, timeout) = {
            let core = inner.lock();
            let timeout = core.poll_timeout();
            inner
                .sleeping_until_us
                .store(timeout.map_or(u64::MAX, |t| t.0), Ordering::Relaxed);
            let live = matches!(core.state(), ClientState::Joining | ClientState::Joined);
            (!live, timeout)
        };
        inner.notify_changed();
        if closed {
            break;
        }
        if inner.closing.load(Ordering::Acquire) && leave_deadline.is_none() {
            leave_deadline = Some(Instant::now() + quic::CLOSE_FLUSH_TIMEOUT);
        }
        let mut deadline = timeout
            .map(|t| inner.start + Duration::from_micros(t.0))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        if let Some(d) = leave_deadline {
            deadline = deadline.min(d);
        }
        tokio::select! {
            ev = rx.recv(), if !streams_done => {
                let now = inner.now();
                let mut core = inner.lock();
                let mut next = ev;
                let mut handled = 0;
                loop {
                    match next {
                        Some(StreamEvent::Frames { channel, frames }) => {
                            for body in codec::frames(&frames) {
                                let _ = core.handle_frame(channel, body, now);
                                handled += 1;
                            }
                        }
                        Some(StreamEvent::Error(e)) => core.handle_disconnect(
                            CloseReason::ProtocolViolation,
                            format!("server stream: {e}"),
                        ),
                        // Every reader ended: the connection is ending; `closed()` says why.
                        None => {
                            streams_done = true;
                            break;
                        }
                    }
                    // Take whatever else is ready without re-entering select; a full batch
                    // leaves the rest queued (one more taken here would be dropped).
                    if handled >= INBOUND_BATCH_MAX {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(ev) => next = Some(ev),
                        Err(_) => break,
                    }
                }
            }
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = inner.now();
                inner.lock().handle_timeout(now);
                if leave_deadline.is_some_and(|d| Instant::now() >= d) {
                    inner.lock().handle_disconnect(CloseReason::ClientLeft, "left".into());
                }
            }
            why = conn.closed() => {
                let (reason, detail) = close_of(&why);
                let now = inner.now();
                inner.lock().handle_transport_lost(reason, detail, now);
                connection_gone = true;
            }
        }
    }
    inner.notify_changed();
    let closed = matches!(inner.lock().state(), ClientState::Closed { .. });
    if !connection_gone && !closed {
        // Given up as lost (silence): nothing to flush, and the peer may be gone.
        conn.close(
            quic::close_code(CloseReason::Timeout),
            b"connection lost: reconnecting",
        );
    } else if !connection_gone {
        // The server usually closes right after its Close message; close ourselves if not.
        let (code, text) = match inner.lock().state() {
            ClientState::Closed { reason, detail } => {
                (quic::close_code(*reason), quic::close_text(*reason, detail))
            }
            _ => (
                quinn::VarInt::from_u32(quic::CLOSE_CODE_LOCAL),
                String::new(),
            ),
        };
        writers.finish().await;
        let _ = tokio::time::timeout(quic::CLOSE_FLUSH_TIMEOUT, conn.closed()).await;
        conn.close(code, text.as_bytes());
    }
    streams.abort();
    datagrams.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Client>();
    }

    #[test]
    fn transport_close_codes_are_no_protocol_violation_and_details_lose_the_reason_prefix() {
        let closed = |code: u32, text: &str| {
            close_of(&ConnectionError::ApplicationClosed(
                quinn::ApplicationClose {
                    error_code: quinn::VarInt::from_u32(code),
                    reason: text.as_bytes().to_vec().into(),
                },
            ))
        };
        assert_eq!(
            closed(quic::CLOSE_CODE_OVERFLOW, "send queue full").0,
            CloseReason::Timeout
        );
        assert_eq!(
            closed(quic::CLOSE_CODE_UPSTREAM, "relay unreachable").0,
            CloseReason::Timeout
        );
        assert_eq!(closed(0x7777, "?").0, CloseReason::ProtocolViolation);
        let text = quic::close_text(CloseReason::AuthFailed, "token expired");
        assert_eq!(
            closed(
                quic::close_code(CloseReason::AuthFailed).into_inner() as u32,
                &text
            ),
            (CloseReason::AuthFailed, "token expired".to_string()),
            "the same detail as the Close frame carries"
        );
    }

    #[test]
    fn close_reasons_survive_the_connection_close() {
        let (reason, _) = close_of(&ConnectionError::TimedOut);
        assert_eq!(reason, CloseReason::Timeout);
        let mut core = ClientCore::new(
            ClientConfig {
                name: "ada".into(),
                token: None,
            },
            Time::ZERO,
        );
        core.handle_disconnect(CloseReason::Moderation, "kicked".into());
        assert_eq!(
            core.state(),
            &ClientState::Closed {
                reason: CloseReason::Moderation,
                detail: "kicked".into()
            }
        );
    }
}
