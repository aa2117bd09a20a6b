//! [`BodyMemo`]: delta bodies encoded once per thread and reused by every client that codes the
//! same value against the same baseline.
//!
//! A delta body is a pure function of the quantizer, the entity's current value, the tick and
//! the baseline (its tick, value and motion). Clients whose acks arrive alike hold the same
//! baseline of an entity, so a server writing a 1,000-client tick encodes the same body for an
//! entity many times over (residuals, prediction, the choice between them: ≈ 380 instructions a
//! record). The memo remembers each body by that whole key, so a hit writes the very bits an
//! encoding would: the wire does not change, only who computes it. Nothing else is keyed
//! (no world, no client), so replicators of unrelated worlds sharing a thread cannot see each
//! other's bodies unless those are the same bits.
//!
//! It is direct-mapped (one slot per hash of entity and baseline tick, a colliding body
//! replaces the older one) and lives in the thread's [`Scratch`](super::pack::Scratch), so one
//! table, warm in the cache, serves every replicator writing on the thread. It grows (up to
//! [`MEMO_SLOTS_MAX`]) when a tick replaces many bodies of the same tick by bodies of another
//! entity or baseline tick: too small a table for the world's entities and baselines. A body
//! replacing one of the same entity and baseline tick (the same baseline tick reached through
//! another earlier baseline, so another baseline motion: clients whose acks arrived at other
//! times) is no sign of that: both hash to the same slot in a table of any size.

use super::tracked::PackedSample;
use crate::time::Tick;
use crate::transform::bits::BitRun;
use crate::transform::quant::{QTransform, Quantizer};
use crate::transform::record::write_delta_run;
use crate::types::EntityId;

/// Slots of a new table.
const MEMO_SLOTS_MIN: usize = 1 << 10;
/// Most slots a table grows to (≈ 15 MiB at 120 bytes a slot).
const MEMO_SLOTS_MAX: usize = 1 << 17;
/// Longest body remembered, bits: walking and running bodies take 20–60, a body longer than
/// this (a teleport, a wide residual) is simply encoded each time.
const MEMO_BODY_BITS_MAX: usize = 128;

/// One remembered body and its key.
#[derive(Clone, Copy, Debug)]
struct MemoEntry {
    id: EntityId,
    /// Body length in bits; 0 for an empty slot (a delta body is at least 3 bits).
    len: u32,
    tick: Tick,
    base_tick: Tick,
    /// The current value and the baseline as [`value_words`].
    key: [u64; 9],
    /// The body, least significant bit first.
    bits: u128,
}

const EMPTY: MemoEntry = MemoEntry {
    id: EntityId(0),
    len: 0,
    tick: Tick(0),
    base_tick: Tick(0),
    key: [0; 9],
    bits: 0,
};

/// Delta bodies by their whole key, see the module documentation.
#[derive(Clone, Debug, Default)]
pub(super) struct BodyMemo {
    slots: Vec<MemoEntry>,
    /// The quantizer every remembered body was encoded with.
    qz: Option<Quantizer>,
    /// The newest tick a body was stored for, and how many bodies of that tick replaced
    /// another body of that tick of another entity or baseline tick (a sign the table is too
    /// small).
    tick: Tick,
    clashes: usize,
}

impl BodyMemo {
    /// Readies the memo for a replicator using `qz`: bodies of another quantizer are
    /// forgotten (they are other bits).
    #[inline]
    pub(super) fn use_quantizer(&mut self, qz: &Quantizer) {
        if self.qz.as_ref() != Some(qz) {
            self.qz = Some(qz.clone());
            self.slots.clear();
            self.slots.resize(MEMO_SLOTS_MIN, EMPTY);
            self.clashes = 0;
        }
    }

    #[inline]
    fn slot(&self, id: EntityId, base_tick: Tick) -> usize {
        let h = (u64::from(id.0).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            ^ base_tick.0.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        (h >> 32) as usize & (self.slots.len() - 1)
    }

    /// Writes the delta body of `cur` at `tick` against the baseline `base` of `base_tick`,
    /// exactly as [`write_delta_run`] writes it, from the memo when it holds it. `qz` must be
    /// the quantizer given to [`BodyMemo::use_quantizer`].
    ///
    /// The hit path is small and inlined into the record writers (most records are hits); an
    /// encoding and storing it is [`BodyMemo::encode_and_store`], kept out of line.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_delta(
        &mut self,
        w: &mut BitRun,
        qz: &Quantizer,
        id: EntityId,
        cur: &QTransform,
        tick: Tick,
        base_tick: Tick,
        base: &PackedSample,
    ) {
        debug_assert!(self.qz.as_ref() == Some(qz));
        let e = &self.slots[self.slot(id, base_tick)];
        // One branch for the whole key: `&` rather than `&&`, and the values compared as
        // whole words (`same_words`), since a hit, the common case, compares everything anyway.
        if (e.len != 0)
            & (e.id == id)
            & (e.tick == tick)
            & (e.base_tick == base_tick)
            & same_words(&e.key, &value_words(cur, base))
        {
            let (len, bits) = (e.len, e.bits);
            if len <= 64 {
                w.write_fitting(bits as u64, len);
            } else {
                w.write_fitting(bits as u64, 64);
                w.write_fitting((bits >> 64) as u64, len - 64);
            }
            return;
        }
        self.encode_and_store(w, qz, id, cur, tick, base_tick, base);
    }

    /// A memo miss: encodes the body and remembers it (unless too long).
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn encode_and_store(
        &mut self,
        w: &mut BitRun,
        qz: &Quantizer,
        id: EntityId,
        cur: &QTransform,
        tick: Tick,
        base_tick: Tick,
        base: &PackedSample,
    ) {
        let start = w.len_bits();
        write_delta_run(w, qz, cur, tick, &base.unpack(base_tick));
        let len = w.len_bits() - start;
        if len > MEMO_BODY_BITS_MAX {
            return;
        }
        if tick > self.tick {
            self.grow_if_crowded();
            self.tick = tick;
        }
        let i = self.slot(id, base_tick);
        let old = &self.slots[i];
        // Only a clash between different (entity, baseline tick) pairs is one a bigger table
        // spreads: counting the others grew the table to its maximum for nothing (a soak of
        // 150 walking clients: every doubling to 131,072 slots, 14 MiB, was triggered by them).
        if old.len != 0 && old.tick == tick && (old.id != id || old.base_tick != base_tick) {
            self.clashes += 1;
        }
        self.slots[i] = MemoEntry {
            id,
            len: len as u32,
            tick,
            base_tick,
            key: value_words(cur, base),
            bits: w.bits_since(start),
        };
    }

    /// At a new tick: doubles the table when the last tick's bodies often replaced bodies of
    /// other entities or baseline ticks.
    fn grow_if_crowded(&mut self) {
        let n = self.slots.len();
        if self.clashes > n / 8 && n < MEMO_SLOTS_MAX {
            self.slots.clear();
            self.slots.resize(n * 2, EMPTY);
        }
        self.clashes = 0;
    }
}

/// Whether two [`value_words`] are equal, with no early exit: a hit, the common case, compares
/// every word anyway (a field-by-field `==` of the values cost ≈ 50 instructions a record).
#[inline(always)]
fn same_words(a: &[u64; 9], b: &[u64; 9]) -> bool {
    a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every field of a (current value, baseline) pair, packed into words: equal words iff equal
/// fields, so comparing them keeps the memo exact. An entry stores its key so; a lookup packs
/// only the value looked up.
#[inline(always)]
fn value_words(cur: &QTransform, base: &PackedSample) -> [u64; 9] {
    let w32 = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
    let w16 = |v: [u16; 4]| {
        u64::from(v[0]) | u64::from(v[1]) << 16 | u64::from(v[2]) << 32 | u64::from(v[3]) << 48
    };
    let (scale, has_scale) = match cur.scale {
        Some(s) => (s, 1),
        None => ([0; 3], 0),
    };
    [
        w32(cur.pos[0], cur.pos[1]),
        w32(
            cur.pos[2],
            u32::from(cur.rot.largest)
                | has_scale << 8
                | u32::from(base.largest) << 16
                | u32::from(base.flags) << 24,
        ),
        w16([
            cur.rot.comps[0],
            cur.rot.comps[1],
            cur.rot.comps[2],
            scale[0],
        ]),
        w32(u32::from(scale[1]) | u32::from(scale[2]) << 16, base.pos[0]),
        w32(base.pos[1], base.pos[2]),
        w32(base.dpos[0] as u32, base.dpos[1] as u32),
        w32(
            base.dpos[2] as u32,
            u32::from(base.comps[0]) | u32::from(base.comps[1]) << 16,
        ),
        w16([
            base.comps[2],
            base.drot[0] as u16,
            base.drot[1] as u16,
            base.drot[2] as u16,
        ]),
        w16([base.scale[0], base.scale[1], base.scale[2], base.dt]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::transform::bits::BitWriter;
    use crate::transform::quant::QRot;
    use crate::transform::TransformConfig;

    fn q(rng: &mut Rng, spread: u32) -> QTransform {
        let mut v = |m: u32| 500_000 + (rng.f64() * f64::from(m)) as u32;
        QTransform {
            pos: [v(spread), v(spread), v(spread)],
            rot: QRot {
                largest: 3,
                comps: [100, 200, 300].map(|c: u16| c + (rng.f64() * 9.0) as u16),
            },
            scale: None,
        }
    }

    /// Bodies from the memo (hits and misses, short and over 64 bits, at every offset in a
    /// word) are the bits the encoder writes.
    #[test]
    fn memo_writes_exactly_what_the_encoder_writes() {
        let qz = Quantizer::new(&TransformConfig::default()).unwrap();
        let mut memo = BodyMemo::default();
        memo.use_quantizer(&qz);
        let mut rng = Rng::new(5);
        let (mut a, mut b) = (BitWriter::new(), BitWriter::new());
        for round in 0..3u64 {
            for i in 0..400u32 {
                let mut r = Rng::new(u64::from(i));
                let base_q = q(&mut r, 1 << 4);
                let spread = if i % 3 == 0 { 1 << 30 } else { 1 << 6 };
                let cur = q(&mut r, spread);
                let older = q(&mut r, 1 << 4);
                let base = PackedSample::from_base(&base_q, 2, &PackedSample::absolute(&older));
                let (tick, base_tick) = (Tick(40 + round), Tick(37));
                // Something before the body, so bodies start anywhere in a word.
                let pad = (rng.f64() * 64.0) as u32;
                let mut wa = BitRun::new(&mut a);
                wa.write_fitting(0, pad);
                write_delta_run(&mut wa, &qz, &cur, tick, &base.unpack(base_tick));
                wa.finish();
                let mut wb = BitRun::new(&mut b);
                wb.write_fitting(0, pad);
                memo.write_delta(&mut wb, &qz, EntityId(i), &cur, tick, base_tick, &base);
                wb.finish();
            }
        }
        let (mut ba, mut bb) = (Vec::new(), Vec::new());
        a.copy_to(&mut ba);
        b.copy_to(&mut bb);
        assert_eq!(a.len_bits(), b.len_bits());
        assert_eq!(ba, bb);
    }

    /// Many clients holding the same baseline tick of an entity reached through different
    /// earlier baselines (acks that arrived at different times) code against different
    /// baseline motions: their bodies share a slot at any table size, so replacing each other
    /// must not grow the table, however many there are and however long it lasts.
    #[test]
    fn bodies_of_one_entity_and_baseline_tick_never_grow_the_table() {
        let qz = Quantizer::new(&TransformConfig::default()).unwrap();
        let mut memo = BodyMemo::default();
        memo.use_quantizer(&qz);
        let mut rng = Rng::new(9);
        let mut w = BitWriter::new();
        // 50 entities, each coded against one baseline tick by 40 clients whose baselines
        // differ in their motion (the earlier baseline each was derived from), for 40 ticks.
        for tick in 40..80u64 {
            for i in 1..=50u32 {
                let mut r = Rng::new(u64::from(i) ^ tick << 20);
                let base_q = q(&mut r, 1 << 4);
                let cur = q(&mut r, 1 << 6);
                for _client in 0..40 {
                    let older = q(&mut rng, 1 << 8);
                    let base = PackedSample::from_base(&base_q, 2, &PackedSample::absolute(&older));
                    let mut run = BitRun::new(&mut w);
                    memo.write_delta(
                        &mut run,
                        &qz,
                        EntityId(i),
                        &cur,
                        Tick(tick),
                        Tick(tick - 3),
                        &base,
                    );
                    run.finish();
                }
            }
            w = BitWriter::new();
        }
        assert_eq!(memo.slots.len(), MEMO_SLOTS_MIN);
    }

    /// Bodies of more (entity, baseline tick) pairs in one tick than the table holds do grow
    /// it, and it stops growing once they fit.
    #[test]
    fn many_entities_and_baseline_ticks_grow_the_table_until_they_fit() {
        let qz = Quantizer::new(&TransformConfig::default()).unwrap();
        let mut memo = BodyMemo::default();
        memo.use_quantizer(&qz);
        let mut w = BitWriter::new();
        // 2,000 entities, each against 4 baseline ticks: 8,000 pairs a tick.
        let mut sizes = Vec::new();
        for tick in 40..80u64 {
            for i in 1..=2000u32 {
                let mut r = Rng::new(u64::from(i));
                let base_q = q(&mut r, 1 << 4);
                let cur = q(&mut r, 1 << 6);
                let base = PackedSample::absolute(&base_q);
                for back in 1..=4 {
                    let mut run = BitRun::new(&mut w);
                    memo.write_delta(
                        &mut run,
                        &qz,
                        EntityId(i),
                        &cur,
                        Tick(tick),
                        Tick(tick - back),
                        &base,
                    );
                    run.finish();
                }
            }
            w = BitWriter::new();
            sizes.push(memo.slots.len());
        }
        let last = *sizes.last().unwrap();
        assert!(last >= 8000, "{sizes:?}");
        assert!(last < MEMO_SLOTS_MAX, "{sizes:?}");
        assert!(
            sizes[sizes.len() - 10..].iter().all(|&n| n == last),
            "{sizes:?}"
        );
    }
}
