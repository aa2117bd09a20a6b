#!/usr/bin/env node
// Headless check of the relay's live network view.
//
//   node tests/browser/live_view.mjs [URL] [--screenshot FILE] [--timeout-ms N] [--chromium PATH]
//                                      [--expect-history] [--expect-entity-names]
//
// URL defaults to http://127.0.0.1:8080/ (the relay's HTTP root). The script loads the page in
// Debian's Chromium (driven by playwright-core; never a downloaded browser) and checks, with
// bounded waits and no assertions on how fast anything is, that:
//   * the page polls /status and applies it (body[data-updates] keeps growing),
//   * the figures (#connections, #kbps-out, #kbps-in, #tick-ms, #tick-hz, #datagrams-out) show
//     numbers, and the traffic figures change while a client moves,
//   * packet trails are drawn: #trails[data-particles] grows and the canvas has lit, coloured
//     pixels on its near-black background,
//   * nothing errs: no page errors, no console errors (a CSP violation from an off-origin load
//     would be one),
//   * with --expect-history: the chart opened filled from the relay's recent figures
//     (#spark[data-prefilled] > 0), not empty,
//   * with --expect-entity-names: a top entity shows a user name (#top-entities .id[data-name]).
// Prints a JSON summary on stdout; exit status 0 when all hold, 1 when one fails, 2 on timeout.
import { chromium } from 'playwright-core';
import { CHROMIUM_FLAGS as BASE_FLAGS, waitFor } from './lib.mjs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** How long to wait for each condition, ms: generous for a loaded 2-core CI machine. */
const STEP_TIMEOUT_MS_DEFAULT = 20_000;
/** Polls that must be applied after the first look: 8 at 4 Hz is about two seconds. */
const UPDATES_MORE_MIN = 8;
/** Lit pixels (any channel > 120) the trails canvas must show: the hub alone lights ~1000. */
const LIT_PIXELS_MIN = 400;

/** The shared flags, and no QUIC: the live view needs none. */
const CHROMIUM_FLAGS = [...BASE_FLAGS, '--disable-quic'];

function parseArgs(argv) {
  const opts = {
    url: 'http://127.0.0.1:8080/',
    screenshot: null,
    timeoutMs: STEP_TIMEOUT_MS_DEFAULT,
    chromium: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    expectHistory: false,
    expectEntityNames: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--screenshot') opts.screenshot = argv[++i];
    else if (a === '--timeout-ms') opts.timeoutMs = Number(argv[++i]);
    else if (a === '--chromium') opts.chromium = argv[++i];
    else if (a === '--expect-history') opts.expectHistory = true;
    else if (a === '--expect-entity-names') opts.expectEntityNames = true;
    else if (a === '-h' || a === '--help') {
      console.log('usage: live_view.mjs [URL] [--screenshot FILE] [--timeout-ms N] [--chromium PATH] [--expect-history] [--expect-entity-names]');
      process.exit(0);
    } else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else opts.url = a;
  }
  if (!Number.isFinite(opts.timeoutMs) || opts.timeoutMs <= 0) throw new Error('bad --timeout-ms');
  return opts;
}

async function figures(page) {
  return page.evaluate(() => {
    const text = (id) => document.getElementById(id)?.textContent ?? null;
    const trails = document.getElementById('trails');
    return {
      updates: Number(document.body.dataset.updates),
      errors: Number(document.body.dataset.errors),
      link: document.getElementById('link')?.dataset.state ?? null,
      connections: text('connections'),
      kbps_out: text('kbps-out'),
      kbps_in: text('kbps-in'),
      tick_ms: text('tick-ms'),
      tick_hz: text('tick-hz'),
      datagrams_out: text('datagrams-out'),
      entities: text('entities'),
      users_rows: document.querySelectorAll('#users tr').length,
      particles: Number(trails?.dataset.particles),
      frames: Number(trails?.dataset.frames),
      prefilled: Number(document.getElementById('spark')?.dataset.prefilled),
      entity_names: [...document.querySelectorAll('#top-entities .id[data-name]')].map((e) => e.dataset.name),
    };
  });
}

/** Counts lit and coloured pixels of the trails canvas. */
async function canvasPixels(page) {
  return page.evaluate(() => {
    const c = document.getElementById('trails');
    const { data } = c.getContext('2d').getImageData(0, 0, c.width, c.height);
    let lit = 0;
    let cyan = 0;
    let magenta = 0;
    for (let i = 0; i < data.length; i += 4) {
      const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
      if (Math.max(r, g, b) > 120) lit++;
      if (b > 120 && g > 120 && r < 110) cyan++;
      if (r > 120 && b > 120 && g < 110) magenta++;
    }
    return { width: c.width, height: c.height, lit, cyan, magenta };
  });
}


const isNumber = (s) => s !== null && s !== '–' && Number.isFinite(Number(s));

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const userDataDir = mkdtempSync(join(tmpdir(), 'neonet-chromium-'));
  // A hard stop in case Chromium itself hangs: every step below is bounded too.
  const guard = setTimeout(() => {
    console.error('live_view: overall timeout');
    rmSync(userDataDir, { recursive: true, force: true });
    process.exit(2);
  }, opts.timeoutMs * 4 + 30_000);

  const problems = [];
  let closing = false;
  const problem = (p) => {
    if (!closing) problems.push(p);
  };
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: opts.chromium,
      headless: true,
      args: CHROMIUM_FLAGS,
      viewport: { width: 1440, height: 900 },
      timeout: opts.timeoutMs,
    });
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (e) => problem(`page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') problem(`console error: ${m.text()}`);
    });
    page.on('requestfailed', (r) => problem(`request failed: ${r.url()} ${r.failure()?.errorText}`));

    await page.goto(opts.url, { waitUntil: 'load', timeout: opts.timeoutMs });
    const title = await page.title();
    for (const sel of ['#connections', '#kbps-out', '#kbps-in', '#tick-ms', '#tick-hz', '#trails', '#users', '#top-entities']) {
      if ((await page.locator(sel).count()) !== 1) throw new Error(`missing element ${sel}`);
    }

    const first = await waitFor('the first /status to be applied with numbers shown', opts.timeoutMs, async () => {
      const f = await figures(page);
      return { ok: f.updates >= 1 && isNumber(f.kbps_out) && isNumber(f.tick_ms) && isNumber(f.connections), value: f };
    });

    const later = await waitFor('the figures and trails to move', opts.timeoutMs, async () => {
      const f = await figures(page);
      const ok = f.updates >= first.updates + UPDATES_MORE_MIN
        && f.datagrams_out !== first.datagrams_out
        && f.particles > first.particles
        && f.frames > first.frames
        && isNumber(f.kbps_out) && Number(f.kbps_out) > 0
        && isNumber(f.tick_hz);
      return { ok, value: f };
    });

    const pixels = await waitFor('packet trails to light the canvas', opts.timeoutMs, async () => {
      const p = await canvasPixels(page);
      return { ok: p.lit >= LIT_PIXELS_MIN && p.cyan > 0 && p.magenta > 0, value: p };
    });

    if (opts.screenshot) await page.screenshot({ path: opts.screenshot, fullPage: true });

    if (later.link !== 'live') problems.push(`link state is ${later.link}, not live`);
    if (opts.expectHistory && !(first.prefilled > 0)) {
      problems.push(`the chart opened empty: ${first.prefilled} points prefilled from /status`);
    }
    if (opts.expectEntityNames) {
      await waitFor('a top entity to show its name', opts.timeoutMs, async () => {
        const f = await figures(page);
        return { ok: f.entity_names.length > 0, value: f.entity_names };
      });
    }
    const summary = { url: opts.url, title, first, later, pixels, problems };
    console.log(JSON.stringify(summary, null, 2));
  } catch (err) {
    problems.push(String(err && err.stack ? err.stack : err));
  } finally {
    closing = true;
    if (context) await context.close().catch(() => {});
    clearTimeout(guard);
    rmSync(userDataDir, { recursive: true, force: true });
  }
  if (problems.length > 0) {
    const counts = new Map();
    for (const p of problems) counts.set(p, (counts.get(p) ?? 0) + 1);
    const lines = [...counts].map(([p, n]) => (n > 1 ? `${p} (×${n})` : p));
    console.error(`live_view: FAILED\n  ${lines.join('\n  ')}`);
    process.exit(1);
  }
  console.error('live_view: ok');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
