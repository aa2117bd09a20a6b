//! The light client over real QUIC: a thin driver around [`LightCore`], one tokio task per
//! client (plus quinn's own connection driver and neonet's stream reader and writer tasks,
//! which sleep unless a frame moves).
//!
//! The task wakes for a datagram, a frame, or its one timer: the sooner of the core's next
//! client tick (or ping, or due acknowledgement) and the script's next frame. It does the same
//! script as a full client ([`crate::behaviour::ClientScript`]): it walks the same walker, chats
//! and edits at the same rates, and steers towards the walker from its predicted position.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use neonet::quic::{self, ChannelWriters, StreamEvent};
use neonet_proto::client::ClientTransmit;
use neonet_proto::types::{Blueprint, BlueprintId, BlueprintPatch, ReqId};
use neonet_proto::wire::codec::{self, FrameDecoder};
use neonet_proto::wire::msg::CloseReason;
use neonet_proto::Time;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::core::{LightCore, LightEvent, LightState};
use crate::driver::{
    steer, synced_clock, ClientOutcome, ClientPlan, GapCounter, TickPhase, CONNECT_TIMEOUT,
    PENDING_CHANGES_MAX,
};
use crate::run::LiveCounters;

/// Stream events queued between neonet's stream readers and the light client's task: 64.
/// Frames are rare for a light client (pongs, answers, others' chat); a full queue holds the
/// readers back, and QUIC's flow control the relay.
const STREAM_EVENTS_QUEUE: usize = 64;

/// How often the live byte counters are refreshed from the connection, per client: 1 s.
const LIVE_BYTES_INTERVAL: Duration = Duration::from_secs(1);

/// One light client, from connect until `stop` turns true, on `endpoint` when given (shared). Fails (an unexpected failure) when
/// it cannot join; a session that ends early is returned with `disconnected`.
pub async fn light_client_task(
    plan: ClientPlan,
    endpoint: Option<quinn::Endpoint>,
    live: Arc<LiveCounters>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<ClientOutcome> {
    let started = Instant::now();
    let conn = tokio::select! {
        r = connect(plan.addr, &plan, endpoint) => r.with_context(|| format!("client {} connecting to {}", plan.id, plan.addr))?,
        _ = stop.wait_for(|s| *s) => anyhow::bail!("client {}: the run ended before it joined", plan.id),
    };
    let now_of = |at: Instant| Time(at.saturating_duration_since(started).as_micros() as u64);
    let mut core = LightCore::new(
        format!("load{}", plan.id),
        plan.token.clone(),
        now_of(Instant::now()),
    );
    let (tx, mut rx) = mpsc::channel::<StreamEvent>(STREAM_EVENTS_QUEUE);
    let readers = tokio::spawn(quic::accept_streams(
        conn.clone(),
        FrameDecoder::for_server_channel,
        tx,
        |e| e,
    ));
    let writers = ChannelWriters::spawn(&conn);
    let mut s = Session {
        conn,
        writers,
        outcome: ClientOutcome::default(),
        phase: TickPhase::default(),
        phase_on_echoes: false,
        phase_origin_us: 0.0,
        gaps: GapCounter::default(),
        pending: HashMap::new(),
        blueprint: None,
        live_in: 0,
        live_out: 0,
    };
    s.flush(&mut core);

    // Join: frames until the snapshot, within the bound a full client has.
    let join_deadline = started + CONNECT_TIMEOUT;
    while *core.state() == LightState::Joining {
        let timer = core
            .poll_timeout()
            .map_or(join_deadline, |t| started + Duration::from_micros(t.0))
            .min(join_deadline);
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => s.frames(&mut core, ev, now_of(Instant::now())),
                None => core.handle_disconnect(CloseReason::Timeout, "connection ended".into()),
            },
            _ = tokio::time::sleep_until(timer) => {
                if Instant::now() >= join_deadline {
                    readers.abort();
                    anyhow::bail!("client {} joining {}: no snapshot within {CONNECT_TIMEOUT:?}", plan.id, plan.addr);
                }
                core.handle_timeout(now_of(Instant::now()));
            }
            _ = stop.wait_for(|s| *s) => {
                readers.abort();
                anyhow::bail!("client {}: the run ended before it joined", plan.id);
            }
        }
        s.flush(&mut core);
    }
    if let LightState::Closed { reason, detail } = core.state() {
        readers.abort();
        anyhow::bail!(
            "client {} joining {}: {reason} ({detail})",
            plan.id,
            plan.addr
        );
    }
    while core.poll_event().is_some() {}
    let joined_at = Instant::now();
    s.outcome.joined_after = Some(joined_at - started);
    live.connected.fetch_add(1, Ordering::Relaxed);

    let mut script = plan.script();
    if plan.edits_per_s > 0.0 {
        s.add_blueprint(&mut core, &plan);
    }
    let conn = s.conn.clone();
    let frame_period = Duration::from_secs_f64(1.0 / f64::from(plan.hz));
    let frame_slack = frame_period / 2;
    let mut next_frame = Instant::now();
    let mut last_live = Instant::now();
    loop {
        // One wake-up per tick where possible: a script frame due within half a frame of the
        // core's next wake-up (its client tick, at the same rate) runs then.
        let core_at = core
            .poll_timeout()
            .map(|t| started + Duration::from_micros(t.0));
        let wake = match core_at {
            Some(t) if t <= next_frame + frame_slack => t,
            Some(t) => t.min(next_frame),
            None => next_frame,
        };
        tokio::select! {
            d = conn.read_datagram() => match d {
                Ok(d) => s.datagram(&mut core, &d, now_of(Instant::now())),
                Err(e) => core.handle_disconnect(CloseReason::Timeout, e.to_string()),
            },
            ev = rx.recv() => match ev {
                Some(ev) => s.frames(&mut core, ev, now_of(Instant::now())),
                None => core.handle_disconnect(CloseReason::Timeout, "connection ended".into()),
            },
            _ = tokio::time::sleep_until(wake) => {
                let at = Instant::now();
                core.handle_timeout(now_of(at));
                if at + frame_slack >= next_frame {
                    // Skip missed frames, as a full client's interval does.
                    while next_frame <= at + frame_slack {
                        next_frame += frame_period;
                    }
                    s.frame(&mut core, &mut script, &plan, &live, joined_at, now_of(at));
                    if at.duration_since(last_live) >= LIVE_BYTES_INTERVAL {
                        last_live = at;
                        s.live_bytes(&live);
                    }
                }
            }
            _ = stop.changed() => {}
        }
        if !s.take_events(&mut core, &live) || *stop.borrow() {
            break;
        }
        s.flush(&mut core);
    }
    s.outcome.connected_for = joined_at.elapsed();
    // On the echoes' tick timeline tick `n` starts at `(n + 1) × period`: what the latency can
    // read low by is the phase beyond that period.
    let origin_us = s.phase_origin_us;
    s.outcome.tick_phase = s
        .phase
        .phase_us()
        .map(|us| Duration::from_micros((us - origin_us).max(0.0) as u64));
    s.outcome.datagrams_lost = s.gaps.lost;
    let stats = s.conn.stats();
    s.outcome.bytes_in = stats.udp_rx.bytes;
    s.outcome.bytes_out = stats.udp_tx.bytes;
    s.outcome.packets_in = stats.udp_rx.datagrams;
    s.outcome.packets_out = stats.udp_tx.datagrams;
    s.live_bytes(&live);
    if core.events_dropped() > 0 {
        let dropped = core.events_dropped();
        s.outcome.error(
            &live,
            format!("{dropped} events dropped: the task fell behind"),
        );
    }
    live.connected.fetch_sub(1, Ordering::Relaxed);
    if !s.outcome.disconnected {
        core.leave();
        s.flush(&mut core);
        s.writers.finish().await;
        let _ = tokio::time::timeout(quic::CLOSE_FLUSH_TIMEOUT, s.conn.closed()).await;
        s.conn.close(quic::close_code(CloseReason::ClientLeft), b"");
    }
    readers.abort();
    Ok(s.outcome)
}

/// The QUIC handshake, on `endpoint` (shared with other light clients: `--light-share`) or on an
/// endpoint (and UDP socket) of the client's own, as a full client's.
async fn connect(
    addr: SocketAddr,
    plan: &ClientPlan,
    endpoint: Option<quinn::Endpoint>,
) -> anyhow::Result<quinn::Connection> {
    let config = quic::client_config(
        &plan.trust,
        Duration::from_millis(quic::IDLE_TIMEOUT_MS_DEFAULT),
    )?;
    let endpoint = match endpoint {
        Some(e) => e,
        None => quic::client_endpoint(addr)?,
    };
    let connecting = endpoint.connect_with(config, addr, neonet::tls::DEFAULT_SERVER_NAME)?;
    Ok(tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .context("QUIC handshake timed out")??)
}

/// A joined light client's connection and measurements.
struct Session {
    conn: quinn::Connection,
    writers: ChannelWriters,
    outcome: ClientOutcome,
    phase: TickPhase,
    /// `phase` holds bounds from clock echoes (see [`crate::driver::SyncedClock::echo`]).
    phase_on_echoes: bool,
    /// Where the tick timeline's phase 0 is, µs: 0 for pongs (the relay's clock), one period
    /// for echoes (tick `n` starts at `(n + 1) × period` on their timeline). As the full
    /// client's driver, so both report the same definitions.
    phase_origin_us: f64,
    gaps: GapCounter,
    pending: HashMap<ReqId, Instant>,
    blueprint: Option<(BlueprintId, u32)>,
    live_in: u64,
    live_out: u64,
}

impl Session {
    /// Sends what the core queued.
    fn flush(&mut self, core: &mut LightCore) {
        while let Some(t) = core.poll_transmit() {
            match t {
                ClientTransmit::Frame { channel, frame } => {
                    if let Err(e) = self.writers.try_send(channel, &frame) {
                        core.handle_disconnect(CloseReason::Timeout, e.to_string());
                    }
                }
                ClientTransmit::Datagram(d) => {
                    let _ = self.conn.send_datagram(Bytes::from(d));
                }
            }
        }
    }

    fn frames(&mut self, core: &mut LightCore, ev: StreamEvent, now: Time) {
        match ev {
            StreamEvent::Frames { channel, frames } => {
                for body in codec::frames(&frames) {
                    core.handle_frame(channel, body, now);
                }
            }
            StreamEvent::Error(e) => core.handle_disconnect(
                CloseReason::ProtocolViolation,
                format!("server stream: {e}"),
            ),
        }
    }

    /// A server datagram: acknowledged by the core; its sequence gap and update latency
    /// measured at arrival, as a full client measures them from its datagram log.
    fn datagram(&mut self, core: &mut LightCore, d: &[u8], now: Time) {
        let Some(seen) = core.handle_datagram(d, now) else {
            return;
        };
        let Some(clock) = core.clock().and_then(synced_clock) else {
            return;
        };
        if clock.echo && !self.phase_on_echoes {
            // The clock sync started afresh on clock echoes: so do the phase bounds.
            self.phase_on_echoes = true;
            self.phase_origin_us = clock.period_us;
            self.phase = TickPhase::default();
        }
        self.phase.observe(clock.anchor, clock.period_us);
        let Some(phase_us) = self.phase.phase_us() else {
            return;
        };
        self.gaps.see(seen.seq.0);
        self.outcome.datagrams_measured += 1;
        self.outcome.records_seen += seen.records;
        self.outcome.update_latency.record_n(
            clock.update_latency(now, seen.tick.0, phase_us),
            seen.records.max(1),
        );
    }

    /// One script frame: steer, chat, edit.
    fn frame(
        &mut self,
        core: &mut LightCore,
        script: &mut crate::behaviour::ClientScript,
        plan: &ClientPlan,
        live: &LiveCounters,
        joined_at: Instant,
        _now: Time,
    ) {
        let actions = script.frame(joined_at.elapsed().as_secs_f64());
        if let (Some(motion), Some(at)) = (&actions.motion, core.own_position()) {
            core.set_input(steer(at, motion));
        }
        for _ in 0..actions.chats {
            let req = core.send_chat(format!("hello from load{}", plan.id));
            self.pending.insert(req, Instant::now());
        }
        for _ in 0..actions.edits {
            self.edit(core, live);
        }
    }

    fn add_blueprint(&mut self, core: &mut LightCore, plan: &ClientPlan) {
        let id = BlueprintId(format!(
            "load-{:x}-{}",
            plan.run_seed & 0xFFFF_FFFF,
            plan.id
        ));
        let req = core.add_blueprint(Blueprint {
            id: id.clone(),
            version: 0,
            name: format!("load test {}", plan.id),
            author: format!("load{}", plan.id),
            ..Blueprint::default()
        });
        self.pending.insert(req, Instant::now());
        self.blueprint = Some((id, 0));
    }

    /// Modifies this client's blueprint at the next version (the full client's rule).
    fn edit(&mut self, core: &mut LightCore, live: &LiveCounters) {
        let Some((id, version)) = &mut self.blueprint else {
            return;
        };
        if self.pending.len() >= PENDING_CHANGES_MAX {
            self.outcome.error(
                live,
                format!("more than {PENDING_CHANGES_MAX} changes unacknowledged: not sending more"),
            );
            return;
        }
        *version += 1;
        let req = core.modify_blueprint_at(
            id.clone(),
            *version,
            BlueprintPatch {
                desc: Some(format!("edit {version}")),
                ..BlueprintPatch::default()
            },
        );
        self.pending.insert(req, Instant::now());
    }

    /// Takes the core's events; false when the session has ended.
    fn take_events(&mut self, core: &mut LightCore, live: &LiveCounters) -> bool {
        while let Some(event) = core.poll_event() {
            match event {
                LightEvent::Acked(req) => self.outcome.acked(&mut self.pending, req),
                LightEvent::Refused { req, reason } => {
                    self.outcome.refused(live, &mut self.pending, req, reason)
                }
                LightEvent::Disconnected { reason, detail } => {
                    self.outcome.disconnected(live, reason, &detail);
                    return false;
                }
                LightEvent::Joined => {}
            }
        }
        true
    }

    fn live_bytes(&mut self, live: &LiveCounters) {
        let stats = self.conn.stats();
        let (rx, tx) = (stats.udp_rx.bytes, stats.udp_tx.bytes);
        live.bytes_in
            .fetch_add(rx.saturating_sub(self.live_in), Ordering::Relaxed);
        live.bytes_out
            .fetch_add(tx.saturating_sub(self.live_out), Ordering::Relaxed);
        (self.live_in, self.live_out) = (rx, tx);
    }
}
