//! The registry proper: the exporter's handles, the scalar counters behind both renderings,
//! labelled families with bounded label values, the tick and commit duration windows, and the
//! `record_*` calls for connections, ticks, traffic and persistence.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use super::entities::{EntityTable, TrailRing};
use super::status::RateHistory;
use super::{
    lock, names, Metrics, MetricsConfig, COMMIT_WINDOW_LEN, DROP_REASONS, LABEL_VALUES_MAX,
    TICK_WINDOW_LEN, TRAIL_SAMPLES_PER_TICK, UPKEEP_EVERY_TICKS,
};

/// Tick duration histogram buckets, in seconds: from 0.25 ms to 4 periods of a 30 Hz tick.
const TICK_BUCKETS_S: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.033, 0.066, 0.133,
];

/// Persistence commit latency buckets, in seconds: from 0.5 ms (no-fsync commit) to 2 s (a
/// stalled disk).
const COMMIT_BUCKETS_S: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
];

/// Label value used once a family has [`LABEL_VALUES_MAX`] values.
const OTHER_LABEL: &str = "other";

/// A label family whose handles are registered on first use of each value.
pub(super) struct LabelledCounters {
    name: &'static str,
    label: &'static str,
    handles: RwLock<Vec<(&'static str, Counter)>>,
}

impl LabelledCounters {
    /// A family with a series at zero for each of `known`, so that a scrape sees every
    /// expected series from the start rather than only after its first increment.
    fn new(
        recorder: &PrometheusRecorder,
        name: &'static str,
        label: &'static str,
        known: &[&'static str],
    ) -> Self {
        let handles = known
            .iter()
            .map(|&value| {
                let key = Key::from_parts(name, vec![Label::new(label, value)]);
                (value, recorder.register_counter(&key, &metadata()))
            })
            .collect();
        LabelledCounters {
            name,
            label,
            handles: RwLock::new(handles),
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
pub(super) struct Handles {
    pub(super) connections: Gauge,
    pub(super) joins: Counter,
    pub(super) ticks: Counter,
    pub(super) tick_overruns: Counter,
    pub(super) tick_duration: Histogram,
    pub(super) bytes_in_dgram: Counter,
    pub(super) bytes_in_stream: Counter,
    pub(super) bytes_out_dgram: Counter,
    pub(super) bytes_out_stream: Counter,
    pub(super) datagrams_in: Counter,
    pub(super) datagrams_out: Counter,
    pub(super) persist_queue: Gauge,
    pub(super) persist_commit: Histogram,
    pub(super) rate_limit_hits: Counter,
    pub(super) entities: Gauge,
    pub(super) entity_untracked: Counter,
}

/// Scalar counters: the source of truth for both renderings.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) connections: AtomicI64,
    pub(super) joins: AtomicU64,
    pub(super) ticks: AtomicU64,
    pub(super) tick_overruns: AtomicU64,
    pub(super) bytes_in_dgram: AtomicU64,
    pub(super) bytes_in_stream: AtomicU64,
    pub(super) bytes_out_dgram: AtomicU64,
    pub(super) bytes_out_stream: AtomicU64,
    pub(super) datagrams_in: AtomicU64,
    pub(super) datagrams_out: AtomicU64,
    pub(super) persist_queue: AtomicU64,
    pub(super) rate_limit_hits: AtomicU64,
    pub(super) entities: AtomicU64,
    pub(super) trail_calls: AtomicU64,
    pub(super) trail_calls_at_tick: AtomicU64,
    pub(super) trail_stride: AtomicU64,
    /// When the next rate sample is due, nanoseconds after [`Metrics`] creation: lets
    /// [`Metrics::record_tick`] skip the rates' lock between samples.
    pub(super) next_rate_sample_ns: AtomicU64,
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
}

/// The most recent durations, at most `len`: the tick and commit windows behind `/status`.
pub(super) struct DurationWindow {
    recent: VecDeque<Duration>,
    len: usize,
}

impl DurationWindow {
    pub(super) fn new(len: usize) -> DurationWindow {
        DurationWindow {
            recent: VecDeque::with_capacity(len),
            len,
        }
    }

    /// Keeps `d`, dropping the oldest beyond the window's length.
    pub(super) fn push(&mut self, d: Duration) {
        if self.recent.len() == self.len {
            self.recent.pop_front();
        }
        self.recent.push_back(d);
    }

    /// p50, p99 and max of the window, milliseconds (zeros when empty).
    pub(super) fn p50_p99_max_ms(&self) -> [f64; 3] {
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
            messages_in: LabelledCounters::new(&recorder, MESSAGES_IN, "type", &[]),
            messages_out: LabelledCounters::new(&recorder, MESSAGES_OUT, "type", &[]),
            drops: LabelledCounters::new(&recorder, DROPS, "reason", DROP_REASONS),
            recorder,
            prometheus,
            handles,
            counts,
            tick_window: Mutex::new(DurationWindow::new(TICK_WINDOW_LEN)),
            commit_window: Mutex::new(DurationWindow::new(COMMIT_WINDOW_LEN)),
            entities: Mutex::new(EntityTable::default()),
            trails: Mutex::new(TrailRing::default()),
            users: Mutex::new(BTreeMap::new()),
            rates: Mutex::new(RateHistory::default()),
            top_connections: Mutex::new(Vec::new()),
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
        let now = Instant::now();
        let since_start = now.saturating_duration_since(self.started).as_nanos() as u64;
        if since_start >= self.counts.next_rate_sample_ns.load(Relaxed) {
            self.sample_rates(now);
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

    /// Something was dropped for `reason` (a fixed string such as `"datagram_inbox_full"`; list
    /// new reasons in [`DROP_REASONS`] so that their series exist from the start).
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
}
