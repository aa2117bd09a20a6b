//! The replicator's per-entity state for one client: [`Tracked`] (baseline, last value sent,
//! priority, interest or pending "left interest" notice), and [`PackedSample`], the layout in
//! which it and the sent history keep values. Both layouts are sized on purpose (see
//! `tests::size_tests`): one `Tracked` per world entity per client is the replicator's largest
//! memory, and every tick walks it.

use crate::time::{Tick, Time};
use crate::transform::quant::{QRot, QTransform};
use crate::transform::record::{Motion, Sample};
use crate::transform::BASELINE_AGE_MAX_TICKS;
use crate::types::EntityId;

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
pub(super) struct LeftState(u64);

impl LeftState {
    pub(super) const NONE: LeftState = LeftState(u64::MAX);
    pub(super) const UNSENT: LeftState = LeftState(u64::MAX - 1);

    #[inline]
    pub(super) fn sent_at(t: Time) -> LeftState {
        LeftState(t.0.min(u64::MAX - 2))
    }

    #[inline]
    pub(super) fn is_pending(self) -> bool {
        self != LeftState::NONE
    }

    /// `Some(when last sent, if ever)` if a notice is pending.
    #[inline]
    pub(super) fn pending(self) -> Option<Option<Time>> {
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
pub(super) const TRACKED_LAST_ACKED: u8 = 4;
/// [`Tracked::flags`]: the last value sent has a scale (`last_scale`).
const TRACKED_LAST_HAS_SCALE: u8 = 8;

/// Per-client state of one entity: 116 bytes, no padding (it was 144 with `Option`s of whole
/// samples and a `u64`-aligned layout). Every field is 4-byte aligned or smaller, the baseline
/// is a [`PackedSample`], the last value sent is stored unpacked, and one word holds either the
/// last send's time (in interest) or the [`LeftState`] (out of interest: nothing is sent then,
/// and leaving forgets the last value sent).
#[derive(Clone, Copy, Debug)]
pub(super) struct Tracked {
    pub(super) id: EntityId,
    pub(super) priority: f32,
    /// A number unique within this replicator, renewed when the entity leaves interest or is
    /// re-added to the world: acks of records from an older epoch are ignored, so a baseline
    /// the client may have dropped is never used again.
    pub(super) epoch: u32,
    /// Sends in this epoch (the next send's index).
    pub(super) sends: u32,
    /// In interest: the last send's time (µs, [`halves`]) if [`TRACKED_HAS_LAST_SENT`]. Out of
    /// interest: the [`LeftState`].
    at_or_left: [u32; 2],
    /// The last value sent's send index.
    pub(super) last_send_index: u32,
    /// The baseline's tick ([`halves`]) and send index.
    base_tick: [u32; 2],
    pub(super) base_send_index: u32,
    /// The baseline's value and motion, if [`TRACKED_HAS_BASELINE`].
    pub(super) base: PackedSample,
    /// The last value sent, if [`TRACKED_HAS_LAST_SENT`].
    last_pos: [u32; 3],
    last_comps: [u16; 3],
    last_scale: [u16; 3],
    last_largest: u8,
    /// `TRACKED_*` bits.
    pub(super) flags: u8,
    pub(super) in_interest: bool,
}

impl Tracked {
    pub(super) fn new(id: EntityId, epoch: u32) -> Tracked {
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
    pub(super) fn left(&self) -> LeftState {
        if self.in_interest {
            LeftState::NONE
        } else {
            LeftState(whole(self.at_or_left))
        }
    }

    /// Sets the left-interest state (only out of interest, or [`LeftState::NONE`]).
    #[inline]
    pub(super) fn set_left(&mut self, l: LeftState) {
        debug_assert!(!self.in_interest || l == LeftState::NONE);
        if !self.in_interest {
            self.at_or_left = halves(l.0);
        }
    }

    #[inline]
    pub(super) fn has_baseline(&self) -> bool {
        self.flags & TRACKED_HAS_BASELINE != 0
    }

    #[inline]
    pub(super) fn has_last_sent(&self) -> bool {
        self.flags & TRACKED_HAS_LAST_SENT != 0
    }

    /// The baseline's tick, if any.
    #[inline]
    pub(super) fn baseline_tick(&self) -> Option<Tick> {
        self.has_baseline().then(|| Tick(whole(self.base_tick)))
    }

    /// The baseline, unpacked, if any.
    #[inline]
    pub(super) fn baseline(&self) -> Option<Sample> {
        let tick = self.baseline_tick()?;
        Some(self.base.unpack(tick))
    }

    #[inline]
    pub(super) fn set_baseline(&mut self, tick: Tick, sample: &PackedSample, send_index: u32) {
        self.base_tick = halves(tick.0);
        self.base = *sample;
        self.base_send_index = send_index;
        self.flags |= TRACKED_HAS_BASELINE;
    }

    /// Whether the last value sent is `q`.
    #[inline]
    pub(super) fn last_sent_is(&self, q: &QTransform) -> bool {
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
    pub(super) fn set_last_sent(&mut self, q: &QTransform, send_index: u32, at: Time) {
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
    pub(super) fn last_sent_at(&self) -> Time {
        Time(whole(self.at_or_left))
    }

    /// Forgets the baseline and the last value sent (leaving interest).
    #[inline]
    pub(super) fn forget_values(&mut self) {
        self.flags = 0;
    }
}

/// A [`Sample`] as the replicator stores it, 48 bytes instead of 64: without its tick (kept
/// where it is needed: once per datagram for sent records), rotation and scale unpacked so that
/// nothing pads, and the motion's interval in 16 bits (a delta's baseline is at most
/// [`BASELINE_AGE_MAX_TICKS`] old; an absolute value has no motion).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PackedSample {
    pub(super) pos: [u32; 3],
    pub(super) dpos: [i32; 3],
    pub(super) comps: [u16; 3],
    pub(super) drot: [i16; 3],
    /// The scale if [`PACKED_HAS_SCALE`] is set.
    pub(super) scale: [u16; 3],
    pub(super) dt: u16,
    pub(super) largest: u8,
    /// [`PACKED_ROT_VALID`], [`PACKED_HAS_SCALE`], [`RECORD_LEFT_NOTICE`].
    pub(super) flags: u8,
}

/// [`PackedSample::flags`]: the motion's rotation change holds.
const PACKED_ROT_VALID: u8 = 1;
/// [`PackedSample::flags`]: the value has a scale.
const PACKED_HAS_SCALE: u8 = 2;
/// [`PackedSample::flags`] of a [`SentRecord`](super::ack::SentRecord): the record is a
/// left-interest notice, not an update (a flag here keeps the record at 64 bytes).
pub(super) const RECORD_LEFT_NOTICE: u8 = 4;
// A delta's motion interval is its baseline's age, which fits the packed 16 bits.
const _: () = assert!(BASELINE_AGE_MAX_TICKS <= u16::MAX as u64);

impl PackedSample {
    /// All zero: a placeholder where no sample is held.
    pub(super) const ZERO: PackedSample = PackedSample {
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
    pub(super) fn absolute(q: &QTransform) -> PackedSample {
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
    pub(super) fn from_base(q: &QTransform, dt: u16, base: &PackedSample) -> PackedSample {
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
    pub(super) fn unpack(&self, tick: Tick) -> Sample {
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
