// neonet live network view.
//
// Polls ./status (the relay's JSON Status, see src/metrics/status.rs) every POLL_MS, fills the
// figure cards, the users table and the top-entities bars, and animates each sampled entity
// update ("packet trail") as a glowing particle flying from the relay hub to the client it was
// sent to. The first poll also brings the relay's last 30 s of figures (Status.history), which
// fill the chart at once; later polls ask for none (history=false). The relay itself drops
// entities idle for 10 s from the top entities (ENTITY_IDLE_FORGET). The figures' ids and the
// data-* counters (body[data-updates], #trails[data-particles], #trails[data-frames],
// #spark[data-prefilled]) are read by tests/browser/live_view.mjs.
//
// Peer-supplied strings (user names) are only ever set with textContent, never as HTML.
'use strict';

(() => {
  /** Poll period, ms: 4 Hz is smooth for the figures and cheap for the relay. */
  const POLL_MS = 250;
  /** Figure history kept for the sparklines: 120 polls = 30 s. */
  const HISTORY_LEN = 120;
  /** Particles alive at once; the oldest are dropped past this to keep frames smooth. */
  const PARTICLES_MAX = 900;
  /** Flight time of a particle, ms: scaled from the client's RTT, clamped to stay visible. */
  const FLIGHT_MS_MIN = 420;
  const FLIGHT_MS_MAX = 1500;
  /** Client nodes drawn on the ring; further sessions share one "+N" node. */
  const NODES_MAX = 40;
  /** Rows in the users table (the relay already caps the list it sends). */
  const USER_ROWS_MAX = 64;
  /** A trail-only node (a session not in the users list) fades after this long unseen, ms. */
  const NODE_TTL_MS = 3000;
  /** Ring distance between nodes needed to print RTT and rate under each name, px. */
  const LABEL_DETAIL_SPACING_PX = 70;
  /** Ring distance needed per printed name; closer nodes are named every k-th, px. */
  const LABEL_NAME_SPACING_PX = 46;
  /** Tail length of a particle, as a fraction of its path. */
  const TAIL = 0.24;
  /** Segments drawn per tail. */
  const TAIL_SEGMENTS = 7;

  const $ = (id) => document.getElementById(id);
  const trails = $('trails');
  const spark = $('spark');
  const tctx = trails.getContext('2d');
  const sctx = spark.getContext('2d');

  const state = {
    since: 0,
    updates: 0,
    errors: 0,
    status: null,
    history: [],
    prefilled: false,
    particles: [],
    flashes: [],
    spawned: 0,
    frames: 0,
    trailCounts: [],
    nodes: new Map(), // session id -> node
    overflow: { id: 'overflow', label: '+0', x: 0, y: 0, tx: 0, ty: 0, rtt: 0, kbps: 0, hue: 300, lastSeen: 0, count: 0 },
  };

  // ---------- helpers ----------

  function hueFor(id) {
    // A stable hue per entity from cyan (185) through violet to magenta (315).
    let h = Math.imul((id >>> 0) ^ 0x9e3779b9, 0x85ebca6b) >>> 0;
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35) >>> 0;
    return 185 + (h % 131);
  }

  function fixed(x, digits) {
    return Number.isFinite(x) ? x.toFixed(digits) : '–';
  }

  function bytes(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(2) + ' GB';
    if (n >= 1e6) return (n / 1e6).toFixed(2) + ' MB';
    if (n >= 1e3) return (n / 1e3).toFixed(1) + ' kB';
    return n + ' B';
  }

  function uptime(ms) {
    const s = Math.floor(ms / 1000);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (v) => String(v).padStart(2, '0');
    return h > 0 ? `${h}h ${pad(m)}m ${pad(s % 60)}s` : m > 0 ? `${m}m ${pad(s % 60)}s` : `${s % 60}s`;
  }

  function setText(id, text) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
  }

  function setLink(stateName) {
    const el = $('link');
    el.dataset.state = stateName;
    el.textContent = stateName;
  }

  function fit(canvas, ctx) {
    const r = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(r.width * dpr));
    const h = Math.max(1, Math.round(r.height * dpr));
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return { w: r.width, h: r.height };
  }

  // ---------- polling ----------

  async function poll() {
    const started = performance.now();
    try {
      const history = state.prefilled ? '&history=false' : '';
      const res = await fetch(`status?since=${state.since}${history}`, { cache: 'no-store' });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      apply(await res.json());
      setLink('live');
    } catch (err) {
      state.errors += 1;
      document.body.dataset.errors = String(state.errors);
      setLink('offline');
    }
    setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - started)));
  }

  function apply(s) {
    const now = performance.now();
    state.status = s;
    const bw = s.bandwidth;
    const tick = s.tick;

    setText('connections', String(s.connections));
    setText('joins', String(s.joins));
    setText('kbps-out', fixed(bw.kbps_out, 1));
    setText('kbps-in', fixed(bw.kbps_in, 1));
    setText('datagrams-out', String(bw.datagrams_out));
    setText('datagrams-in', String(bw.datagrams_in));
    setText('tick-ms', fixed(tick.p50_ms, 2));
    setText('tick-p99', fixed(tick.p99_ms, 2));
    setText('tick-max', fixed(tick.max_ms, 2));
    setText('tick-hz', fixed(tick.rate_hz, 1));
    setText('tick-overruns', String(tick.overruns));
    setText('entities', String(s.entity_count));
    setText('persist-queue', String(s.persist_queue_depth));
    setText('uptime', uptime(s.uptime_ms));
    setText('users-total', String(s.users_total));

    if (!state.prefilled) prefill(s.history || []);
    state.history.push({ out: bw.kbps_out, in: bw.kbps_in, tick: tick.p99_ms });
    if (state.history.length > HISTORY_LEN) state.history.shift();

    updateNodes(s.users, now);
    scheduleTrails(s.trails, now);
    state.since = s.trail_next_seq;

    state.trailCounts.push(s.trails.length);
    if (state.trailCounts.length > 1000 / POLL_MS) state.trailCounts.shift();
    setText('trail-rate', String(state.trailCounts.reduce((a, b) => a + b, 0)));

    renderUsers(s.users);
    renderTop(s.top_entities);
    drawSpark();

    state.updates += 1;
    document.body.dataset.updates = String(state.updates);
  }

  /** Fills the chart with the relay's recent figures (oldest first), once, on the first poll. */
  function prefill(points) {
    // A point taken for this very request (age 0) is the figure pushed next anyway.
    const past = points.filter((p) => p.age_ms > 0).slice(-(HISTORY_LEN - 1));
    state.history = past.map((p) => ({ out: p.kbps_out, in: p.kbps_in, tick: p.tick_p99_ms }));
    state.prefilled = true;
    spark.dataset.prefilled = String(past.length);
  }

  // ---------- nodes (clients on a ring around the relay hub) ----------

  function node(sessionId, now) {
    let n = state.nodes.get(sessionId);
    if (!n) {
      n = { id: sessionId, label: `s${sessionId}`, x: NaN, y: NaN, tx: 0, ty: 0, rtt: 0, kbps: 0, hue: hueFor(sessionId * 7 + 3), lastSeen: now, user: false };
      state.nodes.set(sessionId, n);
    }
    return n;
  }

  function updateNodes(users, now) {
    for (const n of state.nodes.values()) n.user = false;
    for (const u of users) {
      const n = node(u.session_id, now);
      n.user = true;
      n.label = u.name || `s${u.session_id}`;
      n.rtt = u.rtt_ms;
      n.kbps = u.kbps_out;
      n.lastSeen = now;
    }
    for (const [id, n] of state.nodes) {
      if (!n.user && now - n.lastSeen > NODE_TTL_MS) state.nodes.delete(id);
    }
    layout();
  }

  function layout() {
    const { w, h } = { w: trails.clientWidth, h: trails.clientHeight };
    const cx = w / 2;
    const cy = h / 2;
    const rx = w * 0.40;
    const ry = h * 0.38;
    const ids = [...state.nodes.keys()].sort((a, b) => a - b);
    const shown = ids.slice(0, NODES_MAX);
    const extra = ids.length - shown.length;
    const slots = shown.length + (extra > 0 ? 1 : 0);
    shown.forEach((id, i) => {
      const n = state.nodes.get(id);
      n.shown = true;
      const a = -Math.PI / 2 + (i / Math.max(1, slots)) * Math.PI * 2;
      n.tx = cx + Math.cos(a) * rx;
      n.ty = cy + Math.sin(a) * ry;
      if (Number.isNaN(n.x)) { n.x = cx; n.y = cy; }
    });
    for (const id of ids.slice(NODES_MAX)) state.nodes.get(id).shown = false;
    const o = state.overflow;
    o.count = extra;
    o.label = `+${extra} more`;
    const a = -Math.PI / 2 + ((slots - 1) / Math.max(1, slots)) * Math.PI * 2;
    o.tx = cx + Math.cos(a) * rx;
    o.ty = cy + Math.sin(a) * ry;
    if (!o.x) { o.x = o.tx; o.y = o.ty; }
  }

  function targetOf(sessionId, now) {
    const n = state.nodes.get(sessionId) || node(sessionId, now);
    n.lastSeen = Math.max(n.lastSeen, now);
    if (n.shown === undefined) layout();
    return n.shown ? n : state.overflow;
  }

  // ---------- particles ----------

  function scheduleTrails(samples, now) {
    // Replay the last poll interval in real relative time: a sample sent age_ms ago starts
    // (POLL_MS - age_ms) from now, so bursts spread out the way they happened.
    for (const t of samples) {
      const target = targetOf(t.session_id, now);
      const rtt = target.rtt || 60;
      const dur = Math.min(FLIGHT_MS_MAX, Math.max(FLIGHT_MS_MIN, FLIGHT_MS_MIN + rtt * 4));
      state.particles.push({
        session: t.session_id,
        hue: hueFor(t.entity_id),
        start: now + Math.max(0, POLL_MS - t.age_ms),
        dur,
        bend: ((hueFor(t.entity_id * 31 + 1) - 250) / 65) * 0.28,
        width: Math.min(2.6, 1 + t.bytes / 120),
      });
      state.spawned += 1;
    }
    if (state.particles.length > PARTICLES_MAX) {
      state.particles.splice(0, state.particles.length - PARTICLES_MAX);
    }
    trails.dataset.particles = String(state.spawned);
  }

  function pointOn(x0, y0, cx, cy, x1, y1, t) {
    const u = 1 - t;
    return [u * u * x0 + 2 * u * t * cx + t * t * x1, u * u * y0 + 2 * u * t * cy + t * t * y1];
  }

  // ---------- drawing ----------

  function drawBackground(ctx, w, h, now) {
    ctx.fillStyle = '#020309';
    ctx.fillRect(0, 0, w, h);
    const cx = w / 2;
    const cy = h / 2;
    const g = ctx.createRadialGradient(cx, cy, 0, cx, cy, Math.max(w, h) * 0.6);
    g.addColorStop(0, 'rgba(0, 240, 255, 0.07)');
    g.addColorStop(0.5, 'rgba(157, 92, 255, 0.03)');
    g.addColorStop(1, 'rgba(0, 0, 0, 0)');
    ctx.fillStyle = g;
    ctx.fillRect(0, 0, w, h);

    // Polar grid.
    ctx.lineWidth = 1;
    for (let i = 1; i <= 5; i++) {
      ctx.strokeStyle = `rgba(0, 240, 255, ${0.035 + (i === 5 ? 0.03 : 0)})`;
      ctx.beginPath();
      ctx.ellipse(cx, cy, w * 0.09 * i, h * 0.085 * i, 0, 0, Math.PI * 2);
      ctx.stroke();
    }
    ctx.strokeStyle = 'rgba(0, 240, 255, 0.03)';
    for (let i = 0; i < 24; i++) {
      const a = (i / 24) * Math.PI * 2;
      ctx.beginPath();
      ctx.moveTo(cx, cy);
      ctx.lineTo(cx + Math.cos(a) * w, cy + Math.sin(a) * w);
      ctx.stroke();
    }
    // Slow radar sweep.
    const sweep = (now / 4000) % (Math.PI * 2);
    ctx.save();
    ctx.globalCompositeOperation = 'lighter';
    for (let k = 0; k < 14; k++) {
      ctx.strokeStyle = `rgba(0, 240, 255, ${0.05 * (1 - k / 14)})`;
      ctx.beginPath();
      const a = sweep - k * 0.012;
      ctx.moveTo(cx, cy);
      ctx.lineTo(cx + Math.cos(a) * w, cy + Math.sin(a) * w);
      ctx.stroke();
    }
    ctx.restore();
  }

  function drawLinks(ctx, cx, cy) {
    ctx.save();
    ctx.globalCompositeOperation = 'lighter';
    const all = [...state.nodes.values()].filter((n) => n.shown);
    if (state.overflow.count > 0) all.push(state.overflow);
    for (const n of all) {
      const a = Math.min(0.35, 0.06 + n.kbps / 400);
      const g = ctx.createLinearGradient(cx, cy, n.x, n.y);
      g.addColorStop(0, `rgba(0, 240, 255, ${a})`);
      g.addColorStop(1, `rgba(255, 43, 214, ${a})`);
      ctx.strokeStyle = g;
      ctx.lineWidth = 1;
      ctx.setLineDash([2, 6]);
      ctx.beginPath();
      ctx.moveTo(cx, cy);
      ctx.lineTo(n.x, n.y);
      ctx.stroke();
    }
    ctx.restore();
  }

  function drawParticles(ctx, cx, cy, now) {
    ctx.save();
    ctx.globalCompositeOperation = 'lighter';
    ctx.lineCap = 'round';
    const keep = [];
    for (const p of state.particles) {
      const t = (now - p.start) / p.dur;
      if (t < 0) { keep.push(p); continue; }
      const target = targetOf(p.session, now - NODE_TTL_MS);
      if (t >= 1) {
        state.flashes.push({ x: target.x, y: target.y, hue: p.hue, start: now });
        continue;
      }
      keep.push(p);
      const dx = target.x - cx;
      const dy = target.y - cy;
      const mx = (cx + target.x) / 2 - dy * p.bend;
      const my = (cy + target.y) / 2 + dx * p.bend;
      const ease = 1 - (1 - t) * (1 - t) * 0.6 - 0.4 * (1 - t);
      const head = Math.min(1, ease);
      const tail = Math.max(0, head - TAIL);
      let [px, py] = pointOn(cx, cy, mx, my, target.x, target.y, tail);
      for (let i = 1; i <= TAIL_SEGMENTS; i++) {
        const f = i / TAIL_SEGMENTS;
        const [qx, qy] = pointOn(cx, cy, mx, my, target.x, target.y, tail + (head - tail) * f);
        // Wide faint stroke for the glow, thin bright stroke for the core.
        ctx.strokeStyle = `hsla(${p.hue}, 100%, 60%, ${0.10 * f})`;
        ctx.lineWidth = 7 * p.width * f;
        ctx.beginPath();
        ctx.moveTo(px, py);
        ctx.lineTo(qx, qy);
        ctx.stroke();
        ctx.strokeStyle = `hsla(${p.hue}, 100%, ${60 + 25 * f}%, ${0.85 * f})`;
        ctx.lineWidth = p.width * (0.6 + f);
        ctx.beginPath();
        ctx.moveTo(px, py);
        ctx.lineTo(qx, qy);
        ctx.stroke();
        px = qx;
        py = qy;
      }
      const glow = ctx.createRadialGradient(px, py, 0, px, py, 9);
      glow.addColorStop(0, `hsla(${p.hue}, 100%, 85%, 0.9)`);
      glow.addColorStop(0.35, `hsla(${p.hue}, 100%, 60%, 0.35)`);
      glow.addColorStop(1, `hsla(${p.hue}, 100%, 50%, 0)`);
      ctx.fillStyle = glow;
      ctx.beginPath();
      ctx.arc(px, py, 9, 0, Math.PI * 2);
      ctx.fill();
    }
    state.particles = keep;

    // Arrival flashes: an expanding ring where a packet lands.
    const flashes = [];
    for (const f of state.flashes) {
      const t = (now - f.start) / 420;
      if (t >= 1) continue;
      flashes.push(f);
      ctx.strokeStyle = `hsla(${f.hue}, 100%, 70%, ${0.5 * (1 - t)})`;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.arc(f.x, f.y, 8 + 14 * t, 0, Math.PI * 2);
      ctx.stroke();
    }
    state.flashes = flashes.slice(-PARTICLES_MAX);
    ctx.restore();
  }

  function drawNode(ctx, n, color) {
    ctx.save();
    ctx.shadowColor = color;
    ctx.shadowBlur = 16;
    ctx.fillStyle = '#05060f';
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(n.x, n.y, 7, 0, Math.PI * 2);
    ctx.fill();
    ctx.stroke();
    ctx.fillStyle = color;
    ctx.beginPath();
    ctx.arc(n.x, n.y, 2.5, 0, Math.PI * 2);
    ctx.fill();
    ctx.restore();
  }

  function drawNodes(ctx, cx, cy, w, h) {
    ctx.font = '11px ui-monospace, "DejaVu Sans Mono", monospace';
    ctx.textBaseline = 'middle';
    const all = [...state.nodes.values()].filter((n) => n.shown);
    if (state.overflow.count > 0) all.push(state.overflow);
    // Room per node along the ring decides how much text fits: both lines, the name only,
    // or the name of every k-th node.
    const spacing = (Math.PI * (w * 0.4 + h * 0.38)) / Math.max(1, all.length);
    const detail = spacing >= LABEL_DETAIL_SPACING_PX;
    const every = Math.max(1, Math.ceil(LABEL_NAME_SPACING_PX / spacing));
    all.forEach((n, i) => {
      // Ease toward the layout position so joins and leaves glide.
      n.x += (n.tx - n.x) * 0.12;
      n.y += (n.ty - n.y) * 0.12;
      drawNode(ctx, n, n === state.overflow ? '#9d5cff' : '#ff2bd6');
      if (n !== state.overflow && i % every !== 0) return;
      // Labels go outward: beside nodes on the flanks, above or below those near the axis.
      let lx;
      let ly;
      if (Math.abs(n.x - cx) < w * 0.1) {
        ctx.textAlign = 'center';
        lx = n.x;
        ly = n.y < cy ? n.y - 34 : n.y + 20;
      } else {
        const right = n.x >= cx;
        ctx.textAlign = right ? 'left' : 'right';
        lx = Math.min(w - 4, Math.max(4, n.x + (right ? 14 : -14)));
        ly = n.y - 6;
      }
      ctx.fillStyle = '#e6f7ff';
      ctx.fillText(n.label.slice(0, 18), lx, ly);
      ctx.fillStyle = '#6f8aa8';
      if (n !== state.overflow && detail) {
        ctx.fillText(`${fixed(n.rtt, 0)} ms · ${fixed(n.kbps, 0)} kb/s`, lx, ly + 13);
      }
    });
  }

  function drawHub(ctx, cx, cy, now) {
    const pulse = (now % 1200) / 1200;
    ctx.save();
    ctx.globalCompositeOperation = 'lighter';
    for (let k = 0; k < 3; k++) {
      const t = (pulse + k / 3) % 1;
      ctx.strokeStyle = `rgba(0, 240, 255, ${0.35 * (1 - t)})`;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.arc(cx, cy, 16 + 34 * t, 0, Math.PI * 2);
      ctx.stroke();
    }
    const g = ctx.createRadialGradient(cx, cy, 0, cx, cy, 30);
    g.addColorStop(0, 'rgba(220, 255, 255, 1)');
    g.addColorStop(0.25, 'rgba(0, 240, 255, 0.8)');
    g.addColorStop(1, 'rgba(0, 240, 255, 0)');
    ctx.fillStyle = g;
    ctx.beginPath();
    ctx.arc(cx, cy, 30, 0, Math.PI * 2);
    ctx.fill();
    ctx.restore();
    ctx.save();
    ctx.shadowColor = '#00f0ff';
    ctx.shadowBlur = 20;
    ctx.strokeStyle = '#00f0ff';
    ctx.lineWidth = 2;
    ctx.beginPath();
    for (let i = 0; i < 6; i++) {
      const a = Math.PI / 6 + (i / 6) * Math.PI * 2;
      const x = cx + Math.cos(a) * 14;
      const y = cy + Math.sin(a) * 14;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    }
    ctx.closePath();
    ctx.stroke();
    ctx.restore();
    ctx.font = '10px ui-monospace, "DejaVu Sans Mono", monospace';
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    const s = state.status;
    const sub = s ? `${fixed(s.tick.rate_hz, 0)} Hz · ${s.entity_count} entities` : '';
    const bw = Math.max(44, ctx.measureText(sub).width + 14);
    ctx.fillStyle = 'rgba(2, 3, 9, 0.82)';
    ctx.fillRect(cx - bw / 2, cy + 36, bw, s ? 28 : 16);
    ctx.fillStyle = '#8fefff';
    ctx.fillText('RELAY', cx, cy + 44);
    if (s) {
      ctx.fillStyle = '#6f8aa8';
      ctx.fillText(sub, cx, cy + 57);
    }
  }

  function frame(now) {
    const { w, h } = fit(trails, tctx);
    const cx = w / 2;
    const cy = h / 2;
    drawBackground(tctx, w, h, now);
    drawLinks(tctx, cx, cy);
    drawParticles(tctx, cx, cy, now);
    drawNodes(tctx, cx, cy, w, h);
    drawHub(tctx, cx, cy, now);
    state.frames += 1;
    trails.dataset.frames = String(state.frames);
    requestAnimationFrame(frame);
  }

  // ---------- side panels ----------

  function drawSpark() {
    const { w, h } = fit(spark, sctx);
    sctx.clearRect(0, 0, w, h);
    sctx.strokeStyle = 'rgba(0, 240, 255, 0.07)';
    sctx.lineWidth = 1;
    for (let i = 1; i < 4; i++) {
      sctx.beginPath();
      sctx.moveTo(0, (h * i) / 4);
      sctx.lineTo(w, (h * i) / 4);
      sctx.stroke();
    }
    const hist = state.history;
    if (hist.length < 2) return;
    const bwMax = Math.max(1, ...hist.map((p) => Math.max(p.out, p.in))) * 1.15;
    const tickMax = Math.max(0.1, ...hist.map((p) => p.tick)) * 1.15;
    const series = [
      ['in', bwMax, '#00f0ff'],
      ['out', bwMax, '#ff2bd6'],
      ['tick', tickMax, '#9d5cff'],
    ];
    sctx.save();
    sctx.globalCompositeOperation = 'lighter';
    for (const [key, max, color] of series) {
      sctx.beginPath();
      hist.forEach((p, i) => {
        // Newest at the right edge; the history fills in leftwards.
        const x = w - ((hist.length - 1 - i) / (HISTORY_LEN - 1)) * w;
        const y = h - 4 - (p[key] / max) * (h - 8);
        if (i === 0) sctx.moveTo(x, y); else sctx.lineTo(x, y);
      });
      sctx.shadowColor = color;
      sctx.shadowBlur = 10;
      sctx.strokeStyle = color;
      sctx.lineWidth = 1.6;
      sctx.stroke();
    }
    sctx.restore();
    sctx.font = '10px ui-monospace, "DejaVu Sans Mono", monospace';
    sctx.fillStyle = '#5f7894';
    sctx.textAlign = 'left';
    sctx.textBaseline = 'top';
    sctx.fillText(`${fixed(bwMax, 0)} kbit/s`, 4, 3);
    sctx.textAlign = 'right';
    sctx.fillText(`${fixed(tickMax, 2)} ms`, w - 4, 3);
  }

  function renderUsers(users) {
    const body = $('users');
    const rows = users.slice(0, USER_ROWS_MAX).map((u) => {
      const tr = document.createElement('tr');
      tr.dataset.session = String(u.session_id);
      const cells = [
        [String(u.session_id), false],
        [u.name, false],
        [u.addr, false],
        [fixed(u.rtt_ms, 1), true],
        [fixed(u.kbps_in, 1), true],
        [fixed(u.kbps_out, 1), true],
      ];
      cells.forEach(([text, num], i) => {
        const td = document.createElement('td');
        if (num) td.className = 'num';
        if (i === 1) {
          const dot = document.createElement('span');
          dot.className = 'dot';
          td.appendChild(dot);
        }
        td.appendChild(document.createTextNode(text));
        tr.appendChild(td);
      });
      return tr;
    });
    body.replaceChildren(...rows);
  }

  function renderTop(top) {
    const list = $('top-entities');
    if (top.length === 0) {
      const li = document.createElement('li');
      li.className = 'empty';
      li.textContent = 'no entity traffic yet';
      list.replaceChildren(li);
      return;
    }
    const max = Math.max(1, top[0].bytes_out);
    list.replaceChildren(...top.map((e) => {
      const li = document.createElement('li');
      li.dataset.entity = String(e.entity_id);
      const id = document.createElement('span');
      id.className = 'id';
      // A player's entity carries its user's name (peer-supplied: textContent only).
      id.textContent = e.name ? `${e.name} #${e.entity_id}` : `#${e.entity_id}`;
      if (e.name) {
        id.dataset.name = e.name;
        id.title = `${e.name} (entity #${e.entity_id})`;
      }
      const track = document.createElement('span');
      track.className = 'track';
      const fill = document.createElement('span');
      fill.className = 'fill';
      fill.style.display = 'block';
      fill.style.width = `${(100 * e.bytes_out) / max}%`;
      const hue = hueFor(e.entity_id);
      fill.style.background = `hsl(${hue}, 100%, 60%)`;
      fill.style.boxShadow = `0 0 8px hsl(${hue}, 100%, 60%)`;
      track.appendChild(fill);
      const n = document.createElement('span');
      n.className = 'n';
      n.textContent = bytes(e.bytes_out);
      li.append(id, track, n);
      return li;
    }));
  }

  window.addEventListener('resize', layout);
  requestAnimationFrame(frame);
  poll();
})();
