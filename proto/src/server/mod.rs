//! The authoritative world core: [`ServerCore`] owns all world state and every decision about
//! it. It never does I/O: a driver feeds it connections, frames and datagrams with
//! `handle_*(…, now)` and carries out what `poll_transmit`, `poll_event` and `poll_effect`
//! return. It is transport-agnostic: a QUIC connection, a WebSocket or a simulated link are all
//! a [`ConnId`] to it.
//!
//! ## Rooms
//! One module per concern, each stating its responsibility at its top:
//! - [`config`]: configuration, connection ids, transports;
//! - [`auth`]: token verification ([`Authenticator`]);
//! - `admission`: `Hello`, users, the join, `Welcome` and `Snapshot`;
//! - `snapshot`: a big snapshot in pieces, paced to the connection's send queue, and what
//!   waits behind it;
//! - `session`: connections and sessions and how they end (close, disconnect, timeouts);
//! - `resume`: sessions that outlive a lost connection (grace period, `Resume`, the lost-player
//!   mark) and exactly-once changes (the outcome of every change id, replayed to a resend);
//! - `policy`: the one gate every message of a session passes (rate limit, authorization and
//!   validation, storage health);
//! - [`rate`]: the per-session message budget;
//! - `apply`: what an admitted message does to the world, and whom it is relayed to;
//! - `commands`: slash commands;
//! - [`moderation`]: what a verified token admits, the tokens handed out, moderation commands;
//! - [`admin_code`]: `/admin CODE` and the lockout of those guessing it;
//! - `datagram`: client datagrams (acks, inputs, owned transforms);
//! - [`inbox`]: datagrams waiting for the core, bounded in all and per connection;
//! - `tick`: the tick (movement, the world snapshot, every client's transform datagrams);
//! - `host`: the hosting game's own changes (spawn, modify, remove, transforms every tick,
//!   events, priority weights), through the same broadcasts and effects as `apply`;
//! - `storage`: what the store reports back, storage health, ids under durable reservation;
//! - `output`: the outputs ([`Transmit`], [`ServerEvent`]) and the helpers that queue them.
//!
//! ## Methods, grouped as quinn-proto groups them
//! - getters: [`ServerCore::world`], [`ServerCore::sessions`], [`ServerCore::tick`];
//! - inputs: [`handle_connect`](ServerCore::handle_connect),
//!   [`handle_frame`](ServerCore::handle_frame), [`handle_datagram`](ServerCore::handle_datagram)
//!   (or, through the [`DatagramInbox`], [`handle_inbox`](ServerCore::handle_inbox)),
//!   [`handle_disconnect`](ServerCore::handle_disconnect),
//!   [`handle_timeout`](ServerCore::handle_timeout) (or, to send the first clients' datagrams
//!   while later clients' are written, [`handle_timeout_step`](ServerCore::handle_timeout_step)),
//!   [`handle_store`](ServerCore::handle_store);
//! - outputs, drained after every input until `None`: [`poll_transmit`](ServerCore::poll_transmit),
//!   [`poll_event`](ServerCore::poll_event), [`poll_effect`](ServerCore::poll_effect), then
//!   [`poll_timeout`](ServerCore::poll_timeout) for when to call `handle_timeout` next.
//!
//! Time never runs backwards inside the core: an input stamped earlier than one already
//! handled is handled at the later time (a datagram taken from the inbox after a frame that
//! arrived after it, say), so drivers need no clock floor of their own.
//!
//! ## Persistence
//! Every change the store needs leaves as an [`Effect`] ([`crate::persist`]): accepted
//! changes, users, the state of apps moved by datagrams, id reservations. With
//! [`ServerConfig::durable_acks`] a change's sender is acknowledged only when the store reports
//! it durable ([`ServerCore::handle_store`]).

pub mod addr;
pub mod auth;
pub mod config;
pub mod inbox;
pub mod limits;
pub mod quota;
pub mod rate;

pub mod admin_code;
pub mod moderation;

mod admission;
mod apply;
mod commands;
mod datagram;
mod figures;
mod guard;
mod host;
mod output;
mod policy;
mod resume;
mod session;
mod snapshot;
mod storage;
mod tick;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

/// The world a core hosts ([`ServerCore::new`] takes it); defined with the rest of the
/// persistence vocabulary in [`crate::persist`].
pub use crate::persist::World;
pub use auth::{
    Authenticator, InsecureTokens, TokenClaims, TokenError, TokenGrant, TokenIssuer,
    BACKEND_USER_ID_MAX, BACKEND_USER_ID_MIN, TOKEN_LEEWAY_S,
};
pub use config::{ConnId, ServerConfig, TransportKind, IDLE_TIMEOUT_DEFAULT, RESUME_GRACE_DEFAULT};
pub use figures::ConnFigures;
pub use guard::normalized;
pub use host::{priority, HostError};
pub use inbox::{
    DatagramInbox, InboxBatch, InboxDatagram, InboxDrop, InboxQuota, DATAGRAM_INBOX_MAX,
    DATAGRAM_INBOX_PER_CONN_MAX,
};
pub use limits::{LimitsConfig, RateSpec};
pub use output::{ServerEvent, Transmit};
pub use rate::FLOOD_WINDOW;
pub use resume::{ENDED_SESSIONS_MAX, LOST_PROP, REQ_OUTCOMES_MAX};
pub use session::{Session, NO_PLAYER};
pub use snapshot::{SNAPSHOT_HELD_BYTES_MAX, SNAPSHOT_QUEUE_BUDGET_BYTES};
pub use tick::{TickStats, TimeoutProgress};

use crate::persist::{Effect, NextIds};
use crate::predict::KinematicCharacter;
use crate::time::{Tick, TickClock, Time};
use crate::transform::{EntitySample, InterestGrid, Quantizer, TransformConfig};
use crate::types::*;
use crate::wire::codec::{self, DecodeError};
use crate::wire::limits::DATAGRAM_BYTES_MAX;
use crate::wire::msg::{Channel, ClientMsg, CloseReason};

use datagram::{yaw_from_radians, yaw_of};
use session::Conn;
use tick::TickJob;

/// The app prop naming the session moving it (see `EntityModify`).
pub const MOVER_PROP: &str = "mover";

/// Player entity fields only the server sets: clients cannot spoof another name or rank, nor
/// mark a player's connection lost.
pub const PLAYER_RESERVED_PROPS: [&str; 3] = ["name", "rank", LOST_PROP];

/// Largest datagram assumed for a connection until the driver reports its path's
/// (`handle_max_datagram_size`): 1,200 bytes, the QUIC minimum every path carries.
pub const DATAGRAM_SIZE_INITIAL: usize = 1200;

/// The authoritative world core. See the module documentation.
pub struct ServerCore {
    config: ServerConfig,
    auth: Box<dyn Authenticator>,
    world: World,
    clock: TickClock,
    /// The latest time an input carried: the core's clock floor.
    now: Time,
    conns: BTreeMap<ConnId, Conn>,
    sessions: BTreeMap<SessionId, Session>,
    by_user: BTreeMap<UserId, SessionId>,
    next_session: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ServerEvent>,
    effects: VecDeque<Effect>,
    /// Whether the store works (see [`ServerCore::handle_store`]).
    storage_ok: bool,
    /// Ids below these are reserved ([`crate::persist::Change::ReserveIds`] emitted).
    reserved: NextIds,
    /// Apps whose transform datagrams moved them since the last tick's end: their state is
    /// emitted then. At most one id per app in the world: removing an app removes its id.
    moved_apps: BTreeSet<EntityId>,
    quantizer: Quantizer,
    model: KinematicCharacter,
    /// What the host set for entities' priority (see `host`); entries of removed entities are
    /// dropped at the next tick.
    host_weights: BTreeMap<EntityId, host::HostWeights>,
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
    /// The counters of connections closed so far (see `figures`).
    closed_figures: ConnFigures,
    /// The tick whose client datagrams are being written, between two
    /// [`ServerCore::handle_timeout_step`] calls.
    tick_job: Option<TickJob>,
    /// What the world's blueprints and apps weigh (quotas, `quota`).
    usage: quota::Usage,
    /// Tokenless joins per source address (at most [`limits::JOIN_ADDRS_MAX`]).
    join_rates: BTreeMap<IpAddr, rate::MessageRate>,
    /// Wrong admin codes per address and in all, and the lockouts they earned.
    admin_guard: admin_code::AdminCodeGuard,
    /// Recently ended sessions' change outcomes, for a late resume.
    ended: resume::EndedSessions,
    /// Where resume tokens come from.
    resume_tokens: resume::ResumeTokens,
    /// Connections that held too much behind their snapshot, to be closed (see `snapshot`).
    snapshot_overflows: Vec<ConnId>,
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
    /// Its first effect reserves the ids it will hand out (a persisting driver makes it durable
    /// before it admits anyone: see [`crate::persist`]).
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
        // Changes acknowledged before a restart: remembered as ended sessions, so a client that
        // resumes one of them finds its acknowledged changes (see `resume`). New sessions are
        // numbered past them so that no new session is taken for an old one.
        let acked = std::mem::take(&mut world.acked);
        let next_session = acked.iter().map(|a| a.session.0).max().unwrap_or(0) + 1;
        let ended = resume::EndedSessions::from_acked(&acked);
        let reserved = world.next_ids();
        let usage = quota::Usage::of_world(&world);
        let config_seed = config.resume_seed;
        let mut core = ServerCore {
            clock: TickClock::new(config.tick_hz, now),
            config,
            auth,
            world,
            now,
            conns: BTreeMap::new(),
            sessions: BTreeMap::new(),
            by_user: BTreeMap::new(),
            next_session,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            effects: VecDeque::new(),
            storage_ok: true,
            reserved,
            moved_apps: BTreeSet::new(),
            quantizer,
            model,
            host_weights: BTreeMap::new(),
            samples: Vec::new(),
            pending_blueprints: BTreeMap::new(),
            grid: InterestGrid::new(),
            nearby: Vec::new(),
            datagrams: Vec::new(),
            tick_updates: Vec::new(),
            stats: TickStats::default(),
            closed_figures: ConnFigures::default(),
            tick_job: None,
            usage,
            join_rates: BTreeMap::new(),
            admin_guard: admin_code::AdminCodeGuard::default(),
            ended,
            resume_tokens: resume::ResumeTokens::new(config_seed),
            snapshot_overflows: Vec::new(),
        };
        core.reserve_ids();
        core
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

    /// The core's clock: the latest time an input carried.
    pub fn now(&self) -> Time {
        self.now
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

    /// What the world's blueprints and apps weigh, in all and per user (quotas).
    pub fn usage(&self) -> &quota::Usage {
        &self.usage
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

    // ---- inputs ----

    /// Moves the core's clock to `now`, never backwards, and returns the core's time.
    fn advance(&mut self, now: Time) -> Time {
        self.now = self.now.max(now);
        self.now
    }

    /// A transport connection opened. It must send `Hello` first.
    pub fn handle_connect(&mut self, conn: ConnId, transport: TransportKind, now: Time) {
        self.handle_connect_from(conn, transport, None, now);
    }

    /// A transport connection opened from source address `addr` (`None`: unknown, as on the
    /// simulated network). Limits kept per address (the admin code's lockout) count it there.
    pub fn handle_connect_from(
        &mut self,
        conn: ConnId,
        transport: TransportKind,
        addr: Option<std::net::IpAddr>,
        now: Time,
    ) {
        let now = self.advance(now);
        self.conns.insert(
            conn,
            Conn {
                transport,
                session: None,
                closed: false,
                connected_at: now,
                last_heard: now,
                heard_since_join: false,
                max_datagram_size: DATAGRAM_SIZE_INITIAL,
                addr,
                figures: ConnFigures::default(),
                queued: None,
                snapshot: None,
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

    /// What the connection's transport reports about its path (quinn's path stats: RTT,
    /// congestion window, congestion events), for its client's transform budget to follow
    /// (see [`crate::transform::budget`]). Call before every tick where the transport has them.
    pub fn handle_path_signals(&mut self, conn: ConnId, signals: crate::transform::PathSignals) {
        let Some(sid) = self.conns.get(&conn).and_then(|c| c.session) else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.replicator.handle_path_signals(signals);
        }
    }

    /// A complete frame body (without its length prefix) arrived on `channel`.
    pub fn handle_frame(&mut self, conn: ConnId, channel: Channel, body: &[u8], now: Time) {
        let now = self.advance(now);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closed {
            return;
        }
        c.last_heard = now;
        c.figures.frames_up += 1;
        // The body and its length prefix, as it came off the stream.
        c.figures.bytes_up += (body.len() + codec::FRAME_HEADER_BYTES) as u64;
        c.heard_since_join |= c.session.is_some();
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
        match (session, msg) {
            (
                None,
                ClientMsg::Resume {
                    protocol_version,
                    name,
                    token,
                    session,
                    resume_token,
                },
            ) => self.handle_resume(
                conn,
                resume::ResumeRequest {
                    protocol_version,
                    name,
                    token,
                    session,
                    resume_token,
                },
            ),
            (None, msg) => self.handle_hello(conn, msg),
            (Some(sid), msg) => {
                if self.admit_bytes(sid, conn, &msg, body.len()) {
                    self.handle_session_msg(sid, conn, msg)
                }
            }
        }
    }

    /// A stream-level decoding error (oversize frame, truncated stream) on `conn`.
    pub fn handle_stream_error(&mut self, conn: ConnId, error: &DecodeError, now: Time) {
        self.advance(now);
        self.protocol_error(conn, error);
    }

    /// The transport connection closed (by the peer, a timeout or the driver).
    pub fn handle_disconnect(&mut self, conn: ConnId, now: Time) {
        self.advance(now);
        self.retire_figures(conn);
        if let Some(c) = self.conns.remove(&conn) {
            if let Some(sid) = c.session {
                // A transport that closed without a `Close` from either side is a lost
                // connection: the session waits for a resume.
                self.lose_connection(sid, CloseReason::ClientLeft);
            }
        }
    }

    /// Graceful shutdown: emits the moved apps' state and closes every session with
    /// `ServerShutdown` (which saves the players' last positions).
    pub fn shutdown(&mut self) {
        self.flush_blueprints();
        self.persist_moved_apps();
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

    fn protocol_error(&mut self, conn: ConnId, e: &DecodeError) {
        self.close_conn(conn, CloseReason::ProtocolViolation, e.to_string());
    }
}
