// neonet browser client: the session layer over WebTransport or WebSocket.
//
//   import { connect } from '/neonet/client.js';
//   const client = connect({ name: 'ana' });
//   client.on('state', (s) => console.log(s.state));      // 'connecting' | 'joining' | 'connected' | 'reconnecting' | 'closed'
//   client.on('chat', (m) => console.log(m.from_name, m.body));
//   client.setInput({ move_x: 0, move_z: 127, yaw: 0, run: false, jump: false });
//   client.sendChat('hi');
//
// What it does (proto/PROTOCOL.md is the contract; the Rust reference is proto/src/client.rs and
// proto/src/predict/):
//   * fetches /connect.json, tries WebTransport (QUIC streams and datagrams, the native framing)
//     and falls back to a WebSocket by itself;
//   * joins with Hello and the token it stored for this name, holds a mirror of the world
//     (snapshot, entities, blueprints, chat, players), buffering the messages that overtake the
//     snapshot (bounded);
//   * decodes transform datagrams and acknowledges them in every upstream datagram, so the
//     server's delta baselines advance;
//   * interpolates remote entities a little in the past, predicts its own player from its inputs
//     and reconciles with the server's own-state blob;
//   * pings for RTT and clock sync, and reconnects with exponential backoff and jitter after a
//     lost connection (never after a kick, a ban or a protocol refusal).
//
// Every queue and buffer below has a named bound. Nothing is logged to the console: problems are
// events ('error', 'state') for the page to show.

import {
  CHANNEL,
  PROTOCOL_VERSION,
  DATAGRAM_BYTES_MAX,
  CHAT_HISTORY_LEN,
  HELD_EVENTS_MAX,
  EARLY_MESSAGES_MAX,
  SnapshotReassembly,
  encodeClientMsg,
  channelOfClientMsg,
  channelOfServerMsg,
  clientFrameBytesMax,
  serverFrameBytesMax,
  decodeServerMsg,
  encodeFrame,
  FrameDecoder,
  WireError,
} from './wire.js';
import { TransformReceiver, encodeClientDatagram, encodeInputBlob, decodeOwnState } from './datagram.js';
import { KinematicCharacter, CHARACTER_DEFAULTS } from './movement.js';

/** The protocol version this client speaks (wire.js's, re-exported for pages). */
export { PROTOCOL_VERSION };

// ---------------------------------------------------------------------------------------------
// Limits and tunables
// ---------------------------------------------------------------------------------------------

/** WebSocket subprotocol of protocol version 1 (the server's contract). */
const WS_PROTOCOL = 'neonet.1';
/** WebSocket message kind byte of a datagram; 0..3 are reliable frames on that channel. */
const WS_DATAGRAM = 0x80;

/** Bytes a reliable send may have queued in the transport before the link is declared stuck. */
export const SEND_BUFFER_BYTES_MAX = 4 * 1024 * 1024;
/** Above this many queued bytes a datagram is dropped rather than queued (it is unreliable). */
const DATAGRAM_DROP_BUFFERED_BYTES = 64 * 1024;
/** Listeners per event name: a page adding them in a loop is a bug, not a use. */
const LISTENERS_MAX = 64;

/** How long opening a WebTransport session may take before falling back, ms. */
export const WEBTRANSPORT_CONNECT_TIMEOUT_MS = 4000;
/** How long opening a WebSocket may take, ms. */
export const WEBSOCKET_CONNECT_TIMEOUT_MS = 8000;
/** From transport open to snapshot, ms: the server's join timeout is 10 s. */
export const JOIN_TIMEOUT_MS = 12_000;
/** Silence after which a joined connection counts as lost, ms (the server answers 5 pings a
 * second; the relay itself gives up on a silent peer after 2.5 s and keeps its session for a
 * resume). */
export const SILENCE_TIMEOUT_MS = 3000;
/** How long /connect.json may take, ms. */
const CONNECT_JSON_TIMEOUT_MS = 5000;

/** First reconnection delay, ms; doubles per attempt up to RECONNECT_DELAY_MAX_MS. */
export const RECONNECT_DELAY_BASE_MS = 500;
/** Longest reconnection delay, ms. */
export const RECONNECT_DELAY_MAX_MS = 15_000;
/** Reconnection attempts before giving up ('closed', reason 'Unreachable'). */
export const RECONNECT_ATTEMPTS_MAX = 40;

/** Close reasons after which the client never reconnects by itself. */
const TERMINAL_CLOSE_REASONS = new Set([
  'DuplicateUser', // another tab or device took this user over: fighting back would loop
  'Moderation', // kicked
  'ProtocolViolation',
  'VersionMismatch',
  'AuthFailed', // bad token or banned
  'ClientLeft', // we said goodbye
  'Flooding',
]);

/** Stored token key per display name (tokens are per user; localStorage is per origin). */
const TOKEN_KEY_PREFIX = 'neonet.token:';

// Clock sync (proto/src/predict/clock.rs, same names and values).
const CLOCK_WINDOW_SAMPLES = 16;
const CLOCK_FAST_SAMPLES = 8;
const PING_INTERVAL_FAST_MS = 50;
const PING_INTERVAL_MS = 200;
const OFFSET_JUMP_US = 50_000;
const LEAD_MARGIN_TICKS = 1.0;
const LEAD_MARGIN_ECHO_TICKS = 0.5;
const ECHO_MARGIN_MAX_TICKS = 1.5;
const ECHO_SPLIT_WIDE_BELOW = 0.25;
const ECHO_SPLIT_NARROW_ABOVE = 5 / 12;
/** With clock echoes, a stream ping goes only after this long without an upstream datagram
 * (proto/src/client.rs PING_FALLBACK_SILENCE): the server's idle timeout is 2.5 s. */
const PING_FALLBACK_SILENCE_MS = 1000;
const TICK_RATE_ADJUST_MAX = 0.1;
const TICK_RATE_GAIN_PER_TICK = 0.05;
const TICK_JUMP_AHEAD_TICKS = 3.0;
const TICK_JUMP_THRESHOLD_TICKS = 8.0;
const TICK_CATCH_UP_MAX = 4;
const RTT_SAMPLE_MAX_US = 5_000_000;

// Prediction (proto/src/predict/predictor.rs).
/** Unacknowledged predicted ticks kept. */
export const PREDICTION_HISTORY_MAX = 128;
/** Inputs per upstream datagram (PROTOCOL.md 12.7.2). */
const INPUTS_PER_PACKET_MAX = 32;
/** A correction whose visual error exceeds this snaps instead of gliding, metres. */
const SNAP_DISTANCE_M = 2.0;
/** Time constant of the visual error's decay, seconds. */
const SMOOTHING_TIME_CONSTANT_S = 0.1;

// Interpolation (proto/src/predict/interp.rs).
/** Samples kept per remote entity. */
export const INTERP_SAMPLES_MAX = 32;
/** Smallest render delay, ms: about 100 ms behind the newest tick at 30 Hz, 3 send intervals. */
export const RENDER_DELAY_MIN_MS = 100;
/** Largest render delay, ms. */
export const RENDER_DELAY_MAX_MS = 350;
/** Longest extrapolation past the newest sample, ms. */
const EXTRAPOLATION_MAX_MS = 100;
/** A move between two samples faster than this is a teleport, m/s. */
const TELEPORT_SPEED_MPS = 60;
/** Remote entities tracked for interpolation: the world's entity limit. */
const INTERP_ENTITIES_MAX = 100_000;
const EWMA_GAIN = 1 / 16;
const DELAY_SLEW_PER_S = 0.1;

/** Corrections remembered for the per-second rate the overlay graphs. */
const CORRECTION_TIMES_MAX = 256;

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

const nowMs = () => performance.now();
/** Wire integers may come as BigInt (u64): every value used here fits a double exactly. */
const num = (x) => (typeof x === 'bigint' ? Number(x) : x);
const errText = (e) => (e && e.message ? e.message : String(e));

function hexToBytes(hex) {
  if (typeof hex !== 'string' || !/^([0-9a-fA-F]{2})+$/.test(hex)) {
    throw new Error(`cert_sha256 is not hex: ${hex}`);
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const dist3 = (a, b) => Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);

/** Largest frame body the client accepts from the server on `channel` (World: the snapshot). */
const inboundFrameMax = serverFrameBytesMax;
/** Largest frame body the client may send on `channel`. */
const outboundFrameMax = clientFrameBytesMax;

// ---------------------------------------------------------------------------------------------
// Links: one transport connection, carrying frames per channel and datagrams.
//
// A link calls link.onFrame(channel, body), link.onDatagram(bytes) and, exactly once,
// link.onClose(detail). sendFrame throws if the link is unusable; sendDatagram returns false
// when the datagram was dropped.
// ---------------------------------------------------------------------------------------------

class LinkBase {
  constructor(kind) {
    /** 'webtransport' | 'websocket' */
    this.kind = kind;
    this.onFrame = () => {};
    this.onDatagram = () => {};
    this.onClose = () => {};
    this.closed = false;
    this.bytesIn = 0;
    this.bytesOut = 0;
    this.datagramsDropped = 0;
  }

  /** Reports the end once; later calls are ignored. */
  finish(detail) {
    if (this.closed) return;
    this.closed = true;
    this.onClose(detail);
  }
}

/** WebTransport: one unidirectional stream per channel and direction, QUIC datagrams. */
class WebTransportLink extends LinkBase {
  /**
   * @param {string} url https URL of the relay's WebTransport endpoint
   * @param {Uint8Array|null} certHash SHA-256 of a development certificate to pin, if any
   */
  static async open(url, certHash) {
    if (typeof WebTransport === 'undefined') throw new Error('this browser has no WebTransport');
    const options = {};
    if (certHash) options.serverCertificateHashes = [{ algorithm: 'sha-256', value: certHash }];
    let wt;
    try {
      wt = new WebTransport(url, options);
    } catch (e) {
      throw new Error(`WebTransport to ${url} refused: ${errText(e)}`);
    }
    // Observe `closed` at once so a failed handshake is never an unhandled rejection.
    const closed = wt.closed.then(
      (info) => `closed by the server (${info?.reason || 'no reason'})`,
      (e) => errText(e),
    );
    try {
      await withTimeout(wt.ready, WEBTRANSPORT_CONNECT_TIMEOUT_MS, 'WebTransport handshake');
    } catch (e) {
      try {
        wt.close();
      } catch {
        /* already failed */
      }
      throw new Error(`WebTransport to ${url} failed: ${errText(e)}`);
    }
    const link = new WebTransportLink(wt);
    closed.then((detail) => link.finish(detail));
    link.readStreams();
    link.readDatagrams();
    return link;
  }

  constructor(wt) {
    super('webtransport');
    this.wt = wt;
    /** channel -> { writer, queued: Promise, pendingBytes } */
    this.out = new Map();
    /** Channels the server already opened a stream for. */
    this.inChannels = new Set();
    const dg = wt.datagrams;
    this.dgWriter = (typeof dg.createWritable === 'function' ? dg.createWritable() : dg.writable).getWriter();
  }

  get maxDatagramSize() {
    return Math.min(this.wt.datagrams.maxDatagramSize || 1200, DATAGRAM_BYTES_MAX);
  }

  fail(detail) {
    try {
      this.wt.close({ closeCode: 0, reason: detail.slice(0, 100) });
    } catch {
      /* closing anyway */
    }
    this.finish(detail);
  }

  sendFrame(channel, body) {
    if (this.closed) throw new Error('link closed');
    let st = this.out.get(channel);
    if (!st) {
      // The stream opens asynchronously; writes queue behind it in order. Its first byte is the
      // channel id (PROTOCOL.md section 1).
      st = { writer: null, queued: null, pendingBytes: 0 };
      st.queued = this.wt.createUnidirectionalStream().then(async (stream) => {
        st.writer = stream.getWriter();
        await st.writer.write(new Uint8Array([channel]));
      });
      this.out.set(channel, st);
    }
    const frame = encodeFrame(body);
    st.pendingBytes += frame.length;
    if (st.pendingBytes > SEND_BUFFER_BYTES_MAX) {
      this.fail(`send buffer of channel ${channel} over ${SEND_BUFFER_BYTES_MAX} bytes: the server is not reading`);
      throw new Error('link stuck');
    }
    this.bytesOut += frame.length;
    st.queued = st.queued
      .then(() => st.writer.write(frame))
      .then(() => {
        st.pendingBytes -= frame.length;
      })
      .catch((e) => this.fail(`send on channel ${channel} failed: ${errText(e)}`));
  }

  sendDatagram(bytes) {
    if (this.closed) return false;
    if (bytes.length > this.maxDatagramSize || this.dgWriter.desiredSize <= 0) {
      this.datagramsDropped++;
      return false;
    }
    this.bytesOut += bytes.length;
    this.dgWriter.write(bytes).catch(() => {});
    return true;
  }

  async readStreams() {
    const reader = this.wt.incomingUnidirectionalStreams.getReader();
    try {
      for (;;) {
        const { value: stream, done } = await reader.read();
        if (done) return;
        this.readStream(stream);
      }
    } catch {
      // The session ended: `closed` reports why.
    }
  }

  async readStream(stream) {
    const reader = stream.getReader();
    let channel = -1;
    let decoder = null;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) {
          decoder?.finish();
          return;
        }
        if (this.closed) return;
        this.bytesIn += value.length;
        let chunk = value;
        if (channel < 0) {
          if (chunk.length === 0) continue;
          channel = chunk[0];
          if (channel > CHANNEL.Events) return this.fail(`stream opened with channel byte ${channel}`);
          if (this.inChannels.has(channel)) return this.fail(`second stream for channel ${channel}`);
          this.inChannels.add(channel);
          decoder = new FrameDecoder(inboundFrameMax(channel));
          chunk = chunk.subarray(1);
        }
        decoder.push(chunk);
        for (let body; (body = decoder.next()); ) {
          if (this.closed) return;
          this.onFrame(channel, body);
        }
      }
    } catch (e) {
      if (!this.closed) this.fail(e instanceof WireError ? `channel ${channel}: ${errText(e)}` : errText(e));
    }
  }

  async readDatagrams() {
    const reader = this.wt.datagrams.readable.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.closed) return;
        this.bytesIn += value.length;
        this.onDatagram(value);
      }
    } catch {
      // The session ended.
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    try {
      this.wt.close();
    } catch {
      /* already closed */
    }
  }
}

/** WebSocket: one binary message per frame or datagram, byte 0 says which. */
class WebSocketLink extends LinkBase {
  static open(url) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(url, [WS_PROTOCOL]);
      } catch (e) {
        reject(new Error(`WebSocket to ${url} refused: ${errText(e)}`));
        return;
      }
      ws.binaryType = 'arraybuffer';
      const timer = setTimeout(() => {
        ws.close();
        reject(new Error(`WebSocket to ${url} timed out after ${WEBSOCKET_CONNECT_TIMEOUT_MS} ms`));
      }, WEBSOCKET_CONNECT_TIMEOUT_MS);
      ws.onopen = () => {
        clearTimeout(timer);
        if (ws.protocol !== WS_PROTOCOL) {
          ws.close();
          reject(new Error(`WebSocket server chose subprotocol "${ws.protocol}", not ${WS_PROTOCOL}`));
          return;
        }
        resolve(new WebSocketLink(ws));
      };
      ws.onerror = () => {};
      ws.onclose = (ev) => {
        clearTimeout(timer);
        reject(new Error(`WebSocket to ${url} closed before opening (code ${ev.code})`));
      };
    });
  }

  constructor(ws) {
    super('websocket');
    this.ws = ws;
    ws.onmessage = (ev) => this.receive(ev.data);
    ws.onclose = (ev) => this.finish(`WebSocket closed (code ${ev.code}${ev.reason ? `, ${ev.reason}` : ''})`);
    ws.onerror = () => {};
  }

  get maxDatagramSize() {
    return DATAGRAM_BYTES_MAX;
  }

  receive(data) {
    if (this.closed) return;
    if (!(data instanceof ArrayBuffer)) return this.fail('text message on a binary protocol');
    const bytes = new Uint8Array(data);
    this.bytesIn += bytes.length;
    if (bytes.length === 0) return this.fail('empty WebSocket message');
    const kind = bytes[0];
    const body = bytes.subarray(1);
    if (kind === WS_DATAGRAM) {
      if (body.length <= DATAGRAM_BYTES_MAX) this.onDatagram(body);
      return;
    }
    if (kind > CHANNEL.Events) return this.fail(`unknown WebSocket message kind ${kind}`);
    if (body.length > inboundFrameMax(kind)) return this.fail(`frame of ${body.length} bytes on channel ${kind}`);
    this.onFrame(kind, body);
  }

  fail(detail) {
    this.ws.close(1002, detail.slice(0, 100));
    this.finish(detail);
  }

  send(kind, body) {
    const msg = new Uint8Array(1 + body.length);
    msg[0] = kind;
    msg.set(body, 1);
    this.bytesOut += msg.length;
    this.ws.send(msg);
  }

  sendFrame(channel, body) {
    if (this.closed) throw new Error('link closed');
    if (this.ws.bufferedAmount > SEND_BUFFER_BYTES_MAX) {
      this.fail(`send buffer over ${SEND_BUFFER_BYTES_MAX} bytes: the server is not reading`);
      throw new Error('link stuck');
    }
    this.send(channel, body);
  }

  sendDatagram(bytes) {
    if (this.closed || this.ws.bufferedAmount > DATAGRAM_DROP_BUFFERED_BYTES) {
      this.datagramsDropped++;
      return false;
    }
    this.send(WS_DATAGRAM, bytes);
    return true;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.ws.close(1000);
  }
}

// ---------------------------------------------------------------------------------------------
// Clock sync and the prediction tick clock (a port of proto/src/predict/clock.rs). Times are
// the page's performance.now() in microseconds.
// ---------------------------------------------------------------------------------------------

class ClockSync {
  constructor(tickHz) {
    this.periodUs = 1e6 / Math.max(1, tickHz);
    /** The last CLOCK_WINDOW_SAMPLES samples: { rttUs, offsetUs }. */
    this.window = [];
    this.rttSorted = [];
    this.samplesTotal = 0;
    this.offsetUs = 0;
    /** [server time us, tick position] of the newest sample. */
    this.anchor = null;
    this.lastPingUs = null;
    /** When the last datagram asking for a clock echo (kind 0x03) went out. */
    this.lastStampUs = null;
    /** Samples come from clock echoes (exact tick phase); pongs are then ignored. */
    this.exact = false;
    /** With echoes, the lead margin in use, ticks (see updateEchoMargin), and whether the two
     * acknowledgement waits share S + period rather than S. */
    this.echoMargin = null;
    this.echoSplitWide = false;
    this.rejected = 0;
  }

  pingIntervalUs() {
    return (this.window.length < CLOCK_FAST_SAMPLES ? PING_INTERVAL_FAST_MS : PING_INTERVAL_MS) * 1000;
  }

  /** Whether a stream ping is due: only until the first clock echo (then see pump's fallback). */
  pingDue(nowUs) {
    return !this.exact && (this.lastPingUs === null || nowUs >= this.lastPingUs + this.pingIntervalUs());
  }

  nextPingUs() {
    if (this.exact) return Infinity;
    return this.lastPingUs === null ? 0 : this.lastPingUs + this.pingIntervalUs();
  }

  /** Whether the next upstream datagram should ask for a clock echo (kind 0x03). */
  stampDue(nowUs) {
    return this.lastStampUs === null || nowUs >= this.lastStampUs + this.pingIntervalUs();
  }

  /** A pong: ignored once clock echoes arrive (their phase is exact, a pong's is not). */
  handleSample(sendUs, serverTimeUs, serverTick, recvUs) {
    if (this.exact) return null;
    const rttUs = recvUs - sendUs;
    if (!(rttUs >= 0) || rttUs > RTT_SAMPLE_MAX_US) {
      this.rejected++;
      return null;
    }
    this.addSample(rttUs, sendUs + rttUs / 2, serverTimeUs, serverTick + 0.5, 0);
    return rttUs;
  }

  /**
   * A clock echo (PROTOCOL.md 12.4) in the datagram of server tick `tick`, received at `recvUs`.
   * The first one starts the window afresh: echo samples are on the server's tick timeline, pong
   * samples on its clock. Returns the round trip, µs, or null for an impossible sample.
   */
  handleEcho(echo, tick, recvUs) {
    const rttUs = recvUs - echo.clientTimeUs - echo.holdUs;
    if (!(rttUs >= 0) || rttUs > RTT_SAMPLE_MAX_US) {
      this.rejected++;
      return null;
    }
    if (!this.exact) {
      this.exact = true;
      this.window = [];
      this.rttSorted = [];
      this.samplesTotal = 0;
      this.anchor = null;
      this.echoMargin = null;
    }
    const position = tick + 1 + echo.phaseUs / this.periodUs;
    this.addSample(rttUs, recvUs - rttUs / 2, position * this.periodUs, position, echo.phaseUs);
    this.updateEchoMargin();
    return rttUs;
  }

  /**
   * With clock echoes, the lead margin that puts this client's sends where both sides' QUIC
   * acknowledgements ride on a datagram (PROTOCOL.md 12.7.2; clock.rs `update_echo_margin`).
   */
  updateEchoMargin() {
    const lo = this.rttQuantileUs(0, 1);
    const hi = this.rttQuantileUs(7, 8);
    if (lo === null) return;
    const p = this.periodUs;
    const writeUs = Math.min(...this.window.map((x) => x.writeUs));
    const mod = (a, b) => ((a % b) + b) % b;
    const s = mod(-(lo + writeUs), p);
    if (s < p * ECHO_SPLIT_WIDE_BELOW) this.echoSplitWide = true;
    else if (s > p * ECHO_SPLIT_NARROW_ABOVE) this.echoSplitWide = false;
    const serverWait = this.echoSplitWide ? (s + p) / 2 : s / 2;
    const transit = hi / 2 + (hi - lo) / 2;
    const margin = mod((serverWait - transit + lo / 2) / p, 1);
    if (!Number.isFinite(margin)) return;
    const prev = this.echoMargin;
    this.echoMargin = prev !== null && margin + 1 < ECHO_MARGIN_MAX_TICKS
      && Math.abs(margin + 1 - prev) < Math.abs(margin - prev) ? margin + 1 : margin;
  }

  addSample(rttUs, midUs, serverTimeUs, position, writeUs) {
    const offsetUs = serverTimeUs - midUs;
    if (this.window.length === CLOCK_WINDOW_SAMPLES) this.window.shift();
    this.window.push({ rttUs, offsetUs, writeUs });
    this.rttSorted = this.window.map((s) => s.rttUs).sort((a, b) => a - b);
    this.samplesTotal++;
    if (this.anchor === null || serverTimeUs >= this.anchor[0]) this.anchor = [serverTimeUs, position];
    let best = this.window[0];
    for (const s of this.window) if (s.rttUs < best.rttUs) best = s;
    if (this.samplesTotal === 1 || Math.abs(best.offsetUs - this.offsetUs) > OFFSET_JUMP_US) {
      this.offsetUs = best.offsetUs;
    } else {
      this.offsetUs += (best.offsetUs - this.offsetUs) * 0.25;
    }
  }

  rttQuantileUs(num_, den) {
    const n = this.rttSorted.length;
    return n === 0 ? null : this.rttSorted[Math.floor(((n - 1) * num_) / den)];
  }

  /** Median round trip of the window, microseconds, or null. */
  rttUs() {
    return this.rttQuantileUs(1, 2);
  }

  serverTick(nowUs) {
    if (this.anchor === null) return null;
    const [at, position] = this.anchor;
    return position + (nowUs + this.offsetUs - at) / this.periodUs;
  }

  leadTicks() {
    const margin = this.exact ? (this.echoMargin ?? LEAD_MARGIN_ECHO_TICKS) : LEAD_MARGIN_TICKS;
    const lo = this.rttQuantileUs(0, 1);
    const hi = this.rttQuantileUs(7, 8);
    if (lo === null) return margin;
    return (hi / 2 + (hi - lo) / 2) / this.periodUs + margin;
  }

  targetTick(nowUs) {
    const s = this.serverTick(nowUs);
    return s === null ? null : s + this.leadTicks();
  }
}

class TickClock {
  constructor(tickHz) {
    this.periodUs = 1e6 / Math.max(1, tickHz);
    this.nextAtUs = 0;
    this.nextTick = null;
    this.jumps = 0;
  }

  alpha(nowUs) {
    const since = nowUs - (this.nextAtUs - this.periodUs);
    return Math.min(1, Math.max(0, since / this.periodUs));
  }

  /** The next due prediction tick at `nowUs`, or null; call until null. */
  poll(nowUs, sync) {
    const raw = sync.targetTick(nowUs);
    if (raw === null || !Number.isFinite(raw)) return null;
    const target = Math.min(Math.max(raw, 0), 2 ** 52);
    if (this.nextTick === null) {
      const t = Math.floor(target);
      this.nextTick = t + 1;
      this.nextAtUs = nowUs + this.periodUs;
      return t;
    }
    if (nowUs < this.nextAtUs) return null;
    const next = this.nextTick;
    const err = target - next;
    if (err > TICK_JUMP_AHEAD_TICKS) {
      this.jumps++;
      const t = Math.floor(target);
      this.nextTick = t + 1;
      this.nextAtUs = nowUs + this.periodUs;
      return t;
    }
    if (err < -TICK_JUMP_THRESHOLD_TICKS) {
      this.jumps++;
      this.nextAtUs = nowUs + (-err - 1) * this.periodUs;
      return null;
    }
    const adjust = Math.min(TICK_RATE_ADJUST_MAX, Math.max(-TICK_RATE_ADJUST_MAX, err * TICK_RATE_GAIN_PER_TICK));
    this.nextAtUs += this.periodUs * (1 - adjust);
    if (this.nextAtUs < nowUs - this.periodUs * TICK_CATCH_UP_MAX) this.nextAtUs = nowUs;
    this.nextTick = next + 1;
    return next;
  }
}

// ---------------------------------------------------------------------------------------------
// Prediction and reconciliation of the own player (a port of proto/src/predict/predictor.rs).
// States are quantized on both sides, so "the prediction matched" is plain equality.
// ---------------------------------------------------------------------------------------------

function statesEqual(a, b) {
  return (
    a.position[0] === b.position[0] && a.position[1] === b.position[1] && a.position[2] === b.position[2] &&
    a.velocity[0] === b.velocity[0] && a.velocity[1] === b.velocity[1] && a.velocity[2] === b.velocity[2] &&
    a.yaw === b.yaw && a.grounded === b.grounded
  );
}

class Predictor {
  constructor(model, dt) {
    this.model = model;
    this.dt = dt;
    /** Unacknowledged ticks, oldest first, consecutive: { tick, input, state }. */
    this.history = [];
    /** [state after latest, state before it] */
    this.state = null;
    this.latest = null;
    this.lastServerTick = null;
    this.teleportSeq = null;
    this.lastInput = { move_x: 0, move_z: 0, yaw: 0, run: false, jump: false };
    this.visualOffset = [0, 0, 0];
    this.stats = { checked: 0, corrections: 0, teleports: 0, snaps: 0, replayed: 0, errorMaxM: 0, errorSumM: 0 };
  }

  step(tick, input) {
    if (this.latest === null || this.state === null || tick <= this.latest) return false;
    let cur = this.state[0];
    const gap = tick - this.latest - 1;
    if (gap >= PREDICTION_HISTORY_MAX) this.history.length = 0;
    const fillFrom = this.latest + 1 + Math.max(0, gap - PREDICTION_HISTORY_MAX);
    let prev = cur;
    for (let t = fillFrom; t <= tick; t++) {
      const inp = t === tick ? input : this.lastInput;
      prev = cur;
      cur = this.model.step(prev, inp, this.dt);
      this.history.push({ tick: t, input: inp, state: cur });
    }
    if (this.history.length > PREDICTION_HISTORY_MAX) this.history.splice(0, this.history.length - PREDICTION_HISTORY_MAX);
    this.lastInput = input;
    this.state = [cur, prev];
    this.latest = tick;
    return true;
  }

  /** [first tick, inputs] of the newest INPUTS_PER_PACKET_MAX unacknowledged ticks, or null. */
  unackedInputs() {
    const skip = Math.max(0, this.history.length - INPUTS_PER_PACKET_MAX);
    if (this.history.length === 0) return null;
    return [this.history[skip].tick, this.history.slice(skip).map((e) => e.input)];
  }

  /** Handles an authoritative own state; returns 'matched' | 'corrected' | 'teleported' | 'adopted' | 'stale'. */
  reconcile(serverTick, teleportSeq, authState) {
    if (this.lastServerTick !== null && serverTick <= this.lastServerTick) return 'stale';
    this.lastServerTick = serverTick;
    const teleport = this.teleportSeq !== null && this.teleportSeq !== teleportSeq;
    this.teleportSeq = teleportSeq;
    const auth = this.model.quantize(authState);
    if (this.latest === null || this.state === null) {
      this.adopt(serverTick, auth, true);
      return 'adopted';
    }
    const cur = this.state[0];
    if (serverTick > this.latest) {
      const err = dist3(this.model.position(cur), this.model.position(auth));
      this.adopt(serverTick, auth, teleport || err > SNAP_DISTANCE_M);
      if (teleport) this.stats.teleports++;
      return 'adopted';
    }
    let drop = 0;
    while (drop < this.history.length && this.history[drop].tick < serverTick) drop++;
    this.history.splice(0, drop);
    let predicted = null;
    if (this.history.length > 0 && this.history[0].tick === serverTick) predicted = this.history.shift().state;
    this.stats.checked++;
    if (!teleport && predicted !== null && statesEqual(predicted, auth)) return 'matched';
    const err = dist3(this.model.position(predicted ?? cur), this.model.position(auth));
    const shownBefore = this.model.position(cur);
    let st = auth;
    let prev = st;
    for (const e of this.history) {
      prev = st;
      st = this.model.step(prev, e.input, this.dt);
      e.state = st;
    }
    this.state = [st, prev];
    this.stats.replayed += this.history.length;
    if (teleport) {
      this.stats.teleports++;
      this.snap();
      return 'teleported';
    }
    this.stats.corrections++;
    this.stats.errorMaxM = Math.max(this.stats.errorMaxM, err);
    this.stats.errorSumM += err;
    const shownAfter = this.model.position(st);
    for (let i = 0; i < 3; i++) this.visualOffset[i] += shownBefore[i] - shownAfter[i];
    if (Math.hypot(...this.visualOffset) > SNAP_DISTANCE_M) this.snap();
    return 'corrected';
  }

  adopt(tick, state, snap) {
    const before = this.state ? this.model.position(this.state[0]) : null;
    this.history.length = 0;
    if (before && !snap) {
      const a = this.model.position(state);
      for (let i = 0; i < 3; i++) this.visualOffset[i] += before[i] - a[i];
    } else if (before) {
      this.snap();
    }
    this.state = [state, state];
    this.latest = tick;
  }

  snap() {
    this.visualOffset = [0, 0, 0];
    this.stats.snaps++;
  }

  advanceVisual(dtS) {
    const k = Math.exp(-Math.max(0, dtS) / SMOOTHING_TIME_CONSTANT_S);
    for (let i = 0; i < 3; i++) this.visualOffset[i] *= k;
  }

  /** Position to render between the previous and latest tick at `alpha`, with the fading correction. */
  renderPosition(alpha) {
    if (!this.state) return null;
    const a = Math.min(1, Math.max(0, alpha));
    const p0 = this.model.position(this.state[1]);
    const p1 = this.model.position(this.state[0]);
    return [0, 1, 2].map((i) => p0[i] + (p1[i] - p0[i]) * a + this.visualOffset[i]);
  }
}

// ---------------------------------------------------------------------------------------------
// Interpolation of remote entities (a port of proto/src/predict/interp.rs): per-entity sample
// buffers rendered at an adaptive delay behind the newest tick, bounded extrapolation.
// ---------------------------------------------------------------------------------------------

const lerp3 = (a, b, t) => [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t];

function slerp(a, b, t) {
  let dot = a[0] * b[0] + a[1] * b[1] + a[2] * b[2] + a[3] * b[3];
  let bb = b;
  if (dot < 0) {
    dot = -dot;
    bb = [-b[0], -b[1], -b[2], -b[3]];
  }
  let wa = 1 - t;
  let wb = t;
  if (dot <= 0.9995) {
    const theta = Math.acos(Math.min(1, dot));
    const s = Math.sin(theta);
    wa = Math.sin((1 - t) * theta) / s;
    wb = Math.sin(t * theta) / s;
  }
  const q = [0, 1, 2, 3].map((i) => a[i] * wa + bb[i] * wb);
  const n = Math.hypot(...q);
  return n > 0 && Number.isFinite(n) ? q.map((c) => c / n) : a;
}

class Interpolation {
  constructor(tickHz) {
    this.periodUs = 1e6 / Math.max(1, tickHz);
    /** id -> samples [{ tick, position, rotation }], ascending tick, at most INTERP_SAMPLES_MAX */
    this.entities = new Map();
    this.newestTick = null;
    this.transitUs = null;
    this.lastTransitUs = null;
    this.intervalUs = this.periodUs;
    this.jitterUs = 0;
    this.delayUs = this.clampDelay(3 * this.intervalUs);
    this.lastFrame = null;
    this.stats = { frames: 0, underruns: 0, packets: 0 };
  }

  clampDelay(us) {
    return Math.min(RENDER_DELAY_MAX_MS * 1000, Math.max(RENDER_DELAY_MIN_MS * 1000, us));
  }

  onPacket(nowUs, tick) {
    this.stats.packets++;
    const transit = nowUs - tick * this.periodUs;
    if (this.lastTransitUs !== null) this.jitterUs += (Math.abs(transit - this.lastTransitUs) - this.jitterUs) * EWMA_GAIN;
    this.lastTransitUs = transit;
    this.transitUs = this.transitUs === null ? transit : this.transitUs + (transit - this.transitUs) * EWMA_GAIN;
    if (this.newestTick === null) this.newestTick = tick;
    else if (tick > this.newestTick) {
      this.intervalUs += ((tick - this.newestTick) * this.periodUs - this.intervalUs) * EWMA_GAIN;
      this.newestTick = tick;
    }
  }

  push(id, tick, transform) {
    let s = this.entities.get(id);
    if (!s) {
      if (this.entities.size >= INTERP_ENTITIES_MAX) return;
      s = [];
      this.entities.set(id, s);
    }
    let pos = s.length;
    if (pos > 0 && s[pos - 1].tick >= tick) {
      pos = s.findIndex((x) => x.tick >= tick);
      if (s[pos].tick === tick) return;
    }
    if (pos === 0 && s.length >= INTERP_SAMPLES_MAX) return;
    let teleport = false;
    if (pos > 0) {
      const prev = s[pos - 1];
      const dt = (tick - prev.tick) * (this.periodUs / 1e6);
      if (dist3(prev.position, transform.position) > TELEPORT_SPEED_MPS * dt) teleport = true;
    }
    const sample = { tick, position: transform.position, rotation: transform.rotation, teleport };
    while (s.length >= INTERP_SAMPLES_MAX) {
      s.shift();
      pos--;
    }
    s.splice(pos, 0, sample);
  }

  remove(id) {
    this.entities.delete(id);
  }

  clear() {
    this.entities.clear();
  }

  /** The fractional server tick to render remote entities at (monotonic), or null. */
  beginFrame(nowUs) {
    if (this.transitUs === null) return null;
    const target = this.clampDelay(3 * this.intervalUs + 3 * this.jitterUs);
    if (this.lastFrame === null) this.delayUs = target;
    else {
      const maxStep = (nowUs - this.lastFrame[0]) * DELAY_SLEW_PER_S;
      this.delayUs += Math.min(maxStep, Math.max(-maxStep, target - this.delayUs));
    }
    let at = (nowUs - this.transitUs - this.delayUs) / this.periodUs;
    if (this.lastFrame !== null) at = Math.max(at, this.lastFrame[1]);
    this.lastFrame = [nowUs, at];
    return at;
  }

  /** { position, rotation, underrun } of entity `id` at render tick `at`, or null. */
  sample(id, at) {
    const s = this.entities.get(id);
    if (!s || s.length === 0) return null;
    this.stats.frames++;
    if (at <= s[0].tick) return { position: s[0].position, rotation: s[0].rotation, underrun: false };
    let i = s.findIndex((x) => x.tick > at);
    if (i > 0) {
      // Drop samples no longer needed: keep the one just before `at`.
      s.splice(0, i - 1);
      i = 1;
      const a = s[0];
      const b = s[1];
      if (b.teleport) return { position: a.position, rotation: a.rotation, underrun: false };
      const t = (at - a.tick) / (b.tick - a.tick);
      return { position: lerp3(a.position, b.position, t), rotation: slerp(a.rotation, b.rotation, t), underrun: false };
    }
    this.stats.underruns++;
    const last = s[s.length - 1];
    let position = last.position;
    if (s.length >= 2 && !last.teleport) {
      const prev = s[s.length - 2];
      const ahead = Math.min(at - last.tick, EXTRAPOLATION_MAX_MS / 1000 / (this.periodUs / 1e6));
      position = lerp3(prev.position, last.position, 1 + ahead / (last.tick - prev.tick));
    }
    if (s.length > 2) s.splice(0, s.length - 2);
    return { position, rotation: last.rotation, underrun: true };
  }
}

// ---------------------------------------------------------------------------------------------
// The session
// ---------------------------------------------------------------------------------------------

const utf8 = new TextDecoder('utf-8', { fatal: false });
const utf8Encode = new TextEncoder();

/** A prop's value by key from an entity's `[key, bytes]` list, or null. */
function propOf(entity, key) {
  for (const [k, v] of entity.props ?? []) if (k === key) return v;
  return null;
}

/** Enum values may arrive as names or as variant indexes: compare by name. */
const RANKS = ['Visitor', 'Builder', 'Admin'];
const enumName = (v, names) => (typeof v === 'number' ? names[v] ?? String(v) : v);
const isPlayer = (e) => enumName(e.kind, ['Player', 'App']) === 'Player';
const clientAuthoritative = (settings) => enumName(settings?.movement, ['Server', 'Client']) === 'Client';

function readToken(name) {
  try {
    return globalThis.localStorage?.getItem(TOKEN_KEY_PREFIX + name) ?? null;
  } catch {
    return null; // storage disabled: join as a new user each time
  }
}

function writeToken(name, token) {
  try {
    if (token === null) globalThis.localStorage?.removeItem(TOKEN_KEY_PREFIX + name);
    else globalThis.localStorage?.setItem(TOKEN_KEY_PREFIX + name, token);
  } catch {
    /* storage disabled or full: the token only lives as long as the page */
  }
}

/** Applies an EntityPatch (PROTOCOL.md section 4): unset, then set, then the transform. */
function applyEntityPatch(entity, patch) {
  const unset = new Set(patch.unset ?? []);
  const props = (entity.props ?? []).filter(([k]) => !unset.has(k));
  for (const [k, v] of patch.set ?? []) {
    const i = props.findIndex(([pk]) => pk === k);
    if (i >= 0) props[i] = [k, v];
    else props.push([k, v]);
  }
  entity.props = props;
  if (patch.transform) entity.transform = patch.transform;
}

/** Applies a BlueprintPatch: each present field replaces the blueprint's (`undefined` = left as
 * is; for the URLs `null` clears, as wire.js decodes `Some(None)`). */
function applyBlueprintPatch(bp, patch) {
  for (const [k, v] of Object.entries(patch)) if (v !== undefined) bp[k] = v;
}

/** [x, y, z] as three finite numbers, or an Error. */
function checkedVec3(v) {
  const out = Array.from(v ?? [], Number);
  if (out.length !== 3 || !out.every(Number.isFinite)) throw new Error('a camera is three finite numbers');
  return out;
}

/**
 * A connection to a neonet world that keeps itself joined. Create it with {@link connect}.
 *
 * Public, read-only fields: `state` ('connecting' | 'joining' | 'connected' | 'reconnecting' |
 * 'closed'), `transport` ('webtransport' | 'websocket' | null), `world` (the mirror: `settings`,
 * `spawn`, `blueprints` Map, `entities` Map, `chat` array), `player` (own entity id), `user`,
 * `session`, `rank`, `tickHz`, `closeReason`. With `camera` ([x, y, z] metres) it joins as a
 * spectator (`Spectate`): no player (`player` stays null), entities chosen around the camera,
 * which `setCamera` moves; it sends no player state.
 */
export class NeonetClient {
  /** @param {{name: string, token?: string|null, transport?: 'auto'|'webtransport'|'websocket', base?: string, camera?: number[]}} opts */
  constructor(opts) {
    const name = String(opts.name ?? '').trim();
    const nameBytes = utf8Encode.encode(name).length;
    if (nameBytes < 1 || nameBytes > 64 || /[\u0000-\u001f\u007f]/.test(name)) {
      throw new Error('name must be 1 to 64 bytes of UTF-8 without control characters');
    }
    const transport = opts.transport ?? 'auto';
    if (!['auto', 'webtransport', 'websocket'].includes(transport)) throw new Error(`unknown transport ${transport}`);
    this.name = name;
    this.requestedTransport = transport;
    this.base = new URL(opts.base ?? '/', globalThis.location?.href);
    this.explicitToken = opts.token ?? null;
    this.camera = opts.camera ? checkedVec3(opts.camera) : null;

    this.state = 'connecting';
    this.stateInfo = {};
    this.transport = null;
    /** Why WebTransport was not used, when it was wanted and failed (shown by the page). */
    this.transportNote = null;
    this.closeReason = null;

    this.world = { settings: null, spawn: null, blueprints: new Map(), entities: new Map(), chat: [] };
    this.player = null;
    this.user = null;
    this.session = null;
    /** The single-use token to resume the session after a lost connection (ServerMsg ResumeToken). */
    this.resumeToken = null;
    /** The current link asked to resume `session` (ClientMsg Resume). */
    this.resuming = false;
    this.rank = 'Visitor';
    this.tickHz = 30;

    this.listeners = new Map();
    this.link = null;
    this.attempt = 0;
    this.timer = null;
    this.reconnectTimer = null;
    this.nextReq = 1;
    /** req -> {resolve, reject, msg}: changes not answered yet, in the order made, bounded by
     * PENDING_REQUESTS_MAX. Kept across lost connections and resent once back, with the same
     * req: the relay answers one it already applied with its original outcome. */
    this.pending = new Map();
    this.input = { move_x: 0, move_z: 0, yaw: 0, run: false, jump: false };
    this.stats = { framesIn: 0, datagramsIn: 0, datagramsRejected: 0, datagramsOut: 0, reconnects: 0, snapshotPieces: 0 };
    this.correctionTimes = [];
    /** First time each step happened, performance.now() ms (see {@link NeonetClient#mark}). */
    this.marks = {};
    /** The opt-in update latency log ({@link NeonetClient#startLatencyLog}), else null. */
    this.latencyLog = null;
    this.resetSession();
    this.run();
  }

  // ----- events -----

  /**
   * Adds a listener; returns a function that removes it. Events: 'state' {state, ...},
   * 'joined' {player, user} (first join, or a fresh one after a resume was refused), 'resumed'
   * {session, player} (the same session back on a new connection), 'chat' ChatMessage, 'chatCleared', 'entity' {op, id, entity},
   * 'blueprint' {op, id, blueprint}, 'settings' Setting, 'spawn' Spawn, 'rank' {user, rank},
   * 'muted' {player, muted}, 'event' {entity, name, data, from}, 'teleported', 'pushed',
   * 'ack' {req}, 'refused' {req, reason}, 'rtt' ms, 'correction' {result, errorM},
   * 'warning' {message}.
   * @param {string} name
   * @param {(payload: any) => void} fn
   * @returns {() => void}
   */
  on(name, fn) {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    if (set.size >= LISTENERS_MAX) throw new Error(`more than ${LISTENERS_MAX} listeners for '${name}'`);
    set.add(fn);
    return () => set.delete(fn);
  }

  /** Removes a listener added with {@link NeonetClient#on}. */
  off(name, fn) {
    this.listeners.get(name)?.delete(fn);
  }

  emit(name, payload) {
    for (const fn of this.listeners.get(name) ?? []) {
      try {
        fn(payload);
      } catch (e) {
        // A page's listener must not break the session: report it asynchronously, as a
        // browser reports any uncaught error.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  setState(state, info = {}) {
    this.state = state;
    this.stateInfo = info;
    this.emit('state', { state, transport: this.transport, ...info });
  }

  // ----- connection life -----

  resetSession() {
    this.joined = false;
    // Standing still: the still input, the tick it began at, and the newest input tick the
    // server said it applied (own-state blobs). See the tick loop.
    this.stillInput = null;
    this.stillSince = 0;
    this.serverInputTick = -1;
    this.resumed = false;
    this.early = [];
    this.pieces = new SnapshotReassembly();
    this.heldEvents = [];
    this.receiver = null;
    this.quantizer = null;
    this.model = null;
    this.sync = null;
    this.clock = null;
    this.predictor = null;
    this.interp = null;
    this.upSeq = 0;
    this.ackDue = false;
    this.lastUpUs = 0;
    this.ownAuth = null;
    this.localState = null;
    this.rttMs = null;
    this.lastHeardMs = nowMs();
    this.serverClose = null;
  }

  async run() {
    for (;;) {
      if (this.state === 'closed') return;
      try {
        await this.open();
        return; // joined or joining: the link's close starts the next round
      } catch (e) {
        if (this.state === 'closed') return;
        this.emit('warning', { message: errText(e) });
        if (!(await this.backoff(errText(e)))) return;
      }
    }
  }

  /** Waits before the next attempt; false when attempts are exhausted (then closed). */
  async backoff(why) {
    this.attempt++;
    if (this.attempt > RECONNECT_ATTEMPTS_MAX) {
      this.finishClosed('Unreachable', `gave up after ${RECONNECT_ATTEMPTS_MAX} attempts: ${why}`);
      return false;
    }
    // Exponential with "equal jitter": half the ceiling plus a random half, so clients that lost
    // the relay together come back spread out, yet never hammer it.
    const ceiling = Math.min(RECONNECT_DELAY_MAX_MS, RECONNECT_DELAY_BASE_MS * 2 ** (this.attempt - 1));
    const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    this.setState('reconnecting', { attempt: this.attempt, nextInMs: delay, why });
    await new Promise((r) => {
      this.reconnectTimer = setTimeout(r, delay);
    });
    this.reconnectTimer = null;
    return this.state !== 'closed';
  }

  async fetchConnectInfo() {
    const url = new URL('connect.json', this.base);
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), CONNECT_JSON_TIMEOUT_MS);
    try {
      const res = await fetch(url, { cache: 'no-store', signal: ctl.signal });
      if (!res.ok) throw new Error(`${url.pathname} answered ${res.status}`);
      const info = await res.json();
      if (info.protocol_version !== PROTOCOL_VERSION) {
        throw new Error(`the relay speaks protocol version ${info.protocol_version}, this client ${PROTOCOL_VERSION}`);
      }
      return info;
    } catch (e) {
      throw new Error(`fetching ${url.pathname} failed: ${e.name === 'AbortError' ? 'timed out' : errText(e)}`);
    } finally {
      clearTimeout(timer);
    }
  }

  async openLink(info) {
    const wt = info.webtransport;
    const wantWt = this.requestedTransport !== 'websocket' && !(this.requestedTransport === 'auto' && this.transportNote);
    if (wantWt) {
      try {
        if (!wt) throw new Error('the relay offers no WebTransport');
        if (typeof WebTransport === 'undefined') throw new Error('this browser has no WebTransport (or the page is not a secure context)');
        // URL.hostname keeps an IPv6 address's brackets, so it drops into a URL as is.
        const host = this.base.hostname;
        const url = `https://${host}:${wt.port}${wt.path}`;
        const hash = wt.cert_sha256 ? hexToBytes(wt.cert_sha256) : null;
        return await WebTransportLink.open(url, hash);
      } catch (e) {
        if (this.requestedTransport === 'webtransport') throw e;
        // Auto: fall back, and stay on WebSocket for this client's life (a blocked UDP path
        // would otherwise cost every reconnection the WebTransport timeout).
        this.transportNote = errText(e);
        this.emit('warning', { message: `WebTransport unavailable, using WebSocket: ${this.transportNote}` });
      }
    }
    if (!info.websocket) throw new Error('the relay offers no WebSocket');
    if (info.websocket.protocol && info.websocket.protocol !== WS_PROTOCOL) {
      throw new Error(`the relay's WebSocket speaks ${info.websocket.protocol}, not ${WS_PROTOCOL}`);
    }
    const ws = new URL(info.websocket.path, this.base);
    ws.protocol = this.base.protocol === 'https:' ? 'wss:' : 'ws:';
    return WebSocketLink.open(ws.href);
  }

  async open() {
    const info = await this.fetchConnectInfo();
    this.mark('connectInfo');
    if (this.state === 'closed') return;
    const link = await this.openLink(info);
    this.mark('linkOpen');
    if (this.state === 'closed') {
      link.close();
      return;
    }
    this.resetSession();
    this.link = link;
    this.transport = link.kind;
    link.onFrame = (channel, body) => this.handleFrame(channel, body);
    link.onDatagram = (bytes) => this.handleDatagram(bytes);
    link.onClose = (detail) => this.handleLinkClosed(link, detail);
    this.setState('joining', { attempt: this.attempt });
    const token = this.explicitToken ?? readToken(this.name);
    this.resuming = !this.camera && this.session !== null && this.resumeToken !== null;
    if (this.camera) {
      this.send({ type: 'Spectate', protocol_version: PROTOCOL_VERSION, name: this.name, token, camera: this.camera });
    } else if (this.resuming) {
      // Single-use on the server: a refused resume is answered as a Hello (a fresh join), and
      // the next Snapshot brings a new token either way. Kept until a Welcome answers, so a
      // Resume that never reached the server is tried again.
      const resume_token = this.resumeToken;
      this.send({ type: 'Resume', protocol_version: PROTOCOL_VERSION, name: this.name, token, session: this.session, resume_token });
    } else {
      this.send({ type: 'Hello', protocol_version: PROTOCOL_VERSION, name: this.name, token });
    }
    this.joinDeadline = nowMs() + JOIN_TIMEOUT_MS;
    this.schedule(0);
  }

  handleLinkClosed(link, detail) {
    if (link !== this.link) return;
    this.link = null;
    clearTimeout(this.timer);
    this.timer = null;
    // Unanswered changes stay pending: they are resent once back.
    if (this.state === 'closed') return;
    const close = this.serverClose;
    const reason = close?.reason ?? 'Timeout';
    const why = close ? `${reason}: ${close.detail}` : `connection lost: ${detail}`;
    if (TERMINAL_CLOSE_REASONS.has(reason)) {
      if (reason === 'AuthFailed' && !this.explicitToken) {
        // The stored token was refused (unknown user, or banned): forget it, so a reload joins
        // as a new user instead of failing forever. Never retried by itself.
        writeToken(this.name, null);
      }
      this.finishClosed(reason, close?.detail ?? detail);
      return;
    }
    if (this.joined) this.attempt = 0;
    this.stats.reconnects++;
    this.backoff(why).then((again) => {
      if (again) this.run();
    });
  }

  finishClosed(reason, detail) {
    this.closeReason = { reason, detail };
    for (const { reject } of this.pending.values()) reject(new Error(`closed: ${reason}`));
    this.pending.clear();
    clearTimeout(this.timer);
    clearTimeout(this.reconnectTimer);
    this.timer = null;
    this.setState('closed', { reason, detail });
  }

  /** Leaves politely (Goodbye) and stops reconnecting. */
  close() {
    if (this.state === 'closed') return;
    const link = this.link;
    if (link && this.joined) {
      try {
        this.send({ type: 'Goodbye' });
      } catch {
        /* leaving anyway */
      }
    }
    this.finishClosed('ClientLeft', 'left');
    this.link = null;
    // Give the Goodbye a moment to leave before the transport closes.
    if (link) setTimeout(() => link.close(), 50);
  }

  // ----- sending -----

  send(msg) {
    if (!this.link) throw new Error('not connected');
    const channel = channelOfClientMsg(msg);
    const body = encodeClientMsg(msg);
    if (body.length > outboundFrameMax(channel)) throw new Error(`${msg.type} of ${body.length} bytes is over the channel's limit`);
    this.link.sendFrame(channel, body);
  }

  /**
   * Sends a message that carries a req; the promise settles on Ack / Refused, or rejects when the
   * client closes for good. While not joined (connecting, reconnecting) the change is held and
   * sent once joined.
   */
  request(msg) {
    const p = new Promise((resolve, reject) => {
      if (this.state === 'closed') {
        reject(new Error(`closed (${this.closeReason?.reason})`));
        return;
      }
      if (this.pending.size >= PENDING_REQUESTS_MAX) {
        reject(new Error(`more than ${PENDING_REQUESTS_MAX} changes awaiting an answer`));
        return;
      }
      const req = this.nextReq;
      this.nextReq = this.nextReq >= 0xffffffff ? 1 : this.nextReq + 1;
      const full = { ...msg, req };
      if (encodeClientMsg(full).length > outboundFrameMax(channelOfClientMsg(full))) {
        reject(new Error(`${msg.type} is over the channel's limit`));
        return;
      }
      this.pending.set(req, { resolve, reject, msg: full });
      if (!this.joined || !this.link) return;
      try {
        this.send(full);
      } catch (e) {
        // The link failed under us: the change stays pending and goes on the next one.
        this.emit('warning', { message: errText(e) });
      }
    });
    // Callers that ignore the outcome must not cause "unhandled rejection" noise.
    p.catch(() => {});
    return p;
  }

  /**
   * Says something in chat.
   * @param {string} body 1 to 2000 bytes, not blank
   * @returns {Promise<{req: number}>} settles on the server's Ack or Refused
   */
  /** Moves a spectator's camera ([x, y, z] metres). No-op for a player. */
  setCamera(position) {
    if (!this.camera) return;
    this.camera = checkedVec3(position);
    if (this.joined) this.send({ type: 'SpectatorCamera', position: this.camera });
  }

  sendChat(body) {
    return this.request({ type: 'Chat', body: String(body) });
  }

  /**
   * Runs a slash command, e.g. `['name', 'bo']`.
   * @param {string[]} args
   * @returns {Promise<{req: number}>}
   */
  sendCommand(args) {
    return this.request({ type: 'Command', args: args.map(String) });
  }

  // ----- moderation: typed forms of the moderation commands. A user is named by display
  // name or '#ID'. Each settles on Ack or Refused; a refusal's Error carries `text`, the
  // server's explanation, and /help resolves with `text`, the list of what your rank may do.

  /** `/kick NAME [reason]` (builder; a lower rank's player). @returns {Promise<{req: number}>} */
  kick(name, reason) {
    return this.sendCommand(['kick', name, ...(reason ? [reason] : [])]);
  }

  /** `/mute NAME [duration]` ('10m', '2h', '7d'; none: until unmuted). @returns {Promise<{req: number}>} */
  mute(name, duration) {
    return this.sendCommand(['mute', name, ...(duration ? [duration] : [])]);
  }

  /** `/unmute NAME`. @returns {Promise<{req: number}>} */
  unmute(name) {
    return this.sendCommand(['unmute', name]);
  }

  /** `/ban NAME [duration] [reason]` (admin; none: for good). @returns {Promise<{req: number}>} */
  ban(name, duration, reason) {
    return this.sendCommand(['ban', name, ...(duration ? [duration] : []), ...(reason ? [reason] : [])]);
  }

  /** `/unban NAME` (admin). @returns {Promise<{req: number}>} */
  unban(name) {
    return this.sendCommand(['unban', name]);
  }

  /** `/rank NAME visitor|builder|admin` (admin). @returns {Promise<{req: number}>} */
  setRank(name, rank) {
    return this.sendCommand(['rank', name, String(rank).toLowerCase()]);
  }

  /** `/revoke NAME`: invalidates every token of the user and disconnects them (admin). */
  revokeTokens(name) {
    return this.sendCommand(['revoke', name]);
  }

  /** `/help`: resolves with `text`, what your rank may do. @returns {Promise<{req: number, text: string}>} */
  help() {
    return this.sendCommand(['help']);
  }

  /** Adds a blueprint (builder). @returns {Promise<{req: number}>} */
  addBlueprint(blueprint) {
    return this.request({ type: 'BlueprintAdd', blueprint });
  }

  /**
   * Modifies a blueprint (builder), as version `version` (default: the mirror's version + 1).
   * @returns {Promise<{req: number}>}
   */
  modifyBlueprint(id, patch, version) {
    const v = version ?? (this.world.blueprints.get(id)?.version ?? 0) + 1;
    return this.request({ type: 'BlueprintModify', id, version: v, patch });
  }

  /** Places an app of `blueprint` (builder). @returns {Promise<{req: number}>} */
  addEntity(blueprint, transform, props = []) {
    return this.request({ type: 'EntityAdd', blueprint, transform, props });
  }

  /** Changes an entity's props or placement. @returns {Promise<{req: number}>} */
  modifyEntity(id, patch) {
    return this.request({ type: 'EntityModify', id, patch: { set: [], unset: [], transform: null, ...patch } });
  }

  /** Removes an app (builder). @returns {Promise<{req: number}>} */
  removeEntity(id) {
    return this.request({ type: 'EntityRemove', id });
  }

  /** Deletes a blueprint and every app instantiating it (admin). @returns {Promise<{req: number}>} */
  removeBlueprint(id) {
    return this.request({ type: 'BlueprintRemove', id });
  }

  /** Sends an entity event to everyone else, or to the player `to`. */
  sendEvent(entity, name, data = new Uint8Array(0), to = null) {
    const bp = this.world.entities.get(entity)?.blueprint;
    const version = bp ? this.world.blueprints.get(bp)?.version ?? 0 : 0;
    this.send({ type: 'EntityEvent', entity, blueprint_version: version, name, data, to });
  }

  /**
   * Sets the movement input used from the next prediction tick on (held until changed).
   * @param {{move_x?: number, move_z?: number, yaw?: number, run?: boolean, jump?: boolean}} input
   *   axes -127..127 (strafe right, forward), yaw in 1/65536 turns (forward is +Z at 0)
   */
  setInput(input) {
    const axis = (v) => Math.max(-127, Math.min(127, Math.round(Number(v) || 0)));
    this.input = {
      move_x: axis(input.move_x),
      move_z: axis(input.move_z),
      yaw: (Math.round(Number(input.yaw) || 0) & 0xffff) >>> 0,
      run: !!input.run,
      jump: !!input.jump,
    };
  }

  // ----- receiving -----

  handleFrame(channel, body) {
    if (this.state === 'closed' || !this.link) return;
    this.lastHeardMs = nowMs();
    this.stats.framesIn++;
    let msg;
    try {
      msg = decodeServerMsg(body);
    } catch (e) {
      return this.protocolError(`undecodable message on channel ${channel}: ${errText(e)}`);
    }
    if (channelOfServerMsg(msg) !== channel) return this.protocolError(`${msg.type} on channel ${channel}`);
    // Channels are not ordered with each other (section 7): hold what overtakes the snapshot.
    if (!this.joined && channel !== CHANNEL.World && msg.type !== 'Close' && msg.type !== 'Pong') {
      if (this.early.length >= EARLY_MESSAGES_MAX) return this.protocolError('too many messages before the snapshot');
      this.early.push(msg);
      return;
    }
    const wasJoined = this.joined;
    this.handleMsg(msg);
    if (!wasJoined && this.joined) {
      const early = this.early;
      this.early = [];
      for (const m of early) this.handleMsg(m);
    }
  }

  protocolError(detail) {
    // Not the server's fault to retry around: report and stop (the server may be too new or broken).
    this.serverClose = { reason: 'ProtocolViolation', detail: `client: ${detail}` };
    this.link?.close();
    this.handleLinkClosed(this.link, detail);
  }

  handleMsg(msg) {
    switch (msg.type) {
      case 'Welcome': return this.onWelcome(msg);
      case 'Snapshot':
        if (this.pieces.inProgress) return this.protocolError('Snapshot while its pieces were arriving');
        return this.onSnapshot(msg.snapshot);
      case 'SnapshotPiece': {
        // A big world's snapshot, in pieces paced to the path (PROTOCOL.md section 7).
        if (!this.receiver || this.joined) return this.protocolError('SnapshotPiece out of order');
        this.stats.snapshotPieces++;
        // Progress: a slow path taking a big world is not a join that stalled.
        this.joinDeadline = nowMs() + JOIN_TIMEOUT_MS;
        let s;
        try {
          s = this.pieces.push(msg.index, msg.count, msg.data);
        } catch (e) {
          return this.protocolError(errText(e));
        }
        return s ? this.onSnapshot(s) : undefined;
      }
      case 'Close':
        this.serverClose = { reason: enumName(msg.reason, CLOSE_REASONS), detail: msg.detail };
        return undefined;
      case 'Pong': return this.onPong(msg);
      case 'ResumeToken':
        this.resumeToken = msg.token;
        return undefined;
      case 'Ack': {
        const p = this.pending.get(msg.req);
        this.pending.delete(msg.req);
        p?.resolve(p.text !== undefined ? { req: msg.req, text: p.text } : { req: msg.req });
        return this.emit('ack', { req: msg.req });
      }
      case 'Refused': {
        const reason = enumName(msg.reason, REFUSALS);
        const p = this.pending.get(msg.req);
        this.pending.delete(msg.req);
        if (p) {
          const err = new Error(p.text !== undefined ? `refused: ${reason}: ${p.text}` : `refused: ${reason}`);
          err.reason = reason;
          if (p.text !== undefined) err.text = p.text;
          p.reject(err);
        }
        return this.emit('refused', { req: msg.req, reason });
      }
      case 'CommandReply': {
        // Text for a command (its Ack or Refused follows): kept for the command's promise.
        const p = this.pending.get(msg.req);
        if (p) p.text = p.text === undefined ? msg.text : `${p.text}\n${msg.text}`;
        return this.emit('commandReply', { req: msg.req, text: msg.text });
      }
      case 'AuthToken':
        // A fresh token before the snapshot's expires: the next join presents it.
        if (this.explicitToken) this.explicitToken = msg.token;
        else writeToken(this.name, msg.token);
        return this.emit('token', { token: msg.token });
      default:
        break;
    }
    if (!this.joined) return this.protocolError(`${msg.type} before the snapshot`);
    const w = this.world;
    switch (msg.type) {
      case 'ChatAdded': {
        const m = msg.message;
        w.chat.push(m);
        if (w.chat.length > CHAT_HISTORY_LEN) w.chat.splice(0, w.chat.length - CHAT_HISTORY_LEN);
        return this.emit('chat', m);
      }
      case 'ChatCleared':
        w.chat.length = 0;
        return this.emit('chatCleared');
      case 'BlueprintAdded': {
        const b = msg.blueprint;
        w.blueprints.set(b.id, b);
        this.emit('blueprint', { op: 'added', id: b.id, blueprint: b });
        return this.releaseHeld();
      }
      case 'BlueprintRemoved': {
        const b = w.blueprints.get(msg.id);
        if (!b) return undefined;
        w.blueprints.delete(msg.id);
        return this.emit('blueprint', { op: 'removed', id: msg.id, blueprint: b });
      }
      case 'BlueprintModified': {
        let b = w.blueprints.get(msg.id);
        if (!b) w.blueprints.set(msg.id, (b = { id: msg.id }));
        applyBlueprintPatch(b, msg.patch);
        b.version = msg.version;
        this.emit('blueprint', { op: 'modified', id: msg.id, blueprint: b });
        return this.releaseHeld();
      }
      case 'EntityAdded': {
        const e = msg.entity;
        w.entities.set(e.id, e);
        this.emit('entity', { op: 'added', id: e.id, entity: e });
        return this.releaseHeld();
      }
      case 'EntityModified': {
        const e = w.entities.get(msg.id);
        if (!e) return undefined;
        applyEntityPatch(e, msg.patch);
        return this.emit('entity', { op: 'modified', id: msg.id, entity: e });
      }
      case 'EntityRemoved': {
        const id = msg.id;
        this.receiver?.forget(id);
        this.interp?.remove(id);
        this.heldEvents = this.heldEvents.filter((h) => h.entity !== id);
        const e = w.entities.get(id);
        if (!w.entities.delete(id)) return undefined;
        return this.emit('entity', { op: 'removed', id, entity: e });
      }
      case 'EntityEvent':
        if (this.eventReady(msg)) return this.emit('event', msg);
        if (this.heldEvents.length >= HELD_EVENTS_MAX) this.heldEvents.shift();
        this.heldEvents.push(msg);
        return undefined;
      case 'PlayerTeleport':
        if (this.localState && this.model) this.localState = this.model.spawn(msg.position, this.localState.yaw);
        return this.emit('teleported', { position: msg.position, rotation_y: msg.rotation_y });
      case 'PlayerPush':
        return this.emit('pushed', { force: msg.force });
      case 'SettingsModified': {
        const s = msg.setting;
        if (w.settings && SETTING_FIELDS[s.type]) w.settings[SETTING_FIELDS[s.type]] = s.value;
        return this.emit('settings', s);
      }
      case 'SpawnModified':
        w.spawn = msg.spawn;
        return this.emit('spawn', w.spawn);
      case 'RankModified': {
        const rank = enumName(msg.rank, RANKS);
        if (msg.user === this.user) this.rank = rank;
        return this.emit('rank', { user: msg.user, rank });
      }
      case 'Muted':
        return this.emit('muted', { player: msg.player, muted: msg.muted });
      default:
        return this.protocolError(`unexpected ${msg.type}`);
    }
  }

  onWelcome(msg) {
    if (this.session !== null && this.receiver) return this.protocolError('second Welcome');
    if (num(msg.protocol_version) !== PROTOCOL_VERSION) {
      this.serverClose = { reason: 'VersionMismatch', detail: `server speaks protocol version ${msg.protocol_version}` };
      this.link?.close();
      return this.handleLinkClosed(this.link, 'version mismatch');
    }
    try {
      this.receiver = new TransformReceiver(msg.transform);
      this.quantizer = this.receiver.quantizer;
    } catch (e) {
      return this.protocolError(`invalid transform configuration in Welcome: ${errText(e)}`);
    }
    this.resumed = this.resuming && num(msg.session) === num(this.session);
    if (!this.resumed) this.resumeToken = null;
    this.session = msg.session;
    this.tickHz = Math.min(120, Math.max(10, num(msg.tick_hz)));
    this.model = new KinematicCharacter({ ...CHARACTER_DEFAULTS, ...msg.character });
    this.dt = Math.fround(1 / this.tickHz);
    this.sync = new ClockSync(this.tickHz);
    this.clock = new TickClock(this.tickHz);
    this.predictor = new Predictor(this.model, this.dt);
    this.interp = new Interpolation(this.tickHz);
    return undefined;
  }

  onSnapshot(s) {
    if (!this.receiver || this.joined) return this.protocolError('Snapshot out of order');
    // A spectator's snapshot names entity 0: it has no player.
    this.player = s.player === 0 ? null : s.player;
    this.receiver.ownEntityId = s.player; // never sent as a record: ignore any that is
    this.user = s.user;
    this.rank = enumName(s.rank, RANKS);
    const lastChat = this.world.chat.length ? num(this.world.chat[this.world.chat.length - 1].id) : null;
    this.world = {
      settings: s.settings,
      spawn: s.spawn,
      blueprints: new Map(s.blueprints.map((b) => [b.id, b])),
      entities: new Map(s.entities.map((e) => [e.id, e])),
      chat: s.chat.slice(-CHAT_HISTORY_LEN),
    };
    if (!this.explicitToken) writeToken(this.name, s.auth_token);
    if (clientAuthoritative(s.settings)) {
      const me = this.world.entities.get(this.player);
      this.localState = this.model.spawn(me ? me.transform.position : [0, 0, 0], 0);
    }
    this.joined = true;
    this.mark('joined');
    this.attempt = 0;
    this.joinDeadline = null;
    this.setState('connected', { transport: this.transport, resumed: this.resumed });
    if (this.resumed) {
      // Same session and player: report the chat missed while away, then the resume. The
      // page re-reads `world` for the rest (its entities, blueprints and settings are the
      // server's again).
      for (const m of this.world.chat) if (lastChat === null || num(m.id) > lastChat) this.emit('chat', m);
      this.emit('resumed', { session: this.session, player: this.player });
    } else {
      this.emit('joined', { player: this.player, user: this.user });
    }
    // Every change not answered yet goes (again) now, in order, with its req.
    for (const { msg } of this.pending.values()) {
      try {
        this.send(msg);
      } catch (e) {
        this.emit('warning', { message: errText(e) });
        break;
      }
    }
    return undefined;
  }

  onPong(msg) {
    const recvUs = nowMs() * 1000;
    const sendUs = num(msg.client_time_us);
    this.sync?.handleSample(sendUs, num(msg.server_time_us), num(msg.server_tick), recvUs);
    if (this.sync && !this.sync.exact) this.latencyLog?.onPong(num(msg.server_time_us), num(msg.server_tick), this.sync.periodUs);
    this.rttMs = (recvUs - sendUs) / 1000;
    this.emit('rtt', this.rttMs);
  }

  /** A clock echo in a fresh server datagram of tick `tick` (PROTOCOL.md 12.4). */
  onEcho(echo, tick, recvUs) {
    const wasExact = this.sync.exact;
    const rttUs = this.sync.handleEcho(echo, tick, recvUs);
    if (rttUs === null) return;
    // The latency log's tick phase follows the clock sync onto the echoes' tick timeline: the
    // datagram was written phaseUs after its tick began, at server time (tick + 1) × period + phaseUs.
    if (!wasExact) this.latencyLog?.resetPhase();
    this.latencyLog?.onPong((tick + 1) * this.sync.periodUs + echo.phaseUs, tick + 1, this.sync.periodUs);
    this.rttMs = rttUs / 1000;
    this.emit('rtt', this.rttMs);
  }

  eventReady(ev) {
    const bp = this.world.entities.get(ev.entity)?.blueprint;
    const have = bp ? this.world.blueprints.get(bp)?.version ?? 0 : 0;
    return num(ev.blueprint_version) <= have;
  }

  releaseHeld() {
    if (this.heldEvents.length === 0) return;
    const held = this.heldEvents;
    this.heldEvents = [];
    for (const ev of held) {
      if (this.eventReady(ev)) this.emit('event', ev);
      else this.heldEvents.push(ev);
    }
  }

  handleDatagram(bytes) {
    this.lastHeardMs = nowMs();
    if (!this.joined || !this.receiver) return; // datagrams before the snapshot are ignored (12.1)
    this.stats.datagramsIn++;
    const nowUs = nowMs() * 1000;
    let r;
    try {
      r = this.receiver.handleDatagram(bytes, nowUs / 1000);
    } catch (e) {
      if (!(e instanceof WireError)) throw e;
      this.stats.datagramsRejected++;
      return;
    }
    // Acknowledged soon if it carried something the server waits on; one with only a clock echo
    // rides on the next datagram sent anyway (PROTOCOL.md 12.5).
    if (r.records > 0 || r.ownState || r.freshness !== 'Applied') this.ackDue = true;
    this.mark('firstDatagram');
    if (r.echo && r.freshness === 'Applied') this.onEcho(r.echo, num(r.tick), nowUs);
    this.latencyLog?.onDatagram(nowUs + this.sync.offsetUs, num(r.tick), this.sync.periodUs,
      r.updates.length + r.left.length + r.stale + r.undecodable);
    if (r.freshness !== 'Applied') return; // duplicate or too old: ignored whole
    const tick = num(r.tick);
    if (r.ownState && this.predictor && !this.localState) {
      try {
        const own = decodeOwnState(r.ownState);
        const serverTick = num(own.server_tick);
        if (own.last_input_tick !== null) {
          this.serverInputTick = Math.max(this.serverInputTick, num(own.last_input_tick));
        }
        this.ownAuth = { tick: serverTick, position: own.state.position };
        const result = this.predictor.reconcile(serverTick, own.teleport_seq, own.state);
        if (result === 'corrected' || result === 'teleported') {
          this.noteCorrection();
          this.emit('correction', { result, errorM: this.predictor.stats.errorMaxM });
        }
      } catch {
        this.stats.datagramsRejected++;
      }
    }
    this.interp.onPacket(nowUs, tick);
    for (const u of r.updates) {
      if (u.id !== this.player) this.interp.push(u.id, num(u.tick), u);
    }
    for (const id of r.left) this.interp.remove(id);
  }

  noteCorrection() {
    this.correctionTimes.push(nowMs());
    if (this.correctionTimes.length > CORRECTION_TIMES_MAX) this.correctionTimes.shift();
  }

  // ----- the clock: pings, prediction ticks, upstream datagrams -----

  schedule(delayMs) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.pump(), Math.max(0, delayMs));
  }

  pump() {
    this.timer = null;
    if (!this.link || this.state === 'closed') return;
    const now = nowMs();
    if (!this.joined) {
      if (now > this.joinDeadline) {
        this.link.close();
        this.handleLinkClosed(this.link, `no snapshot within ${JOIN_TIMEOUT_MS} ms`);
        return;
      }
      this.schedule(100);
      return;
    }
    if (now - this.lastHeardMs > SILENCE_TIMEOUT_MS) {
      const link = this.link;
      link.close();
      this.handleLinkClosed(link, `nothing heard for ${SILENCE_TIMEOUT_MS} ms`);
      return;
    }
    const nowUs = now * 1000;
    try {
      if (this.sync.pingDue(nowUs) || this.fallbackPingDue(nowUs)) {
        this.sync.lastPingUs = nowUs;
        this.send({ type: 'Ping', client_time_us: Math.round(nowUs) });
      }
      const clientAuth = clientAuthoritative(this.world.settings);
      let tick;
      while ((tick = this.clock.poll(nowUs, this.sync)) !== null) {
        let inputs = null;
        if (clientAuth) {
          if (this.localState) this.localState = this.model.step(this.localState, this.input, this.dt);
        } else if (this.predictor.step(tick, this.input)) {
          // Standing still with the same input since `stillSince`: once the server applied an
          // input of this stillness it repeats it by itself, so nothing more is sent for it
          // (acknowledgements still go out below). PROTOCOL.md 12.7.2.
          const i = this.input;
          const still = i.move_x === 0 && i.move_z === 0 && !i.jump;
          const key = still ? `${i.yaw}/${i.run}` : null;
          if (still && key === this.stillInput) {
            if (this.serverInputTick >= this.stillSince) continue;
          } else {
            this.stillInput = key;
            this.stillSince = tick;
          }
          const un = this.predictor.unackedInputs();
          if (un) inputs = encodeInputBlob(un[0], un[1]);
        }
        // Nothing of its own to send (before the first own-player state): acknowledgements go
        // out below when something arrived.
        if (!clientAuth && inputs === null) continue;
        this.sendUpstream(inputs, nowUs);
      }
      if (this.ackDue && nowUs >= this.lastUpUs + this.clock.periodUs) this.sendUpstream(null, nowUs);
    } catch (e) {
      if (!this.link) return; // the link failed while sending: its close handler took over
      this.emit('warning', { message: `send failed: ${errText(e)}` });
    }
    const nextUs = Math.min(this.sync.nextPingUs(), this.clock.nextTick === null ? Infinity : this.clock.nextAtUs,
      this.ackDue ? this.lastUpUs + this.clock.periodUs : Infinity, this.fallbackPingAtUs());
    this.schedule(Math.min(50, Math.max(1, (nextUs - nowUs) / 1000)));
  }

  /** With clock echoes, when the liveness ping is due: PING_FALLBACK_SILENCE_MS after both the
   * last upstream datagram and the last ping (Infinity before the first echo). */
  fallbackPingAtUs() {
    if (!this.sync.exact) return Infinity;
    return Math.max(this.lastUpUs, this.sync.lastPingUs ?? 0) + PING_FALLBACK_SILENCE_MS * 1000;
  }

  fallbackPingDue(nowUs) {
    return nowUs >= this.fallbackPingAtUs();
  }

  sendUpstream(inputs, nowUs) {
    const owned = [];
    if (this.localState && this.player !== null) owned.push({ id: this.player, transform: this.model.transform(this.localState) });
    this.upSeq = (this.upSeq + 1) & 0xffff;
    // A clock sample is due: this datagram asks for an echo (kind 0x03, PROTOCOL.md 12.7).
    const stamp = this.sync.stampDue(nowUs);
    if (stamp) this.sync.lastStampUs = nowUs;
    const bytes = encodeClientDatagram({
      seq: this.upSeq,
      ack: this.receiver.ackState(),
      inputBlob: inputs ?? undefined,
      owned,
      quantizer: this.quantizer,
      clientTimeUs: stamp ? Math.round(nowUs) : null,
    });
    if (this.link.sendDatagram(bytes)) this.stats.datagramsOut++;
    this.ackDue = false;
    this.lastUpUs = nowUs;
  }

  // ----- what to draw -----

  /**
   * Starts a render frame: decays the prediction's visual correction and picks the server tick
   * remote entities are shown at. Call once per animation frame, before the positions below.
   * @returns {number|null} the fractional render tick, or null before the first datagram
   */
  beginFrame() {
    const now = nowMs();
    const dtS = this.lastFrameMs === undefined ? 0 : (now - this.lastFrameMs) / 1000;
    this.lastFrameMs = now;
    if (!this.joined || !this.interp) return null;
    this.predictor.advanceVisual(dtS);
    this.renderTick = this.interp.beginFrame(now * 1000);
    return this.renderTick;
  }

  /**
   * The own player's position to draw: predicted (server-authoritative worlds) or simulated
   * (client-authoritative), else as the mirror last placed it.
   * @returns {number[]|null} [x, y, z] metres
   */
  playerPosition() {
    if (this.player === null) return null;
    if (this.localState) return this.localState.position.slice();
    const p = this.predictor?.renderPosition(this.clock ? this.clock.alpha(nowMs() * 1000) : 1);
    return p ?? this.world.entities.get(this.player)?.transform.position ?? null;
  }

  /**
   * A remote entity's position to draw: interpolated at the frame's render tick, else its last
   * reliable placement.
   * @returns {number[]|null} [x, y, z] metres
   */
  entityPosition(id) {
    if (id === this.player) return this.playerPosition();
    if (this.interp && this.renderTick !== null && this.renderTick !== undefined) {
      const s = this.interp.sample(id, this.renderTick);
      if (s) return s.position;
    }
    return this.world.entities.get(id)?.transform.position ?? null;
  }

  /**
   * The newest authoritative position the server sent for an entity (the own player: its last
   * own-state), for showing what the client displays against what the server says.
   * @returns {{position: number[], tick: number}|null}
   */
  serverPosition(id) {
    if (id === this.player) return this.ownAuth ? { position: this.ownAuth.position, tick: this.ownAuth.tick } : null;
    const l = this.receiver?.latest(id);
    return l ? { position: l.position, tick: num(l.tick) } : null;
  }

  /**
   * Connected players from the mirror.
   * @returns {{id: number, name: string, rank: string, self: boolean}[]}
   */
  players() {
    const out = [];
    for (const e of this.world.entities.values()) {
      if (!isPlayer(e)) continue;
      const name = propOf(e, 'name');
      const rank = propOf(e, 'rank');
      out.push({
        id: e.id,
        name: name ? utf8.decode(name) : `player ${e.id}`,
        rank: rank && rank.length ? RANKS[rank[0]] ?? 'Visitor' : 'Visitor',
        self: e.id === this.player,
      });
    }
    return out.sort((a, b) => a.name.localeCompare(b.name) || a.id - b.id);
  }

  // ----- measurement hooks (tests/browser/measure.mjs) -----

  /**
   * Notes the first time `name` happened, in `marks` (performance.now() ms, so from the page's
   * navigation start); later calls keep the first. The client marks 'connectInfo' (/connect.json
   * read), 'linkOpen' (transport open), 'joined' (snapshot applied), 'firstDatagram'; a page
   * may add its own (play.js: 'firstFrame', 'firstInterpolatedFrame'). A fixed set of names.
   */
  mark(name) {
    this.marks[name] ??= nowMs();
  }

  /**
   * Starts (or restarts, empty) the update latency log and returns it: off until called, so the
   * datagram and pong paths pay one null check otherwise. See {@link UpdateLatencyLog}.
   * @returns {UpdateLatencyLog}
   */
  startLatencyLog() {
    this.latencyLog = new UpdateLatencyLog();
    return this.latencyLog;
  }

  /**
   * Netcode figures for an overlay.
   * @returns {{rttMs: number|null, interpDelayMs: number|null, correctionsPerS: number,
   *   corrections: number, snaps: number, underruns: number, datagramsIn: number,
   *   datagramsOut: number, datagramsRejected: number, tickHz: number, lead: number|null}}
   */
  netStats() {
    const now = nowMs();
    const recent = this.correctionTimes.filter((t) => now - t <= 1000).length;
    const p = this.predictor?.stats;
    return {
      rttMs: this.sync?.rttUs() != null ? this.sync.rttUs() / 1000 : this.rttMs,
      interpDelayMs: this.interp ? this.interp.delayUs / 1000 : null,
      correctionsPerS: recent,
      corrections: p ? p.corrections : 0,
      snaps: p ? p.snaps : 0,
      underruns: this.interp ? this.interp.stats.underruns : 0,
      datagramsIn: this.stats.datagramsIn,
      datagramsOut: this.stats.datagramsOut,
      datagramsRejected: this.stats.datagramsRejected,
      reconnects: this.stats.reconnects,
      tickHz: this.tickHz,
      lead: this.sync ? this.sync.leadTicks() : null,
    };
  }
}

/** Datagrams the update latency log keeps, newest last (a ring): 16,384, 9 min of 30 Hz. */
export const LATENCY_LOG_MAX = 16_384;
/** Pongs whose tick phase bounds are kept (neonet-load's TICK_PHASE_WINDOW). */
const TICK_PHASE_WINDOW = 32;
/** Pongs needed before latencies are logged (neonet-load's TICK_PHASE_MIN_SAMPLES). */
const TICK_PHASE_MIN_SAMPLES = 8;

/**
 * Update latency as `neonet-load run` measures it (tools/neonet-load/src/driver.rs,
 * `measure_datagrams` and `TickPhase`): per server datagram, its arrival on the clock synced
 * with the relay minus the start of the tick it carries, `tick × period + phase`. A pong
 * answered at server time s saying next tick n bounds the phase from above by
 * s − (n − 1) × period; the phase is the tightest of the last TICK_PHASE_WINDOW bounds, and
 * nothing is logged before TICK_PHASE_MIN_SAMPLES pongs. Arrival is when the page's script
 * gets the datagram (WebTransport's reader, or the WebSocket's message event). Each datagram
 * carries a weight, its entity records (at least 1), as the load tool counts per entity update;
 * duplicates and late datagrams (not applied) weigh 1.
 */
class UpdateLatencyLog {
  constructor() {
    /** Latencies, ms, and weights, in a ring of LATENCY_LOG_MAX. */
    this.ms = new Float64Array(LATENCY_LOG_MAX);
    this.weights = new Uint16Array(LATENCY_LOG_MAX);
    /** Datagrams logged since the last reset (the ring keeps the newest LATENCY_LOG_MAX). */
    this.count = 0;
    /** Upper bounds of the relay's tick phase, µs, newest last. */
    this.bounds = [];
  }

  onPong(serverTimeUs, nextTick, periodUs) {
    if (this.bounds.length === TICK_PHASE_WINDOW) this.bounds.shift();
    this.bounds.push(serverTimeUs - (nextTick - 1) * periodUs);
  }

  /** The phase estimate, µs, or null before TICK_PHASE_MIN_SAMPLES pongs. */
  phaseUs() {
    return this.bounds.length < TICK_PHASE_MIN_SAMPLES ? null : Math.min(...this.bounds);
  }

  onDatagram(arrivalServerUs, tick, periodUs, records) {
    const phase = this.phaseUs();
    if (phase === null) return;
    const i = this.count % LATENCY_LOG_MAX;
    this.ms[i] = Math.max(0, arrivalServerUs - (tick * periodUs + phase)) / 1000;
    this.weights[i] = Math.min(0xffff, Math.max(1, records));
    this.count++;
  }

  /** Forgets the latencies logged so far (keeps the phase bounds): a measuring window starts. */
  reset() {
    this.count = 0;
  }

  /** Forgets the phase bounds: the clock sync moved from pongs to clock echoes. */
  resetPhase() {
    this.bounds = [];
  }

  /** @returns {{count: number, phaseMs: number|null, ms: number[], weights: number[]}} the kept ones, oldest first */
  snapshot() {
    const n = Math.min(this.count, LATENCY_LOG_MAX);
    const start = this.count - n;
    const ms = [];
    const weights = [];
    for (let k = start; k < this.count; k++) {
      ms.push(this.ms[k % LATENCY_LOG_MAX]);
      weights.push(this.weights[k % LATENCY_LOG_MAX]);
    }
    const phase = this.phaseUs();
    return { count: this.count, phaseMs: phase === null ? null : phase / 1000, ms, weights };
  }
}

/** Variant names of the enums the client reads, in wire order (PROTOCOL.md section 4). */
const CLOSE_REASONS = ['PlayerLimit', 'DuplicateUser', 'Moderation', 'ProtocolViolation', 'VersionMismatch',
  'AuthFailed', 'ServerShutdown', 'Timeout', 'ClientLeft', 'Flooding'];
const REFUSALS = ['Rank', 'NotOwner', 'NotFound', 'Exists', 'Conflict', 'Invalid', 'Muted', 'RateLimited',
  'Storage', 'UnknownCommand', 'WorldFull', 'Busy'];
/** Setting variant -> Settings field. */
const SETTING_FIELDS = {
  Title: 'title', Desc: 'desc', Image: 'image', Avatar: 'avatar', CustomAvatars: 'custom_avatars',
  DefaultRank: 'default_rank', PlayerLimit: 'player_limit', Ao: 'ao', Movement: 'movement',
};
/** Changes awaiting Ack or Refused at once. */
export const PENDING_REQUESTS_MAX = 1024;

/**
 * Connects to the neonet world served by the page's origin (or `base`) and stays joined,
 * reconnecting by itself after a lost connection.
 * @param {{name: string, token?: string|null, transport?: 'auto'|'webtransport'|'websocket', base?: string}} opts
 *   `token`: join as this user instead of the one stored for `name`; `transport`: 'auto' tries
 *   WebTransport then falls back to WebSocket; `base`: the relay's HTTP origin.
 * @returns {NeonetClient}
 */
export function connect(opts) {
  return new NeonetClient(opts);
}
