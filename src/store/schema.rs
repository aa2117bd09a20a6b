//! The current on-disk layout (schema version [`SCHEMA_VERSION`]): table definitions, record
//! encoding, creating a fresh database, loading the world and applying changes.
//!
//! ## Layout, version 3
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `&str` | bytes: `schema_version` (u32 little-endian), `settings` ([`Settings`]), `spawn` ([`Spawn`]), `next_ids` ([`NextIds`]) |
//! | `users` | user id `u64` | [`User`] |
//! | `blueprints` | blueprint id `&str` | `(version u32, `[`Blueprint`]`)` |
//! | `entities` | entity id `u32` | [`Entity`] (apps, with their props: app state) |
//! | `chat` | message id `u64` | [`ChatMessage`]; the last [`CHAT_HISTORY_MAX`] only |
//!
//! Records are postcard encodings of the `neonet_proto::types` structs. postcard is not
//! self-describing: a change to one of those types that changes its encoding (a field added,
//! removed or reordered) is a schema change. Bump [`SCHEMA_VERSION`], freeze a copy of the old
//! type in `migrate.rs` and add a migration step. The `record_encoding_is_pinned` test fails
//! when such a change slips in without one.

use std::path::Path;

use neonet_proto::types::{
    Blueprint, ChatMessage, Entity, ReqId, SessionId, Settings, Spawn, User, UserId,
};
use redb::{ReadableTable, ReadableTableMetadata, Table, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::AtPath;
use super::{AckToken, Change, LoadedWorld, NextIds, StoreError, CHAT_HISTORY_MAX};

/// The schema version this build writes. Version history:
/// - **1**: `meta` (schema_version, settings, spawn, and the whole chat history as one
///   `chat` blob rewritten on every message), `users` without `last_position`, `blueprints`
///   id → blueprint with no version column, `entities`. No id counters.
/// - **2**: users gain `last_position` (a returning user spawns where they left); chat moves to
///   its own table, one row per message keyed by id (an append no longer rewrites the history);
///   blueprints store their version beside the data; `meta.next_ids` keeps id counters so ids
///   are never reused.
/// - **3**: users gain `standing` (how long a ban or mute lasts and why, the token generation
///   revocation bumps).
pub const SCHEMA_VERSION: u32 = 3;

/// Single values: schema version, settings, spawn point, id counters.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Users by id.
pub(crate) const USERS: TableDefinition<u64, &[u8]> = TableDefinition::new("users");
/// Blueprints by id: (version, record).
pub(crate) const BLUEPRINTS: TableDefinition<&str, (u32, &[u8])> =
    TableDefinition::new("blueprints");
/// Persistent entities (apps) by id.
pub(crate) const ENTITIES: TableDefinition<u32, &[u8]> = TableDefinition::new("entities");
/// Chat history by message id.
pub(crate) const CHAT: TableDefinition<u64, &[u8]> = TableDefinition::new("chat");
/// Acknowledged changes: (session, req) → user, written in the transaction that makes the
/// change durable, at most [`ACKED_MAX`] rows (the lowest session ids dropped first). Added in
/// version 3 without a bump: a new table changes no stored type, and a version-3 file without
/// it (written before) simply has no acknowledged changes to remember; it is created on open.
pub(crate) const ACKED: TableDefinition<(u64, u32), u64> = TableDefinition::new("acked");

/// Acknowledged changes kept for deduplication across a restart: 262,144 rows (~20 bytes each,
/// ~5 MiB), as many as the core remembers for ended sessions
/// (`ENDED_SESSIONS_MAX` 256 × `REQ_OUTCOMES_MAX` 1,024). Session ids grow across restarts, so
/// the rows dropped first belong to the oldest sessions.
pub const ACKED_MAX: u64 = 262_144;

/// `meta` key of the schema version (u32 little-endian).
pub(crate) const KEY_SCHEMA_VERSION: &str = "schema_version";
/// `meta` key of the world settings.
pub(crate) const KEY_SETTINGS: &str = "settings";
/// `meta` key of the spawn point.
pub(crate) const KEY_SPAWN: &str = "spawn";
/// `meta` key of the id counters.
pub(crate) const KEY_NEXT_IDS: &str = "next_ids";

/// Encodes a record.
pub(crate) fn enc<T: Serialize>(table: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|source| StoreError::Encode { table, source })
}

/// Decodes a record read back from disk; a bad record is a typed error, never a panic.
pub(crate) fn dec<T: DeserializeOwned>(
    path: &Path,
    table: &'static str,
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Decode {
        path: path.to_path_buf(),
        table,
        key: key.to_string(),
        source,
    })
}

/// Reads the stored schema version: `None` for a database with no tables at all (just
/// created).
pub(crate) fn read_version(path: &Path, txn: &WriteTransaction) -> Result<Option<u32>, StoreError> {
    let has_tables = txn.list_tables().at(path)?.next().is_some();
    if !has_tables {
        return Ok(None);
    }
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(e) => return Err(StoreError::from_redb(path, e)),
    };
    let raw = meta.get(KEY_SCHEMA_VERSION).at(path)?;
    let Some(raw) = raw else {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "tables exist but meta.schema_version is missing".into(),
        });
    };
    let bytes: [u8; 4] = raw.value().try_into().map_err(|_| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!(
            "meta.schema_version is {} bytes, expected 4",
            raw.value().len()
        ),
    })?;
    Ok(Some(u32::from_le_bytes(bytes)))
}

/// Writes the schema version.
pub(crate) fn write_version(
    path: &Path,
    txn: &WriteTransaction,
    version: u32,
) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).at(path)?;
    meta.insert(KEY_SCHEMA_VERSION, version.to_le_bytes().as_slice())
        .at(path)?;
    Ok(())
}

/// Lays out a fresh database at the current version with default settings and spawn.
pub(crate) fn init(path: &Path, txn: &WriteTransaction) -> Result<(), StoreError> {
    {
        let mut meta = txn.open_table(META).at(path)?;
        meta.insert(KEY_SETTINGS, enc("meta", &Settings::default())?.as_slice())
            .at(path)?;
        meta.insert(KEY_SPAWN, enc("meta", &Spawn::default())?.as_slice())
            .at(path)?;
        meta.insert(KEY_NEXT_IDS, enc("meta", &first_ids())?.as_slice())
            .at(path)?;
    }
    // Create the other tables so that the layout is complete from the first commit.
    txn.open_table(USERS).at(path)?;
    txn.open_table(BLUEPRINTS).at(path)?;
    txn.open_table(ENTITIES).at(path)?;
    txn.open_table(CHAT).at(path)?;
    txn.open_table(ACKED).at(path)?;
    write_version(path, txn, SCHEMA_VERSION)
}

/// The ids of an empty world: 1 everywhere, so that 0 stays free as a "none" value for callers.
pub(crate) fn first_ids() -> NextIds {
    NextIds {
        entity: 1,
        user: 1,
        chat: 1,
    }
}

/// Reads the whole world from a database at the current version.
pub(crate) fn load(path: &Path, txn: &WriteTransaction) -> Result<LoadedWorld, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let meta = txn.open_table(META).at(path)?;
    let meta_get = |key: &'static str| -> Result<Vec<u8>, StoreError> {
        match meta.get(key).at(path)? {
            Some(v) => Ok(v.value().to_vec()),
            None => Err(corrupt(format!("meta.{key} is missing"))),
        }
    };
    let settings: Settings = dec(path, "meta", KEY_SETTINGS, &meta_get(KEY_SETTINGS)?)?;
    let spawn: Spawn = dec(path, "meta", KEY_SPAWN, &meta_get(KEY_SPAWN)?)?;
    let mut next_ids: NextIds = dec(path, "meta", KEY_NEXT_IDS, &meta_get(KEY_NEXT_IDS)?)?;

    let mut users = Vec::new();
    for row in txn.open_table(USERS).at(path)?.iter().at(path)? {
        let (k, v) = row.at(path)?;
        let user: User = dec(path, "users", k.value(), v.value())?;
        if user.id.0 != k.value() {
            return Err(corrupt(format!(
                "users key {} holds user {}",
                k.value(),
                user.id.0
            )));
        }
        next_ids.user = next_ids.user.max(user.id.0.saturating_add(1));
        users.push(user);
    }

    let mut blueprints = Vec::new();
    for row in txn.open_table(BLUEPRINTS).at(path)?.iter().at(path)? {
        let (k, v) = row.at(path)?;
        let (version, bytes) = v.value();
        let bp: Blueprint = dec(path, "blueprints", k.value(), bytes)?;
        if bp.id.0 != k.value() || bp.version != version {
            return Err(corrupt(format!(
                "blueprints key {:?} (version {version}) holds {:?} version {}",
                k.value(),
                bp.id.0,
                bp.version
            )));
        }
        blueprints.push(bp);
    }

    let mut entities = Vec::new();
    for row in txn.open_table(ENTITIES).at(path)?.iter().at(path)? {
        let (k, v) = row.at(path)?;
        let entity: Entity = dec(path, "entities", k.value(), v.value())?;
        if entity.id.0 != k.value() {
            return Err(corrupt(format!(
                "entities key {} holds entity {}",
                k.value(),
                entity.id.0
            )));
        }
        next_ids.entity = next_ids.entity.max(entity.id.0.saturating_add(1));
        entities.push(entity);
    }

    let mut chat = Vec::new();
    for row in txn.open_table(CHAT).at(path)?.iter().at(path)? {
        let (k, v) = row.at(path)?;
        let msg: ChatMessage = dec(path, "chat", k.value(), v.value())?;
        next_ids.chat = next_ids.chat.max(msg.id.saturating_add(1));
        chat.push(msg);
    }

    let mut acked = Vec::new();
    for row in txn.open_table(ACKED).at(path)?.iter().at(path)? {
        let (k, v) = row.at(path)?;
        let (session, req) = k.value();
        acked.push(AckToken {
            session: SessionId(session),
            req: ReqId(req),
            user: UserId(v.value()),
        });
    }

    Ok(LoadedWorld {
        acked,
        settings,
        spawn,
        users,
        blueprints,
        entities,
        chat,
        next_ids,
        created: false,
        migrated_from: None,
    })
}

/// The tables of one write transaction, opened once per batch.
pub(crate) struct Tables<'txn> {
    meta: Table<'txn, &'static str, &'static [u8]>,
    users: Table<'txn, u64, &'static [u8]>,
    blueprints: Table<'txn, &'static str, (u32, &'static [u8])>,
    entities: Table<'txn, u32, &'static [u8]>,
    chat: Table<'txn, u64, &'static [u8]>,
    acked: Table<'txn, (u64, u32), u64>,
}

impl<'txn> Tables<'txn> {
    /// Opens every table in `txn`.
    pub(crate) fn open(path: &Path, txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            meta: txn.open_table(META).at(path)?,
            users: txn.open_table(USERS).at(path)?,
            blueprints: txn.open_table(BLUEPRINTS).at(path)?,
            entities: txn.open_table(ENTITIES).at(path)?,
            chat: txn.open_table(CHAT).at(path)?,
            acked: txn.open_table(ACKED).at(path)?,
        })
    }

    /// Writes one entity.
    pub(crate) fn put_entity(&mut self, path: &Path, e: &Entity) -> Result<(), StoreError> {
        self.entities
            .insert(e.id.0, enc("entities", e)?.as_slice())
            .at(path)?;
        Ok(())
    }

    /// Remembers that the change `ack` names is durable (see [`ACKED`]), dropping the oldest
    /// rows beyond [`ACKED_MAX`].
    pub(crate) fn put_acked(&mut self, path: &Path, ack: &AckToken) -> Result<(), StoreError> {
        self.acked
            .insert((ack.session.0, ack.req.0), ack.user.0)
            .at(path)?;
        while self.acked.len().at(path)? > ACKED_MAX {
            self.acked.pop_first().at(path)?;
        }
        Ok(())
    }

    /// Writes the id counters.
    pub(crate) fn put_next_ids(&mut self, path: &Path, ids: &NextIds) -> Result<(), StoreError> {
        self.meta
            .insert(KEY_NEXT_IDS, enc("meta", ids)?.as_slice())
            .at(path)?;
        Ok(())
    }

    /// Applies one change.
    pub(crate) fn apply(&mut self, path: &Path, change: &Change) -> Result<(), StoreError> {
        match change {
            Change::PutBlueprint(b) => {
                let bytes = enc("blueprints", b)?;
                self.blueprints
                    .insert(b.id.0.as_str(), (b.version, bytes.as_slice()))
                    .at(path)?;
            }
            Change::DeleteBlueprint(id) => {
                self.blueprints.remove(id.0.as_str()).at(path)?;
            }
            Change::PutEntity(e) | Change::PutEntityState(e) => self.put_entity(path, e)?,
            Change::DeleteEntity(id) => {
                self.entities.remove(id.0).at(path)?;
            }
            Change::PutSettings(s) => {
                self.meta
                    .insert(KEY_SETTINGS, enc("meta", s)?.as_slice())
                    .at(path)?;
            }
            Change::PutSpawn(s) => {
                self.meta
                    .insert(KEY_SPAWN, enc("meta", s)?.as_slice())
                    .at(path)?;
            }
            Change::PutUser(u) => {
                self.users
                    .insert(u.id.0, enc("users", u)?.as_slice())
                    .at(path)?;
            }
            Change::AppendChat(m) => {
                self.chat
                    .insert(m.id, enc("chat", m)?.as_slice())
                    .at(path)?;
                // Bounded history: drop the oldest beyond the limit. `len` is O(1) in redb.
                while self.chat.len().at(path)? > CHAT_HISTORY_MAX as u64 {
                    self.chat.pop_first().at(path)?;
                }
            }
            Change::ClearChat => {
                self.chat.retain(|_, _| false).at(path)?;
            }
            // Counters are raised by the writer for every change (see `raise_ids`) and written
            // once per transaction by `put_next_ids`.
            Change::ReserveIds(_) => {}
        }
        Ok(())
    }
}

/// Raises `ids` so that they stay above every id `change` uses. Counters only ever grow, so a
/// crash can never hand out an id again, whatever order the core sends
/// [`Change::ReserveIds`] in.
pub(crate) fn raise_ids(ids: &mut NextIds, change: &Change) {
    match change {
        Change::PutEntity(e) | Change::PutEntityState(e) => {
            ids.entity = ids.entity.max(e.id.0.saturating_add(1));
        }
        Change::DeleteEntity(id) => ids.entity = ids.entity.max(id.0.saturating_add(1)),
        Change::PutUser(u) => ids.user = ids.user.max(u.id.0.saturating_add(1)),
        Change::AppendChat(m) => ids.chat = ids.chat.max(m.id.saturating_add(1)),
        Change::ReserveIds(n) => {
            ids.entity = ids.entity.max(n.entity);
            ids.user = ids.user.max(n.user);
            ids.chat = ids.chat.max(n.chat);
        }
        Change::PutBlueprint(_)
        | Change::DeleteBlueprint(_)
        | Change::PutSettings(_)
        | Change::PutSpawn(_)
        | Change::ClearChat => {}
    }
}
