//! Light clients for `neonet-load run --client light`: the protocol exactly, without the work a
//! player's machine does for its display.
//!
//! - [`core`]: the protocol, sans-IO ([`core::LightCore`]), driven over real QUIC by a driver and
//!   over the simulated network by the test in this module.
//! - [`session`]: what a joined client does and measures (its script, update latency, answers
//!   to its changes, its outcome), the same under either driver.
//! - [`single_loop`] (`--light-driver loop`, the default): every client's core and quinn-proto
//!   connection driven from one event loop on one thread.
//! - [`tasks`] (`--light-driver tasks`): one tokio task per client over quinn's own driver and
//!   neonet's stream tasks, the transport a real client has.
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
pub mod session;
pub mod single_loop;
pub mod tasks;

pub use self::single_loop::{LightLoop, LOOP_SHARE_DEFAULT};
pub use self::tasks::light_client_task;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod loopback_tests;
