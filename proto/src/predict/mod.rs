//! Client prediction, server reconciliation, clock sync and interpolation.
pub mod movement;
pub mod server;
pub mod wire;
pub mod predictor;
pub mod clock;
pub mod interp;
pub mod bench;
