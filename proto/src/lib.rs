//! # neonet-proto: the sans-IO engine
//!
//! Everything neonet decides lives here, with no sockets, no async runtime, no TLS, no database,
//! no clock and no OS randomness: time is an argument ([`time::Time`]) and randomness is seeded
//! ([`rng::Rng`]). Drivers in the `neonet` crate carry bytes between these cores and the network.
//!
//! - [`wire`]: the wire protocol, [`wire::msg`], [`wire::codec`], [`wire::limits`] (described
//!   in full in `PROTOCOL.md`).
//! - [`types`]: the world's data.
//! - [`server`]: [`server::ServerCore`], the authoritative world, one room per concern.
//! - [`persist`]: the one persistence vocabulary the core emits and a store consumes.
//! - [`client`]: [`client::ClientCore`], one participant's view.
//! - [`transform`]: quantization, delta compression, priorities and interest for entity motion.
//! - [`predict`]: movement model, prediction and reconciliation, clock sync, interpolation.
//! - `sim` (feature `sim`, off by default): the deterministic simulated network, the motion
//!   scenarios and the prediction bench, for tests, benches and the load tool.
//!
//! ## Driving a core
//! Like quinn-proto: feed inputs with `handle_*(…, now)`, then drain outputs with `poll_*` until
//! they return `None`, and call `handle_timeout(now)` no later than `poll_timeout()`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub(crate) mod idhash;
pub mod persist;
pub mod predict;
pub mod rng;
pub mod server;
#[cfg(feature = "sim")]
pub mod sim;
pub mod time;
pub mod transform;
pub mod types;
pub mod wire;

pub use time::Time;
pub use wire::msg::{ClientMsg, ServerMsg};
