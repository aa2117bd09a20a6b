//! The relay's metrics registry and its live [`Status`] snapshot.
//!
//! One [`Metrics`] value per relay instance. The relay calls its `record_*` methods from its hot
//! paths; the HTTP server ([`crate::http`]) renders it as Prometheus text (`GET /metrics`) and as
//! a JSON [`Status`] (`GET /status`) for the live network view.
//!
//! # Why no global recorder
//! The `metrics` crate's macros write to one process-wide recorder, but several relays run in
//! one test process and each must report only its own figures. So each [`Metrics`] owns its own
//! [`PrometheusRecorder`] (built with `PrometheusBuilder::build_recorder`, never installed) and
//! registers every handle directly on it, once, at construction. Nothing here touches the global
//! recorder and nothing needs `metrics::with_local_recorder`; another crate in the process is
//! free to install one.
//!
//! # Cost on the hot path
//! * Scalar counters (bytes, datagrams, joins, ticks, ...) are plain relaxed atomics owned by
//!   [`Metrics`]; they are copied into the exporter's handles only when `/metrics` is rendered.
//!   They are the source of truth for both `/metrics` and `/status`. A datagram costs two relaxed
//!   `fetch_add`s.
//! * Labelled counters (messages by type, drops by reason) are exporter handles, registered on
//!   first use of a label and then found by a short scan under an uncontended read lock. Labels
//!   are `&'static str` so that no peer can create label values; at most [`LABEL_VALUES_MAX`]
//!   values per family are kept, the rest count under `other`.
//! * Histograms (tick duration, persistence commit latency) are exporter handles: a lock-free
//!   push. [`Metrics::record_tick`] drains them every [`UPKEEP_EVERY_TICKS`] ticks so their
//!   buffers stay bounded even if nobody scrapes `/metrics`.
//! * Per-entity bandwidth takes a mutex per call; at full fan-out the relay should instead fill an
//!   [`EntityBytesBatch`] during a tick and merge it once with [`Metrics::merge_entity_bytes`].
//! * Packet-trail samples ([`Metrics::record_trail`]) are thinned by a stride recomputed every
//!   tick, so the relay may call it for every entity update it sends: a skipped call costs one
//!   relaxed `fetch_add` and one load.
//!
//! # Wiring it into the relay
//! ```
//! use std::time::{Duration, Instant};
//! use neonet::metrics::{EntityBytesBatch, Metrics, MetricsConfig, UserReport};
//!
//! let metrics = Metrics::new(MetricsConfig { tick_period: Duration::from_millis(33) });
//! metrics.connection_opened(); // on accept; connection_closed() when it ends
//! metrics.record_join(); // on a successful join
//! let mut batch = EntityBytesBatch::new(); // owned by the tick loop
//!
//! // One tick:
//! let started = Instant::now();
//! metrics.record_datagram_in(24); // per datagram received
//! metrics.record_message_in("Input"); // per decoded message: ClientMsg::name()
//! // Per datagram sent, and per entity update inside it:
//! metrics.record_datagram_out(40);
//! metrics.record_trail(7, 1, 40); // entity 7's update went to session 1
//! batch.add(7, 40);
//! metrics.merge_entity_bytes(&mut batch); // once per tick
//! metrics.set_entity_count(1);
//! metrics.record_tick(started.elapsed());
//!
//! // A few times a second, from the connections' stats:
//! metrics.publish_users([UserReport {
//!     session_id: 1,
//!     name: "ada".into(),
//!     addr: "127.0.0.1:4000".parse().unwrap(),
//!     rtt_ms: 12.0,
//!     bytes_in: 24,
//!     bytes_out: 40,
//! }]);
//! assert_eq!(metrics.status().bandwidth.datagrams_out, 1);
//! assert!(metrics.render_prometheus().contains("neonet_datagrams_out_total 1"));
//! ```
//!
//! # Bounds
//! Everything kept here has a named limit: [`TICK_WINDOW_LEN`] recent tick durations,
//! [`TRAIL_RING_LEN`] trail samples, [`neonet_proto::wire::limits::ENTITIES_MAX`] tracked entities,
//! [`STATUS_USERS_MAX`] users in a status snapshot, [`LABEL_VALUES_MAX`] label values per family,
//! [`HISTORY_LEN`] history points.
//!
//! # Layout
//! This file holds the settings, names, limits and the [`Metrics`] value itself; the rest is split
//! by concern: `registry` (handles, counters, `record_*` for connections, ticks, traffic and
//! persistence), `entities` (per-entity bandwidth and packet trails), `status` (users and the
//! [`Status`] snapshot) and `prometheus` (the `/metrics` text).

mod entities;
mod prometheus;
mod registry;
mod status;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};

pub use self::entities::EntityBytesBatch;
use self::entities::{EntityTable, TrailRing};
use self::registry::{Counts, DurationWindow, Handles, LabelledCounters};
pub use self::status::{
    BandwidthStatus, ConnectionStatus, EntityBandwidth, HistoryPoint, Status, TickStatus,
    TrailSample, UserReport, UserStatus,
};
use self::status::{RateHistory, UserEntry};

/// How many entities `/metrics` and `/status` name in the per-entity bandwidth attribution.
/// Ten fits one screen and keeps the Prometheus series count fixed whatever the world size.
pub const TOP_ENTITIES_K: usize = 10;
/// Connections in `/status`'s and `/metrics`' top connections by bytes: the few worth an
/// operator's look, a bounded number of series.
pub const TOP_CONNECTIONS_K: usize = 10;

/// An entity no bytes were sent for in this long is forgotten by the per-entity attribution:
/// it leaves the top entities of `/metrics` and `/status` (a client long gone no longer shows
/// with a frozen total), and its count restarts from zero if it comes back.
pub const ENTITY_IDLE_FORGET: Duration = Duration::from_secs(10);

/// Distinct label values kept per labelled family (message types, drop reasons). Wire message
/// types and drop reasons number a few dozen; the cap only guards against a caller bug.
pub const LABEL_VALUES_MAX: usize = 64;

/// The drop reasons the relay records ([`Metrics::record_drops`]): each has a
/// `neonet_drops_total{reason=...}` series at zero from the start, so a dashboard or alert sees
/// the family before the first drop. A reason not listed here still counts, from its first drop.
pub const DROP_REASONS: &[&str] = &[
    // The datagram inbox was full.
    "datagram_inbox_full",
    // The sending connection already had its share of the inbox waiting.
    "datagram_inbox_conn_full",
];

/// Recent tick durations kept for the `/status` p50/p99: 512 ticks, about 17 s at 30 Hz, enough
/// for a stable p99 while still following a load change within seconds.
pub const TICK_WINDOW_LEN: usize = 512;

/// Recent persistence commit latencies kept for the `/status` p50/p99: 512 commits (a few
/// seconds under heavy writing, minutes when idle).
pub const COMMIT_WINDOW_LEN: usize = 512;

/// Trail samples kept: enough for [`TRAIL_WINDOW`] at [`TRAIL_SAMPLES_PER_TICK`] × 30 Hz
/// (480 per second) with headroom for faster tick rates and the stride adapting late.
pub const TRAIL_RING_LEN: usize = 1024;

/// Trail samples aimed for per tick: ~480 per second at 30 Hz, which the live view's canvas
/// animates smoothly and still shows as separate packets rather than a solid beam.
pub const TRAIL_SAMPLES_PER_TICK: u64 = 16;

/// How far back `/status` reports trail samples: the live view draws the last second.
pub const TRAIL_WINDOW: Duration = Duration::from_secs(1);

/// Users listed in one [`Status`] (all are counted in [`Status::users_total`]). Keeps a status
/// response under ~40 KiB at a thousand connected clients.
pub const STATUS_USERS_MAX: usize = 256;

/// User names are cut to this many characters in a [`Status`]; the wire already limits names
/// to [`neonet_proto::wire::limits::NAME_BYTES_MAX`] bytes, this is a second guard for the page.
pub const USER_NAME_CHARS_MAX: usize = 64;

/// Ticks between drains of the exporter's histogram buffers: ~1 s at 30 Hz, so at most this
/// many samples wait in a buffer when nobody scrapes `/metrics`.
pub const UPKEEP_EVERY_TICKS: u64 = 32;

/// Window over which [`Status`] bandwidth and tick rates are averaged: long enough to smooth a
/// 4 Hz poll, short enough to react within a second.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Minimum spacing of the user reports that per-user rates are computed from: reports closer
/// than this keep the last rates rather than divide by a tiny interval.
pub const RATE_SAMPLE_SPACING: Duration = Duration::from_millis(100);

/// Spacing of the relay-wide samples that [`Status`] rates are computed from, and of the
/// points of [`Status::history`]: taken by [`Metrics::record_tick`] (and by a status request)
/// whenever this much time has passed, so they do not depend on anyone polling. The live
/// view polls at the same 4 Hz.
pub const HISTORY_STEP: Duration = Duration::from_millis(250);

/// Points kept in [`Status::history`]: 120 × [`HISTORY_STEP`] = the live view's 30 s chart.
pub const HISTORY_LEN: usize = 120;

/// A sample this long after the previous one (no ticks and no status requests in between)
/// restarts the rates instead of averaging over the gap: the first figures after an idle
/// relay wakes up are then zero, then the true rate, never a long average that shows traffic
/// nobody is sending any more.
pub const RATE_GAP: Duration = Duration::from_secs(2);

/// Metric names, all prefixed `neonet_`, units last.
pub mod names {
    /// Gauge: open client connections.
    pub const CONNECTIONS: &str = "neonet_connections";
    /// Counter: successful joins.
    pub const JOINS: &str = "neonet_joins_total";
    /// Histogram: time the relay spent in one tick, seconds.
    pub const TICK_DURATION: &str = "neonet_tick_duration_seconds";
    /// Counter: ticks that took longer than the tick period.
    pub const TICK_OVERRUNS: &str = "neonet_tick_overruns_total";
    /// Counter: ticks run.
    pub const TICKS: &str = "neonet_ticks_total";
    /// Counter: payload bytes received, label `channel` = `datagram` | `stream`.
    pub const BYTES_IN: &str = "neonet_bytes_in_total";
    /// Counter: payload bytes sent, label `channel` = `datagram` | `stream`.
    pub const BYTES_OUT: &str = "neonet_bytes_out_total";
    /// Counter: datagrams received.
    pub const DATAGRAMS_IN: &str = "neonet_datagrams_in_total";
    /// Counter: datagrams sent.
    pub const DATAGRAMS_OUT: &str = "neonet_datagrams_out_total";
    /// Counter: messages received, label `type`.
    pub const MESSAGES_IN: &str = "neonet_messages_in_total";
    /// Counter: messages sent, label `type`.
    pub const MESSAGES_OUT: &str = "neonet_messages_out_total";
    /// Counter: things dropped, label `reason`.
    pub const DROPS: &str = "neonet_drops_total";
    /// Gauge: persistence effects waiting to be committed.
    pub const PERSIST_QUEUE: &str = "neonet_persist_queue_depth";
    /// Histogram: persistence commit latency, seconds.
    pub const PERSIST_COMMIT: &str = "neonet_persist_commit_seconds";
    /// Counter: inputs refused by a rate limit.
    pub const RATE_LIMIT_HITS: &str = "neonet_rate_limit_hits_total";
    /// Gauge: entities in the world.
    pub const ENTITIES: &str = "neonet_entities";
    /// Gauge: bytes sent for each of the top-K entities, labels `entity` and `rank`.
    pub const ENTITY_BYTES_TOP: &str = "neonet_entity_bytes_out_top";
    /// Gauge: bytes each way of each of the top-K connections by bytes, labels `conn`, `rank`
    /// and `direction` (`in`, `out`).
    pub const CONNECTION_BYTES_TOP: &str = "neonet_connection_bytes_top";
    /// Counter: entity bytes not attributed because the entity table was full.
    pub const ENTITY_BYTES_UNTRACKED: &str = "neonet_entity_bytes_out_untracked_total";
}

/// Settings for a [`Metrics`] registry.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// The relay's tick period: a tick longer than this counts as an overrun.
    /// Default 1/30 s (the relay's default 30 Hz).
    pub tick_period: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            tick_period: Duration::from_nanos(1_000_000_000 / 30),
        }
    }
}

/// The relay's metrics registry. Cheap to call from any thread; share it as `Arc<Metrics>`.
pub struct Metrics {
    config: MetricsConfig,
    started: Instant,
    recorder: PrometheusRecorder,
    prometheus: PrometheusHandle,
    handles: Handles,
    counts: Counts,
    messages_in: LabelledCounters,
    messages_out: LabelledCounters,
    drops: LabelledCounters,
    tick_window: Mutex<DurationWindow>,
    commit_window: Mutex<DurationWindow>,
    entities: Mutex<EntityTable>,
    trails: Mutex<TrailRing>,
    users: Mutex<BTreeMap<u64, UserEntry>>,
    rates: Mutex<RateHistory>,
    top_connections: Mutex<Vec<ConnectionStatus>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("config", &self.config)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the metrics down with it: the data stays usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(MetricsConfig::default())
    }
}
