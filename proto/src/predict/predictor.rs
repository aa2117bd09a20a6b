//! Client-side prediction and reconciliation of the local player: compare, restore, replay.
//!
//! Every client tick the game samples an input and calls [`Predictor::step`]: the player moves
//! at once, and the (tick, input, predicted state) triple is kept in a bounded history. Every
//! authoritative state from the server ([`Authoritative`]) is compared with the prediction for the
//! same tick. States are quantized on both sides (see [`super::movement`]), so equality is exact:
//! any difference is a real misprediction (a lost or late input, a server-side push or teleport).
//! On a difference the predictor restores the server's state and replays every newer input.
//!
//! The rendered position does not jump on a correction: the difference between what was shown
//! and the new prediction becomes a visual offset that decays exponentially
//! ([`PredictorConfig::smoothing_time_constant_s`]), except above
//! [`PredictorConfig::snap_distance_m`] or on a teleport, where it snaps.

use std::collections::VecDeque;

use super::movement::Movement;
use super::wire::{OwnState, INPUTS_PER_PACKET_MAX};
use crate::time::Tick;
use crate::types::{Transform, Vec3};

/// Ticks of input and predicted state kept. Only unacknowledged ticks are kept, so this bounds
/// how long the server may stay silent before old predictions are forgotten: 128 ticks is 4.3 s
/// at 30 Hz and 1.07 s at 120 Hz, longer than any round trip worth predicting across.
pub const PREDICTION_HISTORY_MAX: usize = 128;

/// Tunables of a [`Predictor`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PredictorConfig {
    /// History length, ticks (default [`PREDICTION_HISTORY_MAX`]; clamped to 1..=it).
    pub history_max: usize,
    /// A correction whose visual error exceeds this snaps instead of smoothing, metres
    /// (default 2: gliding further than a body length looks like sliding through the world).
    pub snap_distance_m: f32,
    /// Time constant of the exponential decay of the visual error, seconds (default 0.1: a
    /// correction is 95% gone in 0.3 s, too quick to notice, slow enough not to pop).
    pub smoothing_time_constant_s: f32,
}

impl Default for PredictorConfig {
    fn default() -> Self {
        PredictorConfig {
            history_max: PREDICTION_HISTORY_MAX,
            snap_distance_m: 2.0,
            smoothing_time_constant_s: 0.1,
        }
    }
}

/// What the server says the local player's state is after one of its ticks.
#[derive(Clone, Debug, PartialEq)]
pub struct Authoritative<S> {
    /// The server tick the state is the result of.
    pub server_tick: Tick,
    /// The newest input tick the server applied (informational; acknowledgement is by
    /// `server_tick`, since inputs for ticks already simulated can never be used).
    pub last_input_tick: Option<Tick>,
    /// Wrapping teleport counter: a change means the server placed the player; snap.
    pub teleport_seq: u8,
    /// The quantized state.
    pub state: S,
}

impl From<OwnState> for Authoritative<super::movement::CharacterState> {
    fn from(o: OwnState) -> Self {
        Authoritative {
            server_tick: o.server_tick,
            last_input_tick: o.last_input_tick,
            teleport_seq: o.teleport_seq,
            state: o.state,
        }
    }
}

/// The outcome of [`Predictor::reconcile`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reconciliation {
    /// The prediction for that tick was exact.
    Matched,
    /// The prediction differed: restored and replayed.
    Corrected {
        /// Distance between the predicted and the authoritative position at that tick, metres.
        error_m: f32,
        /// Inputs replayed.
        replayed: usize,
    },
    /// The server teleported the player: restored, replayed and snapped.
    Teleported,
    /// The state is for a tick the client has not predicted yet (start, or the client's clock
    /// fell behind): taken as is.
    Adopted,
    /// Older than a state already handled (reordered datagram): ignored.
    Stale,
}

/// Correction statistics of a [`Predictor`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CorrectionStats {
    /// Authoritative states compared with a prediction.
    pub checked: u64,
    /// Mispredictions corrected.
    pub corrections: u64,
    /// Server teleports applied.
    pub teleports: u64,
    /// Corrections shown as a snap rather than smoothed (large or teleport).
    pub snaps: u64,
    /// Inputs replayed in total.
    pub replayed: u64,
    /// Largest correction, metres.
    pub error_max_m: f32,
    /// Sum of correction magnitudes, metres (divide by `corrections` for the mean).
    pub error_sum_m: f64,
}

struct Entry<M: Movement> {
    tick: Tick,
    input: M::Input,
    state: M::State,
}

/// The local player's predictor. Generic over the [`Movement`] model, which must be the one the
/// server runs, with the same tick duration.
pub struct Predictor<M: Movement> {
    model: M,
    dt: f32,
    config: PredictorConfig,
    /// Unacknowledged ticks, oldest first, consecutive.
    history: VecDeque<Entry<M>>,
    /// State after `latest`, and before it (for rendering between ticks).
    state: Option<(M::State, M::State)>,
    latest: Option<Tick>,
    last_server_tick: Option<Tick>,
    teleport_seq: Option<u8>,
    last_input: M::Input,
    visual_offset: Vec3,
    stats: CorrectionStats,
}

impl<M: Movement> Predictor<M> {
    /// A predictor with no state yet: it starts predicting after the first authoritative state.
    /// `dt_s` is the tick duration, seconds (`1.0 / tick_hz as f32`, exactly as the server computes
    /// it).
    pub fn new(model: M, dt_s: f32, config: PredictorConfig) -> Self {
        let mut config = config;
        config.history_max = config.history_max.clamp(1, PREDICTION_HISTORY_MAX);
        Predictor {
            model,
            dt: dt_s,
            config,
            history: VecDeque::new(),
            state: None,
            latest: None,
            last_server_tick: None,
            teleport_seq: None,
            last_input: M::Input::default(),
            visual_offset: Vec3::ZERO,
            stats: CorrectionStats::default(),
        }
    }

    /// The movement model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The newest predicted tick.
    pub fn latest_tick(&self) -> Option<Tick> {
        self.latest
    }

    /// The predicted state after [`Predictor::latest_tick`].
    pub fn state(&self) -> Option<&M::State> {
        self.state.as_ref().map(|(s, _)| s)
    }

    /// Correction statistics.
    pub fn stats(&self) -> CorrectionStats {
        self.stats
    }

    /// Unacknowledged ticks held.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Predicts tick `tick` with the local `input`. Ticks must increase; a tick at or before the
    /// latest is ignored. Skipped ticks are filled with the previous input, which is what the
    /// server applies when an input is missing. Before the first authoritative state nothing is
    /// predicted and this returns `false`.
    pub fn step(&mut self, tick: Tick, input: M::Input) -> bool {
        let (Some(latest), Some((mut cur, _))) = (self.latest, self.state.clone()) else {
            return false;
        };
        if tick <= latest {
            return false;
        }
        let gap = tick.0 - latest.0 - 1;
        if gap >= self.config.history_max as u64 {
            // Too far to fill: forget the history (a correction will re-anchor us).
            self.history.clear();
        }
        let fill_from = latest.0 + 1 + gap.saturating_sub(self.config.history_max as u64);
        let mut prev = cur.clone();
        for t in fill_from..=tick.0 {
            let inp = if t == tick.0 {
                input.clone()
            } else {
                self.last_input.clone()
            };
            prev = cur;
            cur = self.model.step(&prev, &inp, self.dt);
            self.history.push_back(Entry {
                tick: Tick(t),
                input: inp,
                state: cur.clone(),
            });
            while self.history.len() > self.config.history_max {
                self.history.pop_front();
            }
        }
        self.last_input = input;
        self.state = Some((cur, prev));
        self.latest = Some(tick);
        true
    }

    /// The inputs to send this tick: every unacknowledged input, newest last, at most
    /// [`INPUTS_PER_PACKET_MAX`], as (tick of the first, inputs). `None` when there is nothing.
    pub fn unacked_inputs(&self) -> Option<(Tick, Vec<M::Input>)> {
        let skip = self.history.len().saturating_sub(INPUTS_PER_PACKET_MAX);
        let first = self.history.get(skip)?.tick;
        Some((
            first,
            self.history
                .iter()
                .skip(skip)
                .map(|e| e.input.clone())
                .collect(),
        ))
    }

    /// Handles an authoritative state: compare, and on a difference restore and replay.
    pub fn reconcile(&mut self, auth: &Authoritative<M::State>) -> Reconciliation {
        let s = auth.server_tick;
        if self.last_server_tick.is_some_and(|l| s <= l) {
            return Reconciliation::Stale;
        }
        self.last_server_tick = Some(s);
        let teleport = self.teleport_seq.is_some_and(|q| q != auth.teleport_seq);
        self.teleport_seq = Some(auth.teleport_seq);
        let auth_state = self.model.quantize(&auth.state);

        let (Some(latest), Some((cur, _))) = (self.latest, self.state.clone()) else {
            self.adopt(s, auth_state, true);
            return Reconciliation::Adopted;
        };
        if s > latest {
            // The server is ahead of our prediction: nothing to compare with.
            let err = self
                .model
                .position(&cur)
                .distance(self.model.position(&auth_state));
            self.adopt(s, auth_state, teleport || err > self.config.snap_distance_m);
            if teleport {
                self.stats.teleports += 1;
            }
            return Reconciliation::Adopted;
        }
        while self.history.front().is_some_and(|e| e.tick < s) {
            self.history.pop_front();
        }
        let predicted = match self.history.front() {
            Some(e) if e.tick == s => Some(e.state.clone()),
            _ => None,
        };
        if predicted.is_some() {
            self.history.pop_front();
        }
        self.stats.checked += 1;
        if !teleport && predicted.as_ref() == Some(&auth_state) {
            return Reconciliation::Matched;
        }
        // Restore and replay.
        let err = match &predicted {
            Some(p) => self
                .model
                .position(p)
                .distance(self.model.position(&auth_state)),
            None => self
                .model
                .position(&cur)
                .distance(self.model.position(&auth_state)),
        };
        let shown_before = self.model.position(&cur);
        let mut st = auth_state.clone();
        let mut prev = st.clone();
        for e in self.history.iter_mut() {
            prev = st;
            st = self.model.step(&prev, &e.input, self.dt);
            e.state = st.clone();
        }
        let replayed = self.history.len();
        let shown_after = self.model.position(&st);
        self.state = Some((st, prev));
        self.stats.replayed += replayed as u64;
        if teleport {
            self.stats.teleports += 1;
            self.snap();
            return Reconciliation::Teleported;
        }
        self.stats.corrections += 1;
        self.stats.error_max_m = self.stats.error_max_m.max(err);
        self.stats.error_sum_m += err as f64;
        self.visual_offset += shown_before - shown_after;
        if self.visual_offset.length() > self.config.snap_distance_m {
            self.snap();
        }
        Reconciliation::Corrected {
            error_m: err,
            replayed,
        }
    }

    fn adopt(&mut self, tick: Tick, state: M::State, snap: bool) {
        let before = self.state.as_ref().map(|(s, _)| self.model.position(s));
        self.history.clear();
        if let (Some(b), false) = (before, snap) {
            let a = self.model.position(&state);
            self.visual_offset += b - a;
        } else if before.is_some() {
            self.snap();
        }
        self.state = Some((state.clone(), state));
        self.latest = Some(tick);
    }

    fn snap(&mut self) {
        self.visual_offset = Vec3::ZERO;
        self.stats.snaps += 1;
    }

    /// Decays the visual error by `dt_s` seconds of render time. Call once per rendered frame.
    /// (Uses `exp`: the visual offset is for display only and never feeds back into the
    /// simulation, so platform differences in `exp` cannot cause divergence.)
    pub fn advance_visual(&mut self, dt_s: f32) {
        let tau = self.config.smoothing_time_constant_s.max(1e-3);
        let k = (-dt_s.max(0.0) / tau).exp();
        self.visual_offset *= k;
    }

    /// The current visual error being smoothed out, metres (add to the prediction to get what is
    /// shown).
    pub fn visual_offset(&self) -> Vec3 {
        self.visual_offset
    }

    /// The transform to render for the local player: the prediction between the previous and the
    /// latest tick at `alpha` (0..=1, the fraction of the tick elapsed since the latest), plus the
    /// decaying visual error. `None` before the first authoritative state.
    pub fn render_transform(&self, alpha: f32) -> Option<Transform> {
        let (cur, prev) = self.state.as_ref()?;
        let a = alpha.clamp(0.0, 1.0);
        let p0 = self.model.position(prev);
        let p1 = self.model.position(cur);
        let mut t = self.model.transform(cur);
        for i in 0..3 {
            t.position[i] = p0[i] + (p1[i] - p0[i]) * a + self.visual_offset[i];
        }
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::movement::{CharacterInput, KinematicCharacter};

    fn fwd(yaw: u16) -> CharacterInput {
        CharacterInput {
            move_z: 127,
            yaw,
            ..Default::default()
        }
    }

    #[test]
    fn matching_prediction_is_not_corrected_and_mismatch_replays() {
        let m = KinematicCharacter::default();
        let dt = 1.0 / 30.0;
        let mut p = Predictor::new(m, dt, PredictorConfig::default());
        let s0 = m.spawn(Vec3::ZERO, 0);
        assert_eq!(
            p.reconcile(&Authoritative {
                server_tick: Tick(10),
                last_input_tick: None,
                teleport_seq: 0,
                state: s0
            }),
            Reconciliation::Adopted
        );
        // Server simulates the same inputs.
        let mut server = s0;
        let mut server_states = vec![];
        for t in 11..=20u64 {
            let i = fwd((t * 1000) as u16);
            assert!(p.step(Tick(t), i));
            server = m.step(&server, &i, dt);
            server_states.push(server);
        }
        let (first, inputs) = p.unacked_inputs().unwrap();
        assert_eq!((first, inputs.len()), (Tick(11), 10));
        let r = p.reconcile(&Authoritative {
            server_tick: Tick(12),
            last_input_tick: Some(Tick(12)),
            teleport_seq: 0,
            state: server_states[1],
        });
        assert_eq!(r, Reconciliation::Matched);
        assert_eq!(p.history_len(), 8);
        // The server missed input 13 and repeated 12's: prediction differs, replay converges on
        // what the server will compute from then on.
        let mut srv = m.step(&server_states[1], &fwd(12000), dt);
        let r = p.reconcile(&Authoritative {
            server_tick: Tick(13),
            last_input_tick: Some(Tick(12)),
            teleport_seq: 0,
            state: srv,
        });
        assert!(
            matches!(r, Reconciliation::Corrected { replayed: 7, .. }),
            "{r:?}"
        );
        for t in 14..=20u64 {
            srv = m.step(&srv, &fwd((t * 1000) as u16), dt);
        }
        assert_eq!(p.state(), Some(&srv));
        assert_eq!(p.stats().corrections, 1);
        // The rendered position stays continuous and the offset decays.
        let off0 = p.visual_offset().length();
        assert!(off0 > 0.0);
        for _ in 0..30 {
            p.advance_visual(1.0 / 60.0);
        }
        assert!(p.visual_offset().length() < off0 * 0.01);
    }

    #[test]
    fn teleport_snaps_instead_of_smoothing() {
        let m = KinematicCharacter::default();
        let dt = 1.0 / 30.0;
        let mut p = Predictor::new(m, dt, PredictorConfig::default());
        let s0 = m.spawn(Vec3::ZERO, 0);
        p.reconcile(&Authoritative {
            server_tick: Tick(0),
            last_input_tick: None,
            teleport_seq: 0,
            state: s0,
        });
        for t in 1..=5 {
            p.step(Tick(t), fwd(0));
        }
        // The server moved us only 1 m away (below the snap distance), as a teleport.
        let tp = m.spawn(Vec3::new(1.0, 0.0, 0.0), 0);
        let r = p.reconcile(&Authoritative {
            server_tick: Tick(2),
            last_input_tick: Some(Tick(2)),
            teleport_seq: 1,
            state: tp,
        });
        assert_eq!(r, Reconciliation::Teleported);
        assert_eq!(p.visual_offset(), Vec3::ZERO);
        let shown = p.render_transform(1.0).unwrap().position;
        assert_eq!(shown, p.state().unwrap().position);
        assert!(shown[0] == 1.0);
        assert_eq!(p.stats().teleports, 1);
        assert_eq!(p.stats().corrections, 0);
    }

    #[test]
    fn history_is_bounded_when_the_server_is_silent() {
        let m = KinematicCharacter::default();
        let mut p = Predictor::new(m, 1.0 / 60.0, PredictorConfig::default());
        p.reconcile(&Authoritative {
            server_tick: Tick(0),
            last_input_tick: None,
            teleport_seq: 0,
            state: m.spawn(Vec3::ZERO, 0),
        });
        for t in 1..10_000 {
            p.step(Tick(t), fwd(0));
        }
        assert_eq!(p.history_len(), PREDICTION_HISTORY_MAX);
        assert_eq!(p.unacked_inputs().unwrap().1.len(), INPUTS_PER_PACKET_MAX);
        // A huge forward jump of the client's tick does not loop or grow.
        p.step(Tick(u64::MAX / 2), fwd(0));
        assert!(p.history_len() <= PREDICTION_HISTORY_MAX);
    }
}
