//! The bit-level encoding of one entity record, shared by the writer and the receiver so both
//! agree on every bit, plus the prediction from a baseline's motion.
//!
//! Record layout (after the relative entity index):
//! - kind: `1` delta, `01` absolute, `00` left interest (no body).
//! - delta: baseline reference (`1` = the datagram's common baseline age, `0` + EG₂(age − 1)),
//!   then the body: a prediction bit; position (`0` = residual zero, `1` + width + 3 × width
//!   bits of zigzag residual); rotation (`0` = residual zero, `11` + width + 3 residuals on the
//!   same largest component, `10` + absolute smallest three); scale if enabled (`0` unchanged,
//!   `1` + presence + absolute).
//! - absolute: 3 positions at their axis widths, smallest three, scale if enabled.
//!
//! Widths are Exp-Golomb (order 1) of `width − 1`: a residual of ±1 costs 2 + 3 × 2 bits for
//! the three axes, a 10-bit move 6 + 3 × 10. That is the "small and large delta forms".

use super::bits::{bit_width, unzigzag, zigzag, BitReader, BitRun, BitWriter};
use super::quant::{QRot, QTransform, Quantizer};
use super::TransformError;
use crate::time::Tick;

/// Exp-Golomb order for residual widths.
const WIDTH_EG_K: u32 = 1;
/// Exp-Golomb order for baseline ages in ticks: ages of 1–4 ticks take 3 bits, up to 12 take 5.
pub(crate) const AGE_EG_K: u32 = 2;
/// A predicted residual at most this wide (bits per component) is used without comparing it to
/// the plain delta: the comparison costs more time than the bit or two it could save.
const PREDICTED_GOOD_ENOUGH_BITS: u32 = 2;
/// Furthest a prediction extrapolates, in motion intervals: past that the motion is stale and
/// the residual would only grow.
const PREDICT_INTERVALS_MAX: u64 = 8;
/// Widest residual accepted, bits: a full position axis plus sign.
const RESIDUAL_WIDTH_MAX: u64 = 32;

/// How an entity moved into a value: the change from the baseline it was coded against, over
/// how many ticks. Both sides derive it identically after each decode, so it costs no bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Motion {
    dpos: [i32; 3],
    /// Rotation components are at most 15 bits, so their change fits 16.
    drot: [i16; 3],
    rot_valid: bool,
    /// Ticks the change took; 0 = no motion known (absolute value).
    dt: u32,
}

impl Motion {
    /// No motion known (the value was absolute).
    pub const NONE: Motion = Motion {
        dpos: [0; 3],
        drot: [0; 3],
        rot_valid: false,
        dt: 0,
    };
}

impl Motion {
    /// The motion of the given parts: position change, rotation change, whether the rotation
    /// change holds (the same largest component), and the ticks it took. The replicator stores
    /// motions packed.
    #[inline]
    pub(crate) fn from_parts(dpos: [i32; 3], drot: [i16; 3], rot_valid: bool, dt: u32) -> Motion {
        Motion {
            dpos,
            drot,
            rot_valid,
            dt,
        }
    }
}

/// One value of one entity as both sides remember it: a baseline candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    pub tick: Tick,
    pub q: QTransform,
    pub motion: Motion,
}

impl Sample {
    /// A sample with no known motion (first contact, absolute value).
    pub fn absolute(tick: Tick, q: QTransform) -> Sample {
        Sample {
            tick,
            q,
            motion: Motion::default(),
        }
    }

    /// The sample `q` at `tick` becomes when coded against `base`.
    pub fn from_base(tick: Tick, q: QTransform, base: &Sample) -> Sample {
        let dt = tick.0.saturating_sub(base.tick.0).min(u32::MAX as u64) as u32;
        let mut m = Motion {
            dt,
            ..Default::default()
        };
        for a in 0..3 {
            m.dpos[a] = q.pos[a] as i32 - base.q.pos[a] as i32;
        }
        if q.rot.largest == base.q.rot.largest {
            m.rot_valid = true;
            for a in 0..3 {
                m.drot[a] = (q.rot.comps[a] as i32 - base.q.rot.comps[a] as i32) as i16;
            }
        }
        Sample { tick, q, motion: m }
    }

    /// Predicted position and rotation components at `tick`, extrapolating this sample's motion
    /// (at most [`PREDICT_INTERVALS_MAX`] motion intervals ahead). Fixed-point with 16
    /// fractional bits and one division, identical on both sides.
    #[inline]
    fn predict(&self, tick: Tick, qz: &Quantizer) -> ([i64; 3], [i64; 3]) {
        let mut pos = self.q.pos.map(|v| v as i64);
        let mut rot = self.q.rot.comps.map(|v| v as i64);
        let m = &self.motion;
        if m.dt == 0 {
            return (pos, rot);
        }
        let dt = m.dt as u64;
        let ahead = tick
            .0
            .saturating_sub(self.tick.0)
            .min(dt * PREDICT_INTERVALS_MAX);
        let max = qz.position_max();
        if ahead == dt {
            // One interval ahead (the steady state): the ratio is exactly 1.0.
            for a in 0..3 {
                pos[a] = clamp_to(pos[a] + m.dpos[a] as i64, max[a] as i64);
            }
            if m.rot_valid {
                let rmax = qz.rotation_max() as i64;
                for a in 0..3 {
                    rot[a] = clamp_to(rot[a] + m.drot[a] as i64, rmax);
                }
            }
            return (pos, rot);
        }
        // ratio < 2^(16 + 3); |dpos| < 2^31: the product stays below 2^50.
        let ratio = ((ahead << 16) / dt) as i64;
        for a in 0..3 {
            let d = (m.dpos[a] as i64 * ratio) >> 16;
            pos[a] = clamp_to(pos[a] + d, max[a] as i64);
        }
        if m.rot_valid {
            let rmax = qz.rotation_max() as i64;
            for a in 0..3 {
                let d = (m.drot[a] as i64 * ratio) >> 16;
                rot[a] = clamp_to(rot[a] + d, rmax);
            }
        }
        (pos, rot)
    }
}

/// `v.clamp(0, max)` (`max` ≥ 0), with one well-predicted branch for the usual in-range value.
#[inline(always)]
fn clamp_to(v: i64, max: i64) -> i64 {
    if v as u64 <= max as u64 {
        v
    } else if v < 0 {
        0
    } else {
        max
    }
}

/// A decoded delta body, before its baseline is looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeltaBody {
    predicted: bool,
    pos: Option<[i64; 3]>,
    rot: RotDelta,
    scale: Option<Option<[u16; 3]>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RotDelta {
    Same,
    Residual([i64; 3]),
    Absolute(QRot),
}

/// Zigzag values of a residual triple and the bit width of the largest (OR has the same width
/// as the maximum).
#[inline]
fn zig3(r: &[i64; 3]) -> ([u64; 3], u32) {
    let z = r.map(zigzag);
    (z, bit_width(z[0] | z[1] | z[2]))
}

/// Bits of a residual triple of width `w` (after its presence bit's position).
#[inline]
fn triple_cost(w: u32) -> u32 {
    if w == 0 {
        1
    } else {
        1 + eg_len(w as u64 - 1, WIDTH_EG_K) + 3 * w
    }
}

#[inline]
fn eg_len(v: u64, k: u32) -> u32 {
    let q = v + (1 << k);
    2 * bit_width(q) - k - 1
}

/// Writes width and three values (no presence bit). Each value fits in `width` bits.
#[inline(always)]
fn write_triple_tail(w: &mut BitRun, z: &[u64; 3], width: u32) {
    let q = width as u64 - 1 + (1 << WIDTH_EG_K);
    let nbits = 64 - q.leading_zeros();
    let eg_bits = 2 * nbits - WIDTH_EG_K - 1;
    if eg_bits + 3 * width <= 64 {
        // The width's Exp-Golomb code (as `write_eg` writes it) and the values in one write.
        let code = ((q ^ (1u64 << (nbits - 1))) << 1 | 1) << (nbits - WIDTH_EG_K - 1);
        let vals = z[0] | z[1] << width | z[2] << (2 * width);
        w.write_fitting(code | vals << eg_bits, eg_bits + 3 * width);
        return;
    }
    w.write_eg(width as u64 - 1, WIDTH_EG_K);
    if 3 * width <= 64 {
        w.write_fitting(z[0] | z[1] << width | z[2] << (2 * width), 3 * width);
    } else {
        for v in z {
            w.write_fitting(*v, width);
        }
    }
}

fn read_triple_tail(r: &mut BitReader) -> Result<[i64; 3], TransformError> {
    let width = r.read_eg(WIDTH_EG_K)? + 1;
    if width > RESIDUAL_WIDTH_MAX {
        return Err(TransformError::Malformed("residual too wide"));
    }
    let width = width as u32;
    if 3 * width <= 57 {
        // All three in one read (a short input fails the same way: truncated).
        let v = r.read(3 * width)?;
        let mask = (1u64 << width) - 1;
        return Ok([
            unzigzag(v & mask),
            unzigzag(v >> width & mask),
            unzigzag(v >> (2 * width) & mask),
        ]);
    }
    let mut out = [0; 3];
    for v in &mut out {
        *v = unzigzag(r.read(width)?);
    }
    Ok(out)
}

#[inline]
fn write_rot_abs(w: &mut BitRun, qz: &Quantizer, r: &QRot) {
    w.write(r.largest as u64, 2);
    for c in r.comps {
        w.write(c as u64, qz.rotation_bits());
    }
}

fn read_rot_abs(r: &mut BitReader, qz: &Quantizer) -> Result<QRot, TransformError> {
    let bits = qz.rotation_bits();
    if 2 + 3 * bits <= 57 {
        // The index and the three components in one read (a short input fails the same way).
        let v = r.read(2 + 3 * bits)?;
        let mask = (1u64 << bits) - 1;
        return Ok(QRot {
            largest: (v & 3) as u8,
            comps: [0, 1, 2].map(|i| (v >> (2 + i * bits) & mask) as u16),
        });
    }
    let largest = r.read(2)? as u8;
    let mut comps = [0u16; 3];
    for c in &mut comps {
        *c = r.read(bits)? as u16;
    }
    Ok(QRot { largest, comps })
}

fn write_scale_abs(w: &mut BitRun, qz: &Quantizer, s: &Option<[u16; 3]>) {
    w.write_bool(s.is_some());
    if let Some(s) = s {
        for v in s {
            w.write(*v as u64, qz.scale_bits());
        }
    }
}

fn read_scale_abs(r: &mut BitReader, qz: &Quantizer) -> Result<Option<[u16; 3]>, TransformError> {
    if !r.read_bool()? {
        return Ok(None);
    }
    let mut s = [0u16; 3];
    for v in &mut s {
        *v = r.read(qz.scale_bits())? as u16;
    }
    Ok(Some(s))
}

/// Writes an absolute body (after the kind code).
pub(crate) fn write_absolute(w: &mut BitWriter, qz: &Quantizer, q: &QTransform) {
    let mut run = BitRun::new(w);
    write_absolute_run(&mut run, qz, q);
    run.finish();
}

/// [`write_absolute`] into a run.
#[inline]
pub(crate) fn write_absolute_run(w: &mut BitRun, qz: &Quantizer, q: &QTransform) {
    let bits = qz.position_bits();
    for a in 0..3 {
        w.write(q.pos[a] as u64, bits[a]);
    }
    write_rot_abs(w, qz, &q.rot);
    if qz.scale_enabled() {
        write_scale_abs(w, qz, &q.scale);
    }
}

/// Reads an absolute body and checks its ranges.
pub(crate) fn read_absolute(
    r: &mut BitReader,
    qz: &Quantizer,
) -> Result<QTransform, TransformError> {
    let bits = qz.position_bits();
    let mut pos = [0u32; 3];
    for a in 0..3 {
        pos[a] = r.read(bits[a])? as u32;
    }
    let rot = read_rot_abs(r, qz)?;
    let scale = if qz.scale_enabled() {
        read_scale_abs(r, qz)?
    } else {
        None
    };
    let q = QTransform { pos, rot, scale };
    if !qz.is_valid(&q) {
        return Err(TransformError::OutOfBounds);
    }
    Ok(q)
}

/// Writes a delta body of `cur` at `tick` against `base`, choosing plain or predicted residuals,
/// whichever is shorter.
#[cfg(test)]
pub(crate) fn write_delta(
    w: &mut BitWriter,
    qz: &Quantizer,
    cur: &QTransform,
    tick: Tick,
    base: &Sample,
) {
    let mut run = BitRun::new(w);
    write_delta_run(&mut run, qz, cur, tick, base);
    run.finish();
}

/// [`write_delta`] into a run.
#[inline]
pub(crate) fn write_delta_run(
    w: &mut BitRun,
    qz: &Quantizer,
    cur: &QTransform,
    tick: Tick,
    base: &Sample,
) {
    let same_largest = cur.rot.largest == base.q.rot.largest;
    let plain = || {
        let pos = [0, 1, 2].map(|a| cur.pos[a] as i64 - base.q.pos[a] as i64);
        let rot = [0, 1, 2].map(|a| cur.rot.comps[a] as i64 - base.q.rot.comps[a] as i64);
        (zig3(&pos), zig3(&rot))
    };
    let rc = |w: u32| if same_largest { triple_cost(w) } else { 0 };
    let (((pz, pw), (rz, rw)), predicted) = if base.motion.dt == 0 {
        (plain(), false)
    } else {
        let (pp, pr) = base.predict(tick, qz);
        let pred_pos = zig3(&[0, 1, 2].map(|a| cur.pos[a] as i64 - pp[a]));
        let pred_rot = zig3(&[0, 1, 2].map(|a| cur.rot.comps[a] as i64 - pr[a]));
        if pred_pos.1 <= PREDICTED_GOOD_ENOUGH_BITS && pred_rot.1 <= PREDICTED_GOOD_ENOUGH_BITS {
            // A residual this small leaves the plain delta at most a few bits to win.
            ((pred_pos, pred_rot), true)
        } else {
            let ((qpz, qpw), (qrz, qrw)) = plain();
            if triple_cost(pred_pos.1) + rc(pred_rot.1) < triple_cost(qpw) + rc(qrw) {
                ((pred_pos, pred_rot), true)
            } else {
                (((qpz, qpw), (qrz, qrw)), false)
            }
        }
    };
    if pw == 0 {
        w.write_fitting(predicted as u64, 2); // prediction bit, then `0`: position unchanged
    } else {
        w.write_fitting(predicted as u64 | 0b10, 2);
        write_triple_tail(w, &pz, pw);
    }
    if !same_largest {
        w.write(0b01, 2); // `1` changed, then `0` absolute
        write_rot_abs(w, qz, &cur.rot);
    } else if rw == 0 {
        w.write_bool(false);
    } else {
        w.write(0b11, 2);
        write_triple_tail(w, &rz, rw);
    }
    if qz.scale_enabled() {
        if cur.scale == base.q.scale {
            w.write_bool(false);
        } else {
            w.write_bool(true);
            write_scale_abs(w, qz, &cur.scale);
        }
    }
}

/// Reads a delta body (needs no baseline: the layout never depends on values).
pub(crate) fn read_delta(r: &mut BitReader, qz: &Quantizer) -> Result<DeltaBody, TransformError> {
    let predicted = r.read_bool()?;
    let pos = if r.read_bool()? {
        Some(read_triple_tail(r)?)
    } else {
        None
    };
    let rot = if !r.read_bool()? {
        RotDelta::Same
    } else if r.read_bool()? {
        RotDelta::Residual(read_triple_tail(r)?)
    } else {
        RotDelta::Absolute(read_rot_abs(r, qz)?)
    };
    let scale = if qz.scale_enabled() && r.read_bool()? {
        Some(read_scale_abs(r, qz)?)
    } else {
        None
    };
    Ok(DeltaBody {
        predicted,
        pos,
        rot,
        scale,
    })
}

impl DeltaBody {
    /// The value this body encodes at `tick` against `base`; out-of-range results are the
    /// sender's fault and come back as errors.
    pub fn apply(
        &self,
        qz: &Quantizer,
        tick: Tick,
        base: &Sample,
    ) -> Result<QTransform, TransformError> {
        let (pp, pr) = if self.predicted {
            base.predict(tick, qz)
        } else {
            (
                base.q.pos.map(|v| v as i64),
                base.q.rot.comps.map(|v| v as i64),
            )
        };
        let res = self.pos.unwrap_or([0; 3]);
        let mut pos = [0u32; 3];
        let max = qz.position_max();
        for a in 0..3 {
            let v = pp[a] + res[a];
            if !(0..=max[a] as i64).contains(&v) {
                return Err(TransformError::OutOfBounds);
            }
            pos[a] = v as u32;
        }
        let rot = match self.rot {
            RotDelta::Same => QRot {
                largest: base.q.rot.largest,
                comps: pr.map(|v| v as u16),
            },
            RotDelta::Residual(d) => {
                let mut comps = [0u16; 3];
                for a in 0..3 {
                    let v = pr[a] + d[a];
                    if !(0..=qz.rotation_max() as i64).contains(&v) {
                        return Err(TransformError::OutOfBounds);
                    }
                    comps[a] = v as u16;
                }
                QRot {
                    largest: base.q.rot.largest,
                    comps,
                }
            }
            RotDelta::Absolute(r) => r,
        };
        let q = QTransform {
            pos,
            rot,
            scale: self.scale.unwrap_or(base.q.scale),
        };
        if !qz.is_valid(&q) {
            return Err(TransformError::OutOfBounds);
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::transform::config::TransformConfig;

    fn random_q(rng: &mut Rng, qz: &Quantizer) -> QTransform {
        let max = qz.position_max();
        QTransform {
            pos: [0, 1, 2].map(|a| rng.below(max[a] as u64 + 1) as u32),
            rot: QRot {
                largest: rng.below(4) as u8,
                comps: [0; 3].map(|_| rng.below(qz.rotation_max() as u64 + 1) as u16),
            },
            scale: if qz.scale_enabled() && rng.chance(0.5) {
                Some([0; 3].map(|_| rng.below(1 << 14) as u16))
            } else {
                None
            },
        }
    }

    fn nudge(rng: &mut Rng, qz: &Quantizer, q: &QTransform, mag: u64) -> QTransform {
        let mut n = *q;
        let max = qz.position_max();
        for a in 0..3 {
            let d = rng.below(2 * mag + 1) as i64 - mag as i64;
            n.pos[a] = (n.pos[a] as i64 + d).clamp(0, max[a] as i64) as u32;
            let d = rng.below(2 * mag + 1) as i64 - mag as i64;
            n.rot.comps[a] = (n.rot.comps[a] as i64 + d).clamp(0, qz.rotation_max() as i64) as u16;
        }
        if rng.chance(0.05) {
            n.rot.largest = rng.below(4) as u8;
        }
        n
    }

    #[test]
    fn delta_and_absolute_bodies_round_trip_for_random_values_and_motion() {
        for scale_enabled in [false, true] {
            let qz = Quantizer::new(&TransformConfig {
                scale_enabled,
                ..Default::default()
            })
            .unwrap();
            let mut rng = Rng::new(21);
            for _ in 0..5000 {
                let a = random_q(&mut rng, &qz);
                let mag = [0, 1, 30, 5000, 1 << 20][rng.below(5) as usize];
                let b = nudge(&mut rng, &qz, &a, mag);
                let c = if rng.chance(0.1) {
                    random_q(&mut rng, &qz)
                } else {
                    nudge(&mut rng, &qz, &b, mag)
                };
                let t0 = Tick(100 + rng.below(10));
                let t1 = Tick(t0.0 + 1 + rng.below(10));
                let t2 = Tick(t1.0 + 1 + rng.below(10));
                let sa = Sample::absolute(t0, a);
                let sb = Sample::from_base(t1, b, &sa);
                let mut w = BitWriter::new();
                write_delta(&mut w, &qz, &c, t2, &sb);
                write_absolute(&mut w, &qz, &c);
                let mut bytes = Vec::new();
                w.copy_to(&mut bytes);
                let mut r = BitReader::new(&bytes);
                let body = read_delta(&mut r, &qz).unwrap();
                assert_eq!(body.apply(&qz, t2, &sb).unwrap(), c);
                assert_eq!(read_absolute(&mut r, &qz).unwrap(), c);
            }
        }
    }

    #[test]
    fn constant_velocity_motion_predicts_to_a_near_zero_residual() {
        let qz = Quantizer::new(&TransformConfig::default()).unwrap();
        let q = QTransform {
            pos: [500_000, 1000, 500_000],
            ..Default::default()
        };
        let a = Sample::absolute(Tick(10), q);
        let mut qb = q;
        qb.pos[0] += 400;
        let b = Sample::from_base(Tick(14), qb, &a);
        let mut qc = qb;
        qc.pos[0] += 400;
        let mut w = BitWriter::new();
        write_delta(&mut w, &qz, &qc, Tick(18), &b);
        // prediction bit + zero position + zero rotation
        assert_eq!(w.len_bits(), 3);
    }
}
