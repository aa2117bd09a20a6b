//! [`PredictedClient`]: everything a client needs for smooth motion, behind one sans-IO type.
//!
//! It bundles the clock sync, the prediction tick clock, the local player's predictor and the
//! interpolation of every other entity. Like the other cores it never reads a clock: every method
//! that depends on time takes `now` (the client's own clock, any epoch).
//!
//! ## Driving it, per client frame
//! 1. **Receive**: for every datagram, `handle_echo` (its clock echo, if any), `handle_own_state`
//!    (the own-player blob), and for transform datagrams `handle_transforms_datagram` once then
//!    `handle_entity_transform` per entity; `handle_pong` for `ServerMsg::Pong`.
//! 2. **Tick**: `while let Some(tick) = poll_tick(now)`: sample the game's input and call
//!    `apply_input(tick, input)`; send the returned payload as an input datagram, with the
//!    client's clock (kind `0x03`) when `poll_stamp(now)` says so.
//! 3. **Ping**: if `poll_ping(now)` returns a time, send `ClientMsg::Ping` with it (only until
//!    the first clock echo arrives).
//! 4. **Render**: `begin_frame(now, frame_dt_s)` gives the render tick for remote entities; draw
//!    the local player at `player_transform(now)` and others at `entity_transform(id, at)`.
//!
//! Call again no later than `poll_timeout()`.

use super::clock::{ClientTickClock, ClockSync, EchoSample, PingSample};
use super::interp::{Interpolation, InterpolationStats};
use super::movement::{CharacterConfig, CharacterInput, CharacterState, KinematicCharacter};
use super::predictor::{
    Authoritative, CorrectionStats, Predictor, PredictorConfig, Reconciliation,
};
use super::wire::{decode_own_state, encode_inputs, WireError};
use crate::time::{Tick, Time};
use crate::transform::ClockEcho;
use crate::types::{EntityId, Transform};

/// The client side of movement: prediction of the local player, clock sync, interpolation of
/// everyone else.
pub struct PredictedClient {
    sync: ClockSync,
    clock: ClientTickClock,
    predictor: Predictor<KinematicCharacter>,
    interp: Interpolation,
}

impl PredictedClient {
    /// A client of a server ticking at `tick_hz` (from `Welcome`), moving with `character` (the
    /// server's configuration), expecting a transform datagram every `send_interval_ticks` ticks
    /// (a first guess: the interval is measured).
    pub fn new(tick_hz: u16, character: CharacterConfig, send_interval_ticks: u32) -> Self {
        let hz = tick_hz.clamp(crate::time::TICK_HZ_MIN, crate::time::TICK_HZ_MAX);
        PredictedClient {
            sync: ClockSync::new(hz),
            clock: ClientTickClock::new(hz),
            predictor: Predictor::new(
                KinematicCharacter::new(character),
                1.0 / hz as f32,
                PredictorConfig::default(),
            ),
            interp: Interpolation::new(hz, send_interval_ticks),
        }
    }

    /// Handles a `Pong` received at `now` (ignored by the clock sync once clock echoes arrive).
    pub fn handle_pong(
        &mut self,
        client_time_us: u64,
        server_time_us: u64,
        server_tick: u64,
        now: Time,
    ) {
        self.sync.handle_sample(PingSample {
            client_send: Time(client_time_us),
            server_time_us,
            server_tick: Tick(server_tick),
            client_recv: now,
        });
    }

    /// Handles the clock echo of a fresh server datagram of tick `server_tick` received at
    /// `now`. Returns the round trip it measured (without the server's hold), µs, if plausible.
    pub fn handle_echo(&mut self, echo: &ClockEcho, server_tick: Tick, now: Time) -> Option<u64> {
        self.sync
            .handle_echo(EchoSample::from_echo(echo, server_tick, now))
    }

    /// If the datagram sent at `now` should ask for a clock echo, the client time to put in it
    /// (kind `0x03`, [`crate::transform::encode_client_datagram_clocked`]).
    pub fn poll_stamp(&mut self, now: Time) -> Option<u64> {
        self.sync.poll_stamp(now)
    }

    /// Handles the own-player blob: compare, and restore and replay on a misprediction.
    pub fn handle_own_state(&mut self, blob: &[u8]) -> Result<Reconciliation, WireError> {
        let own = decode_own_state(blob)?;
        Ok(self.predictor.reconcile(&Authoritative::from(own)))
    }

    /// Measures a transform datagram for server tick `server_tick` received at `now` (call once
    /// per datagram, before its entities).
    pub fn handle_transforms_datagram(&mut self, now: Time, server_tick: Tick) {
        self.interp.on_packet(now, server_tick);
    }

    /// Adds a remote entity's transform for `server_tick`. Do not pass the local player's own
    /// entity: it is predicted.
    pub fn handle_entity_transform(
        &mut self,
        id: EntityId,
        server_tick: Tick,
        transform: Transform,
        teleport: bool,
    ) {
        self.interp.push(id, server_tick, transform, teleport);
    }

    /// Forgets a remote entity.
    pub fn remove_entity(&mut self, id: EntityId) {
        self.interp.remove(id);
    }

    /// Forgets every remote entity's interpolation buffer.
    pub fn clear_entities(&mut self) {
        self.interp.clear();
    }

    /// If a ping is due at `now`, the client time to put in it (then send it). None once clock
    /// echoes arrive: a driver pings only for liveness then.
    pub fn poll_ping(&mut self, now: Time) -> Option<u64> {
        if !self.sync.ping_due(now) {
            return None;
        }
        self.sync.on_ping_sent(now);
        Some(now.as_micros())
    }

    /// If a prediction tick is due at `now`, its number: sample input and call
    /// [`PredictedClient::apply_input`]. Call in a loop until `None`. Nothing is due before the
    /// first pong.
    pub fn poll_tick(&mut self, now: Time) -> Option<Tick> {
        self.clock.poll_tick(now, &self.sync)
    }

    /// Predicts `tick` with the local input and returns the input datagram payload to send
    /// (every unacknowledged input), or `None` before the first own-state blob.
    pub fn apply_input(&mut self, tick: Tick, input: CharacterInput) -> Option<Vec<u8>> {
        if !self.predictor.step(tick, input) {
            return None;
        }
        let (first, inputs) = self.predictor.unacked_inputs()?;
        Some(encode_inputs(first, &inputs))
    }

    /// Starts a render frame at `now`, `dt_s` seconds after the previous one: decays the
    /// correction smoothing and returns the server tick (fractional) to render remote entities at.
    pub fn begin_frame(&mut self, now: Time, dt_s: f32) -> Option<f64> {
        self.predictor.advance_visual(dt_s);
        self.interp.begin_frame(now)
    }

    /// The local player's transform to render at `now`: the prediction between ticks, plus the
    /// fading correction. `None` before the first own-state blob.
    pub fn player_transform(&self, now: Time) -> Option<Transform> {
        self.predictor.render_transform(self.clock.alpha(now))
    }

    /// The local player's latest predicted state.
    pub fn player_state(&self) -> Option<&CharacterState> {
        self.predictor.state()
    }

    /// A remote entity's transform at render tick `at` (from [`PredictedClient::begin_frame`]),
    /// counting frames and underruns.
    pub fn entity_transform(&mut self, id: EntityId, at: f64) -> Option<Transform> {
        self.interp.sample(id, at).map(|s| s.transform)
    }

    /// Prediction correction statistics.
    pub fn correction_stats(&self) -> CorrectionStats {
        self.predictor.stats()
    }

    /// Interpolation counters.
    pub fn interpolation_stats(&self) -> InterpolationStats {
        self.interp.stats()
    }

    /// The render delay in use for remote entities, milliseconds.
    pub fn interpolation_delay_ms(&self) -> f64 {
        self.interp.delay_ms()
    }

    /// The prediction tick clock (jumps).
    pub fn tick_clock(&self) -> &ClientTickClock {
        &self.clock
    }

    /// The clock sync (RTT, offset, lead).
    pub fn clock(&self) -> &ClockSync {
        &self.sync
    }

    /// The latest time to call back: the next tick or ping, whichever is sooner (no ping once
    /// clock echoes arrive).
    pub fn poll_timeout(&self) -> Time {
        let ping = self.sync.next_ping_at();
        if self.clock.next_tick().is_some() {
            ping.min(self.clock.next_at())
        } else {
            ping
        }
    }
}
