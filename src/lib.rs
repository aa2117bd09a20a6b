//! # neonet: drivers for the sans-IO engine
//!
//! QUIC transport (quinn + rustls/ring), the relay server runtime, the native client facade,
//! redb persistence, certificates, config and metrics. All world logic lives in
//! [`neonet_proto`]; this crate only moves bytes and time in and out of it.
#![warn(missing_docs)]

pub use neonet_proto as proto;

/// The README's code examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod auth;
pub mod client;
pub mod config;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod quic;
pub mod relay;
pub mod store;
pub mod tls;
