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
//! [`TRAIL_RING_LEN`] trail samples, [`neonet_proto::limits::ENTITIES_MAX`] tracked entities,
//! [`STATUS_USERS_MAX`] users in a status snapshot, [`LABEL_VALUES_MAX`] label values per family.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use serde::{Deserialize, Serialize};

/// How many entities `/metrics` and `/status` name in the per-entity bandwidth attribution.
/// Ten fits one screen and keeps the Prometheus series count fixed whatever the world size.
pub const TOP_ENTITIES_K: usize = 10;

/// Distinct label values kept per labelled family (message types, drop reasons). Wire message
/// types and drop reasons number a few dozen; the cap only guards against a caller bug.
pub const LABEL_VALUES_MAX: usize = 64;

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
/// to [`neonet_proto::limits::NAME_BYTES_MAX`] bytes, this is a second guard for the page.
pub const USER_NAME_CHARS_MAX: usize = 64;

/// Ticks between drains of the exporter's histogram buffers: ~1 s at 30 Hz, so at most this
/// many samples wait in a buffer when nobody scrapes `/metrics`.
pub const UPKEEP_EVERY_TICKS: u64 = 32;

/// Window over which [`Status`] bandwidth and tick rates are averaged: long enough to smooth a
/// 4 Hz poll, short enough to react within a second.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Minimum spacing of the samples that rates are computed from: polls closer than this reuse
/// the last sample rather than divide by a tiny interval.
pub const RATE_SAMPLE_SPACING: Duration = Duration::from_millis(100);

/// Tick duration histogram buckets, in seconds: from 0.25 ms to 4 periods of a 30 Hz tick.
const TICK_BUCKETS_S: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.033, 0.066, 0.133,
];

/// Persistence commit latency buckets, in seconds: from 0.5 ms (no-fsync commit) to 2 s (a
/// stalled disk).
const COMMIT_BUCKETS_S: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
];

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
    /// Counter: entity bytes not attributed because the entity table was full.
    pub const ENTITY_BYTES_UNTRACKED: &str = "neonet_entity_bytes_out_untracked_total";
}

/// Label value used once a family has [`LABEL_VALUES_MAX`] values.
const OTHER_LABEL: &str = "other";

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

/// What the relay knows about one connected user, handed to [`Metrics::publish_users`].
///
/// Byte counts are cumulative for the session; [`Metrics`] turns successive reports into rates.
#[derive(Clone, Debug, PartialEq)]
pub struct UserReport {
    /// The session's id.
    pub session_id: u64,
    /// Display name.
    pub name: String,
    /// The peer's address.
    pub addr: SocketAddr,
    /// Smoothed round-trip time, milliseconds.
    pub rtt_ms: f64,
    /// Bytes received from this session since it joined.
    pub bytes_in: u64,
    /// Bytes sent to this session since it joined.
    pub bytes_out: u64,
}

/// One connected user as shown by `/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserStatus {
    /// The session's id.
    pub session_id: u64,
    /// Display name, at most [`USER_NAME_CHARS_MAX`] characters.
    pub name: String,
    /// The peer's address.
    pub addr: SocketAddr,
    /// Smoothed round-trip time, milliseconds.
    pub rtt_ms: f64,
    /// Receive rate from this user, kilobits per second, over the last reports.
    pub kbps_in: f64,
    /// Send rate to this user, kilobits per second, over the last reports.
    pub kbps_out: f64,
}

/// Relay-wide traffic totals and rates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BandwidthStatus {
    /// Payload bytes received (datagrams and streams) since start.
    pub bytes_in: u64,
    /// Payload bytes sent (datagrams and streams) since start.
    pub bytes_out: u64,
    /// Datagrams received since start.
    pub datagrams_in: u64,
    /// Datagrams sent since start.
    pub datagrams_out: u64,
    /// Receive rate over about [`RATE_WINDOW`], kilobits per second.
    pub kbps_in: f64,
    /// Send rate over about [`RATE_WINDOW`], kilobits per second.
    pub kbps_out: f64,
}

/// Tick timing figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TickStatus {
    /// The configured tick period, milliseconds.
    pub period_ms: f64,
    /// Measured ticks per second over about [`RATE_WINDOW`].
    pub rate_hz: f64,
    /// Median tick duration over the last [`TICK_WINDOW_LEN`] ticks, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile tick duration over the same window, milliseconds.
    pub p99_ms: f64,
    /// Longest tick in the same window, milliseconds.
    pub max_ms: f64,
    /// Ticks run since start.
    pub ticks: u64,
    /// Ticks longer than the period since start.
    pub overruns: u64,
}

/// Bytes sent on behalf of one entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityBandwidth {
    /// The entity's id.
    pub entity_id: u32,
    /// Bytes sent for it since it was first seen (or last forgotten).
    pub bytes_out: u64,
}

/// One sampled entity update on its way from the relay to a client: a "packet trail".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrailSample {
    /// Increasing sample number: the live view asks only for samples after the last it saw.
    pub seq: u64,
    /// How long before the snapshot the update was sent, milliseconds.
    pub age_ms: u32,
    /// The entity whose update it was.
    pub entity_id: u32,
    /// The session it was sent to.
    pub session_id: u64,
    /// Bytes it took.
    pub bytes: u32,
}

/// A live snapshot of the relay, served as JSON at `GET /status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Time since the [`Metrics`] were created, milliseconds.
    pub uptime_ms: u64,
    /// Open client connections.
    pub connections: i64,
    /// Successful joins since start.
    pub joins: u64,
    /// Entities in the world, as last set by the relay.
    pub entity_count: u64,
    /// Connected users the relay last published.
    pub users_total: u64,
    /// Up to [`STATUS_USERS_MAX`] of them, by session id.
    pub users: Vec<UserStatus>,
    /// Traffic totals and rates.
    pub bandwidth: BandwidthStatus,
    /// Tick timing.
    pub tick: TickStatus,
    /// Persistence effects waiting to be committed.
    pub persist_queue_depth: u64,
    /// Persistence commit latency (oldest change's enqueue → durable) over the last
    /// [`COMMIT_WINDOW_LEN`] commits that carried changes, milliseconds: p50, p99, max.
    pub persist_commit_ms: [f64; 3],
    /// Inputs refused by rate limits since start.
    pub rate_limit_hits: u64,
    /// The [`TOP_ENTITIES_K`] entities that cost the most bytes, most first.
    pub top_entities: Vec<EntityBandwidth>,
    /// Trail samples from the last [`TRAIL_WINDOW`] (and after the requested sequence number),
    /// oldest first.
    pub trails: Vec<TrailSample>,
    /// The sequence number the next trail sample will get.
    pub trail_next_seq: u64,
}

/// Per-entity byte counts gathered by the relay during a tick without any locking, then merged
/// into [`Metrics`] once with [`Metrics::merge_entity_bytes`].
#[derive(Debug, Default)]
pub struct EntityBytesBatch {
    bytes: HashMap<u32, u64, BuildHasherDefault<IdHasher>>,
}

/// A hasher for entity ids, which are small dense integers chosen by the relay (never by a
/// peer, so no hash flooding to defend against): one multiply (Fibonacci hashing) instead of
/// SipHash, because the batch takes one addition per entity update (≈ 100,000 per tick with
/// 1,000 clients).
#[derive(Debug, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl EntityBytesBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` sent on behalf of `entity_id`.
    #[inline]
    pub fn add(&mut self, entity_id: u32, bytes: usize) {
        *self.bytes.entry(entity_id).or_insert(0) += bytes as u64;
    }

    /// Whether nothing was added since the last merge.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// A label family whose handles are registered on first use of each value.
struct LabelledCounters {
    name: &'static str,
    label: &'static str,
    handles: RwLock<Vec<(&'static str, Counter)>>,
}

impl LabelledCounters {
    fn new(name: &'static str, label: &'static str) -> Self {
        LabelledCounters {
            name,
            label,
            handles: RwLock::new(Vec::new()),
        }
    }

    fn increment(&self, recorder: &PrometheusRecorder, value: &'static str, n: u64) {
        {
            let handles = self.handles.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, c)) = handles.iter().find(|(v, _)| *v == value) {
                c.increment(n);
                return;
            }
        }
        let mut handles = self.handles.write().unwrap_or_else(PoisonError::into_inner);
        let value = if handles.len() >= LABEL_VALUES_MAX {
            OTHER_LABEL
        } else {
            value
        };
        if let Some((_, c)) = handles.iter().find(|(v, _)| *v == value) {
            c.increment(n);
            return;
        }
        let key = Key::from_parts(self.name, vec![Label::new(self.label, value)]);
        let counter = recorder.register_counter(&key, &metadata());
        counter.increment(n);
        handles.push((value, counter));
    }
}

/// Handles registered on the recorder at construction, synchronised from the atomics at render.
struct Handles {
    connections: Gauge,
    joins: Counter,
    ticks: Counter,
    tick_overruns: Counter,
    tick_duration: Histogram,
    bytes_in_dgram: Counter,
    bytes_in_stream: Counter,
    bytes_out_dgram: Counter,
    bytes_out_stream: Counter,
    datagrams_in: Counter,
    datagrams_out: Counter,
    persist_queue: Gauge,
    persist_commit: Histogram,
    rate_limit_hits: Counter,
    entities: Gauge,
    entity_untracked: Counter,
}

/// Scalar counters: the source of truth for both renderings.
#[derive(Default)]
struct Counts {
    connections: AtomicI64,
    joins: AtomicU64,
    ticks: AtomicU64,
    tick_overruns: AtomicU64,
    bytes_in_dgram: AtomicU64,
    bytes_in_stream: AtomicU64,
    bytes_out_dgram: AtomicU64,
    bytes_out_stream: AtomicU64,
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    persist_queue: AtomicU64,
    rate_limit_hits: AtomicU64,
    entities: AtomicU64,
    trail_calls: AtomicU64,
    trail_calls_at_tick: AtomicU64,
    trail_stride: AtomicU64,
}

#[derive(Default)]
struct EntityTable {
    bytes: HashMap<u32, u64>,
    untracked: u64,
}

struct TrailRecord {
    seq: u64,
    at: Instant,
    entity_id: u32,
    session_id: u64,
    bytes: u32,
}

#[derive(Default)]
struct TrailRing {
    records: VecDeque<TrailRecord>,
    next_seq: u64,
}

impl TrailRing {
    /// Records one update, dropping the oldest beyond [`TRAIL_RING_LEN`].
    fn push(&mut self, entity_id: u32, session_id: u64, bytes: usize) {
        if self.records.len() == TRAIL_RING_LEN {
            self.records.pop_front();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.records.push_back(TrailRecord {
            seq,
            at: Instant::now(),
            entity_id,
            session_id,
            bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
        });
    }
}

struct UserEntry {
    report: UserReport,
    /// When, and at what cumulative counts, the rates were last computed.
    rate_base: (Instant, u64, u64),
    kbps_in: f64,
    kbps_out: f64,
}

/// A point the relay-wide rates are computed from.
#[derive(Clone, Copy)]
struct RateSample {
    at: Instant,
    bytes_in: u64,
    bytes_out: u64,
    ticks: u64,
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
    rates: Mutex<VecDeque<RateSample>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("config", &self.config)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the metrics down with it: the data stays usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn kbps(bytes: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 * 8.0 / 1000.0 / secs
    }
}

/// The most recent durations, at most `len`: the tick and commit windows behind `/status`.
struct DurationWindow {
    recent: VecDeque<Duration>,
    len: usize,
}

impl DurationWindow {
    fn new(len: usize) -> DurationWindow {
        DurationWindow {
            recent: VecDeque::with_capacity(len),
            len,
        }
    }

    /// Keeps `d`, dropping the oldest beyond the window's length.
    fn push(&mut self, d: Duration) {
        if self.recent.len() == self.len {
            self.recent.pop_front();
        }
        self.recent.push_back(d);
    }

    /// p50, p99 and max of the window, milliseconds (zeros when empty).
    fn p50_p99_max_ms(&self) -> [f64; 3] {
        let mut sorted: Vec<Duration> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        [
            percentile_ms(&sorted, 0.50),
            percentile_ms(&sorted, 0.99),
            sorted.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        ]
    }
}

/// Nearest-rank percentile of a sorted slice, in milliseconds.
fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    sorted[idx].as_secs_f64() * 1000.0
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(MetricsConfig::default())
    }
}

impl Metrics {
    /// A fresh registry with all metrics at zero.
    pub fn new(config: MetricsConfig) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(names::TICK_DURATION.into()), TICK_BUCKETS_S)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(names::PERSIST_COMMIT.into()),
                    COMMIT_BUCKETS_S,
                )
            })
            .expect("bucket lists are non-empty constants")
            .build_recorder();
        let prometheus = recorder.handle();

        let describe = |kind: char, name: &'static str, unit: Option<Unit>, help: &'static str| {
            let key_name = KeyName::from_const_str(name);
            match kind {
                'c' => recorder.describe_counter(key_name, unit, help.into()),
                'g' => recorder.describe_gauge(key_name, unit, help.into()),
                _ => recorder.describe_histogram(key_name, unit, help.into()),
            }
        };
        use names::*;
        describe('g', CONNECTIONS, None, "Open client connections.");
        describe('c', JOINS, None, "Successful joins.");
        describe('c', TICKS, None, "Ticks run.");
        describe(
            'c',
            TICK_OVERRUNS,
            None,
            "Ticks longer than the tick period.",
        );
        describe(
            'h',
            TICK_DURATION,
            Some(Unit::Seconds),
            "Time from a tick's start until its last client's datagrams are written (earlier clients' already handed to the transport).",
        );
        describe('c', BYTES_IN, Some(Unit::Bytes), "Payload bytes received.");
        describe('c', BYTES_OUT, Some(Unit::Bytes), "Payload bytes sent.");
        describe('c', DATAGRAMS_IN, None, "Datagrams received.");
        describe('c', DATAGRAMS_OUT, None, "Datagrams sent.");
        describe('c', MESSAGES_IN, None, "Messages received, by type.");
        describe('c', MESSAGES_OUT, None, "Messages sent, by type.");
        describe('c', DROPS, None, "Things dropped, by reason.");
        describe(
            'g',
            PERSIST_QUEUE,
            None,
            "Persistence effects awaiting commit.",
        );
        describe(
            'h',
            PERSIST_COMMIT,
            Some(Unit::Seconds),
            "Persistence commit latency.",
        );
        describe(
            'c',
            RATE_LIMIT_HITS,
            None,
            "Inputs refused by a rate limit.",
        );
        describe('g', ENTITIES, None, "Entities in the world.");
        describe(
            'c',
            ENTITY_BYTES_UNTRACKED,
            Some(Unit::Bytes),
            "Entity bytes not attributed because the entity table was full.",
        );

        let md = metadata();
        let counter = |name: &'static str| recorder.register_counter(&Key::from_name(name), &md);
        let channel = |name: &'static str, ch: &'static str| {
            recorder.register_counter(&Key::from_parts(name, vec![Label::new("channel", ch)]), &md)
        };
        let handles = Handles {
            connections: recorder.register_gauge(&Key::from_name(CONNECTIONS), &md),
            joins: counter(JOINS),
            ticks: counter(TICKS),
            tick_overruns: counter(TICK_OVERRUNS),
            tick_duration: recorder.register_histogram(&Key::from_name(TICK_DURATION), &md),
            bytes_in_dgram: channel(BYTES_IN, "datagram"),
            bytes_in_stream: channel(BYTES_IN, "stream"),
            bytes_out_dgram: channel(BYTES_OUT, "datagram"),
            bytes_out_stream: channel(BYTES_OUT, "stream"),
            datagrams_in: counter(DATAGRAMS_IN),
            datagrams_out: counter(DATAGRAMS_OUT),
            persist_queue: recorder.register_gauge(&Key::from_name(PERSIST_QUEUE), &md),
            persist_commit: recorder.register_histogram(&Key::from_name(PERSIST_COMMIT), &md),
            rate_limit_hits: counter(RATE_LIMIT_HITS),
            entities: recorder.register_gauge(&Key::from_name(ENTITIES), &md),
            entity_untracked: counter(ENTITY_BYTES_UNTRACKED),
        };
        let counts = Counts::default();
        counts.trail_stride.store(1, Relaxed);

        Metrics {
            config,
            started: Instant::now(),
            messages_in: LabelledCounters::new(MESSAGES_IN, "type"),
            messages_out: LabelledCounters::new(MESSAGES_OUT, "type"),
            drops: LabelledCounters::new(DROPS, "reason"),
            recorder,
            prometheus,
            handles,
            counts,
            tick_window: Mutex::new(DurationWindow::new(TICK_WINDOW_LEN)),
            commit_window: Mutex::new(DurationWindow::new(COMMIT_WINDOW_LEN)),
            entities: Mutex::new(EntityTable::default()),
            trails: Mutex::new(TrailRing::default()),
            users: Mutex::new(BTreeMap::new()),
            rates: Mutex::new(VecDeque::new()),
        }
    }

    /// The settings this registry was made with.
    pub fn config(&self) -> &MetricsConfig {
        &self.config
    }

    // ----- connections and sessions -----

    /// A client connection was accepted.
    pub fn connection_opened(&self) {
        self.counts.connections.fetch_add(1, Relaxed);
    }

    /// A client connection ended (for any reason).
    pub fn connection_closed(&self) {
        self.counts.connections.fetch_sub(1, Relaxed);
    }

    /// A client joined the world.
    pub fn record_join(&self) {
        self.counts.joins.fetch_add(1, Relaxed);
    }

    /// Replaces the list of connected users shown by `/status`. Call it a few times a second
    /// (every ~250 ms is plenty); per-user rates are computed between reports at least
    /// [`RATE_SAMPLE_SPACING`] apart.
    pub fn publish_users(&self, users: impl IntoIterator<Item = UserReport>) {
        let now = Instant::now();
        let mut map = lock(&self.users);
        let mut fresh = BTreeMap::new();
        for mut report in users {
            if report.name.chars().count() > USER_NAME_CHARS_MAX {
                report.name = report.name.chars().take(USER_NAME_CHARS_MAX).collect();
            }
            let entry = match map.remove(&report.session_id) {
                Some(mut e) => {
                    let (at, bin, bout) = e.rate_base;
                    let elapsed = now.saturating_duration_since(at);
                    if elapsed >= RATE_SAMPLE_SPACING {
                        e.kbps_in = kbps(report.bytes_in.saturating_sub(bin), elapsed);
                        e.kbps_out = kbps(report.bytes_out.saturating_sub(bout), elapsed);
                        e.rate_base = (now, report.bytes_in, report.bytes_out);
                    }
                    e.report = report;
                    e
                }
                None => UserEntry {
                    rate_base: (now, report.bytes_in, report.bytes_out),
                    report,
                    kbps_in: 0.0,
                    kbps_out: 0.0,
                },
            };
            fresh.insert(entry.report.session_id, entry);
        }
        *map = fresh;
    }

    // ----- ticks -----

    /// The relay finished a tick that took `duration`. Also drives the histogram upkeep and the
    /// trail sampling stride, so call it once per tick.
    pub fn record_tick(&self, duration: Duration) {
        let ticks = self.counts.ticks.fetch_add(1, Relaxed) + 1;
        if duration > self.config.tick_period {
            self.counts.tick_overruns.fetch_add(1, Relaxed);
        }
        self.handles.tick_duration.record(duration.as_secs_f64());
        lock(&self.tick_window).push(duration);
        // Thin trail samples so that about TRAIL_SAMPLES_PER_TICK are kept per tick.
        let calls = self.counts.trail_calls.load(Relaxed);
        let before = self.counts.trail_calls_at_tick.swap(calls, Relaxed);
        let per_tick = calls.wrapping_sub(before);
        self.counts
            .trail_stride
            .store((per_tick / TRAIL_SAMPLES_PER_TICK).max(1), Relaxed);
        if ticks % UPKEEP_EVERY_TICKS == 0 {
            self.prometheus.run_upkeep();
        }
    }

    // ----- traffic -----

    /// A datagram of `bytes` payload bytes arrived.
    #[inline]
    pub fn record_datagram_in(&self, bytes: usize) {
        self.counts.datagrams_in.fetch_add(1, Relaxed);
        self.counts.bytes_in_dgram.fetch_add(bytes as u64, Relaxed);
    }

    /// A datagram of `bytes` payload bytes was sent.
    #[inline]
    pub fn record_datagram_out(&self, bytes: usize) {
        self.counts.datagrams_out.fetch_add(1, Relaxed);
        self.counts.bytes_out_dgram.fetch_add(bytes as u64, Relaxed);
    }

    /// `bytes` arrived on a reliable stream.
    #[inline]
    pub fn record_stream_in(&self, bytes: usize) {
        self.counts.bytes_in_stream.fetch_add(bytes as u64, Relaxed);
    }

    /// `bytes` were written to a reliable stream.
    #[inline]
    pub fn record_stream_out(&self, bytes: usize) {
        self.counts
            .bytes_out_stream
            .fetch_add(bytes as u64, Relaxed);
    }

    /// A message of type `name` (e.g. `ClientMsg::name()`) was received.
    pub fn record_message_in(&self, name: &'static str) {
        self.messages_in.increment(&self.recorder, name, 1);
    }

    /// A message of type `name` (e.g. `ServerMsg::name()`) was sent.
    pub fn record_message_out(&self, name: &'static str) {
        self.messages_out.increment(&self.recorder, name, 1);
    }

    /// Something was dropped for `reason` (a fixed string such as `"datagram_too_large"`).
    pub fn record_drop(&self, reason: &'static str) {
        self.record_drops(reason, 1);
    }

    /// `n` things were dropped for `reason` (counted in one go, as [`Metrics::record_drop`]).
    pub fn record_drops(&self, reason: &'static str, n: u64) {
        self.drops.increment(&self.recorder, reason, n);
    }

    /// An input was refused by a rate limit.
    pub fn record_rate_limit_hit(&self) {
        self.counts.rate_limit_hits.fetch_add(1, Relaxed);
    }

    // ----- persistence -----

    /// Persistence effects now waiting to be committed.
    pub fn set_persist_queue_depth(&self, depth: usize) {
        self.counts.persist_queue.store(depth as u64, Relaxed);
    }

    /// A persistence commit took `latency` from enqueue to durable.
    pub fn record_persist_commit(&self, latency: Duration) {
        self.handles.persist_commit.record(latency.as_secs_f64());
        lock(&self.commit_window).push(latency);
    }

    // ----- world and entities -----

    /// Entities now in the world.
    pub fn set_entity_count(&self, count: usize) {
        self.counts.entities.store(count as u64, Relaxed);
    }

    /// `bytes` were sent on behalf of `entity_id`. Takes a lock: at full fan-out prefer an
    /// [`EntityBytesBatch`] merged once per tick.
    pub fn record_entity_bytes(&self, entity_id: u32, bytes: usize) {
        let mut table = lock(&self.entities);
        Self::add_entity_bytes(&mut table, entity_id, bytes as u64);
    }

    /// Adds a tick's worth of per-entity bytes and empties `batch` (keeping its allocation).
    pub fn merge_entity_bytes(&self, batch: &mut EntityBytesBatch) {
        if batch.bytes.is_empty() {
            return;
        }
        let mut table = lock(&self.entities);
        for (entity_id, bytes) in batch.bytes.drain() {
            Self::add_entity_bytes(&mut table, entity_id, bytes);
        }
    }

    fn add_entity_bytes(table: &mut EntityTable, entity_id: u32, bytes: u64) {
        let full = table.bytes.len() >= neonet_proto::limits::ENTITIES_MAX;
        match table.bytes.get_mut(&entity_id) {
            Some(total) => *total += bytes,
            None if full => table.untracked += bytes,
            None => {
                table.bytes.insert(entity_id, bytes);
            }
        }
    }

    /// The entity left the world: stop attributing bytes to it.
    pub fn forget_entity(&self, entity_id: u32) {
        lock(&self.entities).bytes.remove(&entity_id);
    }

    /// The [`TOP_ENTITIES_K`] entities that cost the most bytes, most first (ties by id).
    pub fn top_entities(&self) -> Vec<EntityBandwidth> {
        let table = lock(&self.entities);
        let mut heap = BinaryHeap::with_capacity(TOP_ENTITIES_K + 1);
        for (&id, &bytes) in &table.bytes {
            // Min-heap on (bytes, Reverse(id)): the smallest bytes, then the largest id, leaves.
            heap.push(Reverse((bytes, Reverse(id))));
            if heap.len() > TOP_ENTITIES_K {
                heap.pop();
            }
        }
        drop(table);
        let mut top: Vec<EntityBandwidth> = heap
            .into_iter()
            .map(|Reverse((bytes_out, Reverse(entity_id)))| EntityBandwidth {
                entity_id,
                bytes_out,
            })
            .collect();
        top.sort_by(|a, b| {
            b.bytes_out
                .cmp(&a.bytes_out)
                .then(a.entity_id.cmp(&b.entity_id))
        });
        top
    }

    /// An update of `entity_id` taking `bytes` was sent to `session_id`. Cheap enough to call
    /// for every update: only about [`TRAIL_SAMPLES_PER_TICK`] per tick are kept, spread evenly
    /// over the tick's calls (the stride adapts at each [`Metrics::record_tick`]).
    #[inline]
    pub fn record_trail(&self, entity_id: u32, session_id: u64, bytes: usize) {
        let n = self.counts.trail_calls.fetch_add(1, Relaxed);
        let stride = self.counts.trail_stride.load(Relaxed);
        if n % stride != 0 {
            return;
        }
        self.push_trail(entity_id, session_id, bytes);
    }

    /// [`Metrics::record_trail`] for many updates at once, `(entity_id, session_id, bytes)`:
    /// one atomic step and at most one lock for the whole batch.
    pub fn record_trails<I>(&self, updates: I)
    where
        I: ExactSizeIterator<Item = (u32, u64, usize)>,
    {
        let n = updates.len() as u64;
        if n == 0 {
            return;
        }
        let first = self.counts.trail_calls.fetch_add(n, Relaxed);
        let stride = self.counts.trail_stride.load(Relaxed).max(1);
        // The first index in this batch that falls on the stride.
        let mut next = (stride - first % stride) % stride;
        if next >= n {
            return;
        }
        let mut ring = lock(&self.trails);
        for (k, (entity_id, session_id, bytes)) in updates.enumerate() {
            if k as u64 != next {
                continue;
            }
            next += stride;
            ring.push(entity_id, session_id, bytes);
        }
    }

    #[cold]
    fn push_trail(&self, entity_id: u32, session_id: u64, bytes: usize) {
        lock(&self.trails).push(entity_id, session_id, bytes);
    }

    // ----- rendering -----

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let c = &self.counts;
        let h = &self.handles;
        h.connections.set(c.connections.load(Relaxed).max(0) as f64);
        h.joins.absolute(c.joins.load(Relaxed));
        h.ticks.absolute(c.ticks.load(Relaxed));
        h.tick_overruns.absolute(c.tick_overruns.load(Relaxed));
        h.bytes_in_dgram.absolute(c.bytes_in_dgram.load(Relaxed));
        h.bytes_in_stream.absolute(c.bytes_in_stream.load(Relaxed));
        h.bytes_out_dgram.absolute(c.bytes_out_dgram.load(Relaxed));
        h.bytes_out_stream
            .absolute(c.bytes_out_stream.load(Relaxed));
        h.datagrams_in.absolute(c.datagrams_in.load(Relaxed));
        h.datagrams_out.absolute(c.datagrams_out.load(Relaxed));
        h.persist_queue.set(c.persist_queue.load(Relaxed) as f64);
        h.rate_limit_hits.absolute(c.rate_limit_hits.load(Relaxed));
        h.entities.set(c.entities.load(Relaxed) as f64);
        h.entity_untracked.absolute(lock(&self.entities).untracked);

        let mut out = self.prometheus.render();
        // The top-K series change membership over time; the exporter cannot delete a series, so
        // this family is rendered here, fresh each time.
        let top = self.top_entities();
        let _ = writeln!(
            out,
            "# HELP {name} Bytes sent on behalf of the {k} entities that cost the most.\n\
             # TYPE {name} gauge",
            name = names::ENTITY_BYTES_TOP,
            k = TOP_ENTITIES_K,
        );
        for (rank, e) in top.iter().enumerate() {
            let _ = writeln!(
                out,
                "{}{{entity=\"{}\",rank=\"{}\"}} {}",
                names::ENTITY_BYTES_TOP,
                e.entity_id,
                rank + 1,
                e.bytes_out
            );
        }
        out
    }

    /// A live snapshot with every trail sample of the last [`TRAIL_WINDOW`].
    pub fn status(&self) -> Status {
        self.status_since(0)
    }

    /// A live snapshot whose trail samples are only those with `seq >= since_seq` (the live
    /// view passes the previous [`Status::trail_next_seq`], so each sample travels once).
    pub fn status_since(&self, since_seq: u64) -> Status {
        let now = Instant::now();
        let c = &self.counts;
        let bytes_in = c.bytes_in_dgram.load(Relaxed) + c.bytes_in_stream.load(Relaxed);
        let bytes_out = c.bytes_out_dgram.load(Relaxed) + c.bytes_out_stream.load(Relaxed);
        let ticks = c.ticks.load(Relaxed);

        let (kbps_in, kbps_out, rate_hz) = {
            let mut rates = lock(&self.rates);
            let sample = RateSample {
                at: now,
                bytes_in,
                bytes_out,
                ticks,
            };
            let spaced = match rates.back() {
                Some(last) => now.saturating_duration_since(last.at) >= RATE_SAMPLE_SPACING,
                None => true,
            };
            if spaced {
                rates.push_back(sample);
            }
            // Keep the newest sample at least RATE_WINDOW old as the base, drop older ones.
            while rates.len() > 2 && now.saturating_duration_since(rates[1].at) >= RATE_WINDOW {
                rates.pop_front();
            }
            match rates.front() {
                Some(base) if now > base.at => {
                    let dt = now.duration_since(base.at);
                    (
                        kbps(bytes_in.saturating_sub(base.bytes_in), dt),
                        kbps(bytes_out.saturating_sub(base.bytes_out), dt),
                        ticks.saturating_sub(base.ticks) as f64 / dt.as_secs_f64(),
                    )
                }
                _ => (0.0, 0.0, 0.0),
            }
        };

        let tick = {
            let [p50_ms, p99_ms, max_ms] = lock(&self.tick_window).p50_p99_max_ms();
            TickStatus {
                period_ms: self.config.tick_period.as_secs_f64() * 1000.0,
                rate_hz,
                p50_ms,
                p99_ms,
                max_ms,
                ticks,
                overruns: c.tick_overruns.load(Relaxed),
            }
        };

        let (users_total, users) = {
            let map = lock(&self.users);
            let users = map
                .values()
                .take(STATUS_USERS_MAX)
                .map(|e| UserStatus {
                    session_id: e.report.session_id,
                    name: e.report.name.clone(),
                    addr: e.report.addr,
                    rtt_ms: e.report.rtt_ms,
                    kbps_in: e.kbps_in,
                    kbps_out: e.kbps_out,
                })
                .collect();
            (map.len() as u64, users)
        };

        let (trails, trail_next_seq) = {
            let ring = lock(&self.trails);
            let trails = ring
                .records
                .iter()
                .filter(|r| r.seq >= since_seq)
                .filter_map(|r| {
                    let age = now.saturating_duration_since(r.at);
                    (age <= TRAIL_WINDOW).then_some(TrailSample {
                        seq: r.seq,
                        age_ms: age.as_millis() as u32,
                        entity_id: r.entity_id,
                        session_id: r.session_id,
                        bytes: r.bytes,
                    })
                })
                .collect();
            (trails, ring.next_seq)
        };

        Status {
            uptime_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            connections: c.connections.load(Relaxed).max(0),
            joins: c.joins.load(Relaxed),
            entity_count: c.entities.load(Relaxed),
            users_total,
            users,
            bandwidth: BandwidthStatus {
                bytes_in,
                bytes_out,
                datagrams_in: c.datagrams_in.load(Relaxed),
                datagrams_out: c.datagrams_out.load(Relaxed),
                kbps_in,
                kbps_out,
            },
            tick,
            persist_queue_depth: c.persist_queue.load(Relaxed),
            persist_commit_ms: lock(&self.commit_window).p50_p99_max_ms(),
            rate_limit_hits: c.rate_limit_hits.load(Relaxed),
            top_entities: self.top_entities(),
            trails,
            trail_next_seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_registries_are_independent() {
        let a = Metrics::default();
        let b = Metrics::default();
        a.record_datagram_out(100);
        a.record_message_in("Join");
        assert_eq!(a.status().bandwidth.bytes_out, 100);
        assert_eq!(b.status().bandwidth.bytes_out, 0);
        assert!(a
            .render_prometheus()
            .contains("neonet_messages_in_total{type=\"Join\"} 1"));
        assert!(!b.render_prometheus().contains("type=\"Join\""));
    }

    #[test]
    fn top_entities_orders_by_bytes_then_id() {
        let m = Metrics::default();
        let mut batch = EntityBytesBatch::new();
        for id in 0..50u32 {
            batch.add(id, (id as usize % 7) * 10);
        }
        m.merge_entity_bytes(&mut batch);
        assert!(batch.is_empty());
        m.record_entity_bytes(3, 1000);
        let top = m.top_entities();
        assert_eq!(top.len(), TOP_ENTITIES_K);
        assert_eq!(top[0].entity_id, 3);
        assert_eq!(
            top[1],
            EntityBandwidth {
                entity_id: 6,
                bytes_out: 60
            }
        );
        assert_eq!(
            top[2],
            EntityBandwidth {
                entity_id: 13,
                bytes_out: 60
            }
        );
        let text = m.render_prometheus();
        assert!(text.contains("neonet_entity_bytes_out_top{entity=\"3\",rank=\"1\"} 1030"));
        m.forget_entity(3);
        assert_ne!(m.top_entities()[0].entity_id, 3);
    }

    #[test]
    fn labels_are_bounded() {
        let m = Metrics::default();
        let names: Vec<&'static str> = (0..LABEL_VALUES_MAX + 6)
            .map(|i| &*Box::leak(format!("reason{i}").into_boxed_str()))
            .collect();
        for name in names {
            m.record_drop(name);
        }
        let text = m.render_prometheus();
        let series = text
            .lines()
            .filter(|l| l.starts_with("neonet_drops_total{"))
            .count();
        assert_eq!(series, LABEL_VALUES_MAX + 1);
        assert!(text.contains("neonet_drops_total{reason=\"other\"} 6"));
    }

    #[test]
    fn batched_trails_keep_the_same_records_as_one_by_one() {
        let one = Metrics::default();
        let batched = Metrics::default();
        for m in [&one, &batched] {
            for i in 0..5000u32 {
                m.record_trail(i % 100, 1, 40);
            }
            m.record_tick(Duration::from_millis(1));
        }
        let updates: Vec<(u32, u64, usize)> =
            (0..997u32).map(|i| (i, u64::from(i % 7), 30)).collect();
        for chunk in updates.chunks(61) {
            for &(e, s, b) in chunk {
                one.record_trail(e, s, b);
            }
            batched.record_trails(chunk.iter().copied());
        }
        let ids = |m: &Metrics| -> Vec<(u64, u32, u64)> {
            lock(&m.trails)
                .records
                .iter()
                .map(|r| (r.seq, r.entity_id, r.session_id))
                .collect()
        };
        assert_eq!(ids(&one), ids(&batched));
    }

    #[test]
    fn trails_are_thinned_and_bounded() {
        let m = Metrics::default();
        for i in 0..5000u32 {
            m.record_trail(i % 100, u64::from(i % 10), 40);
        }
        // No tick yet: stride 1, so the ring is full.
        assert_eq!(lock(&m.trails).records.len(), TRAIL_RING_LEN);
        m.record_tick(Duration::from_millis(1));
        let before = m.status().trail_next_seq;
        for i in 0..4800u32 {
            m.record_trail(i % 100, 1, 40);
        }
        let kept = m.status().trail_next_seq - before;
        let stride = 5000 / TRAIL_SAMPLES_PER_TICK;
        assert!(
            kept.abs_diff(4800 / stride) <= 1,
            "kept {kept} with stride {stride}"
        );
        let since = m.status_since(before + 5);
        assert!(since.trails.iter().all(|t| t.seq >= before + 5));
    }

    #[test]
    fn tick_percentiles_and_overruns() {
        let m = Metrics::new(MetricsConfig {
            tick_period: Duration::from_millis(10),
        });
        for ms in 1..=100u64 {
            m.record_tick(Duration::from_millis(ms));
        }
        let s = m.status();
        assert_eq!(s.tick.ticks, 100);
        assert_eq!(s.tick.overruns, 90);
        assert!((s.tick.p50_ms - 50.0).abs() < 1e-9);
        assert!((s.tick.p99_ms - 99.0).abs() < 1e-9);
        assert!((s.tick.max_ms - 100.0).abs() < 1e-9);
        let text = m.render_prometheus();
        assert!(text.contains("neonet_tick_duration_seconds_bucket"));
        assert!(text.contains("neonet_tick_overruns_total 90"));
    }

    #[test]
    fn users_get_rates_and_bounded_names() {
        let m = Metrics::default();
        let report = |bytes_out| UserReport {
            session_id: 7,
            name: "x".repeat(500),
            addr: "127.0.0.1:9".parse().unwrap(),
            rtt_ms: 12.5,
            bytes_in: 0,
            bytes_out,
        };
        m.publish_users([report(0)]);
        std::thread::sleep(RATE_SAMPLE_SPACING + Duration::from_millis(20));
        m.publish_users([report(10_000)]);
        let s = m.status();
        assert_eq!(s.users_total, 1);
        assert_eq!(s.users[0].name.chars().count(), USER_NAME_CHARS_MAX);
        assert!(s.users[0].kbps_out > 0.0);
        m.publish_users([]);
        assert_eq!(m.status().users_total, 0);
    }
}
