//! The operator's limits: what a valid value is (scale, push speed, blueprint version steps),
//! the quotas that keep the world joinable (per user and per world), and the rate limits by
//! kind (per session, and per source address for tokenless joins). Every one is named here
//! with its unit, its default and the reason for it; the relay exposes each as a flag and a TOML
//! key (`src/config.rs`), and README's "Limits and quotas" lists them.
//!
//! Rate limits are hand-written token buckets ([`super::rate::MessageRate`]) driven by the
//! core's `now`, not the `governor` crate: governor reads its own clock (`quanta`/`Instant`),
//! and the core must never read a clock (the simulated network drives it with virtual time,
//! and the boundary test forbids clocks below the driver line). A bucket is 24 bytes; one per
//! kind per session.

use crate::wire::limits::{ENTITIES_MAX, FRAME_BYTES_MAX};

/// A token bucket's shape: `per_s` tokens per second sustained, `burst` at once. A unit of
/// "token" is a message, a datagram or a byte, as the field using it says.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateSpec {
    /// Sustained rate, tokens per second (0 refuses everything past the burst, forever).
    pub per_s: f64,
    /// Bucket size, tokens: what may be spent at once after a quiet spell.
    pub burst: u32,
}

impl RateSpec {
    /// A bucket of `burst` tokens refilled at `per_s`.
    pub const fn new(per_s: f64, burst: u32) -> RateSpec {
        RateSpec { per_s, burst }
    }
}

/// Default most app entities one user may have placed: 2,000. A large build by one person;
/// fifty such builders still leave room under [`APPS_MAX_DEFAULT`].
pub const ENTITIES_PER_USER_MAX_DEFAULT: u32 = 2_000;
/// Default most blueprint bytes one user may have added (their estimated encoded size, see
/// [`blueprint_bytes`](super::quota::blueprint_bytes)): 1 MiB, a few big blueprints with inline
/// scripts; the rest belongs in an asset store.
pub const BLUEPRINT_BYTES_PER_USER_MAX_DEFAULT: usize = 1024 * 1024;
/// Default most bytes of blueprints and app entities the whole world may hold (estimated
/// encoded size): 3 MiB. The snapshot is one frame on the world stream, and a frame larger than
/// a connection's send queue (4 MiB, `CHANNEL_QUEUE_BYTES_MAX` in the relay) is only taken when
/// that queue is empty, after which every broadcast overflows it: 3 MiB of world plus players,
/// chat and settings stays under it, so a world at this cap still admits a newcomer.
pub const WORLD_BYTES_MAX_DEFAULT: usize = 3 * 1024 * 1024;
/// Entity slots kept for players: 10,000 (more than the relay's default connection limit of
/// 4,096), so apps can never fill the world's entity limit and lock players out.
pub const PLAYER_ENTITY_RESERVE: usize = 10_000;
/// Default most app entities in the world: [`ENTITIES_MAX`] less [`PLAYER_ENTITY_RESERVE`].
pub const APPS_MAX_DEFAULT: usize = ENTITIES_MAX - PLAYER_ENTITY_RESERVE;
/// Default largest scale factor on any axis (absolute): 1,000, a 1 m model becomes a 1 km one,
/// the size of the default world.
pub const SCALE_MAX_DEFAULT: f32 = 1_000.0;
/// Default largest push, m/s: 50, well above any jump or knock-back (the movement model's
/// run speed is ~6 m/s) and far below what tunnels a player out of the world in one tick.
pub const PUSH_SPEED_MAX_DEFAULT_M_S: f32 = 50.0;
/// Default largest step one `BlueprintModify` may advance a blueprint's version by (and the
/// highest version a new blueprint may start at): 1,000. Editors send known + 1; a large jump
/// (`u32::MAX`) would freeze the blueprint for everyone else.
pub const BLUEPRINT_VERSION_STEP_MAX_DEFAULT: u32 = 1_000;

/// Default chat rate per session: 2 messages/s sustained, 10 at once. People type slower;
/// the former limit was the generic 1,000 messages/s.
pub const CHAT_RATE_DEFAULT: RateSpec = RateSpec::new(2.0, 10);
/// Default command rate per session: 2/s sustained, 10 at once (`/name`, `/admin`, moderation).
pub const COMMAND_RATE_DEFAULT: RateSpec = RateSpec::new(2.0, 10);
/// Default rate of reliable changes per session (blueprints, entities, settings, spawn, ranks,
/// events, teleports, pushes): 200/s sustained, 400 at once: the load tool's edit pace per
/// client, and an editor dragging a slider.
pub const CHANGE_RATE_DEFAULT: RateSpec = RateSpec::new(200.0, 400);
/// Default datagram rate per session: 240/s sustained, 480 at once. A client sends one per
/// tick or frame (30–144 Hz); four times a 60 Hz client's pace leaves room for jitter bursts.
pub const DATAGRAM_RATE_DEFAULT: RateSpec = RateSpec::new(240.0, 480);
/// Default bytes per session (reliable frames and datagrams): 512 KiB/s sustained, 4 MiB at
/// once: a few of the largest frames ([`FRAME_BYTES_MAX`], a big blueprint) back to back.
pub const SESSION_BYTES_RATE_DEFAULT: RateSpec =
    RateSpec::new(512.0 * 1024.0, 4 * FRAME_BYTES_MAX as u32);
/// Default tokenless joins per source address: 1 per 2 s sustained (30/min), 20 at once. Every
/// tokenless join creates and stores a user; a household or a class behind one address still
/// joins at once, a script making a thousand users from one address is held to 30 a minute.
pub const TOKENLESS_JOINS_PER_ADDR_DEFAULT: RateSpec = RateSpec::new(0.5, 20);
/// Most source addresses whose tokenless-join bucket the core remembers: 65,536 (~64 bytes
/// each, 4 MiB). Full buckets are forgotten every tick; past this, tokenless joins from new
/// addresses are refused until some refill, so a spoofing flood cannot grow memory.
pub const JOIN_ADDRS_MAX: usize = 65_536;

/// The limits the core enforces. Defaults are the relay's; each field names its default
/// constant.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitsConfig {
    /// Most app entities one user may have placed ([`ENTITIES_PER_USER_MAX_DEFAULT`]); past
    /// it `EntityAdd` is refused `WorldFull`.
    pub entities_per_user_max: u32,
    /// Most blueprint bytes one user may have added ([`BLUEPRINT_BYTES_PER_USER_MAX_DEFAULT`]);
    /// past it `BlueprintAdd` and growing `BlueprintModify` are refused `WorldFull`.
    pub blueprint_bytes_per_user_max: usize,
    /// Most bytes of blueprints and apps in the world ([`WORLD_BYTES_MAX_DEFAULT`]); past it
    /// anything that grows the world is refused `WorldFull`.
    pub world_bytes_max: usize,
    /// Most app entities in the world ([`APPS_MAX_DEFAULT`]).
    pub apps_max: usize,
    /// Largest absolute scale on any axis ([`SCALE_MAX_DEFAULT`]).
    pub scale_max: f32,
    /// Largest push, m/s ([`PUSH_SPEED_MAX_DEFAULT_M_S`]).
    pub push_speed_max: f32,
    /// Largest version step of one blueprint modification, and highest starting version
    /// ([`BLUEPRINT_VERSION_STEP_MAX_DEFAULT`]).
    pub blueprint_version_step_max: u32,
    /// Chat messages per session ([`CHAT_RATE_DEFAULT`]).
    pub chat: RateSpec,
    /// Commands per session ([`COMMAND_RATE_DEFAULT`]).
    pub commands: RateSpec,
    /// Reliable changes per session ([`CHANGE_RATE_DEFAULT`]).
    pub changes: RateSpec,
    /// Datagrams per session ([`DATAGRAM_RATE_DEFAULT`]); past it they are dropped, and a
    /// session dropped more than a whole burst within a second is closed `Flooding`.
    pub datagrams: RateSpec,
    /// Bytes per session, frames and datagrams ([`SESSION_BYTES_RATE_DEFAULT`]).
    pub bytes: RateSpec,
    /// Tokenless joins per source address ([`TOKENLESS_JOINS_PER_ADDR_DEFAULT`]). Past it the
    /// join is closed `Flooding` ("too many new users from your address: join with your
    /// token"). Joins with a valid token are never counted.
    pub tokenless_joins_per_addr: RateSpec,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            entities_per_user_max: ENTITIES_PER_USER_MAX_DEFAULT,
            blueprint_bytes_per_user_max: BLUEPRINT_BYTES_PER_USER_MAX_DEFAULT,
            world_bytes_max: WORLD_BYTES_MAX_DEFAULT,
            apps_max: APPS_MAX_DEFAULT,
            scale_max: SCALE_MAX_DEFAULT,
            push_speed_max: PUSH_SPEED_MAX_DEFAULT_M_S,
            blueprint_version_step_max: BLUEPRINT_VERSION_STEP_MAX_DEFAULT,
            chat: CHAT_RATE_DEFAULT,
            commands: COMMAND_RATE_DEFAULT,
            changes: CHANGE_RATE_DEFAULT,
            datagrams: DATAGRAM_RATE_DEFAULT,
            bytes: SESSION_BYTES_RATE_DEFAULT,
            tokenless_joins_per_addr: TOKENLESS_JOINS_PER_ADDR_DEFAULT,
        }
    }
}

impl LimitsConfig {
    /// Limits that never get in the way: for load tests and benchmarks that drive one relay
    /// from one address at many times a person's pace. Validation stays on.
    pub fn unlimited_rates() -> LimitsConfig {
        let lots = RateSpec::new(1e9, u32::MAX / 4);
        LimitsConfig {
            chat: lots,
            commands: lots,
            changes: lots,
            datagrams: lots,
            bytes: lots,
            tokenless_joins_per_addr: lots,
            ..LimitsConfig::default()
        }
    }
}
