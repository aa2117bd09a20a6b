//! Forward migrations. [`MIGRATIONS`]`[i]` turns a version `i + 1` database into version
//! `i + 2`; [`migrate`] runs the chain from the stored version up to [`SCHEMA_VERSION`] inside
//! the one write transaction that opens the store, so a crash mid-migration leaves the old
//! version intact and the next start migrates again.
//!
//! Each step owns frozen copies of the record types as they were at its source version: a
//! migration must keep decoding old files after the live types have moved on.

use std::path::Path;

use neonet_proto::types::{Blueprint, ChatMessage, Rank, User, UserId};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::error::AtPath;
use super::schema::{
    dec, enc, first_ids, write_version, BLUEPRINTS, CHAT, ENTITIES, KEY_NEXT_IDS, META, USERS,
};
use super::{StoreError, CHAT_HISTORY_MAX, SCHEMA_VERSION};

/// One migration step: rewrites a database of version `n` into version `n + 1`.
type Step = fn(&Path, &WriteTransaction) -> Result<(), StoreError>;

/// The chain: entry `i` migrates version `i + 1` to `i + 2`. Its length is
/// `SCHEMA_VERSION - 1` (checked by a test).
pub(crate) const MIGRATIONS: &[Step] = &[v1_to_v2, v2_to_v3];

/// Runs every step from `from` up to [`SCHEMA_VERSION`] and records the new version.
pub(crate) fn migrate(path: &Path, txn: &WriteTransaction, from: u32) -> Result<(), StoreError> {
    if from == 0 {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "schema version 0 does not exist".into(),
        });
    }
    for version in from..SCHEMA_VERSION {
        let step = MIGRATIONS
            .get(version as usize - 1)
            .ok_or_else(|| StoreError::Db {
                path: path.to_path_buf(),
                detail: format!("no migration from schema version {version}"),
            })?;
        step(path, txn)?;
        write_version(path, txn, version + 1)?;
        tracing::info!(
            from = version,
            to = version + 1,
            "migrated the world database schema"
        );
    }
    Ok(())
}

/// Version 1 frozen types and tables.
pub(crate) mod v1 {
    use super::*;

    /// A version 1 user: no `last_position`.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct User {
        /// Stable id.
        pub id: UserId,
        /// Display name.
        pub name: String,
        /// Stored rank.
        pub rank: Rank,
        /// Muted.
        pub muted: bool,
        /// Banned.
        pub banned: bool,
    }

    /// Version 1 blueprints: id → record, no version column. Same table name as version 2,
    /// different value type, so the step deletes and recreates it.
    pub const BLUEPRINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("blueprints");

    /// `meta` key of the version 1 chat history: a postcard `Vec<ChatMessage>`, oldest first.
    pub const KEY_CHAT: &str = "chat";
}

/// Version 1 → 2: users gain `last_position` (unknown: `None`); chat moves from one `meta`
/// blob to a table keyed by message id; blueprints gain a version column; id counters are
/// computed from the largest ids present.
fn v1_to_v2(path: &Path, txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut ids = first_ids();

    // Users: re-encode with `last_position: None`.
    {
        let mut users = txn.open_table(USERS).at(path)?;
        let mut old = Vec::new();
        for row in users.iter().at(path)? {
            let (k, v) = row.at(path)?;
            let u: v1::User = dec(path, "users", k.value(), v.value())?;
            old.push((k.value(), u));
        }
        for (key, u) in old {
            ids.user = ids.user.max(u.id.0.saturating_add(1));
            let user = v2::User {
                id: u.id,
                name: u.name,
                rank: u.rank,
                muted: u.muted,
                banned: u.banned,
                last_position: None,
            };
            users
                .insert(key, enc("users", &user)?.as_slice())
                .at(path)?;
        }
    }

    // Blueprints: read all, drop the old table, write (version, record).
    let mut blueprints = Vec::new();
    {
        let old = txn.open_table(v1::BLUEPRINTS).at(path)?;
        for row in old.iter().at(path)? {
            let (k, v) = row.at(path)?;
            let bp: Blueprint = dec(path, "blueprints", k.value(), v.value())?;
            blueprints.push((k.value().to_string(), bp));
        }
    }
    txn.delete_table(v1::BLUEPRINTS).at(path)?;
    {
        let mut table = txn.open_table(BLUEPRINTS).at(path)?;
        for (key, bp) in &blueprints {
            let bytes = enc("blueprints", bp)?;
            table
                .insert(key.as_str(), (bp.version, bytes.as_slice()))
                .at(path)?;
        }
    }

    // Entities: unchanged layout; only their ids feed the counter.
    {
        let entities = txn.open_table(ENTITIES).at(path)?;
        let last = entities.last().at(path)?.map(|(k, _)| k.value());
        if let Some(k) = last {
            ids.entity = ids.entity.max(k.saturating_add(1));
        }
    }

    // Chat: blob in meta → one row per message, keeping the newest CHAT_HISTORY_MAX.
    let history: Vec<ChatMessage> = {
        let meta = txn.open_table(META).at(path)?;
        let raw = meta.get(v1::KEY_CHAT).at(path)?;
        match raw {
            Some(v) => dec(path, "meta", v1::KEY_CHAT, v.value())?,
            None => Vec::new(),
        }
    };
    {
        let mut chat = txn.open_table(CHAT).at(path)?;
        let skip = history.len().saturating_sub(CHAT_HISTORY_MAX);
        for msg in history.iter().skip(skip) {
            chat.insert(msg.id, enc("chat", msg)?.as_slice()).at(path)?;
        }
        for msg in &history {
            ids.chat = ids.chat.max(msg.id.saturating_add(1));
        }
    }
    {
        let mut meta = txn.open_table(META).at(path)?;
        meta.remove(v1::KEY_CHAT).at(path)?;
        meta.insert(KEY_NEXT_IDS, enc("meta", &ids)?.as_slice())
            .at(path)?;
    }
    Ok(())
}

/// Version 2 frozen types.
pub(crate) mod v2 {
    use super::*;

    /// A version 2 user: no `standing`.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct User {
        /// Stable id.
        pub id: UserId,
        /// Display name.
        pub name: String,
        /// Stored rank.
        pub rank: Rank,
        /// Muted.
        pub muted: bool,
        /// Banned.
        pub banned: bool,
        /// Last position (postcard encodes it as three f32s).
        pub last_position: Option<[f32; 3]>,
    }
}

/// Version 2 → 3: users gain `standing` (ban and mute ends and reason, token generation):
/// every user starts with none, generation 0, which every earlier token carries.
fn v2_to_v3(path: &Path, txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut users = txn.open_table(USERS).at(path)?;
    let mut old = Vec::new();
    for row in users.iter().at(path)? {
        let (k, v) = row.at(path)?;
        let u: v2::User = dec(path, "users", k.value(), v.value())?;
        old.push((k.value(), u));
    }
    for (key, u) in old {
        let user = User {
            id: u.id,
            name: u.name,
            rank: u.rank,
            muted: u.muted,
            banned: u.banned,
            last_position: u.last_position.map(Into::into),
            standing: Default::default(),
        };
        users
            .insert(key, enc("users", &user)?.as_slice())
            .at(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_reaches_current_version() {
        assert_eq!(MIGRATIONS.len() as u32, SCHEMA_VERSION - 1);
    }
}
