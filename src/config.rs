//! The relay's configuration: documented defaults and units, loadable from TOML.
//!
//! Precedence in `neonet-relay`: built-in defaults < the TOML file (`--config FILE`) < flags.
//! Every field is optional in the file; unknown keys are an error (a typo should not be silently
//! ignored). Relative paths are relative to the working directory.
//!
//! ```toml
//! listen = "0.0.0.0:4433"
//! http_listen = "127.0.0.1:4480"
//! data_dir = "data"
//! cert_dir = "certs"
//! tick_hz = 30
//! player_limit = 0
//! log_level = "info"
//! persist = true
//! spawn_at_last_position = true
//! dirty_flush_interval_ms = 1000
//! token_ttl_s = 604800               # 7 days
//! # backend_key_path = "backend.pub" # trust a game backend's tokens
//! # backend_key_alg = "EdDSA"        # HS256 (a secret file), EdDSA or ES256 (a PEM public key)
//! # backend_key_id = "game-1"
//!
//! [limits]          # every limit and quota: see `crate::limits`
//! chat_per_s = 2.0
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use neonet_proto::time::{TICK_HZ_DEFAULT, TICK_HZ_MAX, TICK_HZ_MIN};

/// The relay's default UDP port for QUIC. 4433 is the customary QUIC/HTTP-3 development port and
/// needs no privileges.
pub const DEFAULT_PORT: u16 = 4433;
/// The default TCP port of the metrics/status HTTP server (on loopback only by default).
pub const DEFAULT_HTTP_PORT: u16 = 4480;
/// The default data folder, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "data";
/// Default most simultaneous transport connections (joined or not). Each costs a few tasks and
/// buffers; a player limit is a separate, world-level setting.
pub const CONNECTIONS_MAX_DEFAULT: usize = 4096;
/// Default resume grace period, ms: the core's [`neonet_proto::server::RESUME_GRACE_DEFAULT`].
pub const RESUME_GRACE_MS_DEFAULT: u64 =
    neonet_proto::server::RESUME_GRACE_DEFAULT.as_millis() as u64;
/// Longest resume grace period, ms: an hour. A lost player stands in the world for all of it.
pub const RESUME_GRACE_MS_MAX: u64 = 3_600_000;
/// Default QUIC idle timeout, ms: defined with the transport, which the client shares.
pub use crate::quic::IDLE_TIMEOUT_MS_DEFAULT;
/// Default interval between writes of fast-changing state (moving apps), ms: the store's
/// [`crate::store::DIRTY_FLUSH_INTERVAL_DEFAULT`]. A crash loses at most this much motion.
pub const DIRTY_FLUSH_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// Longest allowed [`RelayConfig::dirty_flush_interval_ms`]: one day, the store's own bound.
pub const DIRTY_FLUSH_INTERVAL_MS_MAX: u64 = 86_400_000;

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this struct.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Which driver serves the relay's native QUIC connections (`quic_driver` in the
/// configuration, `--quic-driver`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QuicDriver {
    /// quinn's tokio driver: a task per connection and per stream. Native clients and browsers'
    /// WebTransport share one UDP port. The default.
    #[default]
    Tasks,
    /// One loop on one thread over quinn-proto (`relay::quic_loop`): less CPU per client,
    /// Linux only; WebTransport moves to a port of its own (`listen`'s port + 1).
    Loop,
}

/// The relay's configuration. See the module documentation for precedence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// UDP address QUIC listens on. Default `0.0.0.0:4433` ([`DEFAULT_PORT`]); port 0 picks a
    /// free port (see `RelayHandle::local_addr`).
    pub listen: SocketAddr,
    /// TCP address of the metrics/status HTTP server ([`crate::http`]), `None` for none
    /// (`--no-http`). Default `127.0.0.1:4480` ([`DEFAULT_HTTP_PORT`]): loopback only, since the
    /// page is for operators.
    pub http_listen: Option<SocketAddr>,
    /// Folder for the world's data and the token key. Default `./data`. Created if absent.
    pub data_dir: PathBuf,
    /// Folder of the generated development certificate. Default `./certs`. Created if absent.
    /// Ignored when `cert_path` and `key_path` are set.
    pub cert_dir: PathBuf,
    /// A real certificate chain (PEM, or one DER certificate). Needs `key_path`.
    pub cert_path: Option<PathBuf>,
    /// The private key (PEM) of `cert_path`.
    pub key_path: Option<PathBuf>,
    /// Server tick rate, Hz (10–120). Default 30.
    pub tick_hz: u16,
    /// Most joined players. Default 0, which keeps the world's own setting (unlimited in a new
    /// world); a positive value overrides it at start.
    pub player_limit: u32,
    /// Most simultaneous QUIC connections, joined or not. Default [`CONNECTIONS_MAX_DEFAULT`].
    pub connections_max: usize,
    /// QUIC idle timeout, milliseconds: a peer silent this long is dead (on both sides, and in
    /// the core for transports without one). Default [`IDLE_TIMEOUT_MS_DEFAULT`] (3 s).
    pub idle_timeout_ms: u64,
    /// How long a player whose connection was lost is kept (marked `lost`) for its client to
    /// resume the session, milliseconds; 0: no resume, a lost connection is a leave. Default
    /// [`RESUME_GRACE_MS_DEFAULT`] (30 s).
    pub resume_grace_ms: u64,
    /// Log filter: a level, or `target=level` pairs (`info`, `neonet=debug,warn`; tracing's
    /// `Targets` syntax). Default `info`;
    /// `RUST_LOG` wins when set and no flag is given.
    pub log_level: String,
    /// Keep the world in the redb database in `data_dir` ([`crate::store`]), created on first
    /// start: acknowledgements wait until a change is durable. Default `true`; `false` hosts an
    /// in-memory world that is gone when the relay stops (tests, demos).
    pub persist: bool,
    /// A returning user spawns where they left instead of at the spawn point. Default `true`.
    pub spawn_at_last_position: bool,
    /// How often fast-changing state (apps moved by their owners' datagrams) is written,
    /// milliseconds (1 to [`DIRTY_FLUSH_INTERVAL_MS_MAX`]). Default
    /// [`DIRTY_FLUSH_INTERVAL_MS_DEFAULT`]. Only with `persist`.
    pub dirty_flush_interval_ms: u64,
    /// The secret a user types as `/admin CODE` in chat to become an admin (stored: it lasts
    /// across sessions). `None` (the default): nobody can become admin this way, so give it
    /// to run a world someone administers. Env `NEONET_ADMIN_CODE` or `--admin-code`.
    pub admin_code: Option<String>,
    /// Origins besides the relay's own page allowed to open WebSocket sessions from a browser
    /// (`https://game.example`, exactly as a browser sends `Origin`). Default none: only pages
    /// the relay serves itself.
    pub browser_origins: Vec<String>,
    /// Which driver serves native QUIC connections: `"tasks"` (quinn's, the default: native
    /// clients and browsers' WebTransport on one UDP port) or `"loop"` (one loop on one thread
    /// over quinn-proto, less CPU per client, Linux only; WebTransport then listens on
    /// `listen`'s port + 1, or a free port when `listen`'s port is 0, and `/connect.json` says
    /// which). `--quic-driver`.
    pub quic_driver: QuicDriver,
    /// Limits and quotas (the `[limits]` table, `--limit NAME=VALUE`): validation, quotas, rate
    /// limits by kind, per-address limits, QUIC handshake defences. See [`crate::limits`].
    pub limits: crate::limits::LimitsSection,
    // ---- identity and tokens (issue 15: tokens, moderation) ----
    /// How long tokens the relay hands out stay valid, seconds (60 to
    /// [`TOKEN_TTL_S_MAX`]). Default [`TOKEN_TTL_S_DEFAULT`] (7 days). A session is sent a fresh
    /// one half-way through; a copied token works at most this long unless revoked.
    pub token_ttl_s: u64,
    /// A game backend's key to trust for players' tokens: a file holding an HS256 secret (at
    /// least 32 bytes) or a PEM public key (EdDSA, ES256). Default none.
    pub backend_key_path: Option<PathBuf>,
    /// The algorithm of `backend_key_path`: `HS256`, `EdDSA` or `ES256`. Default `HS256`.
    pub backend_key_alg: String,
    /// The `kid` the backend's tokens carry; default none (its tokens carry no `kid`).
    pub backend_key_id: Option<String>,
}

/// Default lifetime of the relay's tokens: 7 days, seconds (see `ServerConfig::token_ttl`).
pub const TOKEN_TTL_S_DEFAULT: u64 = 7 * 24 * 3600;
/// Longest token lifetime: 365 days, seconds. A longer-lived token is a password that never
/// changes.
pub const TOKEN_TTL_S_MAX: u64 = 365 * 24 * 3600;

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            http_listen: Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                DEFAULT_HTTP_PORT,
            )),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            cert_dir: PathBuf::from(crate::tls::DEFAULT_CERT_DIR),
            cert_path: None,
            key_path: None,
            tick_hz: TICK_HZ_DEFAULT,
            player_limit: 0,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
            resume_grace_ms: RESUME_GRACE_MS_DEFAULT,
            log_level: "info".into(),
            persist: true,
            spawn_at_last_position: true,
            dirty_flush_interval_ms: DIRTY_FLUSH_INTERVAL_MS_DEFAULT,
            admin_code: None,
            browser_origins: Vec::new(),
            quic_driver: QuicDriver::Tasks,
            limits: crate::limits::LimitsSection::default(),
            token_ttl_s: TOKEN_TTL_S_DEFAULT,
            backend_key_path: None,
            backend_key_alg: "HS256".into(),
            backend_key_id: None,
        }
    }
}

impl RelayConfig {
    /// Reads a TOML file; fields it omits keep their defaults.
    pub fn from_toml_file(path: &Path) -> Result<RelayConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// A configuration for tests: listens on `127.0.0.1:0`, keeps certificates and data under
    /// `dir`, no HTTP server, no persistence (set `persist` to test it).
    pub fn for_tests(dir: &Path) -> RelayConfig {
        RelayConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            http_listen: None,
            data_dir: dir.join(DEFAULT_DATA_DIR),
            cert_dir: dir.join(crate::tls::DEFAULT_CERT_DIR),
            persist: false,
            ..RelayConfig::default()
        }
    }

    /// The interval between writes of fast-changing state.
    pub fn dirty_flush_interval(&self) -> Duration {
        Duration::from_millis(self.dirty_flush_interval_ms)
    }

    /// The QUIC idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// How long the relay's tokens stay valid.
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_s)
    }

    /// The configured backend key, read from its file.
    pub fn backend_key(&self) -> Result<Option<crate::auth::BackendKey>, crate::auth::AuthError> {
        self.backend_key_path
            .as_deref()
            .map(|p| {
                crate::auth::BackendKey::from_file(
                    self.backend_key_id.clone(),
                    &self.backend_key_alg,
                    p,
                )
            })
            .transpose()
    }

    /// How long a lost session waits for a resume.
    pub fn resume_grace(&self) -> Duration {
        Duration::from_millis(self.resume_grace_ms)
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(TICK_HZ_MIN..=TICK_HZ_MAX).contains(&self.tick_hz) {
            return Err(ConfigError::Invalid(format!(
                "tick_hz must be {TICK_HZ_MIN} to {TICK_HZ_MAX}, not {}",
                self.tick_hz
            )));
        }
        if self.cert_path.is_some() != self.key_path.is_some() {
            return Err(ConfigError::Invalid(
                "cert_path and key_path must be given together".into(),
            ));
        }
        if self.connections_max == 0 {
            return Err(ConfigError::Invalid(
                "connections_max must be at least 1".into(),
            ));
        }
        if self.quic_driver == QuicDriver::Loop && !cfg!(target_os = "linux") {
            return Err(ConfigError::Invalid(
                "quic_driver = \"loop\" needs Linux (sendmmsg, eventfd); use \"tasks\"".into(),
            ));
        }
        // Quinn encodes the idle timeout as a QUIC varint of milliseconds; keep it sane.
        if !(1_000..=3_600_000).contains(&self.idle_timeout_ms) {
            return Err(ConfigError::Invalid(
                "idle_timeout_ms must be 1000 to 3600000".into(),
            ));
        }
        if !(60..=TOKEN_TTL_S_MAX).contains(&self.token_ttl_s) {
            return Err(ConfigError::Invalid(format!(
                "token_ttl_s must be 60 to {TOKEN_TTL_S_MAX}"
            )));
        }
        if !matches!(self.backend_key_alg.as_str(), "HS256" | "EdDSA" | "ES256") {
            return Err(ConfigError::Invalid(
                "backend_key_alg must be HS256, EdDSA or ES256".into(),
            ));
        }
        if self.resume_grace_ms > RESUME_GRACE_MS_MAX {
            return Err(ConfigError::Invalid(format!(
                "resume_grace_ms must be 0 to {RESUME_GRACE_MS_MAX}"
            )));
        }
        if !(1..=DIRTY_FLUSH_INTERVAL_MS_MAX).contains(&self.dirty_flush_interval_ms) {
            return Err(ConfigError::Invalid(format!(
                "dirty_flush_interval_ms must be 1 to {DIRTY_FLUSH_INTERVAL_MS_MAX}"
            )));
        }
        self.limits.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_toml_overrides_fields() {
        RelayConfig::default().validate().unwrap();
        let c: RelayConfig = toml::from_str("tick_hz = 60\nlisten = \"127.0.0.1:9000\"").unwrap();
        assert_eq!(c.tick_hz, 60);
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert!(toml::from_str::<RelayConfig>("tick_hzz = 60").is_err());
        let bad = RelayConfig {
            tick_hz: 500,
            ..RelayConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
