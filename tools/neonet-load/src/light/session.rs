//! What a joined light client does and measures, whichever driver carries its bytes (the single
//! event loop, [`super::single_loop`], or one tokio task per client, [`super::tasks`]): the
//! script's frames (walk, chat, edits: [`crate::behaviour::ClientScript`], as a full client's),
//! the update latency and sequence gaps of the server datagrams at their arrival, the answers to
//! its changes, and the outcome it returns. A driver feeds it the core's inputs and the
//! connection's counters; the figures therefore mean the same under either driver.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use neonet_proto::types::{Blueprint, BlueprintId, ReqId};
use neonet_proto::Time;
use tokio::time::Instant;

use super::core::{LightCore, LightEvent};
use crate::behaviour::ClientScript;
use crate::driver::{
    next_edit, steer, synced_clock, ClientOutcome, ClientPlan, GapCounter, PhaseMeter,
};
use crate::run::LiveCounters;

/// How often the live byte counters are refreshed from the connection, per client: 1 s.
const LIVE_BYTES_INTERVAL: Duration = Duration::from_secs(1);

/// A joined light client's script and measurements.
pub(crate) struct LightSession {
    /// What it measured so far.
    pub outcome: ClientOutcome,
    /// The tick phase the update latency rests on, as the full client's driver measures it.
    phase: PhaseMeter,
    gaps: GapCounter,
    pending: HashMap<ReqId, Instant>,
    blueprint: Option<(BlueprintId, u32)>,
    script: ClientScript,
    /// When the core's clock started (its `Time` 0).
    started: Instant,
    joined_at: Instant,
    frame_period: Duration,
    /// A script frame due within this much after the core's next wake-up runs with it: half a
    /// frame.
    frame_slack: Duration,
    next_frame: Instant,
    last_live: Instant,
    live_in: u64,
    live_out: u64,
}

impl LightSession {
    /// The core has joined (at `joined_at`; its clock started at `started`, the client's start):
    /// counts the client connected, drops the join's events, and adds the blueprint its edits
    /// modify.
    pub fn joined(
        core: &mut LightCore,
        plan: &ClientPlan,
        live: &LiveCounters,
        started: Instant,
        joined_at: Instant,
    ) -> LightSession {
        while core.poll_event().is_some() {}
        live.connected.fetch_add(1, Ordering::Relaxed);
        let frame_period = Duration::from_secs_f64(1.0 / f64::from(plan.hz));
        let mut s = LightSession {
            outcome: ClientOutcome {
                joined_after: Some(joined_at - started),
                ..ClientOutcome::default()
            },
            phase: PhaseMeter::default(),
            gaps: GapCounter::default(),
            pending: HashMap::new(),
            blueprint: None,
            script: plan.script(),
            started,
            joined_at,
            frame_period,
            frame_slack: frame_period / 2,
            next_frame: joined_at,
            last_live: joined_at,
            live_in: 0,
            live_out: 0,
        };
        if plan.edits_per_s > 0.0 {
            s.add_blueprint(core, plan);
        }
        s
    }

    /// When the driver must next call [`LightSession::wake`]: the core's next wake-up (its
    /// client tick, a ping, a due acknowledgement) or the script's next frame. One wake-up per
    /// tick where possible: a frame due within half a frame of the core's next wake-up (its
    /// client tick, at the same rate) runs then.
    pub fn next_wake(&self, core: &LightCore) -> Instant {
        let core_at = core
            .poll_timeout()
            .map(|t| self.started + Duration::from_micros(t.0));
        match core_at {
            Some(t) if t <= self.next_frame + self.frame_slack => t,
            Some(t) => t.min(self.next_frame),
            None => self.next_frame,
        }
    }

    /// The wake-up at `at`: the core's timers, then the script's frame if due. True when the
    /// live byte counters are due a refresh ([`LightSession::live_bytes`]).
    pub fn wake(
        &mut self,
        core: &mut LightCore,
        plan: &ClientPlan,
        live: &LiveCounters,
        at: Instant,
    ) -> bool {
        core.handle_timeout(self.time(at));
        if at + self.frame_slack < self.next_frame {
            return false;
        }
        // Skip missed frames, as a full client's interval does.
        while self.next_frame <= at + self.frame_slack {
            self.next_frame += self.frame_period;
        }
        self.frame(core, plan, live);
        if at.duration_since(self.last_live) >= LIVE_BYTES_INTERVAL {
            self.last_live = at;
            return true;
        }
        false
    }

    /// `at` on the core's clock.
    pub fn time(&self, at: Instant) -> Time {
        Time(at.saturating_duration_since(self.started).as_micros() as u64)
    }

    /// A server datagram that arrived at `now`: acknowledged by the core; its sequence gap and
    /// update latency measured at arrival, as a full client measures them from its datagram log.
    pub fn datagram(&mut self, core: &mut LightCore, d: &[u8], now: Time) {
        let Some(seen) = core.handle_datagram(d, now) else {
            return;
        };
        let Some(clock) = core.clock().and_then(synced_clock) else {
            return;
        };
        let Some(phase_us) = self.phase.observe(&clock) else {
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
    fn frame(&mut self, core: &mut LightCore, plan: &ClientPlan, live: &LiveCounters) {
        let actions = self.script.frame(self.joined_at.elapsed().as_secs_f64());
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

    /// Modifies this client's blueprint at the next version (the full client's rule,
    /// [`next_edit`]).
    fn edit(&mut self, core: &mut LightCore, live: &LiveCounters) {
        let Some((id, v, patch)) = next_edit(
            &mut self.blueprint,
            self.pending.len(),
            &mut self.outcome,
            live,
        ) else {
            return;
        };
        let req = core.modify_blueprint_at(id, v, patch);
        self.pending.insert(req, Instant::now());
    }

    /// Takes the core's events; false when the session has ended.
    pub fn take_events(&mut self, core: &mut LightCore, live: &LiveCounters) -> bool {
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

    /// Adds what the connection received and sent since the last call (its UDP byte counters
    /// `stats`) to the live counters.
    pub fn live_bytes(&mut self, live: &LiveCounters, stats: &quinn_proto::ConnectionStats) {
        let (rx, tx) = (stats.udp_rx.bytes, stats.udp_tx.bytes);
        live.bytes_in
            .fetch_add(rx.saturating_sub(self.live_in), Ordering::Relaxed);
        live.bytes_out
            .fetch_add(tx.saturating_sub(self.live_out), Ordering::Relaxed);
        (self.live_in, self.live_out) = (rx, tx);
    }

    /// The session stops (told to, or it ended): the outcome, with the connection's counters
    /// `stats` taken now, before the client leaves. Counts the client gone.
    pub fn finish(
        mut self,
        core: &LightCore,
        live: &LiveCounters,
        stats: &quinn_proto::ConnectionStats,
    ) -> ClientOutcome {
        self.outcome.connected_for = self.joined_at.elapsed();
        self.outcome.tick_phase = self.phase.tick_phase();
        self.outcome.datagrams_lost = self.gaps.lost;
        self.outcome.bytes_in = stats.udp_rx.bytes;
        self.outcome.bytes_out = stats.udp_tx.bytes;
        self.outcome.packets_in = stats.udp_rx.datagrams;
        self.outcome.packets_out = stats.udp_tx.datagrams;
        self.live_bytes(live, stats);
        if core.events_dropped() > 0 {
            let dropped = core.events_dropped();
            self.outcome.error(
                live,
                format!("{dropped} events dropped: the driver fell behind"),
            );
        }
        live.connected.fetch_sub(1, Ordering::Relaxed);
        self.outcome
    }
}
