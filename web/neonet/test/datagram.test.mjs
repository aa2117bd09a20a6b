// Transform datagrams against PROTOCOL.md 12.9 (pinned by proto/tests/datagram_doc.rs) and the
// quantization and lossy-stream vectors printed by proto/examples/js_vectors.rs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  Quantizer, TransformReceiver, decodeClientDatagram, decodeInputBlob, decodeOwnState,
  encodeClientDatagram, encodeInputBlob,
} from '../datagram.js';
import { WireError } from '../wire.js';

const vectors = JSON.parse(readFileSync(new URL('./vectors.json', import.meta.url), 'utf8'));
const unhex = (s) => Uint8Array.from(s.replace(/\s+/g, '').match(/../g) ?? [], (h) => parseInt(h, 16));
const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
const view = new DataView(new ArrayBuffer(4));
const bits = (x) => (view.setFloat32(0, x, true), view.getUint32(0, true));
const fromBits = (u) => (view.setUint32(0, u, true), view.getFloat32(0, true));
const tBits = (t) => ({ position: t.position.map(bits), rotation: t.rotation.map(bits), scale: t.scale ? t.scale.map(bits) : null });
const tFromBits = (t) => ({ position: t.position.map(fromBits), rotation: t.rotation.map(fromBits), scale: t.scale ? t.scale.map(fromBits) : null });
const configFromBits = (c) => ({
  ...c,
  bounds_min: c.bounds_min.map(fromBits), bounds_max: c.bounds_max.map(fromBits),
  interest_radius_m: fromBits(c.interest_radius_m), interest_hysteresis_m: fromBits(c.interest_hysteresis_m),
  weights: Object.fromEntries(Object.entries(c.weights).map(([k, v]) => [k, fromBits(v)])),
});
const DEFAULT_CONFIG = {
  bounds_min: [-1024, -64, -1024], bounds_max: [1024, 448, 1024], position_steps_per_m: 512,
  rotation_bits: 10, scale_enabled: false, scale_steps_per_unit: 256, tick_hz: 30,
  budget_bits_per_s: 256_000, interest_radius_m: 256, interest_hysteresis_m: 8,
  weights: { base: 1, distance_half_m: 32, moving: 4, owned_by_viewer: 0.25, left_notice: 8 },
};
const S = Math.fround(Math.SQRT1_2);

test('the worked server datagrams of PROTOCOL.md 12.9', () => {
  const rx = new TransformReceiver(DEFAULT_CONFIG);
  const steps = [
    ['01 0000 64 00 00 02 12400001080130c0010410c002ac1f00208028188000fe0f', 100, [1, 2], '00000100000000000000'],
    ['01 0100 65 00 01 01 5a5300', 101, [1], '01000300000000000000'],
    ['01 0200 66 00 01 01 3a', 102, [1], '02000700000000000000'],
  ];
  for (const [dgram, tick, ids, ack] of steps) {
    const r = rx.handleDatagram(unhex(dgram), 0);
    assert.equal(r.freshness, 'Applied');
    assert.equal(r.tick, tick);
    assert.ok(r.acked);
    assert.deepEqual(r.updates.map((u) => u.id), ids);
    assert.equal(r.ownState, null);
    // Entity 1 moves +5/512 m per tick from (1, 2, 3): multiples of 1/512 come back exactly.
    assert.deepEqual(rx.latest(1).position, [1 + ((tick - 100) * 5) / 512, 2, 3]);
    assert.equal(rx.handleDatagram(unhex(dgram), 0).freshness, 'Duplicate');
    const a = rx.ackState();
    const b = encodeClientDatagram({ seq: 0, ack: a }).subarray(1, 11);
    assert.equal(hex(b), ack);
  }
  assert.deepEqual(rx.latestQuantized(2).q, { pos: [518_912, 32_768, 534_656], largest: 1, comps: [512, 512, 1023], scale: null });
  assert.deepEqual(rx.latest(2).position, [-10.5, 0, 20.25]);
});

test('the worked client datagram of PROTOCOL.md 12.9', () => {
  const qz = new Quantizer(DEFAULT_CONFIG);
  const walk = { move_x: 0, move_z: 127, yaw: 0, run: false, jump: false };
  const run = { ...walk, run: true };
  const inputBlob = encodeInputBlob(103, [walk, run]);
  const owned = [{ id: 2, transform: { position: [-10.5, 1, 20.25], rotation: [0, S, 0, S], scale: null } }];
  const d = encodeClientDatagram({ seq: 5, ack: { latest: 1, received: 0b11n }, inputBlob, owned, quantizer: qz });
  assert.equal(hex(d), hex(unhex('02 0100 0300000000000000 0500 14 01 6700000000000000 02 007f000000 007f000001 01 0500d60f401040140c4000ff07')));
  const back = decodeClientDatagram(d, qz);
  assert.deepEqual(back.ack, { latest: 1, received: 3n });
  assert.equal(back.seq, 5);
  assert.deepEqual(back.owned, [{ id: 2, q: { pos: [518_912, 33_280, 534_656], largest: 1, comps: [512, 512, 1023], scale: null } }]);
  assert.deepEqual(decodeInputBlob(back.inputBlob), { first_tick: 103, inputs: [walk, run] });
});

test('the worked clock echo and clocked client datagram of PROTOCOL.md 12.9', () => {
  const qz = new Quantizer(DEFAULT_CONFIG);
  const walk = { move_x: 0, move_z: 127, yaw: 0, run: false, jump: false };
  const inputBlob = encodeInputBlob(103, [walk, { ...walk, run: true }]);
  const owned = [{ id: 2, transform: { position: [-10.5, 1, 20.25], rotation: [0, S, 0, S], scale: null } }];
  const d = encodeClientDatagram({ seq: 5, ack: { latest: 1, received: 0b11n }, inputBlob, owned, quantizer: qz, clientTimeUs: 2_000_000 });
  assert.equal(hex(d), hex(unhex('03 0100 0300000000000000 0500 80897a 14 01 6700000000000000 02 007f000000 007f000001 01 0500d60f401040140c4000ff07')));
  const back = decodeClientDatagram(d, qz);
  assert.equal(back.clientTimeUs, 2_000_000);
  assert.equal(back.seq, 5);
  assert.equal(decodeClientDatagram(encodeClientDatagram({ seq: 1, ack: { latest: 0, received: 0n } }), qz).clientTimeUs, null);
  // The server's echo of it, alone in tick 103's datagram.
  const rx = new TransformReceiver(DEFAULT_CONFIG);
  const r = rx.handleDatagram(unhex('01 0300 67 02 80897a a09c01 dc0b 00 00'), 0);
  assert.deepEqual(r.echo, { clientTimeUs: 2_000_000, holdUs: 20_000, phaseUs: 1_500 });
  assert.equal(r.records, 0);
  assert.equal(r.tick, 103);
});

test('the worked own-state blob of PROTOCOL.md 12.9', () => {
  const blob = unhex('01 6600000000000000 6500000000000000 01 00060000 00000000 00f8ffff 0000 00ff 8004 0040 01');
  assert.deepEqual(decodeOwnState(blob), {
    server_tick: 102, last_input_tick: 101, teleport_seq: 1,
    state: { position: [1.5, 0, -2], velocity: [0, -1, 4.5], yaw: 16_384, grounded: true },
  });
  const none = blob.slice();
  none.fill(0xff, 9, 17);
  assert.equal(decodeOwnState(none).last_input_tick, null);
  const kind = (b) => { try { decodeOwnState(b); } catch (e) { assert.ok(e instanceof WireError); return e.kind; } return 'ok'; };
  assert.equal(kind(blob.subarray(0, 38)), 'Truncated');
  assert.equal(kind(Uint8Array.from([...blob, 0])), 'TrailingBytes');
  const v2 = blob.slice(); v2[0] = 2;
  assert.equal(kind(v2), 'Malformed');
  const flag = blob.slice(); flag[38] = 3;
  assert.equal(kind(flag), 'Malformed');
});

test('quantization is bit-identical to Rust', () => {
  for (const c of vectors.quant) {
    const qz = new Quantizer(configFromBits(c.config));
    assert.deepEqual(qz.positionBits, c.position_bits);
    assert.deepEqual(qz.positionMax, c.position_max);
    assert.equal(qz.scaleBits, c.scale_bits);
    for (const item of c.items) {
      const q = qz.quantize(tFromBits(item.in));
      assert.deepEqual(q, item.q);
      assert.deepEqual(tBits(qz.dequantize(q)), item.out);
    }
  }
});

test('a lossy, reordered, duplicated stream decodes exactly as the Rust receiver', () => {
  for (const s of vectors.streams) {
    const rx = new TransformReceiver(configFromBits(s.config));
    for (const [i, d] of s.deliveries.entries()) {
      const r = rx.handleDatagram(unhex(d.bytes), 0);
      const where = `delivery ${i}`;
      assert.equal(r.seq, d.seq, where);
      assert.equal(r.tick, d.tick, where);
      assert.equal(r.freshness, d.freshness, where);
      assert.equal(r.acked, d.acked, where);
      assert.equal(r.ownState === null ? null : hex(r.ownState), d.own_blob, where);
      const echo = r.echo && { client_time_us: r.echo.clientTimeUs, hold_us: r.echo.holdUs, phase_us: r.echo.phaseUs };
      assert.deepEqual(echo, d.echo, where);
      assert.deepEqual(r.updates.map((u) => u.id), d.updated.map((u) => u.id), where);
      for (const u of d.updated) assert.deepEqual(rx.latestQuantized(u.id), { tick: u.tick, q: u.q }, where);
      assert.deepEqual(r.left, d.left, where);
      const a = rx.ackState();
      assert.deepEqual([a.latest, a.received], [d.ack.latest, BigInt(d.ack.received)], where);
    }
    const finals = rx.ids().map((id) => rx.latest(id)).filter(Boolean)
      .map(({ id, tick, position, rotation, scale }) => ({ id, tick, t: tBits({ position, rotation, scale }) }));
    assert.deepEqual(finals, s.final);
  }
  assert.ok(vectors.streams.some((s) => s.deliveries.some((d) => d.left.length)), 'left-interest records exercised');
  assert.ok(vectors.streams.some((s) => s.deliveries.some((d) => d.freshness === 'Duplicate')), 'duplicates exercised');
  assert.ok(vectors.streams.some((s) => s.deliveries.some((d) => d.echo !== null)), 'clock echoes exercised');
});

test('deltas against a missing baseline are not acknowledged; forgotten entities stay gone', () => {
  const rx = new TransformReceiver(DEFAULT_CONFIG);
  // Tick 101's delta without tick 100's absolute: nothing stored, nothing acked.
  const r = rx.handleDatagram(unhex('01 0100 65 00 01 01 5a5300'), 0);
  assert.equal(r.freshness, 'Applied');
  assert.equal(r.acked, false);
  assert.equal(r.undecodable, 1);
  assert.equal(rx.ackState().received, 0n);
  rx.handleDatagram(unhex('01 0000 64 00 00 02 12400001080130c0010410c002ac1f00208028188000fe0f'), 0);
  rx.forget(1);
  assert.equal(rx.latest(1), null);
  // A late copy of tick 100 arriving under another seq cannot resurrect entity 1.
  const late = unhex('01 0500 64 00 00 02 12400001080130c0010410c002ac1f00208028188000fe0f');
  const again = rx.handleDatagram(late, 0);
  assert.deepEqual(again.updates.map((u) => u.id), []);
  assert.equal(rx.latest(1), null);
});

test('malformed server datagrams throw WireError and change nothing', () => {
  const good = unhex('01 0000 64 00 00 02 12400001080130c0010410c002ac1f00208028188000fe0f');
  const kind = (b) => {
    const rx = new TransformReceiver(DEFAULT_CONFIG);
    try {
      rx.handleDatagram(b, 0);
    } catch (e) {
      assert.ok(e instanceof WireError, String(e));
      assert.equal(rx.ackState().received, 0n);
      return e.kind;
    }
    return 'ok';
  };
  assert.equal(kind(good), 'ok');
  assert.equal(kind(new Uint8Array(0)), 'Empty');
  assert.equal(kind(unhex('02 0000')), 'UnknownKind');
  assert.equal(kind(new Uint8Array(1501).fill(1)), 'Oversize');
  for (let n = 1; n < good.length; n++) assert.equal(kind(good.subarray(0, n)), 'Truncated', `prefix ${n}`);
  assert.equal(kind(Uint8Array.from([...good, 0])), 'Malformed'); // trailing byte
  assert.equal(kind(unhex('01 0000 64 04 00 00')), 'Malformed'); // unknown flag
  assert.equal(kind(unhex('01 0000 64 02 00 00 00 00 00')), 'ok'); // a clock echo, no records
  assert.equal(kind(unhex('01 0000 64 02 00 00 00 00')), 'Truncated'); // an echo lacking a field
  assert.equal(kind(unhex('01 0000 64 01 41')), 'BlobTooLarge');
  assert.equal(kind(unhex('01 0000 64 00 808001 00')), 'Malformed'); // common age above 16 383
  assert.equal(kind(unhex('01 0000 64 00 00 8108')), 'TooManyRecords');
  assert.equal(kind(unhex('01 0000 01 00 00 01 07')), 'Malformed'); // delta with common age 0
  assert.equal(kind(unhex('01 0000 64 00 00 01 0000000000 00')), 'Malformed'); // 41+ zero prefix
});

test('an absolute value above its axis maximum is OutOfBounds', () => {
  // y = 2^18 − 1 fits the 18-bit field but not a world 400 m high (pos_max 237 567).
  const wide = new Quantizer(DEFAULT_CONFIG);
  const narrow = new Quantizer({ ...DEFAULT_CONFIG, bounds_max: [1024, 400, 1024] });
  assert.equal(narrow.positionMax[1], 237_567);
  const owned = [{ id: 7, transform: { position: [0, 448, 0], rotation: [0, 0, 0, 1], scale: null } }];
  const d = encodeClientDatagram({ seq: 1, ack: { latest: 0, received: 0n }, owned, quantizer: wide });
  assert.equal(decodeClientDatagram(d, wide).owned[0].q.pos[1], 262_143);
  assert.throws(() => decodeClientDatagram(d, narrow), (e) => e instanceof WireError && e.kind === 'OutOfBounds');
});

test('input blobs keep the last 32 inputs and refuse out-of-range values', () => {
  const inputs = Array.from({ length: 40 }, (_, i) => ({ move_x: -128, move_z: i, yaw: 65535, run: false, jump: true }));
  const blob = encodeInputBlob(1000, inputs);
  assert.equal(blob.length, 10 + 32 * 5);
  const back = decodeInputBlob(blob);
  assert.equal(back.first_tick, 1008);
  assert.deepEqual(back.inputs, inputs.slice(8));
  assert.equal(encodeInputBlob(5, []).length, 0);
  assert.throws(() => encodeInputBlob(0, [{ move_x: 200, move_z: 0, yaw: 0 }]), RangeError);
  assert.equal(hex(encodeInputBlob(2n ** 64n - 1n, [{ move_x: 0, move_z: 0, yaw: 0 }]).subarray(1, 9)), 'ffffffffffffffff');
});
