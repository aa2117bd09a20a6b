//! [`TransformConfig`]: world bounds, precision, budget, interest and priority weights.
//!
//! Client and server must use the same quantization fields (bounds, precision, rotation bits,
//! scale): they decide the wire format. The budget, interest and priority fields only affect the
//! server's choices.

use crate::types::Vec3;

/// Default lower world corner, metres: ±1024 m horizontally covers a 2 km map, -64 m leaves room
/// for basements and water, and the ranges quantize to 20 / 18 / 20 bits at 1/512 m.
pub const BOUNDS_MIN_DEFAULT_M: Vec3 = Vec3::new(-1024.0, -64.0, -1024.0);
/// Default upper world corner, metres (448 m up: towers and flying, 512 m of vertical range).
pub const BOUNDS_MAX_DEFAULT_M: Vec3 = Vec3::new(1024.0, 448.0, 1024.0);
/// Default position steps per metre: 512, i.e. 1.95 mm, the precision Fiedler uses for 901
/// cubes and finer than the 2 mm the issue asks for.
pub const POSITION_STEPS_PER_M_DEFAULT: u32 = 512;
/// Fewest position steps per metre accepted (10 cm): coarser is visibly jumpy.
pub const POSITION_STEPS_PER_M_MIN: u32 = 10;
/// Most position steps per metre accepted (1/65536 m): beyond that f32 itself runs out.
pub const POSITION_STEPS_PER_M_MAX: u32 = 65_536;
/// Most bits one quantized position axis may take: keeps every axis in a single 32-bit value and
/// every bit-packed field within one reader window.
pub const POSITION_AXIS_BITS_MAX: u32 = 30;
/// Default bits per smallest-three quaternion component: 10 gives ≈ 0.08° steps, under what an
/// eye notices on a 1 m object, for one bit more per component than Fiedler's 9.
pub const ROTATION_BITS_DEFAULT: u32 = 10;
/// Fewest rotation bits accepted (the floor).
pub const ROTATION_BITS_MIN: u32 = 9;
/// Most rotation bits accepted: 15 bits is ≈ 0.003°, past f32 noise in the reconstruction.
pub const ROTATION_BITS_MAX: u32 = 15;
/// Default scale steps per unit (1/256): scale changes are rare and coarse.
pub const SCALE_STEPS_PER_UNIT_DEFAULT: u32 = 256;
/// Largest scale factor representable (per axis): 64× covers every scaled prop we know of, and
/// 64 × 256 steps fit 14 bits.
pub const SCALE_MAX: f32 = 64.0;
/// Default per-client budget for transform datagrams, bits per second (Fiedler's figure).
pub const BUDGET_BITS_PER_S_DEFAULT: u32 = 256_000;
/// Smallest budget accepted, bits per second: below one small datagram per tick nothing useful
/// gets through.
pub const BUDGET_BITS_PER_S_MIN: u32 = 8_000;
/// Default interest radius, metres: well past where a player can recognise another.
pub const INTEREST_RADIUS_DEFAULT_M: f32 = 256.0;
/// Default hysteresis on the interest radius, metres: an entity leaves only beyond radius +
/// hysteresis, so one walking along the edge does not flap in and out.
pub const INTEREST_HYSTERESIS_DEFAULT_M: f32 = 8.0;

/// How much each relevance factor raises an entity's send priority per tick.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PriorityWeights {
    /// Added per tick to a changed entity at distance 0, before the per-entity weight.
    pub base: f32,
    /// Distance, metres, at which the distance factor halves (factor = 1 / (1 + d / this)).
    pub distance_half_m: f32,
    /// Multiplier for an entity whose value changed since the last time it was sent.
    pub moving: f32,
    /// Multiplier for an entity the receiving client owns (it already predicts it locally).
    pub owned_by_viewer: f32,
    /// Priority of a pending "left interest" notice, per tick.
    pub left_notice: f32,
}

impl Default for PriorityWeights {
    fn default() -> Self {
        PriorityWeights {
            base: 1.0,
            distance_half_m: 32.0,
            moving: 4.0,
            owned_by_viewer: 0.25,
            left_notice: 8.0,
        }
    }
}

/// Configuration of the transform codec and the per-client replicator. The server sends it in
/// `Welcome`, so both sides quantize identically.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TransformConfig {
    /// Lowest world corner, metres. Positions are clamped into the bounds.
    pub bounds_min: Vec3,
    /// Highest world corner, metres.
    pub bounds_max: Vec3,
    /// Position quantization steps per metre.
    pub position_steps_per_m: u32,
    /// Bits per smallest-three quaternion component.
    pub rotation_bits: u32,
    /// Whether scale is carried at all. When false, every received scale is `None`.
    pub scale_enabled: bool,
    /// Scale quantization steps per unit (scale range is `0..=SCALE_MAX`).
    pub scale_steps_per_unit: u32,
    /// Server tick rate, Hz: turns the per-second budget into bytes per tick.
    pub tick_hz: u16,
    /// Per-client budget for transform datagrams, bits per second.
    pub budget_bits_per_s: u32,
    /// Area-of-interest radius around the viewer, metres.
    pub interest_radius_m: f32,
    /// Extra distance, metres, beyond the radius before an entity counts as having left.
    pub interest_hysteresis_m: f32,
    /// Priority weights.
    pub weights: PriorityWeights,
}

impl Default for TransformConfig {
    fn default() -> Self {
        TransformConfig {
            bounds_min: BOUNDS_MIN_DEFAULT_M,
            bounds_max: BOUNDS_MAX_DEFAULT_M,
            position_steps_per_m: POSITION_STEPS_PER_M_DEFAULT,
            rotation_bits: ROTATION_BITS_DEFAULT,
            scale_enabled: false,
            scale_steps_per_unit: SCALE_STEPS_PER_UNIT_DEFAULT,
            tick_hz: crate::time::TICK_HZ_DEFAULT,
            budget_bits_per_s: BUDGET_BITS_PER_S_DEFAULT,
            interest_radius_m: INTEREST_RADIUS_DEFAULT_M,
            interest_hysteresis_m: INTEREST_HYSTERESIS_DEFAULT_M,
            weights: PriorityWeights::default(),
        }
    }
}

/// Why a [`TransformConfig`] was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A bound is not finite or min ≥ max on some axis.
    #[error("world bounds are empty or not finite on axis {axis}")]
    Bounds {
        /// The axis (0 = x, 1 = y, 2 = z).
        axis: usize,
    },
    /// Position precision outside the accepted range.
    #[error(
        "position_steps_per_m {0} outside {POSITION_STEPS_PER_M_MIN}..={POSITION_STEPS_PER_M_MAX}"
    )]
    PositionPrecision(u32),
    /// The bounds at this precision need more than [`POSITION_AXIS_BITS_MAX`] bits on an axis.
    #[error("axis {axis} needs {bits} bits at this precision (max {POSITION_AXIS_BITS_MAX})")]
    PositionRange {
        /// The axis.
        axis: usize,
        /// Bits it would need.
        bits: u32,
    },
    /// Rotation bits outside the accepted range.
    #[error("rotation_bits {0} outside {ROTATION_BITS_MIN}..={ROTATION_BITS_MAX}")]
    RotationBits(u32),
    /// Scale precision is zero or so fine that the range needs more than 16 bits.
    #[error("scale_steps_per_unit {0} out of range")]
    ScalePrecision(u32),
    /// Tick rate outside the tick clock's range.
    #[error("tick_hz {0} outside the tick clock's range")]
    TickHz(u16),
    /// Budget below [`BUDGET_BITS_PER_S_MIN`].
    #[error("budget {0} bit/s below the minimum")]
    Budget(u32),
    /// Interest radius or hysteresis negative or not finite, or a weight not finite/negative.
    #[error("interest radius, hysteresis or a priority weight is negative or not finite")]
    Interest,
}

impl TransformConfig {
    /// Checks every range. Returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for axis in 0..3 {
            let (lo, hi) = (self.bounds_min[axis], self.bounds_max[axis]);
            if !lo.is_finite() || !hi.is_finite() || lo >= hi {
                return Err(ConfigError::Bounds { axis });
            }
        }
        if !(POSITION_STEPS_PER_M_MIN..=POSITION_STEPS_PER_M_MAX)
            .contains(&self.position_steps_per_m)
        {
            return Err(ConfigError::PositionPrecision(self.position_steps_per_m));
        }
        for axis in 0..3 {
            let bits = axis_bits(
                self.bounds_min[axis],
                self.bounds_max[axis],
                self.position_steps_per_m,
            );
            if bits > POSITION_AXIS_BITS_MAX {
                return Err(ConfigError::PositionRange { axis, bits });
            }
        }
        if !(ROTATION_BITS_MIN..=ROTATION_BITS_MAX).contains(&self.rotation_bits) {
            return Err(ConfigError::RotationBits(self.rotation_bits));
        }
        if self.scale_steps_per_unit == 0
            || (SCALE_MAX as f64 * self.scale_steps_per_unit as f64) > u16::MAX as f64
        {
            return Err(ConfigError::ScalePrecision(self.scale_steps_per_unit));
        }
        if !(crate::time::TICK_HZ_MIN..=crate::time::TICK_HZ_MAX).contains(&self.tick_hz) {
            return Err(ConfigError::TickHz(self.tick_hz));
        }
        if self.budget_bits_per_s < BUDGET_BITS_PER_S_MIN {
            return Err(ConfigError::Budget(self.budget_bits_per_s));
        }
        let w = &self.weights;
        let ok = |v: f32| v.is_finite() && v >= 0.0;
        let all_ok = ok(self.interest_radius_m)
            && ok(self.interest_hysteresis_m)
            && ok(w.base)
            && w.distance_half_m.is_finite()
            && w.distance_half_m > 0.0
            && ok(w.moving)
            && ok(w.owned_by_viewer)
            && ok(w.left_notice);
        if !all_ok {
            return Err(ConfigError::Interest);
        }
        Ok(())
    }

    /// Bytes each client may receive per tick: the budget divided by the tick rate.
    pub fn budget_bytes_per_tick(&self) -> usize {
        (self.budget_bits_per_s as usize / 8) / self.tick_hz.max(1) as usize
    }
}

/// Steps on one position axis: the quantized value runs over `0..steps` (the upper bound itself
/// clamps to one step below it, so a power-of-two range takes no extra bit).
pub(crate) fn axis_steps(lo: f32, hi: f32, steps_per_m: u32) -> u64 {
    let steps = ((hi as f64 - lo as f64) * steps_per_m as f64).ceil();
    if !steps.is_finite() || steps >= (1u64 << 40) as f64 {
        return u64::MAX;
    }
    (steps as u64).max(2)
}

/// Bits one position axis needs.
pub(crate) fn axis_bits(lo: f32, hi: f32, steps_per_m: u32) -> u32 {
    super::bits::bit_width(axis_steps(lo, hi, steps_per_m) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_quantizes_to_20_18_20_bits() {
        let c = TransformConfig::default();
        c.validate().unwrap();
        let bits: Vec<u32> = (0..3)
            .map(|a| axis_bits(c.bounds_min[a], c.bounds_max[a], c.position_steps_per_m))
            .collect();
        assert_eq!(bits, vec![20, 18, 20]);
        assert_eq!(c.budget_bytes_per_tick(), 1066);
    }

    #[test]
    fn invalid_configs_are_refused() {
        let mut c = TransformConfig {
            rotation_bits: 8,
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::RotationBits(8)));
        c.rotation_bits = 10;
        c.bounds_min[1] = f32::NAN;
        assert!(matches!(c.validate(), Err(ConfigError::Bounds { axis: 1 })));
        let c = TransformConfig {
            position_steps_per_m: 65_536,
            bounds_min: Vec3::splat(-1e5),
            bounds_max: Vec3::splat(1e5),
            ..Default::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::PositionRange { .. })
        ));
        let c = TransformConfig {
            budget_bits_per_s: 10,
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Budget(10)));
    }
}
