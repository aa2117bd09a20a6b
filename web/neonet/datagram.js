// Transform datagrams (PROTOCOL.md section 12): quantization, the server → client stream of
// entity transforms, and the client → server datagram (acks, inputs, owned transforms). A port
// of proto/src/transform/{quant,record,receiver,upstream,seq}.rs and proto/src/predict/wire.rs.
//
// Usage:
//   import { TransformReceiver, encodeClientDatagram, encodeInputBlob, decodeOwnState } from './datagram.js';
//   const rx = new TransformReceiver(welcome.transform);
//   try {
//     const r = rx.handleDatagram(bytes, performance.now());   // throws WireError if malformed
//     for (const u of r.updates) moveEntity(u.id, u.position, u.rotation, u.scale);
//     if (r.ownState) reconcile(decodeOwnState(r.ownState));
//   } catch (e) { if (!(e instanceof WireError)) throw e; }      // count and ignore
//   send(encodeClientDatagram({ seq: seq++ & 0xffff, ack: rx.ackState(),
//     inputBlob: encodeInputBlob(firstTick, inputs), owned: [], quantizer: rx.quantizer }));
//
// Ticks are Numbers; a server datagram whose tick is above Number.MAX_SAFE_INTEGER is refused
// as malformed (a 30 Hz server reaches it after 9 million years). The ack field `received` is
// a u64 and therefore a BigInt.

import { DATAGRAM_BYTES_MAX, ENTITIES_MAX, WireError } from './wire.js';

/** Kind byte of a server → client datagram. */
export const KIND_SERVER_STATE = 0x01;
/** Kind byte of a client → server datagram. */
export const KIND_CLIENT_STATE = 0x02;
/** Kind byte of a client → server datagram carrying the client's clock for an echo (12.7). */
export const KIND_CLIENT_STATE_CLOCK = 0x03;
/** Server datagram flag: an own-player blob follows. */
export const FLAG_OWN_BLOB = 0x01;
/** Server datagram flag: a clock echo follows (12.4). */
export const FLAG_CLOCK_ECHO = 0x02;
/** Largest own-player blob in a server datagram. */
export const OWN_BLOB_BYTES_MAX = 64;
/** Largest input blob in a client datagram. */
export const INPUT_BLOB_BYTES_MAX = 256;
/** Most owned transforms in a client datagram. */
export const OWNED_PER_DATAGRAM_MAX = 32;
/** Most records in a server datagram. */
export const RECORDS_PER_DATAGRAM_MAX = 1024;
/** Values a receiver keeps per entity as possible delta baselines. */
export const RECEIVER_BASELINES_PER_ENTITY = 16;
/** Oldest baseline a delta may name, ticks (also the largest `common_age`). */
export const BASELINE_AGE_MAX_TICKS = 16_383;
/** Seqs one ack header covers. */
export const ACK_WINDOW = 64;
/** Bytes of an ack header: latest u16 LE, received u64 LE. */
export const ACK_HEADER_BYTES = 10;
/** Entity removals remembered so late records cannot resurrect them. */
export const FORGOTTEN_MAX = 1024;
/** Input blob format version. */
export const INPUTS_FORMAT_VERSION = 1;
/** Most inputs in one input blob. */
export const INPUTS_PER_PACKET_MAX = 32;
/** Bytes of one input in the blob. */
export const CHARACTER_INPUT_BYTES = 5;
/** Bytes before the inputs: version, first_tick, count. */
export const INPUTS_HEADER_BYTES = 10;
/** Own-player state blob format version. */
export const OWN_STATE_FORMAT_VERSION = 1;
/** Bytes of a version 1 own-player state blob. */
export const OWN_STATE_BYTES = 39;

const INDEX_EG_K = 0; // entity id gaps
const AGE_EG_K = 2; // baseline ages − 1
const WIDTH_EG_K = 1; // residual widths − 1
const OWNED_ID_EG_K = 8; // owned entity ids
const EG_PREFIX_MAX = 40;
const RESIDUAL_WIDTH_MAX = 32;
const PREDICT_INTERVALS_MAX = 8;
const SCALE_MAX = 64;
const U32_MAX = 2 ** 32 - 1;
const BUTTON_RUN = 1;
const BUTTON_JUMP = 2;
const FLAG_GROUNDED = 1;
const SQRT1_2 = Math.SQRT1_2;

const malformed = (what) => new WireError('Malformed', `malformed datagram: ${what}`);
const truncated = () => new WireError('Truncated', 'truncated datagram');
const outOfBounds = () => new WireError('OutOfBounds', 'transform outside the configured bounds');

/** Rust's `round`: half away from zero. */
const roundHalfAway = (x) => (x < 0 ? -Math.round(-x) : Math.round(x));
/** Bits needed to write `v` (0 for 0). */
function bitWidth(v) {
  let n = 0;
  for (; v >= 1; v = Math.floor(v / 2)) n++;
  return n;
}
/** Clamp `x` (f64, maybe NaN) to `0..=max` and cast as Rust's `as` does (NaN → 0). */
const clampCast = (x, max) => (Number.isNaN(x) ? 0 : Math.min(Math.max(x, 0), max));

// ---------------------------------------------------------------------------------------------
// Quantization (12.3).

/**
 * Quantizes and dequantizes transforms exactly as the server's `Quantizer`, from a
 * `TransformConfig` as decoded from `Welcome`. A quantized transform is
 * `{ pos: [u32 ×3], largest: 0..3, comps: [3 components], scale: [3] | null }`.
 */
export class Quantizer {
  /**
   * @param {object} config a TransformConfig (bounds_min, bounds_max, position_steps_per_m,
   *   rotation_bits, scale_enabled, scale_steps_per_unit; other fields are ignored)
   * @throws {RangeError} if the quantization fields are out of the protocol's ranges
   */
  constructor(config) {
    const steps = config.position_steps_per_m;
    if (!Number.isInteger(steps) || steps < 10 || steps > 65_536) throw new RangeError(`position_steps_per_m ${steps} out of range`);
    this.min = config.bounds_min.map(Math.fround);
    this.stepsPerM = steps;
    // Scaling by a power of two is exact, so this is the division, bit for bit (as Rust).
    this.stepExact = (steps & (steps - 1)) === 0 ? 1 / steps : null;
    this.positionMax = [0, 0, 0];
    this.positionBits = [0, 0, 0];
    for (let a = 0; a < 3; a++) {
      const lo = this.min[a];
      const hi = Math.fround(config.bounds_max[a]);
      if (!Number.isFinite(lo) || !Number.isFinite(hi) || lo >= hi) throw new RangeError(`bounds empty on axis ${a}`);
      const n = Math.max(Math.ceil((hi - lo) * steps), 2);
      this.positionMax[a] = n - 1;
      this.positionBits[a] = bitWidth(n - 1);
      if (this.positionBits[a] > 30) throw new RangeError(`axis ${a} needs ${this.positionBits[a]} bits`);
    }
    const rb = config.rotation_bits;
    if (!Number.isInteger(rb) || rb < 9 || rb > 15) throw new RangeError(`rotation_bits ${rb} out of range`);
    this.rotationBits = rb;
    this.rotationMax = 2 ** rb - 1;
    this.scaleEnabled = Boolean(config.scale_enabled);
    this.scaleSteps = config.scale_steps_per_unit;
    if (!Number.isInteger(this.scaleSteps) || this.scaleSteps < 1 || SCALE_MAX * this.scaleSteps > 0xffff) throw new RangeError(`scale_steps_per_unit ${this.scaleSteps} out of range`);
    this.scaleMax = SCALE_MAX * this.scaleSteps;
    this.scaleBits = bitWidth(this.scaleMax);
  }

  /**
   * @param {{position: number[], rotation: number[], scale?: number[]|null}} t
   * @returns {{pos: number[], largest: number, comps: number[], scale: number[]|null}}
   */
  quantize(t) {
    const { largest, comps } = this.quantizeRotation(t.rotation);
    return {
      pos: this.quantizePosition(t.position),
      largest,
      comps,
      scale: this.scaleEnabled && t.scale ? this.quantizeScale(t.scale) : null,
    };
  }

  /**
   * @param {{pos: number[], largest: number, comps: number[], scale: number[]|null}} q
   * @returns {{position: number[], rotation: number[], scale: number[]|null}}
   */
  dequantize(q) {
    return {
      position: this.dequantizePosition(q.pos),
      rotation: this.dequantizeRotation(q.largest, q.comps),
      scale: q.scale ? this.dequantizeScale(q.scale) : null,
    };
  }

  /** @param {number[]} p metres @returns {number[]} steps */
  quantizePosition(p) {
    return [0, 1, 2].map((a) => clampCast(roundHalfAway((Math.fround(p[a]) - this.min[a]) * this.stepsPerM), this.positionMax[a]));
  }

  /** @param {number[]} q steps @returns {number[]} metres (f32 values) */
  dequantizePosition(q) {
    return [0, 1, 2].map((a) => Math.fround(this.stepExact !== null ? this.min[a] + q[a] * this.stepExact : this.min[a] + q[a] / this.stepsPerM));
  }

  /** Smallest three. @param {number[]} q `[x, y, z, w]` @returns {{largest: number, comps: number[]}} */
  quantizeRotation(q) {
    let v = q.map(Math.fround);
    const n2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2] + v[3] * v[3];
    if (!Number.isFinite(n2) || n2 < 1e-12) {
      v = [0, 0, 0, 1];
    } else {
      const n = Math.sqrt(n2);
      v = v.map((c) => c / n);
    }
    let largest = 0;
    for (let i = 1; i < 4; i++) if (Math.abs(v[i]) > Math.abs(v[largest])) largest = i;
    const sign = v[largest] < 0 ? -1 : 1;
    const scale = this.rotationMax / (2 * SQRT1_2);
    const comps = [];
    for (let i = 0; i < 4; i++) {
      if (i !== largest) comps.push(clampCast(roundHalfAway((v[i] * sign + SQRT1_2) * scale), this.rotationMax));
    }
    return { largest, comps };
  }

  /** @returns {number[]} a unit quaternion `[x, y, z, w]` (f32 values) */
  dequantizeRotation(largest, comps) {
    const step = (2 * SQRT1_2) / this.rotationMax;
    const small = comps.map((c) => Math.min(c, this.rotationMax) * step - SQRT1_2);
    const sum = small[0] * small[0] + small[1] * small[1] + small[2] * small[2];
    const big = Math.sqrt(Math.max(1 - sum, 0));
    const at = Math.min(largest, 3);
    const v = [];
    for (let i = 0, j = 0; i < 4; i++) v.push(i === at ? big : small[j++]);
    const n = Math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2] + v[3] * v[3]);
    return v.map((c) => Math.fround(c / n));
  }

  /** @param {number[]} s @returns {number[]} */
  quantizeScale(s) {
    return s.map((v) => clampCast(roundHalfAway(Math.fround(v) * this.scaleSteps), this.scaleMax));
  }

  /** @param {number[]} s @returns {number[]} (f32 values) */
  dequantizeScale(s) {
    return s.map((v) => Math.fround(v / this.scaleSteps));
  }

  /** Whether every field of `q` is inside this config's ranges. */
  isValid(q) {
    return q.pos.every((p, a) => p <= this.positionMax[a])
      && q.largest < 4
      && q.comps.every((c) => c <= this.rotationMax)
      && (q.scale === null || (this.scaleEnabled && q.scale.every((v) => v <= this.scaleMax)));
  }
}

// ---------------------------------------------------------------------------------------------
// Bit stream (12.2): least significant bit first, fields LSB first. Values up to 2^49 are exact
// in a Number, more than any field needs (positions 30 bits, residuals 32, Exp-Golomb 48).

class BitReader {
  constructor(bytes) {
    this.bytes = bytes;
    this.pos = 0;
  }

  get remaining() {
    return this.bytes.length * 8 - this.pos;
  }

  read(n) {
    if (n > this.remaining) throw truncated();
    let v = 0;
    let mul = 1;
    while (n > 0) {
      const off = this.pos & 7;
      const take = Math.min(8 - off, n);
      v += ((this.bytes[this.pos >> 3] >> off) & ((1 << take) - 1)) * mul;
      mul *= 2 ** take;
      this.pos += take;
      n -= take;
    }
    return v;
  }

  bool() {
    return this.read(1) === 1;
  }

  eg(k) {
    let zeros = 0;
    while (!this.bool()) {
      if (++zeros > EG_PREFIX_MAX) throw malformed('exp-golomb prefix too long');
    }
    const n = zeros + k + 1;
    return 2 ** (n - 1) + this.read(n - 1) - 2 ** k;
  }
}

class BitWriter {
  constructor() {
    this.bytes = [];
    this.bits = 0;
  }

  write(v, n) {
    for (let i = 0; i < n; i++) {
      if ((this.bits & 7) === 0) this.bytes.push(0);
      if (Math.floor(v / 2 ** i) % 2) this.bytes[this.bytes.length - 1] |= 1 << (this.bits & 7);
      this.bits++;
    }
  }

  eg(v, k) {
    const q = v + 2 ** k;
    const n = bitWidth(q);
    this.write(0, n - k - 1);
    this.write(1, 1);
    this.write(q - 2 ** (n - 1), n - 1);
  }
}

const unzigzag = (u) => (u % 2 === 0 ? u / 2 : -(u + 1) / 2);

function readVarint(bytes, at) {
  let v = 0;
  for (let i = 0; i < 10; i++) {
    if (at.pos >= bytes.length) throw truncated();
    const b = bytes[at.pos++];
    if (i === 9 && b > 1) throw malformed('varint overflow');
    v += (b & 0x7f) * 2 ** (7 * i);
    if ((b & 0x80) === 0) return v;
  }
  throw malformed('varint overflow');
}

function writeVarint(out, v) {
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
}

function readRotation(r, qz) {
  const largest = r.read(2);
  const comps = [r.read(qz.rotationBits), r.read(qz.rotationBits), r.read(qz.rotationBits)];
  return { largest, comps };
}

function readScale(r, qz) {
  if (!r.bool()) return null;
  return [r.read(qz.scaleBits), r.read(qz.scaleBits), r.read(qz.scaleBits)];
}

function readAbsolute(r, qz) {
  const pos = qz.positionBits.map((b) => r.read(b));
  const { largest, comps } = readRotation(r, qz);
  const q = { pos, largest, comps, scale: qz.scaleEnabled ? readScale(r, qz) : null };
  if (!qz.isValid(q)) throw outOfBounds();
  return q;
}

function writeAbsolute(w, qz, q) {
  for (let a = 0; a < 3; a++) w.write(q.pos[a], qz.positionBits[a]);
  w.write(q.largest, 2);
  for (const c of q.comps) w.write(c, qz.rotationBits);
  if (qz.scaleEnabled) {
    w.write(q.scale ? 1 : 0, 1);
    if (q.scale) for (const v of q.scale) w.write(v, qz.scaleBits);
  }
}

function readTriple(r) {
  const width = r.eg(WIDTH_EG_K) + 1;
  if (width > RESIDUAL_WIDTH_MAX) throw malformed('residual too wide');
  return [unzigzag(r.read(width)), unzigzag(r.read(width)), unzigzag(r.read(width))];
}

/** A delta body (12.4), parsed before its baseline is looked up. */
function readDelta(r, qz) {
  const predicted = r.bool();
  const pos = r.bool() ? readTriple(r) : null;
  let rot = null; // unchanged
  if (r.bool()) rot = r.bool() ? { residual: readTriple(r) } : { absolute: readRotation(r, qz) };
  const scale = qz.scaleEnabled && r.bool() ? { value: readScale(r, qz) } : null;
  return { predicted, pos, rot, scale };
}

const clampTo = (v, max) => (v < 0 ? 0 : v > max ? max : v);

/** The baseline `base` extrapolated by its motion to `tick` (12.4, "predict"). */
function predict(base, tick, qz) {
  const pos = base.q.pos.slice();
  const rot = base.q.comps.slice();
  const m = base.motion;
  if (m.dt === 0) return { pos, rot };
  const ahead = Math.min(Math.max(tick - base.tick, 0), m.dt * PREDICT_INTERVALS_MAX);
  // ahead · 2^16 < 2^51 and |dpos · ratio| < 2^50: exact in a Number.
  const ratio = Math.floor((ahead * 65536) / m.dt);
  for (let a = 0; a < 3; a++) pos[a] = clampTo(pos[a] + Math.floor((m.dpos[a] * ratio) / 65536), qz.positionMax[a]);
  if (m.rotValid) {
    for (let i = 0; i < 3; i++) rot[i] = clampTo(rot[i] + Math.floor((m.drot[i] * ratio) / 65536), qz.rotationMax);
  }
  return { pos, rot };
}

/** The value a delta decodes to against `base`, or null if out of range. */
function applyDelta(d, base, tick, qz) {
  const ref = d.predicted ? predict(base, tick, qz) : { pos: base.q.pos, rot: base.q.comps };
  const res = d.pos ?? [0, 0, 0];
  const pos = [];
  for (let a = 0; a < 3; a++) {
    const v = ref.pos[a] + res[a];
    if (v < 0 || v > qz.positionMax[a]) return null;
    pos.push(v);
  }
  let largest = base.q.largest;
  let comps;
  if (d.rot === null) {
    comps = ref.rot.slice();
  } else if (d.rot.residual) {
    comps = [];
    for (let i = 0; i < 3; i++) {
      const v = ref.rot[i] + d.rot.residual[i];
      if (v < 0 || v > qz.rotationMax) return null;
      comps.push(v);
    }
  } else {
    ({ largest, comps } = d.rot.absolute);
  }
  const q = { pos, largest, comps, scale: d.scale ? d.scale.value : base.q.scale };
  return qz.isValid(q) ? q : null;
}

/** A stored value with its motion since its own baseline (none for absolute values). */
function sample(tick, q, base) {
  if (!base) return { tick, q, motion: { dt: 0, dpos: [0, 0, 0], drot: [0, 0, 0], rotValid: false } };
  const rotValid = q.largest === base.q.largest;
  return {
    tick,
    q,
    motion: {
      dt: Math.min(tick - base.tick, U32_MAX),
      dpos: q.pos.map((p, a) => p - base.q.pos[a]),
      drot: rotValid ? q.comps.map((c, i) => c - base.q.comps[i]) : [0, 0, 0],
      rotValid,
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Sequence numbers and acks (12.5).

const seqDiff = (a, b) => (((a - b) & 0xffff) << 16) >> 16; // wrapping, as i16
const isNewer = (a, b) => seqDiff(a, b) > 0;

/**
 * One entity's values: the newest RECEIVER_BASELINES_PER_ENTITY by ascending tick, and the tick
 * it last left interest.
 */
class Replica {
  constructor() {
    this.samples = [];
    this.leftAt = null;
  }

  newestTick() {
    return this.samples.length ? this.samples[this.samples.length - 1].tick : null;
  }

  latest() {
    const s = this.samples[this.samples.length - 1];
    return s && (this.leftAt === null || this.leftAt < s.tick) ? s : null;
  }

  find(tick) {
    for (let i = this.samples.length - 1; i >= 0; i--) if (this.samples[i].tick === tick) return this.samples[i];
    return null;
  }

  insert(s) {
    const list = this.samples;
    const full = list.length === RECEIVER_BASELINES_PER_ENTITY;
    if (list.length === 0 || list[list.length - 1].tick < s.tick) {
      if (full) list.shift();
      list.push(s);
      return;
    }
    let at = list.length;
    while (at > 0 && list[at - 1].tick >= s.tick) {
      if (list[at - 1].tick === s.tick) return; // a value already held stays as it was
      at--;
    }
    if (full) {
      if (at === 0) return; // older than everything held
      list.shift();
      at--;
    }
    list.splice(at, 0, s);
  }

  dropThrough(tick) {
    while (this.samples.length && this.samples[0].tick <= tick) this.samples.shift();
  }
}

/**
 * The client's side of the transform stream (Rust's `ReplicaReceiver`): decodes server
 * datagrams against the baselines it holds, applies updates per entity in tick order whatever
 * order datagrams arrive in, ignores duplicate and too-old datagrams, and keeps the ack header
 * to send upstream. A datagram is acknowledged only if every record in it could be stored.
 */
export class TransformReceiver {
  #replicas = new Map();
  #forgotten = [];
  #latestSeq = 0;
  #received = 0n;
  #newestTick = null;

  /**
   * @param {object} transformConfig `Welcome.transform`
   * @param {number} [ownEntityId] the client's player entity: the server never sends it as a
   *   record, so any record for it is ignored
   */
  constructor(transformConfig, ownEntityId) {
    /** The quantizer of the session's config (pass it to {@link encodeClientDatagram}). */
    this.quantizer = new Quantizer(transformConfig);
    this.ownEntityId = ownEntityId ?? null;
  }

  /**
   * Applies one server datagram.
   * @param {Uint8Array} bytes the whole datagram, kind byte included
   * @param {number} [_nowMs] unused, as in the Rust receiver (kept for a future RTT estimate)
   * @returns {{seq: number, tick: number, freshness: 'Applied'|'Duplicate'|'TooOld',
   *   acked: boolean, records: number, updates: {id: number, tick: number, position: number[], rotation: number[], scale: number[]|null}[],
   *   left: number[], ownState: Uint8Array|null, echo: {clientTimeUs: number, holdUs: number, phaseUs: number}|null,
   *   stale: number, undecodable: number}}
   *   `updates`: entities whose latest value changed; `left`: entities that left interest;
   *   `ownState`: the own-player blob (decode with {@link decodeOwnState}); `echo`: the clock
   *   echo of a kind 0x03 datagram this client sent (12.4), for the clock sync; `records`: how
   *   many records it carried, whatever became of each.
   * @throws {WireError} if the datagram is malformed: nothing was applied, nothing is acked
   */
  handleDatagram(bytes, _nowMs) {
    const { seq, tick, blob, echo, records } = parseServerDatagram(bytes, this.quantizer);
    const out = { seq, tick, freshness: 'Applied', acked: false, records: records.length, updates: [], left: [], ownState: null, echo: null, stale: 0, undecodable: 0 };
    const arrival = this.#classify(seq);
    if (arrival !== 'New') {
      out.freshness = arrival;
      return out;
    }
    out.ownState = blob;
    out.echo = echo;
    out.acked = true;
    if (this.#newestTick === null || tick > this.#newestTick) this.#newestTick = tick;
    for (const rec of records) this.#apply(rec, tick, out);
    if (out.acked) this.#record(seq);
    return out;
  }

  /**
   * The ack header to put in the next client datagram.
   * @returns {{latest: number, received: bigint}}
   */
  ackState() {
    return { latest: this.#latestSeq, received: this.#received };
  }

  /**
   * The latest value of an entity, or null.
   * @param {number} id
   * @returns {{id: number, tick: number, position: number[], rotation: number[], scale: number[]|null}|null}
   */
  latest(id) {
    const s = this.#replicas.get(id)?.latest();
    return s ? { id, tick: s.tick, ...this.quantizer.dequantize(s.q) } : null;
  }

  /**
   * The latest quantized value of an entity, or null.
   * @param {number} id
   * @returns {{tick: number, q: object}|null}
   */
  latestQuantized(id) {
    const s = this.#replicas.get(id)?.latest();
    return s ? { tick: s.tick, q: s.q } : null;
  }

  /** Ids of the entities tracked, ascending. @returns {number[]} */
  ids() {
    return [...this.#replicas.keys()].sort((a, b) => a - b);
  }

  /**
   * Forgets an entity after `EntityRemoved`: its records at or before the newest tick received
   * so far are ignored from now on.
   * @param {number} id
   */
  forget(id) {
    this.#replicas.delete(id);
    if (this.#forgotten.length >= FORGOTTEN_MAX) this.#forgotten.shift();
    this.#forgotten.push([id, this.#newestTick ?? 0]);
  }

  #classify(seq) {
    if (this.#received === 0n || isNewer(seq, this.#latestSeq)) return 'New';
    const behind = seqDiff(this.#latestSeq, seq);
    if (behind < 0 || behind >= ACK_WINDOW) return 'TooOld';
    return (this.#received >> BigInt(behind)) & 1n ? 'Duplicate' : 'New';
  }

  #record(seq) {
    if (this.#received === 0n) {
      this.#latestSeq = seq;
      this.#received = 1n;
    } else if (isNewer(seq, this.#latestSeq)) {
      const ahead = seqDiff(seq, this.#latestSeq);
      this.#received = (ahead >= 64 ? 0n : BigInt.asUintN(64, this.#received << BigInt(ahead))) | 1n;
      this.#latestSeq = seq;
    } else {
      const behind = seqDiff(this.#latestSeq, seq);
      if (behind >= 0 && behind < ACK_WINDOW) this.#received |= 1n << BigInt(behind);
    }
  }

  #apply(rec, tick, out) {
    const { id } = rec;
    let r = this.#replicas.get(id);
    if (!r && this.#forgotten.some(([f, at]) => f === id && tick <= at)) {
      out.stale++;
      return;
    }
    if (!r) {
      if (this.#replicas.size >= ENTITIES_MAX) {
        out.undecodable++;
        out.acked = false;
        return;
      }
      r = new Replica();
      this.#replicas.set(id, r);
    }
    const newestTick = r.newestTick();
    const newer = (newestTick === null || newestTick < tick) && (r.leftAt === null || r.leftAt < tick);
    if (rec.kind === 'left') {
      if (newer) {
        r.leftAt = tick;
        r.dropThrough(tick);
        out.left.push(id);
      } else {
        out.stale++;
      }
      return;
    }
    if (rec.kind === 'absolute') {
      r.insert(sample(tick, rec.q, null));
    } else {
      const base = r.find(tick - rec.age);
      const q = base && applyDelta(rec.delta, base, tick, this.quantizer);
      if (!q) {
        // Not stored: the datagram must not be acknowledged (the server would promote a
        // baseline this receiver lacks).
        out.acked = false;
        if (newer) out.undecodable++;
        else out.stale++;
        return;
      }
      r.insert(sample(tick, q, base));
    }
    if (newer) {
      if (id !== this.ownEntityId) out.updates.push({ id, tick, ...this.quantizer.dequantize(r.latest().q) });
    } else {
      out.stale++;
    }
  }
}

/** Parses a whole server datagram (12.4); any error drops it whole. */
function parseServerDatagram(bytes, qz) {
  if (!(bytes instanceof Uint8Array)) throw new TypeError('datagram must be a Uint8Array');
  if (bytes.length === 0) throw new WireError('Empty', 'empty datagram');
  if (bytes[0] !== KIND_SERVER_STATE) throw new WireError('UnknownKind', `unknown datagram kind ${bytes[0]}`);
  if (bytes.length > DATAGRAM_BYTES_MAX) throw new WireError('Oversize', `datagram of ${bytes.length} bytes exceeds the limit`);
  if (bytes.length < 3) throw truncated();
  const seq = bytes[1] | (bytes[2] << 8);
  const at = { pos: 3 };
  const tick = readVarint(bytes, at);
  if (tick > Number.MAX_SAFE_INTEGER) throw malformed('tick beyond 2^53');
  if (at.pos >= bytes.length) throw truncated();
  const flags = bytes[at.pos++];
  if (flags & ~(FLAG_OWN_BLOB | FLAG_CLOCK_ECHO)) throw malformed('unknown flags');
  let blob = null;
  if (flags & FLAG_OWN_BLOB) {
    if (at.pos >= bytes.length) throw truncated();
    const len = bytes[at.pos++];
    if (len > OWN_BLOB_BYTES_MAX) throw new WireError('BlobTooLarge', `blob of ${len} bytes exceeds the ${OWN_BLOB_BYTES_MAX}-byte limit`);
    if (at.pos + len > bytes.length) throw truncated();
    blob = bytes.slice(at.pos, at.pos + len);
    at.pos += len;
  }
  // Clock echo: numbers up to 2^64 lose precision as Numbers; only this client's own clock
  // (performance.now() µs, far below 2^53) is ever echoed to it, so a larger one is a bad sample
  // the clock sync rejects, never an error.
  let echo = null;
  if (flags & FLAG_CLOCK_ECHO) {
    echo = { clientTimeUs: readVarint(bytes, at), holdUs: readVarint(bytes, at), phaseUs: readVarint(bytes, at) };
  }
  const common = readVarint(bytes, at);
  if (common > BASELINE_AGE_MAX_TICKS) throw malformed('baseline age too large');
  const count = readVarint(bytes, at);
  if (count > RECORDS_PER_DATAGRAM_MAX) throw new WireError('TooManyRecords', `${count} records exceed the per-datagram limit`);
  const r = new BitReader(bytes.subarray(at.pos));
  const records = [];
  let prev = null;
  for (let i = 0; i < count; i++) {
    const gap = r.eg(INDEX_EG_K);
    const id = prev === null ? gap : prev + 1 + gap;
    if (id > U32_MAX) throw malformed('entity id out of range');
    prev = id;
    if (r.bool()) {
      const age = r.bool() ? common : r.eg(AGE_EG_K) + 1;
      if (age === 0 || age > BASELINE_AGE_MAX_TICKS || age > tick) throw malformed('bad baseline age');
      records.push({ id, kind: 'delta', age, delta: readDelta(r, qz) });
    } else if (r.bool()) {
      records.push({ id, kind: 'absolute', q: readAbsolute(r, qz) });
    } else {
      records.push({ id, kind: 'left' });
    }
  }
  if (r.remaining >= 8) throw malformed('trailing bytes');
  return { seq, tick, blob, echo, records };
}

// ---------------------------------------------------------------------------------------------
// Client → server datagram (12.7).

function checkInt(v, lo, hi, what) {
  if (!Number.isInteger(v) || v < lo || v > hi) throw new RangeError(`${what} ${v} outside ${lo}..=${hi}`);
  return v;
}

function u64ToBig(v, what) {
  const b = typeof v === 'bigint' ? v : Number.isSafeInteger(v) ? BigInt(v) : -1n;
  if (b < 0n || b >= 1n << 64n) throw new RangeError(`${what} ${v} is not a u64`);
  return b;
}

/**
 * Encodes a client → server datagram.
 * @param {object} d
 * @param {number} d.seq the client's datagram counter, u16 (the reference client starts at 1)
 * @param {{latest: number, received: bigint|number}} d.ack {@link TransformReceiver#ackState}
 * @param {Uint8Array} [d.inputBlob] from {@link encodeInputBlob}; empty for none
 * @param {{id: number, transform: object}[]} [d.owned] transforms of entities this client
 *   owns (its player in client-authoritative worlds, apps it is moving), sent absolute
 * @param {Quantizer} [d.quantizer] the session's quantizer, required when `owned` is not empty
 * @param {number|null} [d.clientTimeUs] the client's clock, µs (a safe integer): sends kind
 *   0x03, which the server echoes in its next datagram for clock sync (12.4); null: kind 0x02
 * @returns {Uint8Array}
 */
export function encodeClientDatagram({ seq, ack, inputBlob = new Uint8Array(0), owned = [], quantizer, clientTimeUs = null }) {
  if (inputBlob.length > INPUT_BLOB_BYTES_MAX) throw new RangeError(`input blob of ${inputBlob.length} bytes exceeds ${INPUT_BLOB_BYTES_MAX}`);
  if (owned.length > OWNED_PER_DATAGRAM_MAX) throw new RangeError(`${owned.length} owned transforms exceed ${OWNED_PER_DATAGRAM_MAX}`);
  if (owned.length && !quantizer) throw new TypeError('owned transforms need the quantizer');
  const out = [clientTimeUs === null ? KIND_CLIENT_STATE : KIND_CLIENT_STATE_CLOCK];
  const latest = checkInt(ack.latest, 0, 0xffff, 'ack.latest');
  const received = u64ToBig(ack.received, 'ack.received');
  out.push(latest & 0xff, latest >> 8);
  for (let i = 0n; i < 64n; i += 8n) out.push(Number((received >> i) & 0xffn));
  checkInt(seq, 0, 0xffff, 'seq');
  out.push(seq & 0xff, seq >> 8);
  if (clientTimeUs !== null) writeVarint(out, checkInt(clientTimeUs, 0, Number.MAX_SAFE_INTEGER, 'clientTimeUs'));
  writeVarint(out, inputBlob.length);
  out.push(...inputBlob);
  out.push(owned.length);
  const w = new BitWriter();
  for (const { id, transform } of owned) {
    w.eg(checkInt(id, 0, U32_MAX, 'owned id'), OWNED_ID_EG_K);
    writeAbsolute(w, quantizer, quantizer.quantize(transform));
  }
  out.push(...w.bytes);
  if (out.length > DATAGRAM_BYTES_MAX) throw new RangeError(`datagram of ${out.length} bytes exceeds ${DATAGRAM_BYTES_MAX}`);
  return Uint8Array.from(out);
}

/**
 * Decodes a client → server datagram (as the server does; for tests and mock servers).
 * @param {Uint8Array} bytes
 * @param {Quantizer} quantizer
 * @returns {{ack: {latest: number, received: bigint}, seq: number, clientTimeUs: number|null, inputBlob: Uint8Array, owned: {id: number, q: object}[]}}
 * @throws {WireError}
 */
export function decodeClientDatagram(bytes, quantizer) {
  if (bytes.length === 0) throw new WireError('Empty', 'empty datagram');
  if (bytes[0] !== KIND_CLIENT_STATE && bytes[0] !== KIND_CLIENT_STATE_CLOCK) throw new WireError('UnknownKind', `unknown datagram kind ${bytes[0]}`);
  if (bytes.length > DATAGRAM_BYTES_MAX) throw new WireError('Oversize', `datagram of ${bytes.length} bytes exceeds the limit`);
  if (bytes.length < 1 + ACK_HEADER_BYTES + 2) throw truncated();
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const ack = { latest: view.getUint16(1, true), received: view.getBigUint64(3, true) };
  const seq = view.getUint16(11, true);
  const at = { pos: 13 };
  const clientTimeUs = bytes[0] === KIND_CLIENT_STATE_CLOCK ? readVarint(bytes, at) : null;
  const len = readVarint(bytes, at);
  if (len > INPUT_BLOB_BYTES_MAX) throw new WireError('BlobTooLarge', `blob of ${len} bytes exceeds the ${INPUT_BLOB_BYTES_MAX}-byte limit`);
  if (at.pos + len > bytes.length) throw truncated();
  const inputBlob = bytes.slice(at.pos, at.pos + len);
  at.pos += len;
  if (at.pos >= bytes.length) throw truncated();
  const count = bytes[at.pos++];
  if (count > OWNED_PER_DATAGRAM_MAX) throw new WireError('TooManyRecords', `${count} owned transforms exceed the limit`);
  const r = new BitReader(bytes.subarray(at.pos));
  const owned = [];
  for (let i = 0; i < count; i++) {
    const id = r.eg(OWNED_ID_EG_K);
    if (id > U32_MAX) throw malformed('entity id out of range');
    owned.push({ id, q: readAbsolute(r, quantizer) });
  }
  if (r.remaining >= 8) throw malformed('trailing bytes');
  return { ack, seq, clientTimeUs, inputBlob, owned };
}

// ---------------------------------------------------------------------------------------------
// Input blob (12.7.2) and own-player state blob (12.7.3).

/**
 * Encodes the input blob: inputs for ticks `firstTick`, `firstTick + 1`, …, keeping the last
 * INPUTS_PER_PACKET_MAX. Empty (no blob) when there are no inputs.
 * @param {number|bigint} firstTick the server tick of `inputs[0]`
 * @param {{move_x: number, move_z: number, yaw: number, run?: boolean, jump?: boolean}[]} inputs
 * @returns {Uint8Array}
 */
export function encodeInputBlob(firstTick, inputs) {
  if (inputs.length === 0) return new Uint8Array(0);
  const skip = Math.max(inputs.length - INPUTS_PER_PACKET_MAX, 0);
  const kept = inputs.slice(skip);
  let first = u64ToBig(firstTick, 'firstTick') + BigInt(skip);
  if (first >= 1n << 64n) first = (1n << 64n) - 1n; // saturating, as Rust
  const out = new Uint8Array(INPUTS_HEADER_BYTES + kept.length * CHARACTER_INPUT_BYTES);
  const view = new DataView(out.buffer);
  out[0] = INPUTS_FORMAT_VERSION;
  view.setBigUint64(1, first, true);
  out[9] = kept.length;
  kept.forEach((input, i) => {
    const o = INPUTS_HEADER_BYTES + i * CHARACTER_INPUT_BYTES;
    view.setInt8(o, checkInt(input.move_x, -128, 127, 'move_x'));
    view.setInt8(o + 1, checkInt(input.move_z, -128, 127, 'move_z'));
    view.setUint16(o + 2, checkInt(input.yaw, 0, 0xffff, 'yaw'), true);
    out[o + 4] = (input.run ? BUTTON_RUN : 0) | (input.jump ? BUTTON_JUMP : 0);
  });
  return out;
}

/**
 * Decodes an input blob (as the server does; for tests and mock servers).
 * @param {Uint8Array} bytes
 * @returns {{first_tick: number|bigint, inputs: {move_x: number, move_z: number, yaw: number, run: boolean, jump: boolean}[]}}
 * @throws {WireError}
 */
export function decodeInputBlob(bytes) {
  if (bytes.length < INPUTS_HEADER_BYTES) throw truncated();
  if (bytes[0] !== INPUTS_FORMAT_VERSION) throw malformed(`unknown input format version ${bytes[0]}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const first = view.getBigUint64(1, true);
  const count = bytes[9];
  if (count === 0 || count > INPUTS_PER_PACKET_MAX) throw malformed(`input count ${count}`);
  if (first + BigInt(count - 1) >= 1n << 64n) throw malformed('input ticks overflow');
  const needed = INPUTS_HEADER_BYTES + count * CHARACTER_INPUT_BYTES;
  if (bytes.length < needed) throw truncated();
  if (bytes.length > needed) throw new WireError('TrailingBytes', `${bytes.length - needed} trailing bytes`);
  const inputs = [];
  for (let o = INPUTS_HEADER_BYTES; o < needed; o += CHARACTER_INPUT_BYTES) {
    const buttons = bytes[o + 4];
    if (buttons & ~(BUTTON_RUN | BUTTON_JUMP)) throw malformed(`reserved button bits ${buttons}`);
    inputs.push({
      move_x: view.getInt8(o), move_z: view.getInt8(o + 1), yaw: view.getUint16(o + 2, true),
      run: (buttons & BUTTON_RUN) !== 0, jump: (buttons & BUTTON_JUMP) !== 0,
    });
  }
  return { first_tick: safe(first), inputs };
}

const safe = (b) => (b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b);

/**
 * Decodes the own-player state blob of a server datagram.
 * @param {Uint8Array} bytes `ownState` from {@link TransformReceiver#handleDatagram}
 * @returns {{server_tick: number|bigint, last_input_tick: number|bigint|null, teleport_seq: number,
 *   state: {position: number[], velocity: number[], yaw: number, grounded: boolean}}}
 *   `state` is a movement.js character state; `last_input_tick` null means none applied yet
 * @throws {WireError} on another length, version or a reserved flag bit (count and ignore)
 */
export function decodeOwnState(bytes) {
  if (bytes.length < OWN_STATE_BYTES) throw truncated();
  if (bytes.length > OWN_STATE_BYTES) throw new WireError('TrailingBytes', `${bytes.length - OWN_STATE_BYTES} trailing bytes`);
  if (bytes[0] !== OWN_STATE_FORMAT_VERSION) throw malformed(`unknown own-state version ${bytes[0]}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const last = view.getBigUint64(9, true);
  const flags = bytes[38];
  if (flags & ~FLAG_GROUNDED) throw malformed(`reserved flag bits ${flags}`);
  return {
    server_tick: safe(view.getBigUint64(1, true)),
    last_input_tick: last === 0xffff_ffff_ffff_ffffn ? null : safe(last),
    teleport_seq: bytes[17],
    state: {
      position: [0, 1, 2].map((i) => Math.fround(Math.fround(view.getInt32(18 + 4 * i, true)) / 1024)),
      velocity: [0, 1, 2].map((i) => view.getInt16(30 + 2 * i, true) / 256),
      yaw: view.getUint16(36, true),
      grounded: (flags & FLAG_GROUNDED) !== 0,
    },
  };
}
