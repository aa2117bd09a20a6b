//! Clock sync: estimating the server's clock and tick from clock echoes in the datagrams (or
//! ping/pong), and running the client's prediction tick just far enough ahead of the server.
//!
//! Each pong gives a sample: the client's send time `t0`, the server's time `ts` and tick when it
//! answered, and the client's receive time `t1`. The round trip is `t1 - t0` and, assuming the two
//! directions are equally long, the server's clock reads `ts` at client time `(t0 + t1) / 2`.
//! A pong does not say how far into its tick the server was: its tick position is taken as the
//! middle.
//!
//! A clock echo ([`EchoSample`], PROTOCOL.md 12.4) rides in a server datagram: the client time
//! `t0` of a client datagram that asked for it, the server's hold time `h` (from receiving that
//! datagram to writing this one), the datagram's tick `T` and the phase `p` of the writing
//! within that tick. The round trip is `t1 - t0 - h`, the server wrote at client time
//! `t1 - rtt / 2`, and its tick position then was exactly `T + 1 + p / period` (counted like a
//! pong's: `T + 1` is the next tick to run). Echo samples live on the server's tick timeline
//! (server time `position × period`), pongs on its clock, so the two never share a window: the
//! first echo starts the window afresh and later pongs are ignored ([`ClockSync::is_exact`]).
//!
//! Robustness: [`ClockSync`] keeps the last [`CLOCK_WINDOW_SAMPLES`] samples. The offset comes
//! from the sample with the smallest round trip in the window (queueing only ever adds delay, so
//! the fastest exchange is the least distorted; an outlier can never be the minimum), smoothed so
//! a new minimum moves the estimate a quarter of the way per sample and only a large difference
//! (> [`OFFSET_JUMP_US`]) jumps. Round-trip statistics use order statistics of the window (minimum
//! and the 7/8 quantile), which ignore the worst eighth of samples and follow an RTT change as soon
//! as half of the window has seen it.
//!
//! The client's tick ([`ClientTickClock`]) targets `server tick now + lead`, the lead being the
//! time an input needs to reach the server in the slow case (half the 7/8-quantile round trip,
//! plus half the round-trip spread as jitter margin) plus [`LEAD_MARGIN_TICKS`]. It converges by
//! running up to [`TICK_RATE_ADJUST_MAX`] faster or slower, and jumps only when far off: forward
//! beyond [`TICK_JUMP_AHEAD_TICKS`] (too little lead makes every input late), backward (a pause)
//! beyond [`TICK_JUMP_THRESHOLD_TICKS`].

use core::time::Duration;
use std::collections::VecDeque;

use crate::time::{Tick, Time};
use crate::transform::ClockEcho;

/// Samples in the clock window. 16 samples at the steady [`PING_INTERVAL_MS`] is 3.2 s: long
/// enough that the window minimum is a genuinely quiet exchange, short enough to follow a route
/// change within a couple of seconds.
pub const CLOCK_WINDOW_SAMPLES: usize = 16;
/// Samples taken at the fast interval after (re)start: enough for the window statistics to mean
/// something within half a second.
pub const CLOCK_FAST_SAMPLES: usize = 8;
/// Interval between clock samples (pings, or datagrams asking for a clock echo) while
/// converging, milliseconds (the first [`CLOCK_FAST_SAMPLES`]).
pub const PING_INTERVAL_FAST_MS: u64 = 50;
/// Interval between clock samples once converged, milliseconds (5 a second: a ping of ~20 bytes
/// each way, or 3 bytes in a client datagram and about 9 in the server's next one).
pub const PING_INTERVAL_MS: u64 = 200;
/// A difference between the smoothed and the measured offset above this jumps rather than
/// slews, microseconds (50 ms: only a restart or a clock step is this far off).
pub const OFFSET_JUMP_US: f64 = 50_000.0;
/// Ticks added to the lead on top of the transit estimate with pong samples: covers the unknown
/// phase of the server's tick within a pong (±½ tick) and the driver's timer lateness.
pub const LEAD_MARGIN_TICKS: f64 = 1.0;
/// Ticks added to the lead with clock echoes, whose tick phase is exact, until their round trips
/// place the client's sends ([`ClockSync::lead_ticks`]): half a tick from the server's ticks.
pub const LEAD_MARGIN_ECHO_TICKS: f64 = 0.5;
/// With clock echoes the margin is chosen in `0..`[`ECHO_MARGIN_MAX_TICKS`] ticks (see
/// [`ClockSync::lead_ticks`]): below 1.5, so that of the two margins a tick apart that place
/// the sends alike, the one nearer the margin in use is kept and a round-trip estimate hovering
/// near a tick boundary does not swing the lead by a whole tick.
pub const ECHO_MARGIN_MAX_TICKS: f64 = 1.5;
/// The two acknowledgement waits of a tick (QUIC's, each side's, until its next datagram) add
/// up to `S = −(round trip + the server's write phase) mod period`, or to `S + period`. Split
/// evenly, `S` gives waits of `S / 2`, too short to absorb jitter when `S` is small; then
/// `S + period` is split instead (waits of half a period or more). Below this fraction of a
/// period the wide split is taken...
pub const ECHO_SPLIT_WIDE_BELOW: f64 = 0.25;
/// ...and above this one the narrow split again: every wait stays between 1/8 and 17/24 of a
/// period (4 and 24 ms at 30 Hz), under the 25 ms a QUIC peer may delay an acknowledgement on a
/// short path, and the gap between the two keeps a jittery estimate from toggling.
pub const ECHO_SPLIT_NARROW_ABOVE: f64 = 5.0 / 12.0;
/// Largest change of the client's tick period while converging, as a fraction (10%: invisible in
/// motion, yet closes a 3-tick error in about a second).
pub const TICK_RATE_ADJUST_MAX: f64 = 0.10;
/// Period change per tick of error, as a fraction (an error of one tick changes the rate by 5%).
pub const TICK_RATE_GAIN_PER_TICK: f64 = 0.05;
/// Lead shortfall beyond which the client's tick jumps forward instead of slewing, ticks. While
/// the client is behind its target its inputs arrive late and each one costs a correction, so
/// closing a 3-tick gap at 10% slew (30 ticks of late inputs) is worse than one small jump.
pub const TICK_JUMP_AHEAD_TICKS: f64 = 3.0;
/// Excess lead beyond which the client's tick pauses instead of slewing, ticks: too much lead
/// only adds latency, so only a large excess (at 10% slew, over two seconds to close) is worth
/// a visible pause.
pub const TICK_JUMP_THRESHOLD_TICKS: f64 = 8.0;
/// Largest tick the client clock will target: 2^52, exactly representable in `f64` and, at
/// 120 Hz, over a million years away, so no server value can overflow tick arithmetic.
pub const TICK_TARGET_MAX: f64 = (1u64 << 52) as f64;
/// Largest accepted round trip, microseconds. Longer samples (a pong stuck for seconds, or a
/// hostile echo) are discarded.
pub const RTT_SAMPLE_MAX_US: u64 = 5_000_000;

/// One clock echo (PROTOCOL.md 12.4), as the client received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoSample {
    /// Client time the echoed datagram was sent (its `client_time_us`).
    pub client_send: Time,
    /// Microseconds the server held it: from receiving that datagram to writing this one.
    pub hold_us: u64,
    /// The server tick of the datagram carrying the echo.
    pub server_tick: Tick,
    /// Microseconds from the scheduled start of `server_tick` to the writing of the datagram.
    pub phase_us: u64,
    /// Client time the datagram carrying the echo arrived.
    pub client_recv: Time,
}

impl EchoSample {
    /// The sample of `echo`, read from a fresh server datagram of tick `server_tick` that
    /// arrived at `client_recv` (what [`ClockSync::handle_echo`] takes).
    pub fn from_echo(echo: &ClockEcho, server_tick: Tick, client_recv: Time) -> Self {
        EchoSample {
            client_send: Time(echo.client_time_us),
            hold_us: echo.hold_us,
            server_tick,
            phase_us: echo.phase_us,
            client_recv,
        }
    }
}

/// One ping/pong exchange, all times as the respective side measured them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingSample {
    /// Client time the ping was sent (echoed in the pong).
    pub client_send: Time,
    /// Server time when it answered, microseconds since the server's epoch.
    pub server_time_us: u64,
    /// The server tick running when it answered.
    pub server_tick: Tick,
    /// Client time the pong arrived.
    pub client_recv: Time,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    rtt_us: u64,
    /// server clock − client clock, microseconds.
    offset_us: f64,
    /// A clock echo's phase: from its tick's start to the writing of its datagram, µs (0 for
    /// pongs).
    write_us: u64,
}

/// The client's estimate of the server's clock and tick. Pure: it is told the time.
#[derive(Clone, Debug)]
pub struct ClockSync {
    period_us: f64,
    window: VecDeque<Sample>,
    /// The window's round trips, sorted (kept so queries every tick do not sort).
    rtt_sorted: Vec<u64>,
    samples_total: u64,
    offset_us: f64,
    /// The newest sample's server time and tick position then (fractional, counted like a
    /// pong's `server_tick`), and that position's whole next tick.
    anchor: Option<(f64, f64, u64)>,
    last_ping: Option<Time>,
    /// When the last datagram asking for a clock echo went out.
    last_stamp: Option<Time>,
    /// Samples come from clock echoes (see the module documentation).
    exact: bool,
    /// With echoes, the lead margin in use, ticks ([`ClockSync::lead_ticks`]).
    echo_margin: Option<f64>,
    /// With echoes, the two acknowledgement waits share `S + period` rather than `S`.
    echo_split_wide: bool,
    rejected: u64,
}

impl ClockSync {
    /// A clock sync for a server ticking at `tick_hz`.
    pub fn new(tick_hz: u16) -> Self {
        ClockSync {
            period_us: 1_000_000.0 / tick_hz.max(1) as f64,
            window: VecDeque::with_capacity(CLOCK_WINDOW_SAMPLES),
            rtt_sorted: Vec::with_capacity(CLOCK_WINDOW_SAMPLES),
            samples_total: 0,
            offset_us: 0.0,
            anchor: None,
            last_ping: None,
            last_stamp: None,
            exact: false,
            echo_margin: None,
            echo_split_wide: false,
            rejected: 0,
        }
    }

    /// The server's tick period, microseconds.
    pub fn period_us(&self) -> f64 {
        self.period_us
    }

    /// Whether a ping should be sent at `now`: never once clock echoes arrive (a driver may still
    /// ping for liveness). Call [`ClockSync::on_ping_sent`] when it is.
    pub fn ping_due(&self, now: Time) -> bool {
        !self.exact
            && self
                .last_ping
                .is_none_or(|t| now >= t + self.ping_interval())
    }

    /// Whether a datagram sent at `now` should ask for a clock echo (kind `0x03`), at the same
    /// pace as pings. Call [`ClockSync::on_stamp_sent`] when it does.
    pub fn stamp_due(&self, now: Time) -> bool {
        self.last_stamp
            .is_none_or(|t| now >= t + self.ping_interval())
    }

    /// Records that a datagram asking for a clock echo went out at `now`.
    pub fn on_stamp_sent(&mut self, now: Time) {
        self.last_stamp = Some(now);
    }

    /// For a datagram sent at `now`: the client time to stamp it with (kind `0x03`,
    /// [`crate::transform::encode_client_datagram_clocked`]) when a stamp is due
    /// ([`ClockSync::stamp_due`], then recorded as sent), `None` otherwise.
    pub fn poll_stamp(&mut self, now: Time) -> Option<u64> {
        if !self.stamp_due(now) {
            return None;
        }
        self.on_stamp_sent(now);
        Some(now.as_micros())
    }

    /// Whether the samples come from clock echoes (exact tick phase): from the first echo on,
    /// pongs are ignored and no ping is due.
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// The interval between pings now: fast while converging, then steady.
    pub fn ping_interval(&self) -> Duration {
        if self.window.len() < CLOCK_FAST_SAMPLES {
            Duration::from_millis(PING_INTERVAL_FAST_MS)
        } else {
            Duration::from_millis(PING_INTERVAL_MS)
        }
    }

    /// When the next ping is due (client time): now if none was sent yet, never once clock
    /// echoes arrive.
    pub fn next_ping_at(&self) -> Time {
        if self.exact {
            return Time(u64::MAX);
        }
        self.last_ping
            .map_or(Time::ZERO, |t| t + self.ping_interval())
    }

    /// Records that a ping went out at `now`.
    pub fn on_ping_sent(&mut self, now: Time) {
        self.last_ping = Some(now);
    }

    /// Feeds one pong; returns its round trip, µs. Samples with a negative or absurd round trip
    /// are counted and ignored, and so is every pong once clock echoes arrive.
    pub fn handle_sample(&mut self, s: PingSample) -> Option<u64> {
        if self.exact {
            return None;
        }
        if s.client_recv < s.client_send
            || (s.client_recv - s.client_send).as_micros() as u64 > RTT_SAMPLE_MAX_US
        {
            self.rejected += 1;
            return None;
        }
        let rtt_us = (s.client_recv - s.client_send).as_micros() as u64;
        let mid = s.client_send.as_micros() as f64 + rtt_us as f64 / 2.0;
        // A pong does not say where in its tick it was answered: the middle.
        let position = s.server_tick.0 as f64 + 0.5;
        self.add_sample(
            rtt_us,
            mid,
            s.server_time_us as f64,
            position,
            s.server_tick.0,
            0,
        );
        Some(rtt_us)
    }

    /// Feeds one clock echo; returns its round trip (net of the server's hold), µs. The first
    /// echo starts the window afresh. Samples with a negative or absurd round trip are counted
    /// and ignored.
    pub fn handle_echo(&mut self, s: EchoSample) -> Option<u64> {
        let send_us = s.client_send.as_micros();
        let rtt_us = s
            .client_recv
            .as_micros()
            .checked_sub(send_us)
            .and_then(|d| d.checked_sub(s.hold_us))
            .filter(|&r| r <= RTT_SAMPLE_MAX_US);
        let Some(rtt_us) = rtt_us else {
            self.rejected += 1;
            return None;
        };
        if !self.exact {
            self.exact = true;
            self.echo_margin = None;
            self.window.clear();
            self.rtt_sorted.clear();
            self.samples_total = 0;
            self.anchor = None;
        }
        let next_tick = s.server_tick.0.saturating_add(1);
        let position = next_tick as f64 + s.phase_us as f64 / self.period_us;
        let written_at = s.client_recv.as_micros() as f64 - rtt_us as f64 / 2.0;
        self.add_sample(
            rtt_us,
            written_at,
            position * self.period_us,
            position,
            next_tick,
            s.phase_us,
        );
        self.update_echo_margin();
        Some(rtt_us)
    }

    /// With clock echoes, chooses the lead margin that puts the client's sends where both sides'
    /// QUIC acknowledgements wait least for a datagram to ride on. The client's datagram for
    /// tick `c` reaches the server `margin × period + (transit − uplink)` before the server runs
    /// tick `c − 1` (the uplink taken as half the shortest round trip), and waits there for that
    /// tick's datagram; the server's datagram then waits at the client for its next send. The
    /// two waits add up to `S = −(round trip + write phase) mod period` or to `S + period`;
    /// the margin in `0..1` that splits them evenly is taken, or the one a tick above it when
    /// that is nearer the margin in use (below [`ECHO_MARGIN_MAX_TICKS`]). Any margin of at
    /// least 0 leaves an input a whole tick beyond its transit estimate to arrive in time.
    fn update_echo_margin(&mut self) {
        let (Some(lo), Some(hi)) = (self.rtt_min_us(), self.rtt_high_us()) else {
            return;
        };
        let p = self.period_us;
        let write_us = self.window.iter().map(|x| x.write_us).min().unwrap_or(0) as f64;
        let s = (-(lo as f64 + write_us)).rem_euclid(p);
        if s < p * ECHO_SPLIT_WIDE_BELOW {
            self.echo_split_wide = true;
        } else if s > p * ECHO_SPLIT_NARROW_ABOVE {
            self.echo_split_wide = false;
        }
        let server_wait = if self.echo_split_wide {
            (s + p) / 2.0
        } else {
            s / 2.0
        };
        let transit = hi as f64 / 2.0 + (hi - lo) as f64 / 2.0;
        let margin = ((server_wait - transit + lo as f64 / 2.0) / p).rem_euclid(1.0);
        if !margin.is_finite() {
            return;
        }
        let next = match self.echo_margin {
            Some(prev) if margin + 1.0 < ECHO_MARGIN_MAX_TICKS => {
                if (margin + 1.0 - prev).abs() < (margin - prev).abs() {
                    margin + 1.0
                } else {
                    margin
                }
            }
            _ => margin,
        };
        self.echo_margin = Some(next);
    }

    /// One sample: the round trip, the client time the server's clock read `server_us`, and
    /// the server's tick position then.
    fn add_sample(
        &mut self,
        rtt_us: u64,
        mid: f64,
        server_us: f64,
        position: f64,
        next_tick: u64,
        write_us: u64,
    ) {
        let offset_us = server_us - mid;
        if self.window.len() == CLOCK_WINDOW_SAMPLES {
            self.window.pop_front();
        }
        self.window.push_back(Sample {
            rtt_us,
            offset_us,
            write_us,
        });
        self.rtt_sorted.clear();
        self.rtt_sorted.extend(self.window.iter().map(|x| x.rtt_us));
        self.rtt_sorted.sort_unstable();
        self.samples_total += 1;
        // Keep the newest anchor: the server's tick timeline is exact on the server's clock.
        if self.anchor.is_none_or(|(t, _, _)| server_us >= t) {
            self.anchor = Some((server_us, position, next_tick));
        }
        let best = self
            .window
            .iter()
            .min_by_key(|x| x.rtt_us)
            .map_or(offset_us, |x| x.offset_us);
        if self.samples_total == 1 || (best - self.offset_us).abs() > OFFSET_JUMP_US {
            self.offset_us = best;
        } else {
            self.offset_us += (best - self.offset_us) * 0.25;
        }
    }

    /// At least one sample has arrived.
    pub fn is_ready(&self) -> bool {
        self.anchor.is_some()
    }

    /// Samples ignored as impossible.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Estimated server clock minus client clock, microseconds.
    pub fn offset_us(&self) -> f64 {
        self.offset_us
    }

    fn rtt_quantile_us(&self, q_num: usize, q_den: usize) -> Option<u64> {
        let n = self.window.len();
        if n == 0 {
            return None;
        }
        let i = ((n - 1) * q_num) / q_den;
        Some(self.rtt_sorted[i])
    }

    /// Smallest round trip in the window, microseconds.
    pub fn rtt_min_us(&self) -> Option<u64> {
        self.rtt_quantile_us(0, 1)
    }

    /// Median round trip in the window, microseconds: the typical RTT.
    pub fn rtt_us(&self) -> Option<u64> {
        self.rtt_quantile_us(1, 2)
    }

    /// The 7/8 quantile of the round trip in the window, microseconds: the slow case, ignoring
    /// outliers.
    pub fn rtt_high_us(&self) -> Option<u64> {
        self.rtt_quantile_us(7, 8)
    }

    /// The estimated server time at client time `now`, microseconds.
    pub fn server_time_us(&self, now: Time) -> f64 {
        now.as_micros() as f64 + self.offset_us
    }

    /// The estimated server tick at client time `now`, fractional, counted like a pong's
    /// `server_tick` (the next tick to run, plus the fraction of the period elapsed since the
    /// last one began). `None` before the first sample.
    pub fn server_tick_f64(&self, now: Time) -> Option<f64> {
        let (at, position, _) = self.anchor?;
        Some(position + (self.server_time_us(now) - at) / self.period_us)
    }

    /// The newest sample's server time, µs (on the server's clock for pongs, on its tick
    /// timeline for echoes: see the module documentation), and the next tick the server would
    /// run then: tick `next − 1` had begun by that time. `None` before the first sample.
    pub fn newest_sample(&self) -> Option<(f64, u64)> {
        self.anchor.map(|(at, _, next)| (at, next))
    }

    /// How far ahead of the server the client's prediction should run, ticks: the transit
    /// estimate plus a margin, [`LEAD_MARGIN_TICKS`] with pongs, and with clock echoes the one
    /// that puts the client's sends where acknowledgements ride on datagrams both ways (see
    /// `update_echo_margin`, [`ECHO_SPLIT_WIDE_BELOW`]).
    pub fn lead_ticks(&self) -> f64 {
        let margin = if self.exact {
            self.echo_margin.unwrap_or(LEAD_MARGIN_ECHO_TICKS)
        } else {
            LEAD_MARGIN_TICKS
        };
        let (Some(lo), Some(hi)) = (self.rtt_min_us(), self.rtt_high_us()) else {
            return margin;
        };
        let transit_us = hi as f64 / 2.0 + (hi - lo) as f64 / 2.0;
        transit_us / self.period_us + margin
    }

    /// The tick the client should be predicting at `now`, fractional.
    pub fn target_tick_f64(&self, now: Time) -> Option<f64> {
        Some(self.server_tick_f64(now)? + self.lead_ticks())
    }
}

/// The client's prediction tick clock: runs at the server's rate, slightly faster or slower to
/// converge on [`ClockSync::target_tick_f64`]. Tick numbers only increase.
#[derive(Clone, Debug)]
pub struct ClientTickClock {
    period_us: f64,
    next_at_us: f64,
    next_tick: Option<Tick>,
    jumps: u64,
}

impl ClientTickClock {
    /// A clock for a server ticking at `tick_hz`. It starts at the first poll after the clock sync
    /// has a sample.
    pub fn new(tick_hz: u16) -> Self {
        ClientTickClock {
            period_us: 1_000_000.0 / tick_hz.max(1) as f64,
            next_at_us: 0.0,
            next_tick: None,
            jumps: 0,
        }
    }

    /// Times the clock jumped or paused instead of slewing.
    pub fn jumps(&self) -> u64 {
        self.jumps
    }

    /// The next tick to run, once started.
    pub fn next_tick(&self) -> Option<Tick> {
        self.next_tick
    }

    /// When the next tick is due (client time).
    pub fn next_at(&self) -> Time {
        // Rounded up: a wake-up at the floor would find the tick not yet due and spin.
        Time(self.next_at_us.max(0.0).ceil() as u64)
    }

    /// Fraction of the current tick elapsed at `now`, for rendering between ticks (0..=1).
    pub fn alpha(&self, now: Time) -> f32 {
        let since_prev = now.as_micros() as f64 - (self.next_at_us - self.period_us);
        (since_prev / self.period_us).clamp(0.0, 1.0) as f32
    }

    /// If a client tick is due at `now`, returns its number. Call in a loop until `None`.
    pub fn poll_tick(&mut self, now: Time, sync: &ClockSync) -> Option<Tick> {
        // The target derives from the server's pongs: keep it finite and far from u64::MAX so a
        // wild value can never overflow tick arithmetic.
        let target = sync.target_tick_f64(now)?;
        if !target.is_finite() {
            return None;
        }
        let target = target.clamp(0.0, TICK_TARGET_MAX);
        let now_us = now.as_micros() as f64;
        let Some(next) = self.next_tick else {
            let t = Tick(target.floor() as u64);
            self.next_tick = Some(t.next());
            self.next_at_us = now_us + self.period_us;
            return Some(t);
        };
        if now_us < self.next_at_us {
            return None;
        }
        let err = target - next.0 as f64;
        if err > TICK_JUMP_AHEAD_TICKS {
            self.jumps += 1;
            let t = Tick(target.floor() as u64);
            self.next_tick = Some(t.next());
            self.next_at_us = now_us + self.period_us;
            return Some(t);
        }
        if err < -TICK_JUMP_THRESHOLD_TICKS {
            // Far ahead: pause until the target catches up (never go back).
            self.jumps += 1;
            self.next_at_us = now_us + (-err - 1.0) * self.period_us;
            return None;
        }
        let adjust =
            (err * TICK_RATE_GAIN_PER_TICK).clamp(-TICK_RATE_ADJUST_MAX, TICK_RATE_ADJUST_MAX);
        self.next_at_us += self.period_us * (1.0 - adjust);
        // A late driver catches up at most a few ticks at once, like the server's clock.
        let behind_limit = now_us - self.period_us * crate::time::TICK_CATCH_UP_MAX as f64;
        if self.next_at_us < behind_limit {
            self.next_at_us = now_us;
        }
        self.next_tick = Some(next.next());
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Drives a clock sync against a server whose clock is `true_offset_us` ahead, over a path
    /// with the given RTT schedule and jitter, pinging when due. Returns the sync and, per pong,
    /// (time ms, offset error us, median RTT estimate us).
    fn drive(
        seed: u64,
        true_offset_us: i64,
        rtt_ms_at: impl Fn(u64) -> u64,
        jitter_ms: u64,
        outlier_chance: f64,
        run_ms: u64,
    ) -> (ClockSync, Vec<(u64, f64, u64)>) {
        let hz = 30;
        let mut c = ClockSync::new(hz);
        let mut r = Rng::new(seed);
        let mut out = vec![];
        let mut pending: Vec<PingSample> = vec![];
        for now_ms in 0..run_ms {
            let now = Time::from_millis(now_ms + 1_000);
            if c.ping_due(now) {
                c.on_ping_sent(now);
                let rtt = rtt_ms_at(now_ms);
                let up = rtt / 2 + r.below(jitter_ms + 1);
                let mut down = rtt / 2 + r.below(jitter_ms + 1);
                if r.chance(outlier_chance) {
                    down += 300;
                }
                // The server answers at arrival.
                let server_now = (now_ms + up + 1_000) as i64 * 1000 + true_offset_us;
                let server_tick = (server_now as f64 / (1e6 / hz as f64)).floor() as u64;
                pending.push(PingSample {
                    client_send: now,
                    server_time_us: server_now as u64,
                    server_tick: Tick(server_tick),
                    client_recv: Time::from_millis(now_ms + up + down + 1_000),
                });
            }
            while let Some(i) = pending.iter().position(|s| s.client_recv <= now) {
                c.handle_sample(pending.remove(i));
                let err = c.offset_us() - true_offset_us as f64;
                out.push((now_ms, err, c.rtt_us().unwrap()));
            }
        }
        (c, out)
    }

    #[test]
    fn clock_estimate_converges_within_a_few_round_trips() {
        let (c, trace) = drive(1, 7_345_678, |_| 100, 20, 0.1, 2_000);
        // After 4 pongs (a few round trips, < 0.5 s) the offset is within 10 ms, whatever outliers.
        for &(t, err, _) in trace.iter().skip(3) {
            assert!(err.abs() < 10_000.0, "t={t} ms offset error {err} us");
        }
        let rtt = c.rtt_us().unwrap();
        assert!((100_000..=125_000).contains(&rtt), "rtt {rtt}");
        // The estimated server tick is within a tick of the truth.
        let now = Time::from_millis(3_000);
        let truth = (3_000_000.0 + 7_345_678.0) / (1e6 / 30.0);
        let est = c.server_tick_f64(now).unwrap();
        assert!((est - truth).abs() < 1.0, "est {est} truth {truth}");
    }

    #[test]
    fn clock_estimate_follows_an_rtt_change() {
        let (c, trace) = drive(
            2,
            -2_000_000,
            |t| if t < 3_000 { 60 } else { 200 },
            10,
            0.0,
            8_000,
        );
        let before: Vec<_> = trace
            .iter()
            .filter(|x| x.0 > 2_000 && x.0 < 3_000)
            .collect();
        assert!(before.iter().all(|x| x.2 < 80_000), "{before:?}");
        // Within 2.5 s of the change the typical RTT reflects it.
        let after: Vec<_> = trace.iter().filter(|x| x.0 > 5_500).collect();
        assert!(
            after.iter().all(|x| x.2 >= 200_000 && x.2 < 230_000),
            "{after:?}"
        );
        // A symmetric change does not disturb the offset.
        assert!(after.iter().all(|x| x.1.abs() < 10_000.0));
        assert!(c.lead_ticks() > 200_000.0 / 2.0 / c.period_us());
    }

    #[test]
    fn wild_server_tick_in_a_pong_does_not_panic_the_client_clock() {
        let mut sync = ClockSync::new(30);
        sync.handle_sample(PingSample {
            client_send: Time(0),
            server_time_us: u64::MAX,
            server_tick: Tick(u64::MAX),
            client_recv: Time(10),
        });
        let mut clock = ClientTickClock::new(30);
        for ms in 0..100 {
            while clock.poll_tick(Time::from_millis(ms), &sync).is_some() {}
        }
        assert!(clock.next_tick().unwrap().0 <= TICK_TARGET_MAX as u64 + 10);
    }

    #[test]
    fn clock_echoes_place_the_tick_timeline_exactly_and_replace_pongs() {
        let hz = 30;
        let period = 1e6 / hz as f64;
        let mut sync = ClockSync::new(hz);
        // A pong first: its phase is unknown.
        assert_eq!(
            sync.handle_sample(PingSample {
                client_send: Time(0),
                server_time_us: 10_000_000,
                server_tick: Tick(300),
                client_recv: Time(80_000),
            }),
            Some(80_000)
        );
        assert!(!sync.is_exact() && sync.ping_due(Time(1_000_000)));
        // The server's clock is 5 s ahead of the client's; ticks start every `period` from server
        // time 0 (tick k runs at k × period). Each client datagram takes 30 ms up, 30 ms down,
        // and is held until the next tick's write, 2 ms after its start.
        for i in 0..20u64 {
            let send = 1_000_000 + i * 200_000;
            let server_arrival = (send + 30_000 + 5_000_000) as f64;
            let tick = (server_arrival / period).floor() as u64 + 1;
            let written = tick as f64 * period + 2_000.0;
            let hold = (written - server_arrival) as u64;
            let recv = (written - 5_000_000.0) as u64 + 30_000;
            let rtt = sync.handle_echo(EchoSample {
                client_send: Time(send),
                hold_us: hold,
                server_tick: Tick(tick),
                phase_us: 2_000,
                client_recv: Time(recv),
            });
            assert!(rtt.is_some_and(|r| r.abs_diff(60_000) <= 1), "{rtt:?}");
        }
        assert!(sync.is_exact());
        assert!(!sync.ping_due(Time(10_000_000)));
        assert_eq!(sync.next_ping_at(), Time(u64::MAX));
        assert_eq!(
            sync.rtt_min_us().map(|r| r.abs_diff(60_000) <= 1),
            Some(true)
        );
        // The estimate is the next tick to run plus the fraction elapsed, exactly: at client
        // time t the server time is t + 5 s, and tick k ran at k × period.
        let now = Time(7_777_777);
        let truth = (7_777_777.0 + 5_000_000.0) / period + 1.0;
        let est = sync.server_tick_f64(now).unwrap();
        assert!((est - truth).abs() < 0.001, "est {est} truth {truth}");
        // The margin places the sends: the client's datagram reaches the server `margin × period`
        // before a tick (transit estimate = uplink here), and the server's datagram, written 2 ms
        // into the tick, reaches the client 32 ms later, before its next send. Both wait for a
        // datagram to ride on well under QUIC's 25 ms.
        let margin = sync.lead_ticks() - 30_000.0 / period;
        assert!((0.0..ECHO_MARGIN_MAX_TICKS).contains(&margin), "{margin}");
        let server_wait = (margin * period).rem_euclid(period);
        let client_wait = (-(margin * period) - 2_000.0 - 60_000.0).rem_euclid(period);
        for w in [server_wait, client_wait] {
            assert!(
                (4_000.0..24_000.0).contains(&w),
                "waits {server_wait} {client_wait}"
            );
        }
        // Pongs no longer move anything.
        assert_eq!(
            sync.handle_sample(PingSample {
                client_send: Time(7_000_000),
                server_time_us: 0,
                server_tick: Tick(1),
                client_recv: Time(7_000_010),
            }),
            None
        );
        assert!((sync.server_tick_f64(now).unwrap() - est).abs() < 1e-9);
        // An echo claiming a hold longer than the round trip is impossible: ignored.
        let rejected = sync.rejected();
        assert_eq!(
            sync.handle_echo(EchoSample {
                client_send: Time(9_000_000),
                hold_us: 50_000,
                server_tick: Tick(u64::MAX),
                phase_us: u64::MAX,
                client_recv: Time(9_040_000),
            }),
            None
        );
        assert_eq!(sync.rejected(), rejected + 1);
        // A wild but possible one does not panic anything.
        sync.handle_echo(EchoSample {
            client_send: Time(9_000_000),
            hold_us: 0,
            server_tick: Tick(u64::MAX),
            phase_us: u64::MAX,
            client_recv: Time(9_040_000),
        });
        let mut clock = ClientTickClock::new(hz);
        for ms in 0..100 {
            while clock
                .poll_tick(Time::from_millis(9_000 + ms), &sync)
                .is_some()
            {}
        }
    }

    #[test]
    fn stamps_are_due_at_the_ping_pace() {
        let mut sync = ClockSync::new(30);
        assert!(sync.stamp_due(Time(0)));
        sync.on_stamp_sent(Time(0));
        assert!(!sync.stamp_due(Time::from_millis(PING_INTERVAL_FAST_MS - 1)));
        assert!(sync.stamp_due(Time::from_millis(PING_INTERVAL_FAST_MS)));
    }

    #[test]
    fn client_tick_leads_the_server_by_transit_plus_margin_and_slews() {
        let mut sync = ClockSync::new(30);
        // Perfect samples: RTT 100 ms, server clock = client clock.
        for i in 0..16u64 {
            let send = Time::from_millis(1000 + i * 50);
            let st = 1_050_000 + i * 50_000;
            sync.handle_sample(PingSample {
                client_send: send,
                server_time_us: st,
                server_tick: Tick((st as f64 / 33_333.333) as u64),
                client_recv: send + Duration::from_millis(100),
            });
        }
        let mut clock = ClientTickClock::new(30);
        let mut now = Time::from_millis(2_000);
        let mut ticks = vec![];
        for _ in 0..3_000 {
            while let Some(t) = clock.poll_tick(now, &sync) {
                ticks.push((now, t));
            }
            now += Duration::from_millis(1);
        }
        // Ticks are consecutive and track the target within a tick.
        for w in ticks.windows(2) {
            assert_eq!(w[1].1 .0, w[0].1 .0 + 1);
        }
        let (t_now, last) = *ticks.last().unwrap();
        let target = sync.target_tick_f64(t_now).unwrap();
        assert!((target - last.0 as f64).abs() < 1.0, "{target} {last:?}");
        // Lead ≈ 50 ms one way + 1 tick = 2.5 ticks.
        assert!((sync.lead_ticks() - 2.5).abs() < 0.01);
        // Move the target 3 ticks back (RTT estimate drops): the clock slows instead of jumping.
        let jumps = clock.jumps();
        let mut s2 = sync.clone();
        s2.offset_us -= 100_000.0;
        for _ in 0..3_000 {
            while clock.poll_tick(now, &s2).is_some() {}
            now += Duration::from_millis(1);
        }
        assert_eq!(clock.jumps(), jumps);
        let tgt = s2.target_tick_f64(now).unwrap();
        assert!((clock.next_tick().unwrap().0 as f64 - tgt).abs() < 1.5);
    }
}
