//! The one persistence vocabulary: what a store loads ([`World`]), what the core asks it to make
//! durable ([`Effect`], [`Change`]) and what it reports back ([`StoreReport`]).
//!
//! The core emits every change the store needs as an effect, including the state of apps moved
//! by datagrams (at the end of each tick they moved in, for the store to coalesce) and the id
//! counters ([`Change::ReserveIds`]). A store's only input is this effect type; it never reads the core's
//! world.
//!
//! ## Ids are never handed out twice
//! Entity, user and chat ids reach clients the moment they are handed out, before any change
//! naming them is durable. So the core reserves ids ahead, in blocks ([`ID_RESERVE_BLOCK`]),
//! with a [`Change::ReserveIds`] effect, and a restarted core starts past the last reservation
//! the store made durable. A new block is asked for when half of the current one is left, so an
//! id is handed out only while the reservation covering it has had at least half a block of
//! allocations to become durable; the store writes effects in order, in commits of a few
//! milliseconds.

use std::collections::{BTreeMap, VecDeque};

use crate::types::*;

/// Ids of each kind reserved per [`Change::ReserveIds`]: 4,096. Half a block (2,048 ids) is
/// handed out on the strength of the previous reservation while the next one is written; no
/// store takes that many allocations' time (thousands of joins or entity additions) to commit
/// one queued change. A restart skips at most one block of ids of each kind: entity ids are
/// `u32` (4 × 10⁹), so a world survives a million restarts.
pub const ID_RESERVE_BLOCK: u32 = 4096;

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
    /// Last [`crate::wire::limits::CHAT_HISTORY_LEN`] chat messages, oldest first.
    pub chat: VecDeque<ChatMessage>,
    /// Known users.
    pub users: BTreeMap<UserId, User>,
    /// Next entity id to allocate (a loaded world: the last durable reservation).
    pub next_entity_id: u32,
    /// Next user id to allocate.
    pub next_user_id: u64,
    /// Next chat message id.
    pub next_chat_id: u64,
    /// Changes the store made durable with an acknowledgement token, oldest first (a store
    /// keeps a bounded window of the newest). A restarted core answers a resend of one of them
    /// (a client whose `Ack` was lost in the crash, resuming the session it names) with `Ack`
    /// instead of applying it again. Written by the store atomically with the change itself.
    pub acked: Vec<AckToken>,
}

impl World {
    /// The effective rank of a user: at least the world's default rank.
    pub fn effective_rank(&self, user: UserId) -> Rank {
        let stored = self.users.get(&user).map(|u| u.rank).unwrap_or_default();
        stored.max(self.settings.default_rank)
    }

    /// The id counters.
    pub fn next_ids(&self) -> NextIds {
        NextIds {
            entity: self.next_entity_id,
            user: self.next_user_id,
            chat: self.next_chat_id,
        }
    }
}

/// The next ids of each kind (or, in [`Change::ReserveIds`], the first ids not yet reserved).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NextIds {
    /// The next [`EntityId`].
    pub entity: u32,
    /// The next [`UserId`].
    pub user: u64,
    /// The next [`ChatMessage::id`].
    pub chat: u64,
}

/// A change the store must make durable. Each variant carries the whole new value (not a
/// patch), so applying a change never reads the old one and a later change of the same thing
/// simply replaces it.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A blueprint was added or modified (its `version` is stored beside it).
    PutBlueprint(Blueprint),
    /// A blueprint was removed. The store supports it; the core emits it once the protocol
    /// has a way to remove blueprints (the moderation work).
    DeleteBlueprint(BlueprintId),
    /// A persistent entity (an app) was added or changed reliably. Supersedes any
    /// [`Change::PutEntityState`] of the same entity before it.
    PutEntity(Entity),
    /// A persistent entity was removed. Supersedes any state of it submitted before.
    DeleteEntity(EntityId),
    /// Fast-changing state of an app (its transform while a client moves it by datagrams),
    /// emitted at most once per app per tick, at the end of a tick it moved in. Nobody waits on
    /// it: a store keeps only the newest value per app and writes it at its own flush interval
    /// (a crash loses at most that interval of motion).
    PutEntityState(Entity),
    /// The world settings changed.
    PutSettings(Settings),
    /// The spawn point changed.
    PutSpawn(Spawn),
    /// A user was added or changed: name, rank, mute, ban, and `last_position` when they leave.
    PutUser(User),
    /// A chat message was accepted. The store keeps the last [`crate::wire::limits::CHAT_HISTORY_LEN`] messages,
    /// ordered by [`ChatMessage::id`].
    AppendChat(ChatMessage),
    /// The chat history was cleared.
    ClearChat,
    /// Ids below these are (about to be) handed out: a restarted core must start at or past
    /// them. Counters only grow: a store raises each stored counter to at least the given
    /// value, never lowers it. See the module documentation.
    ReserveIds(NextIds),
}

/// Identifies a change waiting to be made durable before its sender is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AckToken {
    /// The session that made the change.
    pub session: SessionId,
    /// The change's id.
    pub req: ReqId,
    /// The user whose session made the change. A store that keeps the outcomes of
    /// acknowledged changes ([`World::acked`]) keeps it beside them, so a client that comes
    /// back after a restart as the same user (see [`crate::server`]'s resume) finds them.
    pub user: UserId,
}

/// A persistence effect: a change and, if its sender is waiting, the token to acknowledge.
#[derive(Clone, Debug, PartialEq)]
pub struct Effect {
    /// What to store.
    pub change: Change,
    /// Acknowledge this once durable (`None` for changes nobody waits on).
    pub ack: Option<AckToken>,
}

/// What the store says about effects the core handed it: the core's one persistence input
/// ([`crate::server::ServerCore::handle_store`]). "The store is full" and "the disk fails" are
/// different answers: the first is back-pressure (refuse this change, the next may pass), the
/// second makes the core refuse every change up front until a commit succeeds again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreReport {
    /// A commit made these changes durable (possibly none: a commit without acknowledgements).
    /// Storage works: changes are accepted again if they were refused.
    Durable(Vec<AckToken>),
    /// The disk failed: these changes were not stored (possibly none). Their senders are
    /// refused with [`crate::wire::msg::Refusal::Storage`], and so is every new change until a
    /// [`StoreReport::Durable`] arrives.
    Failed(Vec<AckToken>),
    /// The store's queue was full when these changes arrived: the disk is behind. Their senders
    /// are refused with [`crate::wire::msg::Refusal::Busy`] (retry later); storage still works.
    Full(Vec<AckToken>),
}
