//! Virtual time. The core never reads a clock: every input carries a [`Time`], a count of
//! microseconds since an epoch the driver chooses (the relay uses its start instant; the simulated
//! network starts at zero). A plain integer keeps the simulation bit-for-bit deterministic.

use core::ops::{Add, AddAssign, Sub};
use core::time::Duration;

/// A point in time: microseconds since the driver's epoch. Never wraps in practice (u64 µs is
/// 584,000 years).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    /// The epoch.
    pub const ZERO: Time = Time(0);

    /// Microseconds since the epoch.
    pub fn as_micros(self) -> u64 {
        self.0
    }

    /// Milliseconds since the epoch, as a float (for reports).
    pub fn as_millis_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    /// Builds a time from milliseconds since the epoch.
    pub fn from_millis(ms: u64) -> Time {
        Time(ms.saturating_mul(1000))
    }

    /// The duration from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(d.as_micros().min(u64::MAX as u128) as u64),
        )
    }
}

impl AddAssign<Duration> for Time {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_sub(d.as_micros().min(u64::MAX as u128) as u64),
        )
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, other: Time) -> Duration {
        self.saturating_since(other)
    }
}

/// A server tick number. Starts at 0 and never wraps (u64 at 120 Hz lasts 4.8 billion years), so
/// it is a different type from the wrapping sequence numbers packets carry.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Tick(pub u64);

impl Tick {
    /// The tick after this one.
    pub fn next(self) -> Tick {
        Tick(self.0 + 1)
    }
}

/// Slowest allowed tick rate, Hz.
pub const TICK_HZ_MIN: u16 = 10;
/// Fastest allowed tick rate, Hz.
pub const TICK_HZ_MAX: u16 = 120;
/// Default tick rate, Hz (the reference engine's).
pub const TICK_HZ_DEFAULT: u16 = 30;
/// Most ticks run back to back to catch up when the driver was late; beyond that the clock
/// skips ahead (a stalled process must not spin through seconds of ticks and stall again).
pub const TICK_CATCH_UP_MAX: u32 = 4;

/// A fixed-rate tick clock with bounded catch-up. Pure: it is told the time.
#[derive(Clone, Debug)]
pub struct TickClock {
    period: Duration,
    next_at: Time,
    tick: Tick,
}

impl TickClock {
    /// A clock at `hz` (clamped to [`TICK_HZ_MIN`]..=[`TICK_HZ_MAX`]) whose first tick is due at
    /// `start`.
    pub fn new(hz: u16, start: Time) -> TickClock {
        let hz = hz.clamp(TICK_HZ_MIN, TICK_HZ_MAX);
        TickClock {
            period: Duration::from_micros(1_000_000 / hz as u64),
            next_at: start,
            tick: Tick(0),
        }
    }

    /// The tick period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The number of the next tick to run.
    pub fn tick(&self) -> Tick {
        self.tick
    }

    /// When the next tick is due.
    pub fn next_at(&self) -> Time {
        self.next_at
    }

    /// If a tick is due at `now`, advances and returns its number. Call in a loop; after
    /// [`TICK_CATCH_UP_MAX`] overdue ticks the clock drops the backlog and resynchronizes.
    pub fn poll_tick(&mut self, now: Time) -> Option<Tick> {
        if now < self.next_at {
            return None;
        }
        let behind = (now - self.next_at).as_micros() / self.period.as_micros().max(1);
        if behind >= TICK_CATCH_UP_MAX as u128 {
            // Skip the backlog: keep tick numbers dense but move the schedule to now.
            self.next_at = now;
        }
        let t = self.tick;
        self.tick = t.next();
        self.next_at += self.period;
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_clock_runs_at_rate_and_bounds_catch_up() {
        let mut c = TickClock::new(30, Time::ZERO);
        let mut n = 0;
        let mut now = Time::ZERO;
        for _ in 0..1000 {
            while c.poll_tick(now).is_some() {
                n += 1;
            }
            now += Duration::from_millis(1);
        }
        assert_eq!(n, 30); // 0..1s at 30 Hz: ticks at 0, 33.3, ..., 966.6 ms
                           // A 10 s stall runs at most TICK_CATCH_UP_MAX + 1 ticks at once.
        now += Duration::from_secs(10);
        let mut burst = 0;
        while c.poll_tick(now).is_some() {
            burst += 1;
        }
        assert!(burst <= TICK_CATCH_UP_MAX + 1, "burst {burst}");
    }
}
