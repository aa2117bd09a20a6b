//! Rate limits: how many reliable messages a session may send. A token bucket per session
//! (`messages_per_s` sustained, `message_burst` at once), and a flood detector that closes a
//! session refused more than a whole burst within [`FLOOD_WINDOW`].

use std::time::Duration;

use crate::time::Time;

pub use super::limits::RateSpec;

/// The window over which refused messages are counted: a session refused more than a whole
/// burst's worth of messages within it is flooding, however many tokens trickle in meanwhile.
pub const FLOOD_WINDOW: Duration = Duration::from_secs(1);

/// Refusals within [`FLOOD_WINDOW`] after which a session is flooding, whatever the burst (a
/// byte bucket's burst is millions): 1,000, far past any honest client's retries.
pub const FLOOD_REFUSALS_MAX: u32 = 1_000;

/// What the rate limit says about one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// Within the limit.
    Pass,
    /// Over the burst: refuse it.
    Refuse,
    /// More than a whole burst refused within [`FLOOD_WINDOW`]: the peer is flooding.
    Close,
}

/// One session's message budget.
#[derive(Clone, Debug)]
pub(crate) struct MessageRate {
    /// Tokens left.
    tokens: f64,
    /// When the bucket was last refilled.
    refilled_at: Time,
    /// Messages refused in the current [`FLOOD_WINDOW`].
    refused_in_window: u32,
    /// When the current window started.
    window_start: Time,
}

impl MessageRate {
    /// A full bucket of `burst` tokens at `now`.
    pub(crate) fn new(burst: u32, now: Time) -> MessageRate {
        MessageRate {
            tokens: f64::from(burst),
            refilled_at: now,
            refused_in_window: 0,
            window_start: now,
        }
    }

    /// Takes one token at `now` (refilling at `per_s`, up to `burst`) and says what to do with
    /// the message.
    pub(crate) fn take(&mut self, per_s: u32, burst: u32, now: Time) -> Limit {
        self.take_cost(1.0, RateSpec::new(f64::from(per_s), burst), now)
    }

    /// Takes `cost` tokens at `now` (refilling at `spec.per_s`, up to `spec.burst`) and says
    /// what to do with the input. A cost larger than the whole burst passes when the bucket is
    /// full (and empties it), so a single input no limit can ever admit does not exist.
    pub(crate) fn take_cost(&mut self, cost: f64, spec: RateSpec, now: Time) -> Limit {
        let (rate, burst) = (spec.per_s.max(0.0), f64::from(spec.burst));
        let dt = now.saturating_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.refilled_at = now;
        let cost = cost.min(burst).max(0.0);
        if self.tokens >= cost {
            self.tokens -= cost;
            return Limit::Pass;
        }
        if now.saturating_since(self.window_start) >= FLOOD_WINDOW {
            self.window_start = now;
            self.refused_in_window = 0;
        }
        self.refused_in_window += 1;
        if f64::from(self.refused_in_window) > burst.min(f64::from(FLOOD_REFUSALS_MAX)) {
            Limit::Close
        } else {
            Limit::Refuse
        }
    }
}

impl MessageRate {
    /// Whether the bucket would be full at `now` (nothing spent for a while): forgettable.
    pub(crate) fn is_full(&self, spec: RateSpec, now: Time) -> bool {
        let dt = now.saturating_since(self.refilled_at).as_secs_f64();
        self.tokens + dt * spec.per_s.max(0.0) >= f64::from(spec.burst)
    }
}

/// One session's budgets by kind (see [`super::limits::LimitsConfig`]).
#[derive(Clone, Debug)]
pub(crate) struct SessionRates {
    /// Chat messages.
    pub(crate) chat: MessageRate,
    /// Commands.
    pub(crate) commands: MessageRate,
    /// Reliable changes (everything else but pings and goodbye).
    pub(crate) changes: MessageRate,
    /// Datagrams.
    pub(crate) datagrams: MessageRate,
    /// Bytes of frames and datagrams.
    pub(crate) bytes: MessageRate,
}

impl SessionRates {
    /// Full buckets at `now`.
    pub(crate) fn new(l: &super::limits::LimitsConfig, now: Time) -> SessionRates {
        SessionRates {
            chat: MessageRate::new(l.chat.burst, now),
            commands: MessageRate::new(l.commands.burst, now),
            changes: MessageRate::new(l.changes.burst, now),
            datagrams: MessageRate::new(l.datagrams.burst, now),
            bytes: MessageRate::new(l.bytes.burst, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_refusals_then_a_close_past_a_whole_burst_of_refusals() {
        let t0 = Time::ZERO;
        let mut r = MessageRate::new(3, t0);
        for _ in 0..3 {
            assert_eq!(r.take(1, 3, t0), Limit::Pass);
        }
        for _ in 0..3 {
            assert_eq!(r.take(1, 3, t0), Limit::Refuse);
        }
        assert_eq!(r.take(1, 3, t0), Limit::Close);
    }

    #[test]
    fn tokens_come_back_at_the_sustained_rate() {
        let t0 = Time::ZERO;
        let mut r = MessageRate::new(1, t0);
        assert_eq!(r.take(10, 1, t0), Limit::Pass);
        assert_eq!(r.take(10, 1, t0), Limit::Refuse);
        assert_eq!(
            r.take(10, 1, t0 + Duration::from_millis(100)),
            Limit::Pass,
            "one token after a tenth of a second at 10/s"
        );
    }
}
