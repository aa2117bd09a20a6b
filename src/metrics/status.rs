//! What `/status` shows: the users the relay publishes ([`UserReport`], turned into rates) and
//! the live [`Status`] snapshot (totals, rates, tick timing, top entities, recent trails),
//! served as JSON by the HTTP server.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{
    lock, Metrics, HISTORY_LEN, HISTORY_STEP, RATE_GAP, RATE_SAMPLE_SPACING, RATE_WINDOW,
    STATUS_USERS_MAX, TRAIL_WINDOW, USER_NAME_CHARS_MAX,
};

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

/// One of the connections that cost the most bytes, as the core counted them
/// ([`neonet_proto::server::ServerCore::top_conns_by_bytes`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    /// The core's connection id.
    pub conn_id: u64,
    /// Its session, if joined.
    pub session_id: Option<u64>,
    /// Its user's display name, if joined.
    pub name: Option<String>,
    /// Whether it watches as a spectator.
    pub spectator: bool,
    /// Bytes received from it (frames and datagrams).
    pub bytes_in: u64,
    /// Bytes sent to it (frames and datagrams).
    pub bytes_out: u64,
    /// Datagrams received from it.
    pub datagrams_in: u64,
    /// Transform datagrams sent to it.
    pub datagrams_out: u64,
    /// Of those, not acknowledged: lost or in flight.
    pub datagrams_unacked: u64,
    /// Own-player state bytes sent to it.
    pub own_state_bytes_out: u64,
    /// Round-trip time from its acknowledgements, milliseconds.
    pub rtt_ms: f64,
    /// Share of its transform budget the last tick used (1 = all).
    pub budget_used: f64,
    /// Moves of its player the server refused.
    pub corrections: u64,
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
    /// Median tick duration over the last [`TICK_WINDOW_LEN`](super::TICK_WINDOW_LEN) ticks,
    /// milliseconds.
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
    /// Its display name when the relay published one ([`Metrics::publish_entity_names`]):
    /// a player's user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Bytes sent for it since it was first seen (or last forgotten: removed, or idle for
    /// [`ENTITY_IDLE_FORGET`](super::ENTITY_IDLE_FORGET)).
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

/// One point of the live view's chart: the figures `/status` reported at that time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// How long before the snapshot it was taken, milliseconds.
    pub age_ms: u64,
    /// [`BandwidthStatus::kbps_in`] then.
    pub kbps_in: f64,
    /// [`BandwidthStatus::kbps_out`] then.
    pub kbps_out: f64,
    /// [`TickStatus::p99_ms`] then.
    pub tick_p99_ms: f64,
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
    /// [`COMMIT_WINDOW_LEN`](super::COMMIT_WINDOW_LEN) commits that carried changes,
    /// milliseconds: p50, p99, max.
    pub persist_commit_ms: [f64; 3],
    /// Inputs refused by rate limits since start.
    pub rate_limit_hits: u64,
    /// The [`TOP_ENTITIES_K`](super::TOP_ENTITIES_K) entities that cost the most bytes, most first.
    pub top_entities: Vec<EntityBandwidth>,
    /// The [`TOP_CONNECTIONS_K`](super::TOP_CONNECTIONS_K) connections that cost the most bytes
    /// (both ways), most first, as the relay last published them.
    #[serde(default)]
    pub top_connections: Vec<ConnectionStatus>,
    /// Trail samples from the last [`TRAIL_WINDOW`] (and after the requested sequence number),
    /// oldest first.
    pub trails: Vec<TrailSample>,
    /// The sequence number the next trail sample will get.
    pub trail_next_seq: u64,
    /// The figures of the last [`HISTORY_LEN`] × [`HISTORY_STEP`] (30 s), one point per
    /// [`HISTORY_STEP`], oldest first: the live view fills its chart from them when it opens.
    /// `GET /status?history=false` leaves them out.
    #[serde(default)]
    pub history: Vec<HistoryPoint>,
}

pub(super) struct UserEntry {
    report: UserReport,
    /// When, and at what cumulative counts, the rates were last computed.
    rate_base: (Instant, u64, u64),
    kbps_in: f64,
    kbps_out: f64,
}

/// A point the relay-wide rates are computed from: cumulative counts at a time.
#[derive(Clone, Copy)]
pub(super) struct RateSample {
    at: Instant,
    bytes_in: u64,
    bytes_out: u64,
    ticks: u64,
}

/// Relay-wide rates at one time.
#[derive(Clone, Copy, Default)]
struct Rates {
    kbps_in: f64,
    kbps_out: f64,
    tick_hz: f64,
}

/// The samples relay-wide rates are computed from and the chart points made of them.
#[derive(Default)]
pub(super) struct RateHistory {
    /// At least [`HISTORY_STEP`] apart, none before a gap of [`RATE_GAP`]; the newest one at
    /// least [`RATE_WINDOW`] old is the oldest kept.
    samples: VecDeque<RateSample>,
    /// At most [`HISTORY_LEN`], each with when it was taken.
    pub(super) points: VecDeque<(Instant, HistoryPoint)>,
}

impl RateHistory {
    /// Rates at `cur` over the actual interval since the newest sample at least
    /// [`RATE_WINDOW`] older (or the oldest there is): zero with no earlier sample.
    fn rates(&self, cur: &RateSample) -> Rates {
        let base = self
            .samples
            .iter()
            .rev()
            .find(|s| cur.at.saturating_duration_since(s.at) >= RATE_WINDOW)
            .or(self.samples.front());
        match base {
            Some(b) if cur.at > b.at => {
                let dt = cur.at.duration_since(b.at);
                Rates {
                    kbps_in: kbps(cur.bytes_in.saturating_sub(b.bytes_in), dt),
                    kbps_out: kbps(cur.bytes_out.saturating_sub(b.bytes_out), dt),
                    tick_hz: cur.ticks.saturating_sub(b.ticks) as f64 / dt.as_secs_f64(),
                }
            }
            _ => Rates::default(),
        }
    }
}

fn kbps(bytes: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 * 8.0 / 1000.0 / secs
    }
}

impl Metrics {
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

    /// Replaces the top connections by bytes shown by `/status` and `/metrics` (at most
    /// [`TOP_CONNECTIONS_K`](super::TOP_CONNECTIONS_K) are kept).
    pub fn publish_top_connections(&self, mut top: Vec<ConnectionStatus>) {
        top.truncate(super::TOP_CONNECTIONS_K);
        *lock(&self.top_connections) = top;
    }

    /// A live snapshot with every trail sample of the last [`TRAIL_WINDOW`].
    pub fn status(&self) -> Status {
        self.status_since(0)
    }

    /// A live snapshot whose trail samples are only those with `seq >= since_seq` (the live
    /// view passes the previous [`Status::trail_next_seq`], so each sample travels once).
    pub fn status_since(&self, since_seq: u64) -> Status {
        self.status_at(since_seq, Instant::now())
    }

    /// The cumulative counts rates are computed from, as of `now`.
    fn rate_sample(&self, now: Instant) -> RateSample {
        let c = &self.counts;
        RateSample {
            at: now,
            bytes_in: c.bytes_in_dgram.load(Relaxed) + c.bytes_in_stream.load(Relaxed),
            bytes_out: c.bytes_out_dgram.load(Relaxed) + c.bytes_out_stream.load(Relaxed),
            ticks: c.ticks.load(Relaxed),
        }
    }

    /// Takes a rate sample and a chart point at `now` if [`HISTORY_STEP`] has passed since the
    /// last (called by [`Metrics::record_tick`] when one is due, and by every status request).
    pub(super) fn sample_rates(&self, now: Instant) {
        let cur = self.rate_sample(now);
        self.observe(&mut lock(&self.rates), cur);
    }

    fn observe(&self, h: &mut RateHistory, cur: RateSample) {
        if let Some(last) = h.samples.back() {
            let since = cur.at.saturating_duration_since(last.at);
            if since < HISTORY_STEP {
                return;
            }
            if since >= RATE_GAP {
                // Nothing sampled for a while: averaging over the gap would show traffic long
                // gone, so the rates start again from this sample.
                h.samples.clear();
            }
        }
        let rates = h.rates(&cur);
        h.samples.push_back(cur);
        // Keep the newest sample at least RATE_WINDOW old as the base, drop older ones.
        while h.samples.len() > 2
            && cur.at.saturating_duration_since(h.samples[1].at) >= RATE_WINDOW
        {
            h.samples.pop_front();
        }
        let [_, tick_p99_ms, _] = lock(&self.tick_window).p50_p99_max_ms();
        h.points.push_back((
            cur.at,
            HistoryPoint {
                age_ms: 0,
                kbps_in: rates.kbps_in,
                kbps_out: rates.kbps_out,
                tick_p99_ms,
            },
        ));
        while h.points.len() > HISTORY_LEN {
            h.points.pop_front();
        }
        let next = cur.at.saturating_duration_since(self.started) + HISTORY_STEP;
        self.counts
            .next_rate_sample_ns
            .store(next.as_nanos() as u64, Relaxed);
    }

    /// [`Metrics::status_since`] as of `now`.
    pub(super) fn status_at(&self, since_seq: u64, now: Instant) -> Status {
        let c = &self.counts;
        let cur = self.rate_sample(now);
        let RateSample {
            bytes_in,
            bytes_out,
            ticks,
            ..
        } = cur;

        let (rates, history) = {
            let mut h = lock(&self.rates);
            self.observe(&mut h, cur);
            let span = HISTORY_STEP * HISTORY_LEN as u32;
            let history = h
                .points
                .iter()
                .filter_map(|(at, p)| {
                    let age = now.saturating_duration_since(*at);
                    (age < span).then(|| HistoryPoint {
                        age_ms: age.as_millis() as u64,
                        ..p.clone()
                    })
                })
                .collect();
            (h.rates(&cur), history)
        };
        let Rates {
            kbps_in,
            kbps_out,
            tick_hz: rate_hz,
        } = rates;

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
            top_entities: self.top_entities_at(now),
            top_connections: lock(&self.top_connections).clone(),
            trails,
            trail_next_seq,
            history,
        }
    }
}
