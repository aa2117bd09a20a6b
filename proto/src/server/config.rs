//! The server core's configuration and the names it gives connections.

use std::time::Duration;

use crate::predict::CharacterConfig;
use crate::transform::TransformConfig;

/// A transport connection, numbered by the driver. Unique for the server's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Which transport a connection uses (for logs, metrics and per-transport rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// QUIC (quinn): reliable streams per channel plus unreliable datagrams.
    Quic,
    /// A browser's WebTransport session (HTTP/3 over QUIC): the same streams and datagrams as
    /// [`TransportKind::Quic`].
    WebTransport,
    /// A browser's WebSocket: one ordered reliable byte stream (TCP), datagrams carried on it
    /// latest-wins.
    WebSocket,
    /// The simulated network.
    Sim,
}

/// Default [`ServerConfig::idle_timeout`]: 2.5 s, so the others see a dead peer as "connection
/// lost" within 3 s. Clients ping 5 times a second (clock sync), so a dozen missed pings mean a
/// dead peer or path; players see a lost connection at once, not a ghost standing for 30 s.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_millis(2500);

/// Default [`ServerConfig::resume_grace`]: 30 s, long enough for a phone changing networks or a
/// relay restart, short enough that a player who is gone does not stand in the world for long.
pub const RESUME_GRACE_DEFAULT: Duration = Duration::from_secs(30);

/// Server configuration. Defaults are the relay's.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Tick rate, Hz (10–120, default 30).
    pub tick_hz: u16,
    /// Unix time in milliseconds at `Time::ZERO`, so chat timestamps are wall-clock times.
    pub unix_ms_at_zero: u64,
    /// Acks wait for [`super::ServerCore::handle_store`] to report the change durable (with
    /// persistence) instead of going out at once.
    pub durable_acks: bool,
    /// A returning user spawns where they left instead of at the spawn point.
    pub spawn_at_last_position: bool,
    /// A connection silent for this long is closed with `Timeout` (the transport's own idle
    /// timeout usually fires first; this one covers transports without one). Default
    /// [`IDLE_TIMEOUT_DEFAULT`]. Its session is kept for [`ServerConfig::resume_grace`].
    pub idle_timeout: Duration,
    /// How long a session whose connection was lost (a transport disconnect or the idle timeout,
    /// not a close for a reason) is kept, its player in the world marked
    /// [`super::LOST_PROP`], for its client to resume it (`ClientMsg::Resume`). Past it the
    /// session ends as an ordinary leave. Zero: no resume, a lost connection ends its session
    /// at once. Default [`RESUME_GRACE_DEFAULT`].
    pub resume_grace: Duration,
    /// Seeds the generator of resume tokens. A driver sets it from the OS random source (the
    /// core never reads it); a resume also needs the user's auth token, so a guessed resume
    /// token alone resumes nothing.
    pub resume_seed: u64,
    /// A connection that has not joined (sent a valid `Hello`) this long after connecting is
    /// closed with `Timeout`, so that peers which never join cannot hold connection slots.
    pub join_timeout: Duration,
    /// Transform codec: world bounds, precision, per-client budget, interest radius. Its
    /// `tick_hz` is overwritten by `tick_hz` above.
    pub transform: TransformConfig,
    /// The built-in movement model's tunables (server-authoritative movement and validation).
    pub character: CharacterConfig,
    /// The secret `/admin CODE` takes to make the sender an admin; `None`: the command is
    /// refused (ranks then change only through `ModifyRank` by an existing admin).
    pub admin_code: Option<String>,
    /// Reliable messages a session may send per second, sustained (token bucket refill).
    pub messages_per_s: u32,
    /// Reliable messages a session may send in a burst (token bucket size). Past it, changes
    /// are refused with `RateLimited`; a session refused more than a whole burst within
    /// [`super::FLOOD_WINDOW`] is closed with `Flooding`.
    pub message_burst: u32,
    /// Validation limits, quotas and rate limits by kind (see [`super::limits`]).
    pub limits: super::limits::LimitsConfig,
    // ---- identity and tokens (issue 15: tokens, moderation) ----
    /// How long a token the core hands out (in the snapshot, or `AuthToken` half-way through
    /// the previous one's life) stays valid. A stolen token works at most this long unless its
    /// user's tokens are revoked first.
    pub token_ttl: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            tick_hz: crate::time::TICK_HZ_DEFAULT,
            unix_ms_at_zero: 0,
            durable_acks: false,
            spawn_at_last_position: true,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            resume_grace: RESUME_GRACE_DEFAULT,
            resume_seed: 0,
            // A handshake takes milliseconds and the client sends `Hello` right after it; 10 s
            // leaves room for a slow link and a loaded server.
            join_timeout: Duration::from_secs(10),
            admin_code: None,
            // Ten times a busy editor's pace; the load tool's 200 changes/s per client fits.
            messages_per_s: 1000,
            message_burst: 2000,
            limits: super::limits::LimitsConfig::default(),
            // A week: a player who comes back within a week stays the same user without a
            // backend; a copied token stops working within a week of being copied.
            token_ttl: Duration::from_secs(7 * 24 * 3600),
            transform: TransformConfig::default(),
            character: CharacterConfig {
                // Keep players inside what the transform codec can represent.
                bounds_min: crate::transform::config::BOUNDS_MIN_DEFAULT_M,
                bounds_max: crate::transform::config::BOUNDS_MAX_DEFAULT_M,
                ..CharacterConfig::default()
            },
        }
    }
}
