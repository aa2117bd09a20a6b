// neonet play: the browser demo. Joins the world through web/neonet/client.js (WebTransport,
// else WebSocket), draws it from above, moves the own player with the keyboard (predicted), and
// shows chat, players, the transport and the connection state. N toggles the netcode overlay:
// the server's authoritative positions as ghosts, a line where they differ from what is shown,
// and a live graph of RTT, interpolation delay and corrections.
//
// For tests (tests/browser/play.mjs, measure.mjs): body[data-transport|state|players|entities|
// chat|frames], window.neonet (the client), window.neonetWarnings (its last warnings) and
// window.neonetTiming (client.marks: when joining's steps and the first frames happened). Peer-supplied
// strings only ever go through textContent.

import { connect } from './neonet/client.js';

/** Pixels per metre at the default zoom. */
const PX_PER_M = 28;
/** Graph history: samples at GRAPH_SAMPLE_MS, GRAPH_SAMPLES_MAX of them (10 s). */
const GRAPH_SAMPLE_MS = 100;
const GRAPH_SAMPLES_MAX = 100;
/** Chat lines kept in the log (the server's history is 50). */
const CHAT_LINES_MAX = 200;
/** Below this, shown and authoritative positions count as equal in the overlay, metres. */
const GHOST_EPSILON_M = 0.01;
/** Rows in the player list. */
const PLAYER_ROWS_MAX = 100;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

function pickName() {
  const asked = params.get('name');
  if (asked && asked.trim()) return asked.trim().slice(0, 32);
  try {
    const kept = localStorage.getItem('neonet.play.name');
    if (kept) return kept;
    const fresh = `guest-${Math.floor(Math.random() * 0xffff).toString(16).padStart(4, '0')}`;
    localStorage.setItem('neonet.play.name', fresh);
    return fresh;
  } catch {
    return `guest-${Math.floor(Math.random() * 0xffff).toString(16).padStart(4, '0')}`;
  }
}

const name = pickName();
const transport = params.get('transport') || 'auto';
$('me').textContent = name;

// `?spectate`: watch without a player of your own, the camera over the middle of the world.
const spectate = params.has('spectate');
const client = connect({ name, transport, camera: spectate ? [0, 30, 0] : undefined });
window.neonet = client;
/** When each step of joining first happened, ms from navigation start (client.mark). */
window.neonetTiming = client.marks;

/** Warnings kept for tests and the transport badge's tooltip (why WebTransport was not used...). */
const WARNINGS_MAX = 50;
const warnings = [];
window.neonetWarnings = warnings;
client.on('warning', (w) => {
  warnings.push(w.message);
  if (warnings.length > WARNINGS_MAX) warnings.shift();
});

const body = document.body;
const ds = body.dataset;
const canvas = $('world');
const ctx = canvas.getContext('2d');
const graph = $('graph');
const gctx = graph.getContext('2d');

const view = {
  frames: 0,
  overlay: params.get('netcode') === '1',
  zoom: 1,
  camera: [0, 0],
  graph: [], // { rtt, delay, corr }
};

// ---------- connection state ----------

function showState(s) {
  ds.state = s.state;
  ds.transport = client.transport ?? '';
  const st = $('state');
  st.dataset.state = s.state;
  const tr = $('transport');
  tr.dataset.transport = client.transport ?? '';
  tr.textContent = client.transport ?? '–';
  tr.title = client.transportNote ? `WebTransport not used: ${client.transportNote}` : '';
  const banner = $('banner');
  let text = s.state;
  let bannerText = null;
  if (s.state === 'reconnecting') {
    text = `reconnecting · ${s.attempt}`;
    bannerText = `connection lost · retrying in ${(s.nextInMs / 1000).toFixed(1)} s (attempt ${s.attempt})`;
  } else if (s.state === 'closed') {
    text = `closed · ${s.reason}`;
    bannerText = `${s.reason}${s.detail ? `: ${s.detail}` : ''}`;
  }
  st.textContent = text;
  st.title = s.why ?? s.detail ?? '';
  banner.hidden = bannerText === null;
  banner.textContent = bannerText ?? '';
}

client.on('state', showState);
showState({ state: client.state });

// ---------- players ----------

function showPlayers() {
  const list = client.players();
  const ul = $('players');
  ul.replaceChildren(
    ...list.slice(0, PLAYER_ROWS_MAX).map((p) => {
      const li = document.createElement('li');
      if (p.self) li.className = 'self';
      const dot = document.createElement('span');
      dot.className = 'dot';
      const n = document.createElement('span');
      n.className = 'name';
      n.textContent = p.self ? `${p.name} (you)` : p.name;
      const r = document.createElement('span');
      r.className = 'rank';
      r.textContent = p.rank;
      li.append(dot, n, r);
      return li;
    }),
  );
  $('player-count').textContent = String(list.length);
  ds.players = String(list.length);
  ds.entities = String(client.world.entities.size);
}

client.on('joined', () => {
  showPlayers();
  showChatHistory();
});
client.on('entity', showPlayers);

// ---------- chat ----------

function chatLine(m, extraClass) {
  const li = document.createElement('li');
  if (extraClass) li.className = extraClass;
  else if (m.from_entity !== null && m.from_entity !== undefined && m.from_entity === client.player) li.className = 'own';
  else if (m.from_user === null || m.from_user === undefined) li.className = 'system';
  const from = document.createElement('span');
  from.className = 'from';
  from.textContent = m.from_name ?? 'system';
  const text = document.createElement('span');
  text.textContent = m.body;
  li.append(from, text);
  return li;
}

function appendChat(li) {
  const log = $('chat-log');
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(li);
  while (log.childElementCount > CHAT_LINES_MAX) log.firstElementChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function showChatHistory() {
  $('chat-log').replaceChildren(...client.world.chat.map((m) => chatLine(m)));
  ds.chat = String(client.world.chat.length);
  $('chat-log').scrollTop = $('chat-log').scrollHeight;
}

client.on('chat', (m) => {
  appendChat(chatLine(m));
  ds.chat = String(client.world.chat.length);
});
client.on('chatCleared', () => {
  $('chat-log').replaceChildren();
  ds.chat = '0';
});

$('chat-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('chat-input');
  const text = input.value.trim();
  if (!text) return;
  input.value = '';
  const sent = text.startsWith('/') ? client.sendCommand(text.slice(1).split(/\s+/)) : client.sendChat(text);
  // A command's text answer (/help's list) is shown; a refusal's Error carries it in its message.
  sent.then((r) => r.text && appendChat(chatLine({ from_name: 'relay', body: r.text }, 'system')), () => {});
  sent.catch((e) => appendChat(chatLine({ from_name: 'not sent', body: `${e.message}` }, 'system')));
  canvas.focus();
});

// ---------- keyboard ----------

const keys = new Set();
const MOVE_KEYS = new Set(['KeyW', 'KeyA', 'KeyS', 'KeyD', 'ArrowUp', 'ArrowDown', 'ArrowLeft', 'ArrowRight', 'Space', 'ShiftLeft', 'ShiftRight']);
let yaw = 0;

function updateInput() {
  const right = (keys.has('KeyD') || keys.has('ArrowRight') ? 1 : 0) - (keys.has('KeyA') || keys.has('ArrowLeft') ? 1 : 0);
  const fwd = (keys.has('KeyW') || keys.has('ArrowUp') ? 1 : 0) - (keys.has('KeyS') || keys.has('ArrowDown') ? 1 : 0);
  const moving = right !== 0 || fwd !== 0;
  // Face where we go: forward is +Z at yaw 0 and the heading turns toward +X, so the heading of
  // a world direction (x, z) is atan2(x, z). Screen up is +Z, right is +X.
  if (moving) yaw = Math.round((Math.atan2(right, fwd) / (2 * Math.PI)) * 65536) & 0xffff;
  client.setInput({
    move_x: 0,
    move_z: moving ? 127 : 0,
    yaw,
    run: keys.has('ShiftLeft') || keys.has('ShiftRight'),
    jump: keys.has('Space'),
  });
}

const typing = () => document.activeElement === $('chat-input');

window.addEventListener('keydown', (ev) => {
  if (typing()) {
    if (ev.key === 'Escape') canvas.focus();
    return;
  }
  if (ev.key === 'Enter') {
    $('chat-input').focus();
    ev.preventDefault();
    return;
  }
  if (ev.code === 'KeyN' && !ev.repeat) {
    view.overlay = !view.overlay;
    $('netcode').hidden = !view.overlay;
    return;
  }
  if (MOVE_KEYS.has(ev.code)) {
    keys.add(ev.code);
    ev.preventDefault();
    updateInput();
  }
});
window.addEventListener('keyup', (ev) => {
  if (keys.delete(ev.code)) updateInput();
});
// Keys released while the page had no focus never send keyup: stop rather than run away.
window.addEventListener('blur', () => {
  keys.clear();
  updateInput();
});
$('chat-input').addEventListener('focus', () => {
  keys.clear();
  updateInput();
});
canvas.addEventListener('wheel', (ev) => {
  ev.preventDefault();
  view.zoom = Math.min(4, Math.max(0.25, view.zoom * (ev.deltaY < 0 ? 1.1 : 1 / 1.1)));
}, { passive: false });
$('netcode').hidden = !view.overlay;

// ---------- drawing ----------

function hueFor(id) {
  let h = Math.imul((id >>> 0) ^ 0x9e3779b9, 0x85ebca6b) >>> 0;
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35) >>> 0;
  return 185 + (h % 131);
}

function fitCanvas(c, context) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(c.clientWidth * dpr));
  const h = Math.max(1, Math.round(c.clientHeight * dpr));
  if (c.width !== w || c.height !== h) {
    c.width = w;
    c.height = h;
  }
  context.setTransform(dpr, 0, 0, dpr, 0, 0);
  return [c.clientWidth, c.clientHeight];
}

function drawGrid(w, h, scale) {
  const [cx, cz] = view.camera;
  const left = cx - w / 2 / scale;
  const right = cx + w / 2 / scale;
  const top = cz + h / 2 / scale;
  const bottom = cz - h / 2 / scale;
  const step = scale < 12 ? 5 : 1;
  // One path per line style (four strokes a frame, not one per line): stroking is what costs
  // in a software-rendered canvas, and every millisecond here delays the network's events.
  const paths = { xMajor: new Path2D(), xMinor: new Path2D(), zMajor: new Path2D(), zMinor: new Path2D() };
  for (let x = Math.floor(left / step) * step; x <= right; x += step) {
    const sx = w / 2 + (x - cx) * scale;
    const path = x % 10 === 0 ? paths.xMajor : paths.xMinor;
    path.moveTo(sx, 0);
    path.lineTo(sx, h);
  }
  for (let z = Math.floor(bottom / step) * step; z <= top; z += step) {
    const sy = h / 2 - (z - cz) * scale;
    const path = z % 10 === 0 ? paths.zMajor : paths.zMinor;
    path.moveTo(0, sy);
    path.lineTo(w, sy);
  }
  ctx.strokeStyle = 'rgba(0, 240, 255, 0.16)';
  ctx.stroke(paths.xMajor);
  ctx.strokeStyle = 'rgba(0, 240, 255, 0.05)';
  ctx.stroke(paths.xMinor);
  ctx.strokeStyle = 'rgba(255, 43, 214, 0.14)';
  ctx.stroke(paths.zMajor);
  ctx.strokeStyle = 'rgba(255, 43, 214, 0.04)';
  ctx.stroke(paths.zMinor);
}

/** Most glow sprites kept (colour × radius in pixels): zooming makes new radii. */
const GLOW_SPRITES_MAX = 64;
const glowSprites = new Map();

/**
 * A disc of `color` with its neon glow, `r` pixels in radius, drawn once into an offscreen
 * canvas and reused: `shadowBlur` on every disc every frame is the dearest thing a
 * software-rendered canvas does (tens of milliseconds a frame with fifty players).
 */
function glowSprite(color, r) {
  const radius = Math.max(2, Math.round(r));
  const key = `${color}/${radius}`;
  let sprite = glowSprites.get(key);
  if (sprite) return sprite;
  const pad = 16;
  const size = 2 * (radius + pad);
  const c = document.createElement('canvas');
  c.width = size;
  c.height = size;
  const g = c.getContext('2d');
  g.shadowColor = color;
  g.shadowBlur = 16;
  g.fillStyle = color;
  g.beginPath();
  g.arc(size / 2, size / 2, radius, 0, 2 * Math.PI);
  g.fill();
  sprite = { canvas: c, half: size / 2 };
  if (glowSprites.size >= GLOW_SPRITES_MAX) glowSprites.delete(glowSprites.keys().next().value);
  glowSprites.set(key, sprite);
  return sprite;
}

function toScreen(p, w, h, scale) {
  return [w / 2 + (p[0] - view.camera[0]) * scale, h / 2 - (p[2] - view.camera[1]) * scale];
}

function drawGhost(shown, auth, w, h, scale, color) {
  if (!auth) return;
  const [ax, ay] = toScreen(auth.position, w, h, scale);
  const [sx, sy] = toScreen(shown, w, h, scale);
  ctx.save();
  ctx.globalAlpha = 0.35;
  ctx.strokeStyle = color;
  ctx.setLineDash([3, 3]);
  ctx.beginPath();
  ctx.arc(ax, ay, 0.45 * scale, 0, 2 * Math.PI);
  ctx.stroke();
  ctx.restore();
  const d = Math.hypot(auth.position[0] - shown[0], auth.position[2] - shown[2]);
  if (d > GHOST_EPSILON_M) {
    ctx.strokeStyle = 'rgba(255, 255, 255, 0.55)';
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(sx, sy);
    ctx.lineTo(ax, ay);
    ctx.stroke();
    ctx.fillStyle = 'rgba(207, 233, 255, 0.7)';
    ctx.font = '10px ui-monospace, "DejaVu Sans Mono", monospace';
    ctx.fillText(`${(d * 100).toFixed(0)} cm`, (sx + ax) / 2 + 4, (sy + ay) / 2 + 14);
  }
}

function drawPlayer(p, pos, self, w, h, scale) {
  const [x, y] = toScreen(pos, w, h, scale);
  const color = self ? '#00f0ff' : '#ff2bd6';
  // Height above the ground (a jump) lifts the glow.
  const lift = Math.max(0, pos[1]) * scale * 0.4;
  ctx.fillStyle = 'rgba(0, 0, 0, 0.45)';
  ctx.beginPath();
  ctx.ellipse(x, y + 2, 0.4 * scale, 0.22 * scale, 0, 0, 2 * Math.PI);
  ctx.fill();
  const sprite = glowSprite(color, 0.4 * scale);
  ctx.drawImage(sprite.canvas, x - sprite.half, y - lift - sprite.half);
  ctx.fillStyle = '#04050b';
  ctx.beginPath();
  ctx.arc(x, y - lift, 0.16 * scale, 0, 2 * Math.PI);
  ctx.fill();
  if (self) {
    // Heading: the yaw the keyboard last chose.
    const a = (yaw / 65536) * 2 * Math.PI;
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.moveTo(x, y - lift);
    ctx.lineTo(x + Math.sin(a) * 0.75 * scale, y - lift - Math.cos(a) * 0.75 * scale);
    ctx.stroke();
    ctx.lineWidth = 1;
  }
  ctx.fillStyle = self ? '#e8fdff' : '#ffd9f6';
  ctx.font = '11px ui-monospace, "DejaVu Sans Mono", monospace';
  ctx.textAlign = 'center';
  ctx.fillText(p.name, x, y - lift - 0.6 * scale);
  ctx.textAlign = 'start';
}

function drawApp(id, pos, w, h, scale) {
  const [x, y] = toScreen(pos, w, h, scale);
  const hue = hueFor(id);
  const s = 0.35 * scale;
  ctx.save();
  ctx.translate(x, y);
  ctx.rotate(Math.PI / 4);
  // A wide faint stroke under the crisp one: the glow without a per-frame blur.
  ctx.strokeStyle = `hsl(${hue} 100% 60% / 0.25)`;
  ctx.lineWidth = 6;
  ctx.strokeRect(-s, -s, 2 * s, 2 * s);
  ctx.strokeStyle = `hsl(${hue} 100% 65%)`;
  ctx.lineWidth = 2;
  ctx.strokeRect(-s, -s, 2 * s, 2 * s);
  ctx.restore();
}

function drawWorld() {
  const [w, h] = fitCanvas(canvas, ctx);
  ctx.clearRect(0, 0, w, h);
  const scale = PX_PER_M * view.zoom;
  client.beginFrame();
  const me = client.playerPosition();
  if (me) view.camera = [me[0], me[2]];
  drawGrid(w, h, scale);
  const players = new Map(client.players().map((p) => [p.id, p]));
  for (const e of client.world.entities.values()) {
    if (e.id === client.player) continue;
    const pos = client.entityPosition(e.id);
    if (!pos) continue;
    const p = players.get(e.id);
    if (view.overlay) drawGhost(pos, client.serverPosition(e.id), w, h, scale, p ? '#ff2bd6' : '#9d5cff');
    if (p) drawPlayer(p, pos, false, w, h, scale);
    else drawApp(e.id, pos, w, h, scale);
  }
  if (me && client.player !== null) {
    if (view.overlay) drawGhost(me, client.serverPosition(client.player), w, h, scale, '#00f0ff');
    drawPlayer(players.get(client.player) ?? { name }, me, true, w, h, scale);
    $('pos').textContent = `${me[0].toFixed(1)}, ${me[2].toFixed(1)}`;
  }
}

// ---------- the netcode graph ----------

function sampleGraph() {
  const s = client.netStats();
  view.graph.push({ rtt: s.rttMs, delay: s.interpDelayMs, corr: s.correctionsPerS });
  if (view.graph.length > GRAPH_SAMPLES_MAX) view.graph.shift();
  $('rtt').textContent = s.rttMs === null ? '–' : s.rttMs.toFixed(1);
  if (!view.overlay) return;
  $('g-rtt').textContent = s.rttMs === null ? '–' : s.rttMs.toFixed(1);
  $('g-delay').textContent = s.interpDelayMs === null ? '–' : s.interpDelayMs.toFixed(0);
  $('g-corr').textContent = String(s.correctionsPerS);
  $('g-hz').textContent = String(s.tickHz);
  $('g-lead').textContent = s.lead === null ? '–' : s.lead.toFixed(1);
  $('g-dg').textContent = `${s.datagramsIn} in · ${s.datagramsOut} out`;
}

function drawGraph() {
  const [w, h] = fitCanvas(graph, gctx);
  gctx.clearRect(0, 0, w, h);
  const pts = view.graph;
  if (pts.length < 2) return;
  const msMax = Math.max(50, ...pts.map((p) => Math.max(p.rtt ?? 0, p.delay ?? 0))) * 1.15;
  const corrMax = Math.max(4, ...pts.map((p) => p.corr));
  const dx = w / (GRAPH_SAMPLES_MAX - 1);
  const x0 = w - (pts.length - 1) * dx;
  gctx.fillStyle = 'rgba(255, 43, 214, 0.55)';
  pts.forEach((p, i) => {
    if (p.corr > 0) {
      const bh = (p.corr / corrMax) * h * 0.5;
      gctx.fillRect(x0 + i * dx - 1, h - bh, 2, bh);
    }
  });
  const line = (key, color) => {
    gctx.strokeStyle = color;
    gctx.shadowColor = color;
    gctx.shadowBlur = 6;
    gctx.lineWidth = 1.5;
    gctx.beginPath();
    let started = false;
    pts.forEach((p, i) => {
      if (p[key] === null || p[key] === undefined) return;
      const x = x0 + i * dx;
      const y = h - (p[key] / msMax) * h;
      if (started) gctx.lineTo(x, y);
      else gctx.moveTo(x, y);
      started = true;
    });
    gctx.stroke();
    gctx.shadowBlur = 0;
  };
  line('delay', '#9d5cff');
  line('rtt', '#00f0ff');
  gctx.fillStyle = 'rgba(95, 120, 148, 0.9)';
  gctx.font = '9px ui-monospace, "DejaVu Sans Mono", monospace';
  gctx.fillText(`${msMax.toFixed(0)} ms`, 2, 9);
}

// ---------- the loop ----------

function frame() {
  drawWorld();
  // Timing marks for tests/browser/measure.mjs (client.mark keeps the first of each).
  if (client.player !== null) client.mark('firstFrame');
  if (client.renderTick != null) client.mark('firstInterpolatedFrame');
  if (view.overlay) drawGraph();
  view.frames++;
  ds.frames = String(view.frames);
  requestAnimationFrame(frame);
}

setInterval(sampleGraph, GRAPH_SAMPLE_MS);
requestAnimationFrame(frame);
canvas.focus();
