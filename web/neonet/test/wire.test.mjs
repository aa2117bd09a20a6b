// The message layer against the bytes pinned by proto/tests/golden.rs and PROTOCOL.md 14.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CHANNEL, CLIENT_MSG_VARIANTS, FRAME_BYTES_MAX, FrameDecoder, PROTOCOL_VERSION,
  SERVER_MSG_VARIANTS, SMALL_FRAME_BYTES_MAX, SNAPSHOT_BYTES_MAX, SNAPSHOT_PIECES_MAX,
  SNAPSHOT_PIECE_BYTES_MAX, SnapshotReassembly, WireError, channelOfClientMsg,
  channelOfServerMsg, decodeClientMsg, decodeServerMsg, encodeClientMsg, encodeFrame,
  encodeServerMsg, serverFrameBytesMax,
} from '../wire.js';

const unhex = (s) => Uint8Array.from(s.replace(/\s+/g, '').match(/../g) ?? [], (h) => parseInt(h, 16));
const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
const bytes = (...b) => Uint8Array.from(b);
const utf8 = (s) => new TextEncoder().encode(s);

// The representative values of golden.rs.
const transform = () => ({ position: [1.5, -2.0, 0.25], rotation: [0, 0, 0, 1], scale: [2, 2, 2] });
const defaultTransform = () => ({ position: [0, 0, 0], rotation: [0, 0, 0, 1], scale: null });
const blueprint = () => ({
  id: 'tree', version: 3, name: 'Tree', author: 'ana', model: 'asset://tree.glb', script: null,
  image: '', desc: 'a tree', props: bytes(0xde, 0xad),
  flags: { preload: true, public: false, locked: true, frozen: false, unique: false, scene: false, disabled: true },
});
const blueprintPatch = () => ({
  name: 'Oak', author: undefined, model: null, script: 's.js', image: undefined, desc: undefined,
  props: bytes(1), flags: undefined,
});
const appEntity = () => ({
  id: 300, kind: 'App', owner: null, user: null, blueprint: 'tree', transform: transform(),
  props: [['state', bytes(7)]],
});
const playerEntity = () => ({
  id: 1, kind: 'Player', owner: 2, user: 5, blueprint: null, transform: defaultTransform(),
  props: [['name', utf8('bo')], ['rank', bytes(0)]],
});
const chatMessage = () => ({
  id: 42, from_user: 5, from_name: 'bo', from_entity: 1, body: 'hi', created_at_ms: 1_700_000_000_000,
});
const systemChatMessage = () => ({
  id: 1, from_user: null, from_name: '', from_entity: null, body: 'welcome', created_at_ms: 0,
});
const settings = () => ({
  title: 'w', desc: '', image: null, avatar: 'a.vrm', custom_avatars: true, default_rank: 'Builder',
  player_limit: 100, ao: true, movement: 'Client',
});
const spawn = () => ({ position: [0, 1, 0], rotation: [0, 0, 0, 1] });
const snapshot = () => ({
  player: 1, user: 5, rank: 'Visitor', server_tick: 1000, server_time_us: 33_333_333,
  settings: settings(), spawn: spawn(), chat: [systemChatMessage()], blueprints: [blueprint()],
  entities: [playerEntity(), appEntity()], auth_token: 'user:5',
});
const f32 = (v) => Math.fround(v);
const transformConfig = () => ({
  bounds_min: [-1024, -64, -1024], bounds_max: [1024, 448, 1024], position_steps_per_m: 512,
  rotation_bits: 10, scale_enabled: false, scale_steps_per_unit: 256, tick_hz: 30,
  budget_bits_per_s: 256_000, interest_radius_m: 256, interest_hysteresis_m: 8,
  weights: { base: 1, distance_half_m: 32, moving: 4, owned_by_viewer: 0.25, left_notice: 8 },
});
const characterConfig = () => ({
  walk_speed_mps: 4, run_speed_mps: 7, ground_accel_mps2: 60, air_accel_mps2: 15,
  jump_speed_mps: 6, gravity_mps2: 20, fall_speed_max_mps: 50, ground_y: 0,
  bounds_min: [-1000, -100, -1000], bounds_max: [1000, 500, 1000],
});

// [message, pinned frame] in tag order, exactly golden.rs's client_cases() and server_cases().
const CLIENT_CASES = [
  [{ type: 'Hello', protocol_version: 1, name: 'ana', token: 'user:7' }, '0e000000 000103616e610106757365723a37'],
  [{ type: 'Ping', client_time_us: 1_000_000 }, '04000000 01c0843d'],
  [{ type: 'Command', req: 1, args: ['spawn', 'set'] }, '0d000000 02010205737061776e03736574'],
  [{ type: 'Chat', req: 2, body: 'hi' }, '05000000 0302026869'],
  [{ type: 'BlueprintAdd', req: 3, blueprint: blueprint() }, '37000000 0403047472656503045472656503616e61011061737365743a2f2f747265652e676c620001000661207472656502dead01000100000001'],
  [{ type: 'BlueprintModify', req: 4, id: 'tree', version: 4, patch: blueprintPatch() }, '1d000000 050404747265650401034f616b000100010104732e6a73000001010100'],
  [{ type: 'EntityAdd', req: 5, blueprint: 'tree', transform: transform(), props: [['state', bytes(7)]] }, '39000000 060504747265650000c03f000000c00000803e0000000000000000000000000000803f01000000400000004000000040010573746174650107'],
  [{ type: 'EntityModify', req: 6, id: 300, patch: { set: [['health', bytes(100)]], unset: ['emote'], transform: null } }, '16000000 0706ac0201066865616c746801640105656d6f746500'],
  [{ type: 'EntityRemove', req: 7, id: 300 }, '04000000 0807ac02'],
  [{ type: 'EntityEvent', entity: 300, blueprint_version: 3, name: 'hit', data: bytes(1, 2), to: 1 }, '0d000000 09ac0203036869740201020101'],
  [{ type: 'PlayerTeleport', target: 1, position: [10, 0, -5.5], rotation_y: f32(Math.PI) }, '12000000 0a0100002041000000000000b0c0db0f4940'],
  [{ type: 'PlayerPush', target: 1, force: [0, 9, 0] }, '0e000000 0b01000000000000104100000000'],
  [{ type: 'SettingsModify', req: 8, setting: { type: 'Title', value: 'My world' } }, '0c000000 0c0800084d7920776f726c64'],
  [{ type: 'SpawnModify', req: 9, set: true }, '03000000 0d0901'],
  [{ type: 'ModifyRank', req: 10, user: 5, rank: 'Admin' }, '04000000 0e0a0502'],
  [{ type: 'Kick', req: 11, target: 1 }, '03000000 0f0b01'],
  [{ type: 'Mute', req: 12, target: 1, muted: true }, '04000000 100c0101'],
  [{ type: 'Goodbye' }, '01000000 11'],
  [{ type: 'Spectate', protocol_version: 1, name: 'eve', token: null, camera: [0, 10, -5] }, '13000000 1201036576650000000000000020410000a0c0'],
  [{ type: 'SpectatorCamera', position: [1.5, 2, -3] }, '0d000000 130000c03f00000040000040c0'],
  [{ type: 'BlueprintRemove', req: 13, id: 'tree' }, '07000000 140d0474726565'],
  [{ type: 'Resume', protocol_version: 1, name: 'ana', token: 'user:7', session: 2, resume_token: '2.ab' }, '14000000 150103616e610106757365723a370204322e6162'],
];

const SERVER_CASES = [
  [{ type: 'Welcome', protocol_version: 1, session: 2, tick_hz: 30, transform: transformConfig(), character: characterConfig() }, '7a000000 0001021e000080c4000080c2000080c4000080440000e0430000804480040a0080021e80d00f00008043000000410000803f00000042000080400000803e00000041000080400000e04000007042000070410000c0400000a041000048420000000000007ac40000c8c200007ac400007a440000fa4300007a44'],
  [{ type: 'Snapshot', snapshot: snapshot() }, 'f3000000 01010500e807d5c0f20f017700000105612e76726d0101640101000000000000803f000000000000000000000000000000000000803f01010000000777656c636f6d650001047472656503045472656503616e61011061737365743a2f2f747265652e676c620001000661207472656502dead0100010000000102010001020105000000000000000000000000000000000000000000000000000000803f0002046e616d6502626f0472616e6b0100ac020100000104747265650000c03f000000c00000803e0000000000000000000000000000803f0100000040000000400000004001057374617465010706757365723a35'],
  [{ type: 'Pong', client_time_us: 1_000_000, server_time_us: 5_000_123, server_tick: 150 }, '0a000000 02c0843dbb97b1029601'],
  [{ type: 'Ack', req: 300 }, '03000000 03ac02'],
  [{ type: 'Refused', req: 4, reason: 'Conflict' }, '03000000 040404'],
  [{ type: 'ChatAdded', message: chatMessage() }, '12000000 052a010502626f010102686980d095ffbc31'],
  [{ type: 'ChatCleared' }, '01000000 06'],
  [{ type: 'BlueprintAdded', blueprint: blueprint() }, '36000000 07047472656503045472656503616e61011061737365743a2f2f747265652e676c620001000661207472656502dead01000100000001'],
  [{ type: 'BlueprintModified', id: 'tree', version: 4, patch: blueprintPatch() }, '1c000000 0804747265650401034f616b000100010104732e6a73000001010100'],
  [{ type: 'EntityAdded', entity: playerEntity() }, '35000000 09010001020105000000000000000000000000000000000000000000000000000000803f0002046e616d6502626f0472616e6b0100'],
  [{ type: 'EntityModified', id: 300, patch: { set: [], unset: [], transform: defaultTransform() } }, '23000000 0aac020000010000000000000000000000000000000000000000000000000000803f00'],
  [{ type: 'EntityEvent', entity: 300, blueprint_version: 3, name: 'hit', data: bytes(1, 2), from: 1 }, '0d000000 0bac0203036869740201020101'],
  [{ type: 'EntityRemoved', id: 300 }, '03000000 0cac02'],
  [{ type: 'PlayerTeleport', position: [10, 0, -5.5], rotation_y: f32(Math.PI) }, '11000000 0d00002041000000000000b0c0db0f4940'],
  [{ type: 'PlayerPush', force: [0, 9, 0] }, '0d000000 0e000000000000104100000000'],
  [{ type: 'SettingsModified', setting: { type: 'PlayerLimit', value: 128 } }, '04000000 0f068001'],
  [{ type: 'SpawnModified', spawn: spawn() }, '1d000000 10000000000000803f000000000000000000000000000000000000803f'],
  [{ type: 'RankModified', user: 5, rank: 'Builder' }, '03000000 110501'],
  [{ type: 'Muted', player: 1, muted: false }, '03000000 120100'],
  [{ type: 'Close', reason: 'VersionMismatch', detail: 'v2' }, '05000000 1304027632'],
  [{ type: 'BlueprintRemoved', id: 'tree' }, '06000000 140474726565'],
  [{ type: 'CommandReply', req: 7, text: 'hi' }, '05000000 1507026869'],
  [{ type: 'AuthToken', token: 't' }, '03000000 160174'],
  [{ type: 'ResumeToken', token: '2.ab' }, '06000000 1704322e6162'],
  [{ type: 'SnapshotPiece', index: 1, count: 3, data: bytes(0xab, 0xcd) }, '06000000 18010302abcd'],
];

test('constants', () => {
  assert.equal(PROTOCOL_VERSION, 1);
  assert.deepEqual(CHANNEL, { Control: 0, World: 1, Chat: 2, Events: 3 });
  assert.equal(CLIENT_MSG_VARIANTS, 22);
  assert.equal(SERVER_MSG_VARIANTS, 25);
  assert.equal(SNAPSHOT_PIECE_BYTES_MAX, 65_536);
  assert.equal(SNAPSHOT_PIECES_MAX, 1024);
  assert.equal(FRAME_BYTES_MAX, 1_048_576);
  assert.equal(SMALL_FRAME_BYTES_MAX, 65_536);
  assert.equal(SNAPSHOT_BYTES_MAX, 67_108_864);
  assert.equal(serverFrameBytesMax(CHANNEL.World), SNAPSHOT_BYTES_MAX);
  assert.equal(serverFrameBytesMax(CHANNEL.Chat), FRAME_BYTES_MAX);
});

test('every client message encodes to its pinned frame and decodes back', () => {
  assert.equal(CLIENT_CASES.length, CLIENT_MSG_VARIANTS);
  for (const [msg, pinned] of CLIENT_CASES) {
    const frame = encodeFrame(encodeClientMsg(msg));
    assert.equal(hex(frame), hex(unhex(pinned)), msg.type);
    assert.deepEqual(decodeClientMsg(frame.subarray(4)), msg, msg.type);
  }
});

test('every server message decodes from its pinned frame and encodes back', () => {
  assert.equal(SERVER_CASES.length, SERVER_MSG_VARIANTS);
  for (const [msg, pinned] of SERVER_CASES) {
    const frame = unhex(pinned);
    const dec = new FrameDecoder(SNAPSHOT_BYTES_MAX);
    dec.push(frame);
    const body = dec.next();
    assert.equal(dec.next(), null);
    assert.deepEqual(decodeServerMsg(body), msg, msg.type);
    assert.equal(hex(encodeFrame(encodeServerMsg(msg))), hex(frame), msg.type);
  }
});

test('channels of every message', () => {
  const { Control: C, World: W, Chat: H, Events: E } = CHANNEL;
  assert.deepEqual(CLIENT_CASES.map(([m]) => channelOfClientMsg(m)), [C, C, H, H, W, W, W, W, W, E, W, W, W, W, C, C, C, C, C, C, W, C]);
  assert.deepEqual(SERVER_CASES.map(([m]) => channelOfServerMsg(m)), [W, W, C, C, C, H, H, W, W, W, W, E, W, W, W, W, W, C, C, C, W, C, C, W, W]);
});

test('Welcome configs decode with every field at f32 precision', () => {
  const m = decodeServerMsg(unhex(SERVER_CASES[0][1]).subarray(4));
  assert.equal(m.transform.weights.owned_by_viewer, 0.25);
  assert.equal(m.transform.budget_bits_per_s, 256_000);
  assert.deepEqual(Object.keys(m.character), Object.keys(characterConfig()));
  assert.equal(m.transform.bounds_min[1], -64);
});

test('u64 values above 2^53 are BigInt, others Number', () => {
  // UserId(u64::MAX) pins as ffffffffffffffffff01 (golden nested_types_are_pinned).
  const msg = { type: 'RankModified', user: 2n ** 64n - 1n, rank: 'Admin' };
  const body = encodeServerMsg(msg);
  assert.equal(hex(body), '11' + 'ffffffffffffffffff01' + '02');
  assert.deepEqual(decodeServerMsg(body), msg);
  const safe = decodeServerMsg(encodeServerMsg({ type: 'RankModified', user: 2 ** 53 - 1, rank: 'Admin' }));
  assert.equal(safe.user, 2 ** 53 - 1);
  const above = decodeServerMsg(encodeServerMsg({ type: 'RankModified', user: 2n ** 53n, rank: 'Admin' }));
  assert.equal(above.user, 2n ** 53n);
  // ReqId(u32::MAX) is ffffffff0f.
  assert.equal(hex(encodeServerMsg({ type: 'Ack', req: 2 ** 32 - 1 })), '03ffffffff0f');
});

test('over-long varints are accepted within the type, like postcard', () => {
  assert.deepEqual(decodeServerMsg(bytes(0x03, 0x80, 0x00)), { type: 'Ack', req: 0 });
  assert.deepEqual(decodeServerMsg(bytes(0x13, 0x00, 0x02, 0x6f, 0x6b)), { type: 'Close', reason: 'PlayerLimit', detail: 'ok' });
});

const kindOf = (f) => {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof WireError, `expected a WireError, got ${e}`);
    return e.kind;
  }
  assert.fail('did not throw');
};

test('malformed input throws WireError of the Rust codec\'s kind', () => {
  assert.equal(kindOf(() => decodeServerMsg(bytes())), 'Truncated');
  assert.equal(kindOf(() => decodeServerMsg(bytes(25))), 'UnknownMessage');
  assert.equal(kindOf(() => decodeClientMsg(bytes(22))), 'UnknownMessage');
  assert.equal(kindOf(() => decodeClientMsg(bytes(0x80, 0x01))), 'UnknownMessage');
  assert.equal(kindOf(() => decodeServerMsg(bytes(0xff, 0xff, 0xff, 0xff, 0x0f))), 'UnknownMessage');
  assert.equal(kindOf(() => decodeServerMsg(bytes(0xff, 0xff, 0xff, 0xff, 0x10))), 'Malformed');
  assert.equal(kindOf(() => decodeServerMsg(bytes(0x80, 0x80))), 'Truncated');
  // Bad bool, option tag, nested enum index, UTF-8, u32 overflow.
  assert.equal(kindOf(() => decodeServerMsg(bytes(0x12, 0x01, 0x02))), 'Malformed');
  assert.equal(kindOf(() => decodeServerMsg(bytes(0x0b, 0x01, 0x00, 0x00, 0x00, 0x02))), 'Malformed');
  assert.equal(kindOf(() => decodeServerMsg(bytes(0x04, 0x01, 0x0c))), 'Malformed');
  assert.equal(kindOf(() => decodeServerMsg(bytes(0x13, 0x00, 0x02, 0xc3, 0x28))), 'Malformed');
  assert.equal(kindOf(() => decodeServerMsg(bytes(0x13, 0x00, 0x03, 0xed, 0xa0, 0x80))), 'Malformed');
  assert.equal(kindOf(() => decodeServerMsg(bytes(0x03, 0xff, 0xff, 0xff, 0xff, 0x10))), 'Malformed');
  assert.equal(kindOf(() => decodeServerMsg(bytes(0x03, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00))), 'Malformed');
  // u16 third byte at most 03.
  assert.equal(kindOf(() => decodeServerMsg(bytes(0x00, 0xff, 0xff, 0x04))), 'Malformed');
  assert.equal(kindOf(() => decodeServerMsg(bytes(0x03, 0x01, 0x00))), 'TrailingBytes');
  // A string declaring far more bytes than the frame holds fails at once, allocating nothing.
  assert.equal(kindOf(() => decodeServerMsg(bytes(0x13, 0x00, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x61))), 'Truncated');
  assert.equal(kindOf(() => decodeServerMsg(bytes(0x13, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01))), 'Truncated');
  // A list declaring 2^32 − 1 elements ends with the input.
  assert.equal(kindOf(() => decodeServerMsg(bytes(0x0a, 0x01, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00))), 'Truncated');
});

test('a leading byte-order mark is text, not stripped', () => {
  const m = decodeServerMsg(bytes(0x13, 0x00, 0x03, 0xef, 0xbb, 0xbf));
  assert.equal(m.detail, '\ufeff');
});

test('every strict prefix of every pinned body is Truncated', () => {
  for (const [, pinned] of [...SERVER_CASES]) {
    const body = unhex(pinned).subarray(4);
    for (let n = 0; n < body.length; n++) {
      assert.equal(kindOf(() => decodeServerMsg(body.subarray(0, n))), 'Truncated', `${pinned} prefix ${n}`);
    }
  }
});

test('fuzzed bodies either decode or throw WireError, and re-encode to themselves', () => {
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 16) & 0xff;
  for (const [, pinned] of SERVER_CASES) {
    const body = unhex(pinned).subarray(4);
    for (let i = 0; i < 200; i++) {
      const b = body.slice();
      b[rnd() % b.length] = rnd();
      try {
        const m = decodeServerMsg(b);
        assert.deepEqual(decodeServerMsg(encodeServerMsg(m)), m);
      } catch (e) {
        assert.ok(e instanceof WireError, String(e));
      }
    }
  }
});

test('encoders refuse values out of their type', () => {
  assert.throws(() => encodeClientMsg({ type: 'Nope' }), TypeError);
  assert.throws(() => encodeClientMsg({ type: 'Hello', protocol_version: 70000, name: 'a', token: null }), TypeError);
  assert.throws(() => encodeClientMsg({ type: 'Chat', req: -1, body: 'x' }), TypeError);
  assert.throws(() => encodeClientMsg({ type: 'Chat', req: 1.5, body: 'x' }), TypeError);
  assert.throws(() => encodeClientMsg({ type: 'ModifyRank', req: 1, user: 5, rank: 'King' }), TypeError);
  assert.throws(() => encodeClientMsg({ type: 'PlayerPush', target: 1, force: [0, 1] }), TypeError);
  assert.throws(() => encodeClientMsg({ type: 'Ping', client_time_us: 2n ** 64n }), TypeError);
  // `undefined` is None for options.
  assert.equal(hex(encodeClientMsg({ type: 'Hello', protocol_version: 1, name: 'a' })), '0001016100');
});

test('FrameDecoder splits, joins and limits frames', () => {
  const frames = CLIENT_CASES.map(([, h]) => unhex(h));
  const stream = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let at = 0;
  for (const f of frames) {
    stream.set(f, at);
    at += f.length;
  }
  for (const step of [1, 3, 7, 64, stream.length]) {
    const dec = new FrameDecoder(SMALL_FRAME_BYTES_MAX);
    const out = [];
    for (let i = 0; i < stream.length; i += step) {
      dec.push(stream.subarray(i, i + step));
      for (let b; (b = dec.next()); ) out.push(hex(b));
    }
    dec.finish();
    assert.deepEqual(out, frames.map((f) => hex(f.subarray(4))));
  }
  // Zero-length frames are frames (whose empty body is no message).
  const z = new FrameDecoder(10);
  z.push(bytes(0, 0, 0, 0));
  assert.equal(z.next().length, 0);
  // The limit is checked on the header, before the body arrives; the decoder stays failed.
  const d = new FrameDecoder(10);
  assert.throws(() => d.push(bytes(11, 0, 0, 0)), (e) => e instanceof WireError && e.kind === 'Oversize');
  assert.throws(() => d.next(), (e) => e.kind === 'Oversize');
  const big = new FrameDecoder();
  assert.throws(() => big.push(bytes(0xff, 0xff, 0xff, 0xff)), (e) => e.kind === 'Oversize');
  const exact = new FrameDecoder(10);
  exact.push(bytes(10, 0, 0, 0, 1, 2));
  assert.equal(exact.next(), null);
  assert.equal(exact.buffered, 6);
  assert.throws(() => exact.finish(), (e) => e.kind === 'Truncated');
});

// A snapshot's pieces, as the server cuts them: the encoded Snapshot message in pieces of
// SNAPSHOT_PIECE_BYTES_MAX (the Rust side's proto/src/wire/pieces.rs).
const snapshotPieces = (bodyBytes) => {
  const base = SERVER_CASES.find(([m]) => m.type === 'Snapshot')[0];
  const snap = { type: 'Snapshot', snapshot: { ...base.snapshot, auth_token: 'x'.repeat(bodyBytes) } };
  const whole = encodeServerMsg(snap);
  const pieces = [];
  for (let at = 0; at < whole.length; at += SNAPSHOT_PIECE_BYTES_MAX) pieces.push(whole.subarray(at, at + SNAPSHOT_PIECE_BYTES_MAX));
  return { snap, pieces };
};

test('a snapshot in pieces is reassembled', () => {
  const { snap, pieces } = snapshotPieces(150_000);
  assert.equal(pieces.length, 3);
  const r = new SnapshotReassembly();
  assert.equal(r.push(0, 3, pieces[0]), null);
  assert.ok(r.inProgress);
  assert.equal(r.push(1, 3, pieces[1]), null);
  const got = r.push(2, 3, pieces[2]);
  assert.deepEqual(got, decodeServerMsg(encodeServerMsg(snap)).snapshot);
  assert.ok(!r.inProgress);
});

test('malformed snapshot piece sequences are refused', () => {
  const { pieces } = snapshotPieces(150_000);
  const refused = (steps) => {
    const r = new SnapshotReassembly();
    try {
      for (const [i, c, d] of steps) r.push(i, c, d);
    } catch (e) {
      assert.ok(e instanceof WireError);
      return e.message;
    }
    return null;
  };
  assert.match(refused([[0, 1, pieces[0]]]), /of 1 pieces/);
  assert.match(refused([[0, SNAPSHOT_PIECES_MAX + 1, pieces[0]]]), /of 1025 pieces/);
  assert.match(refused([[1, 3, pieces[1]]]), /piece 1 where 0 was due/);
  assert.match(refused([[0, 3, pieces[0]], [0, 3, pieces[0]]]), /piece 0 where 1 was due/);
  assert.match(refused([[0, 3, pieces[0]], [1, 4, pieces[1]]]), /says 4 pieces, the first said 3/);
  assert.match(refused([[0, 3, pieces[0].subarray(0, 10)]]), /piece 0 of 10 bytes/);
  assert.match(refused([[0, 2, pieces[0]], [1, 2, new Uint8Array(0)]]), /piece 1 of 0 bytes/);
  assert.match(refused([[0, 2, new Uint8Array(SNAPSHOT_PIECE_BYTES_MAX + 1)]]), /piece 0 of 65537 bytes/);
  assert.match(refused([[0, 2, pieces[0]], [1, 2, pieces[1]]]), /reassembled snapshot/);
});
