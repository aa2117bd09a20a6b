//! The wire protocol, described in full in `PROTOCOL.md`: what travels ([`msg`]), how it is
//! framed and encoded ([`codec`]), and every limit a peer must keep ([`limits`]).
//!
//! The protocol crate owns the limits: a driver never picks a frame limit of its own. It asks
//! for the decoder of a channel ([`codec::FrameDecoder::for_client_channel`] on a server,
//! [`codec::FrameDecoder::for_server_channel`] on a client), which carries that channel's limit.

pub mod codec;
pub mod limits;
pub mod msg;
pub mod pieces;
