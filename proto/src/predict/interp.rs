//! Interpolation of remote entities: show them a little in the past, between two received
//! samples, so they move smoothly whatever the network does.
//!
//! The timeline is the server's tick, fractional. [`Interpolation`] measures, from the datagrams
//! that carry transforms, the send interval and the arrival jitter (RFC 3550's estimator on
//! transit times), and renders at `newest expected tick − delay` with
//! `delay = 3 × interval + 3 × jitter` (the jitter estimator reads about a third of the spread of
//! uniform jitter, so 3× covers it), clamped to
//! [[`RENDER_DELAY_MIN_MS`], [`RENDER_DELAY_MAX_MS`]]. Three intervals ride out two consecutive
//! lost datagrams; the delay in use moves smoothly towards the target and the render time never
//! goes backwards.
//!
//! When the render time passes the newest sample (data is late), the entity is extrapolated from
//! its last velocity for at most [`EXTRAPOLATION_MAX_MS`] and then held; each such entity-frame
//! counts as an underrun. A sample flagged as a teleport, or implying a speed above
//! [`TELEPORT_SPEED_MPS`], is snapped to rather than interpolated towards.

use std::collections::VecDeque;

use crate::idhash::IdMap;
use crate::time::{Tick, Time};
use crate::types::{EntityId, Transform};

/// Samples kept per entity. At 60 Hz, 32 samples are half a second: more than the largest useful
/// delay needs, and a bound on memory per entity.
pub const INTERP_SAMPLES_MAX: usize = 32;
/// Smallest render delay, milliseconds (no delay is possible only on a perfect link; below one
/// 120 Hz interval interpolation has nothing to bracket).
pub const RENDER_DELAY_MIN_MS: f64 = 8.0;
/// Largest render delay, milliseconds: beyond a third of a second, remote players lag too far
/// behind for interaction to feel live, so underruns are the lesser evil.
pub const RENDER_DELAY_MAX_MS: f64 = 350.0;
/// Longest extrapolation past the newest sample, milliseconds: dead reckoning is plausible for a
/// few frames, then the guess is worse than holding still.
pub const EXTRAPOLATION_MAX_MS: f64 = 100.0;
/// A move between two consecutive samples faster than this is a teleport, m/s (far above any
/// movement model's speed, far below a cross-map jump).
pub const TELEPORT_SPEED_MPS: f32 = 60.0;
/// Entities an [`Interpolation`] tracks: the world's entity limit.
pub const INTERP_ENTITIES_MAX: usize = crate::wire::limits::ENTITIES_MAX;
/// Smoothing weight of the interval and jitter estimators (RFC 3550 uses 1/16).
const EWMA_GAIN: f64 = 1.0 / 16.0;
/// Slew rate of the delay in use towards its target, per second of render time: at most 10% time
/// stretch, invisible.
const DELAY_SLEW_PER_S: f64 = 0.10;

#[derive(Clone, Copy, Debug)]
struct Sample {
    tick: u64,
    transform: Transform,
    teleport: bool,
}

/// One entity's sample buffer. Bounded by [`INTERP_SAMPLES_MAX`] (about 1.8 KiB), allocated at
/// that size with the first sample and never reallocated.
#[derive(Clone, Debug, Default)]
pub struct Interpolator {
    samples: VecDeque<Sample>,
    underruns: u64,
}

/// The result of sampling an entity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampled {
    /// What to render.
    pub transform: Transform,
    /// The render time was past the newest sample (extrapolated or held).
    pub underrun: bool,
}

impl Interpolator {
    /// Adds a sample for server tick `tick`. Out-of-order samples are put in place; duplicates
    /// and samples older than everything held once full are dropped.
    pub fn push(&mut self, tick: Tick, transform: Transform, teleport: bool, period_s: f32) {
        let tick = tick.0;
        // In-order arrival (the usual case) goes at the back without a search.
        let pos = match self.samples.back() {
            Some(b) if b.tick < tick => self.samples.len(),
            _ => self.samples.partition_point(|s| s.tick < tick),
        };
        if self.samples.get(pos).is_some_and(|s| s.tick == tick) {
            return;
        }
        if pos == 0 && self.samples.len() >= INTERP_SAMPLES_MAX {
            return;
        }
        let mut teleport = teleport;
        if let Some(prev) = pos.checked_sub(1).and_then(|i| self.samples.get(i)) {
            let dt = (tick - prev.tick) as f32 * period_s;
            let d = prev.transform.position.distance(transform.position);
            if d > TELEPORT_SPEED_MPS * dt {
                teleport = true;
            }
        }
        let sample = Sample {
            tick,
            transform,
            teleport,
        };
        if self.samples.capacity() == 0 {
            // The buffer's whole bound at once: it never grows or reallocates after this.
            self.samples.reserve_exact(INTERP_SAMPLES_MAX);
        }
        // When full, the oldest goes first (it is before `pos`, since `pos` > 0), so the buffer
        // never holds more than its bound, even for a moment.
        let mut pos = pos;
        while self.samples.len() >= INTERP_SAMPLES_MAX {
            self.samples.pop_front();
            pos -= 1;
        }
        if pos == self.samples.len() {
            self.samples.push_back(sample);
        } else {
            self.samples.insert(pos, sample);
        }
    }

    /// Render-frame underruns so far.
    pub fn underruns(&self) -> u64 {
        self.underruns
    }

    /// The newest sample's tick.
    pub fn newest_tick(&self) -> Option<Tick> {
        self.samples.back().map(|s| Tick(s.tick))
    }

    /// The transform at fractional server tick `at`, without touching counters or the buffer.
    pub fn peek(&self, at: f64, period_s: f32) -> Option<Sampled> {
        let first = self.samples.front()?;
        if at <= first.tick as f64 {
            return Some(Sampled {
                transform: first.transform,
                underrun: false,
            });
        }
        let i = self.samples.partition_point(|s| (s.tick as f64) <= at);
        if let Some(b) = self.samples.get(i) {
            let a = &self.samples[i - 1];
            if b.teleport {
                return Some(Sampled {
                    transform: a.transform,
                    underrun: false,
                });
            }
            let t = ((at - a.tick as f64) / (b.tick - a.tick) as f64) as f32;
            return Some(Sampled {
                transform: Transform {
                    position: a.transform.position.lerp(b.transform.position, t),
                    rotation: a.transform.rotation.slerp(b.transform.rotation, t),
                    scale: b.transform.scale,
                },
                underrun: false,
            });
        }
        // Past the newest sample: bounded extrapolation from the last velocity.
        let last = self.samples.back()?;
        let mut tr = last.transform;
        if let (false, Some(prev)) = (
            last.teleport,
            self.samples.len().checked_sub(2).map(|i| &self.samples[i]),
        ) {
            let span = (last.tick - prev.tick) as f64;
            let ahead_ticks =
                (at - last.tick as f64).min(EXTRAPOLATION_MAX_MS / 1000.0 / period_s as f64);
            let k = (ahead_ticks / span) as f32;
            tr.position += (last.transform.position - prev.transform.position) * k;
        }
        Some(Sampled {
            transform: tr,
            underrun: true,
        })
    }

    /// The transform at fractional server tick `at`, counting an underrun if it is past the
    /// newest sample, and dropping samples no longer needed (older than the one before `at`).
    pub fn sample(&mut self, at: f64, period_s: f32) -> Option<Sampled> {
        let r = self.peek(at, period_s)?;
        if r.underrun {
            self.underruns += 1;
        }
        let i = self.samples.partition_point(|s| (s.tick as f64) <= at);
        for _ in 1..i {
            self.samples.pop_front();
        }
        Some(r)
    }
}

/// Counters of an [`Interpolation`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct InterpolationStats {
    /// Entity-frames rendered.
    pub frames: u64,
    /// Entity-frames past the newest sample.
    pub underruns: u64,
    /// Datagrams measured.
    pub packets: u64,
}

/// All remote entities' interpolation, with the shared adaptive render delay.
#[derive(Clone, Debug)]
pub struct Interpolation {
    period_us: f64,
    entities: IdMap<Interpolator>,
    newest_tick: Option<u64>,
    /// Smoothed arrival time minus the sample's tick time, microseconds.
    transit_us: Option<f64>,
    last_transit_us: Option<f64>,
    interval_us: f64,
    jitter_us: f64,
    delay_us: f64,
    last_frame: Option<(Time, f64)>,
    stats: InterpolationStats,
}

impl Interpolation {
    /// Interpolation for a server ticking at `tick_hz` whose transform datagrams are expected
    /// every `send_interval_ticks` ticks (the first estimate; measured afterwards).
    pub fn new(tick_hz: u16, send_interval_ticks: u32) -> Self {
        let period_us = 1_000_000.0 / tick_hz.max(1) as f64;
        let interval_us = period_us * send_interval_ticks.max(1) as f64;
        Interpolation {
            period_us,
            entities: IdMap::default(),
            newest_tick: None,
            transit_us: None,
            last_transit_us: None,
            interval_us,
            jitter_us: 0.0,
            delay_us: Self::clamp_delay(3.0 * interval_us),
            last_frame: None,
            stats: InterpolationStats::default(),
        }
    }

    fn clamp_delay(us: f64) -> f64 {
        us.clamp(RENDER_DELAY_MIN_MS * 1000.0, RENDER_DELAY_MAX_MS * 1000.0)
    }

    /// Measures one datagram carrying transforms for server tick `tick`, received at `now`.
    /// Call once per datagram, before pushing its entities.
    pub fn on_packet(&mut self, now: Time, tick: Tick) {
        self.stats.packets += 1;
        let transit = now.as_micros() as f64 - tick.0 as f64 * self.period_us;
        if let Some(last) = self.last_transit_us {
            let d = (transit - last).abs();
            self.jitter_us += (d - self.jitter_us) * EWMA_GAIN;
        }
        self.last_transit_us = Some(transit);
        self.transit_us = Some(match self.transit_us {
            None => transit,
            Some(t) => t + (transit - t) * EWMA_GAIN,
        });
        match self.newest_tick {
            Some(n) if tick.0 <= n => {}
            Some(n) => {
                let gap = (tick.0 - n) as f64 * self.period_us;
                self.interval_us += (gap - self.interval_us) * EWMA_GAIN;
                self.newest_tick = Some(tick.0);
            }
            None => self.newest_tick = Some(tick.0),
        }
    }

    /// Adds one entity's transform from a datagram for server tick `tick`. `teleport` is the
    /// sender's flag (a large jump is detected anyway). Beyond [`INTERP_ENTITIES_MAX`] entities,
    /// new ones are ignored.
    pub fn push(&mut self, id: EntityId, tick: Tick, transform: Transform, teleport: bool) {
        let period_s = (self.period_us / 1e6) as f32;
        if let Some(e) = self.entities.get_mut(&id) {
            e.push(tick, transform, teleport, period_s);
            return;
        }
        if self.entities.len() >= INTERP_ENTITIES_MAX {
            return;
        }
        self.entities
            .entry(id)
            .or_default()
            .push(tick, transform, teleport, period_s);
    }

    /// Forgets an entity (it left the world or the client's interest).
    pub fn remove(&mut self, id: EntityId) {
        self.entities.remove(&id);
    }

    /// Forgets every entity (their buffers' memory is freed).
    pub fn clear(&mut self) {
        self.entities = IdMap::default();
    }

    /// The render delay the measurements call for, milliseconds.
    pub fn target_delay_ms(&self) -> f64 {
        Self::clamp_delay(3.0 * self.interval_us + 3.0 * self.jitter_us) / 1000.0
    }

    /// The render delay in use, milliseconds.
    pub fn delay_ms(&self) -> f64 {
        self.delay_us / 1000.0
    }

    /// Measured interval between datagrams, milliseconds.
    pub fn interval_ms(&self) -> f64 {
        self.interval_us / 1000.0
    }

    /// Measured arrival jitter (RFC 3550 estimator), milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter_us / 1000.0
    }

    /// Counters.
    pub fn stats(&self) -> InterpolationStats {
        self.stats
    }

    /// Starts a render frame at `now`: updates the delay in use and returns the fractional server
    /// tick to render every entity at (monotonic). `None` before the first datagram.
    pub fn begin_frame(&mut self, now: Time) -> Option<f64> {
        let transit = self.transit_us?;
        let target = Self::clamp_delay(3.0 * self.interval_us + 3.0 * self.jitter_us);
        let elapsed_us = self
            .last_frame
            .map_or(0.0, |(t, _)| now.saturating_since(t).as_micros() as f64);
        let max_step = elapsed_us * DELAY_SLEW_PER_S;
        if self.last_frame.is_none() {
            self.delay_us = target;
        } else {
            self.delay_us += (target - self.delay_us).clamp(-max_step, max_step);
        }
        let mut at = (now.as_micros() as f64 - transit - self.delay_us) / self.period_us;
        if let Some((_, prev)) = self.last_frame {
            at = at.max(prev);
        }
        self.last_frame = Some((now, at));
        Some(at)
    }

    /// An entity's transform at fractional server tick `at` (from [`Interpolation::begin_frame`]),
    /// counting frames and underruns.
    pub fn sample(&mut self, id: EntityId, at: f64) -> Option<Sampled> {
        let period_s = (self.period_us / 1e6) as f32;
        let r = self.entities.get_mut(&id)?.sample(at, period_s)?;
        self.stats.frames += 1;
        if r.underrun {
            self.stats.underruns += 1;
        }
        Some(r)
    }

    /// An entity's interpolated transform at `at` without counting (for queries between frames).
    pub fn transform_at(&self, id: EntityId, at: f64) -> Option<Transform> {
        let period_s = (self.period_us / 1e6) as f32;
        Some(self.entities.get(&id)?.peek(at, period_s)?.transform)
    }

    /// Entities tracked.
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// No entities tracked.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::types::{Quat, Vec3};
    use core::time::Duration;

    fn at_x(x: f32) -> Transform {
        Transform {
            position: Vec3::new(x, 0.0, 0.0),
            ..Default::default()
        }
    }

    /// Feeds samples of an entity moving at 3 m/s, sent every `every` ticks at 60 Hz with
    /// uniform jitter, renders at 120 fps, and returns the interpolation.
    fn run(every: u64, jitter_ms: u64, seed: u64) -> Interpolation {
        let hz = 60;
        let mut ip = Interpolation::new(hz, 1);
        let mut r = Rng::new(seed);
        let mut pending: Vec<(Time, u64)> = vec![];
        let id = EntityId(1);
        let mut last_tick = None;
        for ms in 0..6_000u64 {
            let now = Time::from_millis(ms);
            let tick = ms * 60 / 1000;
            if last_tick != Some(tick) && tick % every == 0 {
                last_tick = Some(tick);
                pending.push((
                    now + Duration::from_millis(40 + r.below(jitter_ms + 1)),
                    tick,
                ));
            }
            pending.sort();
            while pending.first().is_some_and(|p| p.0 <= now) {
                let (_, t) = pending.remove(0);
                ip.on_packet(now, Tick(t));
                ip.push(id, Tick(t), at_x(t as f32 * 3.0 / 60.0), false);
            }
            if ms % 8 == 0 {
                if let Some(at) = ip.begin_frame(now) {
                    let _ = ip.sample(id, at);
                }
            }
        }
        ip
    }

    /// `Interpolator::push` as first written (search, insert, trim): the reference.
    fn push_reference(e: &mut Interpolator, tick: Tick, transform: Transform, period_s: f32) {
        let tick = tick.0;
        let pos = e.samples.partition_point(|s| s.tick < tick);
        if e.samples.get(pos).is_some_and(|s| s.tick == tick) {
            return;
        }
        if pos == 0 && e.samples.len() >= INTERP_SAMPLES_MAX {
            return;
        }
        let mut teleport = false;
        if let Some(prev) = pos.checked_sub(1).and_then(|i| e.samples.get(i)) {
            let dt = (tick - prev.tick) as f32 * period_s;
            let d = prev.transform.position.distance(transform.position);
            if d > TELEPORT_SPEED_MPS * dt {
                teleport = true;
            }
        }
        let s = Sample {
            tick,
            transform,
            teleport,
        };
        e.samples.insert(pos, s);
        while e.samples.len() > INTERP_SAMPLES_MAX {
            e.samples.pop_front();
        }
    }

    #[test]
    fn push_matches_the_reference_and_never_grows_past_its_bound() {
        let p = 1.0 / 30.0;
        let mut rng = Rng::new(5);
        for _ in 0..50 {
            let (mut fast, mut reference) = (Interpolator::default(), Interpolator::default());
            let mut newest = 10u64;
            for _ in 0..500 {
                let tick = match rng.below(10) {
                    0..=6 => {
                        newest += 1 + rng.below(2);
                        newest
                    }
                    7 | 8 => newest.saturating_sub(rng.below(40)),
                    _ => newest,
                };
                let x = if rng.chance(0.05) { 500.0 } else { 0.0 } + tick as f32 * 0.1;
                fast.push(Tick(tick), at_x(x), false, p);
                push_reference(&mut reference, Tick(tick), at_x(x), p);
                let key = |e: &Interpolator| -> Vec<(u64, f32, bool)> {
                    e.samples
                        .iter()
                        .map(|s| (s.tick, s.transform.position[0], s.teleport))
                        .collect()
                };
                assert_eq!(key(&fast), key(&reference));
                assert!(fast.samples.capacity() <= INTERP_SAMPLES_MAX);
                if rng.chance(0.02) {
                    let at = newest as f64 - rng.below(5) as f64;
                    assert_eq!(fast.sample(at, p), reference.sample(at, p));
                }
            }
        }
    }

    #[test]
    fn interpolation_delay_adapts_to_send_interval_and_jitter() {
        let fast = run(1, 0, 1);
        let slow = run(4, 0, 1);
        let jittery = run(1, 30, 1);
        // ≈ 3 intervals each: 50 ms at 60 Hz, 200 ms at 15 Hz.
        assert!((fast.delay_ms() - 50.0).abs() < 10.0, "{}", fast.delay_ms());
        assert!(
            (slow.delay_ms() - 200.0).abs() < 25.0,
            "{}",
            slow.delay_ms()
        );
        // Jitter adds about its spread.
        assert!(
            jittery.delay_ms() > fast.delay_ms() + 15.0,
            "{}",
            jittery.delay_ms()
        );
        assert!(
            jittery.delay_ms() < fast.delay_ms() + 45.0,
            "{}",
            jittery.delay_ms()
        );
        for ip in [&fast, &slow, &jittery] {
            let s = ip.stats();
            assert!(s.underruns * 100 <= s.frames, "{s:?}");
        }
    }

    #[test]
    fn interpolation_lerps_slerps_snaps_and_extrapolates_bounded() {
        let mut e = Interpolator::default();
        let p = 1.0 / 30.0;
        e.push(Tick(10), at_x(0.0), false, p);
        e.push(Tick(12), at_x(2.0), false, p);
        assert_eq!(e.peek(11.0, p).unwrap().transform.position[0], 1.0);
        // A 100 m jump is a teleport: hold, then snap.
        e.push(Tick(13), at_x(102.0), false, p);
        assert_eq!(e.peek(12.5, p).unwrap().transform.position[0], 2.0);
        assert_eq!(e.peek(13.0, p).unwrap().transform.position[0], 102.0);
        // Past the newest: extrapolation from the last velocity is bounded (here: none after a
        // teleport).
        let s = e.sample(20.0, p).unwrap();
        assert!(s.underrun && s.transform.position[0] == 102.0);
        e.push(Tick(14), at_x(103.0), false, p);
        let s = e.peek(1000.0, p).unwrap();
        let max = 103.0 + 1.0 * (EXTRAPOLATION_MAX_MS as f32 / 1000.0 / p);
        assert!(s.underrun && s.transform.position[0] <= max + 1e-3, "{s:?}");
        // Rotation: halfway between 0 and 90° about Y is 45°.
        let h = core::f32::consts::FRAC_1_SQRT_2;
        let q = Quat::IDENTITY.slerp(Quat::from_xyzw(0.0, h, 0.0, h), 0.5);
        let want = (core::f32::consts::PI / 8.0).sin();
        assert!((q.y - want).abs() < 1e-5, "{q:?}");
        // Bounded buffer.
        for t in 100..1_000 {
            e.push(Tick(t), at_x(t as f32 * 0.01), false, p);
        }
        assert!(e.samples.len() <= INTERP_SAMPLES_MAX);
    }
}
