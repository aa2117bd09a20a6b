//! One simulated client of `neonet-load run`, against the client facade
//! ([`neonet::client::Client`]): connect, walk, chat, edit, and measure what it sees.
//!
//! ## What each figure is
//! - **join**: from the start of `connect_async` (QUIC handshake included) to the `Joined` state.
//! - **update latency**: for every server datagram, the time from the start of the server tick it
//!   carries to its arrival, on the clock the client core syncs with the server
//!   ([`neonet_proto::predict::ClockSync`]). Arrival times come from the facade's datagram log
//!   ([`Client::log_datagrams`]), taken the moment quinn hands the datagram over, not at the next
//!   client frame. The tick's start on the server's clock is its number times the period plus a
//!   phase the relay's tick clock started at; that phase is estimated from the clock samples
//!   (clock echoes, or pongs before the first echo: [`TickPhase`]). Each datagram's latency is recorded once per entity record it carries, so
//!   the percentiles are per entity update.
//! - **datagrams lost**: gaps in the server datagrams' wrapping sequence numbers (a late datagram
//!   that fills a gap takes one back).
//! - **ack latency**: from sending a change (chat message, blueprint add or modify) to its
//!   `Acked` event; a refusal is an error.
//! - **bytes in/out**: the QUIC connection's UDP byte counters
//!   ([`Client::connection_stats`]), everything included (headers, acks, streams, datagrams).
//! - **packets in/out**: the same connection's UDP packet counters. A tick's transforms are one
//!   datagram each way per client, so at `--hz` 30 the ideal is 30 a second each way; clock sync
//!   and QUIC's acknowledgements ride on those datagrams, so the rest is the join, the reliable
//!   streams and the rare acknowledgement on its own.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use neonet::client::{Client, ClientEvent, ClientOptions, DatagramArrival};
use neonet::tls::Trust;
use neonet_proto::predict::{CharacterInput, ClockSync};
use neonet_proto::types::{Blueprint, BlueprintId, BlueprintPatch, ReqId};
use neonet_proto::wire::msg::Refusal;
use neonet_proto::Time;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::behaviour::{ClientScript, Motion};
use crate::cli::MoveMode;
use crate::report::{LatencyRecorder, MAX_REPORTED_ERRORS};
use crate::run::LiveCounters;

/// Bound on connecting and joining: 30 s. Generous, because a thousand clients joining at once
/// on two cores queue behind each other's handshakes; a client slower than this has failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Server datagrams the facade keeps between two client frames: 1024. At 30 frames/s this
/// covers over 30,000 datagrams/s for one client, far above any budget; beyond it the oldest
/// are dropped from the log (counted, not treated as lost).
pub const DATAGRAM_LOG_MAX: usize = 1024;

/// Changes awaiting acknowledgement, per client: 65,536. More means the relay has stopped
/// acknowledging; the client then stops sending changes (counted as an error) instead of
/// growing without bound.
pub const PENDING_CHANGES_MAX: usize = 65_536;

/// Pongs whose tick phase bounds are kept: 32 (6.4 s at the clock sync's 5 pings/s). A window
/// rather than all of them, so that a relay whose tick clock skipped ahead (after a stall) is
/// followed.
const TICK_PHASE_WINDOW: usize = 32;

/// Pongs needed before update latencies are recorded: 8 (the clock sync's fast start, ≈ 0.4 s).
/// One pong bounds the phase only to within a tick, which would read latencies low.
const TICK_PHASE_MIN_SAMPLES: usize = 8;

/// How close to its waypoint the player must be to stop walking, metres: 0.3.
const ARRIVED_M: f64 = 0.3;

/// How often the live byte counters are refreshed from the connection, per client: 1 s.
const LIVE_BYTES_INTERVAL: Duration = Duration::from_secs(1);

/// What one client is asked to do.
#[derive(Clone, Debug)]
pub struct ClientPlan {
    /// Index of the client, 0-based.
    pub id: u32,
    /// Where to connect (the proxy when running through it).
    pub addr: SocketAddr,
    /// How to authenticate the relay.
    pub trust: Trust,
    /// Frame (input send) rate, Hz.
    pub hz: u32,
    /// How the client moves.
    pub movement: MoveMode,
    /// Chat messages per second, on average.
    pub chat_per_s: f64,
    /// Blueprint edits per second, on average.
    pub edits_per_s: f64,
    /// Whether the client buffers remote entities for interpolation (a rendering client does;
    /// the simulated ones never render).
    pub interpolate: bool,
    /// Seed of this client's behaviour (derived from the run's seed and `id`).
    pub seed: u64,
    /// Seed of the whole run: names this run's blueprints, so runs against one relay do not
    /// collide.
    pub run_seed: u64,
    /// Half the side of the square the client walks in, m.
    pub area_half_m: f64,
    /// Token to join with (a spawned relay knows each client's user and where it starts).
    pub token: Option<String>,
}

impl ClientPlan {
    /// The client's behaviour, fixed by its seed.
    pub fn script(&self) -> ClientScript {
        ClientScript::in_area(
            self.seed,
            self.movement == MoveMode::Walk,
            self.chat_per_s,
            self.edits_per_s,
            self.area_half_m,
        )
    }
}

/// Whether a run expects the relay to refuse a change for `reason` now and then: only when it
/// sheds load, `Busy` (its store's queue is full: the next change may pass) and `RateLimited`
/// (the clients' Poisson bursts can pass a rate limit their average keeps under). Any other
/// refusal (`Rank`: edits against a relay whose default rank is visitor, `WorldFull`, `Storage`,
/// `Conflict`, ...) means the run does not measure what it was asked to, and makes it fail
/// (exit status 1, [`crate::report::Report::succeeded`]).
pub fn refusal_expected(reason: Refusal) -> bool {
    matches!(reason, Refusal::Busy | Refusal::RateLimited)
}

/// The error a refused change is reported as; a rank refusal says how to get a relay that
/// allows the change, since that is what a relay started with defaults answers to edits.
pub(crate) fn refusal_error(reason: Refusal) -> String {
    match reason {
        Refusal::Rank => format!(
            "change refused: {reason} ({reason:?}): edits need builder rank; --spawn-relay \
             starts a relay whose default rank is builder, or an admin of this relay sets the \
             world's default rank (Setting::DefaultRank)"
        ),
        _ => format!("change refused: {reason} ({reason:?})"),
    }
}

/// What one client measured, returned when it stops.
#[derive(Clone, Debug, Default)]
pub struct ClientOutcome {
    /// Connect + join time, when it joined.
    pub joined_after: Option<Duration>,
    /// Time spent joined, the denominator of its rates.
    pub connected_for: Duration,
    /// Server tick start → datagram arrival, on the synced clock, once per entity update.
    pub update_latency: LatencyRecorder,
    /// The client's final estimate of the relay's tick phase ([`TickPhase`]): how much the
    /// update latency can read low for a relay whose ticks started at 0.
    pub tick_phase: Option<Duration>,
    /// Change sent → acknowledgement; `None` when the client sent no changes.
    pub ack_latency: Option<LatencyRecorder>,
    /// Changes acknowledged.
    pub acked_changes: u64,
    /// Bytes received (UDP, everything).
    pub bytes_in: u64,
    /// Bytes sent (UDP, everything).
    pub bytes_out: u64,
    /// UDP packets received (QUIC packets coalesced into one UDP datagram count once).
    pub packets_in: u64,
    /// UDP packets sent.
    pub packets_out: u64,
    /// Server datagrams detected as lost (sequence gaps).
    pub datagrams_lost: u64,
    /// Server datagrams whose update latency was measured.
    pub datagrams_measured: u64,
    /// Entity records those datagrams carried.
    pub records_seen: u64,
    /// Errors the client survived (refusals, send failures).
    pub errors: u64,
    /// Refusals for reasons a run does not expect ([`refusal_expected`]), also in `errors`.
    pub refusals_unexpected: u64,
    /// Up to [`MAX_REPORTED_ERRORS`] distinct messages of those errors.
    pub error_messages: Vec<String>,
    /// The relay or the network ended the session before the client was told to stop.
    pub disconnected: bool,
}

impl ClientOutcome {
    /// Counts an error the client survived and keeps its message (the first few distinct).
    pub(crate) fn error(&mut self, live: &LiveCounters, message: String) {
        self.errors += 1;
        live.errors.fetch_add(1, Ordering::Relaxed);
        if self.error_messages.len() < MAX_REPORTED_ERRORS
            && !self.error_messages.contains(&message)
        {
            self.error_messages.push(message);
        }
    }

    /// A change of this client was acknowledged: its ack latency, if it was waiting in
    /// `pending`. The one definition full and light clients count with.
    pub(crate) fn acked(&mut self, pending: &mut HashMap<ReqId, Instant>, req: ReqId) {
        if let Some(sent) = pending.remove(&req) {
            self.ack_latency
                .get_or_insert_with(LatencyRecorder::new)
                .record(sent.elapsed());
            self.acked_changes += 1;
        }
    }

    /// A change of this client was refused: an error, and unexpected unless it is load shedding.
    pub(crate) fn refused(
        &mut self,
        live: &LiveCounters,
        pending: &mut HashMap<ReqId, Instant>,
        req: ReqId,
        reason: Refusal,
    ) {
        pending.remove(&req);
        if !refusal_expected(reason) {
            self.refusals_unexpected += 1;
        }
        self.error(live, refusal_error(reason));
    }

    /// The session ended.
    pub(crate) fn disconnected(
        &mut self,
        live: &LiveCounters,
        reason: impl std::fmt::Display,
        detail: &str,
    ) {
        self.disconnected = true;
        self.error(live, format!("disconnected: {reason} ({detail})"));
    }
}

/// The phase of the relay's tick clock on its own clock, estimated from pongs.
///
/// A pong says the server time `s` at which it was answered and the number `n` of the next tick
/// to run (a clock echo the same, on the server's tick timeline: `s = n × period + phase_us`,
/// `n` = its tick + 1), so tick `n − 1` had started by `s`: its start `(n − 1)·period + phase ≤ s`, i.e.
/// `phase ≤ s − (n − 1)·period`. Each pong bounds the phase from above, robustly (a late tick
/// only loosens the bound); the estimate is the tightest bound in a window of recent pongs.
/// Pongs answered at random points of the tick converge on the true phase plus the shortest
/// time from a tick's start to the relay answering a ping, so the latency read may be low by
/// about that much (the tick's own run time, ≈ 1 ms at most when the relay keeps up).
///
/// [`ClockSync::newest_sample`](neonet_proto::predict::ClockSync::newest_sample) gives `s` and
/// `n` of the newest sample.
#[derive(Debug, Default)]
pub struct TickPhase {
    /// The last `n − s / period` seen, to notice a new pong.
    last: Option<f64>,
    /// Upper bounds of the phase, µs, newest last.
    bounds_us: VecDeque<f64>,
}

impl TickPhase {
    /// Feeds the clock sync's current anchor (`n − s / period`) and the period.
    pub fn observe(&mut self, anchor: f64, period_us: f64) {
        // A new pong moves the anchor by more than float noise.
        if self.last.is_some_and(|l| (l - anchor).abs() < 1e-6) {
            return;
        }
        self.last = Some(anchor);
        if self.bounds_us.len() == TICK_PHASE_WINDOW {
            self.bounds_us.pop_front();
        }
        self.bounds_us.push_back(period_us * (1.0 - anchor));
    }

    /// The phase estimate, µs, once [`TICK_PHASE_MIN_SAMPLES`] pongs have been seen.
    pub fn phase_us(&self) -> Option<f64> {
        if self.bounds_us.len() < TICK_PHASE_MIN_SAMPLES {
            return None;
        }
        self.bounds_us.iter().copied().reduce(f64::min)
    }
}

/// The start of a server datagram: its sequence number, server tick and entity record count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatagramHeader {
    /// Wrapping datagram sequence number.
    pub seq: u16,
    /// The server tick whose state it carries.
    pub tick: u64,
    /// Entity records in it.
    pub records: u64,
}

/// Reads a server datagram's header with the protocol's own reader
/// ([`neonet_proto::transform::decode_server_header`]); `None` for anything else or a malformed
/// header.
pub fn parse_header(d: &[u8]) -> Option<DatagramHeader> {
    let h = neonet_proto::transform::decode_server_header(d).ok()?;
    Some(DatagramHeader {
        seq: h.seq.0,
        tick: h.tick.0,
        records: h.records,
    })
}

/// Counts gaps in wrapping sequence numbers.
#[derive(Debug, Default)]
pub struct GapCounter {
    newest: Option<u16>,
    /// Datagrams missing so far.
    pub lost: u64,
}

impl GapCounter {
    /// Notes the arrival of `seq`.
    pub fn see(&mut self, seq: u16) {
        let Some(newest) = self.newest else {
            self.newest = Some(seq);
            return;
        };
        let diff = seq.wrapping_sub(newest) as i16;
        if diff > 0 {
            self.lost += (diff - 1) as u64;
            self.newest = Some(seq);
        } else if diff < 0 {
            // Reordered: it filled a gap counted earlier (a duplicate would be diff 0).
            self.lost = self.lost.saturating_sub(1);
        }
    }
}

/// The input that walks the player from `at` towards `motion`'s position (the walker's), or
/// stands when close enough and the walker is paused. Positions are (x, z) in metres.
pub fn steer(at: [f64; 2], motion: &Motion) -> CharacterInput {
    let d = [motion.position[0] - at[0], motion.position[1] - at[1]];
    let dist = d[0].hypot(d[1]);
    let walker_moving = motion.velocity[0] != 0.0 || motion.velocity[1] != 0.0;
    if dist < ARRIVED_M && !walker_moving {
        return CharacterInput::default();
    }
    // Yaw 0 faces +Z; yaw counts 1/65536 turns about +Y, so +X is a quarter turn.
    let turns = d[0].atan2(d[1]) / std::f64::consts::TAU;
    CharacterInput {
        move_x: 0,
        move_z: 127,
        yaw: (turns.rem_euclid(1.0) * 65536.0) as u32 as u16,
        run: dist > 5.0,
        jump: false,
    }
}

/// A client's tick-phase bounds on the timeline its clock sync is on (pongs first, then clock
/// echoes), which the update latency is measured against: the full and light drivers share it,
/// so both report the same definitions.
#[derive(Debug, Default)]
pub(crate) struct PhaseMeter {
    phase: TickPhase,
    /// `phase` holds bounds from clock echoes (see [`SyncedClock::echo`]).
    on_echoes: bool,
    /// Where the tick timeline's phase 0 is, µs: 0 for pongs (the relay's clock), one period
    /// for echoes (tick `n` starts at `(n + 1) × period` on their timeline).
    origin_us: f64,
}

impl PhaseMeter {
    /// Takes the clock's newest sample; returns the tick phase, µs, once it is bounded.
    pub(crate) fn observe(&mut self, clock: &SyncedClock) -> Option<f64> {
        if clock.echo && !self.on_echoes {
            // The clock sync started afresh on clock echoes: so do the phase bounds.
            self.on_echoes = true;
            self.origin_us = clock.period_us;
            self.phase = TickPhase::default();
        }
        self.phase.observe(clock.anchor, clock.period_us);
        self.phase.phase_us()
    }

    /// The phase bound now, µs.
    pub(crate) fn phase_us(&self) -> Option<f64> {
        self.phase.phase_us()
    }

    /// What the update latency can read low by: on the echoes' tick timeline tick `n` starts at
    /// `(n + 1) × period`, so the phase beyond that origin.
    pub(crate) fn tick_phase(&self) -> Option<Duration> {
        self.phase
            .phase_us()
            .map(|us| Duration::from_micros((us - self.origin_us).max(0.0) as u64))
    }
}

/// The clock sync's view at one moment: what the update latency is read with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SyncedClock {
    /// `n − s / period` of the newest pong (see [`TickPhase`]).
    pub anchor: f64,
    /// The server's tick period, µs.
    pub period_us: f64,
    /// Server clock minus client clock, µs.
    pub offset_us: f64,
    /// The clock sync runs on clock echoes (the server's tick timeline) rather than pongs (its
    /// clock): the phase bounds of one do not apply to the other.
    pub echo: bool,
}

/// The clock sync's view, once it has a sample (a clock echo or a pong); the one definition
/// full and light clients measure update latency with.
pub(crate) fn synced_clock(c: &ClockSync) -> Option<SyncedClock> {
    let (server_us, next_tick) = c.newest_sample()?;
    let period_us = c.period_us();
    Some(SyncedClock {
        anchor: next_tick as f64 - server_us / period_us,
        period_us,
        offset_us: c.offset_us(),
        echo: c.is_exact(),
    })
}

impl SyncedClock {
    /// Update latency of a datagram of server tick `tick` that arrived at `arrival` (client
    /// clock): from the tick's start on the server's clock (`tick × period + phase`) to the
    /// arrival on the same clock; never negative.
    pub(crate) fn update_latency(&self, arrival: Time, tick: u64, phase_us: f64) -> Duration {
        let arrival_server_us = arrival.as_micros() as f64 + self.offset_us;
        let tick_start_us = tick as f64 * self.period_us + phase_us;
        Duration::from_micros((arrival_server_us - tick_start_us).max(0.0) as u64)
    }
}

/// The next edit of a client's blueprint (full or light): its id, the version it claims and the
/// patch; `None` without a blueprint, or with [`PENDING_CHANGES_MAX`] changes unacknowledged
/// (counted as an error). Versions come from the client's own count, not from a mirror: several
/// edits are in flight before the first echo arrives, and each must claim a version above the
/// last.
pub(crate) fn next_edit(
    blueprint: &mut Option<(BlueprintId, u32)>,
    pending: usize,
    outcome: &mut ClientOutcome,
    live: &LiveCounters,
) -> Option<(BlueprintId, u32, BlueprintPatch)> {
    let (id, version) = blueprint.as_mut()?;
    if pending >= PENDING_CHANGES_MAX {
        outcome.error(
            live,
            format!("more than {PENDING_CHANGES_MAX} changes unacknowledged: not sending more"),
        );
        return None;
    }
    *version += 1;
    let patch = BlueprintPatch {
        desc: Some(format!("edit {version}")),
        ..BlueprintPatch::default()
    };
    Some((id.clone(), *version, patch))
}

/// A connected client's measurement state.
struct Session {
    client: Client,
    outcome: ClientOutcome,
    phase: PhaseMeter,
    gaps: GapCounter,
    arrivals: Vec<DatagramArrival>,
    pending: HashMap<ReqId, Instant>,
    blueprint: Option<(BlueprintId, u32)>,
    joined_at: Instant,
    last_live: Instant,
    live_in: u64,
    live_out: u64,
}

/// One simulated client, from connect until `stop` turns true. Fails (an unexpected failure)
/// when it cannot join; a session that ends early is returned with `disconnected`.
pub async fn client_task(
    plan: ClientPlan,
    live: Arc<LiveCounters>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<ClientOutcome> {
    let started = Instant::now();
    let options = ClientOptions {
        name: format!("load{}", plan.id),
        trust: plan.trust.clone(),
        token: plan.token.clone(),
        connect_timeout: CONNECT_TIMEOUT,
        ..ClientOptions::default()
    };
    let client = tokio::select! {
        r = Client::connect_async(plan.addr, options) => {
            r.with_context(|| format!("client {} joining {}", plan.id, plan.addr))?
        }
        _ = stop.wait_for(|s| *s) => {
            anyhow::bail!("client {}: the run ended before it joined", plan.id)
        }
    };
    client.log_datagrams(DATAGRAM_LOG_MAX);
    if !plan.interpolate {
        client.with_core(|core| core.set_interpolation(false));
    }
    live.connected.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let mut s = Session {
        client,
        outcome: ClientOutcome {
            joined_after: Some(now - started),
            ..ClientOutcome::default()
        },
        phase: PhaseMeter::default(),
        gaps: GapCounter::default(),
        arrivals: Vec::new(),
        pending: HashMap::new(),
        blueprint: None,
        joined_at: now,
        last_live: now,
        live_in: 0,
        live_out: 0,
    };
    let mut script = plan.script();
    if plan.edits_per_s > 0.0 {
        s.add_blueprint(&plan, &live);
    }
    let mut frames = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(plan.hz)));
    frames.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = frames.tick() => {}
            // Take acknowledgements as they arrive, not at the next frame, so that the frame
            // interval does not add to `ack_latency`.
            _ = s.client.changed(), if !s.pending.is_empty() => {
                if !s.take_events(&live) {
                    break;
                }
                continue;
            }
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
        if !s.frame(&mut script, &plan, &live) {
            break;
        }
    }
    s.finish(&live).await
}

impl Session {
    fn add_blueprint(&mut self, plan: &ClientPlan, live: &LiveCounters) {
        let id = BlueprintId(format!(
            "load-{:x}-{}",
            plan.run_seed & 0xFFFF_FFFF,
            plan.id
        ));
        let blueprint = Blueprint {
            id: id.clone(),
            version: 0,
            name: format!("load test {}", plan.id),
            author: format!("load{}", plan.id),
            ..Blueprint::default()
        };
        match self.client.add_blueprint(blueprint) {
            Ok(req) => {
                self.pending.insert(req, Instant::now());
                self.blueprint = Some((id, 0));
            }
            Err(e) => self.outcome.error(live, format!("adding a blueprint: {e}")),
        }
    }

    /// One client frame: events, datagrams, then this frame's actions. False when the session
    /// has ended.
    fn frame(&mut self, script: &mut ClientScript, plan: &ClientPlan, live: &LiveCounters) -> bool {
        if !self.take_events(live) {
            return false;
        }
        let actions = script.frame(self.joined_at.elapsed().as_secs_f64());
        // One lock (and one wake of the client's network task) per frame: steer, and read the
        // clock sync for the datagram measurement.
        let clock = self.client.with_core(|core| {
            if let Some(motion) = &actions.motion {
                let at = core
                    .predicted()
                    .and_then(|p| p.player_state())
                    .map(|st| [f64::from(st.position[0]), f64::from(st.position[2])]);
                if let Some(at) = at {
                    core.set_input(steer(at, motion));
                }
            }
            core.predicted().and_then(|p| synced_clock(p.clock()))
        });
        self.measure_datagrams(clock);
        for _ in 0..actions.chats {
            match self.client.send_chat(format!("hello from load{}", plan.id)) {
                Ok(req) => {
                    self.pending.insert(req, Instant::now());
                }
                Err(e) => self.outcome.error(live, format!("chat: {e}")),
            }
        }
        for _ in 0..actions.edits {
            self.edit(live);
        }
        if self.last_live.elapsed() >= LIVE_BYTES_INTERVAL {
            self.last_live = Instant::now();
            let stats = self.client.connection_stats();
            let (rx, tx) = (stats.udp_rx.bytes, stats.udp_tx.bytes);
            live.bytes_in
                .fetch_add(rx.saturating_sub(self.live_in), Ordering::Relaxed);
            live.bytes_out
                .fetch_add(tx.saturating_sub(self.live_out), Ordering::Relaxed);
            (self.live_in, self.live_out) = (rx, tx);
        }
        true
    }

    /// Takes every waiting event: acknowledgements, refusals, the end of the session. False when
    /// the session has ended.
    fn take_events(&mut self, live: &LiveCounters) -> bool {
        while let Some(event) = self.client.poll_event() {
            match event {
                ClientEvent::Acked(req) => self.outcome.acked(&mut self.pending, req),
                ClientEvent::Refused { req, reason } => {
                    self.outcome.refused(live, &mut self.pending, req, reason)
                }
                ClientEvent::Disconnected { reason, detail } => {
                    self.outcome.disconnected(live, reason, &detail);
                    return false;
                }
                _ => {}
            }
        }
        true
    }

    /// Modifies this client's blueprint at the next version ([`next_edit`]).
    fn edit(&mut self, live: &LiveCounters) {
        let Some((id, v, patch)) = next_edit(
            &mut self.blueprint,
            self.pending.len(),
            &mut self.outcome,
            live,
        ) else {
            return;
        };
        let req = self
            .client
            .with_core(|core| core.modify_blueprint_at(id, v, patch));
        self.pending.insert(req, Instant::now());
    }

    /// Takes the datagrams logged since the last frame: sequence gaps and tick → arrival latency.
    fn measure_datagrams(&mut self, clock: Option<SyncedClock>) {
        self.arrivals.clear();
        self.client.take_datagram_arrivals(&mut self.arrivals);
        let Some(clock) = clock else {
            return;
        };
        let Some(phase_us) = self.phase.observe(&clock) else {
            return;
        };
        for a in &self.arrivals {
            let Some(h) = parse_header(&a.data) else {
                continue;
            };
            self.gaps.see(h.seq);
            self.outcome.datagrams_measured += 1;
            self.outcome.records_seen += h.records;
            self.outcome.update_latency.record_n(
                clock.update_latency(a.at, h.tick, phase_us),
                h.records.max(1),
            );
        }
        self.outcome.datagrams_lost = self.gaps.lost;
    }

    /// Leaves and returns the outcome.
    async fn finish(mut self, live: &LiveCounters) -> anyhow::Result<ClientOutcome> {
        self.outcome.connected_for = self.joined_at.elapsed();
        self.outcome.tick_phase = self.phase.tick_phase();
        let clock = self.client.with_core(|core| {
            core.predicted().map(|p| {
                let c = p.clock();
                (c.offset_us(), c.rtt_min_us(), c.rtt_us(), c.period_us())
            })
        });
        tracing::debug!(
            phase_us = ?self.phase.phase_us(),
            ?clock,
            update_latency_p50_ms = ?self.outcome.update_latency.quantile_ms(0.5),
            "client clock at the end"
        );
        let stats = self.client.connection_stats();
        self.outcome.bytes_in = stats.udp_rx.bytes;
        self.outcome.bytes_out = stats.udp_tx.bytes;
        self.outcome.packets_in = stats.udp_rx.datagrams;
        self.outcome.packets_out = stats.udp_tx.datagrams;
        live.bytes_in.fetch_add(
            stats.udp_rx.bytes.saturating_sub(self.live_in),
            Ordering::Relaxed,
        );
        live.bytes_out.fetch_add(
            stats.udp_tx.bytes.saturating_sub(self.live_out),
            Ordering::Relaxed,
        );
        live.connected.fetch_sub(1, Ordering::Relaxed);
        if !self.outcome.disconnected {
            self.client.close_async().await;
        }
        Ok(self.outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neonet_proto::transform::KIND_SERVER_STATE;

    #[test]
    fn a_rank_refusal_says_how_to_get_a_relay_that_allows_edits() {
        let rank = refusal_error(Refusal::Rank);
        assert!(rank.contains("not allowed for your rank"), "{rank}");
        assert!(rank.contains("--spawn-relay"), "{rank}");
        let other = refusal_error(Refusal::Conflict);
        assert_eq!(other, "change refused: version conflict (Conflict)");
    }

    #[test]
    fn header_is_read_as_the_receiver_reads_it() {
        // kind, seq 0x0102, tick 300 (varint ac 02), flags with a 2-byte blob, age 0, 5 records.
        let d = [
            KIND_SERVER_STATE,
            0x02,
            0x01,
            0xac,
            0x02,
            1,
            2,
            9,
            9,
            0,
            5,
            0xff,
        ];
        assert_eq!(
            parse_header(&d),
            Some(DatagramHeader {
                seq: 0x0102,
                tick: 300,
                records: 5
            })
        );
        assert_eq!(parse_header(&d[..4]), None);
        assert_eq!(parse_header(&[0x02, 0, 0, 0, 0, 0, 0]), None);
        // A clock echo (flags bit 1, PROTOCOL.md 12.9's worked example) is skipped.
        let echo = [
            0x01, 0x03, 0x00, 0x67, 0x02, 0x80, 0x89, 0x7a, 0xa0, 0x9c, 0x01, 0xdc, 0x0b, 0, 0,
        ];
        assert_eq!(
            parse_header(&echo),
            Some(DatagramHeader {
                seq: 3,
                tick: 103,
                records: 0
            })
        );
    }

    #[test]
    fn gaps_count_losses_across_the_wrap() {
        let mut g = GapCounter::default();
        for seq in [65_533u16, 65_534, 1, 2, 0, 2] {
            g.see(seq);
        }
        // 65535 and 0 were missing after 1; 0 came late; 2 again is a duplicate.
        assert_eq!(g.lost, 1);
    }

    #[test]
    fn tick_phase_takes_the_tightest_recent_bound() {
        let mut p = TickPhase::default();
        assert_eq!(p.phase_us(), None);
        let period = 1000.0;
        // Pongs at server times 10_300 and 20_050 with next ticks 10 and 20: tick 9 started by
        // 10_300 (phase ≤ 1_300), tick 19 by 20_050 (phase ≤ 1_050).
        p.observe(10.0 - 10_300.0 / period, period);
        p.observe(20.0 - 20_050.0 / period, period);
        p.observe(20.0 - 20_050.0 / period, period);
        assert_eq!(
            p.bounds_us.len(),
            2,
            "an unchanged anchor is not a new pong"
        );
        assert_eq!(p.phase_us(), None, "too few pongs to trust");
        for k in 0..TICK_PHASE_MIN_SAMPLES as u32 {
            let n = f64::from(30 + k);
            // Looser bounds, each a different pong.
            p.observe(n - (n * period + 1_100.0 + f64::from(k)) / period, period);
        }
        assert!((p.phase_us().unwrap() - 1_050.0).abs() < 1e-6);
    }

    #[test]
    fn steering_faces_the_waypoint() {
        let ahead = Motion {
            position: [0.0, 10.0],
            velocity: [0.0, 1.4],
        };
        let input = steer([0.0, 0.0], &ahead);
        assert_eq!((input.move_z, input.yaw), (127, 0));
        let east = Motion {
            position: [3.0, 0.0],
            velocity: [0.0, 0.0],
        };
        assert_eq!(steer([0.0, 0.0], &east).yaw, 16_384);
        let here = Motion {
            position: [0.1, 0.0],
            velocity: [0.0, 0.0],
        };
        assert_eq!(steer([0.0, 0.0], &here), CharacterInput::default());
    }
}
