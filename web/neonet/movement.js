// The built-in movement model, a port of proto/src/predict/movement.rs, bit-identical to Rust:
// every value Rust holds in an f32 is rounded with Math.fround after each operation (a single
// f64 operation on f32 operands then rounded to f32 equals the f32 operation for + − × ÷ and
// sqrt), rounding is half away from zero, and float → integer casts saturate as Rust's `as`.
//
// Usage:
//   import { KinematicCharacter, CHARACTER_DEFAULTS } from './movement.js';
//   const model = new KinematicCharacter(welcome.character);   // or CHARACTER_DEFAULTS
//   let state = model.spawn([0, 0, 0], 0);
//   state = model.step(state, { move_x: 0, move_z: 127, yaw: 0, run: false, jump: false }, 1 / 30);
//   const { position, rotation } = model.transform(state);
//
// A state is `{ position: [x, y, z], velocity: [x, y, z], yaw, grounded }` (metres, m/s, yaw in
// 1/65536 turns); an input is `{ move_x, move_z, yaw, run, jump }` as the input blob carries it.

const f = Math.fround;

/** Units per metre of a quantized position (1/1024 m steps, as the own-state blob). */
export const POSITION_UNITS_PER_M = 1024;
/** Units per m/s of a quantized velocity (1/256 m/s steps, as the own-state blob). */
export const VELOCITY_UNITS_PER_MPS = 256;
/** Largest move axis value: inputs are −127..=127 (−128 counts as −127). */
export const AXIS_MAX = 127;

/** `CharacterConfig::default()`: a typical third-person walker. */
export const CHARACTER_DEFAULTS = Object.freeze({
  walk_speed_mps: 4,
  run_speed_mps: 7,
  ground_accel_mps2: 60,
  air_accel_mps2: 15,
  jump_speed_mps: 6,
  gravity_mps2: 20,
  fall_speed_max_mps: 50,
  ground_y: 0,
  bounds_min: Object.freeze([-1000, -100, -1000]),
  bounds_max: Object.freeze([1000, 500, 1000]),
});

/** Rust's `f32::round` / `f64::round`: half away from zero (Math.round rounds half up). */
export function roundHalfAway(x) {
  return x < 0 ? -Math.round(-x) : Math.round(x);
}

/** Rust's `as` from float to an integer type: NaN → 0, saturating at the bounds; an integer
 * has no negative zero (`|| 0` turns −0 into 0). */
function saturate(x, lo, hi) {
  if (Number.isNaN(x)) return 0;
  return x < lo ? lo : x > hi ? hi : Math.trunc(x) || 0;
}

/** Rust's `f32::max`: NaN loses to a number. */
function fmax(a, b) {
  if (Number.isNaN(a)) return b;
  if (Number.isNaN(b)) return a;
  return a > b ? a : b;
}

/** Rust's `f32::min`: NaN loses to a number. */
function fmin(a, b) {
  if (Number.isNaN(a)) return b;
  if (Number.isNaN(b)) return a;
  return a < b ? a : b;
}

/**
 * Metres to the position grid (1/1024 m), saturating at the i32 range.
 * @param {number} m
 * @returns {number}
 */
export function quantizePositionUnits(m) {
  return saturate(roundHalfAway(f(f(m) * POSITION_UNITS_PER_M)), -(2 ** 31), 2 ** 31 - 1);
}

/**
 * Metres per second to the velocity grid (1/256 m/s), saturating at the i16 range.
 * @param {number} mps
 * @returns {number}
 */
export function quantizeVelocityUnits(mps) {
  return saturate(roundHalfAway(f(f(mps) * VELOCITY_UNITS_PER_MPS)), -32768, 32767);
}

// The Taylor coefficients, as the f32 constants Rust folds them to.
const HALF_PI_PER_UNIT = f(f(Math.PI / 2) / 16384);
const S3 = f(-1 / 6);
const S5 = f(1 / 120);
const S7 = f(-1 / 5040);
const S9 = f(1 / 362_880);
const S11 = f(-1 / 39_916_800);
const C4 = f(1 / 24);
const C6 = f(-1 / 720);
const C8 = f(1 / 40_320);
const C10 = f(-1 / 3_628_800);

/**
 * Sine and cosine of `yaw / 65536` turns with + and × only (Rust's `sin_cos_u16`).
 * @param {number} yaw u16
 * @returns {[number, number]} [sin, cos]
 */
export function sinCosU16(yaw) {
  const quadrant = yaw >> 14;
  const x = f((yaw & 0x3fff) * HALF_PI_PER_UNIT);
  const x2 = f(x * x);
  const s = f(x * f(1 + f(x2 * f(S3 + f(x2 * f(S5 + f(x2 * f(S7 + f(x2 * f(S9 + f(x2 * S11)))))))))));
  const c = f(1 + f(x2 * f(-0.5 + f(x2 * f(C4 + f(x2 * f(C6 + f(x2 * f(C8 + f(x2 * f(C10 + f(x2 / 479_001_600))))))))))));
  switch (quadrant) {
    case 0: return [s, c];
    case 1: return [c, -s];
    case 2: return [-s, -c];
    default: return [-c, s];
  }
}

/**
 * The rotation of a heading about +Y as a unit quaternion `[x, y, z, w]` (Rust's `yaw_to_quat`).
 * @param {number} yaw u16
 * @returns {number[]}
 */
export function yawToQuat(yaw) {
  const half = yaw >> 1;
  const [s, c] = sinCosU16(half);
  if (yaw & 1) {
    // An odd yaw: the mean of its two neighbouring half angles, renormalized.
    const [s2, c2] = sinCosU16(half + 1);
    const sy = f(f(s + s2) * 0.5);
    const cy = f(f(c + c2) * 0.5);
    const n = f(Math.sqrt(f(f(sy * sy) + f(cy * cy))));
    return [0, f(sy / n), 0, f(cy / n)];
  }
  return [0, s, 0, c];
}

function approach(v, target, maxDv) {
  const d = f(target - v);
  if (d > maxDv) return f(v + maxDv);
  if (d < -maxDv) return f(v - maxDv);
  return target;
}

function checkInt(v, lo, hi, what) {
  if (!Number.isInteger(v) || v < lo || v > hi) throw new RangeError(`${what} ${v} outside ${lo}..=${hi}`);
  return v;
}

/**
 * The built-in character: walk/run on flat ground, jump, gravity, world bounds. Deterministic
 * bit for bit with the server's `KinematicCharacter`, so client prediction matches it exactly.
 */
export class KinematicCharacter {
  /**
   * @param {object} [config] a `CharacterConfig` as decoded from `Welcome.character`
   */
  constructor(config = CHARACTER_DEFAULTS) {
    const c = config;
    /** The tunables, rounded to f32 as the server holds them. */
    this.config = {
      walk_speed_mps: f(c.walk_speed_mps),
      run_speed_mps: f(c.run_speed_mps),
      ground_accel_mps2: f(c.ground_accel_mps2),
      air_accel_mps2: f(c.air_accel_mps2),
      jump_speed_mps: f(c.jump_speed_mps),
      gravity_mps2: f(c.gravity_mps2),
      fall_speed_max_mps: f(c.fall_speed_max_mps),
      ground_y: f(c.ground_y),
      bounds_min: c.bounds_min.map(f),
      bounds_max: c.bounds_max.map(f),
    };
  }

  /**
   * A grounded, resting state at `position` (raised to the ground if below), quantized.
   * @param {number[]} position metres
   * @param {number} yaw u16
   */
  spawn(position, yaw) {
    const p = position.map(f);
    p[1] = fmax(p[1], this.config.ground_y);
    return this.quantize({ position: p, velocity: [0, 0, 0], yaw, grounded: p[1] <= this.config.ground_y });
  }

  /**
   * The state after one tick of `dt` seconds with `input`, quantized.
   * @param {{position: number[], velocity: number[], yaw: number, grounded: boolean}} state
   * @param {{move_x: number, move_z: number, yaw: number, run?: boolean, jump?: boolean}} input
   * @param {number} dt seconds (rounded to f32, as the server's `1.0 / tick_hz` is)
   */
  step(state, input, dt) {
    const c = this.config;
    dt = f(dt);
    dt = Number.isFinite(dt) ? Math.min(Math.max(dt, 0), 1) : 0;
    const moveX = checkInt(input.move_x, -128, 127, 'move_x');
    const moveZ = checkInt(input.move_z, -128, 127, 'move_z');
    const yaw = checkInt(input.yaw, 0, 65535, 'yaw');
    let mx = f(Math.max(moveX, -AXIS_MAX) / AXIS_MAX);
    let mz = f(Math.max(moveZ, -AXIS_MAX) / AXIS_MAX);
    const len2 = f(f(mx * mx) + f(mz * mz));
    if (len2 > 1) {
      const l = f(Math.sqrt(len2));
      mx = f(mx / l);
      mz = f(mz / l);
    }
    const [s, co] = sinCosU16(yaw);
    // The local (strafe, forward) vector rotated about +Y by the heading.
    const dx = f(f(mx * co) + f(mz * s));
    const dz = f(f(mz * co) - f(mx * s));
    const speed = input.run ? c.run_speed_mps : c.walk_speed_mps;
    const accel = state.grounded ? c.ground_accel_mps2 : c.air_accel_mps2;
    const maxDv = f(accel * dt);
    const v = state.velocity.map(f);
    v[0] = approach(v[0], f(dx * speed), maxDv);
    v[2] = approach(v[2], f(dz * speed), maxDv);
    let grounded = state.grounded;
    if (grounded && input.jump) {
      v[1] = c.jump_speed_mps;
      grounded = false;
    } else if (grounded) {
      v[1] = 0;
    } else {
      v[1] = fmax(f(v[1] - f(c.gravity_mps2 * dt)), -c.fall_speed_max_mps);
    }
    const p = state.position.map(f);
    for (let i = 0; i < 3; i++) p[i] = f(p[i] + f(v[i] * dt));
    if (p[1] <= c.ground_y) {
      p[1] = c.ground_y;
      if (v[1] <= 0) {
        v[1] = 0;
        grounded = true;
      }
    }
    for (let i = 0; i < 3; i++) {
      if (p[i] < c.bounds_min[i]) {
        p[i] = c.bounds_min[i];
        v[i] = fmax(v[i], 0);
      } else if (p[i] > c.bounds_max[i]) {
        p[i] = c.bounds_max[i];
        v[i] = fmin(v[i], 0);
      }
    }
    return this.quantize({ position: p, velocity: v, yaw, grounded });
  }

  /**
   * `state` rounded to wire precision (idempotent).
   * @param {{position: number[], velocity: number[], yaw: number, grounded: boolean}} state
   */
  quantize(state) {
    const qp = (m) => f(f(quantizePositionUnits(m)) / POSITION_UNITS_PER_M);
    const qv = (m) => f(f(quantizeVelocityUnits(m)) / VELOCITY_UNITS_PER_MPS);
    return {
      position: state.position.map(qp),
      velocity: state.velocity.map(qv),
      yaw: state.yaw,
      grounded: state.grounded,
    };
  }

  /**
   * Where the state is, metres.
   * @param {{position: number[]}} state
   * @returns {number[]}
   */
  position(state) {
    return state.position;
  }

  /**
   * The transform a renderer shows for `state`.
   * @param {{position: number[], yaw: number}} state
   * @returns {{position: number[], rotation: number[], scale: null}}
   */
  transform(state) {
    return { position: state.position.slice(), rotation: yawToQuat(state.yaw), scale: null };
  }
}
