//! The wire messages. `ClientMsg` travels client → server, `ServerMsg` server → client, both on
//! reliable streams (see [`Channel`]); transform and input datagrams have their own bit-packed
//! codec in [`crate::transform`] and [`crate::predict`]. PROTOCOL.md describes every field.
//!
//! Encoding is postcard (varint integers, length-prefixed strings, enum tags as varints). The
//! variant order is the wire tag: **append new variants at the end only**; the golden tests in
//! `proto/tests/golden.rs` pin every encoding so a change is a deliberate act.

use serde::{Deserialize, Serialize};

use crate::types::*;

/// Protocol version carried in `Hello` and `Welcome`. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 1;
/// The ALPN protocol id negotiated by QUIC. A peer without it fails the TLS handshake.
pub const ALPN: &[u8] = b"neonet/1";

/// The reliable stream a message travels on. Each is one ordered QUIC stream per direction, so a
/// large frame on one never delays another: a big blueprint on `World` does not hold up `Chat`.
/// Order is guaranteed within a channel, not across channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum Channel {
    /// Hello, ping/pong, acks and refusals, kick, close, moderation, rank.
    Control = 0,
    /// Welcome, snapshot, blueprints, entity lifecycle and modification, settings, spawn, player
    /// teleport/push. One stream so a client never sees an entity before its blueprint, nor
    /// anything before the snapshot it builds on.
    World = 1,
    /// Chat and commands.
    Chat = 2,
    /// Entity events (held by the client until the blueprint version they name has arrived).
    Events = 3,
}

impl Channel {
    /// All channels, in stream-opening order.
    pub const ALL: [Channel; 4] = [
        Channel::Control,
        Channel::World,
        Channel::Chat,
        Channel::Events,
    ];

    /// The channel for a stream's first byte.
    pub fn from_u8(b: u8) -> Option<Channel> {
        Channel::ALL.get(b as usize).copied()
    }
}

/// A client → server message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// First message of every connection. The server answers `Welcome` + `Snapshot` or `Close`.
    Hello {
        /// Must equal the server's [`PROTOCOL_VERSION`].
        protocol_version: u16,
        /// Display name wanted.
        name: String,
        /// An auth token from an earlier snapshot; `None` to be issued a new user.
        token: Option<String>,
    },
    /// Clock probe, answered by `Pong`.
    Ping {
        /// The client's own clock, microseconds, echoed back.
        client_time_us: u64,
    },
    /// A slash command split into arguments (`/spawn set` → `["spawn", "set"]`).
    Command {
        /// Change id.
        req: ReqId,
        /// Arguments, the command name first.
        args: Vec<String>,
    },
    /// Say something. The server stamps sender, name, id and time.
    Chat {
        /// Change id.
        req: ReqId,
        /// The text.
        body: String,
    },
    /// Add a blueprint (builder).
    BlueprintAdd {
        /// Change id.
        req: ReqId,
        /// The blueprint; its version is kept as given.
        blueprint: Blueprint,
    },
    /// Modify a blueprint (builder): accepted iff `version` is higher than the stored one.
    BlueprintModify {
        /// Change id.
        req: ReqId,
        /// Which blueprint.
        id: BlueprintId,
        /// The new version (usually the known version + 1).
        version: u32,
        /// The fields changed.
        patch: BlueprintPatch,
    },
    /// Place an app (builder). The server allocates the id and answers `Ack` then `EntityAdded`.
    EntityAdd {
        /// Change id.
        req: ReqId,
        /// Blueprint it instantiates.
        blueprint: BlueprintId,
        /// Where.
        transform: Transform,
        /// Initial fields.
        props: Vec<(String, Bytes)>,
    },
    /// Modify an entity's non-transform fields (owner, or builder).
    EntityModify {
        /// Change id.
        req: ReqId,
        /// Which entity.
        id: EntityId,
        /// The change.
        patch: EntityPatch,
    },
    /// Remove an app (builder). Players cannot be removed this way.
    EntityRemove {
        /// Change id.
        req: ReqId,
        /// Which entity.
        id: EntityId,
    },
    /// Fire an event on an entity, relayed to everyone else or to one player.
    EntityEvent {
        /// The entity.
        entity: EntityId,
        /// The blueprint version the sender had when firing it.
        blueprint_version: u32,
        /// Event name.
        name: String,
        /// Payload.
        data: Bytes,
        /// `Some(player entity)` to deliver to one player only.
        to: Option<EntityId>,
    },
    /// Teleport another player (builder) or oneself.
    PlayerTeleport {
        /// The target player entity.
        target: EntityId,
        /// Destination.
        position: Vec3,
        /// Facing, radians about +Y.
        rotation_y: f32,
    },
    /// Push another player (builder) or oneself.
    PlayerPush {
        /// The target player entity.
        target: EntityId,
        /// Impulse, m/s.
        force: Vec3,
    },
    /// Change a setting (builder).
    SettingsModify {
        /// Change id.
        req: ReqId,
        /// The change.
        setting: Setting,
    },
    /// Set the spawn point to the sender's position, or clear it (builder).
    SpawnModify {
        /// Change id.
        req: ReqId,
        /// `true`: set to where the sender's player stands; `false`: reset to the origin.
        set: bool,
    },
    /// Change a user's rank (admin).
    ModifyRank {
        /// Change id.
        req: ReqId,
        /// The user.
        user: UserId,
        /// The new rank.
        rank: Rank,
    },
    /// Kick a player (strictly higher rank than theirs).
    Kick {
        /// Change id.
        req: ReqId,
        /// The player entity.
        target: EntityId,
    },
    /// Mute or unmute a player (strictly higher rank than theirs).
    Mute {
        /// Change id.
        req: ReqId,
        /// The player entity.
        target: EntityId,
        /// Muted or not.
        muted: bool,
    },
    /// The client is leaving; the server closes with `CloseReason::ClientLeft`.
    Goodbye,
    /// First message of a spectator's connection, instead of `Hello`: the same fields and
    /// checks, and a camera position for interest. A spectator has no player entity (its
    /// `Snapshot` names entity 0, which no entity ever has), receives the world and sends no
    /// player state.
    Spectate {
        /// Must equal the server's [`PROTOCOL_VERSION`].
        protocol_version: u16,
        /// Display name wanted.
        name: String,
        /// An auth token from an earlier snapshot; `None` to be issued a new user.
        token: Option<String>,
        /// Where the camera is, metres: entities near it are sent first and within the
        /// interest radius at all.
        camera: Vec3,
    },
    /// A spectator's camera moved (spectators only).
    SpectatorCamera {
        /// Where the camera is now, metres.
        position: Vec3,
    },
    /// Delete a blueprint and every app instantiating it (admin). The server answers `Ack`
    /// and tells everyone `EntityRemoved` for each app, then `BlueprintRemoved`.
    BlueprintRemove {
        /// Change id.
        req: ReqId,
        /// Which blueprint.
        id: BlueprintId,
    },
    /// First message of a connection that comes back after its previous one was lost: resumes
    /// `session` if the server still keeps it (its grace period) and `resume_token` is the one it
    /// last issued to that session for the same user as `token`; the server then answers
    /// `Welcome` with the same session, a fresh `Snapshot` and a new `ResumeToken`. Otherwise it
    /// is handled exactly as `Hello { protocol_version, name, token }` (a fresh join).
    Resume {
        /// Must equal the server's [`PROTOCOL_VERSION`].
        protocol_version: u16,
        /// Display name, as in `Hello`.
        name: String,
        /// The user's auth token, as in `Hello`: a resume is only granted to the same user.
        token: Option<String>,
        /// The session to resume.
        session: SessionId,
        /// The single-use token the server last sent this session in `ResumeToken`.
        resume_token: String,
    },
}

/// A server → client message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Hello accepted. A `Snapshot` follows on the world channel.
    Welcome {
        /// The server's [`PROTOCOL_VERSION`].
        protocol_version: u16,
        /// This join's session.
        session: SessionId,
        /// Fixed server tick rate, Hz.
        tick_hz: u16,
        /// The transform codec's configuration (bounds, precision): the client quantizes and
        /// decodes with exactly this.
        transform: Box<crate::transform::TransformConfig>,
        /// The movement model's tunables, for client prediction.
        character: crate::predict::CharacterConfig,
    },
    /// The whole world, sent once after `Welcome`.
    Snapshot(Box<Snapshot>),
    /// Answer to `Ping`.
    Pong {
        /// The client's time, echoed.
        client_time_us: u64,
        /// Server time when answering, microseconds since the server's epoch.
        server_time_us: u64,
        /// Server tick when answering.
        server_tick: u64,
    },
    /// The change `req` was applied (and, with persistence, is durable).
    Ack {
        /// The client's change id.
        req: ReqId,
    },
    /// The change `req` was refused; nothing changed.
    Refused {
        /// The client's change id.
        req: ReqId,
        /// Why.
        reason: Refusal,
    },
    /// A chat message (from anyone, including the receiver's own, as stamped).
    ChatAdded(ChatMessage),
    /// Chat history was cleared.
    ChatCleared,
    /// A blueprint was added.
    BlueprintAdded(Blueprint),
    /// A blueprint changed to `version`. Also the answer to a losing `BlueprintModify`: then the
    /// patch is full (every field) and the client replaces its copy.
    BlueprintModified {
        /// Which.
        id: BlueprintId,
        /// Its version now.
        version: u32,
        /// The fields changed.
        patch: BlueprintPatch,
    },
    /// An entity appeared (a player joined or an app was placed).
    EntityAdded(Entity),
    /// An entity's fields changed.
    EntityModified {
        /// Which.
        id: EntityId,
        /// The change.
        patch: EntityPatch,
    },
    /// An entity event, stamped with its sender.
    EntityEvent {
        /// The entity.
        entity: EntityId,
        /// Blueprint version the event needs.
        blueprint_version: u32,
        /// Event name.
        name: String,
        /// Payload.
        data: Bytes,
        /// The sending player entity (stamped by the server).
        from: Option<EntityId>,
    },
    /// An entity is gone for good (not merely out of interest).
    EntityRemoved(EntityId),
    /// Your player was teleported.
    PlayerTeleport {
        /// Destination.
        position: Vec3,
        /// Facing, radians about +Y.
        rotation_y: f32,
    },
    /// Your player was pushed.
    PlayerPush {
        /// Impulse, m/s.
        force: Vec3,
    },
    /// A setting changed.
    SettingsModified(Setting),
    /// The spawn point changed.
    SpawnModified(Spawn),
    /// A user's rank changed.
    RankModified {
        /// The user.
        user: UserId,
        /// New rank.
        rank: Rank,
    },
    /// A player was muted or unmuted.
    Muted {
        /// The player entity.
        player: EntityId,
        /// Muted or not.
        muted: bool,
    },
    /// The server is closing this session; the connection closes right after.
    Close {
        /// Why.
        reason: CloseReason,
        /// Human-readable detail.
        detail: String,
    },
    /// A blueprint was deleted (its apps were removed just before, each with `EntityRemoved`).
    BlueprintRemoved(BlueprintId),
    /// Text answering a command (`/help`'s list, why a moderation command was refused), sent
    /// to its sender only, before the command's `Ack` or `Refused`.
    CommandReply {
        /// The command's change id.
        req: ReqId,
        /// The text; lines separated by `\n`.
        text: String,
    },
    /// A fresh auth token, replacing the one from the snapshot before that one expires (sent
    /// when half its lifetime has passed). Present it in the next `Hello`.
    AuthToken {
        /// The token.
        token: String,
    },
    /// The single-use token to resume this session after a lost connection (`ClientMsg::Resume`),
    /// sent after every `Snapshot`. A resume consumes it; the next one comes with the resume.
    ResumeToken {
        /// The token (at most [`crate::wire::limits::TOKEN_BYTES_MAX`] bytes).
        token: String,
    },
    /// One piece of a snapshot whose encoding is larger than
    /// [`crate::wire::limits::SNAPSHOT_PIECE_BYTES_MAX`], sent in its place: the encoded
    /// `Snapshot` message (tag included), cut into pieces of that size, in order, each sent
    /// only while the connection's send queue has room. The client joins once the last piece
    /// has arrived and the whole decodes as a `Snapshot`. Nothing else reaches the joiner on a
    /// reliable channel between the first piece and the last.
    SnapshotPiece {
        /// The piece's place, from 0.
        index: u32,
        /// How many pieces the snapshot has (at most
        /// [`crate::wire::limits::SNAPSHOT_PIECES_MAX`]); the same in every piece.
        count: u32,
        /// The piece: [`crate::wire::limits::SNAPSHOT_PIECE_BYTES_MAX`] bytes, the last one
        /// 1 to that many.
        data: Bytes,
    },
}

/// Everything a newcomer needs, sent once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The newcomer's own player entity.
    pub player: EntityId,
    /// The newcomer's user.
    pub user: UserId,
    /// Its effective rank.
    pub rank: Rank,
    /// Server tick at snapshot time.
    pub server_tick: u64,
    /// Server time at snapshot time, microseconds since the server's epoch.
    pub server_time_us: u64,
    /// World settings.
    pub settings: Settings,
    /// Spawn point.
    pub spawn: Spawn,
    /// Last [`crate::wire::limits::CHAT_HISTORY_LEN`] chat messages, oldest first.
    pub chat: Vec<ChatMessage>,
    /// All blueprints.
    pub blueprints: Vec<Blueprint>,
    /// All entities (players and apps), after their blueprints.
    pub entities: Vec<Entity>,
    /// Token to present in the next `Hello` to be the same user.
    pub auth_token: String,
}

/// Why a change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The sender's rank does not allow it.
    #[error("not allowed for your rank")]
    Rank,
    /// The sender does not own the entity.
    #[error("not the owner")]
    NotOwner,
    /// The thing named does not exist.
    #[error("no such thing")]
    NotFound,
    /// Already exists (blueprint id).
    #[error("already exists")]
    Exists,
    /// A blueprint version not higher than the stored one; the current blueprint follows.
    #[error("version conflict")]
    Conflict,
    /// A field breaks a limit (length, count, bounds).
    #[error("invalid or over a limit")]
    Invalid,
    /// The sender is muted.
    #[error("muted")]
    Muted,
    /// Too many changes too fast.
    #[error("rate limited")]
    RateLimited,
    /// The change could not be made durable (disk error). It is not acknowledged and may be
    /// lost on restart; while the store is failing, new changes are refused up front.
    #[error("storage unavailable")]
    Storage,
    /// Unknown command.
    #[error("unknown command")]
    UnknownCommand,
    /// The world is full (entities or blueprints).
    #[error("world full")]
    WorldFull,
    /// The server's storage is behind (its queue of changes to write is full): the change was
    /// applied and relayed but not queued for storage, and is not acknowledged. Unlike
    /// [`Refusal::Storage`] nothing is broken: a later change may pass. Retry after a moment.
    #[error("storage busy: retry later")]
    Busy,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CloseReason {
    /// The world is at its player limit.
    #[error("player limit reached")]
    PlayerLimit,
    /// The same user joined again elsewhere; the newer session replaced this one.
    #[error("same user joined elsewhere")]
    DuplicateUser,
    /// Kicked by a moderator.
    #[error("kicked by moderator")]
    Moderation,
    /// The peer broke the protocol (malformed, oversize or unknown input, a limit).
    #[error("protocol violation")]
    ProtocolViolation,
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch")]
    VersionMismatch,
    /// The token was refused or the user is banned.
    #[error("authentication failed")]
    AuthFailed,
    /// The server is shutting down.
    #[error("server shutting down")]
    ServerShutdown,
    /// No traffic for too long.
    #[error("timed out")]
    Timeout,
    /// The client said goodbye.
    #[error("client left")]
    ClientLeft,
    /// The client sent too much too fast.
    #[error("flooding")]
    Flooding,
}

impl ClientMsg {
    /// The channel this message travels on.
    pub fn channel(&self) -> Channel {
        use ClientMsg::*;
        match self {
            Hello { .. }
            | Ping { .. }
            | ModifyRank { .. }
            | Kick { .. }
            | Mute { .. }
            | Goodbye
            | Spectate { .. }
            | SpectatorCamera { .. }
            | Resume { .. } => Channel::Control,
            Command { .. } | Chat { .. } => Channel::Chat,
            EntityEvent { .. } => Channel::Events,
            BlueprintAdd { .. }
            | BlueprintModify { .. }
            | EntityAdd { .. }
            | EntityModify { .. }
            | EntityRemove { .. }
            | PlayerTeleport { .. }
            | PlayerPush { .. }
            | SettingsModify { .. }
            | SpawnModify { .. }
            | BlueprintRemove { .. } => Channel::World,
        }
    }

    /// The message's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        use ClientMsg::*;
        match self {
            Hello { .. } => "hello",
            Ping { .. } => "ping",
            Command { .. } => "command",
            Chat { .. } => "chat",
            BlueprintAdd { .. } => "blueprint_add",
            BlueprintModify { .. } => "blueprint_modify",
            EntityAdd { .. } => "entity_add",
            EntityModify { .. } => "entity_modify",
            EntityRemove { .. } => "entity_remove",
            EntityEvent { .. } => "entity_event",
            PlayerTeleport { .. } => "player_teleport",
            PlayerPush { .. } => "player_push",
            SettingsModify { .. } => "settings_modify",
            SpawnModify { .. } => "spawn_modify",
            ModifyRank { .. } => "modify_rank",
            Kick { .. } => "kick",
            Mute { .. } => "mute",
            Goodbye => "goodbye",
            Spectate { .. } => "spectate",
            SpectatorCamera { .. } => "spectator_camera",
            BlueprintRemove { .. } => "blueprint_remove",
            Resume { .. } => "resume",
        }
    }

    /// The change id, for messages that carry one.
    pub fn req(&self) -> Option<ReqId> {
        use ClientMsg::*;
        match self {
            Command { req, .. }
            | Chat { req, .. }
            | BlueprintAdd { req, .. }
            | BlueprintModify { req, .. }
            | EntityAdd { req, .. }
            | EntityModify { req, .. }
            | EntityRemove { req, .. }
            | SettingsModify { req, .. }
            | SpawnModify { req, .. }
            | ModifyRank { req, .. }
            | Kick { req, .. }
            | Mute { req, .. }
            | BlueprintRemove { req, .. } => Some(*req),
            _ => None,
        }
    }
}

impl ServerMsg {
    /// The channel this message travels on.
    pub fn channel(&self) -> Channel {
        use ServerMsg::*;
        match self {
            Pong { .. }
            | Ack { .. }
            | Refused { .. }
            | RankModified { .. }
            | Muted { .. }
            | Close { .. }
            | CommandReply { .. }
            | AuthToken { .. } => Channel::Control,
            ChatAdded(_) | ChatCleared => Channel::Chat,
            EntityEvent { .. } => Channel::Events,
            Welcome { .. }
            | Snapshot(_)
            | BlueprintAdded(_)
            | BlueprintModified { .. }
            | EntityAdded(_)
            | EntityModified { .. }
            | EntityRemoved(_)
            | PlayerTeleport { .. }
            | PlayerPush { .. }
            | SettingsModified(_)
            | SpawnModified(_)
            | BlueprintRemoved(_)
            | ResumeToken { .. }
            | SnapshotPiece { .. } => Channel::World,
        }
    }

    /// The message's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        use ServerMsg::*;
        match self {
            Welcome { .. } => "welcome",
            Snapshot(_) => "snapshot",
            Pong { .. } => "pong",
            Ack { .. } => "ack",
            Refused { .. } => "refused",
            ChatAdded(_) => "chat_added",
            ChatCleared => "chat_cleared",
            BlueprintAdded(_) => "blueprint_added",
            BlueprintModified { .. } => "blueprint_modified",
            EntityAdded(_) => "entity_added",
            EntityModified { .. } => "entity_modified",
            EntityEvent { .. } => "entity_event",
            EntityRemoved(_) => "entity_removed",
            PlayerTeleport { .. } => "player_teleport",
            PlayerPush { .. } => "player_push",
            SettingsModified(_) => "settings_modified",
            SpawnModified(_) => "spawn_modified",
            RankModified { .. } => "rank_modified",
            Muted { .. } => "muted",
            Close { .. } => "close",
            BlueprintRemoved(_) => "blueprint_removed",
            CommandReply { .. } => "command_reply",
            AuthToken { .. } => "auth_token",
            ResumeToken { .. } => "resume_token",
            SnapshotPiece { .. } => "snapshot_piece",
        }
    }
}
