#!/usr/bin/env node
// Measures the browser path's targets against a running relay and prints JSON on stdout.
// Not run by CI (it takes minutes and its figures depend on the machine); MEASUREMENTS.md next
// to it has the figures and the exact sessions they came from.
//
//   node tests/browser/measure.mjs join      [--url URL] [--transport T[,T]] [--samples N]
//   node tests/browser/measure.mjs bandwidth [--url URL] [--transport T[,T]] [--seconds S]
//                                            [--warmup S] [--native NAME]
//   node tests/browser/measure.mjs latency   [--url URL] [--transport T[,T]] [--seconds S]
//                                            [--warmup S] [--wt-port PORT]
//   common: [--chromium PATH] [--timeout-ms N] [--name-prefix P] [--no-draw]
//
// T is webtransport or websocket (default both, comma-separated); URL the relay's HTTP origin
// (default http://127.0.0.1:4480). Chromium is Debian's /usr/bin/chromium driven by
// playwright-core, with the flags of play.mjs (QUIC stays on: --disable-quic would block
// WebTransport). Every page is /play?transport=T&name=NAME in a fresh browser context (no
// cache, no stored token: a new user each time), standing still.
//
// join       N pages one after the other per transport. Each reports, in ms from its navigation
//            start (performance.now()), window.neonetTiming: connectInfo (/connect.json read),
//            linkOpen (WebTransport session / WebSocket open), joined (snapshot applied),
//            firstFrame (the first animation frame that drew the world with the own player),
//            firstDatagram, firstInterpolatedFrame (first frame drawing remote entities from
//            transform datagrams). Prints p50/p90 of each per transport.
// bandwidth  One page per transport at once, joined and still for --warmup s, then a window of
//            --seconds during which the relay's /status is polled every STATUS_POLL_MS. The
//            figure is each session's `kbps_out` (the relay's payload bytes sent to that
//            connection, datagrams and stream frames, the same count for QUIC, WebTransport
//            and WebSocket: src/relay/core_task.rs count_out; /status turns it into a rate over
//            each 250 ms users report), averaged over the polls, so over the window. --native
//            NAME adds the newest session of that name (a native client the caller runs, e.g.
//            `neonet-load run --clients 1 --move still`), measured in the same polls; every
//            other session's mean is shown as `others`. Also the page's own count of transport
//            payload bytes it received (link.bytesIn) over the window, as a cross-check.
// latency    One page per transport at once: after joining, client.startLatencyLog() (client.js
//            UpdateLatencyLog: per server datagram, arrival on the clock synced with the relay
//            minus the start of the tick it carries, weighted by its entity records, exactly as
//            `neonet-load run` measures update latency), reset after --warmup s, read after
//            --seconds. Prints p50/p99/p99.9 (weighted, as the load tool's histogram) per page.
//            --wt-port PORT: the WebTransport pages are told this UDP port instead of the
//            relay's (the test's route rewrites `webtransport.port` in /connect.json, nothing
//            else; the certificate pin stays the relay's), so they go through a
//            `neonet-load proxy --listen 127.0.0.1:PORT --upstream <relay's QUIC port>`.
//            WebSocket pages always go straight to the HTTP port (TCP: the proxy is UDP only).
// --no-draw  (bandwidth, latency; a diagnostic) stops the page's drawing once joined (its
//            requestAnimationFrame is replaced by a no-op; the client still receives, acks,
//            pings and predicts), to tell the page's drawing cost from the rest.
//
// Setup used for MEASUREMENTS.md (2 cores: the relay on CPU 0, everything else on CPU 1):
//   cargo build --release -p neonet -p neonet-load --bin neonet-relay --bin neonet-load
//   mkdir -p /tmp/nm && cp target/release/neonet-relay target/release/neonet-load /tmp/nm/
//   cd /tmp/nm && taskset -c 0 ./neonet-relay --listen 127.0.0.1:4433 \
//       --http-listen 127.0.0.1:4480 --data-dir /tmp/nm/data --cert-dir /tmp/nm/certs &
//   # a busy world: 50 native clients walking (targets 2 and 3; target 1 also without it)
//   taskset -c 1 ./neonet-load run --addr 127.0.0.1:4433 --cert-dir /tmp/nm/certs \
//       --clients 50 --move walk --ramp 10s --duration 900s --seed 1 &
//   # 1. join
//   taskset -c 1 node tests/browser/measure.mjs join --samples 10
//   # 2. bandwidth: a native client standing where the browsers stand (the spawn), same window
//   taskset -c 1 ./neonet-load run --addr 127.0.0.1:4433 --cert-dir /tmp/nm/certs \
//       --clients 1 --move still --ramp 0s --duration 45s --seed 2 &
//   taskset -c 1 node tests/browser/measure.mjs bandwidth --seconds 20 --native load0
//   # 3. latency through the impairment proxy (5% loss, 50 ms one way), native alongside
//   taskset -c 1 ./neonet-load proxy --listen 127.0.0.1:5433 --upstream 127.0.0.1:4433 \
//       --loss 0.05 --delay-ms 50 --seed 7 &
//   taskset -c 1 ./neonet-load run --addr 127.0.0.1:5433 --cert-dir /tmp/nm/certs \
//       --clients 1 --move still --ramp 0s --duration 30s --seed 3 --json - &
//   taskset -c 1 node tests/browser/measure.mjs latency --seconds 30 --wt-port 5433
//
// Exit status 0 with every page measured, 1 when one failed (its error is in the JSON).
import { chromium } from 'playwright-core';
import { CHROMIUM_FLAGS } from './lib.mjs';

/** How often /status is polled in a bandwidth window, ms (users are reported every 250 ms). */
const STATUS_POLL_MS = 50;
/** `since` for /status: no trail samples, which this script does not read. */
const STATUS_SINCE_NONE = Number.MAX_SAFE_INTEGER;
const TRANSPORTS = ['webtransport', 'websocket'];

/** Calls `check()` until it returns something truthy, which it returns; throws after `timeoutMs`. */
async function waitForValue(what, timeoutMs, check) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

const USAGE = 'usage: measure.mjs join|bandwidth|latency [--url URL] [--transport T[,T]] [--samples N] '
  + '[--seconds S] [--warmup S] [--native NAME] [--wt-port PORT] [--chromium PATH] [--timeout-ms N] [--name-prefix P] [--no-draw]';

function parseArgs(argv) {
  const opts = {
    mode: argv[0],
    url: 'http://127.0.0.1:4480',
    transports: TRANSPORTS,
    samples: 10,
    seconds: 20,
    warmup: 5,
    native: null,
    wtPort: null,
    chromium: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    timeoutMs: 20_000,
    namePrefix: `m${process.pid}`,
    noDraw: false,
  };
  if (!['join', 'bandwidth', 'latency'].includes(opts.mode)) throw new Error(USAGE);
  const value = (i) => {
    if (i >= argv.length) throw new Error(`${argv[i - 1]} needs a value\n${USAGE}`);
    return argv[i];
  };
  const number = (i) => {
    const n = Number(value(i));
    if (!Number.isFinite(n) || n <= 0) throw new Error(`${argv[i - 1]} needs a positive number`);
    return n;
  };
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--url') opts.url = value(++i).replace(/\/+$/, '');
    else if (a === '--transport') opts.transports = value(++i).split(',');
    else if (a === '--samples') opts.samples = Math.round(number(++i));
    else if (a === '--seconds') opts.seconds = number(++i);
    else if (a === '--warmup') opts.warmup = number(++i);
    else if (a === '--native') opts.native = value(++i);
    else if (a === '--wt-port') opts.wtPort = Math.round(number(++i));
    else if (a === '--chromium') opts.chromium = value(++i);
    else if (a === '--timeout-ms') opts.timeoutMs = number(++i);
    else if (a === '--name-prefix') opts.namePrefix = value(++i);
    else if (a === '--no-draw') opts.noDraw = true;
    else throw new Error(`unknown option ${a}\n${USAGE}`);
  }
  for (const t of opts.transports) if (!TRANSPORTS.includes(t)) throw new Error(`bad transport ${t}`);
  return opts;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const round = (x, d = 1) => (x === null || x === undefined ? null : Math.round(x * 10 ** d) / 10 ** d);

/** Quantile q of plain samples: the smallest value with at least q of them at or below it. */
function quantile(values, q) {
  if (values.length === 0) return null;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.max(0, Math.ceil(q * s.length) - 1)];
}

/** Quantile q of weighted samples (a histogram's record_n): value where the weight reaches q. */
function weightedQuantile(values, weights, q) {
  const idx = values.map((_, i) => i).sort((a, b) => values[a] - values[b]);
  const total = weights.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  let acc = 0;
  for (const i of idx) {
    acc += weights[i];
    if (acc >= q * total) return values[i];
  }
  return values[idx[idx.length - 1]];
}


/**
 * Opens /play for `transport` in a fresh context. With `wtPort`, /connect.json is answered with
 * the relay's own answer, its webtransport.port replaced.
 */
async function openPage(browser, opts, transport, name) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console error: ${m.text()}`);
  });
  if (opts.wtPort !== null && transport === 'webtransport') {
    await page.route('**/connect.json', async (route) => {
      const res = await route.fetch();
      const info = await res.json();
      info.webtransport.port = opts.wtPort;
      await route.fulfill({ response: res, json: info });
    });
  }
  const q = new URLSearchParams({ transport, name });
  await page.goto(`${opts.url}/play?${q}`, { waitUntil: 'commit', timeout: opts.timeoutMs });
  return { context, page, errors, transport, name };
}

/** Leaves politely (Goodbye, as a closing tab's client would not always manage), then closes. */
async function closePage(p) {
  await p.page.evaluate(() => window.neonet?.close()).catch(() => {});
  await sleep(200);
  await p.context.close().catch(() => {});
}

async function waitJoined(p, timeoutMs) {
  await waitForValue(`${p.name} to join over ${p.transport}`, timeoutMs, () => p.page.evaluate(() => {
    const t = window.neonetTiming;
    return Boolean(t && t.firstFrame !== undefined && window.neonet.state === 'connected');
  }));
  const got = await p.page.evaluate(() => window.neonet.transport);
  if (got !== p.transport) throw new Error(`${p.name} joined over ${got}, not ${p.transport}`);
}

/** The relay's /status users, by session. */
async function statusUsers(url) {
  const res = await fetch(`${url}/status?since=${STATUS_SINCE_NONE}`);
  if (!res.ok) throw new Error(`/status answered ${res.status}`);
  return (await res.json()).users;
}

// ---------------------------------------------------------------------------------------------

const MARKS = ['connectInfo', 'linkOpen', 'joined', 'firstFrame', 'firstDatagram', 'firstInterpolatedFrame'];

async function measureJoin(browser, opts) {
  const out = {};
  for (const transport of opts.transports) {
    const samples = [];
    const failures = [];
    for (let i = 0; i < opts.samples; i++) {
      let p;
      try {
        p = await openPage(browser, opts, transport, `${opts.namePrefix}-join-${transport.slice(0, 2)}-${i}`);
        await waitJoined(p, opts.timeoutMs);
        // Remote entities, when there are any moving, show within a few ticks; a quiet world
        // may have none, so this wait is short and optional.
        await waitForValue('the first interpolated frame', 3000, () => p.page.evaluate(
          () => window.neonetTiming.firstInterpolatedFrame !== undefined,
        )).catch(() => {});
        const t = await p.page.evaluate(() => {
          const nav = performance.getEntriesByType('navigation')[0];
          return { ...window.neonetTiming, pageLoaded: nav ? nav.loadEventEnd : null };
        });
        samples.push(t);
      } catch (e) {
        failures.push(String(e.message ?? e));
      } finally {
        if (p) await closePage(p);
      }
      await sleep(300);
    }
    const summary = {};
    for (const k of ['pageLoaded', ...MARKS]) {
      const v = samples.map((s) => s[k]).filter((x) => typeof x === 'number');
      summary[k] = { n: v.length, p50: round(quantile(v, 0.5)), p90: round(quantile(v, 0.9)), max: round(Math.max(...v)) };
    }
    out[transport] = { samples: samples.length, failures, ms_from_navigation_start: summary, raw: samples };
  }
  return out;
}

async function openAll(browser, opts, what) {
  const pages = [];
  for (const t of opts.transports) {
    const p = await openPage(browser, opts, t, `${opts.namePrefix}-${what}-${t}`);
    pages.push(p);
  }
  for (const p of pages) await waitJoined(p, opts.timeoutMs);
  if (opts.noDraw) {
    for (const p of pages) await p.page.evaluate(() => { window.requestAnimationFrame = () => 0; });
  }
  return pages;
}

async function measureBandwidth(browser, opts) {
  const pages = await openAll(browser, opts, 'bw');
  try {
    await sleep(opts.warmup * 1000);
    const users0 = await statusUsers(opts.url);
    // A session /status does not list (today: every WebSocket session, whose link has no
    // remote address) is measured by its page's count alone.
    const sessionOf = (name, newest) => {
      const m = users0.filter((u) => u.name === name).sort((a, b) => b.session_id - a.session_id);
      if (!newest && m.length > 1) throw new Error(`${m.length} sessions named ${name}`);
      return m.length === 0 ? null : m[0].session_id;
    };
    const tracked = pages.map((p) => ({ label: p.transport, session: sessionOf(p.name, false) }));
    if (opts.native) {
      const session = sessionOf(opts.native, true);
      if (session === null) throw new Error(`no session named ${opts.native} in /status`);
      tracked.push({ label: 'native', session });
    }
    const mine = new Set(tracked.map((t) => t.session));
    const sums = new Map(tracked.filter((t) => t.session !== null).map((t) => [t.session, { out: 0, in: 0, polls: 0 }]));
    const others = { out: 0, polls: 0, sessions: 0 };
    const bytes0 = await Promise.all(pages.map((p) => p.page.evaluate(() => [performance.now(), window.neonet.link.bytesIn])));
    const end = Date.now() + opts.seconds * 1000;
    let polls = 0;
    while (Date.now() < end) {
      const t0 = Date.now();
      const users = await statusUsers(opts.url);
      polls++;
      let o = 0;
      let on = 0;
      for (const u of users) {
        const s = sums.get(u.session_id);
        if (s) {
          s.out += u.kbps_out;
          s.in += u.kbps_in;
          s.polls++;
        } else if (!mine.has(u.session_id)) {
          o += u.kbps_out;
          on++;
        }
      }
      if (on > 0) {
        others.out += o / on;
        others.polls++;
        others.sessions = Math.max(others.sessions, on);
      }
      await sleep(Math.max(0, STATUS_POLL_MS - (Date.now() - t0)));
    }
    const bytes1 = await Promise.all(pages.map((p) => p.page.evaluate(() => [performance.now(), window.neonet.link.bytesIn])));
    const result = { window_s: opts.seconds, drawing: !opts.noDraw, polls, sessions: {} };
    for (const t of tracked) {
      const s = sums.get(t.session);
      if (!s) {
        result.sessions[t.label] = { session: null, kbps_out: null, why: 'not listed in /status' };
        continue;
      }
      result.sessions[t.label] = {
        session: t.session,
        polls_seen: s.polls,
        kbps_out: round(s.out / Math.max(1, s.polls), 2),
        kbps_in: round(s.in / Math.max(1, s.polls), 2),
      };
    }
    pages.forEach((p, i) => {
      const [ta, ba] = bytes0[i];
      const [tb, bb] = bytes1[i];
      result.sessions[p.transport].page_received_kbps = round(((bb - ba) * 8) / (tb - ta), 2);
    });
    result.others = { sessions: others.sessions, mean_kbps_out: round(others.out / Math.max(1, others.polls), 2) };
    if (result.sessions.native) {
      for (const t of opts.transports) {
        const n = result.sessions.native.kbps_out;
        const b = result.sessions[t].kbps_out;
        const page = result.sessions[t].page_received_kbps;
        result.sessions[t].vs_native = b !== null && n > 0 ? round(b / n, 3) : null;
        result.sessions[t].page_vs_native = n > 0 ? round(page / n, 3) : null;
      }
    }
    result.entities_seen = await Promise.all(pages.map((p) => p.page.evaluate(() => window.neonet.world.entities.size)));
    return result;
  } finally {
    for (const p of pages) await closePage(p);
  }
}

async function measureLatency(browser, opts) {
  const pages = await openAll(browser, opts, 'lat');
  try {
    for (const p of pages) await p.page.evaluate(() => window.neonet.startLatencyLog());
    await sleep(opts.warmup * 1000);
    for (const p of pages) await p.page.evaluate(() => window.neonet.latencyLog.reset());
    await sleep(opts.seconds * 1000);
    const result = { window_s: opts.seconds, wt_port: opts.wtPort, drawing: !opts.noDraw, pages: {} };
    for (const p of pages) {
      const s = await p.page.evaluate(() => ({
        log: window.neonet.latencyLog.snapshot(),
        net: window.neonet.netStats(),
      }));
      const { ms, weights } = s.log;
      const updates = weights.reduce((a, b) => a + b, 0);
      result.pages[p.transport] = {
        datagrams: s.log.count,
        updates,
        update_latency_ms: {
          p50: round(weightedQuantile(ms, weights, 0.5), 2),
          p99: round(weightedQuantile(ms, weights, 0.99), 2),
          p999: round(weightedQuantile(ms, weights, 0.999), 2),
          max: round(Math.max(...ms), 2),
        },
        tick_phase_ms: round(s.log.phaseMs, 2),
        rtt_ms: round(s.net.rttMs, 1),
        interp_delay_ms: round(s.net.interpDelayMs, 1),
        datagrams_in: s.net.datagramsIn,
        reconnects: s.net.reconnects,
        errors: p.errors.slice(0, 5),
      };
    }
    return result;
  } finally {
    for (const p of pages) await closePage(p);
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const guardMs = opts.mode === 'join'
    ? opts.transports.length * opts.samples * (opts.timeoutMs + 5000) + 60_000
    : (opts.warmup + opts.seconds) * 1000 + opts.transports.length * opts.timeoutMs + 60_000;
  const guard = setTimeout(() => {
    console.error('measure: overall timeout');
    process.exit(2);
  }, guardMs);
  const browser = await chromium.launch({ executablePath: opts.chromium, headless: true, args: CHROMIUM_FLAGS });
  const out = { mode: opts.mode, url: opts.url, at: new Date().toISOString() };
  let failed = false;
  try {
    if (opts.mode === 'join') out.join = await measureJoin(browser, opts);
    else if (opts.mode === 'bandwidth') out.bandwidth = await measureBandwidth(browser, opts);
    else out.latency = await measureLatency(browser, opts);
  } catch (e) {
    out.error = String(e.stack ?? e);
    failed = true;
  } finally {
    await browser.close().catch(() => {});
    clearTimeout(guard);
  }
  if (out.join) failed = Object.values(out.join).some((t) => t.failures.length > 0);
  // Objects of plain values on one line each: a page of figures, not a column of them.
  console.log(JSON.stringify(out, null, 2).replace(/\{[^{}[\]]*\}/g, (m) => m.replace(/\s*\n\s*/g, ' ')));
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
