//! The per-client byte budget over time, and how its rate follows the path.
//!
//! # A budget over time
//! Each client's transform datagrams draw from a token bucket ([`ByteBucket`]) filled at the
//! budget rate every tick and holding at most [`BUDGET_BURST_S`] of it: a burst larger than one
//! tick's share is sent in full while the bucket lasts, and over any run of ticks the bytes sent
//! never exceed rate × time + the bucket. Every datagram is charged its wire size: its payload
//! plus [`PACKET_OVERHEAD_BYTES`], the transport's per-packet cost. When even the bucket is not
//! enough, the priority accumulator decides what waits; what waited has gained priority and goes
//! first next tick.
//!
//! # Following the path ([`PathBudget`])
//! The rate moves between [`crate::transform::config::BUDGET_BITS_PER_S_MIN`] and the configured
//! ceiling (`TransformConfig::budget_bits_per_s`), which it never exceeds. It starts at the
//! ceiling and is driven by signals any path gives:
//! - **Queueing delay** from the replicator's own acks: the recent round trip
//!   ([`RTT_RECENT_GAIN`]) against the smallest seen in the last [`MIN_RTT_WINDOW_US`]. A queue
//!   growing at a bottleneck shows as delay long before its buffer overflows, so the budget
//!   shrinks before datagrams are dropped: more than [`QUEUE_DELAY_MIN_US`], or
//!   [`QUEUE_DELAY_FRACTION`] of the smallest RTT, or [`RTT_DEV_MULT`] times the round trip's
//!   usual deviation ([`RTT_DEV_GAIN`]; a jittery path is not a congested one), whichever is
//!   largest, is congestion.
//! - **Datagram loss** seen in acknowledgements: a datagram not acknowledged while
//!   [`LOSS_REORDER_TOLERANCE`] later ones are counts as lost. Loss rising
//!   [`LOSS_CONGESTION_EXCESS`] above the path's usual loss is congestion: the recent rate
//!   (averaged with gain [`LOSS_GAIN`]) against the long-run one ([`LOSS_BASE_GAIN`], after
//!   [`LOSS_WARMUP_DATAGRAMS`]). Steady random loss (a 5% or even a 35% wireless link) is not:
//!   sending less does not make it go away, so the budget does not collapse on a lossy but
//!   uncongested path; a queue overflowing at a bottleneck is (its drops come on top).
//! - **The transport's congestion controller** ([`PathSignals`], fed by the driver from quinn's
//!   path stats, and by the simulated network's link model from its own queue): the rate stays
//!   under [`CWND_SHARE`] of congestion window / RTT, what QUIC would let through without
//!   queueing datagrams in its own buffer (where quinn drops them when full), and a new
//!   congestion event is congestion.
//!
//! On congestion the rate goes down to [`DELIVERY_SHARE`] of the rate the acks show the path
//! delivering (bytes acknowledged over the last round trip: while a queue stands, that is the
//! bottleneck's capacity), shedding at least 1 − [`DELIVERY_CUT_CEIL`] and at most
//! 1 − [`DELIVERY_CUT_FLOOR`] of the rate; that delivery figure is then the path's known
//! capacity, and a tick draws at most [`PACING_GAIN`] times it (or the rate, if higher) from the
//! bucket ([`PathBudget::pace_bytes_per_tick`]), so a burst saved during rest is paced; without a
//! delivery figure it is multiplied by [`DECREASE_FACTOR`] (at most once per recent RTT, so one
//! episode is not counted many times) and the bucket is emptied down to one tick's share, so
//! a saved burst does not land on a queue already full. While the path shows no congestion for
//! a round trip and the budget was what limited the sender (the bucket ran low), the rate grows
//! back by [`RECOVERY_GAIN_PER_RTT`] of its gap to the rate before the last cut per round trip,
//! and above that probes by [`INCREASE_FRACTION_PER_RTT`] of the ceiling per round trip. An idle sender does not grow
//! its rate: there is nothing to learn about room it does not use.

use crate::time::Time;

use super::config::BUDGET_BITS_PER_S_MIN;

/// The transport's bytes around every datagram on the wire, stated for the figures and charged
/// to the budget: IPv4 header 20 + UDP header 8 + QUIC short header (1 flags byte + quinn's
/// 8-byte connection id + a 2-byte packet number) 11 + DATAGRAM frame type and length 3 +
/// AEAD tag 16. An IPv6 path adds 20 more; ACK frames QUIC piggybacks are not counted.
pub const PACKET_OVERHEAD_BYTES: usize = 58;
/// Seconds of budget the bucket holds: a burst of up to a second's budget goes out in full (a
/// pile of bodies thrown about settles within about that), and the average still holds.
pub const BUDGET_BURST_S: f64 = 1.0;
/// Gain of the recent round-trip average (per ack sample): fast enough to see a queue build
/// within a few ticks of acks, slow enough that one late ack is not congestion.
pub const RTT_RECENT_GAIN: f64 = 0.25;
/// Gain of the round trip's mean deviation from its recent average (per ack sample): about a
/// second of acks at 60 Hz. It starts at half the first sample, as TCP's RTTVAR does.
pub const RTT_DEV_GAIN: f64 = 1.0 / 64.0;
/// Queueing delay up to this many mean deviations is jitter, not congestion.
pub const RTT_DEV_MULT: f64 = 4.0;
/// How long the smallest round trip is remembered, microseconds (10 s): a route change to a
/// longer path is learned within that, and a queue standing for less is not mistaken for it.
pub const MIN_RTT_WINDOW_US: u64 = 10_000_000;
/// Queueing delay below this is never congestion, microseconds: jitter of a few milliseconds
/// and the client's one-tick ack delay must not shrink the budget.
pub const QUEUE_DELAY_MIN_US: u64 = 20_000;
/// Queueing delay as a fraction of the smallest RTT above which the path is congested (if more
/// than [`QUEUE_DELAY_MIN_US`]): a quarter of 100 ms is 25 ms of queue, well before a router's
/// 100–250 ms of buffer fills.
pub const QUEUE_DELAY_FRACTION: f64 = 0.25;
/// Gain of the datagram loss average (per datagram decided): 1/64 averages over about a second
/// of datagrams at 60 Hz, so 5% random loss stays near 5% (σ ≈ 2%).
pub const LOSS_GAIN: f64 = 1.0 / 64.0;
/// Gain of the long-run loss average, the path's usual loss (per datagram decided): 1/2048 is
/// about 30 s of datagrams at 60 Hz, so a congestion episode barely moves it.
pub const LOSS_BASE_GAIN: f64 = 1.0 / 2048.0;
/// Datagrams decided before loss is judged at all: the long-run average starts from the first
/// ones' average instead of from zero (a lossy path is not congested from the start).
pub const LOSS_WARMUP_DATAGRAMS: u64 = 64;
/// Recent loss this far above the usual loss is congestion: 3.6 σ of the recent average's
/// noise even at 35% random loss (σ ≈ 4% at gain 1/64), reached within a few dozen datagrams
/// when a full queue drops a third of them.
pub const LOSS_CONGESTION_EXCESS: f64 = 0.15;
/// Later datagrams acknowledged before an unacknowledged one counts as lost (reordering slack).
pub const LOSS_REORDER_TOLERANCE: u64 = 3;
/// Share of the transport's congestion window per RTT the transform budget may take: the rest
/// is for the reliable streams (chat, world changes) and the controller's own probing.
pub const CWND_SHARE: f64 = 0.5;
/// Factor the rate is multiplied by on congestion (TCP Cubic's β): two cuts halve it.
pub const DECREASE_FACTOR: f64 = 0.7;
/// Share of the delivery rate measured by acks the rate is set to on congestion: 10% under
/// the bottleneck's capacity drains a standing queue within a few round trips while the
/// budget stays near what the path carries (a deeper cut wastes the link for seconds).
pub const DELIVERY_SHARE: f64 = 0.9;
/// Deepest a cut guided by a delivery figure goes, as a factor of the rate before it: one
/// queue episode never more than halves the rate, however low one round trip's acks read.
pub const DELIVERY_CUT_FLOOR: f64 = 0.5;
/// Shallowest a cut goes, as a factor of the rate before it: a cut always sheds at least 10%,
/// so a rate already under the measured delivery still drains the queue that signalled.
pub const DELIVERY_CUT_CEIL: f64 = 0.9;
/// Share of the gap to the last rate before a cut that growth recovers per round trip, while
/// the rate is under it (a Cubic-like fast return to the last good rate, slow probing above):
/// half the gap per round trip is back within a few round trips of a cut.
pub const RECOVERY_GAIN_PER_RTT: f64 = 0.5;
/// Growth per round trip without congestion while the budget limits the sender, above the
/// last rate before a cut (probing for new room), as a fraction of the ceiling: 1% of a
/// 256 kbit/s ceiling is 2.6 kbit/s per round trip, so an overshoot past a bottleneck is
/// small and one cut answers it.
pub const INCREASE_FRACTION_PER_RTT: f64 = 0.01;
/// Once a cut measured the path's capacity, the most a tick may draw from the bucket, as a
/// factor of that capacity (or of the rate, if higher): BBR's probing gain. A bucket saved
/// during rest then drains at 1.25× what the bottleneck carries instead of all at once into
/// its queue, so a burst after rest no longer overflows the queue and triggers a cut.
pub const PACING_GAIN: f64 = 1.25;
/// Round trip assumed before any ack, microseconds (a typical internet RTT).
const RTT_INITIAL_US: u64 = 200_000;

/// A token bucket of bytes: filled at a rate per tick, capped at [`BUDGET_BURST_S`] of it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ByteBucket {
    /// Bytes available now (negative after an own blob that had to go out over budget).
    tokens: i64,
}

impl ByteBucket {
    /// A full bucket for `bits_per_s` at `tick_hz`: a client that just joined gets its first
    /// view of the world at once.
    pub fn full(bits_per_s: u32, tick_hz: u16) -> ByteBucket {
        ByteBucket {
            tokens: capacity_bytes(bits_per_s, tick_hz) as i64,
        }
    }

    /// Adds `ticks` ticks' share at `bits_per_s` (capped at the bucket's size) and returns the
    /// bytes available for this tick.
    pub fn refill(&mut self, bits_per_s: u32, tick_hz: u16, ticks: u64) -> i64 {
        let per_tick = per_tick_bytes(bits_per_s, tick_hz) as i64;
        let cap = capacity_bytes(bits_per_s, tick_hz) as i64;
        let add = per_tick.saturating_mul(ticks.min(u32::MAX as u64) as i64);
        self.tokens = self.tokens.saturating_add(add).min(cap);
        self.tokens
    }

    /// Takes `bytes` sent; the bucket may go below zero by at most one tick's share (an own
    /// blob that had to go out), repaid by the next ticks.
    pub fn spend(&mut self, bytes: usize, bits_per_s: u32, tick_hz: u16) {
        let floor = -(per_tick_bytes(bits_per_s, tick_hz) as i64);
        self.tokens = (self.tokens - bytes as i64).max(floor);
    }

    /// Empties the bucket down to `bytes` (a congested path must not receive a saved burst).
    pub fn limit(&mut self, bytes: i64) {
        self.tokens = self.tokens.min(bytes);
    }

    /// Bytes available now.
    pub fn tokens(&self) -> i64 {
        self.tokens
    }
}

/// One tick's share of `bits_per_s`, bytes.
pub fn per_tick_bytes(bits_per_s: u32, tick_hz: u16) -> usize {
    (bits_per_s as usize / 8) / tick_hz.max(1) as usize
}

/// The bucket's size at `bits_per_s`: [`BUDGET_BURST_S`] of budget, at least two ticks' share.
pub fn capacity_bytes(bits_per_s: u32, tick_hz: u16) -> usize {
    let burst = (bits_per_s as f64 / 8.0 * BUDGET_BURST_S) as usize;
    burst.max(2 * per_tick_bytes(bits_per_s, tick_hz))
}

/// What the transport reports about the path, as a driver reads it from quinn's
/// `Connection::stats().path` (or the simulated network's link model gives it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathSignals {
    /// The transport's smoothed round trip, microseconds (0 if unknown).
    pub rtt_us: u64,
    /// The congestion window, bytes (0 if the transport has none, as over WebSocket).
    pub cwnd_bytes: u64,
    /// Congestion events so far on this path (a count that only grows).
    pub congestion_events: u64,
}

/// The rate of one client's budget, following the path. See the [module docs](self).
#[derive(Clone, Debug, PartialEq)]
pub struct PathBudget {
    ceiling_bps: u32,
    rate_bps: f64,
    /// The transport's cap (share of cwnd / RTT), bits per second, if it reported one.
    cwnd_cap_bps: Option<f64>,
    congestion_events: Option<u64>,
    rtt_recent_us: Option<f64>,
    rtt_dev_us: f64,
    min_rtt_us: Option<u64>,
    min_rtt_at: Time,
    loss: f64,
    /// The long-run loss average (the path's usual loss).
    loss_base: f64,
    /// Datagram fates told so far (up to the warm-up).
    fates: u64,
    /// When the rate last went down.
    last_decrease: Option<Time>,
    /// Datagrams sent before this still queued behind what the last cut answers: their delay
    /// and loss are not congestion again (the cut's time plus the queueing delay then).
    cut_epoch: Option<Time>,
    /// When the last round of growth was judged.
    last_probe: Time,
    /// Whether congestion was seen since `last_probe`.
    congested_since_probe: bool,
    /// Whether the budget limited the sender since `last_probe`.
    limited_since_probe: bool,
    /// Congestion found by an input, acted on at the next tick.
    pending_congestion: bool,
    /// Wire bytes acknowledged since `delivered_since`.
    delivered_bytes: u64,
    /// Whether the budget limited the sender since `delivered_since` (else the window's
    /// delivery rate says how little was sent, not what the path carries).
    limited_in_window: bool,
    delivered_since: Option<Time>,
    /// The last delivery rate measured over a round trip, bits per second.
    delivery_bps: Option<f64>,
    /// The rate just before the last cut, bits per second: growth returns to it fast.
    last_good_bps: Option<f64>,
    /// The delivery rate acks measured when the last cut came, bits per second: the path's
    /// capacity as far as it is known, which paces bursts.
    bottleneck_bps: Option<f64>,
    decreases: u64,
}

impl PathBudget {
    /// A budget starting at its ceiling, `ceiling_bps` bits per second.
    pub fn new(ceiling_bps: u32) -> PathBudget {
        let ceiling_bps = ceiling_bps.max(BUDGET_BITS_PER_S_MIN);
        PathBudget {
            ceiling_bps,
            rate_bps: ceiling_bps as f64,
            cwnd_cap_bps: None,
            congestion_events: None,
            rtt_recent_us: None,
            rtt_dev_us: 0.0,
            min_rtt_us: None,
            min_rtt_at: Time::ZERO,
            loss: 0.0,
            loss_base: 0.0,
            fates: 0,
            last_decrease: None,
            cut_epoch: None,
            last_probe: Time::ZERO,
            congested_since_probe: false,
            limited_since_probe: false,
            pending_congestion: false,
            delivered_bytes: 0,
            limited_in_window: false,
            delivered_since: None,
            delivery_bps: None,
            last_good_bps: None,
            bottleneck_bps: None,
            decreases: 0,
        }
    }

    /// The rate now, bits per second: within the floor and the ceiling, and under the
    /// transport's cap when it reported one.
    pub fn rate_bits_per_s(&self) -> u32 {
        let mut r = self.rate_bps;
        if let Some(cap) = self.cwnd_cap_bps {
            r = r.min(cap);
        }
        (r as u32).clamp(BUDGET_BITS_PER_S_MIN, self.ceiling_bps)
    }

    /// The most one tick may draw from the bucket, wire bytes, once a cut measured the path's
    /// capacity ([`PACING_GAIN`] × the larger of that capacity and the rate); `None` (no limit
    /// but the bucket) on a path that never showed congestion.
    pub fn pace_bytes_per_tick(&self, tick_hz: u16) -> Option<usize> {
        let cap = self.bottleneck_bps?;
        let bps = cap.max(self.rate_bits_per_s() as f64) * PACING_GAIN;
        Some((bps / 8.0 / tick_hz.max(1) as f64) as usize)
    }

    /// The ceiling, bits per second.
    pub fn ceiling_bits_per_s(&self) -> u32 {
        self.ceiling_bps
    }

    /// Changes the ceiling (the rate is brought under it at once).
    pub fn set_ceiling(&mut self, bits_per_s: u32) {
        self.ceiling_bps = bits_per_s.max(BUDGET_BITS_PER_S_MIN);
        self.rate_bps = self.rate_bps.min(self.ceiling_bps as f64);
    }

    /// Times the rate went down on congestion.
    pub fn decreases(&self) -> u64 {
        self.decreases
    }

    /// The averaged datagram loss seen in acks, 0..1.
    pub fn loss(&self) -> f64 {
        self.loss
    }

    /// Queueing delay now (recent RTT above the smallest), microseconds, once acks came in.
    pub fn queue_delay_us(&self) -> Option<u64> {
        let recent = self.rtt_recent_us?;
        let min = self.min_rtt_us?;
        Some((recent as u64).saturating_sub(min))
    }

    /// One round-trip sample from an ack: the datagram sent at `sent_at`, acknowledged at
    /// `now`. A datagram sent before the last cut tells of the queue the cut already answers:
    /// it moves the averages but is not congestion again.
    pub fn on_rtt_sample(&mut self, sent_at: Time, now: Time) {
        let rtt_us = now.saturating_since(sent_at).as_micros() as u64;
        let stale = now.saturating_since(self.min_rtt_at).as_micros() as u64 > MIN_RTT_WINDOW_US;
        if self.min_rtt_us.is_none_or(|m| rtt_us <= m) || stale {
            self.min_rtt_us = Some(rtt_us);
            self.min_rtt_at = now;
        }
        let x = rtt_us as f64;
        let r = match self.rtt_recent_us {
            None => {
                self.rtt_dev_us = x / 2.0;
                x
            }
            Some(r) => {
                self.rtt_dev_us += RTT_DEV_GAIN * ((x - r).abs() - self.rtt_dev_us);
                r + RTT_RECENT_GAIN * (x - r)
            }
        };
        self.rtt_recent_us = Some(r);
        if self.queue_delayed() && self.after_last_cut(sent_at) {
            self.pending_congestion = true;
        }
    }

    /// Whether a datagram sent at `sent_at` left after the last cut and the queue then.
    fn after_last_cut(&self, sent_at: Time) -> bool {
        self.cut_epoch.is_none_or(|t| sent_at >= t)
    }

    /// One datagram's fate as the acks tell it: delivered, or lost. Sent at `sent_at`: a loss
    /// from before the last cut is not congestion again.
    pub fn on_datagram_fate(&mut self, lost: bool, sent_at: Time) {
        let x = if lost { 1.0 } else { 0.0 };
        self.fates += 1;
        if self.fates <= LOSS_WARMUP_DATAGRAMS {
            // The plain mean of the first datagrams, for both averages.
            self.loss += (x - self.loss) / self.fates as f64;
            self.loss_base = self.loss;
            return;
        }
        self.loss += LOSS_GAIN * (x - self.loss);
        self.loss_base += LOSS_BASE_GAIN * (x - self.loss_base);
        if self.loss > self.loss_base + LOSS_CONGESTION_EXCESS && self.after_last_cut(sent_at) {
            self.pending_congestion = true;
        }
    }

    /// Wire bytes of a datagram newly acknowledged at `now`: every round trip they give a
    /// delivery rate.
    pub fn on_delivered(&mut self, wire_bytes: u64, now: Time) {
        let since = *self.delivered_since.get_or_insert(now);
        self.delivered_bytes += wire_bytes;
        let window = now.saturating_since(since).as_micros() as u64;
        let rtt = self
            .rtt_recent_us
            .map_or(RTT_INITIAL_US, |r| r as u64)
            .max(1);
        if window >= rtt {
            let sample = self.delivered_bytes as f64 * 8.0 * 1e6 / window as f64;
            // An app-limited window only raises the figure: it shows the path carried at
            // least that much.
            if self.limited_in_window || self.delivery_bps.is_none_or(|d| sample > d) {
                self.delivery_bps = Some(sample);
            }
            self.delivered_bytes = 0;
            self.delivered_since = Some(now);
            self.limited_in_window = false;
        }
    }

    /// The transport's view of the path (quinn's path stats, or the simulated link's).
    pub fn on_path_signals(&mut self, s: PathSignals) {
        if s.rtt_us > 0 && s.cwnd_bytes > 0 {
            let rate = s.cwnd_bytes as f64 * 8.0 * 1e6 / s.rtt_us as f64 * CWND_SHARE;
            self.cwnd_cap_bps = Some(rate);
        }
        if self
            .congestion_events
            .is_some_and(|before| s.congestion_events > before)
        {
            self.pending_congestion = true;
        }
        self.congestion_events = Some(s.congestion_events);
    }

    /// Once per tick, before the budget is drawn: acts on the congestion seen since the last
    /// tick, or grows the rate after a clean round trip in which the budget limited the sender.
    /// Returns whether the rate went down this tick (the caller then empties its bucket).
    pub fn on_tick(&mut self, now: Time, budget_limited: bool) -> bool {
        let min_rtt = self.min_rtt_us.unwrap_or(RTT_INITIAL_US).max(1);
        let rtt = self.rtt_recent_us.map_or(min_rtt, |r| r as u64).max(1);
        self.limited_since_probe |= budget_limited;
        self.limited_in_window |= budget_limited;
        if std::mem::take(&mut self.pending_congestion) {
            self.congested_since_probe = true;
            // A cut shows in the acks one (queue-inflated) round trip later: cutting again
            // sooner would count one episode twice.
            let due = self
                .last_decrease
                .is_none_or(|t| now.saturating_since(t).as_micros() as u64 >= rtt);
            if due {
                let now_rate = self.rate_bits_per_s() as f64;
                let target = self.delivery_bps.map_or(now_rate * DECREASE_FACTOR, |d| {
                    (d * DELIVERY_SHARE)
                        .clamp(now_rate * DELIVERY_CUT_FLOOR, now_rate * DELIVERY_CUT_CEIL)
                });
                self.last_good_bps = Some(now_rate);
                if let Some(d) = self.delivery_bps {
                    self.bottleneck_bps = Some(d);
                }
                self.rate_bps = target.max(BUDGET_BITS_PER_S_MIN as f64);
                self.last_decrease = Some(now);
                let queued = std::time::Duration::from_micros(self.queue_delay_us().unwrap_or(0));
                self.cut_epoch = Some(now + queued);
                self.decreases += 1;
                return true;
            }
            return false;
        }
        if now.saturating_since(self.last_probe).as_micros() as u64 >= rtt {
            if !self.congested_since_probe && self.limited_since_probe {
                let probe = self.ceiling_bps as f64 * INCREASE_FRACTION_PER_RTT;
                let gap = self.last_good_bps.map_or(0.0, |g| g - self.rate_bps);
                let step = probe.max(gap * RECOVERY_GAIN_PER_RTT);
                self.rate_bps = (self.rate_bps + step).min(self.ceiling_bps as f64);
            }
            self.last_probe = now;
            self.congested_since_probe = false;
            self.limited_since_probe = false;
        }
        false
    }

    fn queue_delayed(&self) -> bool {
        let (Some(recent), Some(min)) = (self.rtt_recent_us, self.min_rtt_us) else {
            return false;
        };
        let threshold = QUEUE_DELAY_MIN_US
            .max((min as f64 * QUEUE_DELAY_FRACTION) as u64)
            .max((self.rtt_dev_us * RTT_DEV_MULT) as u64);
        recent as u64 > min + threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_a_second_and_goes_below_zero_by_at_most_one_tick() {
        let mut b = ByteBucket::full(256_000, 60);
        assert_eq!(b.tokens(), 32_000);
        assert_eq!(b.refill(256_000, 60, 10), 32_000);
        b.spend(40_000, 256_000, 60);
        assert_eq!(b.tokens(), -533);
        assert_eq!(b.refill(256_000, 60, 2), 533);
    }

    #[test]
    fn steady_random_loss_never_shrinks_the_rate_and_a_jump_in_loss_does() {
        let mut rng = crate::rng::Rng::new(3);
        let mut p = PathBudget::new(256_000);
        for tick in 0..6_000u64 {
            let now = Time(1_000_000 + tick * 16_667);
            p.on_rtt_sample(Time(now.0.saturating_sub(100_000)), now);
            p.on_datagram_fate(rng.chance(0.05), now);
            p.on_tick(now, true);
        }
        for loss in [0.05, 0.35] {
            let mut p = PathBudget::new(256_000);
            for tick in 0..6_000u64 {
                let now = Time(1_000_000 + tick * 16_667);
                p.on_rtt_sample(Time(now.0.saturating_sub(100_000 + rng.below(5_000))), now);
                p.on_datagram_fate(rng.chance(loss), now);
                p.on_tick(now, true);
            }
            assert_eq!(p.decreases(), 0, "loss {loss}");
            assert_eq!(p.rate_bits_per_s(), 256_000);
        }
        // Loss jumping from 5% to 40% (a queue overflowing) is congestion.
        for tick in 6_000..6_100u64 {
            let now = Time(1_000_000 + tick * 16_667);
            p.on_rtt_sample(Time(now.0.saturating_sub(100_000)), now);
            p.on_datagram_fate(rng.chance(if tick < 6_030 { 0.05 } else { 0.4 }), now);
            p.on_tick(now, true);
        }
        assert!(p.decreases() > 0);
    }

    #[test]
    fn a_queue_building_shrinks_the_rate_and_a_clear_path_grows_it_back_to_the_ceiling() {
        let mut p = PathBudget::new(256_000);
        let mut now = Time(1_000_000);
        for _ in 0..300 {
            now += std::time::Duration::from_millis(16);
            p.on_rtt_sample(Time(now.0.saturating_sub(100_000)), now);
            p.on_tick(now, true);
        }
        assert_eq!(p.rate_bits_per_s(), 256_000);
        for _ in 0..30 {
            now += std::time::Duration::from_millis(16);
            p.on_rtt_sample(Time(now.0.saturating_sub(160_000)), now);
            p.on_tick(now, true);
        }
        assert!(
            p.rate_bits_per_s() < 256_000 * 7 / 10,
            "{}",
            p.rate_bits_per_s()
        );
        for _ in 0..600 {
            now += std::time::Duration::from_millis(16);
            p.on_rtt_sample(Time(now.0.saturating_sub(100_000)), now);
            p.on_tick(now, true);
        }
        assert_eq!(p.rate_bits_per_s(), 256_000);
    }

    #[test]
    fn the_transport_cap_and_the_ceiling_bound_the_rate() {
        let mut p = PathBudget::new(256_000);
        p.on_path_signals(PathSignals {
            rtt_us: 100_000,
            cwnd_bytes: 2_000,
            congestion_events: 0,
        });
        // 2,000 bytes per 100 ms is 160 kbit/s; half of it for transforms.
        assert_eq!(p.rate_bits_per_s(), 80_000);
        p.on_path_signals(PathSignals {
            rtt_us: 100_000,
            cwnd_bytes: 1_000_000,
            congestion_events: 1,
        });
        assert_eq!(p.rate_bits_per_s(), 256_000);
        assert!(
            p.on_tick(Time(1), true),
            "a new congestion event cuts the rate"
        );
        assert!(p.rate_bits_per_s() < 256_000);
    }
}
