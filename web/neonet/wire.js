// neonet wire protocol, version 1: reliable messages and their framing (PROTOCOL.md sections
// 2–6, 10–11, 13–14). Pure and I/O-free: bytes in, plain objects out, and back.
//
// Usage:
//   import { CHANNEL, encodeClientMsg, channelOfClientMsg, decodeServerMsg, encodeFrame,
//            FrameDecoder, WireError, PROTOCOL_VERSION } from './wire.js';
//   const hello = { type: 'Hello', protocol_version: PROTOCOL_VERSION, name: 'ana', token: null };
//   send(channelOfClientMsg(hello), encodeFrame(encodeClientMsg(hello)));
//   const frames = new FrameDecoder(SNAPSHOT_BYTES_MAX);        // server → client World stream
//   frames.push(chunk);
//   for (let body; (body = frames.next()); ) handle(decodeServerMsg(body));
//
// Representation of values (field names are exactly the Rust ones, snake_case):
// - A message is `{ type: 'VariantName', ...fields }`. A newtype variant carries its value in a
//   named field: Snapshot → `snapshot`, ChatAdded → `message`, BlueprintAdded → `blueprint`,
//   EntityAdded → `entity`, EntityRemoved → `id`, SettingsModified → `setting`,
//   SpawnModified → `spawn`. A unit variant is `{ type }` alone.
// - Unit enums (Rank, EntityKind, MovementAuthority, Refusal, CloseReason) are their variant
//   names as strings ('Builder', 'Conflict', ...). `Setting` is `{ type: 'Title', value: 'x' }`.
// - Integers are Numbers, except a u64 above Number.MAX_SAFE_INTEGER, which decodes to a BigInt.
//   No version 1 server produces one (ids and ticks are counters, times are µs since the server
//   started or ms since 1970), so in practice every value is a Number; encoders accept a Number
//   (a safe non-negative integer) or a BigInt for every u64.
// - f32 values are Numbers (encoded with IEEE rounding to binary32); Vec3/Quat are arrays.
// - `Option<T>` is `null` for None (encoders also take `undefined`). In a `BlueprintPatch`
//   every field is optional and `undefined` means "leave unchanged"; for `model`, `script`
//   and `image` `null` means "clear the URL" and a string sets it.
// - `Bytes` are Uint8Array; props lists (`Vec<(String, Bytes)>`) are arrays of `[key, bytes]`.

/** Protocol version sent in `Hello` and checked in `Welcome` (section 13). */
export const PROTOCOL_VERSION = 1;
/** ALPN of the QUIC/WebTransport connection: `neonet/` and the major version (section 1). */
export const ALPN = 'neonet/1';

/** Channel ids: the first byte of every stream (section 1). */
export const CHANNEL = Object.freeze({ Control: 0, World: 1, Chat: 2, Events: 3 });

/** Bytes of a frame's length prefix (u32 little-endian, section 2). */
export const FRAME_HEADER_BYTES = 4;
/** Largest frame body on any stream, except the two cases below (1 MiB). */
export const FRAME_BYTES_MAX = 1024 * 1024;
/** Largest frame body on client → server Control, Chat and Events streams (64 KiB). */
export const SMALL_FRAME_BYTES_MAX = 64 * 1024;
/** Largest frame body a client accepts on the server → client World stream, where the
 * snapshot of a large world travels (64 MiB). */
export const SNAPSHOT_BYTES_MAX = 64 * 1024 * 1024;
/** Largest piece of a snapshot, bytes of the encoded `Snapshot` message per `SnapshotPiece`
 * (64 KiB): a larger snapshot comes in pieces of exactly this size, the last one shorter. */
export const SNAPSHOT_PIECE_BYTES_MAX = 64 * 1024;
/** Most pieces one snapshot may come in (1024 = SNAPSHOT_BYTES_MAX / SNAPSHOT_PIECE_BYTES_MAX). */
export const SNAPSHOT_PIECES_MAX = SNAPSHOT_BYTES_MAX / SNAPSHOT_PIECE_BYTES_MAX;
/** Largest datagram in either direction (section 12.1). */
export const DATAGRAM_BYTES_MAX = 1500;
/** Largest `Hello.name` and `/name` in UTF-8 bytes, after trimming. */
export const NAME_BYTES_MAX = 64;
/** Largest blueprint id and entity prop key, bytes. */
export const ID_BYTES_MAX = 64;
/** Largest chat body, bytes. */
export const CHAT_BYTES_MAX = 2000;
/** Chat messages kept by the server and sent in the snapshot. */
export const CHAT_HISTORY_LEN = 50;
/** Largest `Hello.token`, bytes. */
export const TOKEN_BYTES_MAX = 2048;
/** Most arguments of a `Command`. */
export const COMMAND_ARGS_MAX = 16;
/** Largest `Command` argument, bytes. */
export const COMMAND_ARG_BYTES_MAX = 256;
/** Most props in `EntityAdd` and in `set` / `unset` of a patch. */
export const ENTITY_PROPS_MAX = 64;
/** Largest `EntityEvent.name`, bytes. */
export const EVENT_NAME_BYTES_MAX = 64;
/** Largest `EntityEvent.data` and entity prop value, bytes. */
export const EVENT_DATA_BYTES_MAX = 16 * 1024;
/** Most events a client holds while waiting for a blueprint version (section 9). */
export const HELD_EVENTS_MAX = 1024;
/** Largest blueprint / settings text field or URL, bytes. */
export const TEXT_BYTES_MAX = 4096;
/** Most entities a world holds. */
export const ENTITIES_MAX = 100_000;
/** Most blueprints a world holds. */
export const BLUEPRINTS_MAX = 10_000;
/** Most users a world knows. */
export const USERS_MAX = 1_000_000;
/** Messages a client buffers before its snapshot arrives (section 7, as the Rust client). */
export const EARLY_MESSAGES_MAX = 4096;

/**
 * Largest frame body on a client → server stream of `channel` (what the server enforces).
 * @param {number} channel a CHANNEL value
 * @returns {number}
 */
export function clientFrameBytesMax(channel) {
  return channel === CHANNEL.World ? FRAME_BYTES_MAX : SMALL_FRAME_BYTES_MAX;
}

/**
 * Largest frame body a client accepts on a server → client stream of `channel`: the limit to
 * give that stream's {@link FrameDecoder}.
 * @param {number} channel a CHANNEL value
 * @returns {number}
 */
export function serverFrameBytesMax(channel) {
  return channel === CHANNEL.World ? SNAPSHOT_BYTES_MAX : FRAME_BYTES_MAX;
}

/**
 * A decoding failure. `kind` mirrors the Rust `DecodeError` / `TransformError` variants:
 * 'Oversize', 'Truncated', 'UnknownMessage', 'Malformed', 'TrailingBytes' for messages and
 * frames; datagrams add 'Empty', 'UnknownKind', 'OutOfBounds', 'TooManyRecords', 'BlobTooLarge'.
 * Any of them on a reliable stream means: close the connection (ProtocolViolation).
 */
export class WireError extends Error {
  /**
   * @param {string} kind the error class, as above
   * @param {string} message human-readable detail
   */
  constructor(kind, message) {
    super(message);
    this.name = 'WireError';
    /** @type {string} */
    this.kind = kind;
  }
}

// ---------------------------------------------------------------------------------------------
// Schema. Every type is described once; the same description drives encoding and decoding.

const T = {
  u16: { k: 'varint', bytes: 3, lastMax: 0x03, bits: 16 },
  u32: { k: 'varint', bytes: 5, lastMax: 0x0f, bits: 32 },
  u64: { k: 'varint', bytes: 10, lastMax: 0x01, bits: 64 },
  f32: { k: 'f32' },
  bool: { k: 'bool' },
  string: { k: 'string' },
  bytes: { k: 'bytes' },
};
const opt = (t) => ({ k: 'opt', t });
/** `Option<T>` whose None is `undefined` ("leave unchanged", in BlueprintPatch). */
const keep = (t) => ({ k: 'keep', t });
const vec = (t) => ({ k: 'vec', t });
const arr = (t, n) => ({ k: 'arr', t, n });
const tuple = (...ts) => ({ k: 'tuple', ts });
const struct = (...fields) => ({ k: 'struct', fields });
const names = (...ns) => ({ k: 'names', ns });
/** An enum of data-carrying variants: `[name, field type or null]`; value in `value`. */
const valued = (...vs) => ({ k: 'valued', vs });

const Vec3 = arr(T.f32, 3);
const Quat = arr(T.f32, 4);
const EntityId = T.u32;
const UserId = T.u64;
const SessionId = T.u64;
const ReqId = T.u32;
const BlueprintId = T.string;
const Props = vec(tuple(T.string, T.bytes));

const Rank = names('Visitor', 'Builder', 'Admin');
const EntityKind = names('Player', 'App');
const MovementAuthority = names('Server', 'Client');
const Refusal = names(
  'Rank', 'NotOwner', 'NotFound', 'Exists', 'Conflict', 'Invalid', 'Muted', 'RateLimited',
  'Storage', 'UnknownCommand', 'WorldFull', 'Busy',
);
const CloseReason = names(
  'PlayerLimit', 'DuplicateUser', 'Moderation', 'ProtocolViolation', 'VersionMismatch',
  'AuthFailed', 'ServerShutdown', 'Timeout', 'ClientLeft', 'Flooding',
);

const Transform = struct(['position', Vec3], ['rotation', Quat], ['scale', opt(Vec3)]);
const Entity = struct(
  ['id', EntityId], ['kind', EntityKind], ['owner', opt(SessionId)], ['user', opt(UserId)],
  ['blueprint', opt(BlueprintId)], ['transform', Transform], ['props', Props],
);
const EntityPatch = struct(['set', Props], ['unset', vec(T.string)], ['transform', opt(Transform)]);
const BlueprintFlags = struct(
  ['preload', T.bool], ['public', T.bool], ['locked', T.bool], ['frozen', T.bool],
  ['unique', T.bool], ['scene', T.bool], ['disabled', T.bool],
);
const Blueprint = struct(
  ['id', BlueprintId], ['version', T.u32], ['name', T.string], ['author', T.string],
  ['model', opt(T.string)], ['script', opt(T.string)], ['image', opt(T.string)],
  ['desc', T.string], ['props', T.bytes], ['flags', BlueprintFlags],
);
const BlueprintPatch = struct(
  ['name', keep(T.string)], ['author', keep(T.string)], ['model', keep(opt(T.string))],
  ['script', keep(opt(T.string))], ['image', keep(opt(T.string))], ['desc', keep(T.string)],
  ['props', keep(T.bytes)], ['flags', keep(BlueprintFlags)],
);
const ChatMessage = struct(
  ['id', T.u64], ['from_user', opt(UserId)], ['from_name', T.string],
  ['from_entity', opt(EntityId)], ['body', T.string], ['created_at_ms', T.u64],
);
const Settings = struct(
  ['title', T.string], ['desc', T.string], ['image', opt(T.string)], ['avatar', opt(T.string)],
  ['custom_avatars', T.bool], ['default_rank', Rank], ['player_limit', T.u32], ['ao', T.bool],
  ['movement', MovementAuthority],
);
const Setting = valued(
  ['Title', T.string], ['Desc', T.string], ['Image', opt(T.string)], ['Avatar', opt(T.string)],
  ['CustomAvatars', T.bool], ['DefaultRank', Rank], ['PlayerLimit', T.u32], ['Ao', T.bool],
  ['Movement', MovementAuthority],
);
const Spawn = struct(['position', Vec3], ['rotation', Quat]);
const Snapshot = struct(
  ['player', EntityId], ['user', UserId], ['rank', Rank], ['server_tick', T.u64],
  ['server_time_us', T.u64], ['settings', Settings], ['spawn', Spawn],
  ['chat', vec(ChatMessage)], ['blueprints', vec(Blueprint)], ['entities', vec(Entity)],
  ['auth_token', T.string],
);
const PriorityWeights = struct(
  ['base', T.f32], ['distance_half_m', T.f32], ['moving', T.f32], ['owned_by_viewer', T.f32],
  ['left_notice', T.f32],
);
const TransformConfig = struct(
  ['bounds_min', Vec3], ['bounds_max', Vec3], ['position_steps_per_m', T.u32],
  ['rotation_bits', T.u32], ['scale_enabled', T.bool], ['scale_steps_per_unit', T.u32],
  ['tick_hz', T.u16], ['budget_bits_per_s', T.u32], ['interest_radius_m', T.f32],
  ['interest_hysteresis_m', T.f32], ['weights', PriorityWeights],
);
const CharacterConfig = struct(
  ['walk_speed_mps', T.f32], ['run_speed_mps', T.f32], ['ground_accel_mps2', T.f32],
  ['air_accel_mps2', T.f32], ['jump_speed_mps', T.f32], ['gravity_mps2', T.f32],
  ['fall_speed_max_mps', T.f32], ['ground_y', T.f32], ['bounds_min', Vec3], ['bounds_max', Vec3],
);

const { Control, World, Chat, Events } = CHANNEL;

// [name, channel, fields] in tag order (PROTOCOL.md section 5).
const CLIENT_MSGS = [
  ['Hello', Control, [['protocol_version', T.u16], ['name', T.string], ['token', opt(T.string)]]],
  ['Ping', Control, [['client_time_us', T.u64]]],
  ['Command', Chat, [['req', ReqId], ['args', vec(T.string)]]],
  ['Chat', Chat, [['req', ReqId], ['body', T.string]]],
  ['BlueprintAdd', World, [['req', ReqId], ['blueprint', Blueprint]]],
  ['BlueprintModify', World, [['req', ReqId], ['id', BlueprintId], ['version', T.u32], ['patch', BlueprintPatch]]],
  ['EntityAdd', World, [['req', ReqId], ['blueprint', BlueprintId], ['transform', Transform], ['props', Props]]],
  ['EntityModify', World, [['req', ReqId], ['id', EntityId], ['patch', EntityPatch]]],
  ['EntityRemove', World, [['req', ReqId], ['id', EntityId]]],
  ['EntityEvent', Events, [['entity', EntityId], ['blueprint_version', T.u32], ['name', T.string], ['data', T.bytes], ['to', opt(EntityId)]]],
  ['PlayerTeleport', World, [['target', EntityId], ['position', Vec3], ['rotation_y', T.f32]]],
  ['PlayerPush', World, [['target', EntityId], ['force', Vec3]]],
  ['SettingsModify', World, [['req', ReqId], ['setting', Setting]]],
  ['SpawnModify', World, [['req', ReqId], ['set', T.bool]]],
  ['ModifyRank', Control, [['req', ReqId], ['user', UserId], ['rank', Rank]]],
  ['Kick', Control, [['req', ReqId], ['target', EntityId]]],
  ['Mute', Control, [['req', ReqId], ['target', EntityId], ['muted', T.bool]]],
  ['Goodbye', Control, []],
  ['Spectate', Control, [['protocol_version', T.u16], ['name', T.string], ['token', opt(T.string)], ['camera', Vec3]]],
  ['SpectatorCamera', Control, [['position', Vec3]]],
  ['BlueprintRemove', World, [['req', ReqId], ['id', BlueprintId]]],
  ['Resume', Control, [['protocol_version', T.u16], ['name', T.string], ['token', opt(T.string)], ['session', SessionId], ['resume_token', T.string]]],
];

// [name, channel, fields] in tag order (PROTOCOL.md section 6).
const SERVER_MSGS = [
  ['Welcome', World, [['protocol_version', T.u16], ['session', SessionId], ['tick_hz', T.u16], ['transform', TransformConfig], ['character', CharacterConfig]]],
  ['Snapshot', World, [['snapshot', Snapshot]]],
  ['Pong', Control, [['client_time_us', T.u64], ['server_time_us', T.u64], ['server_tick', T.u64]]],
  ['Ack', Control, [['req', ReqId]]],
  ['Refused', Control, [['req', ReqId], ['reason', Refusal]]],
  ['ChatAdded', Chat, [['message', ChatMessage]]],
  ['ChatCleared', Chat, []],
  ['BlueprintAdded', World, [['blueprint', Blueprint]]],
  ['BlueprintModified', World, [['id', BlueprintId], ['version', T.u32], ['patch', BlueprintPatch]]],
  ['EntityAdded', World, [['entity', Entity]]],
  ['EntityModified', World, [['id', EntityId], ['patch', EntityPatch]]],
  ['EntityEvent', Events, [['entity', EntityId], ['blueprint_version', T.u32], ['name', T.string], ['data', T.bytes], ['from', opt(EntityId)]]],
  ['EntityRemoved', World, [['id', EntityId]]],
  ['PlayerTeleport', World, [['position', Vec3], ['rotation_y', T.f32]]],
  ['PlayerPush', World, [['force', Vec3]]],
  ['SettingsModified', World, [['setting', Setting]]],
  ['SpawnModified', World, [['spawn', Spawn]]],
  ['RankModified', Control, [['user', UserId], ['rank', Rank]]],
  ['Muted', Control, [['player', EntityId], ['muted', T.bool]]],
  ['Close', Control, [['reason', CloseReason], ['detail', T.string]]],
  ['BlueprintRemoved', World, [['id', BlueprintId]]],
  ['CommandReply', Control, [['req', ReqId], ['text', T.string]]],
  ['AuthToken', Control, [['token', T.string]]],
  ['ResumeToken', World, [['token', T.string]]],
  ['SnapshotPiece', World, [['index', T.u32], ['count', T.u32], ['data', T.bytes]]],
];

/** Number of `ClientMsg` variants in version 1: tags at or above it are unknown. */
export const CLIENT_MSG_VARIANTS = CLIENT_MSGS.length;
/** Number of `ServerMsg` variants in version 1: tags at or above it are unknown. */
export const SERVER_MSG_VARIANTS = SERVER_MSGS.length;

const byName = (table) => new Map(table.map(([name, channel, fields], tag) => [name, { tag, channel, type: struct(...fields) }]));
const CLIENT_BY_NAME = byName(CLIENT_MSGS);
const SERVER_BY_NAME = byName(SERVER_MSGS);
const CLIENT_BY_TAG = CLIENT_MSGS.map(([name, , fields]) => ({ name, type: struct(...fields) }));
const SERVER_BY_TAG = SERVER_MSGS.map(([name, , fields]) => ({ name, type: struct(...fields) }));

// ---------------------------------------------------------------------------------------------
// Encoding.

const utf8Encoder = new TextEncoder();
// fatal: invalid UTF-8 throws, as Rust's from_utf8 fails; ignoreBOM: a leading U+FEFF is text.
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

class Writer {
  constructor() {
    this.buf = new Uint8Array(64);
    this.view = new DataView(this.buf.buffer);
    this.len = 0;
  }

  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    const grown = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    grown.set(this.buf.subarray(0, this.len));
    this.buf = grown;
    this.view = new DataView(grown.buffer);
  }

  byte(b) {
    this.reserve(1);
    this.buf[this.len++] = b;
  }

  raw(bytes) {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }

  f32(v) {
    this.reserve(4);
    this.view.setFloat32(this.len, v, true);
    this.len += 4;
  }

  /** Unsigned LEB128, shortest form; `v` a non-negative integer Number or BigInt. */
  varint(v) {
    if (typeof v === 'bigint') {
      while (v >= 0x80n) {
        this.byte(Number(v & 0x7fn) | 0x80);
        v >>= 7n;
      }
      this.byte(Number(v));
      return;
    }
    while (v >= 0x80) {
      this.byte((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    this.byte(v);
  }

  bytes() {
    return this.buf.slice(0, this.len);
  }
}

function fail(what, value) {
  return new TypeError(`cannot encode ${what}: ${typeof value === 'bigint' ? `${value}n` : JSON.stringify(value)}`);
}

function checkUint(value, bits, what) {
  if (typeof value === 'bigint') {
    if (bits === 64 && value >= 0n && value < 1n << 64n) return value;
    throw fail(what, value);
  }
  if (Number.isSafeInteger(value) && value >= 0 && (bits === 64 || value < 2 ** bits)) return value;
  throw fail(what, value);
}

function encodeValue(w, t, v, what) {
  switch (t.k) {
    case 'varint':
      w.varint(checkUint(v, t.bits, what));
      return;
    case 'f32':
      if (typeof v !== 'number') throw fail(what, v);
      w.f32(v);
      return;
    case 'bool':
      if (typeof v !== 'boolean') throw fail(what, v);
      w.byte(v ? 1 : 0);
      return;
    case 'string': {
      if (typeof v !== 'string') throw fail(what, v);
      const b = utf8Encoder.encode(v);
      w.varint(b.length);
      w.raw(b);
      return;
    }
    case 'bytes':
      if (!(v instanceof Uint8Array)) throw fail(what, v);
      w.varint(v.length);
      w.raw(v);
      return;
    case 'opt':
    case 'keep':
      if (v === undefined || (t.k === 'opt' && v === null)) {
        w.byte(0);
      } else {
        w.byte(1);
        encodeValue(w, t.t, v, what);
      }
      return;
    case 'vec':
      if (!Array.isArray(v)) throw fail(what, v);
      w.varint(v.length);
      for (const item of v) encodeValue(w, t.t, item, what);
      return;
    case 'arr':
      if (!Array.isArray(v) || v.length !== t.n) throw fail(what, v);
      for (const item of v) encodeValue(w, t.t, item, what);
      return;
    case 'tuple':
      if (!Array.isArray(v) || v.length !== t.ts.length) throw fail(what, v);
      t.ts.forEach((tt, i) => encodeValue(w, tt, v[i], what));
      return;
    case 'struct':
      if (v === null || typeof v !== 'object') throw fail(what, v);
      for (const [name, ft] of t.fields) encodeValue(w, ft, v[name], `${what}.${name}`);
      return;
    case 'names': {
      const i = t.ns.indexOf(v);
      if (i < 0) throw fail(what, v);
      w.varint(i);
      return;
    }
    case 'valued': {
      const i = v === null || typeof v !== 'object' ? -1 : t.vs.findIndex(([n]) => n === v.type);
      if (i < 0) throw fail(what, v);
      w.varint(i);
      encodeValue(w, t.vs[i][1], v.value, `${what}.${v.type}`);
      return;
    }
    default:
      throw new Error(`unknown schema kind ${t.k}`);
  }
}

function encodeMsg(table, msg, direction) {
  const entry = msg && table.get(msg.type);
  if (!entry) throw fail(`${direction} message type`, msg && msg.type);
  const w = new Writer();
  w.varint(entry.tag);
  encodeValue(w, entry.type, msg, msg.type);
  return w.bytes();
}

/**
 * Encodes a client → server message as a postcard body (no length prefix).
 * @param {{type: string}} msg e.g. `{ type: 'Chat', req: 2, body: 'hi' }`
 * @returns {Uint8Array}
 * @throws {TypeError} on an unknown type or a field of the wrong type or range
 */
export function encodeClientMsg(msg) {
  return encodeMsg(CLIENT_BY_NAME, msg, 'client');
}

/**
 * Encodes a server → client message (for tests and mock servers).
 * @param {{type: string}} msg
 * @returns {Uint8Array}
 */
export function encodeServerMsg(msg) {
  return encodeMsg(SERVER_BY_NAME, msg, 'server');
}

/**
 * The channel a client message must travel on (a CHANNEL value).
 * @param {{type: string}} msg
 * @returns {number}
 */
export function channelOfClientMsg(msg) {
  const entry = msg && CLIENT_BY_NAME.get(msg.type);
  if (!entry) throw fail('client message type', msg && msg.type);
  return entry.channel;
}

/**
 * The channel a server message travels on: a client receiving it on another stream MUST close
 * the connection (section 1).
 * @param {{type: string}} msg
 * @returns {number}
 */
export function channelOfServerMsg(msg) {
  const entry = msg && SERVER_BY_NAME.get(msg.type);
  if (!entry) throw fail('server message type', msg && msg.type);
  return entry.channel;
}

/**
 * Frames a body: its length as u32 little-endian, then the body.
 * @param {Uint8Array} body
 * @returns {Uint8Array}
 */
export function encodeFrame(body) {
  const out = new Uint8Array(FRAME_HEADER_BYTES + body.length);
  new DataView(out.buffer).setUint32(0, body.length, true);
  out.set(body, FRAME_HEADER_BYTES);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding. Every read checks the remaining input first, so a declared length never allocates
// more than the input holds, and every loop consumes at least one byte per iteration.

class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }

  get remaining() {
    return this.bytes.length - this.pos;
  }

  byte() {
    if (this.pos >= this.bytes.length) throw new WireError('Truncated', 'truncated input');
    return this.bytes[this.pos++];
  }

  take(n) {
    if (n > this.remaining) throw new WireError('Truncated', 'truncated input');
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  f32() {
    if (this.remaining < 4) throw new WireError('Truncated', 'truncated input');
    const v = this.view.getFloat32(this.pos, true);
    this.pos += 4;
    return v;
  }

  /**
   * Postcard's varint: at most `maxBytes` bytes, the last one at most `lastMax`. A Number when
   * it is a safe integer, else a BigInt.
   */
  varint(maxBytes, lastMax) {
    let v = 0;
    let big = null;
    for (let i = 0; i < maxBytes; i++) {
      const b = this.byte();
      if (i === maxBytes - 1 && b > lastMax) throw new WireError('Malformed', 'malformed message: varint overflows its type');
      const low = b & 0x7f;
      if (big !== null) big |= BigInt(low) << BigInt(7 * i);
      else if (i < 7) v += low * 2 ** (7 * i);
      else big = BigInt(v) | (BigInt(low) << BigInt(7 * i));
      if ((b & 0x80) === 0) {
        if (big === null) return v;
        return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
      }
    }
    throw new WireError('Malformed', 'malformed message: varint too long');
  }

  /** A length or count (`usize`, read as a 64-bit decoder does). */
  length() {
    const n = this.varint(10, 0x01);
    return typeof n === 'bigint' ? Number.MAX_SAFE_INTEGER : n;
  }
}

function decodeValue(r, t) {
  switch (t.k) {
    case 'varint':
      return r.varint(t.bytes, t.lastMax);
    case 'f32':
      return r.f32();
    case 'bool': {
      const b = r.byte();
      if (b > 1) throw new WireError('Malformed', `malformed message: bool byte ${b}`);
      return b === 1;
    }
    case 'string': {
      const b = r.take(r.length());
      try {
        return utf8Decoder.decode(b);
      } catch {
        throw new WireError('Malformed', 'malformed message: invalid UTF-8');
      }
    }
    case 'bytes':
      return r.take(r.length()).slice();
    case 'opt':
    case 'keep': {
      const b = r.byte();
      if (b > 1) throw new WireError('Malformed', `malformed message: option tag ${b}`);
      if (b === 0) return t.k === 'opt' ? null : undefined;
      return decodeValue(r, t.t);
    }
    case 'vec': {
      const n = r.length();
      const out = [];
      // Every element is at least one byte: the loop ends with the input at the latest.
      for (let i = 0; i < n; i++) out.push(decodeValue(r, t.t));
      return out;
    }
    case 'arr': {
      const out = new Array(t.n);
      for (let i = 0; i < t.n; i++) out[i] = decodeValue(r, t.t);
      return out;
    }
    case 'tuple':
      return t.ts.map((tt) => decodeValue(r, tt));
    case 'struct': {
      const out = {};
      for (const [name, ft] of t.fields) out[name] = decodeValue(r, ft);
      return out;
    }
    case 'names': {
      const i = r.varint(5, 0x0f);
      if (i >= t.ns.length) throw new WireError('Malformed', `malformed message: enum index ${i} out of range`);
      return t.ns[i];
    }
    case 'valued': {
      const i = r.varint(5, 0x0f);
      if (i >= t.vs.length) throw new WireError('Malformed', `malformed message: enum index ${i} out of range`);
      const [type, vt] = t.vs[i];
      return { type, value: decodeValue(r, vt) };
    }
    default:
      throw new Error(`unknown schema kind ${t.k}`);
  }
}

function decodeMsg(bytes, byTag) {
  if (!(bytes instanceof Uint8Array)) throw new TypeError('decode expects a Uint8Array');
  const r = new Reader(bytes);
  // The tag is a u32 varint: an empty body is truncated, a fifth byte above 0x0f malformed,
  // a tag past the last variant unknown.
  const tag = r.varint(5, 0x0f);
  if (tag >= byTag.length) throw new WireError('UnknownMessage', `unknown message tag ${tag}`);
  const { name, type } = byTag[tag];
  const msg = { type: name, ...decodeValue(r, type) };
  if (r.remaining > 0) throw new WireError('TrailingBytes', `${r.remaining} trailing bytes after the message`);
  return msg;
}

/**
 * Decodes one server → client frame body. Malformed input throws a {@link WireError} (never
 * hangs, never allocates beyond the input's size); the caller then closes the connection.
 * @param {Uint8Array} bytes a frame body
 * @returns {{type: string}} e.g. `{ type: 'Ack', req: 300 }`
 * @throws {WireError}
 */
export function decodeServerMsg(bytes) {
  return decodeMsg(bytes, SERVER_BY_TAG);
}

/**
 * A snapshot arriving in `SnapshotPiece`s (PROTOCOL.md section 7, A big snapshot in pieces):
 * feed each piece to `push` in order; the last one returns the decoded snapshot. Holds at most
 * SNAPSHOT_BYTES_MAX bytes; any malformed sequence (out of order, a count out of range or that
 * changes, a piece of the wrong size, a whole that is not a `Snapshot`) throws a WireError of
 * kind 'Snapshot', which a client answers by closing with ProtocolViolation.
 */
export class SnapshotReassembly {
  constructor() {
    /** The first piece's count; 0 before it. */
    this.count = 0;
    /** Pieces taken so far. */
    this.next = 0;
    /** @type {Uint8Array[]} their bytes, in order */
    this.parts = [];
    this.bytes = 0;
  }

  /** Whether pieces have started to arrive and the last has not. */
  get inProgress() {
    return this.next > 0;
  }

  /**
   * Takes piece `index` of `count`.
   * @param {number} index
   * @param {number} count
   * @param {Uint8Array} data
   * @returns {object|null} the snapshot after the last piece, else null
   * @throws {WireError}
   */
  push(index, count, data) {
    const fail = (m) => { throw new WireError('Snapshot', m); };
    if (this.next === 0) {
      if (count < 2 || count > SNAPSHOT_PIECES_MAX) fail(`snapshot of ${count} pieces: 2 to ${SNAPSHOT_PIECES_MAX} allowed`);
      this.count = count;
    } else if (count !== this.count) {
      fail(`snapshot piece says ${count} pieces, the first said ${this.count}`);
    }
    if (index !== this.next) fail(`snapshot piece ${index} where ${this.next} was due`);
    const last = index + 1 === count;
    const sizeOk = last ? data.length >= 1 && data.length <= SNAPSHOT_PIECE_BYTES_MAX : data.length === SNAPSHOT_PIECE_BYTES_MAX;
    if (!sizeOk || this.bytes + data.length > SNAPSHOT_BYTES_MAX) fail(`snapshot piece ${index} of ${data.length} bytes`);
    this.parts.push(data);
    this.bytes += data.length;
    this.next++;
    if (!last) return null;
    const whole = new Uint8Array(this.bytes);
    let at = 0;
    for (const p of this.parts) {
      whole.set(p, at);
      at += p.length;
    }
    this.count = 0;
    this.next = 0;
    this.parts = [];
    this.bytes = 0;
    let msg;
    try {
      msg = decodeServerMsg(whole);
    } catch (e) {
      fail(`reassembled snapshot: ${e.message}`);
    }
    if (msg.type !== 'Snapshot') fail(`reassembled snapshot: a ${msg.type} message`);
    return msg.snapshot;
  }
}

/**
 * Decodes one client → server frame body (for tests and mock servers).
 * @param {Uint8Array} bytes
 * @returns {{type: string}}
 * @throws {WireError}
 */
export function decodeClientMsg(bytes) {
  return decodeMsg(bytes, CLIENT_BY_TAG);
}

// ---------------------------------------------------------------------------------------------
// Framing.

/**
 * Splits one stream's bytes into frame bodies. The declared length is checked against the
 * limit as soon as the 4 header bytes are in, before any of the body is buffered; after an
 * error the decoder stays failed (a stream cannot be resynchronized).
 */
export class FrameDecoder {
  #buf = new Uint8Array(0);
  #start = 0;
  #end = 0;
  #max;
  #error = null;

  /**
   * @param {number} [maxBytes] largest body accepted, e.g. {@link serverFrameBytesMax}(channel)
   */
  constructor(maxBytes = FRAME_BYTES_MAX) {
    this.#max = maxBytes;
  }

  /** Bytes held that are not yet part of a returned frame. */
  get buffered() {
    return this.#end - this.#start;
  }

  /**
   * Appends bytes received on the stream.
   * @param {Uint8Array} chunk
   * @throws {WireError} 'Oversize' if the next frame's header declares too much
   */
  push(chunk) {
    if (this.#error) throw this.#error;
    if (this.#end + chunk.length > this.#buf.length) {
      const held = this.#end - this.#start;
      const needed = held + chunk.length;
      if (needed <= this.#buf.length) {
        this.#buf.copyWithin(0, this.#start, this.#end);
      } else {
        const grown = new Uint8Array(Math.max(needed, this.#buf.length * 2));
        grown.set(this.#buf.subarray(this.#start, this.#end));
        this.#buf = grown;
      }
      this.#start = 0;
      this.#end = held;
    }
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
    this.#declared();
  }

  /**
   * The next complete frame body, or null if more bytes are needed.
   * @returns {Uint8Array|null}
   * @throws {WireError} 'Oversize'
   */
  next() {
    if (this.#error) throw this.#error;
    const len = this.#declared();
    if (len === null || this.buffered < FRAME_HEADER_BYTES + len) return null;
    const from = this.#start + FRAME_HEADER_BYTES;
    const body = this.#buf.slice(from, from + len);
    this.#start = from + len;
    if (this.#start === this.#end) this.#start = this.#end = 0;
    return body;
  }

  /**
   * Call when the stream ends: a partial frame left over is an error.
   * @throws {WireError} 'Truncated'
   */
  finish() {
    if (this.#error) throw this.#error;
    if (this.buffered > 0) throw new WireError('Truncated', 'stream ended inside a frame');
  }

  #declared() {
    if (this.buffered < FRAME_HEADER_BYTES) return null;
    const b = this.#buf;
    const s = this.#start;
    const len = (b[s] | (b[s + 1] << 8) | (b[s + 2] << 16)) + b[s + 3] * 2 ** 24;
    if (len > this.#max) {
      this.#error = new WireError('Oversize', `frame of ${len} bytes exceeds the ${this.#max}-byte limit`);
      throw this.#error;
    }
    return len;
  }
}
