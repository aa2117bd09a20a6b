//! The writer thread: drains the queue into batched write transactions (group commit) and
//! flushes the dirty set on its interval.
//!
//! The queue is a `Mutex<VecDeque>` plus a condition variable rather than an mpsc channel
//! because the dirty set must live beside it under the same lock: submitting a
//! [`Change::PutEntity`] or [`Change::DeleteEntity`] removes the entity's dirty value atomically
//! with queuing the change, which keeps "the newest value wins" true across both paths. The lock
//! is only ever held for pushes and for draining (a `VecDeque::drain` and a `mem::take`), never
//! across disk I/O, so a submitter waits at most for another push.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use neonet_proto::types::{BlueprintId, Entity, EntityId, UserId};

use super::error::AtPath;
use super::schema::{raise_ids, Tables};
use super::{AckToken, Change, Commit, NextIds, StoreConfig, StoreError, StoreStats, SubmitError};

/// The commit callback.
pub(crate) type OnCommit = Box<dyn FnMut(Commit) + Send>;

/// Opens the database; called at start and again after a disk error.
pub(crate) type Opener = Box<dyn Fn() -> Result<redb::Database, StoreError> + Send>;

/// A queued change.
struct Pending {
    change: Change,
    ack: Option<AckToken>,
    submitted: Instant,
}

/// Everything the submitters and the writer share under one lock.
#[derive(Default)]
struct Queue {
    /// Changes in submission order.
    changes: VecDeque<Pending>,
    /// Latest dirty value per entity; ordered so that a flush writes keys in order.
    dirty: BTreeMap<EntityId, Entity>,
    /// When the oldest value in `dirty` was marked.
    dirty_since: Option<Instant>,
    /// Flushes asked for by [`Shared::flush`].
    flush_requested: u64,
    /// The last flush request fully served.
    flush_done: u64,
    /// Set by [`Shared::request_shutdown`]: drain everything, then stop.
    shutdown: bool,
    /// Set when the writer thread has exited (normally or by panic).
    closed: bool,
}

/// State shared by the [`super::Store`] handle and its writer thread.
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer: work arrived, a flush or shutdown was asked for.
    wake: Condvar,
    /// Wakes [`Shared::flush`] callers: a flush completed or the writer stopped.
    done: Condvar,
    commits: AtomicU64,
    failed_commits: AtomicU64,
    changes: AtomicU64,
    dirty_entities: AtomicU64,
}

impl Shared {
    /// Locks the queue. A panic elsewhere while holding the lock cannot leave the queue
    /// half-updated (every update is a single push, drain or flag), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn submit(
        &self,
        change: Change,
        ack: Option<AckToken>,
        queue_max: usize,
    ) -> Result<(), SubmitError> {
        let change = match (change, ack) {
            // Without a token, entity state is dirty state: coalesce it.
            (Change::PutEntityState(e), None) => {
                return if self.mark_dirty(e) {
                    Ok(())
                } else {
                    Err(SubmitError::Closed)
                };
            }
            // With a token the caller needs it durable now: write it through like PutEntity.
            (Change::PutEntityState(e), Some(_)) => Change::PutEntity(e),
            (c, _) => c,
        };
        let mut q = self.lock();
        if q.closed || q.shutdown {
            return Err(SubmitError::Closed);
        }
        if q.changes.len() >= queue_max {
            return Err(SubmitError::Full);
        }
        match &change {
            Change::PutEntity(e) => {
                q.dirty.remove(&e.id);
            }
            Change::DeleteEntity(id) => {
                q.dirty.remove(id);
            }
            _ => {}
        }
        let was_empty = q.changes.is_empty();
        q.changes.push_back(Pending {
            change,
            ack,
            submitted: Instant::now(),
        });
        drop(q);
        // The writer sleeps with a non-empty queue only while backing off after a disk error
        // (it wakes on its own then), so only the first push needs to wake it.
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Puts `entity` in the dirty set; `false` if the writer has stopped.
    pub(crate) fn mark_dirty(&self, entity: Entity) -> bool {
        let mut q = self.lock();
        if q.closed {
            return false;
        }
        q.dirty.insert(entity.id, entity);
        if q.dirty_since.is_none() {
            q.dirty_since = Some(Instant::now());
        }
        true
    }

    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        let mut q = self.lock();
        if q.closed {
            return Err(StoreError::Closed);
        }
        q.flush_requested += 1;
        let generation = q.flush_requested;
        self.wake.notify_one();
        while q.flush_done < generation && !q.closed {
            q = self.done.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        if q.flush_done >= generation {
            Ok(())
        } else {
            Err(StoreError::Closed)
        }
    }

    pub(crate) fn request_shutdown(&self) {
        self.lock().shutdown = true;
        self.wake.notify_one();
    }

    pub(crate) fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            failed_commits: self.failed_commits.load(Ordering::Relaxed),
            changes: self.changes.load(Ordering::Relaxed),
            dirty_entities: self.dirty_entities.load(Ordering::Relaxed),
            queued: self.lock().changes.len(),
        }
    }
}

/// Marks the queue closed when the writer thread exits, even by panic, so that submitters and
/// flush waiters learn it.
struct ClosedOnExit(Arc<Shared>);

impl Drop for ClosedOnExit {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.done.notify_all();
    }
}

/// Starts the writer thread over an open, prepared database.
pub(crate) fn spawn(
    path: PathBuf,
    db: redb::Database,
    opener: Opener,
    next_ids: NextIds,
    config: StoreConfig,
    on_commit: OnCommit,
) -> Result<(Arc<Shared>, JoinHandle<()>), StoreError> {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        wake: Condvar::new(),
        done: Condvar::new(),
        commits: AtomicU64::new(0),
        failed_commits: AtomicU64::new(0),
        changes: AtomicU64::new(0),
        dirty_entities: AtomicU64::new(0),
    });
    let thread_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("neonet-store".into())
        .spawn(move || {
            let guard = ClosedOnExit(thread_shared);
            Writer {
                shared: &guard.0,
                path,
                db: Some(db),
                opener,
                next_ids,
                config,
                on_commit,
                seq: 0,
                retry_at: None,
                backoff: Duration::ZERO,
            }
            .run();
        })
        .map_err(|e| StoreError::Db {
            path: PathBuf::new(),
            detail: format!("cannot start the writer thread: {e}"),
        })?;
    Ok((shared, thread))
}

/// Shortest dirty flush interval: 1 ms, so that a zero interval cannot spin the writer.
const DIRTY_FLUSH_INTERVAL_MIN: Duration = Duration::from_millis(1);
/// Longest dirty flush interval: one day, so that deadlines never overflow `Instant`.
const DIRTY_FLUSH_INTERVAL_MAX: Duration = Duration::from_secs(86_400);

/// First wait before retrying after a disk error: 50 ms, long enough not to spin on a dead
/// disk, short enough that a brief hiccup costs little.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between retries: 2 s, doubling from [`RETRY_BACKOFF_MIN`]. Bounds how long
/// after the disk recovers the store notices.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One unit of work taken from the queue.
struct Batch {
    changes: Vec<Pending>,
    /// `Some` when this batch flushes the dirty set (possibly empty).
    dirty: Option<BTreeMap<EntityId, Entity>>,
    dirty_since: Option<Instant>,
    /// The flush generation this batch completes: set when the queue was left empty and the
    /// dirty set taken, so everything submitted before the request is in it or earlier.
    completes_flush: Option<u64>,
    /// The last batch before exiting.
    last: bool,
}

struct Writer<'a> {
    shared: &'a Shared,
    path: PathBuf,
    /// `None` after a disk error: reopened before the next batch.
    db: Option<redb::Database>,
    opener: Opener,
    /// The id counters as durably stored.
    next_ids: NextIds,
    config: StoreConfig,
    on_commit: OnCommit,
    seq: u64,
    /// After a disk error: no batch is taken before this instant (except at shutdown).
    retry_at: Option<Instant>,
    /// The current wait between retries, zero when healthy.
    backoff: Duration,
}

/// What a change replaces whole, if anything. Every change carries the thing's whole new value
/// (see [`Change`]), so of two changes with the same key in one transaction only the later one
/// needs writing: the transaction commits both or neither.
#[derive(PartialEq, Eq, Hash)]
enum OverwriteKey<'a> {
    Blueprint(&'a BlueprintId),
    Entity(EntityId),
    Settings,
    Spawn,
    User(UserId),
}

fn overwrite_key(c: &Change) -> Option<OverwriteKey<'_>> {
    Some(match c {
        Change::PutBlueprint(b) => OverwriteKey::Blueprint(&b.id),
        Change::DeleteBlueprint(id) => OverwriteKey::Blueprint(id),
        Change::PutEntity(e) | Change::PutEntityState(e) => OverwriteKey::Entity(e.id),
        Change::DeleteEntity(id) => OverwriteKey::Entity(*id),
        Change::PutSettings(_) => OverwriteKey::Settings,
        Change::PutSpawn(_) => OverwriteKey::Spawn,
        Change::PutUser(u) => OverwriteKey::User(u.id),
        Change::AppendChat(_) | Change::ClearChat | Change::ReserveIds(_) => return None,
    })
}

/// Per change of a batch: whether a later change of the same batch replaces it whole. A
/// builder dragging a slider sends one blueprint version after another; the batch that holds
/// several of them writes only the newest (each is still acknowledged, once the newest is
/// durable).
fn superseded_in_batch(changes: &[Pending]) -> Vec<bool> {
    let mut out = vec![false; changes.len()];
    if changes.len() < 2 {
        return out;
    }
    let mut later: HashSet<OverwriteKey<'_>> = HashSet::with_capacity(changes.len());
    for (i, p) in changes.iter().enumerate().rev() {
        if let Some(key) = overwrite_key(&p.change) {
            out[i] = !later.insert(key);
        }
    }
    out
}

impl Writer<'_> {
    fn run(mut self) {
        self.config.dirty_flush_interval = self
            .config
            .dirty_flush_interval
            .clamp(DIRTY_FLUSH_INTERVAL_MIN, DIRTY_FLUSH_INTERVAL_MAX);
        let mut next_flush = Instant::now() + self.config.dirty_flush_interval;
        loop {
            let batch = self.take(&mut next_flush);
            let dirty_count = batch.dirty.as_ref().map_or(0, |d| d.len());
            if !batch.changes.is_empty() || dirty_count > 0 {
                self.commit(batch.changes, batch.dirty, batch.dirty_since);
            }
            if let Some(generation) = batch.completes_flush {
                let mut q = self.shared.lock();
                q.flush_done = q.flush_done.max(generation);
                drop(q);
                self.shared.done.notify_all();
            }
            if batch.last {
                break;
            }
        }
        // Dropping the database closes the file and releases its lock.
        self.db = None;
    }

    /// Waits for work and takes the next batch.
    fn take(&self, next_flush: &mut Instant) -> Batch {
        let mut q = self.shared.lock();
        loop {
            let now = Instant::now();
            if let Some(retry_at) = self.retry_at.filter(|t| *t > now && !q.shutdown) {
                // Backing off after a disk error: let the queue fill (up to its bound).
                q = self
                    .shared
                    .wake
                    .wait_timeout(q, retry_at - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            let flush_due = now >= *next_flush;
            let flush_wanted = q.flush_requested > q.flush_done;
            if !q.changes.is_empty()
                || q.shutdown
                || flush_wanted
                || (flush_due && !q.dirty.is_empty())
            {
                let n = q.changes.len().min(self.config.batch_max.max(1));
                let changes: Vec<Pending> = q.changes.drain(..n).collect();
                let take_dirty = q.shutdown || flush_wanted || flush_due;
                let (dirty, dirty_since) = if take_dirty {
                    *next_flush = now + self.config.dirty_flush_interval;
                    (Some(std::mem::take(&mut q.dirty)), q.dirty_since.take())
                } else {
                    (None, None)
                };
                let complete = take_dirty && q.changes.is_empty();
                return Batch {
                    changes,
                    dirty,
                    dirty_since,
                    completes_flush: complete.then_some(q.flush_requested),
                    last: complete && q.shutdown,
                };
            }
            if flush_due {
                // Nothing dirty: just start the next interval.
                *next_flush = now + self.config.dirty_flush_interval;
                continue;
            }
            q = self
                .shared
                .wake
                .wait_timeout(q, *next_flush - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Writes one batch in one transaction and reports it.
    fn commit(
        &mut self,
        changes: Vec<Pending>,
        dirty: Option<BTreeMap<EntityId, Entity>>,
        dirty_since: Option<Instant>,
    ) {
        self.seq += 1;
        let dirty = dirty.unwrap_or_default();
        let start = Instant::now();
        let result = self.write(&changes, &dirty);
        let end = Instant::now();
        let oldest = changes
            .iter()
            .map(|p| p.submitted)
            .chain(dirty_since)
            .min()
            .unwrap_or(start);
        let acks: Vec<AckToken> = changes.iter().filter_map(|p| p.ack).collect();
        let n_changes = changes.len();
        let n_dirty = dirty.len();
        match &result {
            Ok(()) => {
                self.retry_at = None;
                self.backoff = Duration::ZERO;
                self.shared.commits.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .changes
                    .fetch_add(n_changes as u64, Ordering::Relaxed);
                self.shared
                    .dirty_entities
                    .fetch_add(n_dirty as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.shared.failed_commits.fetch_add(1, Ordering::Relaxed);
                let retry = e.needs_reopen() && !self.shared.lock().shutdown;
                tracing::error!(
                    error = %e,
                    changes = n_changes,
                    acks = acks.len(),
                    dirty = n_dirty,
                    retry,
                    "world database commit failed; its acknowledgements are refused"
                );
                if retry {
                    self.backoff = (self.backoff * 2).clamp(RETRY_BACKOFF_MIN, RETRY_BACKOFF_MAX);
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.requeue(changes, &dirty, dirty_since);
                }
            }
        }
        let commit = Commit {
            seq: self.seq,
            acks,
            outcome: result.map_err(Arc::new),
            changes: n_changes,
            dirty_entities: n_dirty,
            commit_latency: end - start,
            oldest_wait: end - oldest,
        };
        (self.on_commit)(commit);
    }

    /// Applies everything in one write transaction and commits it durably (one fsync).
    fn write(
        &mut self,
        changes: &[Pending],
        dirty: &BTreeMap<EntityId, Entity>,
    ) -> Result<(), StoreError> {
        let path: &Path = &self.path;
        let db = match &self.db {
            Some(db) => db,
            None => {
                tracing::warn!(path = %path.display(), "reopening the world database after a disk error");
                self.db.insert((self.opener)()?)
            }
        };
        let mut ids = self.next_ids;
        let two_phase = self.config.two_phase_commit;
        let result = (|| {
            let mut txn = db.begin_write().at(path)?;
            txn.set_two_phase_commit(two_phase);
            {
                let mut tables = Tables::open(path, &txn)?;
                for (p, superseded) in changes.iter().zip(superseded_in_batch(changes)) {
                    if !superseded {
                        tables.apply(path, &p.change)?;
                    }
                    raise_ids(&mut ids, &p.change);
                    if let Some(ack) = &p.ack {
                        tables.put_acked(path, ack)?;
                    }
                }
                for e in dirty.values() {
                    tables.put_entity(path, e)?;
                    ids.entity = ids.entity.max(e.id.0.saturating_add(1));
                }
                if ids != self.next_ids {
                    tables.put_next_ids(path, &ids)?;
                }
            }
            // Default durability is `Immediate`: commit returns after the fsync.
            txn.commit().at(path)
        })();
        if result.is_ok() {
            self.next_ids = ids;
        }
        if let Err(e) = &result {
            if e.needs_reopen() {
                self.db = None;
            }
        }
        result
    }

    /// After a failed commit with a disk error, puts its changes back at the front of the
    /// queue, without their tokens (their senders were already refused), and its dirty values
    /// back into the dirty set unless something newer replaced them meanwhile (a newer dirty
    /// value, or a queued put or delete of the same entity).
    ///
    /// Why retry changes whose senders were refused: the core has already applied them to the
    /// world everyone sees, so the disk must converge to it once the disk works again.
    /// Deterministic failures (a value that cannot be encoded) are not retried: they would fail
    /// for ever.
    fn requeue(
        &self,
        changes: Vec<Pending>,
        dirty: &BTreeMap<EntityId, Entity>,
        since: Option<Instant>,
    ) {
        let mut q = self.shared.lock();
        if !dirty.is_empty() {
            // Only changes queued after the batch was taken are newer than its dirty values.
            let superseded: std::collections::HashSet<EntityId> = q
                .changes
                .iter()
                .filter_map(|p| match &p.change {
                    Change::PutEntity(e) => Some(e.id),
                    Change::DeleteEntity(id) => Some(*id),
                    _ => None,
                })
                .collect();
            for (id, e) in dirty {
                if !superseded.contains(id) {
                    q.dirty.entry(*id).or_insert_with(|| e.clone());
                }
            }
            q.dirty_since = match (q.dirty_since, since) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        for mut p in changes.into_iter().rev() {
            p.ack = None;
            q.changes.push_front(p);
        }
    }
}

#[cfg(test)]
mod supersede_tests {
    use super::*;
    use neonet_proto::types::Blueprint;

    fn pending(change: Change) -> Pending {
        Pending {
            change,
            ack: None,
            submitted: Instant::now(),
        }
    }

    fn bp(id: &str, version: u32) -> Change {
        Change::PutBlueprint(Blueprint {
            id: BlueprintId(id.into()),
            version,
            ..Blueprint::default()
        })
    }

    #[test]
    fn only_the_last_whole_value_of_a_thing_in_a_batch_is_written() {
        let changes: Vec<Pending> = [
            bp("a", 1),
            bp("b", 1),
            bp("a", 2),
            Change::ClearChat,
            Change::DeleteBlueprint(BlueprintId("b".into())),
            Change::DeleteEntity(EntityId(7)),
            Change::ClearChat,
            bp("a", 3),
        ]
        .into_iter()
        .map(pending)
        .collect();
        assert_eq!(
            superseded_in_batch(&changes),
            vec![true, true, true, false, false, false, false, false]
        );
        assert_eq!(superseded_in_batch(&changes[..1]), vec![false]);
    }
}
