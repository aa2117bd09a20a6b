//! Client prediction, server reconciliation, clock sync and interpolation.
//!
//! The local player answers input at once and stays in exact agreement with the authoritative
//! server; remote entities move smoothly; both hold on bad networks. Everything here is sans-IO:
//! time is an argument, randomness (in the bench) is seeded.
//!
//! - [`movement`]: the [`movement::Movement`] trait a game implements and the built-in
//!   [`movement::KinematicCharacter`]. Deterministic `f32` (no libm transcendentals, no FMA) and
//!   quantized after every step, so client and server agree bit for bit and a misprediction is
//!   plain inequality.
//! - [`wire`]: the input datagram payload (the last unacknowledged inputs, each for its tick) and
//!   the 39-byte own-player blob (`server tick, last input tick applied, teleport counter, state`).
//! - [`server`]: [`server::InputBuffer`] (one input per player per tick, jitter absorbed, missing
//!   input repeated, bounded), [`server::PlayerMotion`] (buffer + state + blob per player) and
//!   [`server::MoveValidator`] for client-authoritative worlds (speed and bounds).
//! - [`predictor`]: [`predictor::Predictor`]: compare, restore, replay; visual error smoothing;
//!   correction statistics.
//! - [`clock`]: [`clock::ClockSync`] (offset and RTT from ping/pong, min-RTT filter, windowed
//!   quantiles) and [`clock::ClientTickClock`] (runs the prediction tick just ahead of the server,
//!   slewing its rate).
//! - [`interp`]: [`interp::Interpolation`]: per-entity sample buffers rendered at an adaptive
//!   delay (≈ 3 send intervals + jitter), lerp and slerp, teleport snap, bounded extrapolation.
//! - [`client`]: [`client::PredictedClient`], the one type a client drives.
//! - `bench` (feature `sim`): `bench::bench_run`, the crowd simulation the load tool reports
//!   from.
//!
//! ## Per tick, server-authoritative mode
//! Server, for each player's [`server::PlayerMotion`]: on an input datagram,
//! `handle_input_datagram(payload)`; at each tick `tick(t)`, then put `own_state_blob()` in that
//! player's transform datagram and `transform()` in everyone else's. To place a player,
//! `teleport(state)`.
//!
//! Client ([`client::PredictedClient`]): receive (`handle_echo` for a datagram's clock echo,
//! `handle_pong`, `handle_own_state`, `handle_transforms_datagram` + `handle_entity_transform`);
//! `while let Some(t) = poll_tick(now)`, sample input and send `apply_input(t, input)`, with the
//! client's clock when `poll_stamp(now)` says; send a ping when `poll_ping(now)` says (only until
//! the first clock echo); render with `begin_frame`, `player_transform`, `entity_transform`.
//!
//! ## Client-authoritative mode
//! The client sends its own transform; the server passes each to its player's
//! [`server::MoveValidator::validate`] and, on a rejection, keeps
//! [`server::MoveValidator::accepted`] and tells the client where it is.
//!
//! ## Why tick numbers, not times, key the prediction
//! Inputs are stamped with the server tick they are meant for and the server acknowledges by the
//! tick it simulated, so reconciliation never depends on clock accuracy: the clock sync only
//! decides how early the client runs, i.e. whether inputs arrive in time. A late input is not an
//! error, just a repeated input on the server and one correction on the client.

#[cfg(feature = "sim")]
pub mod bench;
pub mod client;
pub mod clock;
pub mod interp;
pub mod movement;
pub mod predictor;
pub mod server;
pub mod wire;

#[cfg(feature = "sim")]
pub use bench::{bench_run, PredictionReport};
pub use client::PredictedClient;
pub use clock::{ClientTickClock, ClockSync, EchoSample, PingSample};
pub use interp::{Interpolation, Interpolator};
pub use movement::{CharacterConfig, CharacterInput, CharacterState, KinematicCharacter, Movement};
pub use predictor::{Authoritative, CorrectionStats, Predictor, PredictorConfig, Reconciliation};
pub use server::{InputBuffer, MoveRejection, MoveValidator, PlayerMotion, ValidatorConfig};
pub use wire::{
    decode_inputs, decode_own_state, encode_inputs, encode_own_state, InputBatch, OwnState,
    WireError,
};
