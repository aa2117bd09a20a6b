//! The relay server runtime: a QUIC accept loop, per-connection parse-and-forward tasks, and one
//! task, on a thread of its own, that owns the [`ServerCore`].
//!
//! ## Shape (mini-redis style)
//! - The **accept loop** takes connections while fewer than `connections_max` are open (a
//!   semaphore permit per connection); beyond that it refuses them at once.
//! - Each **connection task** completes the handshake, announces the connection to the core
//!   ([`Inbound::Connect`] with its [`Link`]), then only parses: a [`FrameDecoder`] per stream
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
//! [`Inbound`] and [`Link`] know nothing of QUIC: a WebSocket bridge feeds the same queue
//! ([`RelayHandle::inbound`]) with its own links and connection ids ([`RelayHandle::conn_ids`]).
//! A foreign persistence layer plugs in through [`RelayHooks::effects`] (changes to store) and
//! [`Inbound::Durable`] (what is now stored).
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
//! commit (a disk error) is refused with `Refusal::Storage`, never acknowledged; while storage
//! fails the core refuses new changes up front, and the first durable commit after a failure
//! makes it accept them again. Apps moved by datagrams are marked dirty every tick
//! ([`ServerCore::take_moved_apps`]) and written at [`RelayConfig::dirty_flush_interval_ms`].
//! Shutdown flushes the store first (so pending changes are acknowledged), closes the sessions
//! (which saves the players' last positions), then flushes and closes the store off the async
//! runtime.
//!
//! ## Datagrams
//! QUIC datagrams do not wake the core: connection tasks put them in the [`DatagramInbox`] with
//! their arrival time, and the core takes them whenever it runs (at every tick, before the
//! tick's work, and whenever a stream message, commit or connection wakes it). A client's
//! datagram carries its inputs and its acknowledgements, which the core only uses at its next
//! tick anyway; a thousand clients' datagrams cost one wake-up per tick instead of thousands.
//!
//! ## Limits and fairness
//! Every queue is bounded: the shared inbound queue ([`INBOUND_QUEUE_LEN`]), the datagram inbox
//! ([`DATAGRAM_INBOX_MAX`]), each connection's
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
//! [`FrameDecoder`]: neonet_proto::codec::FrameDecoder

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use quinn::{Connection, Endpoint};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use neonet_proto::codec::{self, DecodeError};
use neonet_proto::limits::FRAME_BYTES_MAX;
use neonet_proto::msg::{Channel, ServerMsg};
use neonet_proto::server::{
    AckToken, Authenticator, ConnId, Effect, ServerConfig, ServerCore, ServerEvent,
    TimeoutProgress, Transmit, TransportKind, World,
};
use neonet_proto::Time;

use crate::store::{Change, Commit, LoadedWorld, NextIds, Store, StoreConfig, StoreError};

use crate::auth::{AuthError, HmacTokens};
use crate::config::{ConfigError, RelayConfig};
use crate::metrics::{EntityBytesBatch, Metrics, UserReport};
use crate::quic::{self, ChannelWriters, StreamEvent, TransportError};
use crate::tls::{self, Fingerprint, TlsError};

/// Capacity of the queue from connection tasks to the core task, messages (a QUIC stream read
/// with all its complete frames, [`Inbound::Frames`], is one). Full means the core is behind:
/// readers wait, and QUIC flow control slows the peers.
pub const INBOUND_QUEUE_LEN: usize = 8192;
/// Frames (or other inbound messages) the core task handles before draining outputs, so one
/// burst cannot delay a due tick or a commit's acknowledgements for long. A batch also ends as
/// soon as a commit is waiting.
pub const INBOUND_BATCH_MAX: usize = 256;
/// Most QUIC datagrams waiting in the [`DatagramInbox`] for the core: 16 ticks of a thousand
/// clients' one datagram each (at most ≈ 19 MiB of 1.2 KB datagrams). More means the core has
/// fallen that far behind; newer datagrams are dropped (counted as `datagram_inbox_full`), as
/// an unreliable channel may.
pub const DATAGRAM_INBOX_MAX: usize = 16_384;
/// Most QUIC datagrams one connection may have waiting in the [`DatagramInbox`]: 64. The core
/// takes the inbox at every tick and whenever it wakes, and a client sends about one datagram
/// per tick, so 64 is two seconds of a 30 Hz client's datagrams behind a stalled core. Beyond
/// it that connection's newer datagrams are dropped (counted as `datagram_inbox_conn_full`), so
/// one flooding peer cannot fill the shared inbox and crowd out everyone else's inputs: filling
/// it takes [`DATAGRAM_INBOX_MAX`] / 64 = 256 connections.
pub const DATAGRAM_INBOX_PER_CONN_MAX: usize = 64;
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

/// The outbound side of one connection, whatever its transport. The core task calls it; it must
/// never block. If it cannot keep up, it closes its connection and the transport reports
/// [`Inbound::Disconnect`].
pub trait Link: Send + Sync + 'static {
    /// Sends (or queues) one transmit for this connection. `Transmit::Close` flushes what was
    /// queued before it, then closes.
    fn transmit(&self, transmit: Transmit);
    /// The largest datagram the connection's path carries now, `None` if it has no datagrams.
    fn max_datagram_size(&self) -> Option<usize>;
    /// The peer's address, for the status page.
    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }
    /// The smoothed round-trip time, for the status page.
    fn rtt(&self) -> Option<Duration> {
        None
    }
}

/// Input to the core task, from any transport or the persistence layer.
pub enum Inbound {
    /// A connection opened; it must send `Hello` first.
    Connect {
        /// Its id, from [`RelayHandle::conn_ids`].
        conn: ConnId,
        /// Its transport.
        transport: TransportKind,
        /// Where its transmits go.
        link: Arc<dyn Link>,
    },
    /// A complete frame body arrived on a channel.
    Frame {
        /// From whom.
        conn: ConnId,
        /// Which channel.
        channel: Channel,
        /// The body, without its length prefix.
        body: Vec<u8>,
    },
    /// Complete frames that arrived together on a channel: consecutive frames, each with its
    /// length prefix (see [`codec::frames`]), each within the frame limit. What a QUIC stream
    /// read yields; one message for all of them.
    Frames {
        /// From whom.
        conn: ConnId,
        /// Which channel.
        channel: Channel,
        /// The frames.
        frames: Vec<u8>,
    },
    /// A datagram arrived.
    Datagram {
        /// From whom.
        conn: ConnId,
        /// The bytes.
        data: Bytes,
    },
    /// A stream broke the framing rules.
    StreamError {
        /// Whose.
        conn: ConnId,
        /// What was wrong.
        error: DecodeError,
    },
    /// The connection closed.
    Disconnect {
        /// Which.
        conn: ConnId,
    },
    /// The store recovered (`ok`) or failed outside any batch of changes.
    StorageHealth {
        /// Whether the store works.
        ok: bool,
    },
    /// The persistence layer made changes durable (`ok`) or failed to (`!ok`).
    Durable {
        /// The acknowledgements now due.
        tokens: Vec<AckToken>,
        /// Whether the store succeeded.
        ok: bool,
    },
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inbound::Connect {
                conn, transport, ..
            } => write!(f, "Connect({conn:?}, {transport:?})"),
            Inbound::Frame {
                conn,
                channel,
                body,
            } => write!(f, "Frame({conn:?}, {channel:?}, {} bytes)", body.len()),
            Inbound::Frames {
                conn,
                channel,
                frames,
            } => write!(f, "Frames({conn:?}, {channel:?}, {} bytes)", frames.len()),
            Inbound::Datagram { conn, data } => {
                write!(f, "Datagram({conn:?}, {} bytes)", data.len())
            }
            Inbound::StreamError { conn, error } => write!(f, "StreamError({conn:?}, {error})"),
            Inbound::Disconnect { conn } => write!(f, "Disconnect({conn:?})"),
            Inbound::Durable { tokens, ok } => {
                write!(f, "Durable({} tokens, ok={ok})", tokens.len())
            }
            Inbound::StorageHealth { ok } => write!(f, "StorageHealth(ok={ok})"),
        }
    }
}

/// Allocates connection ids, unique for the relay's lifetime across all transports.
#[derive(Debug, Default)]
pub struct ConnIds(AtomicU64);

impl ConnIds {
    /// The next unused id.
    pub fn next(&self) -> ConnId {
        ConnId(self.0.fetch_add(1, Ordering::Relaxed) + 1)
    }
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
    /// Hold acknowledgements until [`Inbound::Durable`] says the change is stored. Implied by
    /// [`RelayConfig::persist`].
    pub durable_acks: bool,
    /// Token checking; `None` uses [`HmacTokens`] with the secret in the data folder.
    pub authenticator: Option<Box<dyn Authenticator>>,
    /// Sees every core event after it is logged (tests, tools); `None` for none.
    pub events: Option<EventSink>,
    /// Where to count connections, joins, ticks, traffic and users (served by
    /// [`crate::http`]); `None` for no metrics.
    pub metrics: Option<Arc<Metrics>>,
}

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
            .finish()
    }
}

/// Opens the relay's store with the given tuning and commit callback (the data folder's
/// [`Store::open`]; tests pass a store over a failing disk).
pub(crate) type StoreOpener = Box<
    dyn FnOnce(
            StoreConfig,
            Box<dyn FnMut(Commit) + Send>,
        ) -> Result<(Store, LoadedWorld), StoreError>
        + Send,
>;

/// A persistent relay's store and the commits its writer reports.
struct Persist {
    store: Arc<Store>,
    commits: mpsc::UnboundedReceiver<Inbound>,
}

/// The store's commit callback (run on its writer thread, never blocking) and the receiving
/// end for the core task. Every commit becomes one message: [`Inbound::Durable`] when it holds
/// acknowledgements, [`Inbound::StorageHealth`] otherwise, so that the core learns of a
/// recovery even when it has been refusing every change. Health changes are logged here, once
/// each.
fn commit_forwarder(
    metrics: Option<Arc<Metrics>>,
) -> (
    impl FnMut(Commit) + Send + 'static,
    mpsc::UnboundedReceiver<Inbound>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut healthy = true;
    let forward = move |c: Commit| {
        let ok = c.is_durable();
        if let (Some(m), true) = (&metrics, ok) {
            if c.changes > 0 || c.dirty_entities > 0 {
                m.record_persist_commit(c.oldest_wait);
            }
        }
        if ok != healthy {
            healthy = ok;
            match &c.outcome {
                Ok(()) => tracing::info!("the world database commits again: accepting changes"),
                Err(e) => tracing::error!(
                    error = %e,
                    disk_full = e.is_disk_full(),
                    "the world database cannot commit: changes are refused (Storage) until it recovers"
                ),
            }
        }
        let msg = if c.acks.is_empty() {
            Inbound::StorageHealth { ok }
        } else {
            Inbound::Durable { tokens: c.acks, ok }
        };
        // Fails only once the core task is gone (shutdown): nobody is left to acknowledge.
        let _ = tx.send(msg);
    };
    (forward, rx)
}

/// Writes `world` into a newly created database and waits until it is durable.
fn seed_store(store: &Store, world: &World) -> Result<(), RelayError> {
    let submit = |c: Change| {
        store
            .submit(c, None)
            .map_err(|_| RelayError::Store(StoreError::Closed))
    };
    submit(Change::PutSettings(world.settings.clone()))?;
    submit(Change::PutSpawn(world.spawn))?;
    for b in world.blueprints.values() {
        submit(Change::PutBlueprint(b.clone()))?;
    }
    for u in world.users.values() {
        submit(Change::PutUser(u.clone()))?;
    }
    for e in world.entities.values() {
        if e.kind == neonet_proto::types::EntityKind::App {
            submit(Change::PutEntity(e.clone()))?;
        }
    }
    for m in &world.chat {
        submit(Change::AppendChat(m.clone()))?;
    }
    submit(Change::SetNextIds(NextIds {
        entity: world.next_entity_id,
        user: world.next_user_id,
        chat: world.next_chat_id,
    }))?;
    store.flush()?;
    Ok(())
}

fn log_loaded(store: &Store, w: &LoadedWorld) {
    tracing::info!(
        path = %store.path().display(),
        created = w.created,
        migrated_from = ?w.migrated_from,
        blueprints = w.blueprints.len(),
        apps = w.entities.len(),
        users = w.users.len(),
        chat = w.chat.len(),
        "world loaded"
    );
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
        let identity = match (&config.cert_path, &config.key_path) {
            (Some(c), Some(k)) => {
                let id = tls::load_cert_and_key(c, k)?;
                tracing::info!(cert = %c.display(), "using the configured certificate");
                id
            }
            _ => {
                let id = tls::load_or_generate_dev_cert(&config.cert_dir)?;
                if id.generated {
                    tracing::info!(dir = %config.cert_dir.display(), "generated a self-signed development certificate");
                } else {
                    tracing::info!(dir = %config.cert_dir.display(), "reusing the development certificate");
                }
                id
            }
        };
        let auth: Box<dyn Authenticator> = match hooks.authenticator {
            Some(a) => a,
            None => Box::new(HmacTokens::load_or_create(&config.data_dir)?),
        };
        let (endpoint, buffers) =
            quic::server_endpoint(config.listen, &identity, config.idle_timeout())?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| TransportError::Socket {
                addr: config.listen,
                source,
            })?;
        if buffers.recv_bytes < quic::SOCKET_BUFFER_BYTES {
            tracing::warn!(
                granted = buffers.recv_bytes,
                wanted = quic::SOCKET_BUFFER_BYTES,
                "the kernel capped the UDP receive buffer (raise net.core.rmem_max for many clients)"
            );
        }
        tracing::info!(addr = %local_addr, fingerprint = %identity.fingerprint, "listening for QUIC");

        let mut world = hooks.world;
        if config.player_limit > 0 {
            world.settings.player_limit = config.player_limit;
        }
        let unix_ms_at_zero = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let core = ServerCore::new(
            ServerConfig {
                tick_hz: config.tick_hz,
                unix_ms_at_zero,
                durable_acks: hooks.durable_acks,
                spawn_at_last_position: config.spawn_at_last_position,
                idle_timeout: config.idle_timeout(),
                admin_code: config.admin_code.clone(),
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
        let start = Instant::now();
        let inbox = Arc::new(DatagramInbox::new(start));
        let task = CoreTask {
            core,
            start,
            inbox: inbox.clone(),
            inbox_batch: Vec::new(),
            now_floor: Time::ZERO,
            links: HashMap::new(),
            effects: hooks.effects,
            store,
            refused: Vec::new(),
            events: hooks.events,
            metrics: hooks.metrics.clone(),
            entity_bytes: EntityBytesBatch::new(),
            next_users_report: Instant::now(),
        };
        let core_task = spawn_core_thread(task, inbound_rx, commits, shutdown_rx.clone())?;
        let accept_task = tokio::spawn(accept_loop(
            endpoint.clone(),
            Arc::new(Semaphore::new(config.connections_max)),
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
        })
    }
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

    /// The connection id allocator other transports must use.
    pub fn conn_ids(&self) -> Arc<ConnIds> {
        self.conn_ids.clone()
    }

    /// Stops accepting, closes every session with `ServerShutdown`, flushes and closes the
    /// connections, waits for the endpoint to go idle (bounded by [`SHUTDOWN_TIMEOUT`]), then
    /// makes everything durable and closes the store (on a blocking thread).
    pub async fn shutdown(self) -> Result<(), RelayError> {
        let _ = self.shutdown.send(true);
        self.endpoint.set_server_config(None);
        let _ = self.accept_task.await;
        let core = self.core_task.await;
        let idle = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.endpoint.wait_idle()).await;
        if idle.is_err() {
            tracing::warn!("connections did not close in time; closing the endpoint");
            self.endpoint.close(
                quic::close_code(neonet_proto::msg::CloseReason::ServerShutdown),
                b"server shutting down",
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
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

// ---------------------------------------------------------------------------------------------
// Accepting and parsing

async fn accept_loop(
    endpoint: Endpoint,
    permits: Arc<Semaphore>,
    conn_ids: Arc<ConnIds>,
    inbound: mpsc::Sender<Inbound>,
    inbox: Arc<DatagramInbox>,
    mut shutdown: watch::Receiver<bool>,
    metrics: Option<Arc<Metrics>>,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.changed() => return,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(peer = %incoming.remote_address(), "connection limit reached; refusing");
            incoming.refuse();
            continue;
        };
        let conn_ids = conn_ids.clone();
        let inbound = inbound.clone();
        let inbox = inbox.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let peer = incoming.remote_address();
            let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "handshake timed out");
                    return;
                }
            };
            if let Some(m) = &metrics {
                m.connection_opened();
            }
            serve_connection(conn_ids.next(), conn, inbound, inbox).await;
            if let Some(m) = &metrics {
                m.connection_closed();
            }
        });
    }
}

fn client_frame_limit(_: Channel) -> usize {
    FRAME_BYTES_MAX
}

/// One connection: announce it, parse and forward until it ends, then report the end.
async fn serve_connection(
    id: ConnId,
    conn: Connection,
    inbound: mpsc::Sender<Inbound>,
    inbox: Arc<DatagramInbox>,
) {
    tracing::debug!(conn = id.0, peer = %conn.remote_address(), "connected");
    let link = Arc::new(QuicLink::new(conn.clone()));
    if inbound
        .send(Inbound::Connect {
            conn: id,
            transport: TransportKind::Quic,
            link,
        })
        .await
        .is_err()
    {
        return;
    }
    let streams = tokio::spawn(quic::accept_streams(
        conn.clone(),
        client_frame_limit,
        inbound.clone(),
        move |ev| match ev {
            StreamEvent::Frames { channel, frames } => Inbound::Frames {
                conn: id,
                channel,
                frames,
            },
            StreamEvent::Error(error) => Inbound::StreamError { conn: id, error },
        },
    ));
    let datagrams = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut quota = InboxQuota::default();
            while let Ok(data) = conn.read_datagram().await {
                // Unreliable by nature: when the core is behind, dropped rather than waited for.
                inbox.push(id, data, &mut quota);
            }
        })
    };
    let why = conn.closed().await;
    tracing::debug!(conn = id.0, reason = %why, "connection closed");
    streams.abort();
    datagrams.abort();
    let _ = inbound.send(Inbound::Disconnect { conn: id }).await;
}

/// The QUIC [`Link`]: per-channel writers, datagrams straight to quinn, flush-then-close.
struct QuicLink {
    conn: Connection,
    /// The I/O runtime the connection lives on: closes are finished there, not on the core's
    /// thread (whose runtime ends with the core, which would cut a close's flush short).
    io: tokio::runtime::Handle,
    writers: Arc<ChannelWriters>,
    closing: AtomicBool,
    close_detail: Mutex<String>,
}

impl QuicLink {
    fn new(conn: Connection) -> QuicLink {
        QuicLink {
            writers: Arc::new(ChannelWriters::spawn(&conn)),
            conn,
            io: tokio::runtime::Handle::current(),
            closing: AtomicBool::new(false),
            close_detail: Mutex::new(String::new()),
        }
    }
}

/// The first byte of an encoded `ServerMsg::Close` (its postcard variant tag).
fn close_tag() -> u8 {
    static TAG: OnceLock<u8> = OnceLock::new();
    *TAG.get_or_init(|| {
        codec::encode(&ServerMsg::Close {
            reason: neonet_proto::msg::CloseReason::ClientLeft,
            detail: String::new(),
        })[0]
    })
}

impl Link for QuicLink {
    fn transmit(&self, transmit: Transmit) {
        match transmit {
            Transmit::Frame { channel, frame, .. } => {
                if channel == Channel::Control
                    && frame.get(codec::FRAME_HEADER_BYTES) == Some(&close_tag())
                {
                    if let Ok(ServerMsg::Close { detail, .. }) =
                        codec::decode_server(&frame[codec::FRAME_HEADER_BYTES..])
                    {
                        *self.close_detail.lock().unwrap_or_else(|e| e.into_inner()) = detail;
                    }
                }
                if let Err(e) = self.writers.try_send(channel, &frame) {
                    if !self.closing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(peer = %self.conn.remote_address(), "{e}: closing the slow peer");
                        self.conn.close(
                            quinn::VarInt::from_u32(quic::CLOSE_CODE_OVERFLOW),
                            b"send queue full: reading too slowly",
                        );
                    }
                }
            }
            Transmit::Datagram { data, .. } => {
                if let Err(e) = self.conn.send_datagram(Bytes::from(data)) {
                    tracing::trace!(error = %e, "datagram not sent");
                }
            }
            Transmit::Close { reason, .. } => {
                if self.closing.swap(true, Ordering::Relaxed) {
                    return;
                }
                let detail = std::mem::take(
                    &mut *self.close_detail.lock().unwrap_or_else(|e| e.into_inner()),
                );
                let text = quic::close_text(reason, &detail);
                let writers = self.writers.clone();
                let conn = self.conn.clone();
                self.io.spawn(async move {
                    writers.finish().await;
                    conn.close(quic::close_code(reason), text.as_bytes());
                });
            }
        }
    }

    fn max_datagram_size(&self) -> Option<usize> {
        self.conn.max_datagram_size()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.conn.remote_address())
    }

    fn rtt(&self) -> Option<Duration> {
        Some(self.conn.rtt())
    }
}

// ---------------------------------------------------------------------------------------------
// The core task

/// Interval between user reports to the metrics (what `/status` shows).
pub const USERS_REPORT_INTERVAL: Duration = Duration::from_millis(250);

struct LinkEntry {
    link: Arc<dyn Link>,
    /// Stream and datagram bytes received on this connection.
    bytes_in: u64,
    /// Stream and datagram bytes sent on this connection.
    bytes_out: u64,
}

/// Least time between two logs of changes the store would not take, so a full queue under
/// load logs once a second rather than once per input batch.
const SUBMIT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// QUIC datagrams on their way to the core, with their arrival times, taken whenever the core
/// runs instead of waking it for each (see the module documentation). Bounded by
/// [`DATAGRAM_INBOX_MAX`] in all and [`DATAGRAM_INBOX_PER_CONN_MAX`] per connection.
#[derive(Debug)]
pub struct DatagramInbox {
    queue: Mutex<InboxQueue>,
    /// The queue's length, read without the lock to skip an empty inbox.
    len: std::sync::atomic::AtomicUsize,
    /// Datagrams dropped because the inbox was full, not yet counted in the metrics.
    dropped: AtomicU64,
    /// Datagrams dropped because their connection had its share waiting, not yet counted.
    dropped_conn: AtomicU64,
    /// The core's clock zero: arrival times are on the core's clock.
    start: Instant,
}

#[derive(Debug, Default)]
struct InboxQueue {
    datagrams: Vec<InboxDatagram>,
    /// How many times the core has taken the queue: a connection's [`InboxQuota`] from an
    /// earlier take counts nothing still waiting.
    takes: u64,
}

/// One connection's share of the [`DatagramInbox`], kept by its reader: how many of its
/// datagrams wait there since the core's last take. No map in the inbox, no work in the core.
#[derive(Debug, Default)]
struct InboxQuota {
    /// The take count the `waiting` figure belongs to.
    takes: u64,
    waiting: usize,
}

#[derive(Debug)]
struct InboxDatagram {
    conn: ConnId,
    data: Bytes,
    at: Time,
}

impl DatagramInbox {
    fn new(start: Instant) -> DatagramInbox {
        DatagramInbox {
            queue: Mutex::new(InboxQueue::default()),
            len: std::sync::atomic::AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            dropped_conn: AtomicU64::new(0),
            start,
        }
    }

    /// Queues a datagram from `conn` that arrived now, or drops it when `conn` already has its
    /// share waiting (`quota`, its reader's) or the inbox is full.
    fn push(&self, conn: ConnId, data: Bytes, quota: &mut InboxQuota) {
        let at = Time(self.start.elapsed().as_micros() as u64);
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if quota.takes != q.takes {
            *quota = InboxQuota {
                takes: q.takes,
                waiting: 0,
            };
        }
        if quota.waiting >= DATAGRAM_INBOX_PER_CONN_MAX {
            self.dropped_conn.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if q.datagrams.len() >= DATAGRAM_INBOX_MAX {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        quota.waiting += 1;
        q.datagrams.push(InboxDatagram { conn, data, at });
        self.len.store(q.datagrams.len(), Ordering::Release);
    }

    /// Moves every queued datagram into `into` (emptied first), oldest first.
    fn take(&self, into: &mut Vec<InboxDatagram>) {
        into.clear();
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut q.datagrams, into);
        q.takes += 1;
        self.len.store(0, Ordering::Release);
    }
}

struct CoreTask {
    core: ServerCore,
    start: Instant,
    /// QUIC datagrams waiting for the core ([`CoreTask::take_datagrams`]).
    inbox: Arc<DatagramInbox>,
    /// Reused: the datagrams taken from the inbox.
    inbox_batch: Vec<InboxDatagram>,
    /// The latest time handed to the core: a datagram that arrived earlier but is taken later
    /// is handed over at this time, so the core's clock never runs backwards.
    now_floor: Time,
    links: HashMap<ConnId, LinkEntry>,
    effects: Option<EffectSink>,
    /// The store of a persistent relay; effects go there instead of `effects`.
    store: Option<Arc<Store>>,
    /// Reused: tokens of changes the store would not take, refused after each drain.
    refused: Vec<AckToken>,
    events: Option<EventSink>,
    metrics: Option<Arc<Metrics>>,
    /// Reused every tick: bytes per entity, merged into the metrics once per tick.
    entity_bytes: EntityBytesBatch,
    next_users_report: Instant,
}

impl CoreTask {
    /// The core's clock now (and its new floor).
    fn now(&mut self) -> Time {
        let now = Time(self.start.elapsed().as_micros() as u64).max(self.now_floor);
        self.now_floor = now;
        now
    }

    /// Hands the core every datagram waiting in the inbox, at its arrival time.
    fn take_datagrams(&mut self) {
        let mut batch = std::mem::take(&mut self.inbox_batch);
        self.inbox.take(&mut batch);
        for d in batch.drain(..) {
            let at = d.at.max(self.now_floor);
            self.now_floor = at;
            self.handle_datagram(d.conn, &d.data, at);
        }
        self.inbox_batch = batch;
        let dropped = self.inbox.dropped.swap(0, Ordering::Relaxed);
        let dropped_conn = self.inbox.dropped_conn.swap(0, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            for (reason, n) in [
                ("datagram_inbox_full", dropped),
                ("datagram_inbox_conn_full", dropped_conn),
            ] {
                if n > 0 {
                    m.record_drops(reason, n);
                }
            }
        }
    }

    /// One datagram from `conn` that arrived at `at`: counted, then handed to the core.
    fn handle_datagram(&mut self, conn: ConnId, data: &[u8], at: Time) {
        self.count_in(conn, data.len(), true);
        self.core.handle_datagram(conn, data, at);
    }

    fn instant(&self, t: Time) -> Instant {
        self.start + Duration::from_micros(t.0)
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Inbound>,
        mut commits: Option<mpsc::UnboundedReceiver<Inbound>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<Arc<Store>> {
        let mut last_submit_error_log = None;
        loop {
            let deadline = self
                .core
                .poll_timeout()
                .map(|t| self.instant(t))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                // Acknowledgements first: they are what a waiting client is blocked on.
                Some(m) = next_commit(&mut commits) => {
                    self.handle(m);
                    if let Some(c) = commits.as_mut() {
                        while let Ok(m) = c.try_recv() {
                            self.handle(m);
                        }
                    }
                }
                // Before input, so a steady stream of messages can never starve the tick.
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.timeout();
                }
                m = rx.recv() => {
                    let Some(m) = m else { break };
                    let mut handled = self.handle(m);
                    // Bounded in frames, not messages (one read can hold hundreds), and cut
                    // short when a commit lands: its acknowledgements go out first.
                    while handled < INBOUND_BATCH_MAX
                        && commits.as_ref().is_none_or(|c| c.is_empty())
                    {
                        match rx.try_recv() {
                            Ok(m) => handled += self.handle(m),
                            Err(_) => break,
                        }
                    }
                }
            }
            self.take_datagrams();
            self.drain(&mut last_submit_error_log);
        }
        if let Some(store) = self.store.clone() {
            // Make what was submitted durable so its senders get their acks before the close.
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.flush()).await {
                tracing::error!(error = %e, "flushing the world database at shutdown failed");
            }
            if let Some(c) = commits.as_mut() {
                while let Ok(m) = c.try_recv() {
                    self.handle(m);
                }
            }
            self.save_moved_apps();
            self.drain(&mut last_submit_error_log);
        }
        tracing::info!(
            sessions = self.core.sessions().count(),
            "shutting down: closing every session"
        );
        self.core.shutdown();
        self.drain(&mut last_submit_error_log);
        if let Some(store) = &self.store {
            // Ids handed out without a stored change (players) are never reused either.
            let w = self.core.world();
            let ids = NextIds {
                entity: w.next_entity_id,
                user: w.next_user_id,
                chat: w.next_chat_id,
            };
            let _ = store.submit(Change::SetNextIds(ids), None);
        }
        self.store
    }

    /// Hands the apps moved since the last call to the store's dirty set.
    fn save_moved_apps(&mut self) {
        let moved = self.core.take_moved_apps();
        let Some(store) = &self.store else { return };
        for id in moved {
            if let Some(e) = self.core.world().entities.get(&id) {
                store.mark_dirty(e.clone());
            }
        }
    }

    /// Runs the ticks that are due (and idle checks), with fresh datagram sizes. A tick's
    /// recorded duration runs from its start until its last client's datagrams are written,
    /// with the earlier clients' already handed to QUIC.
    fn timeout(&mut self) {
        for (conn, entry) in &self.links {
            if let Some(bytes) = entry.link.max_datagram_size() {
                self.core.handle_max_datagram_size(*conn, bytes);
            }
        }
        let tick = self.core.tick();
        let started = Instant::now();
        // The tick uses every input and acknowledgement that arrived before it.
        self.take_datagrams();
        let now = self.now();
        // In steps, each handed to QUIC before the next is written: the first clients'
        // datagrams leave while later clients' are still being written.
        while self.core.handle_timeout_step(now, TICK_STEP_CLIENTS) == TimeoutProgress::More {
            self.drain_outputs();
        }
        self.save_moved_apps();
        let Some(m) = &self.metrics else { return };
        if let Some(store) = &self.store {
            m.set_persist_queue_depth(store.stats().queued);
        }
        let ticks = self.core.tick().0.saturating_sub(tick.0);
        if ticks > 0 {
            let each = started.elapsed() / ticks as u32;
            for _ in 0..ticks {
                m.record_tick(each);
            }
            m.set_entity_count(self.core.world().entities.len());
            // Which entities cost the bytes, and the live view's packet trails.
            let updates = self.core.last_tick_updates();
            for &(_, entity, bytes) in updates {
                self.entity_bytes.add(entity.0, bytes as usize);
            }
            m.merge_entity_bytes(&mut self.entity_bytes);
            m.record_trails(
                updates
                    .iter()
                    .map(|&(session, entity, bytes)| (entity.0, session.0, bytes as usize)),
            );
        }
        if started >= self.next_users_report {
            self.next_users_report = started + USERS_REPORT_INTERVAL;
            let users: Vec<UserReport> = self
                .core
                .sessions()
                .filter_map(|s| {
                    let entry = self.links.get(&s.conn?)?;
                    Some(UserReport {
                        session_id: s.id.0,
                        name: s.name.clone(),
                        addr: entry.link.remote_addr()?,
                        rtt_ms: entry.link.rtt().map_or(0.0, |d| d.as_secs_f64() * 1e3),
                        bytes_in: entry.bytes_in,
                        bytes_out: entry.bytes_out,
                    })
                })
                .collect();
            m.publish_users(users);
        }
    }

    fn count_in(&mut self, conn: ConnId, bytes: usize, datagram: bool) {
        if let Some(e) = self.links.get_mut(&conn) {
            e.bytes_in += bytes as u64;
        }
        if let Some(m) = &self.metrics {
            if datagram {
                m.record_datagram_in(bytes);
            } else {
                m.record_stream_in(bytes);
            }
        }
    }

    /// Handles one input; returns how many frames (or other messages) that was.
    fn handle(&mut self, m: Inbound) -> usize {
        let now = self.now();
        match m {
            Inbound::Connect {
                conn,
                transport,
                link,
            } => {
                self.links.insert(
                    conn,
                    LinkEntry {
                        link,
                        bytes_in: 0,
                        bytes_out: 0,
                    },
                );
                self.core.handle_connect(conn, transport, now);
            }
            Inbound::Frame {
                conn,
                channel,
                body,
            } => {
                self.count_in(conn, codec::FRAME_HEADER_BYTES + body.len(), false);
                self.core.handle_frame(conn, channel, &body, now)
            }
            Inbound::Frames {
                conn,
                channel,
                frames,
            } => {
                self.count_in(conn, frames.len(), false);
                let mut n = 0;
                for body in codec::frames(&frames) {
                    self.core.handle_frame(conn, channel, body, now);
                    n += 1;
                }
                return n;
            }
            Inbound::Datagram { conn, data } => self.handle_datagram(conn, &data, now),
            Inbound::StreamError { conn, error } => {
                self.core.handle_stream_error(conn, &error, now)
            }
            Inbound::Disconnect { conn } => {
                self.links.remove(&conn);
                self.core.handle_disconnect(conn, now);
            }
            Inbound::Durable { tokens, ok } => {
                tracing::trace!(tokens = tokens.len(), ok, "durable");
                self.core.handle_durable(&tokens, ok)
            }
            Inbound::StorageHealth { ok } => self.core.handle_storage_health(ok),
        }
        1
    }

    /// Carries out every output; changes the store refuses to take are refused to their
    /// senders (which produces more transmits, so it loops until nothing is refused).
    ///
    /// Effects go to the store before the transmits go out: the writer thread starts its
    /// commit (an fsync) while this task fans the same changes out to every connection, instead
    /// of after it; under a 20,000 changes/s broadcast the fan-out of one input batch takes
    /// milliseconds, which every acknowledgement used to wait on top of its commit.
    fn drain(&mut self, last_error_log: &mut Option<Instant>) {
        loop {
            let mut failed = 0usize;
            let mut error = None;
            while let Some(e) = self.core.poll_effect() {
                if let Some(store) = &self.store {
                    let ack = e.ack;
                    if let Err(err) = store.submit_effect(e) {
                        failed += 1;
                        error = Some(err);
                        self.refused.extend(ack);
                    }
                } else if let Some(sink) = self.effects.as_mut() {
                    sink(e);
                }
            }
            if let (Some(err), Some(store)) = (error, &self.store) {
                if last_error_log.is_none_or(|t| t.elapsed() >= SUBMIT_ERROR_LOG_INTERVAL) {
                    *last_error_log = Some(Instant::now());
                    tracing::error!(
                        path = %store.path().display(),
                        error = %err,
                        changes = failed,
                        refused = self.refused.len(),
                        "the world database did not take changes: refused (Storage)"
                    );
                }
            }
            if self.refused.is_empty() {
                self.drain_outputs();
                return;
            }
            let refused = std::mem::take(&mut self.refused);
            self.core.handle_durable(&refused, false);
            self.refused = refused;
            self.refused.clear();
        }
    }

    fn drain_outputs(&mut self) {
        // Counted here and recorded once: a broadcast is thousands of transmits.
        let mut stream_out = 0usize;
        while let Some(t) = self.core.poll_transmit() {
            let conn = match &t {
                Transmit::Frame { conn, .. }
                | Transmit::Datagram { conn, .. }
                | Transmit::Close { conn, .. } => *conn,
            };
            let Some(entry) = self.links.get_mut(&conn) else {
                continue;
            };
            let (bytes, datagram) = match &t {
                Transmit::Frame { frame, .. } => (frame.len(), false),
                Transmit::Datagram { data, .. } => (data.len(), true),
                Transmit::Close { .. } => (0, false),
            };
            entry.bytes_out += bytes as u64;
            if !datagram {
                stream_out += bytes;
            } else if let Some(m) = &self.metrics {
                m.record_datagram_out(bytes);
            }
            entry.link.transmit(t);
        }
        if let Some(m) = &self.metrics {
            if stream_out > 0 {
                m.record_stream_out(stream_out);
            }
        }
        while let Some(e) = self.core.poll_event() {
            log_event(&e);
            if let (ServerEvent::Joined { .. }, Some(m)) = (&e, &self.metrics) {
                m.record_join();
            }
            if let Some(sink) = self.events.as_mut() {
                sink(&e);
            }
        }
    }
}

/// The next commit report, or never when the relay has no store.
async fn next_commit(commits: &mut Option<mpsc::UnboundedReceiver<Inbound>>) -> Option<Inbound> {
    match commits {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

fn log_event(e: &ServerEvent) {
    match e {
        ServerEvent::Joined {
            session,
            conn,
            user,
            player,
            name,
        } => tracing::info!(
            session = session.0,
            conn = conn.0,
            user = user.0,
            player = player.0,
            %name,
            "joined"
        ),
        ServerEvent::Left { session, reason } => {
            tracing::info!(session = session.0, %reason, "left")
        }
        ServerEvent::PeerError {
            conn,
            reason,
            detail,
        } => tracing::warn!(conn = conn.0, %reason, %detail, "closed a misbehaving peer"),
        ServerEvent::Refused {
            session,
            msg,
            reason,
        } => tracing::debug!(session = session.0, msg, %reason, "refused"),
        ServerEvent::DatagramRejected { conn, error } => {
            tracing::debug!(conn = conn.0, %error, "dropped a datagram")
        }
        ServerEvent::MoveRejected { session } => {
            tracing::debug!(session = session.0, "refused a client-authoritative move")
        }
    }
}

#[cfg(test)]
mod inbox_tests {
    use super::*;

    #[test]
    fn the_datagram_inbox_hands_over_in_arrival_order_and_drops_beyond_its_bound() {
        let inbox = DatagramInbox::new(Instant::now());
        let mut batch = Vec::new();
        inbox.take(&mut batch);
        assert!(batch.is_empty(), "an empty inbox hands over nothing");
        let extra = 10;
        for i in 0..DATAGRAM_INBOX_MAX + extra {
            let mut quota = InboxQuota::default();
            inbox.push(ConnId(i as u64), Bytes::from(vec![1, 2, 3]), &mut quota);
        }
        inbox.take(&mut batch);
        assert_eq!(batch.len(), DATAGRAM_INBOX_MAX);
        assert!(batch
            .iter()
            .enumerate()
            .all(|(i, d)| d.conn == ConnId(i as u64)));
        assert!(batch.windows(2).all(|w| w[0].at <= w[1].at));
        assert_eq!(inbox.dropped.load(Ordering::Relaxed), extra as u64);
        // Taken means gone: room again, and the next take holds only what came after.
        inbox.push(
            ConnId(7),
            Bytes::from_static(b"late"),
            &mut InboxQuota::default(),
        );
        inbox.take(&mut batch);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].data, Bytes::from_static(b"late"));
    }

    #[test]
    fn a_flooding_connection_cannot_crowd_out_another_connections_datagrams() {
        let inbox = DatagramInbox::new(Instant::now());
        let (mut flood, mut quiet) = (InboxQuota::default(), InboxQuota::default());
        for _ in 0..DATAGRAM_INBOX_MAX {
            inbox.push(ConnId(1), Bytes::from_static(b"flood"), &mut flood);
        }
        inbox.push(ConnId(2), Bytes::from_static(b"input"), &mut quiet);
        let mut batch = Vec::new();
        inbox.take(&mut batch);
        let from = |c: u64| batch.iter().filter(|d| d.conn == ConnId(c)).count();
        assert_eq!(from(1), DATAGRAM_INBOX_PER_CONN_MAX);
        assert_eq!(from(2), 1, "the quiet connection's datagram got in");
        assert_eq!(
            inbox.dropped_conn.load(Ordering::Relaxed),
            (DATAGRAM_INBOX_MAX - DATAGRAM_INBOX_PER_CONN_MAX) as u64
        );
        assert_eq!(inbox.dropped.load(Ordering::Relaxed), 0);
        // After the core took them, the flooder's share is free again.
        inbox.push(ConnId(1), Bytes::from_static(b"next"), &mut flood);
        inbox.take(&mut batch);
        assert_eq!(batch.len(), 1);
    }
}
