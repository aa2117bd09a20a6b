//! The authoritative world core: sessions, the world, authorization, relaying and the tick.
//!
//! `ServerCore` owns all world state. It never does I/O: a driver feeds it connections, frames
//! and datagrams with `handle_*(…, now)` and carries out what `poll_transmit`, `poll_event` and
//! `poll_effect` return. It is transport-agnostic: a QUIC connection, a WebSocket or a simulated
//! link are all a [`ConnId`] to it.
//!
//! ## Methods, grouped as quinn-proto groups them
//! - getters: [`ServerCore::world`], [`ServerCore::sessions`], [`ServerCore::tick`];
//! - inputs: [`handle_connect`](ServerCore::handle_connect),
//!   [`handle_frame`](ServerCore::handle_frame), [`handle_datagram`](ServerCore::handle_datagram),
//!   [`handle_disconnect`](ServerCore::handle_disconnect),
//!   [`handle_timeout`](ServerCore::handle_timeout) (or, to send the first clients' datagrams
//!   while later clients' are written, [`handle_timeout_step`](ServerCore::handle_timeout_step)),
//!   [`handle_durable`](ServerCore::handle_durable);
//! - outputs, drained after every input until `None`: [`poll_transmit`](ServerCore::poll_transmit),
//!   [`poll_event`](ServerCore::poll_event), [`poll_effect`](ServerCore::poll_effect), then
//!   [`poll_timeout`](ServerCore::poll_timeout) for when to call `handle_timeout` next.
//!
//! ## Sessions and connections
//! A [`SessionId`] is one join of one user; a [`ConnId`] is one transport connection. The two are
//! kept apart so a session can outlive its connection (resume, QUIC migration). One session per
//! user: a second join of the same user **replaces** the first, which is closed with
//! [`CloseReason::DuplicateUser`]. Newer wins because the usual cause is a client reconnecting
//! before the server noticed its old connection die; refusing would lock that user out until the
//! idle timeout.
//!
//! ## Relaying
//! Accepted changes are relayed to every session, the sender included: clients never apply
//! their own changes before the server orders them, so every mirror sees one order. Entity
//! events go to everyone but the sender, or to one player.
//!
//! ## Authorization
//! Every message from a joined session goes through one function, `authorize`, before it can
//! change anything: rank rules, ownership and limits. A refusal is answered with `Refused` for
//! the change's id; a broken limit on a message without one closes that session only.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{self, DecodeError};
use crate::limits::*;
use crate::msg::*;
use crate::predict::{
    CharacterConfig, KinematicCharacter, MoveValidator, PlayerMotion, ValidatorConfig,
};
use crate::time::{Tick, TickClock, Time};
use crate::transform::{
    decode_client_datagram, ClientReplicator, EntitySample, InterestGrid, Quantizer, Seq,
    TickInput, TransformConfig, TransformError,
};
use crate::types::*;

/// The app prop naming the session moving it (see `EntityModify`).
pub const MOVER_PROP: &str = "mover";

/// Player entity fields only the server sets: clients cannot spoof another name or rank.
pub const PLAYER_RESERVED_PROPS: [&str; 2] = ["name", "rank"];

/// A transport connection, numbered by the driver. Unique for the server's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Which transport a connection uses (for logs, metrics and per-transport rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// QUIC (quinn): reliable streams per channel plus unreliable datagrams.
    Quic,
    /// The WebSocket bridge: one ordered reliable stream, no datagrams.
    WebSocket,
    /// The simulated network.
    Sim,
}

/// Verifies and issues auth tokens. The core asks; the driver decides how (the relay signs
/// tokens with a server secret).
pub trait Authenticator: Send {
    /// The user a token names, or `None` if it is invalid.
    fn verify(&self, token: &str) -> Option<UserId>;
    /// A token naming `user`.
    fn issue(&self, user: UserId) -> String;
}

/// Tokens that are the user id in plain text. For tests and the simulated network only: anyone
/// can forge them.
#[derive(Debug, Default, Clone)]
pub struct InsecureTokens;

impl Authenticator for InsecureTokens {
    fn verify(&self, token: &str) -> Option<UserId> {
        token.strip_prefix("user:")?.parse().ok().map(UserId)
    }
    fn issue(&self, user: UserId) -> String {
        format!("user:{}", user.0)
    }
}

/// Server configuration. Defaults are the relay's.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Tick rate, Hz (10–120, default 30).
    pub tick_hz: u16,
    /// Unix time in milliseconds at `Time::ZERO`, so chat timestamps are wall-clock times.
    pub unix_ms_at_zero: u64,
    /// Acks wait for [`ServerCore::handle_durable`] (with persistence) instead of going out at
    /// once.
    pub durable_acks: bool,
    /// A returning user spawns where they left instead of at the spawn point.
    pub spawn_at_last_position: bool,
    /// A connection silent for this long is closed with `Timeout` (the transport's own idle
    /// timeout usually fires first; this one covers transports without one).
    pub idle_timeout: Duration,
    /// A connection that has not joined (sent a valid `Hello`) this long after connecting is
    /// closed with `Timeout`, so that peers which never join cannot hold connection slots.
    pub join_timeout: Duration,
    /// Transform codec: world bounds, precision, per-client budget, interest radius. Its
    /// `tick_hz` is overwritten by `tick_hz` above.
    pub transform: TransformConfig,
    /// The built-in movement model's tunables (server-authoritative movement and validation).
    pub character: CharacterConfig,
    /// The secret `/admin CODE` takes to make the sender an admin; `None`: the command is
    /// refused (ranks then change only through `ModifyRank` by an existing admin).
    pub admin_code: Option<String>,
    /// Reliable messages a session may send per second, sustained (token bucket refill).
    pub messages_per_s: u32,
    /// Reliable messages a session may send in a burst (token bucket size). Past it, changes
    /// are refused with `RateLimited`; a session refused more than a whole burst within
    /// [`FLOOD_WINDOW`] is closed with `Flooding`.
    pub message_burst: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            tick_hz: crate::time::TICK_HZ_DEFAULT,
            unix_ms_at_zero: 0,
            durable_acks: false,
            spawn_at_last_position: true,
            idle_timeout: Duration::from_secs(30),
            // A handshake takes milliseconds and the client sends `Hello` right after it; 10 s
            // leaves room for a slow link and a loaded server.
            join_timeout: Duration::from_secs(10),
            admin_code: None,
            // Ten times a busy editor's pace; the load tool's 200 changes/s per client fits.
            messages_per_s: 1000,
            message_burst: 2000,
            transform: TransformConfig::default(),
            character: CharacterConfig {
                // Keep players inside what the transform codec can represent.
                bounds_min: crate::transform::config::BOUNDS_MIN_DEFAULT_M,
                bounds_max: crate::transform::config::BOUNDS_MAX_DEFAULT_M,
                ..CharacterConfig::default()
            },
        }
    }
}

/// The persistent world: what a store loads at start and the core keeps current.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct World {
    /// Settings.
    pub settings: Settings,
    /// Spawn point.
    pub spawn: Spawn,
    /// Blueprints by id.
    pub blueprints: BTreeMap<BlueprintId, Blueprint>,
    /// Entities by id (apps persist; players exist while their session does).
    pub entities: BTreeMap<EntityId, Entity>,
    /// Last [`CHAT_HISTORY_LEN`] chat messages, oldest first.
    pub chat: VecDeque<ChatMessage>,
    /// Known users.
    pub users: BTreeMap<UserId, User>,
    /// Next entity id to allocate.
    pub next_entity_id: u32,
    /// Next user id to allocate.
    pub next_user_id: u64,
    /// Next chat message id.
    pub next_chat_id: u64,
}

impl World {
    /// The effective rank of a user: at least the world's default rank.
    pub fn effective_rank(&self, user: UserId) -> Rank {
        let stored = self.users.get(&user).map(|u| u.rank).unwrap_or_default();
        stored.max(self.settings.default_rank)
    }
}

/// A change the store must make durable. Emitted by the core as an [`Effect`].
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Insert or replace a blueprint.
    PutBlueprint(Blueprint),
    /// Insert or replace an app entity.
    PutEntity(Entity),
    /// Delete an app entity.
    DeleteEntity(EntityId),
    /// Replace the settings.
    PutSettings(Settings),
    /// Replace the spawn point.
    PutSpawn(Spawn),
    /// Insert or replace a user.
    PutUser(User),
    /// Append a chat message (the store keeps the last [`CHAT_HISTORY_LEN`]).
    AppendChat(ChatMessage),
    /// Clear chat history.
    ClearChat,
}

/// Identifies a change waiting to be made durable before its sender is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AckToken {
    /// The session that made the change.
    pub session: SessionId,
    /// The change's id.
    pub req: ReqId,
}

/// A persistence effect: a change and, if its sender is waiting, the token to acknowledge.
#[derive(Clone, Debug, PartialEq)]
pub struct Effect {
    /// What to store.
    pub change: Change,
    /// Acknowledge this once durable (`None` for changes nobody waits on).
    pub ack: Option<AckToken>,
}

/// What the driver must send.
#[derive(Clone, Debug, PartialEq)]
pub enum Transmit {
    /// A reliable frame (length prefix included) on a channel's stream. Broadcasts share one
    /// encoded buffer.
    Frame {
        /// To whom.
        conn: ConnId,
        /// Which stream.
        channel: Channel,
        /// The encoded frame.
        frame: Arc<[u8]>,
    },
    /// An unreliable datagram, already sized to the connection's `max_datagram_size`.
    Datagram {
        /// To whom.
        conn: ConnId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Close the connection after flushing what was queued before (a `Close` frame was sent).
    Close {
        /// Which connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// Something that happened, for the driver's logs, metrics and persistence bookkeeping.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerEvent {
    /// A session joined (the `enter` event).
    Joined {
        /// The session.
        session: SessionId,
        /// Its connection.
        conn: ConnId,
        /// Its user.
        user: UserId,
        /// Its player entity.
        player: EntityId,
        /// Display name.
        name: String,
    },
    /// A session ended.
    Left {
        /// The session.
        session: SessionId,
        /// Why.
        reason: CloseReason,
    },
    /// A connection was refused or closed for misbehaving.
    PeerError {
        /// The connection.
        conn: ConnId,
        /// Why it was closed.
        reason: CloseReason,
        /// Detail for logs.
        detail: String,
    },
    /// A datagram was dropped because it could not be decoded or broke a limit. Datagrams are
    /// unreliable, so this never closes the connection by itself.
    DatagramRejected {
        /// The connection.
        conn: ConnId,
        /// Why.
        error: TransformError,
    },
    /// A client-authoritative move was refused (too fast, out of bounds): the player is held
    /// at its last accepted position.
    MoveRejected {
        /// The session.
        session: SessionId,
    },
    /// A message was refused.
    Refused {
        /// The session.
        session: SessionId,
        /// Which message.
        msg: &'static str,
        /// Why.
        reason: Refusal,
    },
}

/// The window over which refused messages are counted: a session refused more than a whole
/// burst's worth of messages within it is flooding, however many tokens trickle in meanwhile.
pub const FLOOD_WINDOW: Duration = Duration::from_secs(1);

/// What the rate limit says about one message.
enum Limit {
    /// Within the limit.
    Pass,
    /// Over the burst: refuse it.
    Refuse,
    /// More than a whole burst refused within [`FLOOD_WINDOW`]: the peer is flooding.
    Close,
}

/// A joined session, as the core sees it.
#[derive(Clone, Debug)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// The user.
    pub user: UserId,
    /// Display name.
    pub name: String,
    /// The current connection (`None` while disconnected and resumable).
    pub conn: Option<ConnId>,
    /// The player entity.
    pub player: EntityId,
    /// When it joined.
    pub joined_at: Time,
    /// Transform replication towards this session's client.
    replicator: ClientReplicator,
    /// Server-authoritative movement of its player.
    motion: PlayerMotion,
    /// Validation of its player's moves in client-authoritative mode.
    validator: MoveValidator,
    /// Newest upstream datagram sequence applied (older owned transforms are ignored).
    up_seq: Option<Seq>,
    /// Rate limit: tokens left, when last refilled, and messages refused in the current
    /// [`FLOOD_WINDOW`] (and when it started).
    tokens: f64,
    refilled_at: Time,
    refused_in_window: u32,
    window_start: Time,
}

impl Session {
    /// The replicator's round-trip estimate, if any acks arrived.
    pub fn rtt_estimate_us(&self) -> Option<u64> {
        self.replicator.rtt_estimate_us()
    }
}

#[derive(Debug)]
struct Conn {
    transport: TransportKind,
    session: Option<SessionId>,
    closed: bool,
    connected_at: Time,
    last_heard: Time,
    max_datagram_size: usize,
}

/// The authoritative world core. See the module documentation.
pub struct ServerCore {
    config: ServerConfig,
    auth: Box<dyn Authenticator>,
    world: World,
    clock: TickClock,
    now: Time,
    conns: BTreeMap<ConnId, Conn>,
    sessions: BTreeMap<SessionId, Session>,
    by_user: BTreeMap<UserId, SessionId>,
    next_session: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ServerEvent>,
    effects: VecDeque<Effect>,
    storage_ok: bool,
    /// Apps whose transform datagrams moved since the last [`ServerCore::take_moved_apps`].
    /// At most one id per app in the world: removing an app removes its id.
    moved_apps: BTreeSet<EntityId>,
    quantizer: Quantizer,
    model: KinematicCharacter,
    /// Reused every tick: one quantized sample per entity, shared by every client's replicator.
    samples: Vec<EntitySample>,
    /// Blueprint modifications accepted since the last flush, merged per blueprint: everyone
    /// gets one `BlueprintModified` per blueprint per tick with its newest version, however
    /// fast it is edited (an editor dragging a slider sends dozens of changes a second; each is
    /// still committed and acknowledged on its own). Flushed at the start of each tick and
    /// before any other World-channel message, so the World stream keeps its order.
    pending_blueprints: BTreeMap<BlueprintId, (u32, BlueprintPatch)>,
    /// Rebuilt every tick: which samples lie near which viewer.
    grid: InterestGrid,
    /// Reused every tick: the samples near one viewer (the grid's answer).
    nearby: Vec<EntitySample>,
    /// Reused every tick: datagrams written for one client.
    datagrams: Vec<Vec<u8>>,
    /// The last tick's entity updates: (to whom, which entity, estimated bytes).
    tick_updates: Vec<(SessionId, EntityId, u32)>,
    stats: TickStats,
    /// The tick whose client datagrams are being written, between two
    /// [`ServerCore::handle_timeout_step`] calls.
    tick_job: Option<TickJob>,
}

/// A tick under way: its world snapshot (`samples`, `grid`) is taken; clients from `next` on
/// (by session id) still need their datagrams.
#[derive(Clone, Copy, Debug)]
struct TickJob {
    /// Session to write next (the first with an id at or above it); `None` past the largest
    /// possible id.
    next: Option<SessionId>,
    /// Whether players move server-side (their own-state blob rides in the datagram).
    server_auth: bool,
    /// What the tick wrote so far.
    stats: TickStats,
}

/// Whether [`ServerCore::handle_timeout_step`] finished what was due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutProgress {
    /// Clients of a due tick are left: call again (after sending what was written).
    More,
    /// Every due tick is written and idle connections are closed.
    Done,
}

/// What the last tick did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickStats {
    /// The tick.
    pub tick: Tick,
    /// Transform datagrams written.
    pub datagrams: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Entity updates written (summed over clients).
    pub updates: usize,
}

impl std::fmt::Debug for ServerCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCore")
            .field("tick", &self.clock.tick())
            .field("sessions", &self.sessions.len())
            .field("conns", &self.conns.len())
            .finish()
    }
}

impl ServerCore {
    /// A core hosting `world` (loaded from the store, or `World::default()`), starting at `now`.
    pub fn new(
        config: ServerConfig,
        world: World,
        auth: Box<dyn Authenticator>,
        now: Time,
    ) -> ServerCore {
        let mut config = config;
        config.tick_hz = config
            .tick_hz
            .clamp(crate::time::TICK_HZ_MIN, crate::time::TICK_HZ_MAX);
        config.transform.tick_hz = config.tick_hz;
        if config.transform.validate().is_err() {
            config.transform = TransformConfig {
                tick_hz: config.tick_hz,
                ..TransformConfig::default()
            };
        }
        let quantizer = Quantizer::new(&config.transform).expect("validated transform config");
        let model = KinematicCharacter::new(config.character);
        let mut world = world;
        world.next_entity_id = world
            .next_entity_id
            .max(world.entities.keys().last().map_or(1, |e| e.0 + 1));
        world.next_user_id = world
            .next_user_id
            .max(world.users.keys().last().map_or(1, |u| u.0 + 1));
        world.next_chat_id = world
            .next_chat_id
            .max(world.chat.back().map_or(1, |c| c.id + 1));
        // Players never outlive a restart: their sessions are gone. So do the movers of apps
        // (a stored owner would name a session id the new core hands to someone else).
        world.entities.retain(|_, e| e.kind != EntityKind::Player);
        for e in world.entities.values_mut() {
            if e.owner.take().is_some() {
                e.props.retain(|(k, _)| k != MOVER_PROP);
            }
        }
        ServerCore {
            clock: TickClock::new(config.tick_hz, now),
            config,
            auth,
            world,
            now,
            conns: BTreeMap::new(),
            sessions: BTreeMap::new(),
            by_user: BTreeMap::new(),
            next_session: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            effects: VecDeque::new(),
            storage_ok: true,
            moved_apps: BTreeSet::new(),
            quantizer,
            model,
            samples: Vec::new(),
            pending_blueprints: BTreeMap::new(),
            grid: InterestGrid::new(),
            nearby: Vec::new(),
            datagrams: Vec::new(),
            tick_updates: Vec::new(),
            stats: TickStats::default(),
            tick_job: None,
        }
    }

    /// The apps moved by their owners' transform datagrams since the last call, by id (each
    /// still in [`ServerCore::world`]). Such motion is fast-changing state, not an [`Effect`]:
    /// a persisting driver saves these apps as dirty state at its own interval.
    pub fn take_moved_apps(&mut self) -> BTreeSet<EntityId> {
        std::mem::take(&mut self.moved_apps)
    }

    /// What the last tick sent.
    pub fn last_tick_stats(&self) -> TickStats {
        self.stats
    }

    /// Every entity update the last tick sent: to which session, which entity, and its share
    /// of the datagram bytes (each client's bytes spread evenly over its updates). For
    /// bandwidth attribution and the operator's live view.
    pub fn last_tick_updates(&self) -> &[(SessionId, EntityId, u32)] {
        &self.tick_updates
    }

    /// The quantizer every transform goes through.
    pub fn quantizer(&self) -> &Quantizer {
        &self.quantizer
    }

    // ---- getters ----

    /// The world as it is now.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// Joined sessions.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// The session a connection belongs to, if joined.
    pub fn session_of(&self, conn: ConnId) -> Option<&Session> {
        let sid = self.conns.get(&conn)?.session?;
        self.sessions.get(&sid)
    }

    /// The next tick to run.
    pub fn tick(&self) -> Tick {
        self.clock.tick()
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The transport of an open connection.
    pub fn transport(&self, conn: ConnId) -> Option<TransportKind> {
        self.conns.get(&conn).map(|c| c.transport)
    }

    /// Number of open connections (joined or not).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    // ---- inputs ----

    /// A transport connection opened. It must send `Hello` first.
    pub fn handle_connect(&mut self, conn: ConnId, transport: TransportKind, now: Time) {
        self.now = now;
        self.conns.insert(
            conn,
            Conn {
                transport,
                session: None,
                closed: false,
                connected_at: now,
                last_heard: now,
                max_datagram_size: 1200,
            },
        );
    }

    /// The connection's path allows datagrams up to `bytes` now (quinn's `max_datagram_size()`,
    /// which changes with path MTU discovery). Call before every tick.
    pub fn handle_max_datagram_size(&mut self, conn: ConnId, bytes: usize) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.max_datagram_size = bytes.min(DATAGRAM_BYTES_MAX);
        }
    }

    /// A complete frame body (without its length prefix) arrived on `channel`.
    pub fn handle_frame(&mut self, conn: ConnId, channel: Channel, body: &[u8], now: Time) {
        self.now = now;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closed {
            return;
        }
        c.last_heard = now;
        let session = c.session;
        let msg = match codec::decode_client(body) {
            Ok(m) => m,
            Err(e) => return self.protocol_error(conn, &e),
        };
        if msg.channel() != channel {
            return self.close_conn(
                conn,
                CloseReason::ProtocolViolation,
                format!("{} sent on the {:?} channel", msg.name(), channel),
            );
        }
        match session {
            None => self.handle_hello(conn, msg),
            Some(sid) => self.handle_session_msg(sid, conn, msg),
        }
    }

    /// A stream-level decoding error (oversize frame, truncated stream) on `conn`.
    pub fn handle_stream_error(&mut self, conn: ConnId, error: &DecodeError, now: Time) {
        self.now = now;
        self.protocol_error(conn, error);
    }

    /// An unreliable datagram arrived.
    pub fn handle_datagram(&mut self, conn: ConnId, data: &[u8], now: Time) {
        self.now = now;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_heard = now;
        if data.len() > DATAGRAM_BYTES_MAX {
            self.close_conn(
                conn,
                CloseReason::ProtocolViolation,
                "datagram over the size limit".into(),
            );
            return;
        }
        let Some(sid) = self.conns.get(&conn).and_then(|c| c.session) else {
            return; // Not joined yet: nothing to apply it to.
        };
        let d = match decode_client_datagram(&self.quantizer, data) {
            Ok(d) => d,
            Err(error) => {
                self.events
                    .push_back(ServerEvent::DatagramRejected { conn, error });
                return;
            }
        };
        let client_auth = self.world.settings.movement == MovementAuthority::Client;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.replicator.handle_ack(&d.ack, now);
        if !client_auth
            && !d.input_blob.is_empty()
            && s.motion.handle_input_datagram(&d.input_blob).is_err()
        {
            let error = TransformError::Malformed("undecodable input blob");
            self.events
                .push_back(ServerEvent::DatagramRejected { conn, error });
        }
        // Owned transforms: only from the newest datagram, only for entities this session owns.
        let fresh = s.up_seq.is_none_or(|old| d.seq.is_newer_than(old));
        if !fresh || d.owned.is_empty() {
            return;
        }
        s.up_seq = Some(d.seq);
        let player = s.player;
        let mut rejected = false;
        for (id, q) in &d.owned {
            let t = self.quantizer.dequantize(q);
            let Some(e) = self.world.entities.get_mut(id) else {
                continue;
            };
            if e.owner != Some(sid) {
                continue;
            }
            if *id == player {
                if !client_auth {
                    continue; // The server simulates this player; its own transform is ignored.
                }
                let s = self.sessions.get_mut(&sid).expect("looked up above");
                if s.validator.validate(&t, now).is_err() {
                    rejected = true;
                    e.transform = s.validator.accepted();
                    continue;
                }
            }
            e.transform = t;
            if e.kind == EntityKind::App {
                self.moved_apps.insert(*id);
            }
        }
        if rejected {
            // Tell the client where it is held, so it stops simulating from a refused place.
            let held = self.world.entities.get(&player).map(|e| e.transform);
            if let Some(t) = held {
                let rotation_y = (yaw_of(t.rotation) as f32 / 65536.0) * std::f32::consts::TAU;
                self.send(
                    conn,
                    &ServerMsg::PlayerTeleport {
                        position: t.position,
                        rotation_y,
                    },
                );
            }
            self.events
                .push_back(ServerEvent::MoveRejected { session: sid });
        }
    }

    /// The transport connection closed (by the peer, a timeout or the driver).
    pub fn handle_disconnect(&mut self, conn: ConnId, now: Time) {
        self.now = now;
        if let Some(c) = self.conns.remove(&conn) {
            if let Some(sid) = c.session {
                self.end_session(sid, CloseReason::ClientLeft);
            }
        }
    }

    /// Changes up to these tokens are durable (`ok`) or could not be stored (`!ok`): the senders
    /// get `Ack` or `Refused(Storage)`.
    pub fn handle_durable(&mut self, tokens: &[AckToken], ok: bool) {
        self.storage_ok = ok;
        for t in tokens {
            let Some(conn) = self.sessions.get(&t.session).and_then(|s| s.conn) else {
                continue;
            };
            let msg = if ok {
                ServerMsg::Ack { req: t.req }
            } else {
                ServerMsg::Refused {
                    req: t.req,
                    reason: Refusal::Storage,
                }
            };
            self.send(conn, &msg);
        }
    }

    /// The store recovered (or failed) outside any batch.
    pub fn handle_storage_health(&mut self, ok: bool) {
        self.storage_ok = ok;
    }

    /// Runs every tick due at `now` and closes idle connections. Safe to call early.
    pub fn handle_timeout(&mut self, now: Time) {
        while self.handle_timeout_step(now, usize::MAX) == TimeoutProgress::More {}
    }

    /// [`handle_timeout`](Self::handle_timeout) in steps of at most `clients_max` clients'
    /// datagrams (at least one), so a driver can send the first clients' datagrams while the
    /// others' are still being written: the first client of a 1,000-client tick no longer waits
    /// for the whole tick. Returns [`TimeoutProgress::More`] while clients of a due tick are
    /// left; the tick's world snapshot is taken when it starts, so every client of one tick sees
    /// the same world. Between steps a driver should only drain outputs (`poll_*`); an input
    /// handled in between is applied as if it arrived before the tick's remaining clients.
    pub fn handle_timeout_step(&mut self, now: Time, clients_max: usize) -> TimeoutProgress {
        self.now = now;
        let mut budget = clients_max.max(1);
        loop {
            if self.tick_job.is_none() {
                let Some(tick) = self.clock.poll_tick(now) else {
                    break;
                };
                self.begin_tick(tick);
            }
            if !self.continue_tick(&mut budget) || budget == 0 {
                return TimeoutProgress::More;
            }
        }
        self.close_idle(now);
        TimeoutProgress::Done
    }

    /// Closes connections silent for longer than the idle timeout and those that did not join
    /// in time.
    fn close_idle(&mut self, now: Time) {
        let (idle, join) = (self.config.idle_timeout, self.config.join_timeout);
        let stale: Vec<(ConnId, &'static str)> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.closed)
            .filter_map(|(id, c)| {
                if now.saturating_since(c.last_heard) > idle {
                    Some((*id, "no traffic"))
                } else if c.session.is_none() && now.saturating_since(c.connected_at) > join {
                    Some((*id, "did not join in time"))
                } else {
                    None
                }
            })
            .collect();
        for (conn, why) in stale {
            self.close_conn(conn, CloseReason::Timeout, why.into());
        }
    }

    /// Closes every session with `ServerShutdown` (graceful shutdown).
    pub fn shutdown(&mut self) {
        self.flush_blueprints();
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.close_conn(
                conn,
                CloseReason::ServerShutdown,
                "server shutting down".into(),
            );
        }
    }

    // ---- outputs ----

    /// The next thing to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The next persistence effect.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Time> {
        Some(self.clock.next_at())
    }

    // ---- internals ----

    /// Starts a server tick: moves server-authoritative players by their inputs and takes the
    /// world snapshot every client's datagrams are written from.
    fn begin_tick(&mut self, tick: Tick) {
        self.flush_blueprints();
        let server_auth = self.world.settings.movement == MovementAuthority::Server;
        if server_auth {
            for s in self.sessions.values_mut() {
                s.motion.tick(tick);
                if let Some(e) = self.world.entities.get_mut(&s.player) {
                    e.transform = s.motion.transform();
                }
            }
        }
        self.samples.clear();
        for e in self.world.entities.values() {
            let mut sample = EntitySample::new(e.id, &e.transform, &self.quantizer);
            sample.owner = e.owner;
            self.samples.push(sample);
        }
        // Each client looks only at the entities near its player: a tick then costs clients ×
        // entities nearby, not clients × entities (exact: see `InterestGrid`).
        let t = &self.config.transform;
        self.grid
            .build(&self.samples, t.interest_radius_m + t.interest_hysteresis_m);
        self.tick_updates.clear();
        self.tick_job = Some(TickJob {
            next: Some(SessionId(0)),
            server_auth,
            stats: TickStats {
                tick,
                ..TickStats::default()
            },
        });
    }

    /// Writes the transform datagrams (interest, priority, budget, delta compression) of the
    /// tick under way for up to `budget` more clients, counting them off `budget`. Returns
    /// whether the tick is complete (and ends it).
    fn continue_tick(&mut self, budget: &mut usize) -> bool {
        let Some(mut job) = self.tick_job else {
            return true;
        };
        let (tick, now) = (job.stats.tick, self.now);
        // Past the largest possible session id nothing is left.
        let mut rest = job.next.map(|first| self.sessions.range_mut(first..));
        let complete = loop {
            if *budget == 0 {
                break false;
            }
            let Some((&sid, s)) = rest.as_mut().and_then(Iterator::next) else {
                break true;
            };
            job.next = sid.0.checked_add(1).map(SessionId);
            let Some(conn) = s.conn else { continue };
            let Some(c) = self.conns.get(&conn) else {
                continue;
            };
            if c.closed {
                continue;
            }
            *budget -= 1;
            let viewer = self
                .world
                .entities
                .get(&s.player)
                .map(|e| e.transform.position);
            let blob = if job.server_auth {
                s.motion.own_state_blob()
            } else {
                None
            };
            let entities: &[EntitySample] = match viewer {
                Some(v) => {
                    self.grid
                        .query(&self.samples, v, s.replicator.retained(), &mut self.nearby);
                    &self.nearby
                }
                None => &self.samples,
            };
            let input = TickInput {
                tick,
                now,
                viewer,
                entities,
                max_datagram_size: c.max_datagram_size,
                own_blob: blob.as_deref(),
            };
            match s.replicator.write_tick(&input, &mut self.datagrams) {
                Ok(sum) => {
                    job.stats.updates += sum.updates;
                    let each = (sum.bytes / sum.updates.max(1)) as u32;
                    self.tick_updates
                        .extend(s.replicator.last_tick_updates().map(|id| (sid, id, each)));
                }
                Err(error) => self
                    .events
                    .push_back(ServerEvent::DatagramRejected { conn, error }),
            }
            for data in self.datagrams.drain(..) {
                job.stats.datagrams += 1;
                job.stats.bytes += data.len();
                self.transmits.push_back(Transmit::Datagram { conn, data });
            }
        };
        if complete {
            self.stats = job.stats;
            self.tick_job = None;
        } else {
            self.tick_job = Some(job);
        }
        complete
    }

    /// Sends the merged blueprint modifications (see `pending_blueprints`) to everyone.
    fn flush_blueprints(&mut self) {
        if self.pending_blueprints.is_empty() {
            return;
        }
        for (id, (version, patch)) in std::mem::take(&mut self.pending_blueprints) {
            self.broadcast_now(&ServerMsg::BlueprintModified { id, version, patch }, None);
        }
    }

    fn send(&mut self, conn: ConnId, msg: &ServerMsg) {
        if msg.channel() == Channel::World {
            self.flush_blueprints();
        }
        let frame: Arc<[u8]> = codec::encode_frame(msg).into();
        self.transmits.push_back(Transmit::Frame {
            conn,
            channel: msg.channel(),
            frame,
        });
    }

    /// Sends `msg` to every joined session except `except`, encoding it once.
    fn broadcast(&mut self, msg: &ServerMsg, except: Option<SessionId>) {
        if msg.channel() == Channel::World {
            self.flush_blueprints();
        }
        self.broadcast_now(msg, except);
    }

    fn broadcast_now(&mut self, msg: &ServerMsg, except: Option<SessionId>) {
        let frame: Arc<[u8]> = codec::encode_frame(msg).into();
        let channel = msg.channel();
        for s in self.sessions.values() {
            if Some(s.id) == except {
                continue;
            }
            if let Some(conn) = s.conn {
                self.transmits.push_back(Transmit::Frame {
                    conn,
                    channel,
                    frame: frame.clone(),
                });
            }
        }
    }

    fn protocol_error(&mut self, conn: ConnId, e: &DecodeError) {
        self.close_conn(conn, CloseReason::ProtocolViolation, e.to_string());
    }

    fn close_conn(&mut self, conn: ConnId, reason: CloseReason, detail: String) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closed {
            return;
        }
        c.closed = true;
        let session = c.session.take();
        self.send(
            conn,
            &ServerMsg::Close {
                reason,
                detail: detail.clone(),
            },
        );
        self.transmits.push_back(Transmit::Close { conn, reason });
        if matches!(
            reason,
            CloseReason::ProtocolViolation
                | CloseReason::VersionMismatch
                | CloseReason::AuthFailed
                | CloseReason::Flooding
        ) {
            self.events.push_back(ServerEvent::PeerError {
                conn,
                reason,
                detail,
            });
        }
        if let Some(sid) = session {
            self.end_session(sid, reason);
        }
    }

    fn end_session(&mut self, sid: SessionId, reason: CloseReason) {
        let Some(s) = self.sessions.remove(&sid) else {
            return;
        };
        if self.by_user.get(&s.user) == Some(&sid) {
            self.by_user.remove(&s.user);
        }
        if let Some(conn) = s.conn {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.session = None;
            }
        }
        // Apps this session was moving are released where they are, and saved.
        let moved: Vec<EntityId> = self
            .world
            .entities
            .values()
            .filter(|e| e.kind == EntityKind::App && e.owner == Some(sid))
            .map(|e| e.id)
            .collect();
        for id in moved {
            if let Some(e) = self.world.entities.get_mut(&id) {
                e.owner = None;
                e.props.retain(|(k, _)| k != MOVER_PROP);
                let stored = e.clone();
                let patch = EntityPatch {
                    unset: vec![MOVER_PROP.into()],
                    transform: Some(stored.transform),
                    ..Default::default()
                };
                self.broadcast(&ServerMsg::EntityModified { id, patch }, Some(sid));
                self.effects.push_back(Effect {
                    change: Change::PutEntity(stored),
                    ack: None,
                });
            }
        }
        if let Some(player) = self.world.entities.remove(&s.player) {
            if let Some(u) = self.world.users.get_mut(&s.user) {
                u.last_position = Some(player.transform.position);
                let u = u.clone();
                self.effects.push_back(Effect {
                    change: Change::PutUser(u),
                    ack: None,
                });
            }
            self.broadcast(&ServerMsg::EntityRemoved(s.player), None);
        }
        self.events.push_back(ServerEvent::Left {
            session: sid,
            reason,
        });
    }

    fn handle_hello(&mut self, conn: ConnId, msg: ClientMsg) {
        // Modifications the world already holds reach the joiner in its snapshot, not before.
        self.flush_blueprints();
        let ClientMsg::Hello {
            protocol_version,
            name,
            token,
        } = msg
        else {
            return self.close_conn(
                conn,
                CloseReason::ProtocolViolation,
                format!("expected hello, got {}", msg.name()),
            );
        };
        if protocol_version != PROTOCOL_VERSION {
            return self.close_conn(
                conn,
                CloseReason::VersionMismatch,
                format!(
                    "client speaks protocol version {protocol_version}, this server speaks {PROTOCOL_VERSION}"
                ),
            );
        }
        let name = name.trim().to_string();
        if name.is_empty() || name.len() > NAME_BYTES_MAX || name.chars().any(char::is_control) {
            return self.close_conn(
                conn,
                CloseReason::ProtocolViolation,
                format!("name must be 1 to {NAME_BYTES_MAX} bytes without control characters"),
            );
        }
        if token.as_ref().is_some_and(|t| t.len() > TOKEN_BYTES_MAX) {
            return self.close_conn(conn, CloseReason::AuthFailed, "token too long".into());
        }
        // Player limit: sessions that would be replaced do not count.
        let limit = self.world.settings.player_limit as usize;
        let user = match &token {
            Some(t) => match self.auth.verify(t) {
                Some(u) if self.world.users.contains_key(&u) => Some(u),
                _ => {
                    return self.close_conn(
                        conn,
                        CloseReason::AuthFailed,
                        "token not valid for this world".into(),
                    )
                }
            },
            None => None,
        };
        let replacing = user.and_then(|u| self.by_user.get(&u).copied());
        if limit > 0 && self.sessions.len() - usize::from(replacing.is_some()) >= limit {
            return self.close_conn(
                conn,
                CloseReason::PlayerLimit,
                format!("the world is full ({limit} players)"),
            );
        }
        let user = match user {
            Some(u) => {
                if self.world.users[&u].banned {
                    return self.close_conn(conn, CloseReason::AuthFailed, "banned".into());
                }
                u
            }
            None => {
                if self.world.users.len() >= USERS_MAX {
                    return self.close_conn(
                        conn,
                        CloseReason::PlayerLimit,
                        format!("this world knows {USERS_MAX} users: join with your token"),
                    );
                }
                let u = UserId(self.world.next_user_id);
                self.world.next_user_id += 1;
                let rec = User {
                    id: u,
                    name: name.clone(),
                    rank: Rank::Visitor,
                    muted: false,
                    banned: false,
                    last_position: None,
                };
                self.world.users.insert(u, rec.clone());
                self.effects.push_back(Effect {
                    change: Change::PutUser(rec),
                    ack: None,
                });
                u
            }
        };
        if let Some(old) = replacing {
            if let Some(old_conn) = self.sessions.get(&old).and_then(|s| s.conn) {
                self.close_conn(
                    old_conn,
                    CloseReason::DuplicateUser,
                    "you joined again elsewhere".into(),
                );
            }
            self.end_session(old, CloseReason::DuplicateUser);
        }
        if let Some(u) = self.world.users.get_mut(&user) {
            u.name = name.clone();
        }
        if self.world.entities.len() >= ENTITIES_MAX {
            return self.close_conn(conn, CloseReason::PlayerLimit, "world entity limit".into());
        }

        let sid = SessionId(self.next_session);
        self.next_session += 1;
        let player = EntityId(self.world.next_entity_id);
        self.world.next_entity_id += 1;
        let rank = self.world.effective_rank(user);
        let spawn = self.world.spawn;
        let position = if self.config.spawn_at_last_position {
            self.world.users[&user]
                .last_position
                .unwrap_or(spawn.position)
        } else {
            spawn.position
        };
        let entity = Entity {
            id: player,
            kind: EntityKind::Player,
            owner: Some(sid),
            user: Some(user),
            blueprint: None,
            transform: Transform {
                position,
                rotation: spawn.rotation,
                scale: None,
            },
            props: vec![
                ("name".into(), Bytes::from(name.as_str())),
                ("rank".into(), Bytes(vec![rank as u8])),
            ],
        };
        self.world.entities.insert(player, entity.clone());
        let mut replicator = ClientReplicator::new(self.config.transform.clone(), Some(sid))
            .expect("validated transform config");
        replicator.set_own_entity(Some(player));
        let spawn_state = self.model.spawn(position, yaw_of(spawn.rotation));
        // The player starts where the movement model puts it (on the ground, quantized).
        let spawned = self.model_transform(&spawn_state);
        if let Some(e) = self.world.entities.get_mut(&player) {
            e.transform = spawned;
        }
        let motion = PlayerMotion::new(
            self.model,
            spawn_state,
            self.config.tick_hz,
            self.clock.tick(),
        );
        let validator = MoveValidator::new(
            ValidatorConfig::for_character(&self.config.character),
            self.world.entities[&player].transform,
            self.now,
        );
        self.sessions.insert(
            sid,
            Session {
                id: sid,
                user,
                name: name.clone(),
                conn: Some(conn),
                player,
                joined_at: self.now,
                replicator,
                motion,
                validator,
                up_seq: None,
                tokens: f64::from(self.config.message_burst),
                refilled_at: self.now,
                refused_in_window: 0,
                window_start: self.now,
            },
        );
        self.by_user.insert(user, sid);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(sid);
        }
        let entity = self.world.entities[&player].clone();
        self.broadcast(&ServerMsg::EntityAdded(entity), Some(sid));
        self.send(
            conn,
            &ServerMsg::Welcome {
                protocol_version: PROTOCOL_VERSION,
                session: sid,
                tick_hz: self.config.tick_hz,
                transform: Box::new(self.config.transform.clone()),
                character: self.config.character,
            },
        );
        let snapshot = Snapshot {
            player,
            user,
            rank,
            server_tick: self.clock.tick().0,
            server_time_us: self.now.as_micros(),
            settings: self.world.settings.clone(),
            spawn: self.world.spawn,
            chat: self.world.chat.iter().cloned().collect(),
            blueprints: self.world.blueprints.values().cloned().collect(),
            entities: self.world.entities.values().cloned().collect(),
            auth_token: self.auth.issue(user),
        };
        self.send(conn, &ServerMsg::Snapshot(Box::new(snapshot)));
        self.events.push_back(ServerEvent::Joined {
            session: sid,
            conn,
            user,
            player,
            name,
        });
    }

    fn model_transform(&self, state: &crate::predict::CharacterState) -> Transform {
        use crate::predict::Movement;
        self.model.transform(state)
    }

    fn rank_of(&self, sid: SessionId) -> Rank {
        self.sessions
            .get(&sid)
            .map_or(Rank::Visitor, |s| self.world.effective_rank(s.user))
    }

    fn player_session(&self, player: EntityId) -> Option<&Session> {
        let e = self.world.entities.get(&player)?;
        if e.kind != EntityKind::Player {
            return None;
        }
        self.sessions.get(&e.owner?)
    }

    /// The one authorization point: may session `sid` do `msg`? Rank rules, ownership and
    /// limits. Nothing changes before this says yes.
    fn authorize(&self, sid: SessionId, msg: &ClientMsg) -> Result<(), Refusal> {
        use ClientMsg::*;
        let rank = self.rank_of(sid);
        let builder = rank >= Rank::Builder;
        let need = |ok: bool| if ok { Ok(()) } else { Err(Refusal::Rank) };
        let text_ok = |s: &str, max: usize| s.len() <= max;
        let opt_ok = |s: &Option<String>| s.as_ref().is_none_or(|s| s.len() <= TEXT_BYTES_MAX);
        let props_ok = |p: &[(String, Bytes)]| {
            p.len() <= ENTITY_PROPS_MAX
                && p.iter()
                    .all(|(k, v)| k.len() <= ID_BYTES_MAX && v.0.len() <= EVENT_DATA_BYTES_MAX)
        };
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        let transform_ok = |t: &Transform| {
            finite(&t.position) && finite(&t.rotation) && t.scale.as_ref().is_none_or(|s| finite(s))
        };
        let blueprint_ok = |b: &Blueprint| {
            !b.id.0.is_empty()
                && b.id.0.len() <= ID_BYTES_MAX
                && text_ok(&b.name, TEXT_BYTES_MAX)
                && text_ok(&b.author, TEXT_BYTES_MAX)
                && text_ok(&b.desc, TEXT_BYTES_MAX)
                && opt_ok(&b.model)
                && opt_ok(&b.script)
                && opt_ok(&b.image)
        };
        let outranks = |target: EntityId| -> Result<(), Refusal> {
            let t = self.player_session(target).ok_or(Refusal::NotFound)?;
            if rank > self.world.effective_rank(t.user) {
                Ok(())
            } else {
                Err(Refusal::Rank)
            }
        };
        match msg {
            Hello { .. } => Err(Refusal::Invalid),
            Ping { .. } | Goodbye => Ok(()),
            Command { args, .. } => {
                if args.is_empty()
                    || args.len() > COMMAND_ARGS_MAX
                    || args.iter().any(|a| a.len() > COMMAND_ARG_BYTES_MAX)
                {
                    Err(Refusal::Invalid)
                } else {
                    Ok(())
                }
            }
            Chat { body, .. } => {
                if body.trim().is_empty() || body.len() > CHAT_BYTES_MAX {
                    return Err(Refusal::Invalid);
                }
                let user = self.sessions.get(&sid).map(|s| s.user);
                if user
                    .and_then(|u| self.world.users.get(&u))
                    .is_some_and(|u| u.muted)
                {
                    return Err(Refusal::Muted);
                }
                Ok(())
            }
            BlueprintAdd { blueprint, .. } => {
                need(builder)?;
                if !blueprint_ok(blueprint) || blueprint.props.0.len() > FRAME_BYTES_MAX / 2 {
                    return Err(Refusal::Invalid);
                }
                if self.world.blueprints.contains_key(&blueprint.id) {
                    return Err(Refusal::Exists);
                }
                if self.world.blueprints.len() >= BLUEPRINTS_MAX {
                    return Err(Refusal::WorldFull);
                }
                Ok(())
            }
            BlueprintModify { id, patch, .. } => {
                need(builder)?;
                let current = self.world.blueprints.get(id).ok_or(Refusal::NotFound)?;
                let mut b = current.clone();
                patch.apply(&mut b);
                if !blueprint_ok(&b) {
                    return Err(Refusal::Invalid);
                }
                Ok(())
            }
            EntityAdd {
                blueprint,
                transform,
                props,
                ..
            } => {
                need(builder)?;
                if !self.world.blueprints.contains_key(blueprint) {
                    return Err(Refusal::NotFound);
                }
                if !transform_ok(transform) || !props_ok(props) {
                    return Err(Refusal::Invalid);
                }
                if self.world.entities.len() >= ENTITIES_MAX {
                    return Err(Refusal::WorldFull);
                }
                Ok(())
            }
            EntityModify { id, patch, .. } => {
                let e = self.world.entities.get(id).ok_or(Refusal::NotFound)?;
                if !builder && e.owner != Some(sid) {
                    return Err(Refusal::NotOwner);
                }
                let added = patch
                    .set
                    .iter()
                    .filter(|(k, _)| !e.props.iter().any(|(pk, _)| pk == k))
                    .count();
                if !props_ok(&patch.set)
                    || patch.unset.len() > ENTITY_PROPS_MAX
                    || patch.transform.as_ref().is_some_and(|t| !transform_ok(t))
                    || e.props.len() + added > ENTITY_PROPS_MAX
                {
                    return Err(Refusal::Invalid);
                }
                // A player's name and rank are the server's to set (`/name`, `ModifyRank`).
                let reserved = |k: &String| PLAYER_RESERVED_PROPS.contains(&k.as_str());
                if e.kind == EntityKind::Player
                    && (patch.set.iter().any(|(k, _)| reserved(k))
                        || patch.unset.iter().any(reserved))
                {
                    return Err(Refusal::Rank);
                }
                Ok(())
            }
            EntityRemove { id, .. } => {
                need(builder)?;
                let e = self.world.entities.get(id).ok_or(Refusal::NotFound)?;
                if e.kind == EntityKind::Player {
                    return Err(Refusal::Invalid);
                }
                Ok(())
            }
            EntityEvent {
                entity,
                name,
                data,
                to,
                ..
            } => {
                if !self.world.entities.contains_key(entity) {
                    return Err(Refusal::NotFound);
                }
                if name.len() > EVENT_NAME_BYTES_MAX || data.0.len() > EVENT_DATA_BYTES_MAX {
                    return Err(Refusal::Invalid);
                }
                if let Some(to) = to {
                    self.player_session(*to).ok_or(Refusal::NotFound)?;
                }
                Ok(())
            }
            PlayerTeleport {
                target,
                position,
                rotation_y,
            } => {
                self.player_session(*target).ok_or(Refusal::NotFound)?;
                let own = self.sessions.get(&sid).map(|s| s.player) == Some(*target);
                need(own || builder)?;
                if !finite(position) || !rotation_y.is_finite() {
                    return Err(Refusal::Invalid);
                }
                Ok(())
            }
            PlayerPush { target, force } => {
                self.player_session(*target).ok_or(Refusal::NotFound)?;
                let own = self.sessions.get(&sid).map(|s| s.player) == Some(*target);
                need(own || builder)?;
                if !finite(force) {
                    return Err(Refusal::Invalid);
                }
                Ok(())
            }
            SettingsModify { setting, .. } => {
                need(builder)?;
                let ok = match setting {
                    Setting::Title(s) | Setting::Desc(s) => s.len() <= TEXT_BYTES_MAX,
                    Setting::Image(s) | Setting::Avatar(s) => opt_ok(s),
                    // Raising the default rank above builder would make everyone admin.
                    Setting::DefaultRank(r) => *r <= Rank::Builder || rank == Rank::Admin,
                    _ => true,
                };
                if ok {
                    Ok(())
                } else {
                    Err(Refusal::Invalid)
                }
            }
            SpawnModify { .. } => need(builder),
            ModifyRank { user, .. } => {
                need(rank >= Rank::Admin)?;
                if !self.world.users.contains_key(user) {
                    return Err(Refusal::NotFound);
                }
                Ok(())
            }
            Kick { target, .. } | Mute { target, .. } => outranks(*target),
        }
    }

    fn refuse(&mut self, sid: SessionId, conn: ConnId, msg: &ClientMsg, reason: Refusal) {
        if let Some(req) = msg.req() {
            self.send(conn, &ServerMsg::Refused { req, reason });
        }
        self.events.push_back(ServerEvent::Refused {
            session: sid,
            msg: msg.name(),
            reason,
        });
    }

    /// Records a durable change and acknowledges its sender now or once it is durable.
    fn commit(&mut self, sid: SessionId, conn: ConnId, req: Option<ReqId>, change: Change) {
        let ack = req.map(|req| AckToken { session: sid, req });
        if self.config.durable_acks {
            self.effects.push_back(Effect { change, ack });
        } else {
            self.effects.push_back(Effect { change, ack: None });
            if let Some(req) = req {
                self.send(conn, &ServerMsg::Ack { req });
            }
        }
    }

    fn ack_now(&mut self, conn: ConnId, req: ReqId) {
        self.send(conn, &ServerMsg::Ack { req });
    }

    /// Takes one token from the session's bucket and says what to do with the message.
    fn rate_limit(&mut self, sid: SessionId) -> Limit {
        let (rate, burst, now) = (
            f64::from(self.config.messages_per_s),
            f64::from(self.config.message_burst),
            self.now,
        );
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Limit::Pass;
        };
        let dt = now.saturating_since(s.refilled_at).as_secs_f64();
        s.tokens = (s.tokens + dt * rate).min(burst);
        s.refilled_at = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return Limit::Pass;
        }
        if now.saturating_since(s.window_start) >= FLOOD_WINDOW {
            s.window_start = now;
            s.refused_in_window = 0;
        }
        s.refused_in_window += 1;
        if f64::from(s.refused_in_window) > burst {
            Limit::Close
        } else {
            Limit::Refuse
        }
    }

    fn handle_session_msg(&mut self, sid: SessionId, conn: ConnId, msg: ClientMsg) {
        if !matches!(msg, ClientMsg::Goodbye) {
            match self.rate_limit(sid) {
                Limit::Pass => {}
                Limit::Close => {
                    return self.close_conn(
                        conn,
                        CloseReason::Flooding,
                        format!(
                            "more than {} messages past the rate limit",
                            self.config.message_burst
                        ),
                    );
                }
                Limit::Refuse => return self.refuse(sid, conn, &msg, Refusal::RateLimited),
            }
        }
        if let Err(reason) = self.authorize(sid, &msg) {
            if matches!(msg, ClientMsg::Hello { .. }) {
                return self.close_conn(
                    conn,
                    CloseReason::ProtocolViolation,
                    "hello sent twice".into(),
                );
            }
            if msg.req().is_none() && reason == Refusal::Invalid {
                return self.close_conn(
                    conn,
                    CloseReason::ProtocolViolation,
                    format!("{} breaks a limit", msg.name()),
                );
            }
            return self.refuse(sid, conn, &msg, reason);
        }
        if self.config.durable_acks
            && !self.storage_ok
            && msg.req().is_some()
            && !matches!(msg, ClientMsg::Command { .. } | ClientMsg::Kick { .. })
        {
            return self.refuse(sid, conn, &msg, Refusal::Storage);
        }
        let (user, player, name) = match self.sessions.get(&sid) {
            Some(s) => (s.user, s.player, s.name.clone()),
            None => return,
        };
        match msg {
            ClientMsg::Hello { .. } => {}
            ClientMsg::Ping { client_time_us } => {
                let pong = ServerMsg::Pong {
                    client_time_us,
                    server_time_us: self.now.as_micros(),
                    server_tick: self.clock.tick().0,
                };
                self.send(conn, &pong);
            }
            ClientMsg::Goodbye => {
                self.close_conn(conn, CloseReason::ClientLeft, "goodbye".into());
            }
            ClientMsg::Chat { req, body } => {
                let m = ChatMessage {
                    id: self.world.next_chat_id,
                    from_user: Some(user),
                    from_name: name,
                    from_entity: Some(player),
                    body,
                    created_at_ms: self.config.unix_ms_at_zero + self.now.as_micros() / 1000,
                };
                self.world.next_chat_id += 1;
                self.push_chat(m.clone());
                self.broadcast(&ServerMsg::ChatAdded(m.clone()), None);
                self.commit(sid, conn, Some(req), Change::AppendChat(m));
            }
            ClientMsg::Command { req, args } => self.handle_command(sid, conn, req, args),
            ClientMsg::BlueprintAdd { req, blueprint } => {
                self.world
                    .blueprints
                    .insert(blueprint.id.clone(), blueprint.clone());
                self.broadcast(&ServerMsg::BlueprintAdded(blueprint.clone()), None);
                self.commit(sid, conn, Some(req), Change::PutBlueprint(blueprint));
            }
            ClientMsg::BlueprintModify {
                req,
                id,
                version,
                patch,
            } => {
                let Some(current) = self.world.blueprints.get_mut(&id) else {
                    return;
                };
                if version <= current.version {
                    // Optimistic concurrency: the sender loses and gets the current blueprint.
                    let full = ServerMsg::BlueprintModified {
                        id,
                        version: current.version,
                        patch: BlueprintPatch::full(current),
                    };
                    self.send(conn, &full);
                    return self.refuse(
                        sid,
                        conn,
                        &ClientMsg::BlueprintModify {
                            req,
                            id: BlueprintId(String::new()),
                            version,
                            patch: BlueprintPatch::default(),
                        },
                        Refusal::Conflict,
                    );
                }
                patch.apply(current);
                current.version = version;
                let stored = current.clone();
                match self.pending_blueprints.get_mut(&id) {
                    Some((v, pending)) => {
                        *v = version;
                        pending.merge(patch);
                    }
                    None => {
                        self.pending_blueprints.insert(id, (version, patch));
                    }
                }
                self.commit(sid, conn, Some(req), Change::PutBlueprint(stored));
            }
            ClientMsg::EntityAdd {
                req,
                blueprint,
                transform,
                props,
            } => {
                let id = EntityId(self.world.next_entity_id);
                self.world.next_entity_id += 1;
                let e = Entity {
                    id,
                    kind: EntityKind::App,
                    owner: None,
                    user: None,
                    blueprint: Some(blueprint),
                    transform,
                    props,
                };
                self.world.entities.insert(id, e.clone());
                // Everyone, the sender included: it learns the id the server allocated.
                self.broadcast(&ServerMsg::EntityAdded(e.clone()), None);
                self.commit(sid, conn, Some(req), Change::PutEntity(e));
            }
            ClientMsg::EntityModify { req, id, mut patch } => {
                let Some(e) = self.world.entities.get_mut(&id) else {
                    return;
                };
                // The reference engine's `mover`: setting it on an app makes the sender its
                // owner (its transform then streams from the sender's datagrams); unsetting it
                // releases the app. The server stamps the value: the mover's session id.
                if e.kind == EntityKind::App {
                    if let Some(slot) = patch.set.iter_mut().find(|(k, _)| k == MOVER_PROP) {
                        slot.1 = Bytes(sid.0.to_le_bytes().to_vec());
                        e.owner = Some(sid);
                    } else if patch.unset.iter().any(|k| k == MOVER_PROP) {
                        e.owner = None;
                    }
                }
                for k in &patch.unset {
                    e.props.retain(|(pk, _)| pk != k);
                }
                for (k, v) in &patch.set {
                    match e.props.iter_mut().find(|(pk, _)| pk == k) {
                        Some(slot) => slot.1 = v.clone(),
                        None => e.props.push((k.clone(), v.clone())),
                    }
                }
                if let Some(t) = patch.transform {
                    e.transform = t;
                }
                let stored = e.clone();
                self.broadcast(&ServerMsg::EntityModified { id, patch }, None);
                if stored.kind == EntityKind::App {
                    self.commit(sid, conn, Some(req), Change::PutEntity(stored));
                } else {
                    self.ack_now(conn, req);
                }
            }
            ClientMsg::EntityRemove { req, id } => {
                self.world.entities.remove(&id);
                self.moved_apps.remove(&id);
                self.broadcast(&ServerMsg::EntityRemoved(id), None);
                self.commit(sid, conn, Some(req), Change::DeleteEntity(id));
            }
            ClientMsg::EntityEvent {
                entity,
                blueprint_version,
                name,
                data,
                to,
            } => {
                let ev = ServerMsg::EntityEvent {
                    entity,
                    blueprint_version,
                    name,
                    data,
                    from: Some(player),
                };
                match to {
                    Some(to) => {
                        if let Some(c) = self.player_session(to).and_then(|s| s.conn) {
                            self.send(c, &ev);
                        }
                    }
                    None => self.broadcast(&ev, Some(sid)),
                }
            }
            ClientMsg::PlayerTeleport {
                target,
                position,
                rotation_y,
            } => {
                let yaw = yaw_from_radians(rotation_y);
                if let Some(owner) = self.player_session(target).map(|s| s.id) {
                    let state = self.model.spawn(position, yaw);
                    let t = self.model_transform(&state);
                    let now = self.now;
                    if let Some(s) = self.sessions.get_mut(&owner) {
                        s.motion.teleport(state);
                        s.validator.teleport(t, now);
                    }
                    if let Some(e) = self.world.entities.get_mut(&target) {
                        e.transform = t;
                    }
                }
                if let Some(c) = self.player_session(target).and_then(|s| s.conn) {
                    self.send(
                        c,
                        &ServerMsg::PlayerTeleport {
                            position,
                            rotation_y,
                        },
                    );
                }
            }
            ClientMsg::PlayerPush { target, force } => {
                if let Some(c) = self.player_session(target).and_then(|s| s.conn) {
                    self.send(c, &ServerMsg::PlayerPush { force });
                }
            }
            ClientMsg::SettingsModify { req, setting } => {
                setting.apply(&mut self.world.settings);
                self.broadcast(&ServerMsg::SettingsModified(setting), None);
                let s = self.world.settings.clone();
                self.commit(sid, conn, Some(req), Change::PutSettings(s));
            }
            ClientMsg::SpawnModify { req, set } => {
                self.set_spawn(sid, conn, req, set, player);
            }
            ClientMsg::ModifyRank { req, user, rank } => {
                let Some(u) = self.world.users.get_mut(&user) else {
                    return;
                };
                u.rank = rank;
                let rec = u.clone();
                let effective = self.world.effective_rank(user);
                self.broadcast(
                    &ServerMsg::RankModified {
                        user,
                        rank: effective,
                    },
                    None,
                );
                self.commit(sid, conn, Some(req), Change::PutUser(rec));
            }
            ClientMsg::Kick { req, target } => {
                if let Some(c) = self.player_session(target).and_then(|s| s.conn) {
                    self.close_conn(c, CloseReason::Moderation, format!("kicked by {name}"));
                }
                self.ack_now(conn, req);
            }
            ClientMsg::Mute { req, target, muted } => {
                let Some(u) = self.player_session(target).map(|s| s.user) else {
                    return;
                };
                let rec = match self.world.users.get_mut(&u) {
                    Some(rec) => {
                        rec.muted = muted;
                        rec.clone()
                    }
                    None => return,
                };
                self.broadcast(
                    &ServerMsg::Muted {
                        player: target,
                        muted,
                    },
                    None,
                );
                self.commit(sid, conn, Some(req), Change::PutUser(rec));
            }
        }
    }

    fn set_spawn(&mut self, sid: SessionId, conn: ConnId, req: ReqId, set: bool, player: EntityId) {
        let spawn = if set {
            let t = self
                .world
                .entities
                .get(&player)
                .map(|e| e.transform)
                .unwrap_or_default();
            Spawn {
                position: t.position,
                rotation: t.rotation,
            }
        } else {
            Spawn::default()
        };
        self.world.spawn = spawn;
        self.broadcast(&ServerMsg::SpawnModified(spawn), None);
        self.commit(sid, conn, Some(req), Change::PutSpawn(spawn));
    }

    fn push_chat(&mut self, m: ChatMessage) {
        self.world.chat.push_back(m);
        while self.world.chat.len() > CHAT_HISTORY_LEN {
            self.world.chat.pop_front();
        }
    }

    fn handle_command(&mut self, sid: SessionId, conn: ConnId, req: ReqId, args: Vec<String>) {
        let rank = self.rank_of(sid);
        let player = self.sessions.get(&sid).map(|s| s.player);
        let refuse = |core: &mut Self, reason| {
            core.send(conn, &ServerMsg::Refused { req, reason });
        };
        match args
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["chat", "clear"] => {
                if rank < Rank::Builder {
                    return refuse(self, Refusal::Rank);
                }
                self.world.chat.clear();
                self.broadcast(&ServerMsg::ChatCleared, None);
                self.commit(sid, conn, Some(req), Change::ClearChat);
            }
            ["spawn", op @ ("set" | "clear")] => {
                if rank < Rank::Builder {
                    return refuse(self, Refusal::Rank);
                }
                if let Some(p) = player {
                    self.set_spawn(sid, conn, req, *op == "set", p);
                }
            }
            ["name", new] => {
                let new = new.trim();
                if new.is_empty() || new.len() > NAME_BYTES_MAX || new.chars().any(char::is_control)
                {
                    return refuse(self, Refusal::Invalid);
                }
                let new = new.to_string();
                let Some(s) = self.sessions.get_mut(&sid) else {
                    return;
                };
                s.name = new.clone();
                let (user, player) = (s.user, s.player);
                let patch = EntityPatch {
                    set: vec![("name".into(), Bytes::from(new.as_str()))],
                    ..Default::default()
                };
                if let Some(e) = self.world.entities.get_mut(&player) {
                    e.props.retain(|(k, _)| k != "name");
                    e.props.push(("name".into(), Bytes::from(new.as_str())));
                }
                self.broadcast(&ServerMsg::EntityModified { id: player, patch }, None);
                let rec = self.world.users.get_mut(&user).map(|u| {
                    u.name = new;
                    u.clone()
                });
                match rec {
                    Some(rec) => self.commit(sid, conn, Some(req), Change::PutUser(rec)),
                    None => self.ack_now(conn, req),
                }
            }
            ["admin", code] => {
                // Constant-time enough: the code is compared in full either way.
                let ok = self.config.admin_code.as_deref().is_some_and(|c| {
                    c.len() == code.len()
                        && c.bytes()
                            .zip(code.bytes())
                            .fold(0u8, |a, (x, y)| a | (x ^ y))
                            == 0
                });
                if !ok {
                    return refuse(self, Refusal::Rank);
                }
                let Some(user) = self.sessions.get(&sid).map(|s| s.user) else {
                    return;
                };
                let Some(u) = self.world.users.get_mut(&user) else {
                    return;
                };
                u.rank = Rank::Admin;
                let rec = u.clone();
                self.broadcast(
                    &ServerMsg::RankModified {
                        user,
                        rank: Rank::Admin,
                    },
                    None,
                );
                self.commit(sid, conn, Some(req), Change::PutUser(rec));
            }
            _ => refuse(self, Refusal::UnknownCommand),
        }
    }
}

/// The yaw (u16 turns, as the movement model stores it) of a rotation about +Y.
fn yaw_of(q: Quat) -> u16 {
    let [x, y, z, w] = q;
    let siny = 2.0 * (w * y + z * x);
    let cosy = 1.0 - 2.0 * (x * x + y * y);
    yaw_from_radians(siny.atan2(cosy))
}

/// Radians about +Y to the movement model's u16 yaw (65536 steps per turn).
fn yaw_from_radians(r: f32) -> u16 {
    if !r.is_finite() {
        return 0;
    }
    let turns = r / std::f32::consts::TAU;
    ((turns - turns.floor()) * 65536.0) as u32 as u16
}
