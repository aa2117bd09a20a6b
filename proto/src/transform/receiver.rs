//! [`ReplicaReceiver`]: the client's side of the transform stream.

use std::collections::{BTreeMap, VecDeque};

use super::bits::BitReader;
use super::quant::{QTransform, Quantizer};
use super::record::{read_absolute, read_delta, DeltaBody, Sample, AGE_EG_K};
use super::replicator::INDEX_EG_K;
use super::seq::{AckHeader, AckTracker, Arrival, Seq};
use super::{
    read_varint, ConfigError, TransformConfig, TransformError, BASELINE_AGE_MAX_TICKS,
    KIND_SERVER_STATE, OWN_BLOB_BYTES_MAX, RECEIVER_BASELINES_PER_ENTITY, RECORDS_PER_DATAGRAM_MAX,
};
use crate::limits::{DATAGRAM_BYTES_MAX, ENTITIES_MAX};
use crate::time::{Tick, Time};
use crate::types::{EntityId, Transform};

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

/// Removals a receiver remembers to ignore late records of removed entities: more than the
/// entities removed during one round trip in any world we expect; older records are long stale.
pub const FORGOTTEN_MAX: usize = 1024;

#[derive(Clone, Debug, Default)]
struct Replica {
    latest: Option<(Tick, QTransform)>,
    left_at: Option<Tick>,
    /// The newest values received, by tick, at most [`RECEIVER_BASELINES_PER_ENTITY`].
    ring: Vec<Sample>,
}

impl Replica {
    fn insert(&mut self, s: Sample) {
        if self.ring.iter().any(|r| r.tick == s.tick) {
            return;
        }
        if self.ring.len() < RECEIVER_BASELINES_PER_ENTITY {
            self.ring.push(s);
            return;
        }
        let Some((oldest, _)) = self.ring.iter().enumerate().min_by_key(|(_, r)| r.tick) else {
            return;
        };
        if self.ring[oldest].tick < s.tick {
            self.ring[oldest] = s;
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Parsed {
    Left(EntityId),
    Absolute(EntityId, QTransform),
    Delta(EntityId, u64, DeltaBody),
}

/// The client's transform receiver: decodes server datagrams, keeps each remote entity's latest
/// authoritative transform with its server tick, and produces the ack header to send upstream.
///
/// Inputs: [`ReplicaReceiver::handle_datagram`]. Getters: [`ReplicaReceiver::latest`],
/// [`ReplicaReceiver::iter`]. Output: [`ReplicaReceiver::ack_header`], to put in every datagram
/// the client sends. Commands: [`ReplicaReceiver::forget`] when the reliable stream says an
/// entity was removed.
#[derive(Clone, Debug)]
pub struct ReplicaReceiver {
    qz: Quantizer,
    acks: AckTracker,
    entities: BTreeMap<EntityId, Replica>,
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
            entities: BTreeMap::new(),
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
    pub fn latest(&self, id: EntityId) -> Option<(Tick, Transform)> {
        self.latest_quantized(id)
            .map(|(t, q)| (t, self.qz.dequantize(&q)))
    }

    /// Like [`ReplicaReceiver::latest`], quantized (what the server sent, bit for bit).
    pub fn latest_quantized(&self, id: EntityId) -> Option<(Tick, QTransform)> {
        self.entities.get(&id).and_then(|r| r.latest)
    }

    /// Every entity in interest with its latest tick and transform, ascending by id.
    pub fn iter(&self) -> impl Iterator<Item = (EntityId, Tick, Transform)> + '_ {
        self.entities
            .iter()
            .filter_map(|(id, r)| r.latest.map(|(t, q)| (*id, t, self.qz.dequantize(&q))))
    }

    /// Entities tracked (in interest or remembered as having left).
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
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
        self.entities.remove(&id);
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
        _now: Time,
    ) -> Result<ReceivedTick, TransformError> {
        let (seq, tick, blob) = self.parse(bytes)?;
        let mut rt = ReceivedTick {
            seq,
            tick,
            freshness: Freshness::Applied,
            own_blob: None,
            updated: Vec::new(),
            left: Vec::new(),
            stale: 0,
            undecodable: 0,
            acked: false,
        };
        match self.acks.classify(seq) {
            Arrival::Duplicate => {
                rt.freshness = Freshness::Duplicate;
                return Ok(rt);
            }
            Arrival::TooOld => {
                rt.freshness = Freshness::TooOld;
                return Ok(rt);
            }
            Arrival::New => {}
        }
        rt.own_blob = blob.map(|b| b.to_vec());
        rt.acked = true;
        self.newest_tick = self.newest_tick.max(Some(tick));
        let parsed = std::mem::take(&mut self.parsed);
        for p in &parsed {
            self.apply(p, tick, &mut rt);
        }
        self.parsed = parsed;
        if rt.acked {
            self.acks.record(seq);
        }
        Ok(rt)
    }

    fn apply(&mut self, p: &Parsed, tick: Tick, rt: &mut ReceivedTick) {
        let id = match *p {
            Parsed::Left(id) | Parsed::Absolute(id, _) | Parsed::Delta(id, _, _) => id,
        };
        if !self.entities.contains_key(&id)
            && self.forgotten.iter().any(|&(f, at)| f == id && tick <= at)
        {
            rt.stale += 1;
            return;
        }
        if !self.entities.contains_key(&id) && self.entities.len() >= ENTITIES_MAX {
            rt.undecodable += 1;
            rt.acked = false;
            return;
        }
        let r = self.entities.entry(id).or_default();
        let newer = r.latest.is_none_or_tick_before(tick) && r.left_at.is_none_or_tick_before(tick);
        match *p {
            Parsed::Left(_) => {
                if newer {
                    r.latest = None;
                    r.left_at = Some(tick);
                    r.ring.retain(|s| s.tick > tick);
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
                    .ring
                    .iter()
                    .find(|s| s.tick == base_tick)
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
            if let Some(s) = r.ring.iter().find(|s| s.tick == tick) {
                r.latest = Some((tick, s.q));
                rt.updated.push(id);
            }
        } else {
            rt.stale += 1;
        }
    }

    /// Parses the whole datagram into `self.parsed` before anything is applied.
    fn parse<'a>(
        &mut self,
        bytes: &'a [u8],
    ) -> Result<(Seq, Tick, Option<&'a [u8]>), TransformError> {
        self.parsed.clear();
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
        if flags & !1 != 0 {
            return Err(TransformError::Malformed("unknown flags"));
        }
        let blob = if flags & 1 == 1 {
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
        let common = read_varint(bytes, &mut pos)?;
        if common > BASELINE_AGE_MAX_TICKS {
            return Err(TransformError::Malformed("baseline age too large"));
        }
        let count = read_varint(bytes, &mut pos)?;
        if count > RECORDS_PER_DATAGRAM_MAX as u64 {
            return Err(TransformError::TooManyRecords(count as usize));
        }
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
        Ok((seq, tick, blob))
    }
}

trait TickBefore {
    fn is_none_or_tick_before(&self, tick: Tick) -> bool;
}

impl TickBefore for Option<(Tick, QTransform)> {
    fn is_none_or_tick_before(&self, tick: Tick) -> bool {
        !matches!(self, Some((t, _)) if *t >= tick)
    }
}

impl TickBefore for Option<Tick> {
    fn is_none_or_tick_before(&self, tick: Tick) -> bool {
        !matches!(self, Some(t) if *t >= tick)
    }
}
