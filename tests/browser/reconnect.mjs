#!/usr/bin/env node
// Headless check that the demo page comes back by itself after the relay restarts.
//
//   node tests/browser/reconnect.mjs URL [--transport webtransport|websocket|auto]
//        [--timeout-ms N] [--chromium PATH]
//
// Opens URL/play, waits until it is connected, prints the line `joined` on stdout (the calling
// test then stops the relay and starts it again on the same ports), waits until the page says
// it is reconnecting, then until it is connected again, with the transport asked for, as the
// same user (the token it stored). Prints a JSON summary; exit status 0 when all hold, 1 when
// one fails, 2 on the overall timeout. While the relay is down Chromium itself logs refused
// connections; those are expected and not counted as problems, any other error is.
import { chromium } from 'playwright-core';
import { CHROMIUM_FLAGS, waitFor } from './lib.mjs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Each wait's bound, ms: generous for a loaded 2-core CI machine and a relay restart. */
const STEP_TIMEOUT_MS_DEFAULT = 30_000;


/** Browser errors that an outage causes by design (the relay is down on purpose). */
const OUTAGE_ERRORS = [/ERR_CONNECTION_REFUSED/, /ERR_QUIC_PROTOCOL_ERROR/, /WebTransport/i, /WebSocket/i, /connect\.json/];

function parseArgs(argv) {
  const opts = {
    url: null,
    transport: 'auto',
    timeoutMs: STEP_TIMEOUT_MS_DEFAULT,
    chromium: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (++i >= argv.length) throw new Error(`${a} needs a value`);
      return argv[i];
    };
    if (a === '--transport') opts.transport = value();
    else if (a === '--timeout-ms') opts.timeoutMs = Number(value());
    else if (a === '--chromium') opts.chromium = value();
    else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else opts.url = a.replace(/\/+$/, '');
  }
  if (!opts.url) throw new Error('usage: reconnect.mjs URL [--transport T] [--timeout-ms N] [--chromium PATH]');
  return opts;
}


const look = (page) => page.evaluate(() => {
  const c = window.neonet;
  return {
    state: document.body.dataset.state,
    transport: document.body.dataset.transport,
    user: c ? c.user : null,
    reconnects: c ? c.netStats().reconnects : 0,
  };
});

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const userDataDir = mkdtempSync(join(tmpdir(), 'neonet-chromium-'));
  const guard = setTimeout(() => {
    console.error('reconnect: overall timeout');
    rmSync(userDataDir, { recursive: true, force: true });
    process.exit(2);
  }, opts.timeoutMs * 4 + 30_000);
  const problems = [];
  const summary = { url: opts.url, transport_requested: opts.transport };
  let context;
  let outage = false;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: opts.chromium,
      headless: true,
      args: CHROMIUM_FLAGS,
      timeout: opts.timeoutMs,
    });
    const page = context.pages()[0] ?? (await context.newPage());
    const expected = (text) => outage && OUTAGE_ERRORS.some((re) => re.test(text));
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' && !expected(m.text())) problems.push(`console error: ${m.text()}`);
    });
    const q = new URLSearchParams({ transport: opts.transport, name: 'comeback' });
    await page.goto(`${opts.url}/play?${q}`, { waitUntil: 'load', timeout: opts.timeoutMs });
    const transportOk = (v) => (opts.transport === 'auto' ? v.transport !== '' : v.transport === opts.transport);
    const first = await waitFor('the first join', opts.timeoutMs, async () => {
      const v = await look(page);
      return { ok: v.state === 'connected' && transportOk(v) && v.user !== null, value: v };
    });
    summary.first = first;
    outage = true;
    console.log('joined');
    summary.lost = await waitFor('the page to notice the relay is gone', opts.timeoutMs, async () => {
      const v = await look(page);
      return { ok: v.state === 'reconnecting' || v.state === 'connecting' || v.state === 'joining', value: v };
    });
    const back = await waitFor('the page to be connected again', opts.timeoutMs * 2, async () => {
      const v = await look(page);
      return { ok: v.state === 'connected' && transportOk(v) && v.reconnects >= 1, value: v };
    });
    outage = false;
    summary.back = back;
    if (back.user !== first.user) problems.push(`came back as user ${back.user}, not ${first.user}`);
  } catch (err) {
    problems.push(String(err && err.stack ? err.stack : err));
  } finally {
    if (context) await context.close().catch(() => {});
    clearTimeout(guard);
    rmSync(userDataDir, { recursive: true, force: true });
  }
  summary.problems = problems;
  console.log(JSON.stringify(summary, null, 2));
  if (problems.length > 0) {
    console.error(`reconnect: FAILED\n  ${problems.join('\n  ')}`);
    process.exit(1);
  }
  console.error('reconnect: ok');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
