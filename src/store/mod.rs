//! # Persistence: the world in an embedded redb database
//!
//! The server core emits persistence effects ([`Change`], the one vocabulary defined in
//! [`neonet_proto::persist`]); the relay hands them to a [`Store`],
//! whose dedicated writer thread applies them in batched write transactions. The tick never
//! touches the disk: [`Store::submit`] and [`Store::mark_dirty`] only take a short mutex to push
//! onto a bounded queue.
//!
//! ## What is guaranteed
//! - **Nothing acknowledged is lost.** A change submitted with an [`AckToken`] is reported in
//!   [`Commit::acks`] with `outcome: Ok` only after the redb transaction holding it has
//!   committed with `Durability::Immediate` (redb fsyncs before `commit` returns, and a torn
//!   commit is detected by its checksum and rolled back to the previous one on the next open;
//!   see [`StoreConfig::two_phase_commit`]).
//!   The relay acknowledges to the client only then.
//! - **Group commit.** The writer drains everything queued (up to
//!   [`StoreConfig::batch_max`]) into one transaction with one fsync, so the number of fsyncs per
//!   second stays near what the disk does for one commit (≈ 5,000/s here) while the number of
//!   changes per second grows with the batch. Under light load a batch is one change and the
//!   latency is one commit; no change waits for a timer.
//! - **A failed commit is reported, never hidden.** On a disk error every token of the batch is
//!   reported with `outcome: Err` (the relay refuses them with `Refusal::Storage`) and the
//!   store keeps running: it reopens the database (redb refuses all writes after an I/O error
//!   until then) and retries with a backoff (50 ms doubling to 2 s, so a dead disk is not
//!   hammered). The failed batch's changes are retried *without* their tokens: their senders
//!   were told "refused", but the core has already applied them to the world everyone sees, so
//!   the disk must converge to it. The first commit that succeeds (`outcome: Ok`, possibly with
//!   no tokens) is the signal that storage is healthy again. While it backs off, changes queue up
//!   to [`StoreConfig::queue_max`] and then [`Store::submit`] refuses. Deterministic failures
//!   (a value that cannot be encoded) are reported and not retried.
//! - **One writer per world.** redb holds an exclusive `flock` on `world.redb` while it is open
//!   (per open file description, so it also refuses a second [`Store`] in the same process). A
//!   second relay on the same data folder gets [`StoreError::AlreadyOpen`]. No separate lock
//!   file is needed; the only gap is the moment the writer reopens the file after a disk error.
//!
//! - **Crash-safe first start.** A new database is built and initialized under a temporary name
//!   and hard-linked into place, so `world.redb` is either absent or complete (redb alone leaves
//!   an unopenable file if killed while creating one).
//! - **Ids are never reused.** The stored id counters ([`NextIds`]) only grow, and the writer
//!   raises them past every entity, user and chat id in the same transaction that writes it,
//!   and to every reservation the core makes ([`Change::ReserveIds`]: the core hands out ids
//!   only under a reservation submitted ahead, see [`neonet_proto::persist`]), so ids that
//!   reached clients before any change naming them was stored are not handed out again.
//!
//! ## What a crash loses
//! - Changes submitted but not yet reported durable: their senders were never acknowledged.
//!   Such a change may or may not be on disk after the restart (its commit may have completed
//!   just before the crash): "unacknowledged" means "unknown", never "absent".
//! - Dirty state (moving apps' transforms, app state given to [`Store::mark_dirty`]) since the
//!   last dirty flush: at most [`StoreConfig::dirty_flush_interval`] of it. A graceful
//!   [`Store::shutdown`] (or drop) flushes it.
//!
//! ## Ordering between acknowledged changes and dirty state
//! [`Change::PutEntity`] and [`Change::DeleteEntity`] remove the entity from the dirty set when
//! submitted, so an older dirty value can never overwrite a newer acknowledged one. A dirty mark
//! after a delete would bring the entity back: the core must not mark deleted entities.

mod change;
mod error;
mod migrate;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use neonet_proto::types::{Blueprint, ChatMessage, Entity, Settings, Spawn, User};

pub use change::{Change, Commit, NextIds};
pub use error::{StoreError, SubmitError};
/// The token of a change whose sender waits for its acknowledgement: the core's own
/// ([`neonet_proto::persist::AckToken`], the session and its request id), handed back in
/// [`Commit::acks`] so the driver can pass them straight to `ServerCore::handle_store` (as a `StoreReport`).
pub use neonet_proto::persist::AckToken;
pub use schema::{ACKED_MAX, SCHEMA_VERSION};

use error::AtPath;
use writer::{OnCommit, Opener, Shared};

/// Chat messages kept on disk: the same history the world keeps in memory and sends in the
/// snapshot ([`neonet_proto::wire::limits::CHAT_HISTORY_LEN`]), so a restart shows the same chat.
pub const CHAT_HISTORY_MAX: usize = neonet_proto::wire::limits::CHAT_HISTORY_LEN;

/// The database file's name inside the data folder.
pub const DB_FILE_NAME: &str = "world.redb";

/// Default [`StoreConfig::dirty_flush_interval`]: 1 s. A crash loses at most this much of a
/// moving app's motion; one extra commit per second costs the disk nothing noticeable.
pub const DIRTY_FLUSH_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);

/// Default [`StoreConfig::queue_max`]: 16,384 changes, under a second of backlog at the
/// 20,000 changes/s target; beyond that the disk is not keeping up and refusing is honest.
pub const QUEUE_MAX_DEFAULT: usize = 16_384;

/// Default [`StoreConfig::batch_max`]: 4,096 changes per transaction. Bounds one transaction's
/// memory and commit time (a few ms of applying) so acknowledgements keep flowing under a
/// backlog.
pub const BATCH_MAX_DEFAULT: usize = 4_096;

/// Store tuning. [`Default`] gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// How often the dirty set (fast-changing entity state) is written. Default
    /// [`DIRTY_FLUSH_INTERVAL_DEFAULT`]; kept between 1 ms and one day.
    pub dirty_flush_interval: Duration,
    /// Most changes waiting for the writer; [`Store::submit`] refuses beyond it. Default
    /// [`QUEUE_MAX_DEFAULT`]; at least 1.
    pub queue_max: usize,
    /// Most changes in one write transaction. Default [`BATCH_MAX_DEFAULT`]; at least 1.
    pub batch_max: usize,
    /// Commit with redb's two-phase commit (two fsyncs per transaction) instead of its default
    /// one-phase commit with checksums (one fsync). Both are crash safe; redb documents a
    /// theoretical attack on one-phase commit by someone who controls the data written (our
    /// clients do: props, chat), the order the disk flushes pages in, and when the machine
    /// crashes. Two-phase closes it at the price of one more fsync per batch. Default `false`
    /// (redb's default): the attack needs control of the disk's flush order and of crash
    /// timing, which a remote player does not have, and the extra fsync showed in the ack
    /// latency tail on our shared 2-core machine (see the `measure_throughput` test).
    pub two_phase_commit: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dirty_flush_interval: DIRTY_FLUSH_INTERVAL_DEFAULT,
            queue_max: QUEUE_MAX_DEFAULT,
            batch_max: BATCH_MAX_DEFAULT,
            two_phase_commit: false,
        }
    }
}

/// Everything the server core needs to start, as read from disk.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedWorld {
    /// World settings (defaults on first start).
    pub settings: Settings,
    /// Spawn point (default on first start).
    pub spawn: Spawn,
    /// Every known user, by increasing id, with their `last_position`.
    pub users: Vec<User>,
    /// Every blueprint, by id.
    pub blueprints: Vec<Blueprint>,
    /// Every persistent entity (apps), by increasing id.
    pub entities: Vec<Entity>,
    /// The chat history, oldest first, at most [`CHAT_HISTORY_MAX`].
    pub chat: Vec<ChatMessage>,
    /// Id counters: the stored ones, raised to one past the largest id present.
    pub next_ids: NextIds,
    /// Acknowledged changes remembered for deduplication after a restart, by (session, req),
    /// at most [`ACKED_MAX`].
    pub acked: Vec<AckToken>,
    /// Whether the database was created by this open (first start).
    pub created: bool,
    /// The schema version the database was migrated from by this open, if it was.
    pub migrated_from: Option<u32>,
}

impl From<LoadedWorld> for neonet_proto::persist::World {
    /// The core's view of the loaded world (`ServerCore::new` takes it).
    fn from(w: LoadedWorld) -> Self {
        neonet_proto::persist::World {
            settings: w.settings,
            spawn: w.spawn,
            blueprints: w
                .blueprints
                .into_iter()
                .map(|b| (b.id.clone(), b))
                .collect(),
            entities: w.entities.into_iter().map(|e| (e.id, e)).collect(),
            chat: w.chat.into_iter().collect(),
            users: w.users.into_iter().map(|u| (u.id, u)).collect(),
            next_entity_id: w.next_ids.entity,
            next_user_id: w.next_ids.user,
            next_chat_id: w.next_ids.chat,
            acked: w.acked,
        }
    }
}

/// Counters of the writer's work since open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Write transactions committed durably.
    pub commits: u64,
    /// Write transactions that failed.
    pub failed_commits: u64,
    /// Changes made durable (acknowledged or not), not counting dirty entities.
    pub changes: u64,
    /// Dirty entity values made durable.
    pub dirty_entities: u64,
    /// Changes waiting for the writer right now.
    pub queued: usize,
}

/// The persistence layer of one world: an open `world.redb` and its writer thread.
///
/// Methods take `&self` and the store is `Send + Sync`: the tick thread (or any number of
/// submitters) can share it. Dropping it is a [`Store::shutdown`] that ignores the result.
pub struct Store {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
    queue_max: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Store {
    /// Opens (creating on first start) the world database in `data_dir`, migrates it to
    /// [`SCHEMA_VERSION`], loads the world and starts the writer thread.
    ///
    /// `on_commit` runs on the writer thread after every write transaction, durable or failed;
    /// it must not block (forward the [`Commit`] to the relay's channel and return).
    ///
    /// Errors: [`StoreError::DataDir`] if the folder cannot be created,
    /// [`StoreError::AlreadyOpen`] if another relay holds it, [`StoreError::Disk`] on I/O errors,
    /// [`StoreError::SchemaTooNew`], [`StoreError::Corrupt`] or [`StoreError::Decode`] for files
    /// this build cannot trust.
    pub fn open(
        data_dir: &Path,
        config: StoreConfig,
        on_commit: impl FnMut(Commit) + Send + 'static,
    ) -> Result<(Store, LoadedWorld), StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        if !data_dir.is_dir() {
            return Err(StoreError::DataDir {
                path: data_dir.to_path_buf(),
                source: std::io::Error::other("not a folder"),
            });
        }
        let path = data_dir.join(DB_FILE_NAME);
        let created = if path.exists() {
            false
        } else {
            create_fresh(data_dir, &path)?
        };
        let opener_path = path.clone();
        let (store, mut world) = Store::open_with(
            path,
            Box::new(move || open_db(&opener_path)),
            config,
            Box::new(on_commit),
        )?;
        world.created |= created;
        remove_stale_creations(data_dir);
        Ok((store, world))
    }

    /// [`Store::open`] over a database made by `opener`, which is also used to reopen it after
    /// a disk error (tests pass a storage backend that fails on demand). `path` names the
    /// database in errors.
    pub(crate) fn open_with(
        path: PathBuf,
        opener: Opener,
        config: StoreConfig,
        on_commit: OnCommit,
    ) -> Result<(Store, LoadedWorld), StoreError> {
        let db = opener()?;
        let world = prepare(&path, &db)?;
        let queue_max = config.queue_max.max(1);
        let (shared, thread) =
            writer::spawn(path.clone(), db, opener, world.next_ids, config, on_commit)?;
        Ok((
            Store {
                shared,
                thread: Some(thread),
                path,
                queue_max,
            },
            world,
        ))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `change` for the writer; never touches the disk. With `ack`, the token comes back in
    /// the [`Commit`] whose transaction holds the change. Order is kept: changes are applied in
    /// submission order.
    ///
    /// Fails with [`SubmitError::Full`] when [`StoreConfig::queue_max`] changes already wait, or
    /// [`SubmitError::Closed`] when the writer has stopped; the caller then refuses the change.
    pub fn submit(&self, change: Change, ack: Option<AckToken>) -> Result<(), SubmitError> {
        self.shared.submit(change, ack, self.queue_max)
    }

    /// [`Store::submit`] for an effect polled from the core (`ServerCore::poll_effect`).
    pub fn submit_effect(&self, effect: neonet_proto::persist::Effect) -> Result<(), SubmitError> {
        self.submit(effect.change, effect.ack)
    }

    /// Records fast-changing state of a persistent entity (transform while moving, app state).
    /// Coalescing: only the last value per entity is kept until the next dirty flush (every
    /// [`StoreConfig::dirty_flush_interval`], and on shutdown). Never fails and never blocks on
    /// the disk; memory is bounded by the number of entities.
    pub fn mark_dirty(&self, entity: Entity) {
        self.shared.mark_dirty(entity);
    }

    /// Makes everything submitted or marked dirty before this call durable (or reported
    /// failed), then returns. Blocks the caller for a commit: not for the tick thread.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.shared.flush()
    }

    /// The writer's counters so far.
    pub fn stats(&self) -> StoreStats {
        self.shared.stats()
    }

    /// Flushes every queued change and the dirty set, stops the writer thread and closes the
    /// database. Returns the final counters.
    pub fn shutdown(mut self) -> Result<StoreStats, StoreError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<StoreStats, StoreError> {
        let Some(thread) = self.thread.take() else {
            return Ok(self.stats());
        };
        self.shared.request_shutdown();
        thread.join().map_err(|_| StoreError::Closed)?;
        Ok(self.stats())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "store writer did not stop cleanly");
        }
    }
}

/// Opens the existing database file. Never creates one: a missing file while running (deleted
/// behind our back) is an error, not a silently empty world.
pub(crate) fn open_db(path: &Path) -> Result<redb::Database, StoreError> {
    redb::Builder::new()
        .set_cache_size(DB_CACHE_BYTES)
        .open(path)
        .at(path)
}

/// Memory redb may use to cache the database's pages, bytes: 32 MiB. A world is at most a few
/// MiB (`WORLD_BYTES_MAX_DEFAULT` of blueprints and apps, plus its users and chat), so this
/// caches all of it; redb's own default, 1 GiB, let the cache grow with every page a long run
/// of commits touched.
pub const DB_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Prefix of the temporary file a new database is built in, followed by the creating process id.
const CREATING_PREFIX: &str = "world.redb.creating-";

/// Creates the database for a first start, crash-safely: it is built and initialized under a
/// temporary name, then hard-linked to `path`.
///
/// redb initializes a new file in place and writes its magic number last; a crash in between
/// leaves a non-empty file without the magic number, which redb then refuses to open for ever.
/// Building aside and linking means `path` is either absent or a complete, initialized database.
/// `hard_link` never replaces an existing file, so two relays racing on a fresh folder cannot
/// swap the file under each other: the loser opens the winner's file and gets
/// [`StoreError::AlreadyOpen`]. Returns whether this call created the database.
fn create_fresh(data_dir: &Path, path: &Path) -> Result<bool, StoreError> {
    let tmp = data_dir.join(format!("{CREATING_PREFIX}{}", std::process::id()));
    let disk = |source| StoreError::Disk {
        path: tmp.clone(),
        source,
    };
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(disk(e)),
    }
    let built = (|| {
        let db = redb::Builder::new().create(&tmp).at(&tmp)?;
        let txn = db.begin_write().at(&tmp)?;
        schema::init(&tmp, &txn)?;
        txn.commit().at(&tmp)
    })();
    match built {
        Ok(()) => {}
        // Not being able to create a file here is a data folder problem (permissions, a
        // read-only or full file system): say so.
        Err(StoreError::Disk { source, .. }) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::DataDir {
                path: data_dir.to_path_buf(),
                source,
            });
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        // Another relay created it first.
        Err(_) if path.exists() => return Ok(false),
        Err(e) => return Err(disk(e)),
    }
    // Make the new directory entry durable too.
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
    Ok(true)
}

/// Removes temporary files left by a first start that crashed before linking. Called while
/// holding the database, so no other relay of this folder is creating one.
fn remove_stale_creations(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(CREATING_PREFIX))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Brings the database to the current schema (creating or migrating it) and loads the world,
/// in one write transaction.
fn prepare(path: &Path, db: &redb::Database) -> Result<LoadedWorld, StoreError> {
    let txn = db.begin_write().at(path)?;
    let found = schema::read_version(path, &txn)?;
    let (created, migrated_from) = match found {
        None => {
            schema::init(path, &txn)?;
            (true, None)
        }
        Some(v) if v == SCHEMA_VERSION => (false, None),
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::SchemaTooNew {
                path: path.to_path_buf(),
                found: v,
                supported: SCHEMA_VERSION,
            })
        }
        Some(v) => {
            migrate::migrate(path, &txn, v)?;
            (false, Some(v))
        }
    };
    let mut world = schema::load(path, &txn)?;
    world.created = created;
    world.migrated_from = migrated_from;
    txn.commit().at(path)?;
    Ok(world)
}

#[cfg(test)]
mod tests;
