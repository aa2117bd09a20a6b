//! The relay's limits and quotas as the operator sets them: the `[limits]` table of the TOML
//! configuration and the repeatable `--limit NAME=VALUE` flag (same names). Every key is
//! optional; each default is the named constant of the policy that enforces it:
//! `neonet_proto::server::limits` (validation, quotas, rate limits by kind, tokenless joins
//! per address: in the core), `neonet_proto::server::addr` (connections and connection
//! attempts per address: the accept loop) and [`crate::relay`] (the QUIC handshake defences).
//!
//! ```toml
//! [limits]
//! chat_per_s = 2.0
//! chat_burst = 10
//! world_bytes_max = 3145728
//! connections_per_addr_max = 64
//! handshakes_before_retry = 64
//! ```

use serde::{Deserialize, Serialize};

use neonet_proto::server::addr::{AddrLimits, CONNECTIONS_PER_ADDR_MAX_DEFAULT};
use neonet_proto::server::limits::*;

use crate::config::ConfigError;

/// Default handshakes in progress beyond which new connection attempts must prove their
/// address with a QUIC Retry first: 64. Honest clients rarely arrive faster than that; past it
/// the relay is probably being flooded, and a Retry costs a spoofed source its handshake (it
/// never sees the token) for one extra round trip to everyone else.
pub const HANDSHAKES_BEFORE_RETRY_DEFAULT: usize = 64;
/// Default most handshakes in progress at once: 1,024. Beyond it attempts are dropped (the
/// client retries). Handshakes hold no connection (join) slot: a connection takes one of
/// `connections_max` only once its handshake is done.
pub const HANDSHAKES_MAX_DEFAULT: usize = 1_024;

macro_rules! limits_section {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty = $default:expr ),* $(,)?) => {
        /// The `[limits]` table. See the module documentation.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct LimitsSection {
            $( $(#[$doc])* pub $name: $ty, )*
        }

        impl Default for LimitsSection {
            fn default() -> Self {
                LimitsSection { $( $name: $default, )* }
            }
        }

        impl LimitsSection {
            /// Every key, for `--limit` and README.
            pub const KEYS: &'static [&'static str] = &[$( stringify!($name) ),*];

            /// Sets key `name` from its text (`--limit NAME=VALUE`).
            pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
                match name {
                    $( stringify!($name) => {
                        self.$name = value.trim().replace('_', "").parse().map_err(|_| {
                            ConfigError::Invalid(format!("--limit {name}: not a valid number: {value}"))
                        })?;
                    } )*
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "--limit {name}: unknown limit; known: {}",
                            Self::KEYS.join(", ")
                        )))
                    }
                }
                Ok(())
            }
        }
    };
}

limits_section! {
    /// Apps one user may place ([`ENTITIES_PER_USER_MAX_DEFAULT`]).
    entities_per_user_max: u32 = ENTITIES_PER_USER_MAX_DEFAULT,
    /// Blueprint bytes one user may add ([`BLUEPRINT_BYTES_PER_USER_MAX_DEFAULT`]).
    blueprint_bytes_per_user_max: usize = BLUEPRINT_BYTES_PER_USER_MAX_DEFAULT,
    /// Bytes of blueprints and apps in the world ([`WORLD_BYTES_MAX_DEFAULT`]).
    world_bytes_max: usize = WORLD_BYTES_MAX_DEFAULT,
    /// Apps in the world ([`APPS_MAX_DEFAULT`]).
    apps_max: usize = APPS_MAX_DEFAULT,
    /// Largest absolute scale on any axis ([`SCALE_MAX_DEFAULT`]).
    scale_max: f32 = SCALE_MAX_DEFAULT,
    /// Largest push, m/s ([`PUSH_SPEED_MAX_DEFAULT_M_S`]).
    push_speed_max: f32 = PUSH_SPEED_MAX_DEFAULT_M_S,
    /// Largest blueprint version step ([`BLUEPRINT_VERSION_STEP_MAX_DEFAULT`]).
    blueprint_version_step_max: u32 = BLUEPRINT_VERSION_STEP_MAX_DEFAULT,
    /// Chat messages per second per session ([`CHAT_RATE_DEFAULT`]).
    chat_per_s: f64 = CHAT_RATE_DEFAULT.per_s,
    /// Chat messages at once.
    chat_burst: u32 = CHAT_RATE_DEFAULT.burst,
    /// Commands per second per session ([`COMMAND_RATE_DEFAULT`]).
    commands_per_s: f64 = COMMAND_RATE_DEFAULT.per_s,
    /// Commands at once.
    commands_burst: u32 = COMMAND_RATE_DEFAULT.burst,
    /// Reliable changes per second per session ([`CHANGE_RATE_DEFAULT`]).
    changes_per_s: f64 = CHANGE_RATE_DEFAULT.per_s,
    /// Reliable changes at once.
    changes_burst: u32 = CHANGE_RATE_DEFAULT.burst,
    /// Datagrams per second per session ([`DATAGRAM_RATE_DEFAULT`]).
    datagrams_per_s: f64 = DATAGRAM_RATE_DEFAULT.per_s,
    /// Datagrams at once.
    datagrams_burst: u32 = DATAGRAM_RATE_DEFAULT.burst,
    /// Bytes per second per session, frames and datagrams ([`SESSION_BYTES_RATE_DEFAULT`]).
    bytes_per_s: f64 = SESSION_BYTES_RATE_DEFAULT.per_s,
    /// Bytes at once.
    bytes_burst: u32 = SESSION_BYTES_RATE_DEFAULT.burst,
    /// Tokenless joins per second per source address ([`TOKENLESS_JOINS_PER_ADDR_DEFAULT`]).
    tokenless_joins_per_addr_per_s: f64 = TOKENLESS_JOINS_PER_ADDR_DEFAULT.per_s,
    /// Tokenless joins at once per source address.
    tokenless_joins_per_addr_burst: u32 = TOKENLESS_JOINS_PER_ADDR_DEFAULT.burst,
    /// Connections (open or handshaking) per source address
    /// ([`CONNECTIONS_PER_ADDR_MAX_DEFAULT`]).
    connections_per_addr_max: u32 = CONNECTIONS_PER_ADDR_MAX_DEFAULT,
    /// Connection attempts per second per source address
    /// (`neonet_proto::server::addr::CONNECTION_ATTEMPTS_PER_ADDR_DEFAULT`).
    connection_attempts_per_addr_per_s: f64 =
        neonet_proto::server::addr::CONNECTION_ATTEMPTS_PER_ADDR_DEFAULT.per_s,
    /// Connection attempts at once per source address.
    connection_attempts_per_addr_burst: u32 =
        neonet_proto::server::addr::CONNECTION_ATTEMPTS_PER_ADDR_DEFAULT.burst,
    /// Handshakes in progress beyond which new attempts get a QUIC Retry
    /// ([`HANDSHAKES_BEFORE_RETRY_DEFAULT`]); 0 retries every unvalidated attempt.
    handshakes_before_retry: usize = HANDSHAKES_BEFORE_RETRY_DEFAULT,
    /// Most handshakes in progress ([`HANDSHAKES_MAX_DEFAULT`]).
    handshakes_max: usize = HANDSHAKES_MAX_DEFAULT,
}

impl LimitsSection {
    /// Limits for load tests: one address driving thousands of clients at many times a
    /// person's pace. Validation and quotas stay; rates and per-address limits are lifted.
    pub fn for_load() -> LimitsSection {
        let lots = 1e9;
        let burst = u32::MAX / 4;
        LimitsSection {
            chat_per_s: lots,
            chat_burst: burst,
            commands_per_s: lots,
            commands_burst: burst,
            changes_per_s: lots,
            changes_burst: burst,
            datagrams_per_s: lots,
            datagrams_burst: burst,
            bytes_per_s: lots,
            bytes_burst: burst,
            tokenless_joins_per_addr_per_s: lots,
            tokenless_joins_per_addr_burst: burst,
            connections_per_addr_max: u32::MAX,
            connection_attempts_per_addr_per_s: lots,
            connection_attempts_per_addr_burst: burst,
            // Unreachable yet representable in TOML (an i64), so `config_toml` can write it.
            handshakes_before_retry: u32::MAX as usize,
            ..LimitsSection::default()
        }
    }

    /// These limits as a relay configuration file (a `[limits]` table), for tools that start
    /// `neonet-relay` as a child process with `--config`.
    pub fn config_toml(&self) -> Result<String, ConfigError> {
        #[derive(Serialize)]
        struct File<'a> {
            limits: &'a LimitsSection,
        }
        toml::to_string(&File { limits: self })
            .map_err(|e| ConfigError::Invalid(format!("limits as TOML: {e}")))
    }

    /// The core's share: validation, quotas and rates by kind.
    pub fn core(&self) -> LimitsConfig {
        LimitsConfig {
            entities_per_user_max: self.entities_per_user_max,
            blueprint_bytes_per_user_max: self.blueprint_bytes_per_user_max,
            world_bytes_max: self.world_bytes_max,
            apps_max: self.apps_max,
            scale_max: self.scale_max,
            push_speed_max: self.push_speed_max,
            blueprint_version_step_max: self.blueprint_version_step_max,
            chat: RateSpec::new(self.chat_per_s, self.chat_burst),
            commands: RateSpec::new(self.commands_per_s, self.commands_burst),
            changes: RateSpec::new(self.changes_per_s, self.changes_burst),
            datagrams: RateSpec::new(self.datagrams_per_s, self.datagrams_burst),
            bytes: RateSpec::new(self.bytes_per_s, self.bytes_burst),
            tokenless_joins_per_addr: RateSpec::new(
                self.tokenless_joins_per_addr_per_s,
                self.tokenless_joins_per_addr_burst,
            ),
        }
    }

    /// The accept loop's share: per-address connections and attempts.
    pub fn addr(&self) -> AddrLimits {
        AddrLimits {
            connections_per_addr_max: self.connections_per_addr_max,
            attempts_per_addr: RateSpec::new(
                self.connection_attempts_per_addr_per_s,
                self.connection_attempts_per_addr_burst,
            ),
        }
    }

    /// Checks ranges: rates finite and not negative, bursts and caps at least 1.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rates = [
            ("chat_per_s", self.chat_per_s),
            ("commands_per_s", self.commands_per_s),
            ("changes_per_s", self.changes_per_s),
            ("datagrams_per_s", self.datagrams_per_s),
            ("bytes_per_s", self.bytes_per_s),
            (
                "tokenless_joins_per_addr_per_s",
                self.tokenless_joins_per_addr_per_s,
            ),
            (
                "connection_attempts_per_addr_per_s",
                self.connection_attempts_per_addr_per_s,
            ),
        ];
        for (name, v) in rates {
            if !v.is_finite() || v < 0.0 {
                return Err(ConfigError::Invalid(format!(
                    "limits.{name} must be a finite number ≥ 0, not {v}"
                )));
            }
        }
        let at_least_one = [
            ("chat_burst", u64::from(self.chat_burst)),
            ("commands_burst", u64::from(self.commands_burst)),
            ("changes_burst", u64::from(self.changes_burst)),
            ("datagrams_burst", u64::from(self.datagrams_burst)),
            ("bytes_burst", u64::from(self.bytes_burst)),
            (
                "tokenless_joins_per_addr_burst",
                u64::from(self.tokenless_joins_per_addr_burst),
            ),
            (
                "connection_attempts_per_addr_burst",
                u64::from(self.connection_attempts_per_addr_burst),
            ),
            (
                "connections_per_addr_max",
                u64::from(self.connections_per_addr_max),
            ),
            ("handshakes_max", self.handshakes_max as u64),
            ("world_bytes_max", self.world_bytes_max as u64),
        ];
        for (name, v) in at_least_one {
            if v == 0 {
                return Err(ConfigError::Invalid(format!(
                    "limits.{name} must be at least 1"
                )));
            }
        }
        let scale_ok = self.scale_max.is_finite() && self.scale_max > 0.0;
        let push_ok = self.push_speed_max.is_finite() && self.push_speed_max >= 0.0;
        if !(scale_ok && push_ok) {
            return Err(ConfigError::Invalid(
                "limits.scale_max and limits.push_speed_max must be finite and positive".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_flags_set_limits_by_the_same_names_and_typos_are_errors() {
        let c: crate::config::RelayConfig =
            toml::from_str("[limits]\nchat_per_s = 5.0\nconnections_per_addr_max = 8").unwrap();
        assert_eq!(c.limits.chat_per_s, 5.0);
        assert_eq!(c.limits.connections_per_addr_max, 8);
        assert_eq!(
            c.limits.core().chat,
            RateSpec::new(5.0, CHAT_RATE_DEFAULT.burst)
        );
        assert!(toml::from_str::<crate::config::RelayConfig>("[limits]\nchat_per = 5").is_err());
        let mut l = LimitsSection::default();
        l.set("world_bytes_max", "1_000_000").unwrap();
        assert_eq!(l.world_bytes_max, 1_000_000);
        assert!(l.set("world_bytes", "1").is_err());
        assert!(l.set("chat_per_s", "lots").is_err());
        l.set("chat_burst", "0").unwrap();
        assert!(l.validate().is_err());
        assert_eq!(LimitsSection::default().core(), LimitsConfig::default());
    }
}
#[cfg(test)]
mod config_toml_tests {
    use super::LimitsSection;

    #[test]
    fn load_test_limits_survive_a_trip_through_a_relay_config_file() {
        let limits = LimitsSection::for_load();
        let text = limits.config_toml().expect("serializes");
        let config: crate::config::RelayConfig = toml::from_str(&text).expect("parses");
        assert_eq!(config.limits, limits);
    }
}
