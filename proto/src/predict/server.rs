//! The server's side: a per-player input buffer (server-authoritative mode) and a transform
//! validator (client-authoritative mode).

use std::collections::BTreeMap;

use super::movement::{CharacterInput, CharacterState, KinematicCharacter, Movement};
use super::wire::{decode_inputs, encode_own_state, OwnState, WireError};
use crate::time::{Tick, Time};
use crate::types::{Transform, Vec3};

/// How far ahead of the server's next tick an input may be, in ticks. A client runs ahead by
/// RTT/2 plus a jitter margin (a handful of ticks); 64 ticks is > 0.5 s even at 120 Hz, so only a
/// broken or hostile client exceeds it. Also bounds the buffer: at most this many inputs are held.
pub const INPUT_AHEAD_TICKS_MAX: u64 = 64;

/// What happened to one received input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputArrival {
    /// Stored for its tick.
    Buffered,
    /// Its tick was already stored or applied (a redundant copy): ignored.
    Duplicate,
    /// Its tick has already been simulated with a repeated input: too late, dropped. (Copies of
    /// inputs that were applied are [`InputArrival::Duplicate`], and inputs older than the
    /// 64-tick memory of what was applied are counted here too.)
    Late,
    /// More than [`INPUT_AHEAD_TICKS_MAX`] ticks ahead: dropped.
    TooEarly,
}

/// Counters of an [`InputBuffer`], for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InputBufferStats {
    /// Inputs stored for a future tick.
    pub buffered: u64,
    /// Redundant copies ignored (the normal fate of the redundancy).
    pub duplicates: u64,
    /// Inputs that came after their tick ran with a repeated input: the client's lead is too
    /// small or the input was delayed by more than the jitter margin.
    pub late: u64,
    /// Inputs dropped for being too far ahead.
    pub too_early: u64,
    /// Ticks at which no input was there and the previous one was repeated.
    pub repeated: u64,
    /// Ticks at which the client's own input was applied.
    pub applied: u64,
}

/// One player's inputs, by the tick they are meant for: absorbs network jitter, hands out exactly
/// one input per tick, repeats the last one when an input is missing. Bounded by
/// [`INPUT_AHEAD_TICKS_MAX`] entries.
#[derive(Clone, Debug)]
pub struct InputBuffer<I> {
    pending: BTreeMap<u64, I>,
    /// The next tick [`InputBuffer::take`] will be called for: older inputs are late.
    next_tick: Tick,
    last_input: I,
    last_applied: Option<Tick>,
    /// Bit `i` set: the client's own input was applied at tick `next_tick - 1 - i`.
    applied_mask: u64,
    stats: InputBufferStats,
}

impl<I: Clone + Default> InputBuffer<I> {
    /// An empty buffer whose first [`InputBuffer::take`] is for `next_tick`.
    pub fn new(next_tick: Tick) -> Self {
        InputBuffer {
            pending: BTreeMap::new(),
            next_tick,
            last_input: I::default(),
            last_applied: None,
            applied_mask: 0,
            stats: InputBufferStats::default(),
        }
    }

    /// Stores a received input meant for `tick`.
    pub fn insert(&mut self, tick: Tick, input: I) -> InputArrival {
        if tick < self.next_tick {
            let age = self.next_tick.0 - 1 - tick.0;
            return if age < 64 && self.applied_mask & (1 << age) != 0 {
                self.stats.duplicates += 1;
                InputArrival::Duplicate
            } else {
                self.stats.late += 1;
                InputArrival::Late
            };
        }
        if tick.0 - self.next_tick.0 >= INPUT_AHEAD_TICKS_MAX {
            self.stats.too_early += 1;
            return InputArrival::TooEarly;
        }
        match self.pending.entry(tick.0) {
            std::collections::btree_map::Entry::Occupied(_) => {
                self.stats.duplicates += 1;
                InputArrival::Duplicate
            }
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(input);
                self.stats.buffered += 1;
                InputArrival::Buffered
            }
        }
    }

    /// Stores consecutive inputs starting at `first` (a decoded datagram). Returns how many were
    /// newly buffered.
    pub fn insert_batch(&mut self, first: Tick, inputs: &[I]) -> usize {
        let mut n = 0;
        for (i, input) in inputs.iter().enumerate() {
            let Some(t) = first.0.checked_add(i as u64) else {
                break;
            };
            if self.insert(Tick(t), input.clone()) == InputArrival::Buffered {
                n += 1;
            }
        }
        n
    }

    /// The input to apply at `tick`, and whether it is the client's own (`true`) or a repeat of
    /// the last one (`false`). Call once per tick with increasing ticks; skipped ticks are simply
    /// passed over and inputs for them discarded.
    pub fn take(&mut self, tick: Tick) -> (I, bool) {
        // Discard anything older than this tick (skipped ticks).
        while let Some((&t, _)) = self.pending.first_key_value() {
            if t >= tick.0 {
                break;
            }
            self.pending.pop_first();
        }
        if tick >= self.next_tick {
            let shift = tick.0 + 1 - self.next_tick.0;
            self.applied_mask = if shift >= 64 {
                0
            } else {
                self.applied_mask << shift
            };
            self.next_tick = tick.next();
        }
        match self.pending.remove(&tick.0) {
            Some(input) => {
                if tick.next() == self.next_tick {
                    self.applied_mask |= 1;
                }
                self.last_input = input.clone();
                self.last_applied = Some(tick);
                self.stats.applied += 1;
                (input, true)
            }
            None => {
                self.stats.repeated += 1;
                (self.last_input.clone(), false)
            }
        }
    }

    /// The newest tick whose own input was applied (goes in the own-state blob).
    pub fn last_applied(&self) -> Option<Tick> {
        self.last_applied
    }

    /// Inputs waiting for their tick.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// No inputs are waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> InputBufferStats {
        self.stats
    }
}

/// Limits for client-authoritative movement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValidatorConfig {
    /// Fastest legitimate horizontal speed, m/s (the movement model's run speed).
    pub speed_max_mps: f32,
    /// Fastest legitimate vertical speed, m/s (jump take-off or the fastest fall).
    pub vertical_speed_max_mps: f32,
    /// Allowance above the maximum speeds, as a fraction (default 0.25: float error,
    /// acceleration overshoot and timestamp noise must not reject honest players).
    pub tolerance: f32,
    /// Distance a client may cover at once beyond its speed allowance, metres (default 3:
    /// absorbs datagrams bunched by jitter, since speed is measured against arrival times, and
    /// limits how much a cheat gains before it is caught).
    pub burst_m: f32,
    /// Lowest corner of the world box, metres.
    pub bounds_min: Vec3,
    /// Highest corner of the world box, metres.
    pub bounds_max: Vec3,
}

impl ValidatorConfig {
    /// Limits matching a kinematic character's configuration.
    pub fn for_character(c: &super::movement::CharacterConfig) -> Self {
        ValidatorConfig {
            speed_max_mps: c.speed_max_mps(),
            vertical_speed_max_mps: c.jump_speed_mps.max(c.fall_speed_max_mps),
            tolerance: 0.25,
            burst_m: 3.0,
            bounds_min: c.bounds_min,
            bounds_max: c.bounds_max,
        }
    }
}

/// Why a client-sent transform was refused. The server keeps the last accepted transform and
/// should tell the client where it really is (a teleport to it).
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum MoveRejection {
    /// A coordinate or rotation component is NaN or infinite.
    #[error("non-finite transform")]
    NotFinite,
    /// The position is outside the world box.
    #[error("position outside the world bounds")]
    OutOfBounds,
    /// The move is faster than allowed.
    #[error("moved {distance_m:.2} m horizontally with {allowed_m:.2} m allowed")]
    TooFast {
        /// Distance covered, metres.
        distance_m: f32,
        /// Distance allowed, metres.
        allowed_m: f32,
    },
    /// The vertical move is faster than allowed.
    #[error("moved {distance_m:.2} m vertically with {allowed_m:.2} m allowed")]
    TooFastVertical {
        /// Distance covered, metres.
        distance_m: f32,
        /// Distance allowed, metres.
        allowed_m: f32,
    },
}

/// Validates a client's self-reported transforms in client-authoritative mode: bounds, and speed
/// with a distance budget that refills at the allowed speed (a token bucket) so bunched
/// datagrams are not mistaken for speed hacks while sustained excess is.
#[derive(Clone, Debug)]
pub struct MoveValidator {
    config: ValidatorConfig,
    last: Transform,
    last_at: Time,
    budget_h_m: f32,
    budget_v_m: f32,
    rejections: u64,
}

impl MoveValidator {
    /// A validator for a player placed at `spawn` at `now` (the server's own placement).
    pub fn new(config: ValidatorConfig, spawn: Transform, now: Time) -> Self {
        MoveValidator {
            config,
            last: spawn,
            last_at: now,
            budget_h_m: config.burst_m,
            budget_v_m: config.burst_m,
            rejections: 0,
        }
    }

    /// Places the player (server-side teleport): the next move is measured from here.
    pub fn teleport(&mut self, to: Transform, now: Time) {
        self.last = to;
        self.last_at = now;
    }

    /// The last accepted transform.
    pub fn accepted(&self) -> Transform {
        self.last
    }

    /// Transforms rejected so far.
    pub fn rejections(&self) -> u64 {
        self.rejections
    }

    /// Checks a transform the client sent, received at `now`. On success it becomes the
    /// accepted transform; on failure nothing changes but the rejection count.
    pub fn validate(&mut self, t: &Transform, now: Time) -> Result<(), MoveRejection> {
        let r = self.check(t, now);
        match r {
            Ok((h, v)) => {
                let dt = now.saturating_since(self.last_at).as_secs_f32();
                let (bh, bv) = self.refilled(dt);
                self.budget_h_m = bh - h;
                self.budget_v_m = bv - v;
                self.last = *t;
                self.last_at = now.max(self.last_at);
                Ok(())
            }
            Err(e) => {
                self.rejections += 1;
                // Time still passes: refill the budget for the elapsed time.
                let dt = now.saturating_since(self.last_at).as_secs_f32();
                let (bh, bv) = self.refilled(dt);
                self.budget_h_m = bh;
                self.budget_v_m = bv;
                self.last_at = now.max(self.last_at);
                Err(e)
            }
        }
    }

    fn refilled(&self, dt: f32) -> (f32, f32) {
        let c = &self.config;
        let k = 1.0 + c.tolerance;
        let cap_h = c.burst_m + c.speed_max_mps * k * 0.1;
        let cap_v = c.burst_m + c.vertical_speed_max_mps * k * 0.1;
        (
            (self.budget_h_m + c.speed_max_mps * k * dt).min(cap_h),
            (self.budget_v_m + c.vertical_speed_max_mps * k * dt).min(cap_v),
        )
    }

    fn check(&self, t: &Transform, now: Time) -> Result<(f32, f32), MoveRejection> {
        if !(t.position.is_finite() && t.rotation.is_finite()) {
            return Err(MoveRejection::NotFinite);
        }
        let c = &self.config;
        for i in 0..3 {
            if t.position[i] < c.bounds_min[i] || t.position[i] > c.bounds_max[i] {
                return Err(MoveRejection::OutOfBounds);
            }
        }
        let dt = now.saturating_since(self.last_at).as_secs_f32();
        let (bh, bv) = self.refilled(dt);
        let dx = t.position[0] - self.last.position[0];
        let dz = t.position[2] - self.last.position[2];
        let h = (dx * dx + dz * dz).sqrt();
        let v = (t.position[1] - self.last.position[1]).abs();
        if h > bh {
            return Err(MoveRejection::TooFast {
                distance_m: h,
                allowed_m: bh,
            });
        }
        if v > bv {
            return Err(MoveRejection::TooFastVertical {
                distance_m: v,
                allowed_m: bv,
            });
        }
        Ok((h, v))
    }
}

/// One player's server-authoritative movement: its input buffer, its state and its teleport
/// counter, with the wire encodings. The server core keeps one per player and, every tick, calls
/// [`PlayerMotion::tick`] then sends [`PlayerMotion::own_state_blob`] to that player.
#[derive(Clone, Debug)]
pub struct PlayerMotion {
    model: KinematicCharacter,
    dt: f32,
    state: CharacterState,
    tick: Option<Tick>,
    inputs: InputBuffer<CharacterInput>,
    teleport_seq: u8,
}

impl PlayerMotion {
    /// A player at `state` (see [`KinematicCharacter::spawn`]) on a server ticking at `tick_hz`,
    /// whose next tick is `next_tick`.
    pub fn new(
        model: KinematicCharacter,
        state: CharacterState,
        tick_hz: u16,
        next_tick: Tick,
    ) -> Self {
        PlayerMotion {
            model,
            dt: 1.0 / tick_hz.max(1) as f32,
            state: model.quantize(&state),
            tick: None,
            inputs: InputBuffer::new(next_tick),
            teleport_seq: 0,
        }
    }

    /// Handles an input datagram payload from this player (see [`super::wire`]). Returns how many
    /// inputs were newly buffered; an error means the payload was malformed (the peer's fault).
    pub fn handle_input_datagram(&mut self, payload: &[u8]) -> Result<usize, WireError> {
        let b = decode_inputs(payload)?;
        Ok(self.inputs.insert_batch(b.first_tick, &b.inputs))
    }

    /// Runs server tick `tick`: applies this tick's input (or repeats the last) and returns the
    /// new state.
    pub fn tick(&mut self, tick: Tick) -> &CharacterState {
        let (input, _) = self.inputs.take(tick);
        self.state = self.model.step(&self.state, &input, self.dt);
        self.tick = Some(tick);
        &self.state
    }

    /// Places the player (spawn point, portal, moderation): clients snap to it.
    pub fn teleport(&mut self, state: CharacterState) {
        self.state = self.model.quantize(&state);
        self.teleport_seq = self.teleport_seq.wrapping_add(1);
    }

    /// The current state.
    pub fn state(&self) -> &CharacterState {
        &self.state
    }

    /// The current transform, for the transform datagrams everyone else receives.
    pub fn transform(&self) -> Transform {
        self.model.transform(&self.state)
    }

    /// The own-state blob for this player ([`super::wire::OWN_STATE_BYTES`] bytes), describing the
    /// state after the latest [`PlayerMotion::tick`]. `None` before the first tick.
    pub fn own_state_blob(&self) -> Option<Vec<u8>> {
        Some(encode_own_state(&OwnState {
            server_tick: self.tick?,
            last_input_tick: self.inputs.last_applied(),
            teleport_seq: self.teleport_seq,
            state: self.state,
        }))
    }

    /// Input buffer counters.
    pub fn input_stats(&self) -> InputBufferStats {
        self.inputs.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::movement::CharacterConfig;
    use crate::rng::Rng;
    use core::time::Duration;

    #[test]
    fn input_buffer_applies_one_per_tick_repeats_missing_and_bounds() {
        let mut b: InputBuffer<u32> = InputBuffer::new(Tick(10));
        assert_eq!(b.insert(Tick(9), 1), InputArrival::Late);
        assert_eq!(b.insert(Tick(10), 10), InputArrival::Buffered);
        assert_eq!(b.insert(Tick(10), 99), InputArrival::Duplicate);
        assert_eq!(b.insert(Tick(12), 12), InputArrival::Buffered);
        assert_eq!(
            b.insert(Tick(10 + INPUT_AHEAD_TICKS_MAX), 0),
            InputArrival::TooEarly
        );
        assert_eq!(b.take(Tick(10)), (10, true));
        assert_eq!(b.take(Tick(11)), (10, false)); // repeated
        assert_eq!(b.last_applied(), Some(Tick(10)));
        assert_eq!(b.insert(Tick(11), 11), InputArrival::Late);
        assert_eq!(b.take(Tick(12)), (12, true));
        assert_eq!(b.insert(Tick(12), 1), InputArrival::Duplicate);
        assert_eq!(b.insert(Tick(10), 1), InputArrival::Duplicate);
        assert_eq!(b.insert(Tick(11), 1), InputArrival::Late);
        assert_eq!(b.stats().late, 3);
        assert_eq!(b.last_applied(), Some(Tick(12)));
        // Flooding with future ticks never holds more than the limit.
        for t in 0..10_000 {
            b.insert(Tick(t), 0);
        }
        assert!(b.len() <= INPUT_AHEAD_TICKS_MAX as usize);
    }

    fn at(x: f32, z: f32) -> Transform {
        Transform {
            position: Vec3::new(x, 0.0, z),
            ..Default::default()
        }
    }

    #[test]
    fn client_authoritative_accepts_honest_jittery_movement() {
        let cfg = ValidatorConfig::for_character(&CharacterConfig::default());
        let mut v = MoveValidator::new(cfg, at(0.0, 0.0), Time::ZERO);
        let mut r = Rng::new(3);
        // Running at full speed, 30 Hz updates, arrivals jittered by up to 40 ms.
        let speed = cfg.speed_max_mps;
        for i in 1..600u64 {
            let sent_s = i as f32 / 30.0;
            let arrive = Time::from_millis((sent_s * 1000.0) as u64 + 50 + r.below(40));
            let t = at(speed * sent_s, 0.0);
            // Arrival order may invert under jitter; the driver delivers in order per stream.
            v.validate(&t, arrive.max(v.last_at)).unwrap();
        }
        assert_eq!(v.rejections(), 0);
    }

    #[test]
    fn client_authoritative_rejects_speed_hack() {
        let cfg = ValidatorConfig::for_character(&CharacterConfig::default());
        let mut v = MoveValidator::new(cfg, at(0.0, 0.0), Time::ZERO);
        // Twice the run speed: accepted briefly out of the burst budget, then rejected.
        let speed = cfg.speed_max_mps * 2.0;
        let mut now = Time::ZERO;
        let mut x = 0.0;
        let mut rejected = 0;
        for _ in 0..90 {
            now += Duration::from_micros(33_333);
            x += speed / 30.0;
            if v.validate(&at(x, 0.0), now).is_err() {
                rejected += 1;
            }
        }
        assert!(rejected > 30, "rejected {rejected}");
        // The accepted position never got much ahead of an honest runner.
        let honest = cfg.speed_max_mps * (1.0 + cfg.tolerance) * 3.0 + 2.0 * cfg.burst_m;
        assert!(v.accepted().position[0] <= honest, "{:?}", v.accepted());
        // Teleporting across the map in one update is refused outright.
        assert!(matches!(
            v.validate(&at(500.0, 0.0), now + Duration::from_millis(33)),
            Err(MoveRejection::TooFast { .. })
        ));
        assert_eq!(
            v.validate(&at(5000.0, 0.0), now),
            Err(MoveRejection::OutOfBounds)
        );
        assert_eq!(
            v.validate(&at(f32::NAN, 0.0), now),
            Err(MoveRejection::NotFinite)
        );
    }
}
