//! One participant's core: the handshake, a mirror of the world, and the changes it sends.
//!
//! Driven like [`crate::server::ServerCore`]: `handle_frame`/`handle_datagram`/
//! `handle_timeout` in, `poll_transmit`/`poll_event` out. The mirror holds what the server
//! said; the client never applies its own changes locally before the server relays or
//! acknowledges them, so the mirror is always the server's order of events.
//!
//! Entity events that name a blueprint version newer than the mirror's are held (at most
//! [`HELD_EVENTS_MAX`]) until that version arrives, as the reference engine does.
//!
//! Why one module of about 1,100 lines: it is one concern, a client session's state machine,
//! whose every part (the handshake, the handling of each server message, the commands a game
//! sends, the bounded event queue) reads and writes the same private state (the mirror, the
//! transform stream, the held events). The parts that stand alone already live elsewhere: the
//! transform codec in [`crate::transform`], prediction and interpolation in [`crate::predict`],
//! the wire in [`crate::wire`].

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::predict::interp::InterpolationStats;
use crate::predict::wire::decode_own_state;
use crate::predict::{CharacterInput, CorrectionStats, PredictedClient};
use crate::time::{Tick, Time};
use crate::transform::{
    encode_client_datagram_clocked, Freshness, QTransform, Quantizer, ReceivedTick,
    ReplicaReceiver, Seq, KIND_SERVER_STATE, OWNED_PER_DATAGRAM_MAX,
};
use crate::types::*;
use crate::wire::codec::{self, DecodeError};
use crate::wire::limits::*;
use crate::wire::msg::*;

/// How often the client pings for RTT and liveness without the datagram stream.
pub const PING_INTERVAL: Duration = Duration::from_millis(1000);

/// With clock echoes in the datagrams (PROTOCOL.md 12.4), a stream `Ping` goes only after this
/// long without an upstream datagram (and then at most this often): a player standing still in
/// a world at rest sends nothing else, and the server closes a connection it has not heard for
/// its idle timeout (2.5 s by default), so 1 s leaves room for one lost ping. The pong also
/// feeds this client's own silence timeout when the server has nothing to send.
pub const PING_FALLBACK_SILENCE: Duration = Duration::from_millis(1000);

/// Changes (messages with a change id) a client holds until the server answers them: 1,024.
/// They are resent after a lost connection and answered once (the server remembers
/// [`crate::server::REQ_OUTCOMES_MAX`] per session, more than this). Past the bound a new change
/// is refused on the spot with [`Refusal::Busy`] and never sent.
pub const PENDING_REQUESTS_MAX: usize = 1024;

/// Default [`ReconnectConfig::silence_timeout`]: 2.5 s, the server's idle timeout. The client
/// hears the server at least once a second (a pong to its fallback ping, or the datagrams that
/// carry its clock echoes), so 2.5 s of silence is a dead connection or path, not a slow one.
pub const SILENCE_TIMEOUT_DEFAULT: Duration = Duration::from_millis(2500);

/// Default [`ReconnectConfig::delay_base`]: 250 ms, the first retry comes quickly (a blip).
pub const RECONNECT_DELAY_BASE_DEFAULT: Duration = Duration::from_millis(250);

/// Default [`ReconnectConfig::delay_max`]: 10 s, so a relay back after a restart is found
/// within seconds while thousands of clients do not hammer one that is down.
pub const RECONNECT_DELAY_MAX_DEFAULT: Duration = Duration::from_secs(10);

/// Default [`ReconnectConfig::attempts_max`]: 40 attempts (about 6 minutes at the longest
/// delay) before the client goes [`ClientState::Offline`].
pub const RECONNECT_ATTEMPTS_MAX_DEFAULT: u32 = 40;

/// How a client comes back after a lost connection ([`ClientCore::set_reconnect`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconnectConfig {
    /// Delay before the first attempt; each further one doubles it, up to `delay_max`. Each
    /// delay is then drawn uniformly from its upper half (jitter), so clients that lost one relay
    /// together do not come back together.
    pub delay_base: Duration,
    /// Longest delay between attempts.
    pub delay_max: Duration,
    /// Attempts before giving up ([`ClientState::Offline`]); 0: never give up.
    pub attempts_max: u32,
    /// A joined connection that hears nothing from the server this long is lost.
    pub silence_timeout: Duration,
    /// Seeds the jitter (a driver takes it from the clock or the OS; tests fix it).
    pub seed: u64,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            delay_base: RECONNECT_DELAY_BASE_DEFAULT,
            delay_max: RECONNECT_DELAY_MAX_DEFAULT,
            attempts_max: RECONNECT_ATTEMPTS_MAX_DEFAULT,
            silence_timeout: SILENCE_TIMEOUT_DEFAULT,
            seed: 0,
        }
    }
}

/// When a joined client whose clock sync runs on clock echoes sends its liveness `Ping`
/// (PROTOCOL.md 1): [`PING_FALLBACK_SILENCE`] after its last upstream datagram (`last_up`), and
/// not before `next_ping` (the last such ping plus [`PING_FALLBACK_SILENCE`]). Shared with other
/// clients of the protocol (the load tool's light clients), so they ping as [`ClientCore`] does.
pub fn fallback_ping_at(last_up: Time, next_ping: Time) -> Time {
    (last_up + PING_FALLBACK_SILENCE).max(next_ping)
}

/// Whether a server datagram makes an acknowledgement due soon (PROTOCOL.md 12.5): one that
/// carried something the server waits on (entity records, an own-state blob) or was not fresh (a
/// duplicate or one too old: the ack header repeats what it said). A datagram with only a clock
/// echo is acknowledged by the next datagram sent anyway, or a world at rest would echo
/// acknowledgements back and forth. [`ClientCore`]'s rule, shared with other clients.
pub fn datagram_wants_ack(has_records: bool, has_own_blob: bool, fresh: bool) -> bool {
    has_records || has_own_blob || !fresh
}

/// What a client tick sends upstream ([`UpstreamRule::on_tick`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickSend {
    /// No datagram for this tick.
    Nothing,
    /// A datagram without the tick's inputs (its owned transforms, acknowledgements).
    WithoutInputs,
    /// A datagram with the tick's input payload.
    Inputs,
}

/// [`ClientCore`]'s decision of what each client tick sends upstream (PROTOCOL.md 12.7), shared
/// with other clients of the protocol (the load tool's light clients) so that they send the
/// same datagrams:
/// - a client with nothing of its own to send (no input payload yet, not client-authoritative,
///   moving no apps) sends no datagram: acknowledgements go out a period after a receipt;
/// - a player standing still with the same input since some tick sends nothing for it once the
///   server said it applied an input of that stillness (the server repeats it by itself), but
///   for the apps it moves.
#[derive(Clone, Debug, Default)]
pub struct UpstreamRule {
    /// The input of a player standing still, and the tick it began at.
    still_input: Option<CharacterInput>,
    still_since: Tick,
    /// The newest input tick the server said it applied (own-state blobs).
    server_input_tick: Option<Tick>,
}

impl UpstreamRule {
    /// The server said (an own-state blob's `last_input_tick`) it applied inputs up to `tick`.
    pub fn server_applied(&mut self, tick: Option<Tick>) {
        self.server_input_tick = self.server_input_tick.max(tick);
    }

    /// Client tick `tick` with `input`: `has_inputs` when the predictor gave an input payload
    /// for it, `client_authority` in client-authoritative mode, `moving` when the client moves
    /// apps. Returns what the tick sends.
    pub fn on_tick(
        &mut self,
        tick: Tick,
        input: CharacterInput,
        has_inputs: bool,
        client_authority: bool,
        moving: bool,
    ) -> TickSend {
        if !client_authority && !has_inputs && !moving {
            return TickSend::Nothing;
        }
        let still = input.move_x == 0 && input.move_z == 0 && !input.jump;
        if has_inputs && still && self.still_input == Some(input) {
            if self
                .server_input_tick
                .is_some_and(|t| t >= self.still_since)
            {
                return if moving {
                    TickSend::WithoutInputs
                } else {
                    TickSend::Nothing
                };
            }
        } else {
            self.still_input = still.then_some(input);
            self.still_since = tick;
        }
        if has_inputs {
            TickSend::Inputs
        } else {
            TickSend::WithoutInputs
        }
    }
}

/// Whether a client comes back by itself after its connection ended for `reason`: after a lost
/// connection (`Timeout`) or a relay going down (`ServerShutdown`), never after a decision (a
/// kick, a ban, a refusal, a protocol error, another session of the same user, a goodbye).
pub fn reconnects_after(reason: CloseReason) -> bool {
    matches!(reason, CloseReason::Timeout | CloseReason::ServerShutdown)
}

/// Messages from other channels a joining client holds until the snapshot arrives.
pub const EARLY_MESSAGES_MAX: usize = 4096;

/// Events the client holds for the game: 65,536. A game polls every frame and takes a few;
/// one that stops polling would otherwise grow this queue for as long as the server sends (every
/// change in the world is an event). Past the bound the oldest event is dropped and counted
/// ([`ClientCore::events_dropped`]).
pub const EVENTS_MAX: usize = 65_536;

/// The events waiting for the game, at most [`EVENTS_MAX`]: every event goes through
/// [`EventQueue::push_back`], which drops (and counts) the oldest beyond the bound.
#[derive(Debug, Default)]
struct EventQueue {
    events: VecDeque<ClientEvent>,
    /// Events dropped because the game did not take them.
    dropped: u64,
}

impl EventQueue {
    /// Queues an event, dropping the oldest beyond [`EVENTS_MAX`].
    fn push_back(&mut self, event: ClientEvent) {
        if self.events.len() >= EVENTS_MAX {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(event);
    }

    fn pop_front(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }
}

/// Client configuration.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Display name to join with.
    pub name: String,
    /// Token from an earlier session, to come back as the same user.
    pub token: Option<String>,
}

/// Where the client is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// Hello sent, waiting for `Welcome` and `Snapshot`.
    Joining,
    /// In the world.
    Joined,
    /// The connection was lost; attempt `attempt` to come back starts at `next_try` (the driver
    /// opens a new connection when [`ClientCore::poll_connect`] says so). Changes made now are
    /// held and sent once back.
    Reconnecting {
        /// The attempt number, from 1.
        attempt: u32,
        /// When it starts, on the core's clock.
        next_try: Time,
    },
    /// Gave up reconnecting after [`ReconnectConfig::attempts_max`] attempts. Changes are still
    /// held; [`ClientCore::reconnect_now`] tries again.
    Offline {
        /// Why the last connection ended.
        reason: CloseReason,
        /// Detail.
        detail: String,
    },
    /// Closed; no more input is taken.
    Closed {
        /// Why.
        reason: CloseReason,
        /// Detail.
        detail: String,
    },
}

/// Something the game should know about.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    /// The snapshot arrived: the world is loaded and the player exists (the `enter` event).
    Joined {
        /// Own player entity.
        player: EntityId,
        /// Own user.
        user: UserId,
    },
    /// An entity appeared.
    EntityAdded(EntityId),
    /// An entity's fields changed.
    EntityModified(EntityId),
    /// An entity is gone for good.
    EntityRemoved(EntityId),
    /// An entity event (released once its blueprint version is known).
    EntityEvent {
        /// The entity.
        entity: EntityId,
        /// Event name.
        name: String,
        /// Payload.
        data: Bytes,
        /// The sending player.
        from: Option<EntityId>,
    },
    /// A blueprint was added.
    BlueprintAdded(BlueprintId),
    /// A blueprint was deleted by an admin (its apps were removed just before).
    BlueprintRemoved(BlueprintId),
    /// A blueprint changed (or was sent back after a lost conflict).
    BlueprintModified {
        /// Which.
        id: BlueprintId,
        /// Version now.
        version: u32,
    },
    /// A chat message.
    Chat(ChatMessage),
    /// Chat was cleared.
    ChatCleared,
    /// A setting changed.
    SettingsModified(Setting),
    /// Spawn moved.
    SpawnModified(Spawn),
    /// A user's rank changed.
    RankModified {
        /// The user.
        user: UserId,
        /// New effective rank.
        rank: Rank,
    },
    /// A player was muted or unmuted.
    Muted {
        /// The player.
        player: EntityId,
        /// Muted or not.
        muted: bool,
    },
    /// Own player was teleported.
    Teleported {
        /// Destination.
        position: Vec3,
        /// Facing, radians.
        rotation_y: f32,
    },
    /// Own player was pushed.
    Pushed {
        /// Impulse, m/s.
        force: Vec3,
    },
    /// A change was acknowledged (durably, when the server persists).
    Acked(ReqId),
    /// A change was refused.
    Refused {
        /// The change.
        req: ReqId,
        /// Why.
        reason: Refusal,
    },
    /// A round trip measured: a clock echo (without the server's hold) or a pong.
    Rtt(Duration),
    /// An entity left this client's area of interest: it still exists, but no more updates
    /// come until it re-enters.
    LeftInterest(EntityId),
    /// The connection was lost and the client will try to come back (see
    /// [`ClientState::Reconnecting`]); emitted once per attempt scheduled.
    Reconnecting {
        /// The attempt number, from 1.
        attempt: u32,
        /// When it starts, on the core's clock.
        next_try: Time,
        /// Why the connection ended.
        reason: CloseReason,
        /// Detail.
        detail: String,
    },
    /// The client gave up reconnecting ([`ClientState::Offline`]).
    Offline {
        /// Why the last connection ended.
        reason: CloseReason,
        /// Detail.
        detail: String,
    },
    /// The session came back on a new connection: same session, player and id. The world
    /// mirror was replaced by the server's snapshot; the entities, blueprints and chat messages
    /// that changed while away were reported as events just before this one (settings, spawn
    /// and rank are in [`ClientCore::world`]). Unanswered changes were resent.
    Resumed {
        /// The session.
        session: SessionId,
    },
    /// The session ended for good (closed by the server with a reason, left, or a lost
    /// connection without reconnection).
    Disconnected {
        /// Why.
        reason: CloseReason,
        /// Detail.
        detail: String,
    },
    /// The server answered a command with text (`/help`, why a moderation command was refused).
    CommandReply {
        /// The command.
        req: ReqId,
        /// The text; lines separated by `\n`.
        text: String,
    },
    /// The server replaced the auth token before the old one expires: keep this one (it is
    /// also what [`ClientCore::token`] returns from now on).
    TokenRefreshed(String),
}

/// Something to send.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientTransmit {
    /// A reliable frame (length prefix included) on a channel's stream.
    Frame {
        /// Which stream.
        channel: Channel,
        /// The encoded frame.
        frame: Vec<u8>,
    },
    /// An unreliable datagram.
    Datagram(Vec<u8>),
}

/// What this client's connection cost so far and how its path behaves, as the client core
/// counted it. Bytes are what the core queued or was handed: frames with their length prefix,
/// datagrams whole, without the transport's own overhead.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClientFigures {
    /// Bytes sent: frames and datagrams.
    pub bytes_up: u64,
    /// Bytes received: frames and datagrams.
    pub bytes_down: u64,
    /// Frames sent.
    pub frames_up: u64,
    /// Frames received.
    pub frames_down: u64,
    /// Datagrams sent.
    pub datagrams_up: u64,
    /// Datagrams received.
    pub datagrams_down: u64,
    /// Of `bytes_up`, datagrams.
    pub datagram_bytes_up: u64,
    /// Of `bytes_down`, datagrams.
    pub datagram_bytes_down: u64,
    /// Of `bytes_up`, the player's own inputs (server-authoritative movement) or its own
    /// transform records (client-authoritative, estimated at the absolute record's size).
    pub own_state_bytes_up: u64,
    /// Of `bytes_down`, the own-player state blobs received.
    pub own_state_bytes_down: u64,
    /// Server datagrams missing from the sequence received so far (lost, or still to come out
    /// of order).
    pub datagrams_lost: u64,
    /// Round-trip time from clock echoes or pongs, microseconds (0 before the first).
    pub rtt_us: u64,
    /// Mispredictions of its own player corrected (server-authoritative movement).
    pub corrections: u64,
    /// Snapshot pieces received (`SnapshotPiece`; 0 for snapshots that came whole).
    pub snapshot_pieces: u64,
}

/// Datagrams that carry an unchanged own transform (client-authoritative movement) after it
/// changed: three in a row, so a loss or two still leave the server the final one; after them a
/// player standing still sends no own-state bytes.
pub const OWN_TRANSFORM_REPEATS: u8 = 3;

/// Errors the server's input can cause; each closes the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server's bytes could not be decoded.
    #[error("undecodable message from server: {0}")]
    Decode(#[from] DecodeError),
    /// The server broke the protocol's order (a message before the snapshot, say).
    #[error("server broke the protocol: {0}")]
    Protocol(String),
}

/// The client's mirror of the world.
#[derive(Clone, Debug, Default)]
pub struct ClientWorld {
    /// Settings.
    pub settings: Settings,
    /// Spawn.
    pub spawn: Spawn,
    /// Blueprints.
    pub blueprints: BTreeMap<BlueprintId, Blueprint>,
    /// Entities.
    pub entities: BTreeMap<EntityId, Entity>,
    /// Chat, oldest first, last [`CHAT_HISTORY_LEN`].
    pub chat: VecDeque<ChatMessage>,
}

impl ClientWorld {
    /// The player entities' display names, by entity.
    pub fn player_names(&self) -> Vec<(EntityId, String)> {
        self.entities
            .values()
            .filter(|e| e.kind == EntityKind::Player)
            .map(|e| {
                let name = e
                    .props
                    .iter()
                    .find(|(k, _)| k == "name")
                    .map(|(_, v)| String::from_utf8_lossy(&v.0).into_owned())
                    .unwrap_or_default();
                (e.id, name)
            })
            .collect()
    }
}

#[derive(Clone, Debug)]
struct HeldEvent {
    entity: EntityId,
    version: u32,
    name: String,
    data: Bytes,
    from: Option<EntityId>,
}

/// The unreliable side of a joined client: transform reception, prediction, clock sync,
/// interpolation and the upstream datagram. Built from the server's `Welcome`.
struct Stream {
    receiver: ReplicaReceiver,
    quantizer: Quantizer,
    predicted: PredictedClient,
    up_seq: Seq,
    /// A server datagram arrived since the last upstream datagram: acknowledge it soon.
    ack_due: bool,
    /// When the last upstream datagram went out.
    last_up: Time,
    period: Duration,
    /// Client-authoritative mode: the game's own player transform, sent every client tick.
    own_transform: Option<Transform>,
    /// Apps this client is moving (it set their `mover`), sent every client tick.
    moving: BTreeMap<EntityId, Transform>,
    buf: Vec<u8>,
    /// What the last server datagram brought, kept so its vectors are reused (no allocation
    /// per datagram).
    received: ReceivedTick,
    /// Datagrams dropped as undecodable.
    rejected: u64,
    /// What each client tick sends upstream.
    upstream: UpstreamRule,
    /// Client-authoritative mode: the own transform last sent and how many datagrams carried it.
    own_sent: (Option<QTransform>, u8),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("up_seq", &self.up_seq)
            .field("rejected", &self.rejected)
            .finish()
    }
}

/// One participant's core. See the module documentation.
#[derive(Debug)]
pub struct ClientCore {
    config: ClientConfig,
    state: ClientState,
    world: ClientWorld,
    session: Option<SessionId>,
    player: Option<EntityId>,
    user: Option<UserId>,
    rank: Rank,
    token: Option<String>,
    tick_hz: u16,
    next_req: u32,
    next_ping: Time,
    rtt: Option<Duration>,
    held: VecDeque<HeldEvent>,
    early: VecDeque<ServerMsg>,
    /// A snapshot arriving in pieces (bounded, see [`crate::wire::pieces`]).
    pieces: crate::wire::pieces::Reassembly,
    stream: Option<Box<Stream>>,
    input: CharacterInput,
    /// Whether remote entities are buffered for interpolation ([`ClientCore::set_interpolation`]).
    interpolate: bool,
    /// Whether datagram records changed transforms the world mirror does not show yet.
    world_transforms_stale: bool,
    transmits: VecDeque<ClientTransmit>,
    events: EventQueue,
    figures: ClientFigures,
    /// The newest server datagram sequence received and how many arrived: what `datagrams_lost`
    /// is counted from.
    down_seq: Option<(Seq, u64)>,
    /// Joins (joined) with `Spectate`: no player.
    spectator: bool,
    /// A spectator's camera, as last set: where it comes back after a lost connection.
    camera: Vec3,
    /// How to come back after a lost connection; `None`: the session ends with it.
    reconnect: Option<ReconnectConfig>,
    /// Jitter of reconnection delays.
    rng: crate::rng::Rng,
    /// Attempts since the last join.
    attempt: u32,
    /// The driver should open a new connection ([`ClientCore::poll_connect`]).
    connect_due: bool,
    /// The single-use token to resume the session with.
    resume_token: Option<String>,
    /// Changes not yet answered, oldest first, at most [`PENDING_REQUESTS_MAX`].
    pending: VecDeque<(ReqId, ClientMsg)>,
    /// When the server was last heard (a frame or datagram), or the connection opened.
    last_heard: Time,
    /// The current connection is a reconnection (`Resume` or a second `Hello`).
    rejoining: bool,
}

impl ClientCore {
    /// A client that will join as `config.name`; `Hello` is queued at once.
    pub fn new(config: ClientConfig, now: Time) -> ClientCore {
        let mut c = Self::unjoined(config, now);
        let hello = ClientMsg::Hello {
            protocol_version: PROTOCOL_VERSION,
            name: c.config.name.clone(),
            token: c.config.token.clone(),
        };
        c.send(&hello);
        c
    }

    /// A spectator: joins as `config.name` with no player, its camera at `camera` for interest
    /// (move it with [`ClientCore::set_camera`]). It receives the world and sends no player
    /// state; `Spectate` is queued at once.
    pub fn new_spectator(config: ClientConfig, camera: Vec3, now: Time) -> ClientCore {
        let mut c = Self::unjoined(config, now);
        c.spectator = true;
        c.camera = camera;
        let spectate = ClientMsg::Spectate {
            protocol_version: PROTOCOL_VERSION,
            name: c.config.name.clone(),
            token: c.config.token.clone(),
            camera,
        };
        c.send(&spectate);
        c
    }

    /// Whether this client joins or joined as a spectator.
    pub fn is_spectator(&self) -> bool {
        self.spectator
    }

    /// Moves a spectator's camera (its viewpoint for interest). No-op for a player.
    pub fn set_camera(&mut self, position: Vec3) {
        if self.spectator {
            self.camera = position;
            self.send(&ClientMsg::SpectatorCamera { position });
        }
    }

    fn unjoined(config: ClientConfig, now: Time) -> ClientCore {
        ClientCore {
            token: config.token.clone(),
            config,
            state: ClientState::Joining,
            world: ClientWorld::default(),
            session: None,
            player: None,
            user: None,
            rank: Rank::Visitor,
            tick_hz: crate::time::TICK_HZ_DEFAULT,
            next_req: 1,
            next_ping: now,
            rtt: None,
            held: VecDeque::new(),
            early: VecDeque::new(),
            pieces: Default::default(),
            stream: None,
            input: CharacterInput::default(),
            interpolate: true,
            world_transforms_stale: false,
            transmits: VecDeque::new(),
            events: EventQueue::default(),
            figures: ClientFigures::default(),
            down_seq: None,
            spectator: false,
            camera: Vec3::ZERO,
            reconnect: None,
            rng: crate::rng::Rng::new(0),
            attempt: 0,
            connect_due: false,
            resume_token: None,
            pending: VecDeque::new(),
            last_heard: now,
            rejoining: false,
        }
    }

    /// A client whose `Hello` claims another protocol version (tests of version refusal only).
    #[doc(hidden)]
    pub fn with_protocol_version(config: ClientConfig, now: Time, version: u16) -> ClientCore {
        let mut c = Self::unjoined(config, now);
        let hello = ClientMsg::Hello {
            protocol_version: version,
            name: c.config.name.clone(),
            token: c.config.token.clone(),
        };
        c.send(&hello);
        c
    }

    // ---- getters ----

    /// Where the client is.
    pub fn state(&self) -> &ClientState {
        &self.state
    }

    /// The world mirror, its entities' transforms brought up to the latest received (which is
    /// why it takes `&mut self`: datagram records update them lazily, here).
    pub fn world(&mut self) -> &ClientWorld {
        self.sync_world_transforms();
        &self.world
    }

    /// Brings the world mirror's entity transforms up to the latest received datagram
    /// records. Runs before the mirror is read and before a reliable message writes a
    /// transform, so the later of the two wins as if records were applied one by one.
    fn sync_world_transforms(&mut self) {
        if !std::mem::take(&mut self.world_transforms_stale) {
            return;
        }
        if let Some(st) = self.stream.as_deref_mut() {
            let entities = &mut self.world.entities;
            st.receiver.take_changed(|id, _, t| {
                if let Some(e) = entities.get_mut(&id) {
                    e.transform = t;
                }
            });
        }
    }

    /// Own player entity, once joined.
    pub fn player(&self) -> Option<EntityId> {
        self.player
    }

    /// Own user, once joined.
    pub fn user(&self) -> Option<UserId> {
        self.user
    }

    /// Own session, once welcomed.
    pub fn session(&self) -> Option<SessionId> {
        self.session
    }

    /// Own effective rank.
    pub fn rank(&self) -> Rank {
        self.rank
    }

    /// The auth token to come back as the same user.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The server's tick rate, Hz.
    pub fn tick_hz(&self) -> u16 {
        self.tick_hz
    }

    /// Latest round-trip time measured.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    // ---- inputs ----

    /// A complete frame body (without its length prefix) arrived on `channel`.
    pub fn handle_frame(
        &mut self,
        channel: Channel,
        body: &[u8],
        now: Time,
    ) -> Result<(), ClientError> {
        if !self.connected() {
            return Ok(());
        }
        self.figures.frames_down += 1;
        self.figures.bytes_down += (body.len() + codec::FRAME_HEADER_BYTES) as u64;
        self.last_heard = self.last_heard.max(now);
        let msg = match codec::decode_server(body) {
            Ok(m) => m,
            Err(e) => {
                self.close(CloseReason::ProtocolViolation, e.to_string());
                return Err(e.into());
            }
        };
        if msg.channel() != channel {
            return self.protocol(&format!("{} on the {channel:?} channel", msg.name()));
        }
        // Channels are not ordered with each other: chat or a rank change may overtake the
        // snapshot on the world stream. Hold them (bounded) and apply them after it.
        if self.state == ClientState::Joining
            && msg.channel() != Channel::World
            && !matches!(msg, ServerMsg::Close { .. } | ServerMsg::Pong { .. })
        {
            if self.early.len() >= EARLY_MESSAGES_MAX {
                return self.protocol("too many messages before the snapshot");
            }
            self.early.push_back(msg);
            return Ok(());
        }
        let was_joining = self.state == ClientState::Joining;
        self.handle_msg(msg, now)?;
        if was_joining && self.state == ClientState::Joined {
            while let Some(m) = self.early.pop_front() {
                self.handle_msg(m, now)?;
            }
        }
        Ok(())
    }

    /// A datagram arrived: entity transforms and, in it, this player's authoritative state.
    /// Undecodable, stale and duplicate datagrams are counted and ignored.
    pub fn handle_datagram(&mut self, data: &[u8], now: Time) {
        if self.state != ClientState::Joined {
            return;
        }
        self.figures.datagrams_down += 1;
        self.figures.bytes_down += data.len() as u64;
        self.figures.datagram_bytes_down += data.len() as u64;
        self.last_heard = self.last_heard.max(now);
        let Some(st) = self.stream.as_deref_mut() else {
            return;
        };
        if data.first() != Some(&KIND_SERVER_STATE) {
            st.rejected += 1;
            return;
        }
        let rt = &mut st.received;
        if st.receiver.handle_datagram_into(data, now, rt).is_err() {
            st.rejected += 1;
            return;
        }
        // Acknowledged soon if it carried something the server waits on (records, an own blob);
        // a datagram with only a clock echo is acknowledged by the next datagram sent anyway
        // (PROTOCOL.md 12.5), or a world at rest would echo acknowledgements back and forth.
        st.ack_due |= datagram_wants_ack(
            rt.records > 0,
            rt.own_blob.is_some(),
            rt.freshness == Freshness::Applied,
        );
        // Sequence numbers wrap: count the span newest-first from the first one seen.
        self.down_seq = Some(match self.down_seq {
            None => (rt.seq, 1),
            Some((newest, n)) => {
                let ahead = rt.seq.diff(newest);
                if ahead > 0 {
                    self.figures.datagrams_lost += ahead as u64 - 1;
                    (rt.seq, n + 1)
                } else if ahead == 0 {
                    (newest, n) // a duplicate
                } else {
                    // Late: one fewer missing than counted when the newer one came.
                    self.figures.datagrams_lost = self.figures.datagrams_lost.saturating_sub(1);
                    (newest, n + 1)
                }
            }
        });
        if rt.freshness != Freshness::Applied {
            return;
        }
        if let Some(echo) = rt.echo {
            if let Some(us) = st.predicted.handle_echo(&echo, rt.tick, now) {
                let rtt = Duration::from_micros(us);
                self.rtt = Some(rtt);
                self.events.push_back(ClientEvent::Rtt(rtt));
            }
        }
        if let Some(blob) = &rt.own_blob {
            self.figures.own_state_bytes_down += blob.len() as u64;
            if let Ok(o) = decode_own_state(blob) {
                st.upstream.server_applied(o.last_input_tick);
            }
            if st.predicted.handle_own_state(blob).is_err() {
                st.rejected += 1;
            }
        }
        st.predicted.handle_transforms_datagram(now, rt.tick);
        // The world mirror's transforms catch up when it is next read (`ClientCore::world`),
        // not once per record: a client reads its world far less often than records arrive.
        self.world_transforms_stale |= !rt.updated.is_empty();
        if self.interpolate {
            for &id in &rt.updated {
                if Some(id) == self.player {
                    continue;
                }
                if let Some((tick, t)) = st.receiver.latest(id) {
                    st.predicted.handle_entity_transform(id, tick, t, false);
                }
            }
        }
        for &id in &rt.left {
            st.predicted.remove_entity(id);
            self.events.push_back(ClientEvent::LeftInterest(id));
        }
    }

    /// The transport closed, with the reason and detail the driver knows (the server's close
    /// code and text, an idle timeout, a reset). A `Close` message that arrived first wins: the
    /// session is closed once, with the first reason. No-op once closed.
    pub fn handle_disconnect(&mut self, reason: CloseReason, detail: String) {
        self.close(reason, detail);
    }

    /// The transport ended (or a new connection could not be opened) for `reason`: with
    /// reconnection on ([`ClientCore::set_reconnect`]), a session that had joined and a reason
    /// [`reconnects_after`] allows schedules the next attempt (exponential backoff with
    /// jitter) or, past the attempts allowed, goes [`ClientState::Offline`]; otherwise the
    /// session ends as with [`ClientCore::handle_disconnect`]. No-op once closed.
    pub fn handle_transport_lost(&mut self, reason: CloseReason, detail: String, now: Time) {
        if matches!(self.state, ClientState::Closed { .. }) {
            return;
        }
        let Some(cfg) = self.reconnect.clone() else {
            return self.close(reason, detail);
        };
        if !reconnects_after(reason) || self.session.is_none() || self.user.is_none() {
            return self.close(reason, detail);
        }
        let attempt_in_flight = self.connect_due
            || matches!(self.state, ClientState::Reconnecting { next_try, .. } if next_try == Time(u64::MAX));
        if matches!(
            self.state,
            ClientState::Reconnecting { .. } | ClientState::Offline { .. }
        ) && !self.rejoining
            && !attempt_in_flight
        {
            // Already waiting: a second report of the same loss.
            return;
        }
        self.transmits.clear();
        self.early.clear();
        self.pieces = Default::default();
        self.stream = None;
        self.rejoining = false;
        self.connect_due = false;
        self.attempt += 1;
        if cfg.attempts_max > 0 && self.attempt > cfg.attempts_max {
            self.state = ClientState::Offline {
                reason,
                detail: detail.clone(),
            };
            self.events
                .push_back(ClientEvent::Offline { reason, detail });
            return;
        }
        let shift = (self.attempt - 1).min(20);
        let ceiling = cfg
            .delay_base
            .saturating_mul(1 << shift)
            .min(cfg.delay_max)
            .as_micros() as u64;
        let delay = ceiling / 2 + self.rng.below(ceiling / 2 + 1);
        let next_try = now + Duration::from_micros(delay);
        self.state = ClientState::Reconnecting {
            attempt: self.attempt,
            next_try,
        };
        self.events.push_back(ClientEvent::Reconnecting {
            attempt: self.attempt,
            next_try,
            reason,
            detail,
        });
    }

    /// Whether the driver should open a new connection now (once per attempt). When it opened
    /// it, it calls [`ClientCore::handle_connected`]; if it could not,
    /// [`ClientCore::handle_transport_lost`].
    pub fn poll_connect(&mut self) -> bool {
        std::mem::take(&mut self.connect_due)
    }

    /// A new connection is open (after [`ClientCore::poll_connect`]): asks the server to resume
    /// the session (or, without a resume token, to join again as the same user).
    pub fn handle_connected(&mut self, now: Time) {
        if !matches!(
            self.state,
            ClientState::Reconnecting { .. } | ClientState::Offline { .. }
        ) {
            return;
        }
        self.state = ClientState::Joining;
        self.rejoining = true;
        self.last_heard = now;
        self.transmits.clear();
        let name = self.config.name.clone();
        let token = self.token.clone();
        // The token is kept until a `Welcome` answers: a resume that never reached the server
        // (the connection died first) may be tried again with it.
        // A spectator comes back as a spectator (a resume that fell back to a fresh join would
        // make it a player), at its camera's last position.
        let msg = match (self.session, self.resume_token.clone()) {
            _ if self.spectator => ClientMsg::Spectate {
                protocol_version: PROTOCOL_VERSION,
                name,
                token,
                camera: self.camera,
            },
            (Some(session), Some(resume_token)) => ClientMsg::Resume {
                protocol_version: PROTOCOL_VERSION,
                name,
                token,
                session,
                resume_token,
            },
            _ => ClientMsg::Hello {
                protocol_version: PROTOCOL_VERSION,
                name,
                token,
            },
        };
        self.push_frame(&msg);
    }

    /// Tries to reconnect at once (from [`ClientState::Offline`], or cutting a backoff short),
    /// with a fresh count of attempts.
    pub fn reconnect_now(&mut self, now: Time) {
        if matches!(
            self.state,
            ClientState::Reconnecting { .. } | ClientState::Offline { .. }
        ) {
            self.attempt = 1;
            self.state = ClientState::Reconnecting {
                attempt: 1,
                next_try: now,
            };
            self.connect_due = true;
        }
    }

    /// Turns reconnection on (with `Some`) or off (the default: a lost connection ends the
    /// session). The native client and the simulated network's tests turn it on.
    pub fn set_reconnect(&mut self, config: Option<ReconnectConfig>) {
        if let Some(c) = &config {
            self.rng = crate::rng::Rng::new(c.seed);
        }
        self.reconnect = config;
    }

    /// Changes made and not yet answered (held while offline), oldest first.
    pub fn pending_requests(&self) -> impl Iterator<Item = ReqId> + '_ {
        self.pending.iter().map(|(r, _)| *r)
    }

    /// Whether frames of the current connection are taken (joining or joined).
    fn connected(&self) -> bool {
        matches!(self.state, ClientState::Joining | ClientState::Joined)
    }

    /// Runs what is due at `now`: pings (clock sync), prediction ticks with their input
    /// datagrams, and acknowledgements of received transform datagrams.
    pub fn handle_timeout(&mut self, now: Time) {
        if let ClientState::Reconnecting { next_try, .. } = self.state {
            if now >= next_try && !self.connect_due {
                self.connect_due = true;
                // Due now: `poll_timeout` stays quiet until the driver reports the outcome.
                self.state = ClientState::Reconnecting {
                    attempt: self.attempt,
                    next_try: Time(u64::MAX),
                };
            }
            return;
        }
        if let Some(silence) = self.silence_deadline() {
            if now >= silence {
                let secs = self
                    .reconnect
                    .as_ref()
                    .map_or(0.0, |c| c.silence_timeout.as_secs_f64());
                return self.handle_transport_lost(
                    CloseReason::Timeout,
                    format!("nothing heard from the server for {secs} s"),
                    now,
                );
            }
        }
        if self.state == ClientState::Joining && self.session.is_some() {
            // Welcomed, the snapshot still on its way (a big world on a slow link): a ping a
            // second tells the server this connection is alive, so its idle timeout does not
            // take the join for a dead peer.
            if now >= self.next_ping {
                self.next_ping = now + PING_INTERVAL;
                self.push_frame(&ClientMsg::Ping {
                    client_time_us: now.as_micros(),
                });
            }
            return;
        }
        if self.state != ClientState::Joined {
            return;
        }
        let Some(mut st) = self.stream.take() else {
            if now >= self.next_ping {
                self.next_ping = now + PING_INTERVAL;
                self.send(&ClientMsg::Ping {
                    client_time_us: now.as_micros(),
                });
            }
            return;
        };
        if let Some(t) = st.predicted.poll_ping(now) {
            self.send(&ClientMsg::Ping { client_time_us: t });
        } else if st.predicted.clock().is_exact() && now >= self.fallback_ping_at(&st) {
            // Clock sync rides in the datagrams; this ping is for liveness only.
            self.next_ping = now + PING_FALLBACK_SILENCE;
            self.send(&ClientMsg::Ping {
                client_time_us: now.as_micros(),
            });
        }
        let client_auth = self.world.settings.movement == MovementAuthority::Client;
        while let Some(tick) = st.predicted.poll_tick(now) {
            let inputs = if client_auth {
                None
            } else {
                st.predicted.apply_input(tick, self.input)
            };
            // Nothing of its own to send (a spectator, a player before its first own-player
            // state, one standing still the server repeats the input of): acknowledgements
            // go out below when something arrived (`UpstreamRule`).
            let send = st.upstream.on_tick(
                tick,
                self.input,
                inputs.is_some(),
                client_auth,
                !st.moving.is_empty(),
            );
            match send {
                TickSend::Nothing => {}
                TickSend::WithoutInputs => self.send_upstream(&mut st, &[], now, tick),
                TickSend::Inputs => {
                    self.send_upstream(&mut st, inputs.as_deref().unwrap_or(&[]), now, tick)
                }
            }
        }
        if st.ack_due && now >= st.last_up + st.period {
            self.send_upstream(&mut st, &[], now, Tick::default());
        }
        self.stream = Some(st);
    }

    /// With clock echoes, when the liveness ping is due: [`PING_FALLBACK_SILENCE`] after the
    /// last upstream datagram and the last ping.
    fn fallback_ping_at(&self, st: &Stream) -> Time {
        fallback_ping_at(st.last_up, self.next_ping)
    }

    fn send_upstream(&mut self, st: &mut Stream, inputs: &[u8], now: Time, _tick: Tick) {
        let mut owned: Vec<(EntityId, QTransform)> = Vec::new();
        if let (Some(t), Some(p)) = (st.own_transform, self.player) {
            if self.world.settings.movement == MovementAuthority::Client {
                // An unchanged transform goes out `OWN_TRANSFORM_REPEATS` times, then no more.
                let q = st.quantizer.quantize(&t);
                if st.own_sent.0 != Some(q) {
                    st.own_sent = (Some(q), 0);
                }
                if st.own_sent.1 < OWN_TRANSFORM_REPEATS {
                    st.own_sent.1 += 1;
                    owned.push((p, q));
                    // An absolute record: index, presence bits and the quantized value.
                    self.figures.own_state_bytes_up +=
                        (st.quantizer.absolute_bits() as u64 + 8).div_ceil(8);
                }
            }
        }
        for (id, t) in st.moving.iter().take(OWNED_PER_DATAGRAM_MAX - owned.len()) {
            owned.push((*id, st.quantizer.quantize(t)));
        }
        st.up_seq = Seq(st.up_seq.0.wrapping_add(1));
        let ack = st.receiver.ack_header();
        // A clock sample is due: this datagram asks the server for an echo (kind 0x03).
        let stamp = st.predicted.poll_stamp(now);
        if encode_client_datagram_clocked(
            &st.quantizer,
            &ack,
            st.up_seq,
            stamp,
            inputs,
            &owned,
            &mut st.buf,
        )
        .is_ok()
        {
            self.figures.datagrams_up += 1;
            self.figures.bytes_up += st.buf.len() as u64;
            self.figures.datagram_bytes_up += st.buf.len() as u64;
            self.figures.own_state_bytes_up += inputs.len() as u64;
            self.transmits
                .push_back(ClientTransmit::Datagram(st.buf.clone()));
        }
        st.ack_due = false;
        st.last_up = now;
    }

    // ---- movement: input, prediction, interpolation ----

    /// Sets the input the local player moves with from the next client tick on (held until
    /// changed).
    pub fn set_input(&mut self, input: CharacterInput) {
        self.input = input;
    }

    /// In client-authoritative worlds, the player's transform as the game simulates it; sent
    /// every client tick and validated by the server.
    pub fn set_player_transform(&mut self, t: Transform) {
        if let Some(st) = &mut self.stream {
            st.own_transform = Some(t);
        }
    }

    /// Starts moving an app (builder, or its owner): from now on its transform streams from
    /// [`ClientCore::set_entity_transform`] through datagrams instead of reliable changes.
    pub fn start_moving(&mut self, id: EntityId) -> ReqId {
        self.modify_entity(
            id,
            EntityPatch {
                set: vec![(crate::server::MOVER_PROP.into(), Bytes::default())],
                ..Default::default()
            },
        )
    }

    /// Stops moving an app: it stays (and is saved) where it is.
    pub fn stop_moving(&mut self, id: EntityId) -> ReqId {
        let last = self.stream.as_mut().and_then(|st| st.moving.remove(&id));
        self.modify_entity(
            id,
            EntityPatch {
                unset: vec![crate::server::MOVER_PROP.into()],
                transform: last,
                ..Default::default()
            },
        )
    }

    /// The transform of an app this client is moving (see [`ClientCore::start_moving`]); sent
    /// every client tick until [`ClientCore::stop_moving`]. At most
    /// [`OWNED_PER_DATAGRAM_MAX`] apps at once.
    pub fn set_entity_transform(&mut self, id: EntityId, t: Transform) {
        if let Some(st) = &mut self.stream {
            if st.moving.len() < OWNED_PER_DATAGRAM_MAX || st.moving.contains_key(&id) {
                st.moving.insert(id, t);
            }
        }
    }

    /// Starts a render frame `dt_s` seconds after the previous one; returns the (fractional)
    /// server tick remote entities are rendered at.
    pub fn begin_frame(&mut self, now: Time, dt_s: f32) -> Option<f64> {
        self.stream.as_mut()?.predicted.begin_frame(now, dt_s)
    }

    /// The local player's predicted transform to render at `now`.
    pub fn player_transform(&self, now: Time) -> Option<Transform> {
        self.stream.as_ref()?.predicted.player_transform(now)
    }

    /// A remote entity's interpolated transform at render tick `at` (from `begin_frame`); with
    /// interpolation off ([`ClientCore::set_interpolation`]), its latest authoritative transform.
    pub fn entity_transform(&mut self, id: EntityId, at: f64) -> Option<Transform> {
        if !self.interpolate {
            return self.latest_transform(id).map(|(_, t)| t);
        }
        self.stream.as_mut()?.predicted.entity_transform(id, at)
    }

    /// Turns the buffering of remote entities for interpolation on (the default) or off. A
    /// client that never renders (a bot, a load tool, a server-side observer) turns it off: each
    /// entity update then skips its interpolation buffer (about 1.8 KiB of memory per entity
    /// and a buffer write per update saved), and [`ClientCore::entity_transform`] gives the
    /// latest authoritative transform instead. Everything on the wire stays the same: datagrams
    /// are decoded and acknowledged, the player is predicted, the clock synced. Turning it off
    /// frees the buffers; turning it back on starts filling them from the next datagram.
    pub fn set_interpolation(&mut self, enabled: bool) {
        self.interpolate = enabled;
        if !enabled {
            if let Some(st) = self.stream.as_mut() {
                st.predicted.clear_entities();
            }
        }
    }

    /// A remote entity's latest authoritative transform and the server tick it is from.
    pub fn latest_transform(&self, id: EntityId) -> Option<(Tick, Transform)> {
        self.stream.as_ref()?.receiver.latest(id)
    }

    /// Prediction correction statistics.
    pub fn correction_stats(&self) -> Option<CorrectionStats> {
        Some(self.stream.as_ref()?.predicted.correction_stats())
    }

    /// Interpolation counters (frames, underruns).
    pub fn interpolation_stats(&self) -> Option<InterpolationStats> {
        Some(self.stream.as_ref()?.predicted.interpolation_stats())
    }

    /// The render delay for remote entities, milliseconds.
    pub fn interpolation_delay_ms(&self) -> Option<f64> {
        Some(self.stream.as_ref()?.predicted.interpolation_delay_ms())
    }

    /// The prediction/clock-sync state, for games that want the details.
    pub fn predicted(&self) -> Option<&PredictedClient> {
        self.stream.as_ref().map(|s| &s.predicted)
    }

    /// Datagrams dropped as undecodable.
    pub fn datagrams_rejected(&self) -> u64 {
        self.stream.as_ref().map_or(0, |s| s.rejected)
    }

    // ---- outputs ----

    /// The next thing to send.
    pub fn poll_transmit(&mut self) -> Option<ClientTransmit> {
        self.transmits.pop_front()
    }

    /// Whether anything waits to be sent ([`ClientCore::poll_transmit`]): a driver that was
    /// handed the core between its own runs wakes only when this or an earlier
    /// [`ClientCore::poll_timeout`] says there is work.
    pub fn has_transmits(&self) -> bool {
        !self.transmits.is_empty()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Events dropped so far because more than [`EVENTS_MAX`] were waiting to be polled.
    pub fn events_dropped(&self) -> u64 {
        self.events.dropped
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Time> {
        if let ClientState::Reconnecting { next_try, .. } = self.state {
            return (next_try != Time(u64::MAX)).then_some(next_try);
        }
        let silence = self.silence_deadline();
        if self.state == ClientState::Joining && self.session.is_some() {
            return Some(silence.map_or(self.next_ping, |s| s.min(self.next_ping)));
        }
        if self.state != ClientState::Joined {
            return silence;
        }
        let t = match &self.stream {
            None => self.next_ping,
            Some(st) => {
                let mut t = st.predicted.poll_timeout();
                if st.predicted.clock().is_exact() {
                    t = t.min(self.fallback_ping_at(st));
                }
                if st.ack_due {
                    t.min(st.last_up + st.period)
                } else {
                    t
                }
            }
        };
        Some(silence.map_or(t, |s| s.min(t)))
    }

    /// When the current connection counts as lost if nothing is heard (reconnection on, and
    /// joined or rejoining).
    fn silence_deadline(&self) -> Option<Time> {
        let cfg = self.reconnect.as_ref()?;
        let watched = self.state == ClientState::Joined
            || (self.state == ClientState::Joining && self.rejoining);
        watched.then(|| self.last_heard + cfg.silence_timeout)
    }

    // ---- commands ----

    fn req(&mut self) -> ReqId {
        let r = ReqId(self.next_req);
        self.next_req = self.next_req.wrapping_add(1);
        r
    }

    /// Says something in chat.
    pub fn send_chat(&mut self, body: impl Into<String>) -> ReqId {
        let req = self.req();
        self.send(&ClientMsg::Chat {
            req,
            body: body.into(),
        });
        req
    }

    /// Runs a slash command (`["chat", "clear"]`).
    pub fn send_command(&mut self, args: Vec<String>) -> ReqId {
        let req = self.req();
        self.send(&ClientMsg::Command { req, args });
        req
    }

    /// Adds a blueprint.
    pub fn add_blueprint(&mut self, blueprint: Blueprint) -> ReqId {
        let req = self.req();
        self.send(&ClientMsg::BlueprintAdd { req, blueprint });
        req
    }

    /// Modifies a blueprint at the next version after the one this client knows.
    pub fn modify_blueprint(&mut self, id: BlueprintId, patch: BlueprintPatch) -> ReqId {
        let version = self.world.blueprints.get(&id).map_or(1, |b| b.version + 1);
        self.modify_blueprint_at(id, version, patch)
    }

    /// Modifies a blueprint claiming an explicit version.
    pub fn modify_blueprint_at(
        &mut self,
        id: BlueprintId,
        version: u32,
        patch: BlueprintPatch,
    ) -> ReqId {
        let req = self.req();
        self.send(&ClientMsg::BlueprintModify {
            req,
            id,
            version,
            patch,
        });
        req
    }

    /// Places an app.
    pub fn add_entity(
        &mut self,
        blueprint: BlueprintId,
        transform: Transform,
        props: Vec<(String, Bytes)>,
    ) -> ReqId {
        let req = self.req();
        self.send(&ClientMsg::EntityAdd {
            req,
            blueprint,
            transform,
            props,
        });
        req
    }

    /// Modifies an entity's fields.
    pub fn modify_entity(&mut self, id: EntityId, patch: EntityPatch) -> ReqId {
        let req = self.req();
        self.send(&ClientMsg::EntityModify { req, id, patch });
        req
    }

    /// Removes an app.
    pub fn remove_entity(&mut self, id: EntityId) -> ReqId {
        let req = self.req();
        self.send(&ClientMsg::EntityRemove { req, id });
        req
    }

    /// Deletes a blueprint and every app instantiating it (admin).
    pub fn remove_blueprint(&mut self, id: BlueprintId) -> ReqId {
        let req = self.req();
        self.send(&ClientMsg::BlueprintRemove { req, id });
        req
    }

    /// Fires an event on an entity, to everyone else or to one player.
    pub fn send_entity_event(
        &mut self,
        entity: EntityId,
        name: impl Into<String>,
        data: Bytes,
        to: Option<EntityId>,
    ) {
        let blueprint_version = self
            .world
            .entities
            .get(&entity)
            .and_then(|e| e.blueprint.as_ref())
            .and_then(|b| self.world.blueprints.get(b))
            .map_or(0, |b| b.version);
        self.send(&ClientMsg::EntityEvent {
            entity,
            blueprint_version,
            name: name.into(),
            data,
            to,
        });
    }

    /// Changes a setting.
    pub fn modify_setting(&mut self, setting: Setting) -> ReqId {
        let req = self.req();
        self.send(&ClientMsg::SettingsModify { req, setting });
        req
    }

    // ---- moderation: typed forms of the moderation commands (see the server's
    // `moderation.rs` for who may use which). A user is named by display name or `#ID`. Each
    // answers `Acked` or `Refused`, a refusal after a `CommandReply` saying why. ----

    /// `/kick NAME [reason]`: disconnects a player; the reason is shown to them.
    pub fn kick(&mut self, name: &str, reason: Option<&str>) -> ReqId {
        self.moderate("kick", name, [reason])
    }

    /// `/mute NAME [duration]`: silences a user, for `duration` (`"10m"`, `"2h"`, `"7d"`) or
    /// until unmuted.
    pub fn mute(&mut self, name: &str, duration: Option<&str>) -> ReqId {
        self.moderate("mute", name, [duration])
    }

    /// `/unmute NAME`.
    pub fn unmute(&mut self, name: &str) -> ReqId {
        self.moderate("unmute", name, [])
    }

    /// `/ban NAME [duration] [reason]`: keeps a user out, for `duration` or for good; the
    /// reason is shown to them at every refused join.
    pub fn ban(&mut self, name: &str, duration: Option<&str>, reason: Option<&str>) -> ReqId {
        self.moderate("ban", name, [duration, reason])
    }

    /// `/unban NAME`.
    pub fn unban(&mut self, name: &str) -> ReqId {
        self.moderate("unban", name, [])
    }

    /// `/rank NAME RANK`: sets a user's rank (admin).
    pub fn set_rank(&mut self, name: &str, rank: Rank) -> ReqId {
        let rank = match rank {
            Rank::Visitor => "visitor",
            Rank::Builder => "builder",
            Rank::Admin => "admin",
        };
        self.moderate("rank", name, [Some(rank)])
    }

    /// `/revoke NAME`: invalidates every token of a user and disconnects them (admin).
    pub fn revoke_tokens(&mut self, name: &str) -> ReqId {
        self.moderate("revoke", name, [])
    }

    /// `/help`: the server answers with a `CommandReply` listing what this user's rank may do.
    pub fn help(&mut self) -> ReqId {
        self.send_command(vec!["help".into()])
    }

    fn moderate<const N: usize>(
        &mut self,
        cmd: &str,
        name: &str,
        rest: [Option<&str>; N],
    ) -> ReqId {
        let mut args = vec![cmd.to_string(), name.to_string()];
        args.extend(rest.into_iter().flatten().map(str::to_string));
        self.send_command(args)
    }

    /// Sends any message as it is, at once if connected (for tools and tests that need one not
    /// covered above, or a peer that misbehaves): a change sent this way is not held for its
    /// answer nor resent after a lost connection, and its id is the caller's to choose.
    pub fn send_raw(&mut self, msg: &ClientMsg) {
        if self.connected() {
            self.push_frame(msg);
        }
    }

    /// Says goodbye; the server closes the session.
    pub fn leave(&mut self) {
        self.send(&ClientMsg::Goodbye);
    }

    // ---- internals ----

    /// Sends `msg`: a change is held until answered (and sent only while joined: held ones go
    /// out on the join); anything else goes now on a live connection or is dropped.
    fn send(&mut self, msg: &ClientMsg) {
        if matches!(self.state, ClientState::Closed { .. }) {
            return;
        }
        if let Some(req) = msg.req() {
            if self.pending.len() >= PENDING_REQUESTS_MAX {
                self.events.push_back(ClientEvent::Refused {
                    req,
                    reason: Refusal::Busy,
                });
                return;
            }
            self.pending.push_back((req, msg.clone()));
            if self.state != ClientState::Joined {
                return;
            }
        } else if !self.connected() {
            return;
        }
        self.push_frame(msg);
    }

    fn push_frame(&mut self, msg: &ClientMsg) {
        let frame = codec::encode_frame(msg);
        self.figures.frames_up += 1;
        self.figures.bytes_up += frame.len() as u64;
        self.transmits.push_back(ClientTransmit::Frame {
            channel: msg.channel(),
            frame,
        });
    }

    /// What this client's connection cost so far and how its path behaves.
    pub fn figures(&self) -> ClientFigures {
        let mut f = self.figures;
        f.rtt_us = self.rtt.map_or(0, |r| r.as_micros() as u64);
        f.corrections = self
            .stream
            .as_ref()
            .map_or(0, |st| st.predicted.correction_stats().corrections);
        f
    }

    /// An answer to change `req` arrived: it is no longer held. (Each change is answered once
    /// on the connection the client reads: a change is resent only on a new connection, after
    /// the old one, which never answered it, was given up.)
    fn answered(&mut self, req: ReqId) {
        if let Some(i) = self.pending.iter().position(|(r, _)| *r == req) {
            self.pending.remove(i);
        }
    }

    fn close(&mut self, reason: CloseReason, detail: String) {
        if matches!(self.state, ClientState::Closed { .. }) {
            return;
        }
        self.state = ClientState::Closed {
            reason,
            detail: detail.clone(),
        };
        self.transmits.clear();
        self.pending.clear();
        self.connect_due = false;
        self.events
            .push_back(ClientEvent::Disconnected { reason, detail });
    }

    fn protocol(&mut self, what: &str) -> Result<(), ClientError> {
        self.close(CloseReason::ProtocolViolation, what.to_string());
        Err(ClientError::Protocol(what.to_string()))
    }

    fn handle_msg(&mut self, msg: ServerMsg, now: Time) -> Result<(), ClientError> {
        let joined = self.state == ClientState::Joined;
        match msg {
            ServerMsg::Welcome {
                protocol_version,
                session,
                tick_hz,
                transform,
                character,
            } => {
                if protocol_version != PROTOCOL_VERSION {
                    self.close(
                        CloseReason::VersionMismatch,
                        format!("server speaks protocol version {protocol_version}"),
                    );
                    return Ok(());
                }
                let (receiver, quantizer) =
                    match (ReplicaReceiver::new(&transform), Quantizer::new(&transform)) {
                        (Ok(r), Ok(q)) => (r, q),
                        _ => return self.protocol("invalid transform configuration in welcome"),
                    };
                if self.session != Some(session) {
                    // A different session: nothing of the old one can be resumed.
                    self.resume_token = None;
                }
                self.session = Some(session);
                self.next_ping = now + PING_INTERVAL;
                self.tick_hz = tick_hz;
                let period = Duration::from_micros(1_000_000 / u64::from(tick_hz.max(1)));
                self.stream = Some(Box::new(Stream {
                    receiver,
                    quantizer,
                    predicted: PredictedClient::new(tick_hz, character, 1),
                    up_seq: Seq(0),
                    ack_due: false,
                    last_up: now,
                    period,
                    own_transform: None,
                    moving: BTreeMap::new(),
                    buf: Vec::new(),
                    received: ReceivedTick::empty(),
                    rejected: 0,
                    upstream: UpstreamRule::default(),
                    own_sent: (None, 0),
                }));
            }
            ServerMsg::SnapshotPiece { index, count, data } => {
                if self.session.is_none() || joined {
                    return self.protocol("snapshot piece out of order");
                }
                self.figures.snapshot_pieces += 1;
                match self.pieces.push(index, count, &data.0) {
                    Ok(None) => {}
                    Ok(Some(s)) => return self.handle_msg(ServerMsg::Snapshot(s), now),
                    Err(e) => return self.protocol(&e.to_string()),
                }
            }
            ServerMsg::Snapshot(s) => {
                if self.session.is_none() || joined {
                    return self.protocol("snapshot out of order");
                }
                if self.pieces.in_progress() {
                    return self.protocol("snapshot while its pieces were arriving");
                }
                let s = *s;
                let resumed = self.rejoining && self.player == Some(s.player);
                let old = std::mem::take(&mut self.world);
                let old_rank = self.rank;
                // A spectator's snapshot names entity 0: it has no player.
                self.player = (s.player != crate::server::NO_PLAYER).then_some(s.player);
                self.user = Some(s.user);
                self.rank = s.rank;
                self.token = Some(s.auth_token);
                self.world = ClientWorld {
                    settings: s.settings,
                    spawn: s.spawn,
                    blueprints: s
                        .blueprints
                        .into_iter()
                        .map(|b| (b.id.clone(), b))
                        .collect(),
                    entities: s.entities.into_iter().map(|e| (e.id, e)).collect(),
                    chat: s.chat.into_iter().collect(),
                };
                self.state = ClientState::Joined;
                self.next_ping = now;
                self.attempt = 0;
                self.rejoining = false;
                if resumed {
                    self.report_changes(&old, old_rank);
                    let session = self.session.unwrap_or(SessionId(0));
                    self.events.push_back(ClientEvent::Resumed { session });
                } else {
                    self.held.clear();
                    self.events.push_back(ClientEvent::Joined {
                        player: s.player,
                        user: s.user,
                    });
                }
                // Every change not yet answered goes (again) now, in the order it was made: the
                // server answers one it already has with its original outcome.
                let held: Vec<ClientMsg> = self.pending.iter().map(|(_, m)| m.clone()).collect();
                for m in &held {
                    self.push_frame(m);
                }
            }
            ServerMsg::Close { reason, detail } => self.handle_transport_lost(reason, detail, now),
            ServerMsg::ResumeToken { token } => {
                if token.len() <= TOKEN_BYTES_MAX {
                    self.resume_token = Some(token);
                }
            }
            ServerMsg::Pong {
                client_time_us,
                server_time_us,
                server_tick,
            } => {
                if let Some(st) = &mut self.stream {
                    st.predicted
                        .handle_pong(client_time_us, server_time_us, server_tick, now);
                }
                let rtt = Duration::from_micros(now.as_micros().saturating_sub(client_time_us));
                self.rtt = Some(rtt);
                self.events.push_back(ClientEvent::Rtt(rtt));
            }
            ServerMsg::Ack { req } => {
                self.answered(req);
                self.events.push_back(ClientEvent::Acked(req));
            }
            ServerMsg::Refused { req, reason } => {
                self.answered(req);
                self.events.push_back(ClientEvent::Refused { req, reason });
            }
            other if !joined => {
                return self.protocol(&format!("{} before the snapshot", other.name()));
            }
            ServerMsg::ChatAdded(m) => {
                self.world.chat.push_back(m.clone());
                while self.world.chat.len() > CHAT_HISTORY_LEN {
                    self.world.chat.pop_front();
                }
                self.events.push_back(ClientEvent::Chat(m));
            }
            ServerMsg::ChatCleared => {
                self.world.chat.clear();
                self.events.push_back(ClientEvent::ChatCleared);
            }
            ServerMsg::BlueprintAdded(b) => {
                let id = b.id.clone();
                self.world.blueprints.insert(id.clone(), b);
                self.events.push_back(ClientEvent::BlueprintAdded(id));
                self.release_held();
            }
            ServerMsg::BlueprintModified { id, version, patch } => {
                // Looked up before inserting: the common case (a known blueprint) then costs
                // no copy of the id, and every change is broadcast to every client.
                let b = match self.world.blueprints.get_mut(&id) {
                    Some(b) => b,
                    None => self
                        .world
                        .blueprints
                        .entry(id.clone())
                        .or_insert_with(|| Blueprint {
                            id: id.clone(),
                            ..Default::default()
                        }),
                };
                patch.apply(b);
                b.version = version;
                self.events
                    .push_back(ClientEvent::BlueprintModified { id, version });
                self.release_held();
            }
            ServerMsg::EntityAdded(e) => {
                let id = e.id;
                self.sync_world_transforms();
                self.world.entities.insert(id, e);
                self.events.push_back(ClientEvent::EntityAdded(id));
                self.release_held();
            }
            ServerMsg::EntityModified { id, patch } => {
                if patch.transform.is_some() {
                    self.sync_world_transforms();
                }
                if let Some(e) = self.world.entities.get_mut(&id) {
                    patch.apply(e);
                    self.events.push_back(ClientEvent::EntityModified(id));
                }
            }
            ServerMsg::EntityRemoved(id) => {
                if let Some(st) = &mut self.stream {
                    let at = st.receiver.newest_tick().unwrap_or_default();
                    st.receiver.forget_at(id, at);
                    st.predicted.remove_entity(id);
                    st.moving.remove(&id);
                }
                if self.world.entities.remove(&id).is_some() {
                    self.events.push_back(ClientEvent::EntityRemoved(id));
                }
                self.held.retain(|h| h.entity != id);
            }
            ServerMsg::EntityEvent {
                entity,
                blueprint_version,
                name,
                data,
                from,
            } => {
                let ev = HeldEvent {
                    entity,
                    version: blueprint_version,
                    name,
                    data,
                    from,
                };
                if self.event_ready(&ev) {
                    self.emit_event(ev);
                } else {
                    if self.held.len() >= HELD_EVENTS_MAX {
                        self.held.pop_front();
                    }
                    self.held.push_back(ev);
                }
            }
            ServerMsg::PlayerTeleport {
                position,
                rotation_y,
            } => {
                self.sync_world_transforms();
                if let Some(e) = self.player.and_then(|p| self.world.entities.get_mut(&p)) {
                    e.transform.position = position;
                }
                self.events.push_back(ClientEvent::Teleported {
                    position,
                    rotation_y,
                });
            }
            ServerMsg::PlayerPush { force } => self.events.push_back(ClientEvent::Pushed { force }),
            ServerMsg::SettingsModified(s) => {
                s.apply(&mut self.world.settings);
                self.events.push_back(ClientEvent::SettingsModified(s));
            }
            ServerMsg::SpawnModified(s) => {
                self.world.spawn = s;
                self.events.push_back(ClientEvent::SpawnModified(s));
            }
            ServerMsg::RankModified { user, rank } => {
                if Some(user) == self.user {
                    self.rank = rank;
                }
                self.events
                    .push_back(ClientEvent::RankModified { user, rank });
            }
            ServerMsg::Muted { player, muted } => {
                self.events.push_back(ClientEvent::Muted { player, muted })
            }
            ServerMsg::BlueprintRemoved(id) => {
                if self.world.blueprints.remove(&id).is_some() {
                    self.events.push_back(ClientEvent::BlueprintRemoved(id));
                }
            }
            ServerMsg::CommandReply { req, text } => self
                .events
                .push_back(ClientEvent::CommandReply { req, text }),
            ServerMsg::AuthToken { token } => {
                self.token = Some(token.clone());
                self.events.push_back(ClientEvent::TokenRefreshed(token));
            }
        }
        Ok(())
    }

    /// After a resume, reports what differs between the mirror before (`old`) and the new
    /// snapshot as the events the game would have seen: chat messages newer than the last one
    /// seen, entities and blueprints added, changed or removed, spawn and own rank.
    fn report_changes(&mut self, old: &ClientWorld, old_rank: Rank) {
        let last_chat = old.chat.back().map(|m| m.id);
        let new_chat: Vec<ChatMessage> = self
            .world
            .chat
            .iter()
            .filter(|m| last_chat.is_none_or(|l| m.id > l))
            .cloned()
            .collect();
        for m in new_chat {
            self.events.push_back(ClientEvent::Chat(m));
        }
        for (id, b) in &self.world.blueprints {
            match old.blueprints.get(id) {
                None => self
                    .events
                    .push_back(ClientEvent::BlueprintAdded(id.clone())),
                Some(o) if o != b => self.events.push_back(ClientEvent::BlueprintModified {
                    id: id.clone(),
                    version: b.version,
                }),
                Some(_) => {}
            }
        }
        let same = |a: &Entity, b: &Entity| {
            a.props == b.props && a.owner == b.owner && a.blueprint == b.blueprint
        };
        for (id, e) in &self.world.entities {
            match old.entities.get(id) {
                None => self.events.push_back(ClientEvent::EntityAdded(*id)),
                Some(o) if !same(o, e) => self.events.push_back(ClientEvent::EntityModified(*id)),
                Some(_) => {}
            }
        }
        for id in old.entities.keys() {
            if !self.world.entities.contains_key(id) {
                self.events.push_back(ClientEvent::EntityRemoved(*id));
            }
        }
        if old.spawn != self.world.spawn {
            self.events
                .push_back(ClientEvent::SpawnModified(self.world.spawn));
        }
        if old_rank != self.rank {
            if let Some(user) = self.user {
                self.events.push_back(ClientEvent::RankModified {
                    user,
                    rank: self.rank,
                });
            }
        }
        let world = &self.world;
        self.held.retain(|h| world.entities.contains_key(&h.entity));
        self.release_held();
    }

    fn event_ready(&self, ev: &HeldEvent) -> bool {
        let have = self
            .world
            .entities
            .get(&ev.entity)
            .and_then(|e| e.blueprint.as_ref())
            .and_then(|b| self.world.blueprints.get(b))
            .map_or(0, |b| b.version);
        ev.version <= have
    }

    fn emit_event(&mut self, ev: HeldEvent) {
        self.events.push_back(ClientEvent::EntityEvent {
            entity: ev.entity,
            name: ev.name,
            data: ev.data,
            from: ev.from,
        });
    }

    fn release_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        for ev in held {
            if self.event_ready(&ev) {
                self.emit_event(ev);
            } else {
                self.held.push_back(ev);
            }
        }
    }
}
