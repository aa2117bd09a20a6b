//! Quantization: positions to integers within the world bounds, rotations to smallest-three
//! quaternions, optional scale. Server and client call the same [`Quantizer`] functions, so both
//! hold the same [`QTransform`] bit for bit; only [`QTransform`]s cross the wire.
//!
//! The arithmetic is done in `f64` with explicit rounding and no fused operations, so it gives
//! the same result on every platform Rust supports.

use super::config::{axis_bits, axis_steps, ConfigError, TransformConfig, SCALE_MAX};
use crate::types::{Quat, Transform, Vec3};

/// A smallest-three quaternion: the index of the largest-magnitude component (made positive,
/// since `q` and `-q` are the same rotation, and left out) and the other three, each quantized
/// from `[-1/√2, 1/√2]` to `0..2^rotation_bits`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QRot {
    /// Index (0 = x … 3 = w) of the component left out.
    pub largest: u8,
    /// The other three components in index order, quantized.
    pub comps: [u16; 3],
}

/// A quantized transform: what the wire carries and what both sides compare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QTransform {
    /// Position steps from the world's lower corner, per axis.
    pub pos: [u32; 3],
    /// Rotation.
    pub rot: QRot,
    /// Scale steps per axis, `None` for no scale (or scale disabled in the config).
    pub scale: Option<[u16; 3]>,
}

/// The quantization functions of one [`TransformConfig`], with its derived bit widths.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantizer {
    min: [f64; 3],
    steps_per_m: f64,
    /// `1 / steps_per_m` when that is exact (a power-of-two step count, as the default 512):
    /// dequantizing then multiplies instead of dividing, with the same result bit for bit.
    step_m_exact: Option<f64>,
    pos_max: [u32; 3],
    pos_bits: [u32; 3],
    rot_bits: u32,
    rot_max: u32,
    scale_enabled: bool,
    scale_steps: f64,
    scale_max_q: u16,
    scale_bits: u32,
}

const SQRT1_2: f64 = std::f64::consts::FRAC_1_SQRT_2;

impl Quantizer {
    /// Validates `config` and derives the bit widths.
    pub fn new(config: &TransformConfig) -> Result<Quantizer, ConfigError> {
        config.validate()?;
        let mut pos_max = [0; 3];
        let mut pos_bits = [0; 3];
        for a in 0..3 {
            let (lo, hi) = (config.bounds_min[a], config.bounds_max[a]);
            pos_max[a] = (axis_steps(lo, hi, config.position_steps_per_m) - 1) as u32;
            pos_bits[a] = axis_bits(lo, hi, config.position_steps_per_m);
        }
        let scale_max_q = (SCALE_MAX as f64 * config.scale_steps_per_unit as f64) as u16;
        Ok(Quantizer {
            min: config.bounds_min.to_array().map(|v| v as f64),
            steps_per_m: config.position_steps_per_m as f64,
            step_m_exact: config
                .position_steps_per_m
                .is_power_of_two()
                .then(|| 1.0 / config.position_steps_per_m as f64),
            pos_max,
            pos_bits,
            rot_bits: config.rotation_bits,
            rot_max: (1u32 << config.rotation_bits) - 1,
            scale_enabled: config.scale_enabled,
            scale_steps: config.scale_steps_per_unit as f64,
            scale_max_q,
            scale_bits: super::bits::bit_width(scale_max_q as u64),
        })
    }

    /// Bits per position axis.
    pub fn position_bits(&self) -> [u32; 3] {
        self.pos_bits
    }

    /// Largest quantized value per position axis.
    pub fn position_max(&self) -> [u32; 3] {
        self.pos_max
    }

    /// Bits per smallest-three component.
    pub fn rotation_bits(&self) -> u32 {
        self.rot_bits
    }

    /// Largest quantized smallest-three component.
    pub fn rotation_max(&self) -> u32 {
        self.rot_max
    }

    /// Whether scale is carried.
    pub fn scale_enabled(&self) -> bool {
        self.scale_enabled
    }

    /// Bits per scale axis.
    pub fn scale_bits(&self) -> u32 {
        self.scale_bits
    }

    /// Bits of an absolute transform on the wire (without the scale presence bit).
    pub fn absolute_bits(&self) -> u32 {
        self.pos_bits.iter().sum::<u32>() + 2 + 3 * self.rot_bits
    }

    /// Quantizes a transform. Never fails: positions clamp into the bounds, non-finite values
    /// become the lower bound, a degenerate quaternion becomes the identity.
    pub fn quantize(&self, t: &Transform) -> QTransform {
        QTransform {
            pos: self.quantize_position(t.position),
            rot: self.quantize_rotation(t.rotation),
            scale: if self.scale_enabled {
                t.scale.map(|s| self.quantize_scale(s))
            } else {
                None
            },
        }
    }

    /// The transform a quantized value stands for.
    pub fn dequantize(&self, q: &QTransform) -> Transform {
        Transform {
            position: self.dequantize_position(q.pos),
            rotation: self.dequantize_rotation(q.rot),
            scale: q.scale.map(|s| self.dequantize_scale(s)),
        }
    }

    /// Quantizes a position, clamping it into the world bounds.
    pub fn quantize_position(&self, p: Vec3) -> [u32; 3] {
        let mut out = [0; 3];
        for a in 0..3 {
            let v = ((p[a] as f64 - self.min[a]) * self.steps_per_m).round();
            // `as` saturates and maps NaN to 0.
            out[a] = v.clamp(0.0, self.pos_max[a] as f64) as u32;
        }
        out
    }

    /// The position a quantized one stands for.
    pub fn dequantize_position(&self, q: [u32; 3]) -> Vec3 {
        let mut out = Vec3::ZERO;
        match self.step_m_exact {
            // Scaling by a power of two is exact, so this is the division below, bit for bit.
            Some(step) => {
                for a in 0..3 {
                    out[a] = (self.min[a] + q[a] as f64 * step) as f32;
                }
            }
            None => {
                for a in 0..3 {
                    out[a] = (self.min[a] + q[a] as f64 / self.steps_per_m) as f32;
                }
            }
        }
        out
    }

    /// Quantizes a rotation as smallest three. Normalizes first; a zero or non-finite
    /// quaternion becomes the identity.
    pub fn quantize_rotation(&self, q: Quat) -> QRot {
        let mut v = q.to_array().map(|c| c as f64);
        let n2: f64 = v.iter().map(|c| c * c).sum();
        if !n2.is_finite() || n2 < 1e-12 {
            v = [0.0, 0.0, 0.0, 1.0];
        } else {
            let n = n2.sqrt();
            for c in &mut v {
                *c /= n;
            }
        }
        let mut largest = 0;
        for i in 1..4 {
            if v[i].abs() > v[largest].abs() {
                largest = i;
            }
        }
        let sign = if v[largest] < 0.0 { -1.0 } else { 1.0 };
        let scale = self.rot_max as f64 / (2.0 * SQRT1_2);
        let mut comps = [0u16; 3];
        let mut j = 0;
        for (i, c) in v.iter().enumerate() {
            if i == largest {
                continue;
            }
            let x = ((c * sign + SQRT1_2) * scale).round();
            comps[j] = x.clamp(0.0, self.rot_max as f64) as u16;
            j += 1;
        }
        QRot {
            largest: largest as u8,
            comps,
        }
    }

    /// The unit quaternion a quantized rotation stands for.
    pub fn dequantize_rotation(&self, r: QRot) -> Quat {
        let step = 2.0 * SQRT1_2 / self.rot_max as f64;
        let small = r
            .comps
            .map(|c| c.min(self.rot_max as u16) as f64 * step - SQRT1_2);
        let sum: f64 = small.iter().map(|c| c * c).sum();
        let big = (1.0 - sum).max(0.0).sqrt();
        let largest = (r.largest as usize).min(3);
        let mut v = [0.0f64; 4];
        let mut j = 0;
        for (i, slot) in v.iter_mut().enumerate() {
            if i == largest {
                *slot = big;
            } else {
                *slot = small[j];
                j += 1;
            }
        }
        let n = v.iter().map(|c| c * c).sum::<f64>().sqrt();
        Quat::from_array(v.map(|c| (c / n) as f32))
    }

    /// Quantizes a scale, clamping each axis into `0..=SCALE_MAX`.
    pub fn quantize_scale(&self, s: Vec3) -> [u16; 3] {
        s.to_array().map(|v| {
            (v as f64 * self.scale_steps)
                .round()
                .clamp(0.0, self.scale_max_q as f64) as u16
        })
    }

    /// The scale a quantized one stands for.
    pub fn dequantize_scale(&self, s: [u16; 3]) -> Vec3 {
        Vec3::from_array(s.map(|v| (v as f64 / self.scale_steps) as f32))
    }

    /// Whether every field of `q` is inside this quantizer's ranges (for values from a peer).
    pub fn is_valid(&self, q: &QTransform) -> bool {
        (0..3).all(|a| q.pos[a] <= self.pos_max[a])
            && q.rot.largest < 4
            && q.rot.comps.iter().all(|&c| c as u32 <= self.rot_max)
            && match q.scale {
                None => true,
                Some(s) => self.scale_enabled && s.iter().all(|&v| v <= self.scale_max_q),
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn quantizer() -> Quantizer {
        Quantizer::new(&TransformConfig::default()).unwrap()
    }

    #[test]
    fn dequantized_positions_equal_the_division_for_every_step_count() {
        let mut rng = Rng::new(9);
        for steps in [10, 100, 256, 512, 1000, 1024, 4096, 65_536] {
            let config = TransformConfig {
                position_steps_per_m: steps,
                ..TransformConfig::default()
            };
            let qz = Quantizer::new(&config).unwrap();
            assert_eq!(qz.step_m_exact.is_some(), steps.is_power_of_two());
            let max = qz.position_max();
            for i in 0..20_000u32 {
                let q = [0, 1, 2].map(|a| match i {
                    0 => 0,
                    1 => max[a],
                    _ => rng.below(max[a] as u64 + 1) as u32,
                });
                let want = [0, 1, 2]
                    .map(|a| (config.bounds_min[a] as f64 + q[a] as f64 / steps as f64) as f32);
                let got = qz.dequantize_position(q).to_array();
                assert_eq!(
                    got.map(f32::to_bits),
                    want.map(f32::to_bits),
                    "{steps} {q:?}"
                );
            }
        }
    }

    fn angle_between(a: Quat, b: Quat) -> f64 {
        let dot = a.as_dquat().dot(b.as_dquat());
        2.0 * dot.abs().min(1.0).acos()
    }

    fn random_quat(rng: &mut Rng) -> Quat {
        Quat::from_array([0; 4].map(|_| rng.range_f64(-1.0, 1.0) as f32))
    }

    #[test]
    fn position_round_trip_error_is_within_half_a_step_and_requantizes_identically() {
        let q = quantizer();
        let c = TransformConfig::default();
        let mut rng = Rng::new(11);
        for _ in 0..20_000 {
            let p = Vec3::from_array([0, 1, 2].map(|a| {
                rng.range_f64(c.bounds_min[a] as f64, c.bounds_max[a] as f64 - 0.01) as f32
            }));
            let qp = q.quantize_position(p);
            let back = q.dequantize_position(qp);
            for a in 0..3 {
                assert!(
                    (back[a] - p[a]).abs() <= 0.5 / 512.0 + 1e-4,
                    "{p:?} -> {back:?}"
                );
            }
            assert_eq!(q.quantize_position(back), qp);
        }
    }

    #[test]
    fn positions_outside_bounds_or_not_finite_clamp_instead_of_failing() {
        let q = quantizer();
        let max = q.position_max();
        assert_eq!(q.quantize_position(Vec3::splat(-1e9)), [0, 0, 0]);
        assert_eq!(q.quantize_position(Vec3::splat(1e9)), max);
        assert_eq!(q.quantize_position(Vec3::INFINITY), max);
        assert_eq!(q.quantize_position(Vec3::NAN), [0, 0, 0]);
        assert_eq!(q.quantize_position(Vec3::new(1024.0, 448.0, 1024.0)), max);
        assert_eq!(
            q.quantize_position(Vec3::new(-1024.0, -64.0, -1024.0)),
            [0, 0, 0]
        );
        for a in 0..3 {
            assert!(max[a] < 1 << q.position_bits()[a]);
        }
    }

    #[test]
    fn rotation_round_trip_is_within_a_fraction_of_a_degree_and_sign_independent() {
        let q = quantizer();
        let mut rng = Rng::new(12);
        for _ in 0..20_000 {
            let r = random_quat(&mut rng);
            let qr = q.quantize_rotation(r);
            let neg = q.quantize_rotation(-r);
            assert_eq!(qr, neg, "q and -q must quantize the same");
            let scaled = q.quantize_rotation(r * 3.5);
            assert_eq!(qr, scaled, "normalization");
            let back = q.dequantize_rotation(qr);
            let n = back.length_squared();
            assert!((n - 1.0).abs() < 1e-5);
            let unit = r.as_dquat().normalize().as_quat();
            assert!(angle_between(unit, back).to_degrees() < 0.25, "{r:?}");
            let again = q.dequantize_rotation(q.quantize_rotation(back));
            assert!(angle_between(again, back).to_degrees() < 0.25);
        }
    }

    #[test]
    fn degenerate_and_axis_aligned_rotations_quantize_to_valid_values() {
        let q = quantizer();
        for r in [
            [0.0, 0.0, 0.0, 0.0],
            [f32::NAN, 0.0, 0.0, 1.0],
            [f32::INFINITY, 0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, -1.0],
            [0.5, 0.5, 0.5, 0.5],
            [-0.5, 0.5, -0.5, 0.5],
            [SQRT1_2 as f32, SQRT1_2 as f32, 0.0, 0.0],
        ] {
            let qr = q.quantize_rotation(Quat::from_array(r));
            let t = QTransform {
                rot: qr,
                ..Default::default()
            };
            assert!(q.is_valid(&t), "{r:?}");
            let back = q.dequantize_rotation(qr);
            assert!(back.is_finite());
        }
        let id = q.dequantize_rotation(q.quantize_rotation(Quat::from_array([0.0; 4])));
        assert!(angle_between(id, Quat::IDENTITY) < 1e-2);
    }

    #[test]
    fn scale_is_dropped_when_disabled_and_round_trips_when_enabled() {
        let t = Transform {
            scale: Some(Vec3::new(2.0, 0.5, 100.0)),
            ..Default::default()
        };
        assert_eq!(quantizer().quantize(&t).scale, None);
        let c = TransformConfig {
            scale_enabled: true,
            ..Default::default()
        };
        let q = Quantizer::new(&c).unwrap();
        let qt = q.quantize(&t);
        assert_eq!(q.dequantize(&qt).scale, Some(Vec3::new(2.0, 0.5, 64.0)));
        assert!(q.is_valid(&qt));
    }
}
