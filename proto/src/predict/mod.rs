//! Client prediction, server reconciliation, clock sync and interpolation.
pub mod bench;
pub mod client;
pub mod clock;
pub mod interp;
pub mod movement;
pub mod predictor;
pub mod server;
pub mod wire;
