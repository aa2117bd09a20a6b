//! What the store consumes (persistence effects) and what it reports back (commits).

use std::sync::Arc;
use std::time::Duration;

use neonet_proto::types::{
    Blueprint, BlueprintId, ChatMessage, Entity, EntityId, Settings, Spawn, User,
};
use serde::{Deserialize, Serialize};

use super::{AckToken, StoreError};

/// One persistence effect: what changed in the world, as plain data.
///
/// A superset of the core's [`neonet_proto::server::Change`] (which converts with `From`): it
/// adds what the store offers beyond the core's current needs (blueprint removal, entity state
/// for the dirty set, id counters).
///
/// Each variant carries the whole new value (not a patch), so applying a change never needs to
/// read the old one and a later change of the same thing simply replaces it.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A blueprint was added or modified (its `version` is stored beside it).
    PutBlueprint(Blueprint),
    /// A blueprint was removed.
    DeleteBlueprint(BlueprintId),
    /// A persistent entity (an app) was added or changed reliably. Supersedes any value of the
    /// same entity marked dirty before it.
    PutEntity(Entity),
    /// A persistent entity was removed. Supersedes any value of it marked dirty before it.
    DeleteEntity(EntityId),
    /// Fast-changing entity state (an app's transform while moving, app state). Without an
    /// [`AckToken`] it goes to the dirty set, exactly like [`super::Store::mark_dirty`], and is
    /// written at the next dirty flush. With a token it is written through the queue like
    /// [`Change::PutEntity`]: an acknowledgement needs durability now, not at the next flush.
    PutEntityState(Entity),
    /// The world settings changed.
    PutSettings(Settings),
    /// The spawn point changed.
    PutSpawn(Spawn),
    /// A user was added or changed: name, rank, mute, ban, and `last_position` when they leave.
    PutUser(User),
    /// A chat message was accepted. The store keeps the last
    /// [`super::CHAT_HISTORY_MAX`] messages, ordered by [`ChatMessage::id`].
    AppendChat(ChatMessage),
    /// The chat history was cleared.
    ClearChat,
    /// The id counters moved on. Stored so that ids are never reused after a restart, even
    /// for things that were deleted. Counters only grow: each field is raised to at least the
    /// given value, never lowered. The store also raises them itself past every entity, user
    /// and chat id it writes (in the same transaction), so this is only needed for ids handed
    /// out without a persisted change (a player entity, say).
    SetNextIds(NextIds),
}

/// The next ids the server will hand out. [`super::LoadedWorld::next_ids`] is never below one
/// past the largest id found on disk, whatever was stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextIds {
    /// The next [`EntityId`].
    pub entity: u32,
    /// The next [`neonet_proto::types::UserId`].
    pub user: u64,
    /// The next [`ChatMessage::id`].
    pub chat: u64,
}

/// The report of one write transaction, given to the commit callback.
#[derive(Clone, Debug)]
pub struct Commit {
    /// Commit attempt number, from 1, counting failed attempts too.
    pub seq: u64,
    /// The tokens of every acknowledged change in this transaction, in submission order.
    pub acks: Vec<AckToken>,
    /// `Ok` when the transaction is durably on disk (one fsync for the whole batch): every token
    /// in [`Commit::acks`] may be acknowledged. `Err` when nothing of it was written: every token
    /// must be refused (`Refusal::Storage`).
    pub outcome: Result<(), Arc<StoreError>>,
    /// Changes in the transaction (acknowledged or not), not counting dirty entities.
    pub changes: usize,
    /// Dirty entities flushed by the transaction.
    pub dirty_entities: usize,
    /// Time from opening the write transaction to `commit` returning (apply + fsync).
    pub commit_latency: Duration,
    /// How long the oldest change of the batch waited between its submission and the end of
    /// the commit: an upper bound on the acknowledgement latency the store added.
    pub oldest_wait: Duration,
}

impl Commit {
    /// Whether the transaction is durable.
    pub fn is_durable(&self) -> bool {
        self.outcome.is_ok()
    }
}

impl From<neonet_proto::server::Change> for Change {
    fn from(c: neonet_proto::server::Change) -> Change {
        use neonet_proto::server::Change as Core;
        match c {
            Core::PutBlueprint(b) => Change::PutBlueprint(b),
            Core::PutEntity(e) => Change::PutEntity(e),
            Core::DeleteEntity(id) => Change::DeleteEntity(id),
            Core::PutSettings(s) => Change::PutSettings(s),
            Core::PutSpawn(s) => Change::PutSpawn(s),
            Core::PutUser(u) => Change::PutUser(u),
            Core::AppendChat(m) => Change::AppendChat(m),
            Core::ClearChat => Change::ClearChat,
        }
    }
}
