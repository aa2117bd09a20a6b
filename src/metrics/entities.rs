//! Per-entity bandwidth attribution ([`EntityBytesBatch`], the top-K table) and the live
//! view's packet trails (sampled entity updates, thinned by a per-tick stride).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::{
    lock, EntityBandwidth, Metrics, ENTITY_IDLE_FORGET, TOP_ENTITIES_K, TRAIL_RING_LEN,
    USER_NAME_CHARS_MAX,
};

/// Per-entity byte counts gathered by the relay during a tick without any locking, then merged
/// into [`Metrics`] once with [`Metrics::merge_entity_bytes`].
#[derive(Debug, Default)]
pub struct EntityBytesBatch {
    bytes: HashMap<u32, u64, BuildHasherDefault<IdHasher>>,
}

/// A hasher for entity ids, which are small dense integers chosen by the relay (never by a
/// peer, so no hash flooding to defend against): one multiply (Fibonacci hashing) instead of
/// SipHash, because the batch takes one addition per entity update (≈ 100,000 per tick with
/// 1,000 clients).
#[derive(Debug, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl EntityBytesBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` sent on behalf of `entity_id`.
    #[inline]
    pub fn add(&mut self, entity_id: u32, bytes: usize) {
        *self.bytes.entry(entity_id).or_insert(0) += bytes as u64;
    }

    /// Whether nothing was added since the last merge.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[derive(Default)]
pub(super) struct EntityTable {
    entries: HashMap<u32, EntityEntry>,
    /// Display names by entity id, as last published ([`Metrics::publish_entity_names`]).
    names: HashMap<u32, String>,
    pub(super) untracked: u64,
}

struct EntityEntry {
    bytes: u64,
    /// When bytes were last sent on its behalf.
    last: Instant,
}

pub(super) struct TrailRecord {
    pub(super) seq: u64,
    pub(super) at: Instant,
    pub(super) entity_id: u32,
    pub(super) session_id: u64,
    pub(super) bytes: u32,
}

#[derive(Default)]
pub(super) struct TrailRing {
    pub(super) records: VecDeque<TrailRecord>,
    pub(super) next_seq: u64,
}

impl TrailRing {
    /// Records one update, dropping the oldest beyond [`TRAIL_RING_LEN`].
    fn push(&mut self, entity_id: u32, session_id: u64, bytes: usize) {
        if self.records.len() == TRAIL_RING_LEN {
            self.records.pop_front();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.records.push_back(TrailRecord {
            seq,
            at: Instant::now(),
            entity_id,
            session_id,
            bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
        });
    }
}

impl Metrics {
    // ----- world and entities -----

    /// Entities now in the world.
    pub fn set_entity_count(&self, count: usize) {
        self.counts.entities.store(count as u64, Relaxed);
    }

    /// `bytes` were sent on behalf of `entity_id`. Takes a lock: at full fan-out prefer an
    /// [`EntityBytesBatch`] merged once per tick.
    pub fn record_entity_bytes(&self, entity_id: u32, bytes: usize) {
        let now = Instant::now();
        let mut table = lock(&self.entities);
        Self::add_entity_bytes(&mut table, entity_id, bytes as u64, now);
    }

    /// Adds a tick's worth of per-entity bytes and empties `batch` (keeping its allocation).
    pub fn merge_entity_bytes(&self, batch: &mut EntityBytesBatch) {
        if batch.bytes.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut table = lock(&self.entities);
        for (entity_id, bytes) in batch.bytes.drain() {
            Self::add_entity_bytes(&mut table, entity_id, bytes, now);
        }
    }

    fn add_entity_bytes(table: &mut EntityTable, entity_id: u32, bytes: u64, now: Instant) {
        let full = table.entries.len() >= neonet_proto::wire::limits::ENTITIES_MAX;
        match table.entries.get_mut(&entity_id) {
            Some(e) => {
                e.bytes += bytes;
                e.last = now;
            }
            None if full => table.untracked += bytes,
            None => {
                table
                    .entries
                    .insert(entity_id, EntityEntry { bytes, last: now });
            }
        }
    }

    /// The entity left the world: stop attributing bytes to it. (Entities nothing is sent for
    /// are also forgotten by themselves after [`ENTITY_IDLE_FORGET`].)
    pub fn forget_entity(&self, entity_id: u32) {
        lock(&self.entities).entries.remove(&entity_id);
    }

    /// Replaces the names `/status` shows beside entity ids in the top entities (typically
    /// each joined player's entity with its user's name). At most
    /// [`ENTITIES_MAX`](neonet_proto::wire::limits::ENTITIES_MAX) are kept, each cut to
    /// [`USER_NAME_CHARS_MAX`] characters.
    pub fn publish_entity_names(&self, names: impl IntoIterator<Item = (u32, String)>) {
        let names = names
            .into_iter()
            .take(neonet_proto::wire::limits::ENTITIES_MAX)
            .map(|(id, name)| {
                let name = if name.chars().count() > USER_NAME_CHARS_MAX {
                    name.chars().take(USER_NAME_CHARS_MAX).collect()
                } else {
                    name
                };
                (id, name)
            })
            .collect();
        lock(&self.entities).names = names;
    }

    /// The [`TOP_ENTITIES_K`] entities that cost the most bytes, most first (ties by id), among
    /// those bytes were sent for in the last [`ENTITY_IDLE_FORGET`].
    pub fn top_entities(&self) -> Vec<EntityBandwidth> {
        self.top_entities_at(Instant::now())
    }

    /// [`Metrics::top_entities`] as of `now`: first forgets the entities idle for
    /// [`ENTITY_IDLE_FORGET`].
    pub(super) fn top_entities_at(&self, now: Instant) -> Vec<EntityBandwidth> {
        let mut table = lock(&self.entities);
        table
            .entries
            .retain(|_, e| now.saturating_duration_since(e.last) < ENTITY_IDLE_FORGET);
        let mut heap = BinaryHeap::with_capacity(TOP_ENTITIES_K + 1);
        for (&id, e) in &table.entries {
            let bytes = e.bytes;
            // Min-heap on (bytes, Reverse(id)): the smallest bytes, then the largest id, leaves.
            heap.push(Reverse((bytes, Reverse(id))));
            if heap.len() > TOP_ENTITIES_K {
                heap.pop();
            }
        }
        let mut top: Vec<EntityBandwidth> = heap
            .into_iter()
            .map(|Reverse((bytes_out, Reverse(entity_id)))| EntityBandwidth {
                entity_id,
                name: table.names.get(&entity_id).cloned(),
                bytes_out,
            })
            .collect();
        drop(table);
        top.sort_by(|a, b| {
            b.bytes_out
                .cmp(&a.bytes_out)
                .then(a.entity_id.cmp(&b.entity_id))
        });
        top
    }

    /// An update of `entity_id` taking `bytes` was sent to `session_id`. Cheap enough to call
    /// for every update: only about [`TRAIL_SAMPLES_PER_TICK`](super::TRAIL_SAMPLES_PER_TICK)
    /// per tick are kept, spread evenly over the tick's calls (the stride adapts at each
    /// [`Metrics::record_tick`]).
    #[inline]
    pub fn record_trail(&self, entity_id: u32, session_id: u64, bytes: usize) {
        let n = self.counts.trail_calls.fetch_add(1, Relaxed);
        let stride = self.counts.trail_stride.load(Relaxed);
        if n % stride != 0 {
            return;
        }
        self.push_trail(entity_id, session_id, bytes);
    }

    /// [`Metrics::record_trail`] for many updates at once, `(entity_id, session_id, bytes)`:
    /// one atomic step and at most one lock for the whole batch.
    pub fn record_trails<I>(&self, updates: I)
    where
        I: ExactSizeIterator<Item = (u32, u64, usize)>,
    {
        let n = updates.len() as u64;
        if n == 0 {
            return;
        }
        let first = self.counts.trail_calls.fetch_add(n, Relaxed);
        let stride = self.counts.trail_stride.load(Relaxed).max(1);
        // The first index in this batch that falls on the stride.
        let mut next = (stride - first % stride) % stride;
        if next >= n {
            return;
        }
        let mut ring = lock(&self.trails);
        for (k, (entity_id, session_id, bytes)) in updates.enumerate() {
            if k as u64 != next {
                continue;
            }
            next += stride;
            ring.push(entity_id, session_id, bytes);
        }
    }

    #[cold]
    fn push_trail(&self, entity_id: u32, session_id: u64, bytes: usize) {
        lock(&self.trails).push(entity_id, session_id, bytes);
    }
}
