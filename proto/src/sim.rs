//! The deterministic simulated network.
