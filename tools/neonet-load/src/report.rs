//! What `run` measures: latency recorders, the final report, its table and its JSON.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a recorder tells apart, in microseconds: one hour. Anything slower is
/// recorded as one hour (a run that slow has failed anyway).
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// Significant decimal digits kept by the recorders: 3, so every percentile is within 0.1%.
const LATENCY_SIGFIG: u8 = 3;

/// Distinct error messages kept for the report: 10; the `errors` count still counts them all.
pub const MAX_REPORTED_ERRORS: usize = 10;

/// A latency histogram, recorded in microseconds and reported in milliseconds.
#[derive(Clone, Debug)]
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> LatencyRecorder {
        LatencyRecorder::new()
    }
}

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new() -> LatencyRecorder {
        LatencyRecorder {
            // The bounds are constants known to be valid (1 ≤ low, high ≥ 2 × low, sigfig ≤ 5).
            histogram: Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG)
                .expect("constant histogram bounds are valid"),
        }
    }

    /// Records one sample; out-of-range samples are clamped.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram
            .saturating_record(us.clamp(1, LATENCY_MAX_US));
    }

    /// Records `count` samples of the same latency (one per entity update a datagram carried).
    pub fn record_n(&mut self, latency: Duration, count: u64) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let _ = self.histogram.record_n(us.clamp(1, LATENCY_MAX_US), count);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyRecorder) {
        // Both share the same bounds, so addition cannot fail; ignore rather than panic anyway.
        let _ = self.histogram.add(&other.histogram);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The `q` quantile in milliseconds, or `None` without samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.histogram.is_empty() {
            return None;
        }
        Some(self.histogram.value_at_quantile(q) as f64 / 1000.0)
    }

    /// p50 and p99.
    pub fn p50_p99(&self) -> P50P99 {
        P50P99 {
            p50: self.quantile_ms(0.50),
            p99: self.quantile_ms(0.99),
        }
    }

    /// p50, p99 and p99.9.
    pub fn p50_p99_p999(&self) -> P50P99P999 {
        P50P99P999 {
            p50: self.quantile_ms(0.50),
            p99: self.quantile_ms(0.99),
            p999: self.quantile_ms(0.999),
        }
    }
}

/// Median and 99th percentile in milliseconds; `null` in JSON when there were no samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct P50P99 {
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// Median, 99th and 99.9th percentiles in milliseconds; `null` in JSON without samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct P50P99P999 {
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// 99.9th percentile.
    pub p999: Option<f64>,
}

/// Bytes an IPv4 and a UDP header add to each packet on the wire (20 + 8), which quinn's byte
/// counts leave out: `wire_kbps_per_client` adds them per packet.
pub const IP_UDP_HEADER_BYTES: f64 = 28.0;

/// Average traffic per connected client, in kbit/s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct InOut {
    /// Relay → client.
    #[serde(rename = "in")]
    pub in_: f64,
    /// Client → relay.
    pub out: f64,
}

/// How the run was set up, echoed in the report so a JSON file stands on its own.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunSetup {
    /// Relay address loaded (the proxy's when `via_proxy`).
    pub addr: String,
    /// Measured duration after the ramp, in seconds.
    pub duration_s: f64,
    /// Ramp, in seconds.
    pub ramp_s: f64,
    /// Client frame rate, in Hz.
    pub hz: u32,
    /// `walk` or `still`.
    pub movement: String,
    /// Chat messages per client per second.
    pub chat_per_s: f64,
    /// Blueprint edits per client per second.
    pub edits_per_s: f64,
    /// Whether clients went through the impairment proxy.
    pub via_proxy: bool,
    /// Seed of client behaviour and of the proxy.
    pub seed: u64,
    /// Which client the simulated clients were: `full` or `light` (`--client`).
    pub client: String,
    /// How light clients were driven: `loop` or `tasks` (`--light-driver`); absent for full
    /// clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub light_driver: Option<String>,
    /// Entities each client was meant to see within its interest (`--visible`; a spawned
    /// relay's walk area is sized for it).
    pub visible_target: u32,
    /// Whether the spawned relay ran as a process of its own (`--relay-process`).
    pub relay_process: bool,
    /// The CPU the relay process was pinned to (`--relay-cpu`).
    pub relay_cpu: Option<usize>,
    /// The relay process's native QUIC driver when chosen (`--relay-quic-driver`): `tasks` or
    /// `loop`; `None` for the relay's default.
    pub relay_quic_driver: Option<String>,
    /// The CPU the load tool was pinned to (`--load-cpu`).
    pub load_cpu: Option<usize>,
}

/// The result of `neonet-load run`: every figure the load issue asks for.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// How the run was set up.
    pub setup: RunSetup,
    /// Clients asked for.
    pub clients_target: u32,
    /// Clients that joined.
    pub clients_connected: u32,
    /// Clients that failed unexpectedly (could not join, errored, or were disconnected).
    pub clients_failed: u32,
    /// Connect + join time, p50/p99, ms.
    pub join_ms: P50P99,
    /// Server tick time → client receive, on the synced clock, p50/p99/p99.9, ms.
    pub update_latency_ms: P50P99P999,
    /// Entity updates received (the samples behind `update_latency_ms`), all clients together.
    pub updates_received: u64,
    /// Entity records per measured server datagram, on average: about how many moving
    /// entities each client had within its interest (each datagram carries the ones that
    /// changed); `None` without datagrams.
    pub records_per_datagram: Option<f64>,
    /// The clients' estimates of the relay's tick phase, p50/p99, ms: the tick starts are placed
    /// this late, so for a relay whose ticks started at 0 (neonet's, unless its tick clock
    /// skipped after a stall) `update_latency_ms` reads low by up to this much.
    pub tick_phase_ms: P50P99,
    /// Average traffic per connected client, kbit/s: QUIC's UDP payloads (every QUIC header,
    /// frame and AEAD tag included), as quinn counts them.
    pub kbps_per_client: InOut,
    /// The same on the wire: plus [`IP_UDP_HEADER_BYTES`] per packet.
    pub wire_kbps_per_client: InOut,
    /// Average UDP packets per second per connected client, each way: what the kernel and QUIC
    /// pay for per packet. One tick's transforms are one datagram each way, so `--hz` each way
    /// is the ideal; the rest are acknowledgements, clock-sync pings and pongs, and streams.
    pub packets_per_client_s: InOut,
    /// Datagrams the clients detected as lost.
    pub datagrams_lost: u64,
    /// Changes acknowledged as durable per second, across clients; `None` until persistence
    /// acknowledgements exist (see `not_measured`).
    pub acked_changes_per_s: Option<f64>,
    /// Change sent → durable acknowledgement, p50/p99, ms; `None` until measured.
    pub ack_latency_ms: Option<P50P99>,
    /// Errors seen, all clients together.
    pub errors: u64,
    /// Changes the relay refused for a reason a run does not expect (anything but `Busy` and
    /// `RateLimited`, see `driver::refusal_expected`), also counted in `errors`; any fails the run.
    pub refusals_unexpected: u64,
    /// Unexpected disconnects.
    pub disconnects: u64,
    /// Up to [`MAX_REPORTED_ERRORS`] distinct error messages.
    pub first_errors: Vec<String>,
    /// The impairment proxy's counters, when clients went through it.
    pub proxy: Option<neonet_proxy::ProxyStats>,
    /// The relay's own figures, when the run started it (`--spawn-relay`).
    pub relay: Option<RelayFigures>,
    /// The relay's CPU over the measured window, in cores (all its threads: in-process, the
    /// relay's named threads; as a process, `/proc/<pid>/stat` utime + stime).
    pub relay_cpu_cores: Option<f64>,
    /// The relay's CPU per client per tick over the measured window, µs: its CPU time divided by
    /// (clients connected at the window's end × ticks it ran in the window).
    pub relay_us_per_client_tick: Option<f64>,
    /// The part of `relay_us_per_client_tick` spent on the relay's core thread (`neonet-core`:
    /// ticks, replication, every decision), µs.
    pub relay_core_us_per_client_tick: Option<f64>,
    /// The part of `relay_us_per_client_tick` spent on the relay's I/O runtime (`neonet-relay`:
    /// QUIC, TLS, sockets, the stream and datagram tasks), µs.
    pub relay_io_us_per_client_tick: Option<f64>,
    /// The load tool's CPU per client per client frame over the measured window, µs: its cores
    /// (`cpu.load_tool_cores`) ÷ (clients connected at the window's end × `--hz`). What one
    /// simulated client costs, full or light; meaningful only while the load tool got all the
    /// CPU it asked for (not `saturated`).
    pub load_tool_us_per_client_tick: Option<f64>,
    /// A relay process's resident memory over the run (`--relay-process`).
    pub relay_rss: Option<RssFigures>,
    /// Where the CPU went over the measured window; `None` where `/proc` is not readable.
    pub cpu: Option<CpuFigures>,
    /// Fields left empty on purpose, with why: a missing figure is never shown as a zero.
    pub not_measured: Vec<NotMeasured>,
}

/// Where the CPU went over the measured window (after the ramp), in cores: 1.0 is one core
/// busy for the whole window. With a relay this run started (`--spawn-relay`, in this process or
/// its own) its threads are told apart from each other and from the simulated clients, so a run
/// shows whether the relay or the load tool ran out of CPU first, and which half of the relay.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CpuFigures {
    /// Busy time of the whole machine (every process), cores, from `/proc/stat`, which the kernel
    /// samples per clock tick: it can read somewhat below the sum of the threads' exact times.
    pub machine_busy_cores: f64,
    /// Cores the machine has.
    pub machine_cores: usize,
    /// The simulated clients: this process's threads other than an in-process relay's, cores.
    pub load_tool_cores: f64,
    /// The relay's core thread (`neonet-core`: ticks, replication), cores; in this process
    /// or a relay process's (`/proc/<pid>/task`).
    pub relay_core_cores: Option<f64>,
    /// The relay's I/O runtime (`neonet-relay`: QUIC, TLS, sockets), cores.
    pub relay_io_cores: Option<f64>,
    /// The relay's store thread (`neonet-store`: redb commits), cores.
    pub relay_store_cores: Option<f64>,
    /// Whether the machine was saturated ([`CpuFigures::is_saturated`]); the table then warns
    /// that latencies include waiting for a core.
    pub saturated: bool,
}

/// Share of the machine's cores busy from which a run counts as saturated: 95%. Above it
/// threads queue for a core, so latencies measure that queue as much as the relay (and
/// `/proc/stat` reads slightly low, see [`CpuFigures::machine_busy_cores`]).
pub const SATURATED_SHARE: f64 = 0.95;

impl CpuFigures {
    /// Whether `busy_cores` of `cores` is at or above [`SATURATED_SHARE`].
    pub fn is_saturated(busy_cores: f64, cores: usize) -> bool {
        busy_cores >= SATURATED_SHARE * cores as f64
    }
}

/// What a relay spawned by `run --spawn-relay` measured itself (its [`neonet::metrics`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RelayFigures {
    /// The tick period, ms.
    pub tick_period_ms: f64,
    /// Median tick duration (the median of the sampled windows), ms.
    pub tick_p50_ms: f64,
    /// 99th percentile tick duration, the worst of the sampled windows, ms.
    pub tick_p99_ms: f64,
    /// Longest tick seen, ms.
    pub tick_max_ms: f64,
    /// Ticks run.
    pub ticks: u64,
    /// Ticks longer than the period.
    pub tick_overruns: u64,
    /// Joins.
    pub joins: u64,
    /// Datagrams sent by the relay.
    pub datagrams_out: u64,
    /// Datagrams received by the relay.
    pub datagrams_in: u64,
    /// Payload bytes sent (datagrams and streams).
    pub bytes_out: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Inputs refused by rate limits.
    pub rate_limit_hits: u64,
    /// Persistence commit latency (a change's enqueue → durable), the worst sampled window's
    /// p99, ms; 0 when nothing was committed.
    pub persist_commit_p99_ms: f64,
    /// Longest persistence commit latency seen, ms.
    pub persist_commit_max_ms: f64,
}

/// One sample of a relay process's resident memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct RssSample {
    /// Seconds since the run started (ramp included).
    pub t_s: f64,
    /// Resident memory (`VmRSS`), bytes.
    pub bytes: u64,
}

/// A relay process's resident memory over the run, sampled every `--rss-interval`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RssFigures {
    /// The last sample, bytes (taken as the measured window closed).
    pub last_bytes: u64,
    /// The largest sample, bytes.
    pub max_bytes: u64,
    /// When the baseline was taken, seconds since the start: the first sample a minute or
    /// more after the ramp; `None` for a run shorter than that.
    pub baseline_at_s: Option<f64>,
    /// The baseline, bytes.
    pub baseline_bytes: Option<u64>,
    /// The last sample against the baseline, percent (a soak's "flat within 5%").
    pub growth_pct: Option<f64>,
    /// The largest sample from the baseline on against it, percent.
    pub max_growth_pct: Option<f64>,
    /// Every sample, oldest first.
    pub samples: Vec<RssSample>,
}

/// A report field that this run could not measure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NotMeasured {
    /// The field's name.
    pub field: &'static str,
    /// Why.
    pub reason: &'static str,
}

impl Report {
    /// True when every client that was asked for joined, none failed, and the relay refused no
    /// change for a reason a run does not expect (`refusals_unexpected`): the exit status.
    pub fn succeeded(&self) -> bool {
        self.clients_failed == 0
            && self.clients_connected == self.clients_target
            && self.refusals_unexpected == 0
    }

    /// Writes the human table.
    pub fn write_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        let s = &self.setup;
        writeln!(
            out,
            "neonet-load run: {} · {} {} clients · {:.0}s (+{:.0}s ramp) · {} Hz · move {} · seed {}{}",
            s.addr,
            self.clients_target,
            s.client,
            s.duration_s,
            s.ramp_s,
            s.hz,
            s.movement,
            s.seed,
            if s.via_proxy { " · via proxy" } else { "" }
        )?;
        let rows: Vec<(&str, String)> = vec![
            ("clients_target", self.clients_target.to_string()),
            ("clients_connected", self.clients_connected.to_string()),
            ("clients_failed", self.clients_failed.to_string()),
            (
                "join_ms p50 / p99",
                fmt_ms(&[self.join_ms.p50, self.join_ms.p99]),
            ),
            (
                "update_latency_ms p50 / p99 / p999",
                fmt_ms(&[
                    self.update_latency_ms.p50,
                    self.update_latency_ms.p99,
                    self.update_latency_ms.p999,
                ]),
            ),
            ("updates_received", self.updates_received.to_string()),
            (
                "records_per_datagram",
                self.records_per_datagram
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(|| "–".into()),
            ),
            (
                "tick_phase_ms p50 / p99",
                fmt_ms(&[self.tick_phase_ms.p50, self.tick_phase_ms.p99]),
            ),
            (
                "kbps_per_client in / out",
                format!(
                    "{:.1} / {:.1}",
                    self.kbps_per_client.in_, self.kbps_per_client.out
                ),
            ),
            (
                "wire_kbps_per_client in / out",
                format!(
                    "{:.1} / {:.1} (+ {IP_UDP_HEADER_BYTES} bytes per packet)",
                    self.wire_kbps_per_client.in_, self.wire_kbps_per_client.out
                ),
            ),
            (
                "packets_per_client_s in / out",
                format!(
                    "{:.1} / {:.1}",
                    self.packets_per_client_s.in_, self.packets_per_client_s.out
                ),
            ),
            ("datagrams_lost", self.datagrams_lost.to_string()),
            (
                "acked_changes_per_s",
                self.acked_changes_per_s
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(|| "not measured".into()),
            ),
            (
                "ack_latency_ms p50 / p99",
                self.ack_latency_ms
                    .as_ref()
                    .map(|p| fmt_ms(&[p.p50, p.p99]))
                    .unwrap_or_else(|| "not measured".into()),
            ),
            ("errors", self.errors.to_string()),
            ("refusals_unexpected", self.refusals_unexpected.to_string()),
            ("disconnects", self.disconnects.to_string()),
            (
                "load_tool_us_per_client_tick",
                self.load_tool_us_per_client_tick
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(|| "not measured".into()),
            ),
            (
                "relay_us_per_client_tick",
                match (
                    self.relay_us_per_client_tick,
                    self.relay_core_us_per_client_tick,
                    self.relay_io_us_per_client_tick,
                ) {
                    (Some(v), Some(core), Some(io)) => {
                        format!("{v:.2} (core {core:.2} · I/O {io:.2})")
                    }
                    (Some(v), _, _) => format!("{v:.2}"),
                    _ => "not measured".into(),
                },
            ),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in rows {
            writeln!(out, "  {key:<width$}  {value}")?;
        }
        if let Some(p) = &self.proxy {
            writeln!(
                out,
                "  proxy: to relay {} in, {} dropped, {} duplicated, {} overflowed, {} queue-dropped; \
                 to clients {} in, {} dropped, {} duplicated, {} overflowed, {} queue-dropped",
                p.to_upstream.packets_in,
                p.to_upstream.dropped,
                p.to_upstream.duplicated,
                p.to_upstream.overflowed,
                p.to_upstream.queue_dropped,
                p.to_client.packets_in,
                p.to_client.dropped,
                p.to_client.duplicated,
                p.to_client.overflowed,
                p.to_client.queue_dropped,
            )?;
        }
        if let Some(r) = &self.relay {
            writeln!(
                out,
                "  relay: tick p50 {:.2} ms · p99 {:.2} ms · max {:.2} ms (period {:.2} ms) · \
                 {} overruns in {} ticks · {} joins · datagrams out {} in {} · \
                 {} rate-limit hits",
                r.tick_p50_ms,
                r.tick_p99_ms,
                r.tick_max_ms,
                r.tick_period_ms,
                r.tick_overruns,
                r.ticks,
                r.joins,
                r.datagrams_out,
                r.datagrams_in,
                r.rate_limit_hits,
            )?;
            if r.persist_commit_max_ms > 0.0 {
                writeln!(
                    out,
                    "  relay: persistence commit (enqueue → durable) p99 {:.2} ms · max {:.2} ms",
                    r.persist_commit_p99_ms, r.persist_commit_max_ms,
                )?;
            }
        }
        if let Some(m) = &self.relay_rss {
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            let growth = match (m.baseline_at_s, m.growth_pct, m.max_growth_pct) {
                (Some(at), Some(g), Some(max)) => {
                    format!(" · growth since {at:.0} s: {g:+.1}% (largest {max:+.1}%)")
                }
                _ => " · growth: not measured (a minute past the ramp not reached)".into(),
            };
            writeln!(
                out,
                "  relay memory (RSS): last {:.1} MiB · max {:.1} MiB{growth}",
                mib(m.last_bytes),
                mib(m.max_bytes),
            )?;
        }
        if let Some(c) = &self.cpu {
            let mut line = format!(
                "  cpu (cores, measured window): machine {:.2} of {} busy · load tool {:.2}",
                c.machine_busy_cores, c.machine_cores, c.load_tool_cores
            );
            let parts: Vec<String> = [
                ("core", c.relay_core_cores),
                ("I/O", c.relay_io_cores),
                ("store", c.relay_store_cores),
            ]
            .into_iter()
            .filter_map(|(name, v)| Some(format!("{name} {:.2}", v?)))
            .collect();
            if self.relay_cpu_cores.is_some() || !parts.is_empty() {
                line.push_str(" · relay");
            }
            if let Some(v) = self.relay_cpu_cores {
                line.push_str(&format!(" {v:.2}"));
            }
            if !parts.is_empty() {
                line.push_str(&format!(" ({})", parts.join(" · ")));
            }
            writeln!(out, "{line}")?;
            if c.saturated {
                writeln!(
                    out,
                    "  warning: the machine was saturated ({:.2} of {} cores busy): latencies and \
                     tick times include waiting for a core; with the load tool on the same \
                     machine they measure the load tool's share as much as the relay",
                    c.machine_busy_cores, c.machine_cores
                )?;
            }
        }
        for note in &self.not_measured {
            writeln!(out, "  ({}: {})", note.field, note.reason)?;
        }
        if !self.first_errors.is_empty() {
            writeln!(out, "  first errors:")?;
            for e in &self.first_errors {
                writeln!(out, "    {e}")?;
            }
        }
        Ok(())
    }

    /// Writes the relay's memory samples, one line each (`--soak`).
    pub fn write_rss_series(&self, out: &mut impl Write) -> std::io::Result<()> {
        let Some(m) = &self.relay_rss else {
            return Ok(());
        };
        writeln!(out, "relay RSS over time (s, MiB):")?;
        for s in &m.samples {
            writeln!(
                out,
                "  {:>7.1}  {:>8.1}",
                s.t_s,
                s.bytes as f64 / (1024.0 * 1024.0)
            )?;
        }
        Ok(())
    }

    /// Writes the JSON report to `path` (creating its folder, `target/` say), or to stdout when
    /// `path` is `-`.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        if path == Path::new("-") {
            println!("{json}");
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {} for the JSON report", dir.display()))?;
            }
            std::fs::write(path, json + "\n")
                .with_context(|| format!("writing the JSON report to {}", path.display()))?;
        }
        Ok(())
    }
}

/// `a / b / c` in milliseconds, `–` for a figure without samples.
fn fmt_ms(values: &[Option<f64>]) -> String {
    values
        .iter()
        .map(|v| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into()))
        .collect::<Vec<_>>()
        .join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_reports_milliseconds() {
        let mut r = LatencyRecorder::new();
        assert_eq!(r.quantile_ms(0.5), None);
        for ms in 1..=100 {
            r.record(Duration::from_millis(ms));
        }
        let p = r.p50_p99_p999();
        assert!((p.p50.unwrap() - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99.unwrap() - 99.0).abs() < 0.1, "{p:?}");
        let mut total = LatencyRecorder::new();
        total.merge(&r);
        total.merge(&r);
        assert_eq!(total.count(), 200);
    }

    #[test]
    fn the_cpu_split_is_printed_and_a_relay_elsewhere_has_no_parts() {
        let mut report = Report {
            cpu: Some(CpuFigures {
                machine_busy_cores: 1.6,
                machine_cores: 2,
                load_tool_cores: 0.97,
                relay_core_cores: Some(0.31),
                relay_io_cores: Some(0.37),
                relay_store_cores: Some(0.0),
                saturated: CpuFigures::is_saturated(1.6, 2),
            }),
            ..Report::default()
        };
        let mut table = Vec::new();
        report.write_table(&mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(
            table.contains(
                "machine 1.60 of 2 busy · load tool 0.97 · relay (core 0.31 · I/O 0.37 · store 0.00)"
            ),
            "{table}"
        );
        assert!(
            !table.contains("saturated"),
            "1.6 of 2 cores is not saturated"
        );
        let v: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(v["cpu"]["relay_io_cores"], 0.37);
        // A relay in another process: only the load tool's own share is known.
        if let Some(c) = report.cpu.as_mut() {
            (c.relay_core_cores, c.relay_io_cores, c.relay_store_cores) = (None, None, None);
        }
        let mut table = Vec::new();
        report.write_table(&mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(!table.contains("relay ("), "{table}");
    }

    #[test]
    fn the_relays_cost_per_client_tick_is_split_into_core_and_io() {
        let report = Report {
            relay_us_per_client_tick: Some(62.78),
            relay_core_us_per_client_tick: Some(27.9),
            relay_io_us_per_client_tick: Some(34.4),
            ..Report::default()
        };
        let mut table = Vec::new();
        report.write_table(&mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("62.78 (core 27.90 · I/O 34.40)"), "{table}");
        let v: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(v["relay_core_us_per_client_tick"], 27.9);
    }

    #[test]
    fn a_saturated_machine_is_flagged_in_the_table_and_the_json() {
        assert!(CpuFigures::is_saturated(1.91, 2));
        assert!(!CpuFigures::is_saturated(1.89, 2));
        let report = Report {
            cpu: Some(CpuFigures {
                machine_busy_cores: 2.0,
                machine_cores: 2,
                load_tool_cores: 1.0,
                saturated: CpuFigures::is_saturated(2.0, 2),
                ..CpuFigures::default()
            }),
            ..Report::default()
        };
        let mut table = Vec::new();
        report.write_table(&mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(
            table.contains("warning: the machine was saturated (2.00 of 2 cores busy)"),
            "{table}"
        );
        let v: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(v["cpu"]["saturated"], true);
    }

    #[test]
    fn the_json_report_creates_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target").join("report.json");
        Report::default().write_json(&path).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(v.get("clients_target").is_some());
    }

    #[test]
    fn json_says_not_measured_rather_than_zero() {
        let report = Report {
            clients_target: 2,
            not_measured: vec![NotMeasured {
                field: "acked_changes_per_s",
                reason: "needs persistence",
            }],
            ..Report::default()
        };
        let v: serde_json::Value = serde_json::to_value(&report).unwrap();
        for key in [
            "clients_target",
            "clients_connected",
            "join_ms",
            "update_latency_ms",
            "kbps_per_client",
            "wire_kbps_per_client",
            "packets_per_client_s",
            "datagrams_lost",
            "acked_changes_per_s",
            "ack_latency_ms",
            "errors",
            "refusals_unexpected",
            "disconnects",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert!(v["acked_changes_per_s"].is_null());
        assert!(v["ack_latency_ms"].is_null());
        assert!(v["kbps_per_client"].get("in").is_some());
        assert!(v["update_latency_ms"].get("p999").is_some());
        assert!(!report.succeeded());
        let mut table = Vec::new();
        report.write_table(&mut table).unwrap();
        assert!(String::from_utf8(table).unwrap().contains("not measured"));
    }
}
