#!/usr/bin/env node
// Headless check of the browser demo page (/play) against a running relay.
//
//   node tests/browser/play.mjs [URL] [--transport webtransport|websocket|auto] [--name NAME]
//        [--screenshot FILE] [--chat TEXT] [--expect-chat TEXT] [--expect-moving NAME]
//        [--blueprint ID] [--timeout-ms N] [--chromium PATH]
//
// URL is the relay's HTTP origin (default http://127.0.0.1:8080). The script opens
// URL/play?transport=T&name=NAME in Debian's Chromium (driven by playwright-core; never a
// downloaded browser) and checks, with bounded waits and no assertion on how fast anything is:
//   * the page joins the world with the requested transport (body[data-state] 'connected',
//     body[data-transport] as asked);
//   * holding W moves the own player: the predicted position moves, and so does the server's
//     authoritative own state (the inputs reached the server and came back);
//   * --chat TEXT: typed into the chat box and sent, it comes back from the server as our own;
//   * --expect-chat TEXT: a chat message with that body arrives from someone else (a native
//     client the calling test runs);
//   * --expect-moving NAME: the player called NAME (another client) is drawn at interpolated
//     positions that change: remote motion reaches the page;
//   * --blueprint ID: the page adds a blueprint ID, then modifies it (name "edited in
//     chromium"); both are acknowledged (the calling test checks a native client got them);
//   * nothing errs: no page errors, no console errors (a CSP violation would be one), no failed
//     requests.
// Then it turns the netcode overlay on, moves right with D (D must move +x: the page's axes),
// takes the screenshot while moving and prints a JSON summary on stdout.
// Exit status 0 when all hold, 1 when one fails, 2 on the overall timeout.
import { chromium } from 'playwright-core';
import { CHROMIUM_FLAGS, waitFor } from './lib.mjs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** How long to wait for each condition, ms: generous for a loaded 2-core CI machine. */
const STEP_TIMEOUT_MS_DEFAULT = 20_000;
/** How far the own player must move while W is held, metres (walking is 4 m/s). */
const MOVE_MIN_M = 1.0;
/** How far the server's authoritative own state must move too, metres. */
const SERVER_MOVE_MIN_M = 0.5;
/** Frames the page must draw after joining: the render loop runs. */
const FRAMES_MIN = 10;


const USAGE = 'usage: play.mjs [URL] [--transport webtransport|websocket|auto] [--name NAME] '
  + '[--screenshot FILE] [--chat TEXT] [--expect-chat TEXT] [--expect-moving NAME] '
  + '[--blueprint ID] [--timeout-ms N] [--chromium PATH]';

function parseArgs(argv) {
  const opts = {
    url: 'http://127.0.0.1:8080',
    transport: 'auto',
    name: `chromium-${process.pid}`,
    screenshot: null,
    chat: null,
    expectChat: null,
    expectMoving: null,
    blueprint: null,
    timeoutMs: STEP_TIMEOUT_MS_DEFAULT,
    chromium: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  };
  const value = (i) => {
    if (i >= argv.length) throw new Error(`${argv[i - 1]} needs a value\n${USAGE}`);
    return argv[i];
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--transport') opts.transport = value(++i);
    else if (a === '--name') opts.name = value(++i);
    else if (a === '--screenshot') opts.screenshot = value(++i);
    else if (a === '--chat') opts.chat = value(++i);
    else if (a === '--expect-chat') opts.expectChat = value(++i);
    else if (a === '--expect-moving') opts.expectMoving = value(++i);
    else if (a === '--blueprint') opts.blueprint = value(++i);
    else if (a === '--timeout-ms') opts.timeoutMs = Number(value(++i));
    else if (a === '--chromium') opts.chromium = value(++i);
    else if (a === '-h' || a === '--help') {
      console.log(USAGE);
      process.exit(0);
    } else if (a.startsWith('--')) throw new Error(`unknown option ${a}\n${USAGE}`);
    else opts.url = a;
  }
  if (!['auto', 'webtransport', 'websocket'].includes(opts.transport)) throw new Error(`bad --transport ${opts.transport}`);
  if (!Number.isFinite(opts.timeoutMs) || opts.timeoutMs <= 0) throw new Error('bad --timeout-ms');
  opts.url = opts.url.replace(/\/+$/, '');
  return opts;
}


/** What the page shows and knows, in one round trip. */
async function look(page) {
  return page.evaluate(() => {
    const c = window.neonet;
    const d = document.body.dataset;
    const round = (p) => (p ? p.map((v) => Math.round(v * 1000) / 1000) : null);
    const server = c && c.player !== null ? c.serverPosition(c.player) : null;
    return {
      state: d.state,
      transport: d.transport,
      players: Number(d.players),
      entities: Number(d.entities),
      chat: Number(d.chat),
      frames: Number(d.frames),
      player: c ? c.player : null,
      position: c ? round(c.playerPosition()) : null,
      server: server ? round(server.position) : null,
      stateInfo: c ? c.stateInfo : null,
      warnings: (window.neonetWarnings ?? []).slice(-5),
    };
  });
}

const horizontal = (a, b) => Math.hypot(a[0] - b[0], a[2] - b[2]);

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const userDataDir = mkdtempSync(join(tmpdir(), 'neonet-chromium-'));
  // A hard stop in case Chromium itself hangs: every step below is bounded too.
  const guard = setTimeout(() => {
    console.error('play: overall timeout');
    rmSync(userDataDir, { recursive: true, force: true });
    process.exit(2);
  }, opts.timeoutMs * 7 + 30_000);

  const problems = [];
  let closing = false;
  const problem = (p) => {
    if (!closing) problems.push(p);
  };
  const summary = { url: opts.url, transport_requested: opts.transport, name: opts.name };
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

    const q = new URLSearchParams({ transport: opts.transport, name: opts.name });
    const url = `${opts.url}/play?${q}`;
    await page.goto(url, { waitUntil: 'load', timeout: opts.timeoutMs });
    summary.title = await page.title();

    // 1. Joined, with the transport asked for.
    const joined = await waitFor(`joining over ${opts.transport}`, opts.timeoutMs, async () => {
      const v = await look(page);
      const transportOk = opts.transport === 'auto' ? v.transport !== '' : v.transport === opts.transport;
      return { ok: v.state === 'connected' && transportOk && v.player !== null && v.position !== null, value: v };
    });
    summary.transport = joined.transport;
    summary.player = joined.player;

    // 2. The page draws, and the own player is predicted from a server own-state.
    const start = await waitFor('the first own-state and frames drawn', opts.timeoutMs, async () => {
      const v = await look(page);
      return { ok: v.server !== null && v.frames >= joined.frames + FRAMES_MIN, value: v };
    });

    // 3. Hold W: the predicted and the authoritative positions move.
    await page.locator('#world').focus();
    await page.keyboard.down('KeyW');
    let moved;
    try {
      moved = await waitFor('the own player to move while W is held', opts.timeoutMs, async () => {
        const v = await look(page);
        const ok = v.position && v.server
          && horizontal(v.position, start.position) >= MOVE_MIN_M
          && horizontal(v.server, start.server) >= SERVER_MOVE_MIN_M;
        return { ok, value: v };
      });
    } finally {
      await page.keyboard.up('KeyW');
    }
    summary.move = {
      from: start.position,
      to: moved.position,
      server_from: start.server,
      server_to: moved.server,
      predicted_m: Math.round(horizontal(moved.position, start.position) * 100) / 100,
      server_m: Math.round(horizontal(moved.server, start.server) * 100) / 100,
    };

    // 4. Chat: ours comes back from the server; someone else's arrives.
    if (opts.chat !== null) {
      await page.locator('#chat-input').fill(opts.chat);
      await page.locator('#chat-input').press('Enter');
      summary.chat_sent = await waitFor(`our chat "${opts.chat}" to come back`, opts.timeoutMs, async () => {
        const m = await page.evaluate((text) => {
          const c = window.neonet;
          return c.world.chat.find((x) => x.body === text && x.from_entity === c.player) ?? null;
        }, opts.chat);
        return { ok: m !== null, value: m && { id: m.id, from_name: m.from_name } };
      });
    }
    if (opts.expectChat !== null) {
      summary.chat_received = await waitFor(`chat "${opts.expectChat}" from someone else`, opts.timeoutMs, async () => {
        const m = await page.evaluate((text) => {
          const c = window.neonet;
          const x = c.world.chat.find((y) => y.body === text && y.from_entity !== c.player);
          return x ? { id: x.id, from_name: x.from_name } : null;
        }, opts.expectChat);
        return { ok: m !== null, value: m };
      });
    }

    // 4b. Someone else moving, as the page draws them (interpolated).
    if (opts.expectMoving !== null) {
      const positions = [];
      summary.remote_moving = await waitFor(`${opts.expectMoving} to move on the page`, opts.timeoutMs, async () => {
        const p = await page.evaluate((name) => {
          const c = window.neonet;
          c.beginFrame();
          const other = c.players().find((x) => x.name === name && !x.self);
          return other ? c.entityPosition(other.id) : null;
        }, opts.expectMoving);
        if (p) positions.push(p);
        const first = positions[0];
        const moved = first && p && horizontal(first, p) >= MOVE_MIN_M;
        return { ok: Boolean(moved), value: moved ? { from: first, to: p } : null };
      });
    }

    // 4c. A blueprint added, then edited, from the browser.
    if (opts.blueprint !== null) {
      summary.blueprint = await page.evaluate(async (id) => {
        const c = window.neonet;
        const flags = { preload: false, public: true, locked: false, frozen: false, unique: false, scene: false, disabled: false };
        await c.addBlueprint({
          id, version: 1, name: 'from chromium', author: 'play.mjs', model: null, script: null,
          image: null, desc: '', props: new Uint8Array(), flags,
        });
        await c.modifyBlueprint(id, { name: 'edited in chromium' }, 2);
        return { id, acknowledged: true };
      }, opts.blueprint);
    }

    // 5. The overlay on and the player moving again (ghosts and difference lines show), a
    //    screenshot.
    await page.locator('#world').focus();
    await page.keyboard.press('KeyN');
    const overlay = await waitFor('the netcode overlay to show figures', opts.timeoutMs, async () => {
      const v = await page.evaluate(() => ({
        visible: !document.getElementById('netcode').hidden,
        rtt: document.getElementById('g-rtt').textContent,
        delay: document.getElementById('g-delay').textContent,
      }));
      return { ok: v.visible && v.rtt !== '–' && v.delay !== '–', value: v };
    });
    summary.overlay = overlay;
    const before = await look(page);
    await page.keyboard.down('KeyD');
    try {
      await waitFor('the own player to move right while D is held', opts.timeoutMs, async () => {
        const v = await look(page);
        return { ok: v.position && v.position[0] - before.position[0] >= MOVE_MIN_M, value: v };
      });
      if (opts.screenshot) await page.screenshot({ path: opts.screenshot });
    } finally {
      await page.keyboard.up('KeyD');
    }

    const last = await look(page);
    summary.final = { state: last.state, players: last.players, entities: last.entities, chat: last.chat, frames: last.frames };
    summary.net = await page.evaluate(() => window.neonet.netStats());
    summary.warnings = last.warnings;
    if (last.state !== 'connected') problems.push(`state is ${last.state} at the end, not connected`);
  } catch (err) {
    problems.push(String(err && err.stack ? err.stack : err));
  } finally {
    closing = true;
    if (context) await context.close().catch(() => {});
    clearTimeout(guard);
    rmSync(userDataDir, { recursive: true, force: true });
  }
  summary.problems = problems;
  console.log(JSON.stringify(summary, null, 2));
  if (problems.length > 0) {
    const counts = new Map();
    for (const p of problems) counts.set(p, (counts.get(p) ?? 0) + 1);
    const lines = [...counts].map(([p, n]) => (n > 1 ? `${p} (×${n})` : p));
    console.error(`play: FAILED\n  ${lines.join('\n  ')}`);
    process.exit(1);
  }
  console.error('play: ok');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
