//! # neonet: drivers for the sans-IO engine
//!
//! QUIC transport (quinn + rustls/ring), the relay server runtime, the native client facade,
//! redb persistence, certificates, config and metrics. All world logic lives in
//! [`neonet_proto`]; this crate only moves bytes and time in and out of it.
//!
//! ## Features
//! - `relay` (default): the relay server and everything only it needs ([`relay`], [`store`],
//!   [`http`], [`metrics`], [`auth`], [`config`], the browsers' [`bridge`], the `neonet-relay`
//!   binary) with their
//!   dependencies (redb, axum, the Prometheus exporter, clap, toml). A game that only connects to
//!   a relay depends on `neonet` with `default-features = false` and gets [`client`], [`quic`]
//!   and [`tls`].
#![warn(missing_docs)]

pub use neonet_proto as proto;

/// The README's code examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(feature = "relay")]
pub mod auth;
#[cfg(feature = "relay")]
pub mod bridge;
pub mod client;
#[cfg(feature = "relay")]
pub mod config;
#[cfg(feature = "relay")]
pub mod http;
#[cfg(feature = "relay")]
pub mod limits;
#[cfg(feature = "relay")]
pub mod metrics;
pub mod quic;
#[cfg(feature = "relay")]
pub mod relay;
#[cfg(feature = "relay")]
pub mod store;
pub mod tls;
