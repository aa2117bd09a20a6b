//! [`ClientReplicator`]: the server's transform sender for one client.
//!
//! Per tick: update interest, grow the priority of every entity that needs sending, then fill
//! datagrams highest priority first up to the client's byte budget and the connection's current
//! datagram size. Memory is bounded: one [`Tracked`] per world entity, [`SENT_HISTORY_LEN`]
//! remembered datagrams, scratch buffers reused across ticks.

use super::bits::{bit_width, BitRun, BitWriter};
use super::quant::QRot;
use super::quant::{QTransform, Quantizer};
use super::record::{
    write_absolute, write_absolute_run, write_delta, write_delta_run, Motion, Sample, AGE_EG_K,
};
use super::seq::{AckHeader, Seq, ACK_WINDOW};
use super::{
    varint_len, write_varint, ConfigError, TransformConfig, TransformError, BASELINE_AGE_MAX_TICKS,
    DATAGRAM_BYTES_MIN, KIND_SERVER_STATE, OWN_BLOB_BYTES_MAX, RECEIVER_BASELINES_PER_ENTITY,
    RECORDS_PER_DATAGRAM_MAX, SENT_HISTORY_LEN,
};
use crate::limits::DATAGRAM_BYTES_MAX;
use crate::time::{Tick, Time};
use crate::types::{EntityId, SessionId, Transform, Vec3};
use std::cell::RefCell;

/// Exp-Golomb order of entity index gaps: consecutive ids cost 1 bit.
pub(crate) const INDEX_EG_K: u32 = 0;
/// Round-trip estimate before the first ack, microseconds: a typical internet RTT, so resends
/// of unacknowledged values start neither at once nor after seconds.
const RTT_INITIAL_US: u64 = 200_000;
/// Candidates that did not fit, in a row, after which a datagram is considered full.
const FIT_ATTEMPTS_MAX: usize = 16;
/// Ages below this may become a datagram's common age: round trips of up to 4 s at 60 Hz.
const COMMON_AGE_CANDIDATES_MAX: usize = 256;
// The ack bitset `unacked` has one bit per history slot in whole words.
const _: () = assert!(SENT_HISTORY_LEN % 64 == 0);
/// Header bytes besides the tick varint and the blob: kind 1 + seq 2 + flags 1 + common age
/// varint ≤ 2 (ages < 256) + record count varint ≤ 2 (≤ 1024).
const HEADER_FIXED_BYTES: usize = 8;

/// One entity's current state, quantized once per tick and shared by every client's replicator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EntitySample {
    /// The entity.
    pub id: EntityId,
    /// Its quantized transform this tick.
    pub q: QTransform,
    /// Its position, metres (for interest and distance priority).
    pub position: Vec3,
    /// Per-entity priority weight (1 = normal; higher for important entities, 0 = only when
    /// nothing else needs the budget).
    pub weight: f32,
    /// The session that owns it, if any: owners already predict it, so it weighs less for them.
    pub owner: Option<SessionId>,
}

impl EntitySample {
    /// A sample of `t` with weight 1 and no owner.
    pub fn new(id: EntityId, t: &Transform, qz: &Quantizer) -> EntitySample {
        EntitySample {
            id,
            q: qz.quantize(t),
            position: t.position,
            weight: 1.0,
            owner: None,
        }
    }
}

/// The inputs of one [`ClientReplicator::write_tick`] call.
#[derive(Clone, Copy, Debug)]
pub struct TickInput<'a> {
    /// The server tick being sent.
    pub tick: Tick,
    /// Now.
    pub now: Time,
    /// The client's viewpoint (its player's position), `None` for no interest limit.
    pub viewer: Option<Vec3>,
    /// The entities of the world this tick, sorted by strictly ascending id: all of them, or
    /// those an [`InterestGrid`](super::InterestGrid) query found near the viewer (which include
    /// [`ClientReplicator::retained`]). An entity held before and missing now is taken as
    /// removed from the world (the reliable stream tells the client), so leave out only what
    /// the grid leaves out.
    pub entities: &'a [EntitySample],
    /// The connection's current `max_datagram_size()`, bytes (asked again at every call).
    pub max_datagram_size: usize,
    /// The client's own-player authoritative state, ≤ [`OWN_BLOB_BYTES_MAX`] bytes, carried
    /// byte-aligned in the tick's first datagram.
    pub own_blob: Option<&'a [u8]>,
}

/// What one [`ClientReplicator::write_tick`] produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickSummary {
    /// Datagrams written.
    pub datagrams: usize,
    /// Their total size, bytes.
    pub bytes: usize,
    /// Entity updates (delta or absolute) written.
    pub updates: usize,
    /// Of those, absolute (no usable baseline).
    pub absolute: usize,
    /// Left-interest notices written.
    pub left_notices: usize,
    /// Candidates left for a later tick by the budget or datagram size.
    pub deferred: usize,
}

/// Splits a `u64` into 4-byte-aligned halves (low, high) so it packs into [`Tracked`] without
/// padding.
#[inline]
fn halves(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

/// The `u64` of [`halves`].
#[inline]
fn whole(h: [u32; 2]) -> u64 {
    (h[1] as u64) << 32 | h[0] as u64
}

/// Whether a left-interest notice is pending, and when it was last sent, in one word: no
/// notice, pending and not yet sent, or pending and last sent at a time (µs; the two largest
/// values are taken by the other states, 584,000 years from now).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LeftState(u64);

impl LeftState {
    const NONE: LeftState = LeftState(u64::MAX);
    const UNSENT: LeftState = LeftState(u64::MAX - 1);

    #[inline]
    fn sent_at(t: Time) -> LeftState {
        LeftState(t.0.min(u64::MAX - 2))
    }

    #[inline]
    fn is_pending(self) -> bool {
        self != LeftState::NONE
    }

    /// `Some(when last sent, if ever)` if a notice is pending.
    #[inline]
    fn pending(self) -> Option<Option<Time>> {
        match self {
            LeftState::NONE => None,
            LeftState::UNSENT => Some(None),
            LeftState(t) => Some(Some(Time(t))),
        }
    }
}

/// [`Tracked::flags`]: it has a baseline (`base*` fields).
const TRACKED_HAS_BASELINE: u8 = 1;
/// [`Tracked::flags`]: a value was sent in this epoch (`last_*` fields, `at_or_left` its time).
const TRACKED_HAS_LAST_SENT: u8 = 2;
/// [`Tracked::flags`]: the last value sent was acknowledged.
const TRACKED_LAST_ACKED: u8 = 4;
/// [`Tracked::flags`]: the last value sent has a scale (`last_scale`).
const TRACKED_LAST_HAS_SCALE: u8 = 8;

/// Per-client state of one entity: 116 bytes, no padding (it was 144 with `Option`s of whole
/// samples and a `u64`-aligned layout). Every field is 4-byte aligned or smaller, the baseline
/// is a [`PackedSample`], the last value sent is stored unpacked, and one word holds either the
/// last send's time (in interest) or the [`LeftState`] (out of interest: nothing is sent then,
/// and leaving forgets the last value sent).
#[derive(Clone, Copy, Debug)]
struct Tracked {
    id: EntityId,
    priority: f32,
    /// A number unique within this replicator, renewed when the entity leaves interest or is
    /// re-added to the world: acks of records from an older epoch are ignored, so a baseline
    /// the client may have dropped is never used again.
    epoch: u32,
    /// Sends in this epoch (the next send's index).
    sends: u32,
    /// In interest: the last send's time (µs, [`halves`]) if [`TRACKED_HAS_LAST_SENT`]. Out of
    /// interest: the [`LeftState`].
    at_or_left: [u32; 2],
    /// The last value sent's send index.
    last_send_index: u32,
    /// The baseline's tick ([`halves`]) and send index.
    base_tick: [u32; 2],
    base_send_index: u32,
    /// The baseline's value and motion, if [`TRACKED_HAS_BASELINE`].
    base: PackedSample,
    /// The last value sent, if [`TRACKED_HAS_LAST_SENT`].
    last_pos: [u32; 3],
    last_comps: [u16; 3],
    last_scale: [u16; 3],
    last_largest: u8,
    /// `TRACKED_*` bits.
    flags: u8,
    in_interest: bool,
}

impl Tracked {
    fn new(id: EntityId, epoch: u32) -> Tracked {
        Tracked {
            id,
            priority: 0.0,
            epoch,
            sends: 0,
            at_or_left: halves(LeftState::NONE.0),
            last_send_index: 0,
            base_tick: [0; 2],
            base_send_index: 0,
            base: PackedSample::ZERO,
            last_pos: [0; 3],
            last_comps: [0; 3],
            last_scale: [0; 3],
            last_largest: 0,
            flags: 0,
            in_interest: false,
        }
    }

    /// The left-interest state (always [`LeftState::NONE`] in interest).
    #[inline]
    fn left(&self) -> LeftState {
        if self.in_interest {
            LeftState::NONE
        } else {
            LeftState(whole(self.at_or_left))
        }
    }

    /// Sets the left-interest state (only out of interest, or [`LeftState::NONE`]).
    #[inline]
    fn set_left(&mut self, l: LeftState) {
        debug_assert!(!self.in_interest || l == LeftState::NONE);
        if !self.in_interest {
            self.at_or_left = halves(l.0);
        }
    }

    #[inline]
    fn has_baseline(&self) -> bool {
        self.flags & TRACKED_HAS_BASELINE != 0
    }

    #[inline]
    fn has_last_sent(&self) -> bool {
        self.flags & TRACKED_HAS_LAST_SENT != 0
    }

    /// The baseline's tick, if any.
    #[inline]
    fn baseline_tick(&self) -> Option<Tick> {
        self.has_baseline().then(|| Tick(whole(self.base_tick)))
    }

    /// The baseline, unpacked, if any.
    #[inline]
    fn baseline(&self) -> Option<Sample> {
        let tick = self.baseline_tick()?;
        Some(self.base.unpack(tick))
    }

    #[inline]
    fn set_baseline(&mut self, tick: Tick, sample: &PackedSample, send_index: u32) {
        self.base_tick = halves(tick.0);
        self.base = *sample;
        self.base_send_index = send_index;
        self.flags |= TRACKED_HAS_BASELINE;
    }

    /// Whether the last value sent is `q`.
    #[inline]
    fn last_sent_is(&self, q: &QTransform) -> bool {
        self.last_pos == q.pos
            && self.last_comps == q.rot.comps
            && self.last_largest == q.rot.largest
            && match q.scale {
                None => self.flags & TRACKED_LAST_HAS_SCALE == 0,
                Some(s) => self.flags & TRACKED_LAST_HAS_SCALE != 0 && self.last_scale == s,
            }
    }

    /// Records `q` as the last value sent, with its send index and time (in interest only).
    #[inline]
    fn set_last_sent(&mut self, q: &QTransform, send_index: u32, at: Time) {
        debug_assert!(self.in_interest);
        self.last_pos = q.pos;
        self.last_comps = q.rot.comps;
        self.last_largest = q.rot.largest;
        self.last_scale = q.scale.unwrap_or_default();
        self.last_send_index = send_index;
        self.at_or_left = halves(at.0);
        self.flags = (self.flags & !(TRACKED_LAST_ACKED | TRACKED_LAST_HAS_SCALE))
            | TRACKED_HAS_LAST_SENT
            | if q.scale.is_some() {
                TRACKED_LAST_HAS_SCALE
            } else {
                0
            };
    }

    /// When the last value was sent (meaningful only with one).
    #[inline]
    fn last_sent_at(&self) -> Time {
        Time(whole(self.at_or_left))
    }

    /// Forgets the baseline and the last value sent (leaving interest).
    #[inline]
    fn forget_values(&mut self) {
        self.flags = 0;
    }
}

/// A [`Sample`] as the replicator stores it, 48 bytes instead of 64: without its tick (kept
/// where it is needed: once per datagram for sent records), rotation and scale unpacked so that
/// nothing pads, and the motion's interval in 16 bits (a delta's baseline is at most
/// [`BASELINE_AGE_MAX_TICKS`] old; an absolute value has no motion).
#[derive(Clone, Copy, Debug)]
struct PackedSample {
    pos: [u32; 3],
    dpos: [i32; 3],
    comps: [u16; 3],
    drot: [i16; 3],
    /// The scale if [`PACKED_HAS_SCALE`] is set.
    scale: [u16; 3],
    dt: u16,
    largest: u8,
    /// [`PACKED_ROT_VALID`], [`PACKED_HAS_SCALE`], [`RECORD_LEFT_NOTICE`].
    flags: u8,
}

/// [`PackedSample::flags`]: the motion's rotation change holds.
const PACKED_ROT_VALID: u8 = 1;
/// [`PackedSample::flags`]: the value has a scale.
const PACKED_HAS_SCALE: u8 = 2;
/// [`PackedSample::flags`] of a [`SentRecord`]: the record is a left-interest notice, not an
/// update (a flag here keeps the record at 64 bytes).
const RECORD_LEFT_NOTICE: u8 = 4;
// A delta's motion interval is its baseline's age, which fits the packed 16 bits.
const _: () = assert!(BASELINE_AGE_MAX_TICKS <= u16::MAX as u64);

impl PackedSample {
    /// All zero: a placeholder where no sample is held.
    const ZERO: PackedSample = PackedSample {
        pos: [0; 3],
        dpos: [0; 3],
        comps: [0; 3],
        drot: [0; 3],
        scale: [0; 3],
        dt: 0,
        largest: 0,
        flags: 0,
    };

    /// `q` with no motion: [`Sample::absolute`], packed.
    #[inline]
    fn absolute(q: &QTransform) -> PackedSample {
        PackedSample {
            pos: q.pos,
            comps: q.rot.comps,
            scale: q.scale.unwrap_or_default(),
            largest: q.rot.largest,
            flags: if q.scale.is_some() {
                PACKED_HAS_SCALE
            } else {
                0
            },
            ..PackedSample::ZERO
        }
    }

    /// `q` coded against `base`, `dt` ticks older: [`Sample::from_base`], packed.
    #[inline]
    fn from_base(q: &QTransform, dt: u16, base: &PackedSample) -> PackedSample {
        let rot_valid = q.rot.largest == base.largest;
        let mut s = PackedSample::absolute(q);
        s.dt = dt;
        s.dpos = [0, 1, 2].map(|a| q.pos[a] as i32 - base.pos[a] as i32);
        if rot_valid {
            s.drot = [0, 1, 2].map(|a| (q.rot.comps[a] as i32 - base.comps[a] as i32) as i16);
            s.flags |= PACKED_ROT_VALID;
        }
        s
    }

    #[inline]
    fn unpack(&self, tick: Tick) -> Sample {
        Sample {
            tick,
            q: QTransform {
                pos: self.pos,
                rot: QRot {
                    largest: self.largest,
                    comps: self.comps,
                },
                scale: (self.flags & PACKED_HAS_SCALE != 0).then_some(self.scale),
            },
            motion: Motion::from_parts(
                self.dpos,
                self.drot,
                self.flags & PACKED_ROT_VALID != 0,
                self.dt as u32,
            ),
        }
    }
}

/// One record of a sent datagram, as acks need it: 64 bytes, one cache line (it was 80 as an
/// enum holding a whole [`Sample`]).
#[derive(Clone, Copy, Debug)]
struct SentRecord {
    id: EntityId,
    /// Where the entity was in `tracked` when sent (checked, then searched if it moved).
    slot: u32,
    epoch: u32,
    /// The update's send index in its epoch (unused for a left notice).
    send_index: u32,
    /// The value sent, at the datagram's tick; for a left notice only its
    /// [`RECORD_LEFT_NOTICE`] flag.
    sample: PackedSample,
}

impl SentRecord {
    /// Whether this is a left-interest notice rather than an update.
    #[inline]
    fn is_left(&self) -> bool {
        self.sample.flags & RECORD_LEFT_NOTICE != 0
    }
}

#[derive(Clone, Debug, Default)]
struct SentDatagram {
    seq_full: u64,
    /// The tick it was sent for: its records' samples' tick.
    tick: Tick,
    valid: bool,
    acked: bool,
    sent_at: Time,
    records: Vec<SentRecord>,
}

#[derive(Clone, Copy, Debug)]
enum CandKind {
    Update,
    Left,
}

#[derive(Clone, Copy, Debug)]
enum Coded {
    Delta { age: u64 },
    Absolute,
    Left,
}

#[derive(Clone, Copy, Debug)]
struct Cand {
    slot: u32,
    priority: f32,
    /// For an update: the age of the baseline a delta uses, 0 for none (absolute). At most
    /// [`BASELINE_AGE_MAX_TICKS`].
    age: u32,
    kind: CandKind,
    placed: bool,
    /// Body bits in the scratch writer (start, length), once computed.
    body: Option<(u32, u32)>,
}

impl Cand {
    /// How the record is coded: a delta against the baseline `age` ticks old, else absolute.
    #[inline]
    fn coded(&self) -> Coded {
        match self.kind {
            CandKind::Left => Coded::Left,
            CandKind::Update if self.age != 0 => Coded::Delta {
                age: self.age as u64,
            },
            CandKind::Update => Coded::Absolute,
        }
    }
}

/// Buffers a replicator needs only while it writes a tick. Kept per thread, not per client:
/// a server writes every client's tick in turn on one thread, so one set stays in the cache for
/// all of them, where per-client buffers (≈ 5 KiB each at 100 candidates) were each a cold
/// region touched once per tick.
#[derive(Clone, Debug, Default)]
struct Scratch {
    cands: Vec<Cand>,
    /// Candidates' [`order_key`]s, ordered lazily by the packer.
    order: Vec<u64>,
    body: BitWriter,
    out_bits: BitWriter,
    /// The datagram being filled: (id, candidate) in id order, built from `picked`.
    chosen: Vec<(EntityId, usize)>,
    /// The slots chosen for the datagram being filled.
    picked: SlotSet,
    /// Per slot: its candidate's index, valid where `picked` holds the slot.
    slot_cand: Vec<u32>,
}

thread_local! {
    /// The [`Scratch`] of the replicators writing on this thread, lent to each `write_tick`.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The server's transform sender for one client. See the [module docs](super) for the format.
///
/// Drive it with [`ClientReplicator::write_tick`] once per server tick (after quantizing the
/// world once into [`EntitySample`]s) and [`ClientReplicator::handle_ack`] for every ack header
/// the client sends; hand each datagram written to the connection's unreliable datagram send.
#[derive(Clone, Debug)]
pub struct ClientReplicator {
    config: TransformConfig,
    qz: Quantizer,
    session: Option<SessionId>,
    own_entity: Option<EntityId>,
    budget_bits_per_s: u32,
    tracked: Vec<Tracked>,
    /// The ids of `tracked` in interest or owed a "left interest" notice, ascending: what
    /// [`ClientReplicator::retained`] gives. Rebuilt by every `write_tick`, kept exact by
    /// `handle_ack` (which is what ends a pending notice).
    retained_ids: Vec<EntityId>,
    history: Vec<SentDatagram>,
    /// Emptied record lists of acknowledged datagrams, reused by the next datagrams: with
    /// prompt acks a few lists, warm in the cache, serve every datagram instead of one per
    /// history slot. At most [`SENT_HISTORY_LEN`] lists exist in `history` and here together.
    spare_records: Vec<Vec<SentRecord>>,
    /// One bit per `history` slot: set while it holds a datagram sent and not yet acknowledged
    /// (`valid && !acked`), so an ack looks at [`SENT_HISTORY_LEN`] / 8 bytes, not at every
    /// remembered datagram its window covers.
    unacked: [u64; SENT_HISTORY_LEN / 64],
    next_seq: u64,
    /// The first sequence number the last `write_tick` used (its datagrams are
    /// `tick_first_seq..next_seq`).
    tick_first_seq: u64,
    next_epoch: u32,
    last_tick: Option<Tick>,
    carry: i64,
    srtt_us: Option<u64>,
    /// Buffers used only within one `write_tick`: empty between calls, the thread's
    /// [`SCRATCH`] moved in for the call.
    scratch: Scratch,
    /// Whether the last tick's candidates did not fit in one datagram.
    single_failed_last: bool,
}

impl ClientReplicator {
    /// A replicator for one client. `session` is the client's session (for ownership weights).
    pub fn new(config: TransformConfig, session: Option<SessionId>) -> Result<Self, ConfigError> {
        let qz = Quantizer::new(&config)?;
        Ok(ClientReplicator {
            budget_bits_per_s: config.budget_bits_per_s,
            config,
            qz,
            session,
            own_entity: None,
            tracked: Vec::new(),
            retained_ids: Vec::new(),
            history: vec![SentDatagram::default(); SENT_HISTORY_LEN],
            unacked: [0; SENT_HISTORY_LEN / 64],
            spare_records: Vec::new(),
            next_seq: 0,
            tick_first_seq: 0,
            next_epoch: 0,
            last_tick: None,
            carry: 0,
            srtt_us: None,
            scratch: Scratch::default(),
            single_failed_last: false,
        })
    }

    /// The quantizer (same config as the client's receiver).
    pub fn quantizer(&self) -> &Quantizer {
        &self.qz
    }

    /// Excludes the client's own player from the stream (it rides in the own blob instead).
    pub fn set_own_entity(&mut self, id: Option<EntityId>) {
        self.own_entity = id;
    }

    /// The entity excluded as the client's own player, if any.
    pub fn own_entity_id(&self) -> Option<EntityId> {
        self.own_entity
    }

    /// Overrides this client's budget, bits per second (clamped to the configured minimum).
    pub fn set_budget_bits_per_s(&mut self, bits_per_s: u32) {
        self.budget_bits_per_s = bits_per_s.max(super::config::BUDGET_BITS_PER_S_MIN);
    }

    /// Smoothed round-trip estimate from acks, if any ack arrived yet.
    pub fn rtt_estimate_us(&self) -> Option<u64> {
        self.srtt_us
    }

    /// Whether the entity is currently in this client's interest.
    pub fn in_interest(&self, id: EntityId) -> bool {
        self.find(id).is_some_and(|i| self.tracked[i].in_interest)
    }

    /// The entities this replicator holds state for that must stay in its input while they
    /// exist: those in interest and those owed a "left interest" notice. A caller that gives
    /// [`ClientReplicator::write_tick`] only the entities near the viewer (an
    /// [`InterestGrid`](super::InterestGrid)) adds these, so that leaving is noticed; any
    /// other entity it leaves out is one this tick would not touch.
    ///
    /// Ascending by id, read from a list kept beside the per-entity state (one `u32` each), so
    /// a caller with many replicators does not walk all their state to get it.
    pub fn retained(&self) -> impl Iterator<Item = EntityId> + '_ {
        debug_assert!(self
            .tracked
            .iter()
            .filter(|t| t.in_interest || t.left().is_pending())
            .map(|t| t.id)
            .eq(self.retained_ids.iter().copied()));
        self.retained_ids.iter().copied()
    }

    /// Bytes this client may be sent per tick (budget / tick rate, before carry).
    pub fn budget_bytes_per_tick(&self) -> usize {
        (self.budget_bits_per_s as usize / 8) / self.config.tick_hz.max(1) as usize
    }

    /// Most unused budget carried into later ticks, bytes: half a tick's worth, but at least
    /// [`DATAGRAM_BYTES_MIN`] so a budget smaller than one datagram per tick still sends one
    /// datagram every few ticks. Over any run of ticks the bytes sent never exceed
    /// ticks × [`ClientReplicator::budget_bytes_per_tick`] + this (own blobs aside).
    pub fn budget_carry_max_bytes(&self) -> usize {
        (self.budget_bytes_per_tick() / 2).max(DATAGRAM_BYTES_MIN)
    }

    /// The entities the last [`ClientReplicator::write_tick`] sent updates for, in datagram
    /// order (for bandwidth attribution and operator views). One pass over that tick's records.
    pub fn last_tick_updates(&self) -> impl Iterator<Item = EntityId> + '_ {
        (self.tick_first_seq..self.next_seq).flat_map(move |s| {
            let d = &self.history[(s % SENT_HISTORY_LEN as u64) as usize];
            d.records.iter().filter(|r| !r.is_left()).map(|r| r.id)
        })
    }

    /// Starts sequence numbers further on (tests of wrap-around).
    #[cfg(test)]
    pub(crate) fn skip_seqs(&mut self, n: u64) {
        self.next_seq += n;
    }

    fn find(&self, id: EntityId) -> Option<usize> {
        self.tracked.binary_search_by_key(&id, |t| t.id).ok()
    }

    fn resend_after_us(&self) -> u64 {
        let rtt = self.srtt_us.unwrap_or(RTT_INITIAL_US);
        rtt + rtt / 4 + 1_000_000 / self.config.tick_hz.max(1) as u64
    }

    /// Processes an ack header from the client. Unknown, repeated or out-of-window sequences are
    /// ignored (a peer cannot make this fail or grow). Returns how many datagrams were newly
    /// acknowledged.
    pub fn handle_ack(&mut self, ack: &AckHeader, now: Time) -> usize {
        if ack.received == 0 || self.next_seq == 0 {
            return 0;
        }
        let last_full = self.next_seq - 1;
        let behind_latest = Seq(last_full as u16).diff(ack.latest);
        if behind_latest < 0 {
            return 0; // acks a datagram never sent
        }
        let mut newly = 0;
        for i in 0..ACK_WINDOW as u64 {
            if ack.received >> i & 1 == 0 {
                continue;
            }
            let back = behind_latest as u64 + i;
            if back >= SENT_HISTORY_LEN as u64 || back > last_full {
                break;
            }
            let full = last_full - back;
            let slot = (full % SENT_HISTORY_LEN as u64) as usize;
            if self.unacked[slot / 64] >> (slot % 64) & 1 == 0 {
                continue; // never sent, or acknowledged already
            }
            let d = &mut self.history[slot];
            debug_assert!(d.valid && !d.acked);
            if d.seq_full != full {
                continue;
            }
            d.acked = true;
            self.unacked[slot / 64] &= !(1u64 << (slot % 64));
            newly += 1;
            if i == 0 {
                let sample = now.saturating_since(d.sent_at).as_micros() as u64;
                self.srtt_us = Some(match self.srtt_us {
                    None => sample,
                    Some(s) => (s * 7 + sample) / 8,
                });
            }
            let tick = d.tick;
            for r in &d.records {
                let Some(ti) = locate(&self.tracked, r.id, r.slot) else {
                    continue;
                };
                let t = &mut self.tracked[ti];
                if t.epoch != r.epoch {
                    continue;
                }
                if r.is_left() {
                    if t.left().is_pending() {
                        t.set_left(LeftState::NONE);
                        // Pending means out of interest: no longer retained.
                        if let Ok(k) = self.retained_ids.binary_search(&r.id) {
                            self.retained_ids.remove(k);
                        }
                    }
                    continue;
                }
                if baseline_older(t.baseline_tick(), tick) {
                    t.set_baseline(tick, &r.sample, r.send_index);
                }
                if t.has_last_sent() && t.last_send_index == r.send_index {
                    t.flags |= TRACKED_LAST_ACKED;
                }
            }
            // Its records are done with; the last tick's stay for `last_tick_updates` until
            // the next `write_tick` recycles them.
            if full < self.tick_first_seq {
                recycle(&mut self.history[slot].records, &mut self.spare_records);
            }
        }
        newly
    }

    /// Writes this tick's datagrams for the client into `out` (appending; each `Vec<u8>` is one
    /// datagram, at most `input.max_datagram_size` bytes). Returns what was written.
    ///
    /// Errors only on caller mistakes: a datagram size below [`DATAGRAM_BYTES_MIN`], an own
    /// blob above [`OWN_BLOB_BYTES_MAX`], entities not sorted by id, or a tick not after the
    /// previous call's (an entity is sent at most once per tick: receivers key values by tick).
    pub fn write_tick(
        &mut self,
        input: &TickInput,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<TickSummary, TransformError> {
        if input.max_datagram_size < DATAGRAM_BYTES_MIN {
            return Err(TransformError::DatagramTooSmall(input.max_datagram_size));
        }
        if let Some(b) = input.own_blob {
            if b.len() > OWN_BLOB_BYTES_MAX {
                return Err(TransformError::BlobTooLarge {
                    len: b.len(),
                    max: OWN_BLOB_BYTES_MAX,
                });
            }
        }
        if input.entities.windows(2).any(|w| w[0].id >= w[1].id) {
            return Err(TransformError::UnsortedEntities);
        }
        if self.last_tick.is_some_and(|t| input.tick <= t) {
            return Err(TransformError::TickNotAfterLast(input.tick));
        }
        self.last_tick = Some(input.tick);
        // The last tick's acknowledged datagrams' records are no longer needed either.
        for full in self.tick_first_seq..self.next_seq {
            let slot = (full % SENT_HISTORY_LEN as u64) as usize;
            // Written last tick, so `valid`: acknowledged iff its `unacked` bit is clear.
            if self.unacked[slot / 64] >> (slot % 64) & 1 == 0 {
                recycle(&mut self.history[slot].records, &mut self.spare_records);
            }
        }
        self.tick_first_seq = self.next_seq;
        self.merge(input.entities);
        // The thread's scratch, warm from the last client's tick, lent for this one. The cell
        // is borrowed only for the swaps; `try_with` fails only while the thread exits, and
        // then this replicator's own (empty) buffers serve.
        let swap = |own: &mut Scratch| {
            SCRATCH
                .try_with(|s| std::mem::swap(own, &mut s.borrow_mut()))
                .is_ok()
        };
        let lent = swap(&mut self.scratch);
        self.collect_candidates(input);
        let result = self.pack(input, out);
        if lent {
            swap(&mut self.scratch);
        }
        result
    }

    /// Aligns `tracked` with this tick's entity list (both sorted by id), in place: entities
    /// gone from the list are dropped in one forward pass, new ones are placed in one backward
    /// pass. Each tick a few entities cross the interest edge, so a copy into a second buffer
    /// (the old way) wrote a whole cold per-entity array per client per tick.
    fn merge(&mut self, entities: &[EntitySample]) {
        let same = self.tracked.len() == entities.len()
            && self.tracked.iter().zip(entities).all(|(t, e)| t.id == e.id);
        if same {
            return;
        }
        // Removed from the world: the reliable stream tells the client.
        let mut j = 0;
        self.tracked.retain(|t| {
            while entities.get(j).is_some_and(|e| e.id < t.id) {
                j += 1;
            }
            entities.get(j).is_some_and(|e| e.id == t.id)
        });
        let kept = self.tracked.len();
        let added = entities.len() - kept;
        if added == 0 {
            return;
        }
        // New entities take epochs in ascending id order, as a forward merge would give them.
        let first_epoch = self.next_epoch.wrapping_add(1);
        self.next_epoch = self.next_epoch.wrapping_add(added as u32);
        let mut new_left = added as u32;
        self.tracked
            .resize(entities.len(), Tracked::new(EntityId(0), 0));
        let mut src = kept;
        for dst in (0..entities.len()).rev() {
            if new_left == 0 {
                break; // the rest are kept entities already in place
            }
            let e = &entities[dst];
            if src > 0 && self.tracked[src - 1].id == e.id {
                src -= 1;
                self.tracked[dst] = self.tracked[src];
            } else {
                new_left -= 1;
                self.tracked[dst] = Tracked::new(e.id, first_epoch.wrapping_add(new_left));
            }
        }
        debug_assert_eq!(new_left, 0);
    }

    fn collect_candidates(&mut self, input: &TickInput) {
        self.scratch.cands.clear();
        self.retained_ids.clear();
        self.scratch.body.clear();
        let resend_us = self.resend_after_us();
        let w = self.config.weights;
        let r = self.config.interest_radius_m;
        let r_out = r + self.config.interest_hysteresis_m;
        for (slot, (t, e)) in self.tracked.iter_mut().zip(input.entities).enumerate() {
            if Some(e.id) == self.own_entity {
                if t.in_interest || t.left().is_pending() {
                    self.retained_ids.push(t.id);
                }
                t.priority = 0.0;
                continue;
            }
            let dist = match input.viewer {
                None => 0.0,
                Some(v) => {
                    let d2: f32 = (0..3).map(|a| (e.position[a] - v[a]).powi(2)).sum();
                    d2.sqrt()
                }
            };
            let dist = if dist.is_finite() { dist } else { f32::MAX };
            if !t.in_interest && (input.viewer.is_none() || dist <= r) {
                t.set_left(LeftState::NONE);
                t.in_interest = true;
            } else if t.in_interest && input.viewer.is_some() && dist > r_out {
                t.in_interest = false;
                let known = t.has_last_sent() || t.has_baseline();
                self.next_epoch = self.next_epoch.wrapping_add(1);
                t.epoch = self.next_epoch;
                t.sends = 0;
                t.forget_values();
                t.priority = 0.0;
                t.set_left(if known {
                    LeftState::UNSENT
                } else {
                    LeftState::NONE
                });
            }
            if t.in_interest || t.left().is_pending() {
                self.retained_ids.push(t.id);
            }
            if t.in_interest {
                let (need, moving) = if !t.has_last_sent() || !t.last_sent_is(&e.q) {
                    (true, true)
                } else if t.flags & TRACKED_LAST_ACKED != 0 {
                    (false, false)
                } else {
                    let since = input.now.saturating_since(t.last_sent_at());
                    (since.as_micros() as u64 >= resend_us, false)
                };
                if !need {
                    t.priority = 0.0;
                    continue;
                }
                let mut weight = w.base * e.weight.max(0.0) / (1.0 + dist / w.distance_half_m);
                if moving {
                    weight *= w.moving;
                }
                if e.owner.is_some() && e.owner == self.session {
                    weight *= w.owned_by_viewer;
                }
                if weight.is_finite() {
                    t.priority += weight;
                }
                let age = usable_baseline_age(t, input.tick);
                self.scratch.cands.push(Cand {
                    slot: slot as u32,
                    priority: t.priority,
                    kind: CandKind::Update,
                    age,
                    placed: false,
                    body: None,
                });
            } else if let Some(sent_at) = t.left().pending() {
                if due(sent_at, input.now, resend_us) {
                    t.priority += w.left_notice;
                    self.scratch.cands.push(Cand {
                        slot: slot as u32,
                        priority: t.priority,
                        kind: CandKind::Left,
                        age: 0,
                        placed: false,
                        body: None,
                    });
                }
            }
        }
    }

    /// Encodes candidate `ci`'s body into the scratch writer (once) and returns its worst-case
    /// record bits without the index.
    fn body_bits(&mut self, ci: usize, tick: Tick, entities: &[EntitySample]) -> (usize, Coded) {
        let c = self.scratch.cands[ci];
        let coded = c.coded();
        if let Some((_, len)) = c.body {
            return (record_bits(len as usize, coded), coded);
        }
        let start = self.scratch.body.len_bits();
        let slot = c.slot as usize;
        let t = &self.tracked[slot];
        match (coded, &t.baseline()) {
            (Coded::Delta { .. }, Some(b)) => {
                write_delta(&mut self.scratch.body, &self.qz, &entities[slot].q, tick, b)
            }
            (Coded::Absolute, _) => {
                write_absolute(&mut self.scratch.body, &self.qz, &entities[slot].q)
            }
            _ => {}
        }
        let len = self.scratch.body.len_bits() - start;
        self.scratch.cands[ci].body = Some((start as u32, len as u32));
        (record_bits(len, coded), coded)
    }

    fn pack(
        &mut self,
        input: &TickInput,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<TickSummary, TransformError> {
        let mut summary = TickSummary::default();
        let per_tick = self.budget_bytes_per_tick() as i64;
        let allowance = per_tick + self.carry;
        let mut sent: i64 = 0;
        let mut blob = input.own_blob;
        let max_size = input.max_datagram_size.min(DATAGRAM_BYTES_MAX);
        let mut remaining = self.scratch.cands.len();
        // Fast path: everything fits in the first datagram, so priority order does not matter.
        let header =
            HEADER_FIXED_BYTES + varint_len(input.tick.0) + blob.map_or(0, |b| 1 + b.len());
        let room =
            max_size.min((allowance.max(0) as usize).max(if blob.is_some() { header } else { 0 }));
        // Candidates in priority order, sorted lazily: the budget usually stops the packer long
        // before the end, so only a prefix is ever ordered (a strict total order, so the prefix
        // is exactly that of a full sort).
        let mut sorted = 0usize;
        let mut chunk = (allowance.max(0) as usize * 8 / 24 + FIT_ATTEMPTS_MAX).max(32);
        let mut ordered = false;
        if room > header {
            let bits_avail = (room - header) * 8;
            // After a tick that did not fit, first measure in priority order: if it does not
            // fit again, the bodies encoded are the ones the packer wants first (an id-order
            // attempt would encode bodies that are then left for later ticks).
            let worth_trying = !self.single_failed_last || {
                self.fill_order();
                ordered = true;
                self.single_fits(input, bits_avail, &mut sorted, &mut chunk)
            };
            if worth_trying {
                if ordered {
                    // It fits after all: encode afresh in id order.
                    self.scratch.body.clear();
                    for c in &mut self.scratch.cands {
                        c.body = None;
                    }
                }
                if let Some(dgram) = self.try_single_datagram(input, blob, bits_avail, &mut summary)
                {
                    debug_assert!(dgram.len() <= room, "{} > {room}", dgram.len());
                    self.single_failed_last = false;
                    summary.datagrams = 1;
                    summary.bytes = dgram.len();
                    out.push(dgram);
                    self.carry = (allowance - summary.bytes as i64)
                        .clamp(-per_tick, self.budget_carry_max_bytes() as i64);
                    return Ok(summary);
                }
            }
            self.single_failed_last = true;
        }
        self.scratch.slot_cand.resize(self.tracked.len(), 0);
        if !ordered {
            self.fill_order();
        }
        loop {
            let header =
                HEADER_FIXED_BYTES + varint_len(input.tick.0) + blob.map_or(0, |b| 1 + b.len());
            let left_in_budget = (allowance - sent).max(0) as usize;
            let room = if blob.is_some() {
                max_size.min(left_in_budget.max(header))
            } else {
                max_size.min(left_in_budget)
            };
            if blob.is_none() && (remaining == 0 || room <= header) {
                break;
            }
            let bits_avail = room.saturating_sub(header) * 8;
            self.scratch.picked.reset(self.tracked.len());
            let mut used = 0usize;
            let mut misses = 0;
            for k in 0..self.scratch.order.len() {
                if k >= sorted {
                    sorted = sort_prefix(&mut self.scratch.order, sorted, chunk);
                    chunk *= 2;
                }
                let ci = self.scratch.order[k] as u32 as usize;
                if self.scratch.cands[ci].placed {
                    continue;
                }
                if self.scratch.picked.len >= RECORDS_PER_DATAGRAM_MAX || misses >= FIT_ATTEMPTS_MAX
                {
                    break;
                }
                let (bits, _) = self.body_bits(ci, input.tick, input.entities);
                let slot = self.scratch.cands[ci].slot as usize;
                let id = self.tracked[slot].id;
                // Slot order is id order: the neighbours in the datagram are the nearest
                // chosen slots.
                let prev = self.scratch.picked.prev(slot).map(|p| self.tracked[p].id);
                let next = self.scratch.picked.next(slot).map(|n| self.tracked[n].id);
                let index_bits = gap_bits(prev, id) as isize
                    + next.map_or(0, |n| gap_bits(Some(id), n) as isize)
                    - next.map_or(0, |n| gap_bits(prev, n) as isize);
                let total = (bits as isize + index_bits).max(0) as usize;
                if used + total > bits_avail {
                    misses += 1;
                    continue;
                }
                used += total;
                self.scratch.picked.insert(slot);
                self.scratch.slot_cand[slot] = ci as u32;
                self.scratch.cands[ci].placed = true;
                remaining -= 1;
            }
            if self.scratch.picked.len == 0 && blob.is_none() {
                break;
            }
            self.scratch.chosen.clear();
            for slot in self.scratch.picked.iter() {
                self.scratch
                    .chosen
                    .push((self.tracked[slot].id, self.scratch.slot_cand[slot] as usize));
            }
            let dgram = self.write_datagram(input, blob, &mut summary);
            debug_assert!(dgram.len() <= room, "{} > {room}", dgram.len());
            sent += dgram.len() as i64;
            summary.datagrams += 1;
            summary.bytes += dgram.len();
            out.push(dgram);
            blob = None;
        }
        summary.deferred = remaining;
        self.carry = (allowance - sent).clamp(-per_tick, self.budget_carry_max_bytes() as i64);
        Ok(summary)
    }

    fn fill_order(&mut self) {
        self.scratch.order.clear();
        self.scratch.order.extend(
            self.scratch
                .cands
                .iter()
                .enumerate()
                .map(|(ci, c)| order_key(c.priority, ci)),
        );
    }

    /// Whether every candidate fits in one datagram of `bits_avail` record bits, exactly as
    /// [`Self::try_single_datagram`] decides it, measured in priority order (sorting the
    /// prefix of `order` it needs) and stopping at the first overflow. Bodies it encodes are
    /// kept in the scratch for the packer.
    fn single_fits(
        &mut self,
        input: &TickInput,
        bits_avail: usize,
        sorted: &mut usize,
        chunk: &mut usize,
    ) -> bool {
        let n = self.scratch.cands.len();
        if n == 0 || n > RECORDS_PER_DATAGRAM_MAX {
            return false;
        }
        let common = common_age(self.scratch.cands.iter().map(|c| c.age as u64));
        let mut total = 0usize;
        for k in 0..n {
            if k >= *sorted {
                *sorted = sort_prefix(&mut self.scratch.order, *sorted, *chunk);
                *chunk *= 2;
            }
            let ci = self.scratch.order[k] as u32 as usize;
            self.body_bits(ci, input.tick, input.entities);
            let c = self.scratch.cands[ci];
            let id = self.tracked[c.slot as usize].id;
            let prev = ci
                .checked_sub(1)
                .map(|p| self.tracked[self.scratch.cands[p].slot as usize].id);
            let kind_bits = match c.coded() {
                Coded::Delta { age } if age != common => 2 + eg_bits(age - 1, AGE_EG_K),
                _ => 2,
            };
            let body_len = c.body.map_or(0, |b| b.1 as usize);
            total += gap_bits(prev, id) + kind_bits + body_len;
            if total > bits_avail {
                return false;
            }
        }
        true
    }

    fn write_datagram(
        &mut self,
        input: &TickInput,
        blob: Option<&[u8]>,
        summary: &mut TickSummary,
    ) -> Vec<u8> {
        let common = common_age(self.scratch.chosen.iter().map(|&(_, ci)| {
            match self.scratch.cands[ci].coded() {
                Coded::Delta { age } => age,
                _ => 0,
            }
        }));
        self.scratch.out_bits.clear();
        let mut prev: Option<EntityId> = None;
        let mut w = BitRun::new(&mut self.scratch.out_bits);
        for &(id, ci) in &self.scratch.chosen {
            let g = gap(prev, id);
            prev = Some(id);
            let c = &self.scratch.cands[ci];
            let Some((start, len)) = c.body else {
                w.write_eg(g, INDEX_EG_K);
                continue; // unreachable: every chosen candidate has its body computed
            };
            write_index_kind(&mut w, g, c.coded(), common);
            w.append_bits(&self.scratch.body, start as usize, len as usize);
        }
        w.finish();
        let (seq_full, buf, slot, mut records) =
            self.begin_datagram(input, blob, common, self.scratch.chosen.len());
        for &(_, ci) in &self.scratch.chosen {
            let c = self.scratch.cands[ci];
            commit_record(
                &mut self.tracked[c.slot as usize],
                c.slot as usize,
                c.coded(),
                input,
                &mut records,
                summary,
            );
        }
        self.finish_datagram(input, seq_full, slot, records);
        buf
    }

    /// Writes the header and the packed records; returns the sequence, the buffer, the history
    /// slot and its (cleared) record list.
    fn begin_datagram(
        &mut self,
        input: &TickInput,
        blob: Option<&[u8]>,
        common: u64,
        count: usize,
    ) -> (u64, Vec<u8>, usize, Vec<SentRecord>) {
        let seq_full = self.next_seq;
        self.next_seq += 1;
        let mut buf = Vec::with_capacity(input.max_datagram_size.min(DATAGRAM_BYTES_MAX));
        buf.push(KIND_SERVER_STATE);
        buf.extend_from_slice(&(seq_full as u16).to_le_bytes());
        write_varint(&mut buf, input.tick.0);
        buf.push(blob.is_some() as u8);
        if let Some(b) = blob {
            buf.push(b.len() as u8);
            buf.extend_from_slice(b);
        }
        write_varint(&mut buf, common);
        write_varint(&mut buf, count as u64);
        self.scratch.out_bits.copy_to(&mut buf);
        let slot = (seq_full % SENT_HISTORY_LEN as u64) as usize;
        let mut records = std::mem::take(&mut self.history[slot].records);
        if records.capacity() == 0 {
            records = self.spare_records.pop().unwrap_or_default();
        }
        records.clear();
        records.reserve(count);
        (seq_full, buf, slot, records)
    }

    fn finish_datagram(
        &mut self,
        input: &TickInput,
        seq_full: u64,
        slot: usize,
        records: Vec<SentRecord>,
    ) {
        self.history[slot] = SentDatagram {
            seq_full,
            tick: input.tick,
            valid: true,
            acked: false,
            sent_at: input.now,
            records,
        };
        self.unacked[slot / 64] |= 1u64 << (slot % 64);
    }

    /// Fast path: every candidate, in id order, written straight into one datagram. Returns
    /// `None` (and leaves all state as it was) if they do not fit in `bits_avail` bits.
    fn try_single_datagram(
        &mut self,
        input: &TickInput,
        blob: Option<&[u8]>,
        bits_avail: usize,
        summary: &mut TickSummary,
    ) -> Option<Vec<u8>> {
        let n = self.scratch.cands.len();
        if n == 0 || n > RECORDS_PER_DATAGRAM_MAX {
            return None;
        }
        let common = common_age(self.scratch.cands.iter().map(|c| c.age as u64));
        // Written into the body scratch (empty until now), each body's range remembered: if the
        // records do not fit, the packer reuses the bodies instead of encoding them again.
        debug_assert_eq!(self.scratch.body.len_bits(), 0);
        let mut prev: Option<EntityId> = None;
        let mut w = BitRun::new(&mut self.scratch.body);
        for c in self.scratch.cands.iter_mut() {
            let slot = c.slot as usize;
            let t = &self.tracked[slot];
            let q = &input.entities[slot].q;
            let coded = c.coded();
            write_index_kind(&mut w, gap(prev, t.id), coded, common);
            prev = Some(t.id);
            let start = w.len_bits();
            match (coded, &t.baseline()) {
                (Coded::Delta { .. }, Some(b)) => {
                    write_delta_run(&mut w, &self.qz, q, input.tick, b)
                }
                (Coded::Absolute, _) => write_absolute_run(&mut w, &self.qz, q),
                _ => {}
            }
            let end = w.len_bits();
            c.body = Some((start as u32, (end - start) as u32));
            if end > bits_avail {
                w.finish();
                return None;
            }
        }
        w.finish();
        std::mem::swap(&mut self.scratch.body, &mut self.scratch.out_bits);
        let (seq_full, buf, slot, mut records) = self.begin_datagram(input, blob, common, n);
        for c in self.scratch.cands.iter_mut() {
            c.placed = true;
            commit_record(
                &mut self.tracked[c.slot as usize],
                c.slot as usize,
                c.coded(),
                input,
                &mut records,
                summary,
            );
        }
        self.finish_datagram(input, seq_full, slot, records);
        Some(buf)
    }
}

/// A set of slots as a bitset, with nearest-member queries (slot order is id order, so the
/// nearest chosen slots are a record's neighbours in the datagram).
#[derive(Clone, Debug, Default)]
struct SlotSet {
    words: Vec<u64>,
    len: usize,
}

impl SlotSet {
    /// Empties the set for slots `0..slots`.
    fn reset(&mut self, slots: usize) {
        self.words.clear();
        self.words.resize(slots.div_ceil(64), 0);
        self.len = 0;
    }

    /// Adds `slot` (not yet a member).
    #[inline]
    fn insert(&mut self, slot: usize) {
        self.words[slot / 64] |= 1u64 << (slot % 64);
        self.len += 1;
    }

    /// The largest member below `slot`.
    #[inline]
    fn prev(&self, slot: usize) -> Option<usize> {
        let mut w = slot / 64;
        let mut bits = self.words[w] & ((1u64 << (slot % 64)) - 1);
        loop {
            if bits != 0 {
                return Some(w * 64 + 63 - bits.leading_zeros() as usize);
            }
            if w == 0 {
                return None;
            }
            w -= 1;
            bits = self.words[w];
        }
    }

    /// The smallest member above `slot`.
    #[inline]
    fn next(&self, slot: usize) -> Option<usize> {
        let mut w = slot / 64;
        let mut bits = self.words[w] & (u64::MAX << (slot % 64)) & !(1u64 << (slot % 64));
        loop {
            if bits != 0 {
                return Some(w * 64 + bits.trailing_zeros() as usize);
            }
            w += 1;
            bits = *self.words.get(w)?;
        }
    }

    /// The members, ascending.
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + b)
            })
        })
    }
}

/// A candidate's place in the priority order as one integer: priority descending (as
/// `f32::total_cmp`), then candidate index ascending, which is entity id ascending (candidates
/// are collected in id order). Keys are unique, so the order is strict.
#[inline]
fn order_key(priority: f32, ci: usize) -> u64 {
    let b = priority.to_bits() as i32;
    let total = b ^ (((b >> 31) as u32) >> 1) as i32; // `total_cmp`'s key
    let ascending = (total as u32) ^ 0x8000_0000;
    ((!ascending as u64) << 32) | ci as u64
}

/// Orders the next `chunk` keys after the first `sorted` (already in order, and all before the
/// rest): returns the new length of the ordered prefix.
fn sort_prefix(keys: &mut [u64], sorted: usize, chunk: usize) -> usize {
    let rest = &mut keys[sorted..];
    if rest.len() > chunk {
        let (head, _, _) = rest.select_nth_unstable(chunk);
        head.sort_unstable();
        sorted + chunk
    } else {
        rest.sort_unstable();
        keys.len()
    }
}

/// Moves an acknowledged datagram's record list, emptied, to the spare lists.
#[inline]
fn recycle(records: &mut Vec<SentRecord>, spare: &mut Vec<Vec<SentRecord>>) {
    if records.capacity() != 0 {
        let mut r = std::mem::take(records);
        r.clear();
        spare.push(r);
    }
}

/// The most frequent nonzero delta age among `ages` (0 for none), which a datagram names once
/// as its common age. Ages of at least [`COMMON_AGE_CANDIDATES_MAX`] (rare old baselines) never
/// become it. The counts live on the stack, always cached (a field would be one more cold
/// buffer per client).
#[inline(always)]
fn common_age(ages: impl Iterator<Item = u64>) -> u64 {
    let mut counts = [0u16; COMMON_AGE_CANDIDATES_MAX];
    let (mut common, mut best) = (0u64, 0u16);
    for age in ages.filter(|&a| a != 0) {
        let Some(n) = counts.get_mut(age as usize) else {
            continue;
        };
        *n += 1;
        if *n > best {
            best = *n;
            common = age;
        }
    }
    common
}

/// The Exp-Golomb value of the gap from `prev` to `id` (ids strictly ascending).
#[inline]
fn gap(prev: Option<EntityId>, id: EntityId) -> u64 {
    match prev {
        None => id.0 as u64,
        Some(p) => (id.0 - p.0 - 1) as u64,
    }
}

/// Writes a record's index gap, then its kind code and baseline reference: the usual record
/// (next id, delta against the common age) in one write.
#[inline(always)]
fn write_index_kind(w: &mut BitRun, gap: u64, coded: Coded, common: u64) {
    if gap == 0 && matches!(coded, Coded::Delta { age } if age == common) {
        // Exp-Golomb (order 0) of 0 is `1`; then the kind `11`.
        w.write_fitting(0b111, 3);
    } else {
        w.write_eg(gap, INDEX_EG_K);
        write_kind(w, coded, common);
    }
}

/// Writes a record's kind code and, for deltas, its baseline reference.
#[inline(always)]
fn write_kind(w: &mut BitRun, coded: Coded, common: u64) {
    match coded {
        Coded::Delta { age } => {
            if age == common {
                w.write_fitting(0b11, 2);
            } else {
                w.write_fitting(0b01, 2);
                w.write_eg(age - 1, AGE_EG_K);
            }
        }
        Coded::Absolute => w.write_fitting(0b10, 2),
        Coded::Left => w.write_fitting(0b00, 2),
    }
}

/// The sample field of a left notice's [`SentRecord`]: only its flag is read.
const LEFT_NOTICE_SAMPLE: PackedSample = PackedSample {
    flags: RECORD_LEFT_NOTICE,
    ..PackedSample::ZERO
};

/// Updates an entity's state for a record just written and remembers it for acks. A delta was
/// coded against `t`'s current baseline.
#[inline]
fn commit_record(
    t: &mut Tracked,
    slot: usize,
    coded: Coded,
    input: &TickInput,
    records: &mut Vec<SentRecord>,
    summary: &mut TickSummary,
) {
    t.priority = 0.0;
    let id = t.id;
    match coded {
        Coded::Left => {
            t.set_left(LeftState::sent_at(input.now));
            records.push(SentRecord {
                id,
                slot: slot as u32,
                epoch: t.epoch,
                send_index: 0,
                sample: LEFT_NOTICE_SAMPLE,
            });
            summary.left_notices += 1;
        }
        Coded::Delta { .. } | Coded::Absolute => {
            let q = input.entities[slot].q;
            // Packed straight from the stored baseline: unpacking it into a `Sample`, deriving
            // the new one and packing that again touched three copies per record.
            let sample = match coded {
                Coded::Delta { age } if t.has_baseline() => {
                    PackedSample::from_base(&q, age as u16, &t.base)
                }
                _ => PackedSample::absolute(&q),
            };
            debug_assert_eq!(
                sample.unpack(input.tick),
                match (coded, &t.baseline()) {
                    (Coded::Delta { .. }, Some(b)) => Sample::from_base(input.tick, q, b),
                    _ => Sample::absolute(input.tick, q),
                }
            );
            let send_index = t.sends;
            t.sends = t.sends.wrapping_add(1);
            t.set_last_sent(&q, send_index, input.now);
            records.push(SentRecord {
                id,
                slot: slot as u32,
                epoch: t.epoch,
                send_index,
                sample,
            });
            summary.updates += 1;
            if matches!(coded, Coded::Absolute) {
                summary.absolute += 1;
            }
        }
    }
}

/// The age of the baseline a delta for `t` at `tick` may use, 0 for none: acknowledged, not
/// too old, and still among the receiver's [`RECEIVER_BASELINES_PER_ENTITY`] newest values.
fn usable_baseline_age(t: &Tracked, tick: Tick) -> u32 {
    let Some(base_tick) = t.baseline_tick() else {
        return 0;
    };
    let Some(age) = tick.0.checked_sub(base_tick.0) else {
        return 0;
    };
    let sends_since = t.sends.wrapping_sub(t.base_send_index) as usize;
    if (1..=BASELINE_AGE_MAX_TICKS).contains(&age) && sends_since <= RECEIVER_BASELINES_PER_ENTITY {
        age as u32
    } else {
        0
    }
}

/// Worst-case record bits without the index (a delta naming its age explicitly; naming the
/// datagram's common age instead only makes it shorter).
fn record_bits(body: usize, coded: Coded) -> usize {
    match coded {
        Coded::Delta { age } => 2 + eg_bits(age - 1, AGE_EG_K) + body,
        Coded::Absolute | Coded::Left => 2 + body,
    }
}

fn eg_bits(v: u64, k: u32) -> usize {
    (2 * bit_width(v + (1 << k)) - k - 1) as usize
}

fn gap_bits(prev: Option<EntityId>, id: EntityId) -> usize {
    eg_bits(gap(prev, id), INDEX_EG_K)
}

/// The index of `id` in `tracked`: `slot` if it is still there, else a binary search.
fn locate(tracked: &[Tracked], id: EntityId, slot: u32) -> Option<usize> {
    match tracked.get(slot as usize) {
        Some(t) if t.id == id => Some(slot as usize),
        _ => tracked.binary_search_by_key(&id, |t| t.id).ok(),
    }
}

/// Whether `tick` is newer than the baseline (or there is none).
fn baseline_older(base_tick: Option<Tick>, tick: Tick) -> bool {
    !matches!(base_tick, Some(b) if b >= tick)
}

/// Whether a notice last sent at `sent_at` is due again.
fn due(sent_at: Option<Time>, now: Time, after_us: u64) -> bool {
    match sent_at {
        None => true,
        Some(t) => now.saturating_since(t).as_micros() as u64 >= after_us,
    }
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn per_entity_state_stays_small() {
        assert_eq!(std::mem::size_of::<super::Tracked>(), 116);
        assert_eq!(std::mem::size_of::<super::PackedSample>(), 48);
        assert_eq!(std::mem::size_of::<super::SentRecord>(), 64);
    }
}

#[cfg(test)]
mod slot_set_tests {
    use super::SlotSet;
    use crate::rng::Rng;
    use std::collections::BTreeSet;

    #[test]
    fn slot_set_neighbours_match_an_ordered_set() {
        let mut rng = Rng::new(4);
        let mut set = SlotSet::default();
        for _ in 0..200 {
            let n = 1 + rng.below(300) as usize;
            set.reset(n);
            let mut model = BTreeSet::new();
            for _ in 0..rng.below(n as u64 + 1) {
                let s = rng.below(n as u64) as usize;
                assert_eq!(set.prev(s), model.range(..s).next_back().copied());
                assert_eq!(set.next(s), model.range(s + 1..).next().copied());
                if model.insert(s) {
                    set.insert(s);
                }
                assert_eq!(set.len, model.len());
            }
            assert!(set.iter().eq(model.iter().copied()));
        }
    }
}
