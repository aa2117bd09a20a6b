//! Light clients for `neonet-load run --client light`: the protocol exactly, without the work a
//! player's machine does for its display.
//!
//! - [`core`]: the protocol, sans-IO ([`core::LightCore`]), driven over real QUIC by [`driver`] and
//!   over the simulated network by the test in this module.
//! - [`driver`]: one task per client around a `LightCore` and its QUIC connection.
//!
//! Where the wire format lives, so the light client follows it: the upstream datagram
//! ([`neonet_proto::transform::encode_client_datagram_clocked`], stamped when
//! [`neonet_proto::predict::ClockSync::poll_stamp`] says so), its ack header
//! ([`neonet_proto::transform::AckTracker`]), inputs ([`neonet_proto::predict::wire::encode_inputs`]
//! over the protocol's [`neonet_proto::predict::Predictor`]), the server datagram's header
//! ([`neonet_proto::transform::decode_server_header`], the same reader the full client's receiver
//! uses, with the clock echo fed to [`neonet_proto::predict::ClockSync::handle_echo`]), the
//! own-state blob ([`neonet_proto::predict::wire::decode_own_state`]) and frames
//! ([`neonet_proto::wire::codec`]). When a client sends what is the full client's decision,
//! shared through the protocol crate: [`neonet_proto::client::UpstreamRule`],
//! [`neonet_proto::client::datagram_wants_ack`], [`neonet_proto::client::fallback_ping_at`].
//! A change to any of these in the protocol crate reaches the
//! light client without touching it; a new field the client must *send* (a timestamp in its
//! datagram, say) is added in [`core::LightCore`]'s `send_upstream` beside the full client's.

pub mod core;
pub mod driver;

pub use self::driver::light_client_task;

#[cfg(test)]
mod tests;
