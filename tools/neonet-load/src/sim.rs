//! `neonet-load sim`: entity replication over the deterministic in-memory network.
//!
//! The measurement itself lives in `neonet_proto`; this module only turns [`SimArgs`] into runs
//! and prints the results:
//! - bandwidth, for both scenarios: [`neonet_proto::transform::scenario::bench_run`] (the
//!   server's replicators and the clients' receivers over a seeded lossy link);
//! - for `crowd` also prediction and interpolation quality: [`neonet_proto::predict::bench_run`]
//!   (one server and `--entities` predicting, interpolating players over its own link).
//!
//! Both runs are seeded by `--seed`: the same arguments print the same report.

use std::io::Write;

use anyhow::Context;
use neonet_proto::predict::{self, PredictionReport};
use neonet_proto::transform::scenario::{self, BenchParams, TransformReport};
use serde::Serialize;

use crate::cli::{Scenario, SimArgs};

/// How the two measurements model jitter, for the report (they differ, and a reader comparing
/// runs needs to know).
const JITTER_MODEL_TRANSFORMS: &str = "each datagram's one-way delay is rtt/2 + uniform(0, jitter)";
const JITTER_MODEL_PREDICTION: &str =
    "each datagram's one-way delay is rtt/2 - jitter/2 + uniform(0, jitter)";

/// The network a `sim` run used.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimNetwork {
    /// Probability each datagram is lost, per direction.
    pub loss: f64,
    /// Round-trip time, milliseconds.
    pub rtt_ms: u64,
    /// Jitter, milliseconds (see `jitter_model`).
    pub jitter_ms: u64,
    /// How the jitter is applied, per measurement.
    pub jitter_model: Vec<&'static str>,
}

/// Prediction and interpolation figures (`crowd` only).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimPrediction {
    /// Players simulated (each a predicting client).
    pub players: u32,
    /// Mispredictions corrected, per client per second.
    pub prediction_corrections_per_s: f64,
    /// 99th percentile prediction error over compared authoritative states, metres.
    pub prediction_error_p99_m: f64,
    /// Largest prediction error, metres.
    pub prediction_error_max_m: f64,
    /// Mean render delay of interpolated entities, milliseconds.
    pub interpolation_delay_ms: f64,
    /// The send interval the delay is judged against, milliseconds.
    pub send_interval_ms: f64,
    /// 99th percentile distance between what a client renders and the server's truth at the
    /// same instant, metres.
    pub interpolation_error_p99_m: f64,
    /// Interpolation underruns per entity stream per second.
    pub underruns_per_s: f64,
    /// Fraction of rendered entity-frames that were underruns.
    pub underrun_frame_fraction: f64,
    /// Inputs that reached the server after their tick ran (after warm-up).
    pub inputs_late: u64,
    /// Corrections shown as snaps rather than smoothed.
    pub snaps: u64,
}

impl SimPrediction {
    fn new(players: u32, r: &PredictionReport) -> SimPrediction {
        SimPrediction {
            players,
            prediction_corrections_per_s: r.prediction_corrections_per_s,
            prediction_error_p99_m: r.prediction_error_p99_m,
            prediction_error_max_m: r.prediction_error_max_m,
            interpolation_delay_ms: r.interpolation_delay_ms,
            send_interval_ms: r.send_interval_ms,
            interpolation_error_p99_m: r.interpolation_error_p99_m,
            underruns_per_s: r.underruns_per_s,
            underrun_frame_fraction: r.underrun_frame_fraction,
            inputs_late: r.inputs_late,
            snaps: r.snaps,
        }
    }
}

/// What `neonet-load sim` prints: the flat figures the transforms and prediction issues ask for,
/// then the full transform report for detail.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimReport {
    /// `cubes` or `crowd`.
    pub scenario: &'static str,
    /// Entities in the world.
    pub entities: u32,
    /// Clients receiving transforms.
    pub clients: u32,
    /// Server tick and send rate, Hz.
    pub hz: u32,
    /// Simulated seconds.
    pub seconds: u64,
    /// Seed of both runs.
    pub seed: u64,
    /// The network used.
    pub network: SimNetwork,
    /// Mean server → client bandwidth per client, kbit/s (datagram payloads).
    pub kbps_per_client: f64,
    /// The same on the wire: payloads plus the transport's per-datagram overhead
    /// (`overhead_bytes_per_datagram`: IPv4, UDP, QUIC short header, DATAGRAM frame, AEAD tag).
    pub wire_kbps_per_client: f64,
    /// Bytes of transport overhead counted per datagram in `wire_kbps_per_client`.
    pub overhead_bytes_per_datagram: usize,
    /// Position error of moving bodies, 99th percentile, metres: the client's latest value
    /// against the truth at the client's newest tick (staleness counted).
    pub moving_error_p99_m: f64,
    /// Largest such error, metres.
    pub moving_error_max_m: f64,
    /// Mean bytes per update of a changed entity (all datagram bytes / updates).
    pub bytes_per_entity_update: f64,
    /// Entity updates sent per second per client.
    pub updates_per_s: f64,
    /// The same updates as the reference engine encodes them (msgpack, float64 arrays), bytes.
    pub baseline_bytes_per_entity_update: f64,
    /// `baseline_bytes_per_entity_update / bytes_per_entity_update`.
    pub ratio_vs_baseline: f64,
    /// Prediction and interpolation (`crowd` only), flattened into the top level of the JSON
    /// so every figure the issues name sits beside the bandwidth ones.
    #[serde(flatten)]
    pub prediction: Option<SimPrediction>,
    /// The whole transform measurement.
    pub transforms: TransformReport,
}

/// Runs the simulation described by `args` and prints its results (a table, or JSON with
/// `--json`).
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let report = measure(&args)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report).context("writing JSON")?;
        writeln!(out)?;
    } else {
        write_table(&report, &mut out)?;
    }
    Ok(())
}

/// Runs both measurements.
pub fn measure(args: &SimArgs) -> anyhow::Result<SimReport> {
    let entities = args.entities();
    let hz = args.hz();
    let hz_u16 = u16::try_from(hz).context("--hz does not fit the server's tick rate")?;
    let scenario_kind = match args.scenario {
        Scenario::Cubes => scenario::Scenario::Cubes,
        Scenario::Crowd => scenario::Scenario::Crowd,
        Scenario::Burst => scenario::Scenario::Burst,
    };
    tracing::info!(
        scenario = ?args.scenario,
        entities,
        clients = args.clients,
        hz,
        seconds = args.seconds,
        loss = args.loss,
        rtt_ms = args.rtt_ms,
        jitter_ms = args.jitter_ms,
        seed = args.seed,
        "simulating"
    );
    let transforms = scenario::bench_run(&BenchParams {
        scenario: scenario_kind,
        entities: entities as usize,
        clients: args.clients as usize,
        hz: hz_u16,
        seconds: args.seconds as f64,
        loss: args.loss,
        rtt_ms: args.rtt_ms,
        jitter_ms: args.jitter_ms,
        seed: args.seed,
        link_kbps: args.link_kbps.unwrap_or(0),
        link_change: None,
        budget_kbps: args.budget_kbps.unwrap_or(0),
    });
    let mut jitter_model = vec![JITTER_MODEL_TRANSFORMS];
    let prediction = match args.scenario {
        Scenario::Cubes | Scenario::Burst => None,
        Scenario::Crowd => {
            jitter_model.push(JITTER_MODEL_PREDICTION);
            let r = predict::bench_run(
                entities as usize,
                hz_u16,
                args.seconds as f64,
                args.loss,
                args.rtt_ms as f64,
                args.jitter_ms as f64,
                args.seed,
            );
            Some(SimPrediction::new(entities, &r))
        }
    };
    Ok(SimReport {
        scenario: match args.scenario {
            Scenario::Cubes => "cubes",
            Scenario::Crowd => "crowd",
            Scenario::Burst => "burst",
        },
        entities,
        clients: args.clients,
        hz,
        seconds: args.seconds,
        seed: args.seed,
        network: SimNetwork {
            loss: args.loss,
            rtt_ms: args.rtt_ms,
            jitter_ms: args.jitter_ms,
            jitter_model,
        },
        kbps_per_client: transforms.kbps_per_client,
        wire_kbps_per_client: transforms.wire_kbps_per_client,
        overhead_bytes_per_datagram: transforms.overhead_bytes_per_datagram,
        moving_error_p99_m: transforms.moving_error_p99_m,
        moving_error_max_m: transforms.moving_error_max_m,
        bytes_per_entity_update: transforms.bytes_per_entity_update,
        updates_per_s: transforms.updates_per_s,
        baseline_bytes_per_entity_update: transforms.baseline_bytes_per_entity_update,
        ratio_vs_baseline: transforms.ratio_vs_baseline,
        prediction,
        transforms,
    })
}

/// Writes the human table.
pub fn write_table(r: &SimReport, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "neonet-load sim: {} · {} entities · {} client(s) · {} Hz · {} s · loss {:.1}% · rtt {} ms · jitter {} ms · seed {}",
        r.scenario,
        r.entities,
        r.clients,
        r.hz,
        r.seconds,
        r.network.loss * 100.0,
        r.network.rtt_ms,
        r.network.jitter_ms,
        r.seed
    )?;
    let t = &r.transforms;
    let mut rows: Vec<(&str, String)> = vec![
        (
            "kbps_per_client (mean, payload)",
            format!("{:.1}", r.kbps_per_client),
        ),
        (
            "wire_kbps_per_client (mean)",
            format!(
                "{:.1} (payload + {} bytes per datagram)",
                r.wire_kbps_per_client, r.overhead_bytes_per_datagram
            ),
        ),
        (
            "bytes_per_entity_update",
            format!("{:.2}", r.bytes_per_entity_update),
        ),
        ("updates_per_s", format!("{:.1}", r.updates_per_s)),
        (
            "baseline_bytes_per_entity_update",
            format!("{:.2}", r.baseline_bytes_per_entity_update),
        ),
        ("ratio_vs_baseline", format!("{:.1}×", r.ratio_vs_baseline)),
        (
            "upstream_kbps_per_client",
            format!("{:.1}", t.upstream_kbps_per_client),
        ),
        ("datagrams_per_s", format!("{:.1}", t.datagrams_per_s)),
        ("absolute_fraction", format!("{:.3}", t.absolute_fraction)),
        ("moving_mean", format!("{:.1}", t.moving_mean)),
        ("moving_error_p99_m", format!("{:.4}", r.moving_error_p99_m)),
        (
            "moving_error_max_m",
            format!(
                "{:.4} (rotation max {:.2}°)",
                r.moving_error_max_m, t.moving_rotation_error_max_deg
            ),
        ),
        (
            "moving_error_near/far_p99_m",
            format!(
                "{:.4} / {:.4} (within / beyond {} m of the viewer; {} / {} samples)",
                t.moving_error_near_p99_m,
                t.moving_error_far_p99_m,
                neonet_proto::transform::scenario::NEAR_RADIUS_M,
                t.moving_samples_near_far.0,
                t.moving_samples_near_far.1
            ),
        ),
        (
            "rest_recovery_s_max",
            format!("{:.2}", t.rest_recovery_s_max),
        ),
        (
            "multi_datagram_ticks",
            format!("{}", t.multi_datagram_ticks),
        ),
        (
            "budget",
            format!(
                "min {:.1} kbit/s, {} decreases, {} bottleneck drops",
                t.budget_kbps_min, t.budget_decreases, t.link_queue_drops
            ),
        ),
        ("final_error_m_max", format!("{:.4}", t.final_error_m_max)),
    ];
    if let Some(p) = &r.prediction {
        rows.extend([
            (
                "prediction_corrections_per_s",
                format!("{:.3}", p.prediction_corrections_per_s),
            ),
            (
                "prediction_error_p99_m",
                format!("{:.4}", p.prediction_error_p99_m),
            ),
            (
                "interpolation_delay_ms",
                format!(
                    "{:.1} (send interval {:.1})",
                    p.interpolation_delay_ms, p.send_interval_ms
                ),
            ),
            (
                "interpolation_error_p99_m",
                format!("{:.4}", p.interpolation_error_p99_m),
            ),
            (
                "underruns_per_s",
                format!(
                    "{:.3} ({:.2}% of frames)",
                    p.underruns_per_s,
                    p.underrun_frame_fraction * 100.0
                ),
            ),
        ]);
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        writeln!(out, "  {key:<width$}  {value}")?;
    }
    for model in &r.network.jitter_model {
        writeln!(out, "  (jitter: {model})")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(scenario: Scenario) -> SimArgs {
        SimArgs {
            scenario,
            entities: Some(20),
            clients: 1,
            hz: None,
            seconds: 2,
            loss: 0.0,
            rtt_ms: 100,
            jitter_ms: 0,
            seed: 1,
            budget_kbps: None,
            link_kbps: None,
            json: false,
        }
    }

    #[test]
    fn crowd_reports_prediction_and_cubes_do_not() {
        let crowd = measure(&args(Scenario::Crowd)).unwrap();
        assert_eq!(crowd.hz, 30);
        assert!(crowd.prediction.is_some());
        assert!(crowd.bytes_per_entity_update > 0.0);
        let cubes = measure(&args(Scenario::Cubes)).unwrap();
        assert_eq!(cubes.hz, 60);
        assert!(cubes.prediction.is_none());
        let mut table = Vec::new();
        write_table(&crowd, &mut table).unwrap();
        assert!(String::from_utf8(table)
            .unwrap()
            .contains("prediction_error_p99_m"));
    }
}
