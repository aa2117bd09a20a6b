//! The relay server runtime: a QUIC accept loop, per-connection parse-and-forward tasks, and one
//! task, on a thread of its own, that owns the [`ServerCore`]. Rooms: `inbound` (the seam every
//! transport uses: [`Link`], [`Inbound`], [`ConnIds`]), `accept` (the QUIC transport), `core_task`
//! (the thin loop around the core), `persist` (the store's plumbing), and this module (start,
//! hooks, shutdown).
//!
//! ## Shape (mini-redis style)
//! - The **accept loop** takes connections while fewer than `connections_max` are open (a
//!   semaphore permit per connection); beyond that it refuses them at once.
//! - Each **connection task** completes the handshake, announces the connection to the core
//!   ([`Inbound::Connect`] with its [`Link`]), then only parses: the protocol's
//!   [`FrameDecoder`] for each stream's channel (which carries that channel's limit)
//!   and datagrams, forwarded as [`Inbound`] messages over one **bounded** queue (the
//!   complete frames of one stream read travel together as one [`Inbound::Frames`]). When the
//!   connection ends it sends [`Inbound::Disconnect`].
//! - The **core task** owns the core and is the only place world state changes. It runs on its
//!   own thread (`neonet-core`, a current-thread runtime), apart from the I/O runtime, so a long
//!   tick never keeps the UDP socket unread and socket I/O never delays a tick. It consumes
//!   [`Inbound`], runs the due tick at `poll_timeout()` in steps of [`TICK_STEP_CLIENTS`]
//!   clients (`handle_timeout_step`, each step's datagrams handed to QUIC before the next is
//!   written), refreshes every connection's `max_datagram_size` before each tick, and drains
//!   outputs: transmits to each connection's [`Link`] (which never blocks), events to the log,
//!   effects to the optional effect sink.
//!
//! - With `quic_driver = "loop"` ([`QuicDriver::Loop`], Linux) the native port has no accept
//!   loop or connection tasks: one thread (`neonet-quic`, `quic_loop`) drives every native
//!   connection over quinn-proto, with the same defences, limits and [`Inbound`] messages, and
//!   its links queue the core's transmits for it. The accept loop then serves browsers'
//!   WebTransport alone, on the next port.
//!
//! [`Inbound`] and [`Link`] know nothing of QUIC: a WebSocket bridge feeds the same queue
//! ([`RelayHandle::inbound`]) with its own links and connection ids ([`RelayHandle::conn_ids`]).
//! A foreign persistence layer plugs in through [`RelayHooks::effects`] (changes to store) and
//! [`Inbound::Store`] (what is now stored).
//!
//! ## Persistence ([`RelayConfig::persist`], on by default)
//! At start the relay opens (first start: creates) the [`Store`] in its data folder, before it
//! binds anything, and hosts the world it loads. A second relay on the same folder fails to
//! start with [`StoreError::AlreadyOpen`]. The core runs with `durable_acks`: every effect goes
//! to [`Store::submit_effect`] (a short mutex and a queue push, never the disk), and the
//! acknowledgement is sent only when the store's writer reports the transaction holding it
//! durable. Commits come back from the writer thread over a dedicated unbounded channel rather
//! than the shared inbound queue: the writer must never block on a full queue and an
//! acknowledgement must never be dropped; the channel holds at most the tokens of changes the
//! core already submitted (bounded by the store's queue), and the core task takes it before any
//! other input. A change the store cannot take (its queue is full, its writer stopped) or cannot
//! commit (a disk error) is refused, never acknowledged: the core decides how
//! ([`neonet_proto::persist::StoreReport`]: `Busy` for a full queue, `Storage` for a failing
//! disk, after which it refuses new changes up front until the first durable commit). The
//! state of apps moved by datagrams arrives as effects every tick and the store writes it at
//! [`RelayConfig::dirty_flush_interval_ms`]. Before it admits anyone, the relay makes the
//! core's first id reservation durable.
//! Shutdown flushes the store first (so pending changes are acknowledged), closes the sessions
//! (which saves the players' last positions), then flushes and closes the store off the async
//! runtime.
//!
//! ## Datagrams
//! QUIC datagrams do not wake the core: connection tasks put them in the core's
//! [`DatagramInbox`](neonet_proto::server::DatagramInbox) (behind a mutex, [`SharedInbox`]) with
//! their arrival time, and the core takes them whenever it runs (at every tick, before the
//! tick's work, and whenever a stream message, commit or connection wakes it). A client's
//! datagram carries its inputs and its acknowledgements, which the core only uses at its next
//! tick anyway; a thousand clients' datagrams cost one wake-up per tick instead of thousands.
//!
//! ## Limits and fairness
//! Every queue is bounded: the shared inbound queue ([`INBOUND_QUEUE_LEN`]), the datagram inbox
//! ([`neonet_proto::server::DATAGRAM_INBOX_MAX`] in all, and
//! [`neonet_proto::server::DATAGRAM_INBOX_PER_CONN_MAX`] per connection), each connection's
//! per-channel send queues ([`crate::quic::CHANNEL_QUEUE_BYTES_MAX`]), datagram buffers, decoders
//! (the frame limit). A full inbound queue holds readers back (tokio's queue admits waiting
//! senders in FIFO order, so a flooding peer gets its turn like everyone else, and QUIC flow
//! control slows it down); a peer whose send queue overflows because it does not read is closed
//! ([`crate::quic::CLOSE_CODE_OVERFLOW`]). Rate limits per message kind belong to the core's
//! authorization point.
//!
//! ## Shutdown
//! [`RelayHandle::shutdown`]: stop accepting, `ServerCore::shutdown` (every session gets `Close`
//! with `ServerShutdown`), flush each connection and close it, then wait for the endpoint to go
//! idle, bounded by [`SHUTDOWN_TIMEOUT`], and finally shut the store down (everything queued and
//! the dirty set made durable).
//!
//! [`FrameDecoder`]: neonet_proto::wire::codec::FrameDecoder

mod accept;
mod browser;
mod core_task;
mod inbound;
mod persist;
#[cfg(target_os = "linux")]
mod quic_loop;
pub mod websocket;
mod webtransport;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quinn::Endpoint;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use neonet_proto::persist::{Effect, World};
use neonet_proto::server::{Authenticator, InboxBatch, ServerConfig, ServerCore, ServerEvent};
use neonet_proto::Time;

pub use accept::{SharedInbox, WEBTRANSPORT_PATH};
pub use browser::{BrowserAccess, ConnectInfo, WebSocketInfo, WebTransportInfo};
pub use inbound::{ConnIds, Inbound, Link};

pub(crate) use accept::{accept_handshake, is_webtransport, webtransport_session, Ended, PeerConn};
pub(crate) use browser::{Backend, BrowserTls, CoreAccess};
pub(crate) use persist::StoreOpener;

use accept::accept_loop;
use core_task::CoreTask;
use persist::{commit_forwarder, log_loaded, seed_store, Persist};

use crate::auth::{AuthError, JwtTokens};
use crate::config::{ConfigError, QuicDriver, RelayConfig};
use crate::metrics::{EntityBytesBatch, Metrics};
use crate::quic::{self, TransportError};
use crate::store::{Store, StoreConfig, StoreError};
use crate::tls::{Fingerprint, TlsError};

/// Capacity of the queue from connection tasks to the core task, messages (a QUIC stream read
/// with all its complete frames, [`Inbound::Frames`], is one). Full means the core is behind:
/// readers wait, and QUIC flow control slows the peers.
pub const INBOUND_QUEUE_LEN: usize = 8192;
/// Frames (or other inbound messages) the core task handles before draining outputs, so one
/// burst cannot delay a due tick or a commit's acknowledgements for long. A batch also ends as
/// soon as a commit is waiting.
pub const INBOUND_BATCH_MAX: usize = 256;
/// Clients whose transform datagrams a tick writes before handing them to QUIC: 32, about
/// 0.35 ms of writing (≈ 11 µs per client with 100 entities in view, `cargo bench --bench
/// transform -- server_tick`). The first datagrams leave after that instead of after the whole
/// tick (≈ 11 ms for 1,000 clients), and a step's hand-off costs little next to its writing.
pub const TICK_STEP_CLIENTS: usize = 32;
/// Longest a QUIC handshake may take before the attempt is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a shutdown waits for connections to flush and close.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// Why the relay could not start (or stop cleanly).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Certificates could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The token secret could not be loaded or created.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The socket or QUIC endpoint could not be set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A folder could not be created.
    #[error("creating {path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The core task panicked (a bug).
    #[error("the core task failed: {0}")]
    CoreTask(String),
    /// The core's thread or runtime could not be started.
    #[error("starting the core thread: {0}")]
    Runtime(#[source] std::io::Error),
    /// The world database could not be opened, loaded or closed; [`StoreError::AlreadyOpen`]
    /// when another relay uses the same data folder.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hooks that make no sense together with [`RelayConfig::persist`] (the store takes the
    /// effects itself, and loads an existing world rather than replacing it).
    #[error("{0} cannot be combined with persist = true")]
    HooksConflict(&'static str),
}
/// Receives every persistence effect the core emits, in order.
pub type EffectSink = Box<dyn FnMut(Effect) + Send>;

/// Optional plug-ins: the loaded world, the effect sink, the authenticator.
#[derive(Default)]
pub struct RelayHooks {
    /// The world to host; `World::default()` for a fresh one. With [`RelayConfig::persist`] the
    /// store loads the world, and a non-default world here only seeds a database this start
    /// creates (a test or load-tool world); given for an existing database it is an error.
    pub world: World,
    /// Where persistence effects go; `None` drops them (no persistence). Must be `None` with
    /// [`RelayConfig::persist`], where they go to the store.
    pub effects: Option<EffectSink>,
    /// Hold acknowledgements until [`Inbound::Store`] says the change is stored. Implied by
    /// [`RelayConfig::persist`].
    pub durable_acks: bool,
    /// Token checking; `None` uses [`JwtTokens`] with the key in the data folder (and the
    /// configured backend key).
    pub authenticator: Option<Box<dyn Authenticator>>,
    /// Sees every core event after it is logged (tests, tools); `None` for none.
    pub events: Option<EventSink>,
    /// Where to count connections, joins, ticks, traffic and users (served by
    /// [`crate::http`]); `None` for no metrics.
    pub metrics: Option<Arc<Metrics>>,
    /// A game hosting the world: called with the core on the core's thread right before every
    /// tick runs (once per wake-up when several are due), to change the world through the
    /// core's host methods (`ServerCore::host_*`: spawn, move its simulated bodies, remove).
    /// `None` for a plain relay.
    pub host: Option<HostFn>,
}

/// A hosting game's per-tick call ([`RelayHooks::host`]).
pub type HostFn = Box<dyn FnMut(&mut ServerCore) + Send>;

/// Sees every [`ServerEvent`] the core emits, in order.
pub type EventSink = Box<dyn FnMut(&ServerEvent) + Send>;

impl std::fmt::Debug for RelayHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHooks")
            .field("effects", &self.effects.is_some())
            .field("durable_acks", &self.durable_acks)
            .field("authenticator", &self.authenticator.is_some())
            .field("events", &self.events.is_some())
            .field("metrics", &self.metrics.is_some())
            .field("host", &self.host.is_some())
            .finish()
    }
}
/// The relay. See the module documentation.
#[derive(Debug)]
pub struct Relay;

impl Relay {
    /// Starts a relay with no persistence. Must be called inside a tokio runtime (with the
    /// `time` and `net` drivers enabled); it keeps running on that runtime.
    pub async fn start(config: RelayConfig) -> Result<RelayHandle, RelayError> {
        Self::start_with(config, RelayHooks::default()).await
    }

    /// Starts a relay with hooks (a loaded world, an effect sink, an authenticator). With
    /// [`RelayConfig::persist`] it opens the store in the data folder first (see the module
    /// documentation); [`RelayError::Store`] if it cannot.
    pub async fn start_with(
        config: RelayConfig,
        hooks: RelayHooks,
    ) -> Result<RelayHandle, RelayError> {
        let opener: Option<StoreOpener> = if config.persist {
            let dir = config.data_dir.clone();
            Some(Box::new(move |store_config, on_commit| {
                Store::open(&dir, store_config, on_commit)
            }))
        } else {
            None
        };
        Self::start_inner(config, hooks, opener).await
    }

    /// [`Relay::start_with`] with the store made by `opener` (tests pass a failing disk).
    pub(crate) async fn start_inner(
        config: RelayConfig,
        mut hooks: RelayHooks,
        opener: Option<StoreOpener>,
    ) -> Result<RelayHandle, RelayError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| RelayError::Io {
            path: config.data_dir.clone(),
            source,
        })?;
        let mut persist = None;
        if let Some(opener) = opener {
            if hooks.effects.is_some() {
                return Err(RelayError::HooksConflict("an effect sink"));
            }
            let store_config = StoreConfig {
                dirty_flush_interval: config.dirty_flush_interval(),
                ..StoreConfig::default()
            };
            let (on_commit, commits) = commit_forwarder(hooks.metrics.clone());
            let seed = std::mem::take(&mut hooks.world);
            let seeding = seed != World::default();
            let (store, world) = tokio::task::spawn_blocking(move || {
                let (store, loaded) = opener(store_config, Box::new(on_commit))?;
                log_loaded(&store, &loaded);
                if !seeding {
                    return Ok((store, loaded.into()));
                }
                if !loaded.created {
                    return Err(RelayError::HooksConflict(
                        "a world in the hooks for an existing database",
                    ));
                }
                seed_store(&store, &seed)?;
                Ok((store, seed))
            })
            .await
            .map_err(|e| RelayError::CoreTask(e.to_string()))??;
            hooks.world = world;
            hooks.durable_acks = true;
            persist = Some(Persist {
                store: Arc::new(store),
                commits,
            });
        }
        let cert_and_key = match (&config.cert_path, &config.key_path) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        let browser_tls = BrowserTls::load(&config.cert_dir, cert_and_key)?;
        let identity = &browser_tls.identity;
        let auth: Box<dyn Authenticator> = match hooks.authenticator {
            Some(a) => a,
            None => {
                let backend = config.backend_key()?;
                Box::new(JwtTokens::load_or_create(&config.data_dir)?.with_backend(backend))
            }
        };
        // The native port: quinn's endpoint (`Tasks`: browsers' WebTransport on it too), or the
        // single loop's socket (`Loop`: WebTransport on quinn, on a port of its own).
        #[cfg(target_os = "linux")]
        let native_loop = match config.quic_driver {
            QuicDriver::Loop => Some(quic_loop::bind(
                config.listen,
                browser_tls.resolver.clone(),
                config.idle_timeout(),
            )?),
            QuicDriver::Tasks => None,
        };
        #[cfg(target_os = "linux")]
        let quinn_listen = match &native_loop {
            Some(_) => webtransport_addr(config.listen),
            None => config.listen,
        };
        #[cfg(not(target_os = "linux"))]
        let quinn_listen = config.listen;
        let (endpoint, buffers) = quic::relay_endpoint(
            quinn_listen,
            browser_tls.resolver.clone(),
            config.idle_timeout(),
        )?;
        let quinn_addr = endpoint
            .local_addr()
            .map_err(|source| TransportError::Socket {
                addr: quinn_listen,
                source,
            })?;
        #[cfg(target_os = "linux")]
        let (local_addr, buffers) = match &native_loop {
            Some(bound) => (bound.local, bound.buffers),
            None => (quinn_addr, buffers),
        };
        #[cfg(not(target_os = "linux"))]
        let local_addr = quinn_addr;
        if buffers.recv_bytes < quic::SOCKET_BUFFER_BYTES {
            tracing::warn!(
                granted = buffers.recv_bytes,
                wanted = quic::SOCKET_BUFFER_BYTES,
                "the kernel capped the UDP receive buffer (raise net.core.rmem_max for many clients)"
            );
        }
        if local_addr == quinn_addr {
            tracing::info!(addr = %local_addr, fingerprint = %identity.fingerprint, "listening for QUIC and WebTransport");
        } else {
            tracing::info!(addr = %local_addr, fingerprint = %identity.fingerprint, driver = "loop", "listening for QUIC");
            tracing::info!(addr = %quinn_addr, "listening for WebTransport");
        }

        let mut world = hooks.world;
        if config.player_limit > 0 {
            world.settings.player_limit = config.player_limit;
        }
        let unix_ms_at_zero = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut core = ServerCore::new(
            ServerConfig {
                tick_hz: config.tick_hz,
                unix_ms_at_zero,
                durable_acks: hooks.durable_acks,
                spawn_at_last_position: config.spawn_at_last_position,
                idle_timeout: config.idle_timeout(),
                resume_grace: config.resume_grace(),
                resume_seed: resume_seed(),
                admin_code: config.admin_code.clone(),
                limits: config.limits.core(),
                token_ttl: config.token_ttl(),
                ..ServerConfig::default()
            },
            world,
            auth,
            Time::ZERO,
        );

        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_LEN);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let conn_ids = Arc::new(ConnIds::default());
        let (store, commits) = match persist {
            Some(p) => (Some(p.store), Some(p.commits)),
            None => (None, None),
        };
        if let Some(store) = store.clone() {
            // The core's first effects reserve the ids it hands out: durable before anyone is
            // admitted, so no id a client sees can be handed out again after a crash.
            let first: Vec<_> = std::iter::from_fn(|| core.poll_effect()).collect();
            tokio::task::spawn_blocking(move || {
                for e in first {
                    store
                        .submit_effect(e)
                        .map_err(|_| RelayError::Store(StoreError::Closed))?;
                }
                store.flush().map_err(RelayError::Store)
            })
            .await
            .map_err(|e| RelayError::CoreTask(e.to_string()))??;
        }
        let start = Instant::now();
        let inbox = Arc::new(SharedInbox::new(start));
        let task = CoreTask {
            core,
            start,
            inbox: inbox.clone(),
            inbox_batch: InboxBatch::default(),
            links: HashMap::new(),
            effects: hooks.effects,
            store,
            full: Vec::new(),
            failed: Vec::new(),
            events: hooks.events,
            metrics: hooks.metrics.clone(),
            host: hooks.host,
            entity_bytes: EntityBytesBatch::new(),
            next_users_report: Instant::now(),
        };
        let core_task = spawn_core_thread(task, inbound_rx, commits, shutdown_rx.clone())?;
        let browser = browser_tls.access(
            Backend::Core(CoreAccess {
                inbound: inbound_tx.clone(),
                conn_ids: conn_ids.clone(),
                inbox: inbox.clone(),
            }),
            config.browser_origins.clone(),
            quinn_addr.port(),
        );
        let rotation = tokio::spawn(browser.clone().rotate_every());
        let permits = Arc::new(Semaphore::new(config.connections_max));
        let defences = accept::Defences::new(&config.limits, start);
        #[cfg(target_os = "linux")]
        let native_loop = match native_loop {
            Some(bound) => Some(bound.spawn(quic_loop::Ctx {
                permits: permits.clone(),
                defences: defences.clone(),
                conn_ids: conn_ids.clone(),
                inbound: inbound_tx.clone(),
                inbox: inbox.clone(),
                metrics: hooks.metrics.clone(),
            })?),
            None => None,
        };
        let accept_task = tokio::spawn(accept_loop(
            endpoint.clone(),
            permits,
            defences,
            conn_ids.clone(),
            inbound_tx.clone(),
            inbox,
            shutdown_rx,
            hooks.metrics,
        ));
        Ok(RelayHandle {
            endpoint,
            local_addr,
            fingerprint: identity.fingerprint,
            inbound: inbound_tx,
            conn_ids,
            shutdown: shutdown_tx,
            core_task,
            accept_task,
            #[cfg(target_os = "linux")]
            native_loop,
            browser,
            rotation,
        })
    }
}

/// Where WebTransport listens when the single loop has the native port (`listen`): the same
/// address, the next port (a firewall opens two neighbours), or a free port when the native one
/// is left to the OS (port 0).
#[cfg(target_os = "linux")]
fn webtransport_addr(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    addr.set_port(match listen.port() {
        0 | u16::MAX => 0,
        p => p + 1,
    });
    addr
}

/// A running relay.
#[derive(Debug)]
pub struct RelayHandle {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    fingerprint: Fingerprint,
    inbound: mpsc::Sender<Inbound>,
    conn_ids: Arc<ConnIds>,
    shutdown: watch::Sender<bool>,
    core_task: oneshot::Receiver<Option<Arc<Store>>>,
    accept_task: JoinHandle<()>,
    /// The single-loop driver of the native port ([`QuicDriver::Loop`]).
    #[cfg(target_os = "linux")]
    native_loop: Option<quic_loop::LoopHandle>,
    browser: Arc<BrowserAccess>,
    rotation: JoinHandle<()>,
}

/// Starts the core on a thread of its own (named `neonet-core`, with a current-thread tokio
/// runtime for its timers and queues). The core's ticks are the relay's longest stretches of
/// CPU work (milliseconds with a thousand clients); on the I/O runtime they would hold up the
/// tasks that read the UDP socket, which then overflows and drops handshakes and datagrams.
/// On its own thread the core never delays I/O, and I/O never delays a tick. What it returns
/// (the store) arrives on the receiver; a panic drops the sender.
fn spawn_core_thread(
    task: CoreTask,
    rx: mpsc::Receiver<Inbound>,
    commits: Option<mpsc::UnboundedReceiver<Inbound>>,
    shutdown: watch::Receiver<bool>,
) -> Result<oneshot::Receiver<Option<Arc<Store>>>, RelayError> {
    let (done_tx, done_rx) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RelayError::Runtime)?;
    std::thread::Builder::new()
        .name("neonet-core".into())
        .spawn(move || {
            let store = runtime.block_on(task.run(rx, commits, shutdown));
            let _ = done_tx.send(store);
        })
        .map_err(RelayError::Runtime)?;
    Ok(done_rx)
}

impl RelayHandle {
    /// The UDP address QUIC listens on (with the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// SHA-256 of the certificate the relay presents.
    pub fn cert_fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The core task's input queue, for other transports and the persistence layer.
    pub fn inbound(&self) -> mpsc::Sender<Inbound> {
        self.inbound.clone()
    }

    /// The way in for browsers: what the HTTP server needs to serve `/connect.json` and
    /// WebSocket sessions.
    pub fn browser_access(&self) -> Arc<BrowserAccess> {
        self.browser.clone()
    }

    /// The connection id allocator other transports must use.
    pub fn conn_ids(&self) -> Arc<ConnIds> {
        self.conn_ids.clone()
    }

    /// Stops accepting, closes every session with `ServerShutdown`, flushes and closes the
    /// connections, waits for the endpoint to go idle (bounded by [`SHUTDOWN_TIMEOUT`]), then
    /// makes everything durable and closes the store (on a blocking thread).
    pub async fn shutdown(self) -> Result<(), RelayError> {
        let _ = self.shutdown.send(true);
        self.rotation.abort();
        self.endpoint.set_server_config(None);
        #[cfg(target_os = "linux")]
        if let Some(l) = &self.native_loop {
            l.stop_accepting();
        }
        let _ = self.accept_task.await;
        let core = self.core_task.await;
        // The loop flushes and closes its connections (the sessions' closes are queued) on its
        // own thread meanwhile, bounded by the same timeout.
        #[cfg(target_os = "linux")]
        let native_loop = self
            .native_loop
            .map(|l| tokio::task::spawn_blocking(move || l.finish(SHUTDOWN_TIMEOUT)));
        let idle = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.endpoint.wait_idle()).await;
        if idle.is_err() {
            tracing::warn!("connections did not close in time; closing the endpoint");
            self.endpoint.close(
                quic::close_code(neonet_proto::wire::msg::CloseReason::ServerShutdown),
                b"server shutting down",
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        }
        #[cfg(target_os = "linux")]
        if let Some(l) = native_loop {
            let _ = l.await;
        }
        let store = core.map_err(|_| RelayError::CoreTask("the core thread panicked".into()))?;
        if let Some(store) = store {
            let path = store.path().to_path_buf();
            let stats = tokio::task::spawn_blocking(move || match Arc::try_unwrap(store) {
                Ok(store) => store.shutdown(),
                // Nobody else holds it; if someone did, their drop closes it after this flush.
                Err(store) => store.flush().map(|()| store.stats()),
            })
            .await
            .map_err(|e| RelayError::CoreTask(e.to_string()))?;
            match stats {
                Ok(stats) => tracing::info!(
                    path = %path.display(),
                    commits = stats.commits,
                    failed_commits = stats.failed_commits,
                    changes = stats.changes,
                    "world database closed"
                ),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "closing the world database failed");
                    return Err(e.into());
                }
            }
        }
        tracing::info!("relay stopped");
        Ok(())
    }
}

/// A seed for the core's resume tokens from the OS random source (ring's), so no two relay runs
/// issue the same tokens.
fn resume_seed() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        tracing::warn!("no OS randomness for resume tokens: seeding them from the clock");
        return SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(b)
}
