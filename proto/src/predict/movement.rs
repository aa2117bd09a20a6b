//! The movement model both sides run, and the built-in kinematic character.
//!
//! Prediction only works if the client and the server compute the same next state from the same
//! state and input. [`Movement::step`] must therefore be a pure function of its arguments using
//! only IEEE-754 operations that are exactly rounded everywhere (`+ - * /`, `sqrt`, `round`,
//! comparisons): no `sin`/`cos`/`exp`/`powf` from the platform's libm, no fused multiply-add, no
//! iteration over hash maps. [`KinematicCharacter`] follows these rules and uses [`sin_cos_u16`],
//! a polynomial built from `+` and `*` only, for its heading.
//!
//! Every step ends by quantizing the state to the precision the own-state blob carries
//! ([`Movement::quantize`]). The server's state is then exactly what it sends, a client that
//! restores a received state continues from precisely the server's state, and "the prediction
//! matches" is plain equality: any difference is a real one, beyond quantization.

use crate::types::{Quat, Transform, Vec3};

/// A game's movement rules: one deterministic step per tick.
///
/// Implementations must be deterministic bit for bit (see the module documentation) and must
/// return quantized states from [`Movement::step`] so both sides agree exactly.
pub trait Movement {
    /// Everything the step depends on besides the input. Compared with `==` to detect a
    /// misprediction, so it must hold only quantized values.
    type State: Clone + PartialEq + core::fmt::Debug;
    /// One tick's input, as the client samples it and the wire carries it.
    type Input: Clone + PartialEq + core::fmt::Debug + Default;

    /// The state after one tick of `dt` seconds with `input`. Quantized (see [`Movement::quantize`]).
    fn step(&self, state: &Self::State, input: &Self::Input, dt: f32) -> Self::State;

    /// `state` rounded to wire precision. Idempotent.
    fn quantize(&self, state: &Self::State) -> Self::State;

    /// Where the state is, metres: used for error magnitudes and visual smoothing.
    fn position(&self, state: &Self::State) -> Vec3;

    /// The transform a renderer shows for `state`.
    fn transform(&self, state: &Self::State) -> Transform;
}

/// Units per metre of a quantized position: 1 mm steps, finer than anything a player sees and
/// coarse enough that an `i32` spans ±2,000 km.
pub const POSITION_UNITS_PER_M: f32 = 1024.0;
/// Units per metre per second of a quantized velocity: ≈ 4 mm/s steps; an `i16` then spans
/// ±128 m/s, above the fastest fall ([`CharacterConfig::fall_speed_max_mps`]).
pub const VELOCITY_UNITS_PER_MPS: f32 = 256.0;
/// Largest value of a quantized move axis: inputs are `-127..=127`, so 0 is exactly centred.
pub const AXIS_MAX: i8 = 127;

/// Rounds metres to the position grid, saturating at the `i32` range.
pub fn quantize_position_units(m: f32) -> i32 {
    let u = (m * POSITION_UNITS_PER_M).round();
    if u.is_nan() {
        0
    } else {
        u as i32 // `as` saturates
    }
}

/// Rounds metres per second to the velocity grid, saturating at the `i16` range.
pub fn quantize_velocity_units(mps: f32) -> i16 {
    let u = (mps * VELOCITY_UNITS_PER_MPS).round();
    if u.is_nan() {
        0
    } else {
        u as i16
    }
}

/// The sine and cosine of a quantized angle (`yaw / 65536` turns), with `+` and `*` only so the
/// result is identical on every platform. Absolute error below 1e-6.
pub fn sin_cos_u16(yaw: u16) -> (f32, f32) {
    let quadrant = yaw >> 14;
    let rem = (yaw & 0x3FFF) as f32;
    // x in [0, π/2).
    let x = rem * (core::f32::consts::FRAC_PI_2 / 16384.0);
    let x2 = x * x;
    // Taylor series to x^11 / x^12: error < 6e-8 on [0, π/2].
    let s = x
        * (1.0
            + x2 * (-1.0 / 6.0
                + x2 * (1.0 / 120.0
                    + x2 * (-1.0 / 5040.0 + x2 * (1.0 / 362_880.0 + x2 * (-1.0 / 39_916_800.0))))));
    let c = 1.0
        + x2 * (-0.5
            + x2 * (1.0 / 24.0
                + x2 * (-1.0 / 720.0
                    + x2 * (1.0 / 40_320.0 + x2 * (-1.0 / 3_628_800.0 + x2 / 479_001_600.0)))));
    match quadrant {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

/// The rotation of a heading about +Y, as a unit quaternion `[x, y, z, w]`.
pub fn yaw_to_quat(yaw: u16) -> Quat {
    // Half angle: yaw/2 in the same units.
    let (s, c) = sin_cos_u16(yaw / 2);
    // yaw / 2 drops the lowest bit; add its half-step when odd so the result stays centred.
    if yaw & 1 == 1 {
        let (s2, c2) = sin_cos_u16(yaw / 2 + 1);
        let (sy, cy) = ((s + s2) * 0.5, (c + c2) * 0.5);
        let n = (sy * sy + cy * cy).sqrt();
        return Quat::from_xyzw(0.0, sy / n, 0.0, cy / n);
    }
    Quat::from_xyzw(0.0, s, 0.0, c)
}

/// One tick of a player's controls, quantized as the wire carries them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CharacterInput {
    /// Strafe axis, `-127..=127` (right positive), scaled by [`AXIS_MAX`].
    pub move_x: i8,
    /// Forward axis, `-127..=127` (forward positive), scaled by [`AXIS_MAX`].
    pub move_z: i8,
    /// Heading, `yaw / 65536` turns about +Y; forward is +Z at yaw 0.
    pub yaw: u16,
    /// Run instead of walk.
    pub run: bool,
    /// Jump (acts only when grounded).
    pub jump: bool,
}

/// A kinematic character's state, quantized to wire precision after every step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CharacterState {
    /// Feet position, metres, multiples of 1/[`POSITION_UNITS_PER_M`].
    pub position: Vec3,
    /// Velocity, m/s, multiples of 1/[`VELOCITY_UNITS_PER_MPS`].
    pub velocity: Vec3,
    /// Heading, `yaw / 65536` turns about +Y.
    pub yaw: u16,
    /// Standing on the ground (may jump).
    pub grounded: bool,
}

/// Tunables of [`KinematicCharacter`]. Defaults are a typical third-person walker. The server
/// sends them in `Welcome`, so client prediction runs the same model.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CharacterConfig {
    /// Walking speed, m/s (default 4: a brisk human walk-jog in games).
    pub walk_speed_mps: f32,
    /// Running speed, m/s (default 7).
    pub run_speed_mps: f32,
    /// Horizontal acceleration on the ground, m/s² (default 60: full speed in ≈ 0.1 s, responsive
    /// yet not a step change, which interpolates better).
    pub ground_accel_mps2: f32,
    /// Horizontal acceleration in the air, m/s² (default 15: limited air control).
    pub air_accel_mps2: f32,
    /// Upward speed at take-off, m/s (default 6: ≈ 0.9 m jump with the default gravity).
    pub jump_speed_mps: f32,
    /// Gravity, m/s² (default 20: games use about twice real gravity for snappier jumps).
    pub gravity_mps2: f32,
    /// Fastest fall, m/s (default 50: bounds the velocity so it fits the quantized range).
    pub fall_speed_max_mps: f32,
    /// Height of the flat ground, metres (default 0).
    pub ground_y: f32,
    /// Lowest corner of the world box, metres: positions are clamped into it.
    pub bounds_min: Vec3,
    /// Highest corner of the world box, metres.
    pub bounds_max: Vec3,
}

impl Default for CharacterConfig {
    fn default() -> Self {
        CharacterConfig {
            walk_speed_mps: 4.0,
            run_speed_mps: 7.0,
            ground_accel_mps2: 60.0,
            air_accel_mps2: 15.0,
            jump_speed_mps: 6.0,
            gravity_mps2: 20.0,
            fall_speed_max_mps: 50.0,
            ground_y: 0.0,
            // A 2 km square world up to 500 m high: f32 still has sub-millimetre precision there.
            bounds_min: Vec3::new(-1000.0, -100.0, -1000.0),
            bounds_max: Vec3::new(1000.0, 500.0, 1000.0),
        }
    }
}

impl CharacterConfig {
    /// Fastest horizontal speed the model can produce, m/s: what a validator allows.
    pub fn speed_max_mps(&self) -> f32 {
        self.walk_speed_mps.max(self.run_speed_mps)
    }
}

/// The built-in movement model the standalone relay uses: walk/run on flat ground, jump,
/// gravity, world bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KinematicCharacter {
    /// Tunables.
    pub config: CharacterConfig,
}

impl KinematicCharacter {
    /// A character with `config`.
    pub fn new(config: CharacterConfig) -> Self {
        KinematicCharacter { config }
    }

    /// A grounded, resting state at `position` (its height is raised to the ground if below),
    /// quantized.
    pub fn spawn(&self, position: Vec3, yaw: u16) -> CharacterState {
        let mut p = position;
        p[1] = p[1].max(self.config.ground_y);
        let s = CharacterState {
            position: p,
            velocity: Vec3::ZERO,
            yaw,
            grounded: p[1] <= self.config.ground_y,
        };
        self.quantize(&s)
    }
}

fn approach(v: f32, target: f32, max_dv: f32) -> f32 {
    let d = target - v;
    if d > max_dv {
        v + max_dv
    } else if d < -max_dv {
        v - max_dv
    } else {
        target
    }
}

impl Movement for KinematicCharacter {
    type State = CharacterState;
    type Input = CharacterInput;

    fn step(&self, state: &CharacterState, input: &CharacterInput, dt: f32) -> CharacterState {
        let c = &self.config;
        // Inputs come from the peer: clamp the one out-of-range axis value (-128) and bad dt.
        let dt = if dt.is_finite() {
            dt.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let mut mx = input.move_x.max(-AXIS_MAX) as f32 / AXIS_MAX as f32;
        let mut mz = input.move_z.max(-AXIS_MAX) as f32 / AXIS_MAX as f32;
        let len2 = mx * mx + mz * mz;
        if len2 > 1.0 {
            let l = len2.sqrt();
            mx /= l;
            mz /= l;
        }
        let (s, co) = sin_cos_u16(input.yaw);
        // Rotate the local (strafe, forward) vector about +Y by the heading.
        let dx = mx * co + mz * s;
        let dz = mz * co - mx * s;
        let speed = if input.run {
            c.run_speed_mps
        } else {
            c.walk_speed_mps
        };
        let accel = if state.grounded {
            c.ground_accel_mps2
        } else {
            c.air_accel_mps2
        };
        let max_dv = accel * dt;
        let mut v = state.velocity;
        v[0] = approach(v[0], dx * speed, max_dv);
        v[2] = approach(v[2], dz * speed, max_dv);
        let mut grounded = state.grounded;
        if grounded && input.jump {
            v[1] = c.jump_speed_mps;
            grounded = false;
        } else if grounded {
            v[1] = 0.0;
        } else {
            v[1] = (v[1] - c.gravity_mps2 * dt).max(-c.fall_speed_max_mps);
        }
        let mut p = state.position;
        p += v * dt;
        if p[1] <= c.ground_y {
            p[1] = c.ground_y;
            if v[1] <= 0.0 {
                v[1] = 0.0;
                grounded = true;
            }
        }
        for i in 0..3 {
            if p[i] < c.bounds_min[i] {
                p[i] = c.bounds_min[i];
                v[i] = v[i].max(0.0);
            } else if p[i] > c.bounds_max[i] {
                p[i] = c.bounds_max[i];
                v[i] = v[i].min(0.0);
            }
        }
        self.quantize(&CharacterState {
            position: p,
            velocity: v,
            yaw: input.yaw,
            grounded,
        })
    }

    fn quantize(&self, s: &CharacterState) -> CharacterState {
        let qp = |m: f32| quantize_position_units(m) as f32 / POSITION_UNITS_PER_M;
        let qv = |m: f32| quantize_velocity_units(m) as f32 / VELOCITY_UNITS_PER_MPS;
        CharacterState {
            position: s.position.map(qp),
            velocity: s.velocity.map(qv),
            yaw: s.yaw,
            grounded: s.grounded,
        }
    }

    fn position(&self, s: &CharacterState) -> Vec3 {
        s.position
    }

    fn transform(&self, s: &CharacterState) -> Transform {
        Transform {
            position: s.position,
            rotation: yaw_to_quat(s.yaw),
            scale: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sin_cos_u16_matches_libm_closely() {
        for yaw in (0..=u16::MAX).step_by(97) {
            let a = yaw as f64 / 65536.0 * core::f64::consts::TAU;
            let (s, c) = sin_cos_u16(yaw);
            assert!((s as f64 - a.sin()).abs() < 2e-6, "sin {yaw}");
            assert!((c as f64 - a.cos()).abs() < 2e-6, "cos {yaw}");
        }
    }

    #[test]
    fn step_output_is_quantized_and_deterministic() {
        let m = KinematicCharacter::default();
        let mut a = m.spawn(Vec3::new(1.0, 0.0, 2.0), 0);
        let mut b = a;
        let dt = 1.0 / 30.0;
        for i in 0..300u32 {
            let input = CharacterInput {
                move_x: (i % 255) as u8 as i8,
                move_z: 100,
                yaw: (i * 977) as u16,
                run: i % 3 == 0,
                jump: i % 40 == 0,
            };
            a = m.step(&a, &input, dt);
            b = m.step(&b, &input, dt);
            assert_eq!(a, b);
            assert_eq!(m.quantize(&a), a);
        }
    }

    #[test]
    fn walking_reaches_walk_speed_and_jump_lands() {
        let m = KinematicCharacter::default();
        let mut s = m.spawn(Vec3::ZERO, 0);
        let fwd = CharacterInput {
            move_z: AXIS_MAX,
            ..Default::default()
        };
        for _ in 0..30 {
            s = m.step(&s, &fwd, 1.0 / 30.0);
        }
        assert!((s.velocity[2] - 4.0).abs() < 0.01, "{s:?}");
        assert!(s.position[2] > 3.0 && s.position[2] < 4.0, "{s:?}");
        let jump = CharacterInput { jump: true, ..fwd };
        s = m.step(&s, &jump, 1.0 / 30.0);
        assert!(!s.grounded && s.position[1] > 0.0);
        let mut peak: f32 = 0.0;
        for _ in 0..60 {
            s = m.step(&s, &fwd, 1.0 / 30.0);
            peak = peak.max(s.position[1]);
        }
        assert!(s.grounded && s.position[1] == 0.0);
        assert!(peak > 0.7 && peak < 1.1, "peak {peak}");
    }

    #[test]
    fn world_bounds_clamp_position() {
        let m = KinematicCharacter::default();
        let mut s = m.spawn(Vec3::new(999.0, 0.0, 0.0), 0);
        let right = CharacterInput {
            move_x: AXIS_MAX,
            run: true,
            // Yaw 0: +x strafe is world +x.
            ..Default::default()
        };
        for _ in 0..100 {
            s = m.step(&s, &right, 1.0 / 30.0);
        }
        assert_eq!(s.position[0], 1000.0);
    }
}
