// The movement model against vectors printed by proto/examples/js_vectors.rs (f32 bit patterns).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  AXIS_MAX, CHARACTER_DEFAULTS, KinematicCharacter, sinCosU16, yawToQuat,
} from '../movement.js';

const vectors = JSON.parse(readFileSync(new URL('./vectors.json', import.meta.url), 'utf8')).movement;
const view = new DataView(new ArrayBuffer(4));
const bits = (x) => (view.setFloat32(0, x, true), view.getUint32(0, true));
const fromBits = (u) => (view.setUint32(0, u, true), view.getFloat32(0, true));
const allBits = (xs) => xs.map(bits);
const config = (c) => Object.fromEntries(Object.entries(c).map(([k, v]) => [k, Array.isArray(v) ? v.map(fromBits) : fromBits(v)]));
const stateBits = (s) => ({ position: allBits(s.position), velocity: allBits(s.velocity), yaw: s.yaw, grounded: s.grounded });
const state = (s) => ({ position: s.position.map(fromBits), velocity: s.velocity.map(fromBits), yaw: s.yaw, grounded: s.grounded });

test('sinCosU16 is bit-identical to Rust', () => {
  for (const [yaw, s, c] of vectors.sin_cos) assert.deepEqual(allBits(sinCosU16(yaw)), [s, c], `yaw ${yaw}`);
});

test('yawToQuat is bit-identical to Rust', () => {
  for (const [yaw, q] of vectors.yaw_to_quat) assert.deepEqual(allBits(yawToQuat(yaw)), q, `yaw ${yaw}`);
});

test('defaults are CharacterConfig::default()', () => {
  assert.deepEqual(config(vectors.runs[0].config), { ...CHARACTER_DEFAULTS, bounds_min: [...CHARACTER_DEFAULTS.bounds_min], bounds_max: [...CHARACTER_DEFAULTS.bounds_max] });
});

test('spawn and every step are bit-identical to Rust', () => {
  for (const [r, run] of vectors.runs.entries()) {
    const model = new KinematicCharacter(config(run.config));
    let s = state(run.start);
    if (r < 2) assert.deepEqual(stateBits(model.spawn(run.spawn.position.map(fromBits), run.spawn.yaw)), run.start);
    const dt = fromBits(run.dt);
    run.inputs.forEach((input, i) => {
      s = model.step(s, input, dt);
      assert.deepEqual(stateBits(s), run.states[i], `run ${r} step ${i}`);
    });
  }
});

test('transform of a spawned state', () => {
  const model = new KinematicCharacter();
  for (const { yaw, transform } of vectors.transforms) {
    const t = model.transform(model.spawn([1.5, 0, -2], yaw));
    assert.deepEqual({ position: allBits(t.position), rotation: allBits(t.rotation), scale: null }, transform);
  }
});

test('walking reaches walk speed and a jump lands (the Rust test)', () => {
  const m = new KinematicCharacter();
  let s = m.spawn([0, 0, 0], 0);
  const fwd = { move_x: 0, move_z: AXIS_MAX, yaw: 0, run: false, jump: false };
  for (let i = 0; i < 30; i++) s = m.step(s, fwd, 1 / 30);
  assert.ok(Math.abs(s.velocity[2] - 4) < 0.01);
  s = m.step(s, { ...fwd, jump: true }, 1 / 30);
  assert.ok(!s.grounded && s.position[1] > 0);
  let peak = 0;
  for (let i = 0; i < 60; i++) {
    s = m.step(s, fwd, 1 / 30);
    peak = Math.max(peak, s.position[1]);
  }
  assert.ok(s.grounded && s.position[1] === 0 && peak > 0.7 && peak < 1.1);
  assert.deepEqual(m.quantize(s), s);
});

test('out-of-range inputs are refused, not wrapped', () => {
  const m = new KinematicCharacter();
  const s = m.spawn([0, 0, 0], 0);
  assert.throws(() => m.step(s, { move_x: 128, move_z: 0, yaw: 0 }, 1 / 30), RangeError);
  assert.throws(() => m.step(s, { move_x: 0, move_z: 0, yaw: 65536 }, 1 / 30), RangeError);
});
