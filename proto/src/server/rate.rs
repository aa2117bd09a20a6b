//! Rate limits: how many reliable messages a session may send. A token bucket per session
//! (`messages_per_s` sustained, `message_burst` at once), and a flood detector that closes a
//! session refused more than a whole burst within [`FLOOD_WINDOW`].

use std::time::Duration;

use crate::time::Time;

/// The window over which refused messages are counted: a session refused more than a whole
/// burst's worth of messages within it is flooding, however many tokens trickle in meanwhile.
pub const FLOOD_WINDOW: Duration = Duration::from_secs(1);

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
        let (rate, burst) = (f64::from(per_s), f64::from(burst));
        let dt = now.saturating_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Limit::Pass;
        }
        if now.saturating_since(self.window_start) >= FLOOD_WINDOW {
            self.window_start = now;
            self.refused_in_window = 0;
        }
        self.refused_in_window += 1;
        if f64::from(self.refused_in_window) > burst {
            Limit::Close
        } else {
            Limit::Refuse
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
