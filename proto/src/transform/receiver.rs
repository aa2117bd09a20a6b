//! [`ReplicaReceiver`]: the client's side of the transform stream.
//!
//! One module though over 700 lines: about 630 are one concern, decoding a datagram into the
//! per-entity baseline rings ([`Replica`]) its deltas are read against, and the rest are the
//! ring's unit tests. The ring's layout and the decoder are tuned together for a cold cache
//! (`cargo bench --bench transform`, `client_receive`): splitting would separate a private type
//! from its only user and move the ring's methods to another codegen unit, where LLVM may
//! inline them differently (the replicator's split needed `#[inline]` hints to keep its code).

use std::collections::VecDeque;

use super::bits::BitReader;
use super::quant::{QRot, QTransform, Quantizer};
use super::record::{read_absolute, read_delta, DeltaBody, Motion, Sample, AGE_EG_K};
use super::replicator::INDEX_EG_K;
use super::seq::{AckHeader, AckTracker, Arrival, Seq};
use super::{
    read_varint, ClockEcho, ConfigError, TransformConfig, TransformError, BASELINE_AGE_MAX_TICKS,
    FLAG_CLOCK_ECHO, FLAG_OWN_BLOB, KIND_SERVER_STATE, OWN_BLOB_BYTES_MAX,
    RECEIVER_BASELINES_PER_ENTITY, RECORDS_PER_DATAGRAM_MAX,
};
use crate::idhash::IdMap;
use crate::time::{Tick, Time};
use crate::types::{EntityId, Transform};
use crate::wire::limits::{DATAGRAM_BYTES_MAX, ENTITIES_MAX};

/// The header of a server datagram ([`KIND_SERVER_STATE`]), everything before its records:
/// what a receiver that does not decode records (the load tool's light clients) needs to
/// acknowledge the datagram and time it. [`ReplicaReceiver`] reads its datagrams with
/// [`decode_server_header`] too, so the two always agree on the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerDatagramHeader<'a> {
    /// The datagram's wrapping sequence number.
    pub seq: Seq,
    /// The server tick whose state it carries.
    pub tick: Tick,
    /// The own-player blob, when the datagram carries one.
    pub own_blob: Option<&'a [u8]>,
    /// The clock echo, when the datagram carries one (flags bit 1, PROTOCOL.md 12.4).
    pub echo: Option<ClockEcho>,
    /// The baseline age the records' "common age" flag stands for, ticks.
    pub common_age: u64,
    /// Entity records that follow.
    pub records: u64,
    /// Offset of the first record's bits in the datagram.
    pub records_at: usize,
}

/// Reads a server datagram's header, checking its kind, size, flags and bounds; the records
/// that follow are not read (a datagram whose header reads may still have malformed records).
pub fn decode_server_header(bytes: &[u8]) -> Result<ServerDatagramHeader<'_>, TransformError> {
    let kind = *bytes.first().ok_or(TransformError::Empty)?;
    if kind != KIND_SERVER_STATE {
        return Err(TransformError::UnknownKind(kind));
    }
    if bytes.len() > DATAGRAM_BYTES_MAX {
        return Err(TransformError::Oversize(bytes.len()));
    }
    let seq_bytes = bytes.get(1..3).ok_or(TransformError::Truncated)?;
    let seq = Seq(u16::from_le_bytes([seq_bytes[0], seq_bytes[1]]));
    let mut pos = 3;
    let tick = Tick(read_varint(bytes, &mut pos)?);
    let flags = *bytes.get(pos).ok_or(TransformError::Truncated)?;
    pos += 1;
    if flags & !(FLAG_OWN_BLOB | FLAG_CLOCK_ECHO) != 0 {
        return Err(TransformError::Malformed("unknown flags"));
    }
    let own_blob = if flags & FLAG_OWN_BLOB != 0 {
        let len = *bytes.get(pos).ok_or(TransformError::Truncated)? as usize;
        pos += 1;
        if len > OWN_BLOB_BYTES_MAX {
            return Err(TransformError::BlobTooLarge {
                len,
                max: OWN_BLOB_BYTES_MAX,
            });
        }
        let b = bytes.get(pos..pos + len).ok_or(TransformError::Truncated)?;
        pos += len;
        Some(b)
    } else {
        None
    };
    let echo = if flags & FLAG_CLOCK_ECHO != 0 {
        Some(ClockEcho::decode(bytes, &mut pos)?)
    } else {
        None
    };
    let common_age = read_varint(bytes, &mut pos)?;
    if common_age > BASELINE_AGE_MAX_TICKS {
        return Err(TransformError::Malformed("baseline age too large"));
    }
    let records = read_varint(bytes, &mut pos)?;
    if records > RECORDS_PER_DATAGRAM_MAX as u64 {
        return Err(TransformError::TooManyRecords(records as usize));
    }
    Ok(ServerDatagramHeader {
        seq,
        tick,
        own_blob,
        echo,
        common_age,
        records,
        records_at: pos,
    })
}

/// Whether a datagram was new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// New: its records were applied (each only if newer than what was held for its entity).
    Applied,
    /// Already received: ignored.
    Duplicate,
    /// Older than the ack window: ignored.
    TooOld,
}

/// What one server datagram brought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedTick {
    /// Its sequence number.
    pub seq: Seq,
    /// The server tick it describes.
    pub tick: Tick,
    /// Whether it was new.
    pub freshness: Freshness,
    /// The own-player blob it carried (only for [`Freshness::Applied`]).
    pub own_blob: Option<Vec<u8>>,
    /// The clock echo it carried (only for [`Freshness::Applied`]), for the clock sync.
    pub echo: Option<ClockEcho>,
    /// Records it carried, whatever became of each.
    pub records: usize,
    /// Entities whose latest transform it advanced, ascending.
    pub updated: Vec<EntityId>,
    /// Entities it said left this client's interest (not removed from the world), ascending.
    pub left: Vec<EntityId>,
    /// Records older than what was already held for their entity (ignored).
    pub stale: usize,
    /// Records newer than what was held whose baseline this receiver does not hold (skipped).
    /// Happens only for datagrams racing a [`ReplicaReceiver::forget_at`] of their entity.
    pub undecodable: usize,
    /// Whether the datagram will be acknowledged. A datagram with any record this receiver
    /// could not store (undecodable, or stale with its baseline gone) is applied in part but
    /// not acknowledged, so the server never deltas against a value the receiver lacks.
    pub acked: bool,
}

impl ReceivedTick {
    /// A result holding nothing yet, to fill with
    /// [`ReplicaReceiver::handle_datagram_into`] (and reuse across datagrams).
    pub fn empty() -> ReceivedTick {
        ReceivedTick {
            seq: Seq(0),
            tick: Tick(0),
            freshness: Freshness::Applied,
            own_blob: None,
            echo: None,
            records: 0,
            updated: Vec::new(),
            left: Vec::new(),
            stale: 0,
            undecodable: 0,
            acked: false,
        }
    }
}

/// Removals a receiver remembers to ignore late records of removed entities: more than the
/// entities removed during one round trip in any world we expect; older records are long stale.
pub const FORGOTTEN_MAX: usize = 1024;

/// One tracked entity: the values its deltas may name as baselines, the
/// [`RECEIVER_BASELINES_PER_ENTITY`] newest received (by tick), kept inline and sorted by tick
/// in a circular array, so the usual in-order arrival appends (overwriting the oldest).
///
/// Its latest value is the newest held, unless the entity left interest at a later tick: no
/// separate copy is kept, and it is dequantized only when read. The layout is for a cold cache
/// (a load tool runs a thousand receivers, far beyond the last-level cache): the header is one
/// cache line and each value exactly one more. The header also holds the newest value's tick
/// and the low 16 bits of every held value's tick, so ordering a record and finding its
/// baseline read the header alone: a record costs the header, its baseline's line and the line
/// it fills, instead of one more line per value scanned.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Replica {
    /// Tick of the newest value held (meaningless when `len` is 0).
    newest_tick: Tick,
    /// The tick of the datagram that said it left interest, if it did after its latest value.
    left_at: Option<Tick>,
    /// Physical index of the oldest value.
    head: u8,
    /// Values held.
    len: u8,
    /// Whether the latest value changed since [`ReplicaReceiver::take_changed`] last ran.
    changed: bool,
    /// Low 16 bits of the tick of the value in each physical slot: a baseline candidate is
    /// confirmed against the full tick in its slot (ticks 65,536 apart share low bits; a
    /// baseline is at most [`BASELINE_AGE_MAX_TICKS`](super::BASELINE_AGE_MAX_TICKS) old).
    tick_lows: [u16; RECEIVER_BASELINES_PER_ENTITY],
    slots: Slots,
}

// The header fits in one cache line, ahead of the values' lines.
const _: () = assert!(
    std::mem::size_of::<Replica>() == 64 * (1 + RECEIVER_BASELINES_PER_ENTITY),
    "Replica header must stay one cache line"
);

/// The values of a [`Replica`], one cache line each.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Slots([Sample; RECEIVER_BASELINES_PER_ENTITY]);

const EMPTY_SAMPLE: Sample = Sample {
    tick: Tick(0),
    q: QTransform {
        pos: [0; 3],
        rot: QRot {
            largest: 0,
            comps: [0; 3],
        },
        scale: None,
    },
    motion: Motion::NONE,
};

impl Default for Replica {
    fn default() -> Replica {
        Replica {
            newest_tick: Tick(0),
            left_at: None,
            head: 0,
            len: 0,
            changed: false,
            tick_lows: [0; RECEIVER_BASELINES_PER_ENTITY],
            slots: Slots([EMPTY_SAMPLE; RECEIVER_BASELINES_PER_ENTITY]),
        }
    }
}

impl Replica {
    #[inline(always)]
    fn phys(&self, i: usize) -> usize {
        (self.head as usize + i) % RECEIVER_BASELINES_PER_ENTITY
    }

    /// The `i`-th oldest value.
    #[inline(always)]
    fn get(&self, i: usize) -> &Sample {
        &self.slots.0[self.phys(i)]
    }

    /// Stores `s` in physical slot `at`, keeping the header's tick bits in step.
    #[inline(always)]
    fn put(&mut self, at: usize, s: Sample) {
        self.tick_lows[at] = s.tick.0 as u16;
        self.slots.0[at] = s;
    }

    /// The tick of the newest value held, read from the header.
    #[inline(always)]
    fn newest_tick(&self) -> Option<Tick> {
        (self.len > 0).then_some(self.newest_tick)
    }

    /// The newest value held.
    #[inline(always)]
    fn newest(&self) -> Option<&Sample> {
        (self.len > 0).then(|| self.get(self.len as usize - 1))
    }

    /// The latest value: the newest held, unless the entity left interest after it.
    #[inline]
    fn latest(&self) -> Option<&Sample> {
        self.newest()
            .filter(|s| self.left_at.is_none_or_tick_before(s.tick))
    }

    /// The value of `tick`, if held: the header's tick bits pick the candidates, newest first,
    /// and only a candidate's own line is read.
    #[inline]
    fn find(&self, tick: Tick) -> Option<&Sample> {
        let low = tick.0 as u16;
        for i in (0..self.len as usize).rev() {
            let at = self.phys(i);
            if self.tick_lows[at] == low {
                let s = &self.slots.0[at];
                if s.tick == tick {
                    return Some(s);
                }
            }
        }
        None
    }

    /// Keeps `s` if its tick is new and among the newest [`RECEIVER_BASELINES_PER_ENTITY`]
    /// (evicting the oldest when full).
    #[inline]
    fn insert(&mut self, s: Sample) {
        let n = RECEIVER_BASELINES_PER_ENTITY;
        let len = self.len as usize;
        if len == 0 || self.newest_tick < s.tick {
            // In order: append.
            self.newest_tick = s.tick;
            if len == n {
                self.put(self.head as usize, s);
                self.head = ((self.head as usize + 1) % n) as u8;
            } else {
                self.put(self.phys(len), s);
                self.len += 1;
            }
            return;
        }
        // Out of order: its place among the held values (ascending by tick). The newest value
        // stays the newest.
        let mut pos = len;
        while pos > 0 && self.get(pos - 1).tick >= s.tick {
            if self.get(pos - 1).tick == s.tick {
                return;
            }
            pos -= 1;
        }
        if len == n {
            if pos == 0 {
                return; // older than everything held
            }
            // Drop the oldest; `s` goes just before what was at `pos`.
            self.head = ((self.head as usize + 1) % n) as u8;
            self.len -= 1;
            pos -= 1;
        }
        let len = self.len as usize;
        for i in (pos..len).rev() {
            let (from, to) = (self.phys(i), self.phys(i + 1));
            self.put(to, self.slots.0[from]);
        }
        self.put(self.phys(pos), s);
        self.len += 1;
    }

    /// Drops every value at `tick` or older.
    fn drop_through(&mut self, tick: Tick) {
        while self.len > 0 && self.get(0).tick <= tick {
            self.head = ((self.head as usize + 1) % RECEIVER_BASELINES_PER_ENTITY) as u8;
            self.len -= 1;
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Parsed {
    Left(EntityId),
    Absolute(EntityId, QTransform),
    Delta(EntityId, u64, DeltaBody),
}

impl Parsed {
    fn id(&self) -> EntityId {
        match *self {
            Parsed::Left(id) | Parsed::Absolute(id, _) | Parsed::Delta(id, _, _) => id,
        }
    }
}

/// The client's transform receiver: decodes server datagrams, keeps each remote entity's latest
/// authoritative transform with its server tick, and produces the ack header to send upstream.
///
/// Inputs: [`ReplicaReceiver::handle_datagram`]. Getters: [`ReplicaReceiver::latest`],
/// [`ReplicaReceiver::iter`]. Output: [`ReplicaReceiver::ack_header`], to put in every datagram
/// the client sends. Commands: [`ReplicaReceiver::forget`] when the reliable stream says an
/// entity was removed.
///
/// Memory: one slot per tracked entity, at most [`ENTITIES_MAX`], each about 1.1 KiB (its
/// [`RECEIVER_BASELINES_PER_ENTITY`] baselines inline, no further allocation); slots of
/// forgotten entities are reused. A record costs one hash lookup, no allocation.
#[derive(Clone, Debug)]
pub struct ReplicaReceiver {
    qz: Quantizer,
    acks: AckTracker,
    /// Slot in `replicas` of every tracked entity (at most [`ENTITIES_MAX`]).
    index: IdMap<u32>,
    /// Tracked entities' state; slots in `free` are unused. Never longer than the most
    /// entities tracked at once.
    replicas: Vec<Replica>,
    /// Unused slots of `replicas`, reused before it grows.
    free: Vec<u32>,
    parsed: Vec<Parsed>,
    newest_tick: Option<Tick>,
    forgotten: VecDeque<(EntityId, Tick)>,
}

impl ReplicaReceiver {
    /// A receiver; `config` must match the server's quantization fields.
    pub fn new(config: &TransformConfig) -> Result<ReplicaReceiver, ConfigError> {
        Ok(ReplicaReceiver {
            qz: Quantizer::new(config)?,
            acks: AckTracker::new(),
            index: IdMap::default(),
            replicas: Vec::new(),
            free: Vec::new(),
            parsed: Vec::new(),
            newest_tick: None,
            forgotten: VecDeque::new(),
        })
    }

    /// The quantizer.
    pub fn quantizer(&self) -> &Quantizer {
        &self.qz
    }

    /// The ack header to send upstream.
    pub fn ack_header(&self) -> AckHeader {
        self.acks.header()
    }

    /// The newest server tick of any datagram received.
    pub fn newest_tick(&self) -> Option<Tick> {
        self.newest_tick
    }

    /// The entity's latest authoritative transform and the server tick it is from, or `None` if
    /// unknown or out of interest.
    #[inline]
    pub fn latest(&self, id: EntityId) -> Option<(Tick, Transform)> {
        let s = self.replica(id)?.latest()?;
        Some((s.tick, self.qz.dequantize(&s.q)))
    }

    /// Like [`ReplicaReceiver::latest`], quantized (what the server sent, bit for bit).
    pub fn latest_quantized(&self, id: EntityId) -> Option<(Tick, QTransform)> {
        let s = self.replica(id)?.latest()?;
        Some((s.tick, s.q))
    }

    #[inline]
    fn replica(&self, id: EntityId) -> Option<&Replica> {
        self.index.get(&id).map(|&i| &self.replicas[i as usize])
    }

    /// Every entity in interest with its latest tick and transform, ascending by id.
    pub fn iter(&self) -> impl Iterator<Item = (EntityId, Tick, Transform)> + '_ {
        let mut ids: Vec<(EntityId, u32)> = self.index.iter().map(|(&id, &i)| (id, i)).collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|(id, i)| {
            let s = self.replicas[i as usize].latest()?;
            Some((id, s.tick, self.qz.dequantize(&s.q)))
        })
    }

    /// Calls `f` with every entity whose latest transform changed since the last call (in no
    /// particular order), and forgets that they changed: how a mirror of the world catches up
    /// lazily, only when it is read, instead of once per record. Costs one pass over the
    /// tracked entities.
    pub fn take_changed(&mut self, mut f: impl FnMut(EntityId, Tick, Transform)) {
        for (&id, &i) in self.index.iter() {
            let r = &mut self.replicas[i as usize];
            if !std::mem::take(&mut r.changed) {
                continue;
            }
            if let Some(s) = r.latest() {
                f(id, s.tick, self.qz.dequantize(&s.q));
            }
        }
    }

    /// Entities tracked (in interest or remembered as having left).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Forgets an entity removed from the world, as of the newest tick received. Prefer
    /// [`ReplicaReceiver::forget_at`] with the server tick of the removal when it is known.
    pub fn forget(&mut self, id: EntityId) {
        let at = self.newest_tick.unwrap_or_default();
        self.forget_at(id, at);
    }

    /// Forgets an entity the server removed at tick `removed_at`: records of it from datagrams
    /// of that tick or earlier still in flight are ignored (they would otherwise bring back a
    /// ghost). The last [`FORGOTTEN_MAX`] removals are remembered; a delta for a forgotten
    /// entity from a later tick counts as [`ReceivedTick::undecodable`] and is skipped.
    pub fn forget_at(&mut self, id: EntityId, removed_at: Tick) {
        if let Some(i) = self.index.remove(&id) {
            self.free.push(i);
        }
        if self.forgotten.len() >= FORGOTTEN_MAX {
            self.forgotten.pop_front();
        }
        self.forgotten.push_back((id, removed_at));
    }

    /// Decodes and applies one server datagram. Garbage gives an error and changes nothing;
    /// duplicates and datagrams older than the ack window are reported and ignored.
    pub fn handle_datagram(
        &mut self,
        bytes: &[u8],
        now: Time,
    ) -> Result<ReceivedTick, TransformError> {
        let mut rt = ReceivedTick::empty();
        self.handle_datagram_into(bytes, now, &mut rt)?;
        Ok(rt)
    }

    /// [`ReplicaReceiver::handle_datagram`] into `rt`, reusing its vectors' memory (a receive
    /// loop keeps one [`ReceivedTick`] and allocates nothing per datagram). On an error `rt`
    /// holds nothing meaningful; the receiver is unchanged as with `handle_datagram`.
    pub fn handle_datagram_into(
        &mut self,
        bytes: &[u8],
        _now: Time,
        rt: &mut ReceivedTick,
    ) -> Result<(), TransformError> {
        let Header {
            seq,
            tick,
            blob,
            echo,
        } = self.parse(bytes)?;
        let mut blob_buf = rt.own_blob.take().unwrap_or_default();
        rt.seq = seq;
        rt.tick = tick;
        rt.echo = None;
        rt.records = self.parsed.len();
        rt.freshness = Freshness::Applied;
        rt.updated.clear();
        rt.left.clear();
        rt.stale = 0;
        rt.undecodable = 0;
        rt.acked = false;
        match self.acks.classify(seq) {
            Arrival::Duplicate => {
                rt.freshness = Freshness::Duplicate;
                return Ok(());
            }
            Arrival::TooOld => {
                rt.freshness = Freshness::TooOld;
                return Ok(());
            }
            Arrival::New => {}
        }
        rt.own_blob = blob.map(|b| {
            blob_buf.clear();
            blob_buf.extend_from_slice(b);
            blob_buf
        });
        rt.echo = echo;
        rt.acked = true;
        rt.updated.reserve(self.parsed.len());
        self.newest_tick = self.newest_tick.max(Some(tick));
        let parsed = std::mem::take(&mut self.parsed);
        for p in &parsed {
            self.apply(p, tick, rt);
        }
        self.parsed = parsed;
        if rt.acked {
            self.acks.record(seq);
        }
        Ok(())
    }

    /// The slot of `id`, tracking it if it is new; `None` at [`ENTITIES_MAX`].
    #[inline]
    fn slot(&mut self, id: EntityId) -> Option<usize> {
        if let Some(&i) = self.index.get(&id) {
            return Some(i as usize);
        }
        if self.index.len() >= ENTITIES_MAX {
            return None;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.replicas[i as usize] = Replica::default();
                i
            }
            None => {
                self.replicas.push(Replica::default());
                (self.replicas.len() - 1) as u32
            }
        };
        self.index.insert(id, i);
        Some(i as usize)
    }

    fn apply(&mut self, p: &Parsed, tick: Tick, rt: &mut ReceivedTick) {
        let id = p.id();
        let known = self.index.get(&id).copied();
        if known.is_none() && self.forgotten.iter().any(|&(f, at)| f == id && tick <= at) {
            rt.stale += 1;
            return;
        }
        let Some(slot) = known.map(|i| i as usize).or_else(|| self.slot(id)) else {
            rt.undecodable += 1;
            rt.acked = false;
            return;
        };
        let r = &mut self.replicas[slot];
        let newer =
            r.newest_tick().is_none_or_tick_before(tick) && r.left_at.is_none_or_tick_before(tick);
        match *p {
            Parsed::Left(_) => {
                if newer {
                    r.left_at = Some(tick);
                    r.drop_through(tick);
                    rt.left.push(id);
                } else {
                    rt.stale += 1;
                }
                return;
            }
            Parsed::Absolute(_, q) => r.insert(Sample::absolute(tick, q)),
            Parsed::Delta(_, age, body) => {
                let base_tick = Tick(tick.0 - age);
                let decoded = r
                    .find(base_tick)
                    .and_then(|base| Some((base, body.apply(&self.qz, tick, base).ok()?)));
                let Some((base, q)) = decoded else {
                    // Not stored: this datagram must not be acknowledged (the server would
                    // promote the value to a baseline this receiver lacks).
                    rt.acked = false;
                    if newer {
                        rt.undecodable += 1;
                    } else {
                        rt.stale += 1; // e.g. overtaken by a left notice that cleared its baseline
                    }
                    return;
                };
                let s = Sample::from_base(tick, q, base);
                r.insert(s);
            }
        }
        if newer {
            // The newest value held is now this one (a value newer than all held is always
            // kept), so it is the latest.
            r.changed = true;
            rt.updated.push(id);
        } else {
            rt.stale += 1;
        }
    }

    /// Parses the whole datagram into `self.parsed` before anything is applied.
    fn parse<'a>(&mut self, bytes: &'a [u8]) -> Result<Header<'a>, TransformError> {
        self.parsed.clear();
        let header = decode_server_header(bytes)?;
        let (tick, common, count) = (header.tick, header.common_age, header.records);
        let pos = header.records_at;
        let mut r = BitReader::new(&bytes[pos..]);
        let mut prev: Option<u64> = None;
        for _ in 0..count {
            let gap = r.read_eg(INDEX_EG_K)?;
            let id = match prev {
                None => gap,
                Some(p) => p + 1 + gap,
            };
            if id > u32::MAX as u64 {
                return Err(TransformError::Malformed("entity id out of range"));
            }
            prev = Some(id);
            let id = EntityId(id as u32);
            let rec = if r.read_bool()? {
                let age = if r.read_bool()? {
                    common
                } else {
                    r.read_eg(AGE_EG_K)?.saturating_add(1)
                };
                if age == 0 || age > BASELINE_AGE_MAX_TICKS || age > tick.0 {
                    return Err(TransformError::Malformed("bad baseline age"));
                }
                Parsed::Delta(id, age, read_delta(&mut r, &self.qz)?)
            } else if r.read_bool()? {
                Parsed::Absolute(id, read_absolute(&mut r, &self.qz)?)
            } else {
                Parsed::Left(id)
            };
            self.parsed.push(rec);
        }
        if r.remaining_bits() >= 8 {
            return Err(TransformError::Malformed("trailing bytes"));
        }
        Ok(Header {
            seq: header.seq,
            tick,
            blob: header.own_blob,
            echo: header.echo,
        })
    }
}

/// A server datagram's byte-aligned header, as parsed.
struct Header<'a> {
    seq: Seq,
    tick: Tick,
    blob: Option<&'a [u8]>,
    echo: Option<ClockEcho>,
}

trait TickBefore {
    fn is_none_or_tick_before(&self, tick: Tick) -> bool;
}

impl TickBefore for Option<Tick> {
    fn is_none_or_tick_before(&self, tick: Tick) -> bool {
        !matches!(self, Some(t) if *t >= tick)
    }
}

#[cfg(test)]
mod ring_tests {
    use super::*;
    use crate::rng::Rng;

    /// The ring's contract, as a plain list: keep the newest ticks, ignore duplicates.
    fn model_insert(m: &mut Vec<u64>, tick: u64) {
        if m.contains(&tick) {
            return;
        }
        if m.len() < RECEIVER_BASELINES_PER_ENTITY {
            m.push(tick);
        } else if let Some(min) = m.iter_mut().min() {
            if *min < tick {
                *min = tick;
            }
        }
        m.sort_unstable();
    }

    #[test]
    fn ring_keeps_the_newest_ticks_sorted_whatever_the_arrival_order() {
        // Now and then the ticks jump by just under 65,536, so values whose ticks share their
        // low 16 bits are held together: `find` must confirm the full tick.
        let mut rng = Rng::new(11);
        for _ in 0..200 {
            let mut ring = Replica::default();
            let mut model = Vec::new();
            let mut base = 100u64;
            for _ in 0..300 {
                let r = rng.below(10);
                if r == 0 {
                    let t = base.saturating_sub(rng.below(20));
                    ring.drop_through(Tick(t));
                    model.retain(|&m| m > t);
                    continue;
                }
                // Mostly in order, sometimes late, sometimes repeated.
                let tick = match r {
                    1..=5 => {
                        base += 1 + rng.below(2);
                        base
                    }
                    6 if rng.below(20) == 0 => {
                        base += 65_536 - rng.below(4);
                        base
                    }
                    6 => {
                        base += 1;
                        base
                    }
                    7 | 8 => base.saturating_sub(rng.below(24)),
                    _ => base,
                };
                let mut q = QTransform::default();
                q.pos[0] = tick as u32;
                ring.insert(Sample::absolute(Tick(tick), q));
                model_insert(&mut model, tick);
                let held: Vec<u64> = (0..ring.len as usize).map(|i| ring.get(i).tick.0).collect();
                assert_eq!(held, model);
                let window = base.saturating_sub(40)..=base + 1;
                let aliases = window.clone().filter_map(|t| t.checked_sub(65_536));
                for t in window.chain(aliases) {
                    let found = ring.find(Tick(t));
                    assert_eq!(found.is_some(), model.contains(&t), "tick {t}");
                    if let Some(s) = found {
                        assert_eq!((s.tick, s.q.pos[0]), (Tick(t), t as u32));
                    }
                }
                if let Some(&newest) = model.last() {
                    assert_eq!(ring.newest_tick(), Some(Tick(newest)));
                }
            }
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn a_tracked_entity_costs_about_a_kibibyte() {
        // What the type's documentation says (1088 bytes: a header line and 16 value lines).
        let size = std::mem::size_of::<Replica>();
        assert!(size <= 1200, "{size}");
    }
}
