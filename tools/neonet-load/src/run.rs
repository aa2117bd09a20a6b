//! `neonet-load run`: N simulated clients against a relay over real sockets.
//!
//! The run has three parts, kept apart so the per-client driver can be written against the
//! client library without touching the rest:
//! - orchestration ([`run`]): resolve or spawn the relay, optionally put the impairment proxy in
//!   front of it, start clients evenly over the ramp, stop them after the duration or on Ctrl-C,
//!   show a progress bar;
//! - the per-client driver ([`client_task`], in [`crate::driver`]): connect, move, chat, edit,
//!   measure;
//! - aggregation ([`Aggregate`]): merge every client's [`ClientOutcome`] into the [`Report`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use neonet::config::RelayConfig;
use neonet::metrics::{Metrics, MetricsConfig, Status};
use neonet::relay::{Relay, RelayHandle, RelayHooks};
use neonet::tls::{Fingerprint, Trust};
use neonet_proto::persist::World;
use neonet_proto::rng::Rng;
use neonet_proto::server::{Authenticator, InsecureTokens, TokenGrant};
use neonet_proto::types::{Rank, User, UserId, Vec3};
use neonet_proxy::{Proxy, ProxyConfig, ProxyLimits, ProxyThread};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::{clock_seed, ClientKind, LightDriver, RunArgs};
use crate::cpu::{MachineCpu, ThreadCpu};
use crate::driver::{client_task, ClientOutcome, ClientPlan};
use crate::light::{light_client_task, LightLoop, LOOP_SHARE_DEFAULT};
use crate::relay_proc::{self, RelayProcess, RelayProcessConfig};
use crate::report::{
    CpuFigures, InOut, LatencyRecorder, NotMeasured, RelayFigures, Report, RssFigures, RssSample,
    RunSetup, IP_UDP_HEADER_BYTES, MAX_REPORTED_ERRORS,
};

/// How long clients get to leave cleanly once told to stop: 5 s. Those still running after it
/// are aborted and counted as failed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often the progress bar refreshes: 250 ms.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Why the acknowledgement figures are empty when no client sent a change.
const ACKS_NOT_MEASURED: &str = "no changes sent (--chat-per-s and --edits-per-s are 0)";

/// How often a spawned relay's tick timing is sampled: 5 s, well inside the relay's window of
/// recent ticks (512 ticks, 17 s at 30 Hz).
const RELAY_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Figures every client adds to while it runs, for the progress bar.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Clients joined and not yet gone.
    pub connected: AtomicU64,
    /// Clients that failed so far.
    pub failed: AtomicU64,
    /// Errors so far.
    pub errors: AtomicU64,
    /// Bytes received by all clients so far.
    pub bytes_in: AtomicU64,
    /// Bytes sent by all clients so far.
    pub bytes_out: AtomicU64,
}

/// Runs the load and returns the report (already printed, and written as JSON if asked).
pub async fn run(args: RunArgs) -> anyhow::Result<Report> {
    if args.impairment.is_impaired() && !args.via_proxy {
        anyhow::bail!("--loss, --delay-ms, --jitter-ms, --dup and --reorder need --via-proxy");
    }
    let seed = args.seed.unwrap_or_else(clock_seed);

    // Every client's plan is fixed before anything starts, so a spawned relay can know where
    // each one starts.
    let area_half_m = walk_area_half_m(args.clients, args.visible);
    let mut seeds = Rng::new(seed);
    let mut plans: Vec<ClientPlan> = (0..args.clients)
        .map(|id| ClientPlan {
            id,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            trust: Trust::DangerAcceptAnyCert,
            hz: args.hz,
            movement: args.movement,
            chat_per_s: args.chat_per_s,
            edits_per_s: args.edits_per_s,
            interpolate: args.interpolate,
            seed: seeds.next_u64(),
            run_seed: seed,
            area_half_m,
            token: None,
        })
        .collect();
    let (relay_addr, relay, trust) = if args.spawn_relay && args.relay_process {
        let config = RelayProcessConfig {
            bin: relay_proc::relay_bin(args.relay_bin.as_deref())?,
            tick_hz: args.hz.clamp(
                u32::from(neonet_proto::time::TICK_HZ_MIN),
                u32::from(neonet_proto::time::TICK_HZ_MAX),
            ),
            cpu: args.relay_cpu,
            quic_driver: args.relay_quic_driver,
        };
        let relay = tokio::task::block_in_place(|| relay_proc::start(&config, seed, &mut plans))?;
        let trust = Trust::Sha256(relay.fingerprint);
        (relay.addr, Some(RelayUnderTest::Process(relay)), trust)
    } else if args.spawn_relay {
        let relay = spawn_relay(args.hz, seed, &mut plans).await?;
        let trust = Trust::Sha256(relay.fingerprint);
        (
            relay.addr,
            Some(RelayUnderTest::InProcess(Box::new(relay))),
            trust,
        )
    } else {
        let addr = args
            .addr
            .as_deref()
            .context("--addr or --spawn-relay is required")?;
        let trust = match &args.cert_sha256 {
            Some(hex) => Trust::Sha256(hex.parse::<Fingerprint>()?),
            None => Trust::DevCertDir(args.cert_dir.clone()),
        };
        (resolve(addr).await?, None, trust)
    };
    let proxy = if args.via_proxy {
        Some(start_proxy(&args, relay_addr, seed)?)
    } else {
        None
    };
    let target = proxy.as_ref().map_or(relay_addr, ProxyThread::local_addr);
    tracing::info!(
        relay = %relay_addr,
        %target,
        clients = args.clients,
        duration = %humantime::format_duration(args.duration),
        ramp = %humantime::format_duration(args.ramp),
        hz = args.hz,
        client = ?args.client,
        seed,
        "starting load"
    );

    let live = Arc::new(LiveCounters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let progress = progress_bar(&args);
    let mut aggregate = Aggregate::default();
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    let end = start + args.ramp + args.duration;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut refresh = tokio::time::interval(PROGRESS_INTERVAL);
    let mut relay_watch = RelayWatch::default();
    let mut relay_sample = tokio::time::interval(RELAY_SAMPLE_INTERVAL);
    let mut next_client = 0u32;
    let measure_from = start + args.ramp;
    let mut cpu_start: Option<CpuSnapshot> = None;
    let mut rss = RssWatch::default();
    let mut light_endpoints = SharedEndpoints::new(args.light_share.unwrap_or(1));
    let light_loop = match (args.client, args.light_driver) {
        (ClientKind::Light, LightDriver::Loop) => Some(LightLoop::start(
            target,
            args.light_share.unwrap_or(LOOP_SHARE_DEFAULT),
            live.clone(),
        )?),
        _ => None,
    };
    let mut rss_sample = tokio::time::interval(args.rss_interval);
    loop {
        if next_client == args.clients && tasks.is_empty() {
            // Every client has already ended (they all failed): nothing left to measure.
            break;
        }
        let next_join = (next_client < args.clients).then(|| {
            start
                + args
                    .ramp
                    .mul_f64(f64::from(next_client) / f64::from(args.clients))
        });
        tokio::select! {
            _ = tokio::time::sleep_until(next_join.unwrap_or(end)), if next_join.is_some() => {
                let mut plan = plans[next_client as usize].clone();
                plan.addr = target;
                plan.trust = trust.clone();
                match args.client {
                    ClientKind::Full => tasks.spawn(client_task(plan, live.clone(), stop_rx.clone())),
                    ClientKind::Light => match &light_loop {
                        Some(l) => tasks.spawn(l.client(plan)),
                        None => {
                            let endpoint = light_endpoints.for_client(next_client, target)?;
                            tasks.spawn(light_client_task(plan, endpoint, live.clone(), stop_rx.clone()))
                        }
                    },
                };
                next_client += 1;
            }
            _ = tokio::time::sleep_until(measure_from), if cpu_start.is_none() => {
                cpu_start = CpuSnapshot::take(relay.as_ref());
            }
            _ = tokio::time::sleep_until(end) => break,
            signal = &mut ctrl_c => {
                signal.context("listening for Ctrl-C")?;
                progress.println("interrupted: stopping clients");
                break;
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                aggregate.add(joined, &live);
            }
            _ = refresh.tick() => update_progress(&progress, start, &args, &live),
            _ = relay_sample.tick(), if relay.is_some() => {
                if let Some(status) = relay.as_ref().and_then(RelayUnderTest::status) {
                    relay_watch.sample(&status);
                }
            }
            _ = rss_sample.tick(), if relay.as_ref().is_some_and(|r| r.pid().is_some()) => {
                if let Some(pid) = relay.as_ref().and_then(RelayUnderTest::pid) {
                    rss.sample(start.elapsed(), pid);
                }
            }
        }
    }
    let measured_for = start.elapsed().saturating_sub(args.ramp);
    let connected_at_end = live.connected.load(Ordering::Relaxed);
    let (cpu, relay_cpu) = match cpu_start {
        Some(s) => s.figures_until_now(relay.as_ref()),
        None => (None, None),
    };
    if let Some(pid) = relay.as_ref().and_then(RelayUnderTest::pid) {
        rss.sample(start.elapsed(), pid);
    }

    // Stop: clients see the signal, leave and return what they measured.
    let _ = stop_tx.send(true);
    if let Some(l) = &light_loop {
        l.stop();
    }
    let grace_end = Instant::now() + STOP_GRACE;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(grace_end, tasks.join_next()).await {
            Ok(Some(joined)) => aggregate.add(joined, &live),
            Ok(None) => break,
            Err(_) => {
                let stuck = tasks.len();
                tasks.abort_all();
                aggregate.fail_n(stuck, "did not stop within the grace period");
                break;
            }
        }
    }
    progress.finish_and_clear();
    drop(light_loop);
    let proxy_stats = match proxy {
        Some(proxy) => {
            let stats = proxy.stats();
            tokio::task::spawn_blocking(move || proxy.shutdown())
                .await
                .context("stopping the impairment proxy")?;
            Some(stats)
        }
        None => None,
    };

    let setup = RunSetup {
        addr: target.to_string(),
        duration_s: measured_for.as_secs_f64(),
        ramp_s: args.ramp.as_secs_f64(),
        hz: args.hz,
        movement: format!("{:?}", args.movement).to_lowercase(),
        chat_per_s: args.chat_per_s,
        edits_per_s: args.edits_per_s,
        via_proxy: args.via_proxy,
        seed,
        client: format!("{:?}", args.client).to_lowercase(),
        light_driver: (args.client == ClientKind::Light)
            .then(|| format!("{:?}", args.light_driver).to_lowercase()),
        visible_target: args.visible,
        relay_process: args.relay_process,
        relay_cpu: args.relay_cpu,
        relay_quic_driver: args
            .relay_quic_driver
            .map(|d| format!("{d:?}").to_lowercase()),
        load_cpu: args.load_cpu,
    };
    let mut report = aggregate.report(setup, args.clients);
    report.proxy = proxy_stats;
    report.load_tool_us_per_client_tick = cpu
        .as_ref()
        .filter(|_| connected_at_end > 0)
        .map(|c| c.load_tool_cores * 1e6 / (connected_at_end as f64 * f64::from(args.hz)));
    report.cpu = cpu;
    if let Some(rc) = relay_cpu {
        report.relay_cpu_cores = Some(rc.cores);
        report.relay_us_per_client_tick = rc.us_per_client_tick(connected_at_end);
        // The whole's split by thread, in the threads' share of the relay's CPU.
        let share = |part: Option<f64>| {
            let total = report.relay_us_per_client_tick?;
            let part = part?;
            (rc.cores > 0.0).then(|| total * part / rc.cores)
        };
        let c = report.cpu.as_ref();
        report.relay_core_us_per_client_tick = share(c.and_then(|c| c.relay_core_cores));
        report.relay_io_us_per_client_tick = share(c.and_then(|c| c.relay_io_cores));
    } else if relay.is_some() {
        report.not_measured.push(NotMeasured {
            field: "relay_us_per_client_tick",
            reason: "the measured window never opened, or /proc was not readable",
        });
    }
    if let Some(relay) = relay {
        if let Some(status) = relay.status() {
            report.relay = Some(relay_watch.figures(&status));
        }
        match &relay {
            RelayUnderTest::Process(_) => {
                report.relay_rss = rss.figures(args.ramp);
            }
            RelayUnderTest::InProcess(_) => report.not_measured.push(NotMeasured {
                field: "relay_rss",
                reason:
                    "the relay ran in this process: its memory is not told apart (--relay-process)",
            }),
        }
        relay.shutdown().await?;
    } else {
        report.not_measured.push(NotMeasured {
            field: "relay_us_per_client_tick",
            reason: "the relay is not this run's (--spawn-relay)",
        });
    }
    let json_to_stdout = args.json.as_deref() == Some(std::path::Path::new("-"));
    if json_to_stdout {
        // Keep stdout pure JSON.
        report.write_table(&mut std::io::stderr().lock())
    } else {
        report.write_table(&mut std::io::stdout().lock())
    }
    .context("printing the report")?;
    if args.soak {
        report.write_rss_series(&mut std::io::stderr().lock())?;
    }
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    Ok(report)
}

/// A relay started by `--spawn-relay`: on a runtime of its own (one worker thread), so that the
/// client tasks filling this process's runtime do not delay its ticks, with its metrics at hand.
pub(crate) struct SpawnedRelay {
    /// Its QUIC address.
    pub(crate) addr: SocketAddr,
    /// Its certificate's fingerprint.
    pub(crate) fingerprint: Fingerprint,
    /// Its metrics.
    pub(crate) metrics: Arc<Metrics>,
    runtime: tokio::runtime::Runtime,
    handle: RelayHandle,
    /// The relay's certificate and data folder, removed at the end.
    dir: PathBuf,
}

/// Worker threads of the spawned relay's I/O runtime: 1. The relay's core runs on a thread of
/// its own besides; a second I/O thread would only compete with the clients for the machine's
/// cores.
const RELAY_WORKER_THREADS: usize = 1;

/// How much wider the walk area is than a uniform crowd would need, in area: 1.2. Random-waypoint
/// walkers crowd the middle (a stationary crowd has 45% of itself in the middle quarter, not
/// 25%), which raises the mean count within interest, while the square's edges cut the discs of
/// those near them, which lowers it; with this gain a stationary crowd of 300 or 1,000 sees
/// about the `visible` count (`the_walk_area_is_sized_for_the_visible_count` counts them).
const WALK_AREA_GAIN: f64 = 1.2;

/// Half the side of the square `clients` walk in, m: wide enough that a client's area of
/// interest (the relay's default radius) holds about `visible` others (`--visible`, by default
/// the issue's load of 100) once the walkers are in their long-run spread, which they start in
/// ([`crate::behaviour::Walker::stationary`]), and never smaller than the default 100 m plaza.
fn walk_area_half_m(clients: u32, visible: u32) -> f64 {
    let radius = f64::from(neonet_proto::transform::config::INTEREST_RADIUS_DEFAULT_M);
    let area_m2 = WALK_AREA_GAIN * f64::from(clients) * std::f64::consts::PI * radius * radius
        / f64::from(visible.max(1));
    (area_m2.sqrt() / 2.0).max(crate::behaviour::WALK_AREA_HALF_M)
}

/// Starts a relay on a free loopback port, in a fresh temporary folder, whose world lets every
/// user build (so `--edits-per-s` can add and modify blueprints) and already knows every
/// client's user, with its last position where its walker starts, so each player spawns in its
/// own part of the area instead of everyone at the spawn point. Gives each plan its token (the
/// spawned relay takes plain-text tokens: it lives only in this process, on loopback).
pub(crate) async fn spawn_relay(
    tick_hz: u32,
    seed: u64,
    plans: &mut [ClientPlan],
) -> anyhow::Result<SpawnedRelay> {
    let dir = std::env::temp_dir().join(format!(
        "neonet-load-relay-{}-{:x}",
        std::process::id(),
        seed & 0xFFFF_FFFF
    ));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the relay's folder {}", dir.display()))?;
    let mut config = RelayConfig::for_tests(&dir);
    // A real relay persists: acknowledgements then wait for durable commits, as the
    // acked_changes_per_s and ack_latency_ms figures must show.
    config.persist = true;
    // One address drives every client at many times a person's pace: rate and per-address
    // limits would measure themselves, not the engine (validation and quotas stay on).
    config.limits = neonet::limits::LimitsSection::for_load();
    config.tick_hz = u16::try_from(tick_hz.clamp(
        u32::from(neonet_proto::time::TICK_HZ_MIN),
        u32::from(neonet_proto::time::TICK_HZ_MAX),
    ))
    .context("tick rate")?;
    let metrics = Arc::new(Metrics::new(MetricsConfig {
        tick_period: Duration::from_secs(1) / u32::from(config.tick_hz),
    }));
    let mut world = World::default();
    world.settings.default_rank = Rank::Builder;
    for plan in plans.iter_mut() {
        let user = UserId(u64::from(plan.id) + 1);
        let last_position = plan
            .script()
            .start_position()
            .map(|[x, z]| Vec3::new(x as f32, world.spawn.position.y, z as f32));
        world.users.insert(
            user,
            User {
                id: user,
                name: format!("load{}", plan.id),
                rank: Rank::Builder,
                muted: false,
                banned: false,
                last_position,
                standing: Default::default(),
            },
        );
        plan.token = Some(InsecureTokens.issue(&TokenGrant::user(user)));
    }
    world.next_user_id = plans.len() as u64 + 1;
    let hooks = RelayHooks {
        world,
        metrics: Some(metrics.clone()),
        authenticator: Some(Box::new(InsecureTokens)),
        ..RelayHooks::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RELAY_WORKER_THREADS)
        .thread_name("neonet-relay")
        .enable_all()
        .build()
        .context("starting the relay's runtime")?;
    let handle = runtime
        .spawn(Relay::start_with(config, hooks))
        .await
        .context("the relay's start task")?
        .context("starting the relay")?;
    tracing::info!(addr = %handle.local_addr(), tick_hz, "spawned a relay in this process");
    Ok(SpawnedRelay {
        addr: handle.local_addr(),
        fingerprint: handle.cert_fingerprint(),
        metrics,
        runtime,
        handle,
        dir,
    })
}

impl SpawnedRelay {
    /// Shuts the relay down cleanly and removes its folder.
    pub(crate) async fn shutdown(self) -> anyhow::Result<()> {
        let SpawnedRelay {
            runtime,
            handle,
            dir,
            ..
        } = self;
        let stopped = runtime.spawn(handle.shutdown()).await;
        runtime.shutdown_background();
        let _ = std::fs::remove_dir_all(&dir);
        stopped
            .context("the relay's shutdown task")?
            .context("shutting the relay down")
    }
}

/// Light clients' shared QUIC endpoints (`--light-share N`): client `i` uses endpoint `i / N`,
/// each endpoint one UDP socket and one quinn endpoint driver for its N connections.
struct SharedEndpoints {
    share: u32,
    endpoints: std::collections::HashMap<u32, quinn::Endpoint>,
}

impl SharedEndpoints {
    fn new(share: u32) -> SharedEndpoints {
        SharedEndpoints {
            share,
            endpoints: Default::default(),
        }
    }

    /// The endpoint client `i` shares; `None` with a share of 1 (each its own, as full clients).
    fn for_client(
        &mut self,
        i: u32,
        server: SocketAddr,
    ) -> anyhow::Result<Option<quinn::Endpoint>> {
        if self.share <= 1 {
            return Ok(None);
        }
        let group = i / self.share;
        if let Some(e) = self.endpoints.get(&group) {
            return Ok(Some(e.clone()));
        }
        let e = neonet::quic::client_endpoint(server).context("a shared client endpoint")?;
        self.endpoints.insert(group, e.clone());
        Ok(Some(e))
    }
}

/// The relay a run loads and started itself (`--spawn-relay`).
enum RelayUnderTest {
    /// On runtimes of this process (boxed: a runtime and a handle are large, and there is
    /// one relay).
    InProcess(Box<SpawnedRelay>),
    /// A process of its own (`--relay-process`).
    Process(RelayProcess),
}

impl RelayUnderTest {
    /// Its process id when it is a process of its own.
    fn pid(&self) -> Option<u32> {
        match self {
            RelayUnderTest::InProcess(_) => None,
            RelayUnderTest::Process(p) => Some(p.pid()),
        }
    }

    /// Its status now; `None` (logged) when a relay process does not answer.
    fn status(&self) -> Option<Status> {
        match self {
            RelayUnderTest::InProcess(r) => Some(r.metrics.status()),
            RelayUnderTest::Process(p) => match p.status() {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("reading the relay process's status: {e:#}");
                    None
                }
            },
        }
    }

    /// Shuts it down cleanly.
    async fn shutdown(self) -> anyhow::Result<()> {
        match self {
            RelayUnderTest::InProcess(r) => (*r).shutdown().await,
            RelayUnderTest::Process(p) => {
                tokio::task::spawn_blocking(move || p.shutdown(RELAY_PROCESS_STOP_GRACE))
                    .await
                    .context("stopping the relay process")
            }
        }
    }
}

/// How long a relay process gets to close its sessions and commit after SIGTERM: 10 s, then
/// it is killed.
const RELAY_PROCESS_STOP_GRACE: Duration = Duration::from_secs(10);

/// CPU counters at the start of the measured window.
struct CpuSnapshot {
    at: Instant,
    machine: MachineCpu,
    threads: ThreadCpu,
    /// The relay's threads by name: this process's for an in-process relay, the relay
    /// process's (`/proc/<pid>/task`) for `--relay-process`.
    relay_threads: Option<ThreadCpu>,
    /// The relay's CPU time so far and ticks run so far, when the run started it.
    relay: Option<(Duration, u64)>,
}

/// The thread a relay runs its core on (named in `neonet::relay`).
const RELAY_CORE_THREAD: &str = "neonet-core";
/// The threads of a relay's I/O runtime (named in [`spawn_relay`] and by the `neonet-relay`
/// binary, whose main thread, waiting for signals, has the same name).
const RELAY_IO_THREAD: &str = "neonet-relay";
/// The thread of the relay's single-loop QUIC driver (`--quic-driver loop`, named in
/// `neonet::relay`): I/O too.
const RELAY_QUIC_THREAD: &str = "neonet-quic";
/// The thread an in-process relay's store commits on (named in `neonet::store`).
const RELAY_STORE_THREAD: &str = "neonet-store";
/// Every thread of an in-process relay.
const RELAY_THREADS: [&str; 4] = [
    RELAY_CORE_THREAD,
    RELAY_IO_THREAD,
    RELAY_QUIC_THREAD,
    RELAY_STORE_THREAD,
];

/// The relay's CPU over the measured window.
#[derive(Clone, Copy, Debug, PartialEq)]
struct RelayCpu {
    /// CPU time used, all its threads.
    used: Duration,
    /// Ticks it ran in the window.
    ticks: u64,
    /// `used` in cores over the window.
    cores: f64,
}

impl RelayCpu {
    /// Relay CPU per client per tick, µs, for `clients` connected through the window; `None`
    /// without clients or ticks.
    fn us_per_client_tick(&self, clients: u64) -> Option<f64> {
        (clients > 0 && self.ticks > 0)
            .then(|| self.used.as_secs_f64() * 1e6 / (clients as f64 * self.ticks as f64))
    }
}

/// The relay's CPU time so far (all its threads) and the ticks it has run.
fn relay_counters(relay: &RelayUnderTest, threads: &ThreadCpu) -> Option<(Duration, u64)> {
    let ticks = relay.status()?.tick.ticks;
    let cpu = match relay {
        RelayUnderTest::InProcess(_) => threads
            .0
            .iter()
            .filter(|(name, _)| RELAY_THREADS.contains(&name.as_str()))
            .map(|(_, &t)| t)
            .sum(),
        RelayUnderTest::Process(p) => crate::cpu::process_cpu(p.pid()).ok()?,
    };
    Some((cpu, ticks))
}

impl CpuSnapshot {
    /// `None` where `/proc` cannot be read (the figures are then left out, not zeroed).
    fn take(relay: Option<&RelayUnderTest>) -> Option<CpuSnapshot> {
        let threads = ThreadCpu::now().ok()?;
        let relay_threads = match relay {
            Some(RelayUnderTest::InProcess(_)) => Some(threads.clone()),
            Some(RelayUnderTest::Process(p)) => ThreadCpu::of_process(p.pid()).ok(),
            None => None,
        };
        Some(CpuSnapshot {
            at: Instant::now(),
            machine: MachineCpu::now().ok()?,
            relay: relay.and_then(|r| relay_counters(r, &threads)),
            threads,
            relay_threads,
        })
    }

    /// The window's CPU figures, and the relay's CPU when the run started it.
    fn figures_until_now(
        self,
        relay: Option<&RelayUnderTest>,
    ) -> (Option<CpuFigures>, Option<RelayCpu>) {
        let Some(later) = CpuSnapshot::take(relay) else {
            return (None, None);
        };
        let relay_in_process = matches!(relay, Some(RelayUnderTest::InProcess(_)));
        let wall = later.at.saturating_duration_since(self.at);
        let part = |names: &[&str]| match (&self.relay_threads, &later.relay_threads) {
            (Some(earlier), Some(now)) => {
                Some(now.cores_since(earlier, wall, |n| names.contains(&n)))
            }
            _ => None,
        };
        let machine_busy_cores = self.machine.busy_cores_until(&later.machine, wall);
        let machine_cores = crate::cpu::online_cores();
        let relay_cpu = match (self.relay, later.relay) {
            (Some((cpu0, ticks0)), Some((cpu1, ticks1))) => {
                let used = cpu1.saturating_sub(cpu0);
                Some(RelayCpu {
                    used,
                    ticks: ticks1.saturating_sub(ticks0),
                    cores: used.as_secs_f64() / wall.as_secs_f64().max(f64::MIN_POSITIVE),
                })
            }
            _ => None,
        };
        let figures = CpuFigures {
            machine_busy_cores,
            machine_cores,
            saturated: CpuFigures::is_saturated(machine_busy_cores, machine_cores),
            load_tool_cores: later.threads.cores_since(&self.threads, wall, |n| {
                !relay_in_process || !RELAY_THREADS.contains(&n)
            }),
            relay_core_cores: part(&[RELAY_CORE_THREAD]),
            relay_io_cores: part(&[RELAY_IO_THREAD, RELAY_QUIC_THREAD]),
            relay_store_cores: part(&[RELAY_STORE_THREAD]),
        };
        (Some(figures), relay_cpu)
    }
}

/// A relay process's resident memory over the run.
#[derive(Debug, Default)]
struct RssWatch {
    /// (seconds since the run started, bytes).
    samples: Vec<(f64, u64)>,
}

/// How long after the ramp the memory baseline of a soak is taken: 60 s. Joins, the first
/// snapshots and the allocator's first growth are over by then; growth after it is what a
/// leak would show.
const RSS_BASELINE_AFTER_RAMP: Duration = Duration::from_secs(60);

impl RssWatch {
    /// Samples closer together than this are one (the last interval's tick and the closing
    /// sample can coincide): 0.5 s.
    const SAME_SAMPLE_S: f64 = 0.5;

    fn sample(&mut self, since_start: Duration, pid: u32) {
        let t_s = since_start.as_secs_f64();
        if self
            .samples
            .last()
            .is_some_and(|&(last, _)| t_s - last < Self::SAME_SAMPLE_S)
        {
            return;
        }
        match crate::cpu::process_rss_bytes(pid) {
            Ok(bytes) => self.samples.push((t_s, bytes)),
            Err(e) => tracing::warn!("reading the relay's memory: {e:#}"),
        }
    }

    fn figures(&self, ramp: Duration) -> Option<RssFigures> {
        let last = *self.samples.last()?;
        let baseline_at = (ramp + RSS_BASELINE_AFTER_RAMP).as_secs_f64();
        let baseline = self
            .samples
            .iter()
            .find(|(t, _)| *t >= baseline_at)
            .copied();
        let growth = |to: u64, from: u64| (to as f64 - from as f64) * 100.0 / from.max(1) as f64;
        let (growth_pct, max_growth_pct) = match baseline {
            Some((t0, b)) if last.0 > t0 => {
                let max = self
                    .samples
                    .iter()
                    .filter(|(t, _)| *t >= t0)
                    .map(|&(_, v)| v)
                    .max()
                    .unwrap_or(b);
                (Some(growth(last.1, b)), Some(growth(max, b)))
            }
            _ => (None, None),
        };
        Some(RssFigures {
            last_bytes: last.1,
            max_bytes: self.samples.iter().map(|s| s.1).max().unwrap_or(0),
            baseline_at_s: baseline.map(|b| b.0),
            baseline_bytes: baseline.map(|b| b.1),
            growth_pct,
            max_growth_pct,
            samples: self
                .samples
                .iter()
                .map(|&(t_s, bytes)| RssSample { t_s, bytes })
                .collect(),
        })
    }
}

/// Samples a spawned relay's tick timing while the run goes on. The relay keeps a window of
/// recent ticks ([`neonet::metrics::TICK_WINDOW_LEN`]); sampling it more often than it fills
/// and keeping the worst window covers the whole run.
#[derive(Debug, Default)]
struct RelayWatch {
    tick_p99_ms_max: f64,
    tick_p50_ms: Vec<f64>,
    tick_max_ms: f64,
    commit_p99_ms_max: f64,
    commit_max_ms: f64,
}

impl RelayWatch {
    fn sample(&mut self, status: &Status) {
        if status.tick.ticks == 0 {
            return;
        }
        self.tick_p99_ms_max = self.tick_p99_ms_max.max(status.tick.p99_ms);
        self.tick_max_ms = self.tick_max_ms.max(status.tick.max_ms);
        self.tick_p50_ms.push(status.tick.p50_ms);
        let [_, p99, max] = status.persist_commit_ms;
        self.commit_p99_ms_max = self.commit_p99_ms_max.max(p99);
        self.commit_max_ms = self.commit_max_ms.max(max);
    }

    fn figures(mut self, status: &Status) -> RelayFigures {
        self.sample(status);
        self.tick_p50_ms.sort_by(f64::total_cmp);
        RelayFigures {
            tick_period_ms: status.tick.period_ms,
            tick_p50_ms: self
                .tick_p50_ms
                .get(self.tick_p50_ms.len() / 2)
                .copied()
                .unwrap_or(0.0),
            tick_p99_ms: self.tick_p99_ms_max,
            tick_max_ms: self.tick_max_ms,
            ticks: status.tick.ticks,
            tick_overruns: status.tick.overruns,
            joins: status.joins,
            datagrams_out: status.bandwidth.datagrams_out,
            datagrams_in: status.bandwidth.datagrams_in,
            bytes_out: status.bandwidth.bytes_out,
            bytes_in: status.bandwidth.bytes_in,
            rate_limit_hits: status.rate_limit_hits,
            persist_commit_p99_ms: self.commit_p99_ms_max,
            persist_commit_max_ms: self.commit_max_ms,
        }
    }
}

async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolved to no address"))
}

/// Starts the impairment proxy on a thread of its own, so that the client tasks filling this
/// process's runtime do not delay it (its delays would be measured as the network's).
fn start_proxy(args: &RunArgs, upstream: SocketAddr, seed: u64) -> anyhow::Result<ProxyThread> {
    let listen: SocketAddr = match upstream {
        SocketAddr::V4(_) => "127.0.0.1:0",
        SocketAddr::V6(_) => "[::1]:0",
    }
    .parse()
    .context("loopback address")?;
    let imp = &args.impairment;
    let config = ProxyConfig {
        listen,
        upstream,
        loss: imp.loss,
        delay_ms: imp.delay_ms,
        jitter_ms: imp.jitter_ms,
        dup: imp.dup,
        reorder: imp.reorder,
        rate_kbps: imp.rate_kbps,
        queue_ms: imp.queue_ms,
        seed,
    };
    let proxy = Proxy::start_on_thread(config, ProxyLimits::default())
        .context("starting the impairment proxy")?;
    tracing::info!(proxy = %proxy.local_addr(), ?imp, "clients go through the impairment proxy");
    Ok(proxy)
}

/// The progress bar: one bar over the whole run (ramp, then measure), labelled with the phase
/// and the seconds into it ([`phase_label`]), so that `--duration 15s --ramp 5s` does not read
/// as a 20 s measurement.
fn progress_bar(args: &RunArgs) -> ProgressBar {
    let total_s = (args.ramp + args.duration).as_secs().max(1);
    let bar = ProgressBar::new(total_s);
    // The template is a constant; fall back to the default style if it ever fails to parse.
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {prefix} · {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(phase_label(Duration::ZERO, args.ramp, args.duration));
    bar
}

/// Which phase of the run `elapsed` is in and how far into it: `ramp 3/5s` while the clients
/// join, then `measure 7/15s` (`--duration` counts the measurement only).
fn phase_label(elapsed: Duration, ramp: Duration, duration: Duration) -> String {
    if elapsed < ramp {
        format!("ramp {}/{}s", elapsed.as_secs(), ramp.as_secs_f64().ceil())
    } else {
        let into = (elapsed - ramp).min(duration);
        format!(
            "measure {}/{}s",
            into.as_secs(),
            duration.as_secs_f64().ceil()
        )
    }
}

fn update_progress(bar: &ProgressBar, start: Instant, args: &RunArgs, live: &LiveCounters) {
    let target = args.clients;
    let elapsed = start.elapsed();
    bar.set_position(elapsed.as_secs());
    bar.set_prefix(phase_label(elapsed, args.ramp, args.duration));
    let connected = live.connected.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64().max(1e-3);
    let per_client = |bytes: u64| {
        if connected == 0 {
            0.0
        } else {
            bytes as f64 * 8.0 / 1000.0 / secs / connected as f64
        }
    };
    bar.set_message(format!(
        "connected {connected}/{target} · failed {} · errors {} · kbps/client in {:.1} out {:.1}",
        live.failed.load(Ordering::Relaxed),
        live.errors.load(Ordering::Relaxed),
        per_client(live.bytes_in.load(Ordering::Relaxed)),
        per_client(live.bytes_out.load(Ordering::Relaxed)),
    ));
}

/// Every client's outcome merged.
#[derive(Debug, Default)]
struct Aggregate {
    connected: u32,
    failed: u32,
    join: LatencyRecorder,
    update_latency: LatencyRecorder,
    tick_phase: LatencyRecorder,
    ack_latency: Option<LatencyRecorder>,
    /// Sum over clients of their acknowledged changes per second joined: the relay's rate
    /// while they are all joined.
    acked_per_s_sum: f64,
    /// Sum over connected clients of their average kbit/s.
    kbps_in_sum: f64,
    kbps_out_sum: f64,
    /// Sum over connected clients of their average UDP packets/s.
    pps_in_sum: f64,
    pps_out_sum: f64,
    datagrams_lost: u64,
    datagrams_measured: u64,
    records_seen: u64,
    errors: u64,
    refusals_unexpected: u64,
    disconnects: u64,
    first_errors: Vec<String>,
}

impl Aggregate {
    fn add(
        &mut self,
        joined: Result<anyhow::Result<ClientOutcome>, tokio::task::JoinError>,
        live: &LiveCounters,
    ) {
        let outcome = match joined {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                live.failed.fetch_add(1, Ordering::Relaxed);
                live.errors.fetch_add(1, Ordering::Relaxed);
                return self.fail(format!("{e:#}"));
            }
            Err(e) => {
                live.failed.fetch_add(1, Ordering::Relaxed);
                live.errors.fetch_add(1, Ordering::Relaxed);
                return self.fail(format!("client task: {e}"));
            }
        };
        if let Some(join) = outcome.joined_after {
            self.connected += 1;
            self.join.record(join);
            let secs = outcome.connected_for.as_secs_f64();
            if secs > 0.0 {
                self.kbps_in_sum += outcome.bytes_in as f64 * 8.0 / 1000.0 / secs;
                self.kbps_out_sum += outcome.bytes_out as f64 * 8.0 / 1000.0 / secs;
                self.pps_in_sum += outcome.packets_in as f64 / secs;
                self.pps_out_sum += outcome.packets_out as f64 / secs;
            }
        }
        self.update_latency.merge(&outcome.update_latency);
        if let Some(phase) = outcome.tick_phase {
            self.tick_phase.record(phase);
        }
        if let Some(acks) = &outcome.ack_latency {
            self.ack_latency
                .get_or_insert_with(LatencyRecorder::new)
                .merge(acks);
            let secs = outcome.connected_for.as_secs_f64();
            if secs > 0.0 {
                self.acked_per_s_sum += outcome.acked_changes as f64 / secs;
            }
        }
        self.datagrams_lost += outcome.datagrams_lost;
        self.datagrams_measured += outcome.datagrams_measured;
        self.records_seen += outcome.records_seen;
        self.errors += outcome.errors;
        self.refusals_unexpected += outcome.refusals_unexpected;
        for e in outcome.error_messages {
            self.note_error(e);
        }
        if outcome.disconnected {
            self.disconnects += 1;
            self.failed += 1;
        }
    }

    fn fail(&mut self, error: String) {
        self.failed += 1;
        self.errors += 1;
        self.note_error(error);
    }

    fn fail_n(&mut self, n: usize, error: &str) {
        for _ in 0..n {
            self.fail(error.to_string());
        }
    }

    fn note_error(&mut self, error: String) {
        if self.first_errors.len() < MAX_REPORTED_ERRORS && !self.first_errors.contains(&error) {
            self.first_errors.push(error);
        }
    }

    fn report(self, setup: RunSetup, target: u32) -> Report {
        let per_client = |sum: f64| {
            if self.connected == 0 {
                0.0
            } else {
                sum / f64::from(self.connected)
            }
        };
        let mut not_measured = Vec::new();
        let (acked_changes_per_s, ack_latency_ms) = match &self.ack_latency {
            Some(acks) => (Some(self.acked_per_s_sum), Some(acks.p50_p99())),
            None => {
                for field in ["acked_changes_per_s", "ack_latency_ms"] {
                    not_measured.push(NotMeasured {
                        field,
                        reason: ACKS_NOT_MEASURED,
                    });
                }
                (None, None)
            }
        };
        Report {
            setup,
            clients_target: target,
            clients_connected: self.connected,
            clients_failed: self.failed,
            join_ms: self.join.p50_p99(),
            update_latency_ms: self.update_latency.p50_p99_p999(),
            updates_received: self.update_latency.count(),
            records_per_datagram: (self.datagrams_measured > 0)
                .then(|| self.records_seen as f64 / self.datagrams_measured as f64),
            tick_phase_ms: self.tick_phase.p50_p99(),
            kbps_per_client: InOut {
                in_: per_client(self.kbps_in_sum),
                out: per_client(self.kbps_out_sum),
            },
            packets_per_client_s: InOut {
                in_: per_client(self.pps_in_sum),
                out: per_client(self.pps_out_sum),
            },
            wire_kbps_per_client: InOut {
                in_: per_client(self.kbps_in_sum + self.pps_in_sum * IP_UDP_HEADER_BYTES * 8e-3),
                out: per_client(self.kbps_out_sum + self.pps_out_sum * IP_UDP_HEADER_BYTES * 8e-3),
            },
            datagrams_lost: self.datagrams_lost,
            acked_changes_per_s,
            ack_latency_ms,
            errors: self.errors,
            refusals_unexpected: self.refusals_unexpected,
            disconnects: self.disconnects,
            first_errors: self.first_errors,
            proxy: None,
            relay: None,
            relay_cpu_cores: None,
            relay_us_per_client_tick: None,
            relay_core_us_per_client_tick: None,
            relay_io_us_per_client_tick: None,
            load_tool_us_per_client_tick: None,
            relay_rss: None,
            cpu: None,
            not_measured,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(ms: u64) -> ClientOutcome {
        let mut update_latency = LatencyRecorder::new();
        update_latency.record(Duration::from_millis(10));
        ClientOutcome {
            joined_after: Some(Duration::from_millis(ms)),
            connected_for: Duration::from_secs(10),
            update_latency,
            bytes_in: 125_000, // 100 kbit/s over 10 s
            bytes_out: 12_500,
            packets_in: 600, // 60 packets/s over 10 s
            packets_out: 450,
            ..ClientOutcome::default()
        }
    }

    #[test]
    fn aggregate_counts_failures_and_averages_bandwidth() {
        let live = LiveCounters::default();
        let mut agg = Aggregate::default();
        agg.add(Ok(Ok(joined(5))), &live);
        agg.add(Ok(Ok(joined(7))), &live);
        agg.add(Ok(Err(anyhow::anyhow!("refused"))), &live);
        let mut dropped = joined(6);
        dropped.disconnected = true;
        agg.add(Ok(Ok(dropped)), &live);
        let report = agg.report(RunSetup::default(), 4);
        assert_eq!(report.clients_connected, 3);
        assert_eq!(report.clients_failed, 2);
        assert_eq!(report.disconnects, 1);
        assert_eq!(report.errors, 1);
        assert_eq!(report.first_errors, vec!["refused".to_string()]);
        assert!((report.kbps_per_client.in_ - 100.0).abs() < 1e-9);
        assert!((report.kbps_per_client.out - 10.0).abs() < 1e-9);
        assert!((report.packets_per_client_s.in_ - 60.0).abs() < 1e-9);
        assert!((report.packets_per_client_s.out - 45.0).abs() < 1e-9);
        // 60 packets/s × 28 bytes is 13.44 kbit/s more on the wire.
        assert!((report.wire_kbps_per_client.in_ - 113.44).abs() < 1e-9);
        assert!(report.acked_changes_per_s.is_none() && report.ack_latency_ms.is_none());
        assert_eq!(report.not_measured.len(), 2);
        assert!(!report.succeeded());
    }

    #[test]
    fn only_refusals_a_run_does_not_expect_fail_it() {
        use neonet_proto::wire::msg::Refusal;
        assert!(crate::driver::refusal_expected(Refusal::Busy));
        assert!(crate::driver::refusal_expected(Refusal::RateLimited));
        assert!(!crate::driver::refusal_expected(Refusal::Rank));
        assert!(!crate::driver::refusal_expected(Refusal::WorldFull));
        let live = LiveCounters::default();
        let mut agg = Aggregate::default();
        let mut busy = joined(5);
        busy.errors = 3; // Busy, say: counted, but the run still succeeds
        agg.add(Ok(Ok(busy)), &live);
        let report = std::mem::take(&mut agg).report(RunSetup::default(), 1);
        assert_eq!((report.errors, report.refusals_unexpected), (3, 0));
        assert!(report.succeeded());
        let mut rank = joined(5);
        rank.errors = 2;
        rank.refusals_unexpected = 2;
        agg.add(Ok(Ok(rank)), &live);
        let report = agg.report(RunSetup::default(), 1);
        assert_eq!((report.errors, report.refusals_unexpected), (2, 2));
        assert!(!report.succeeded(), "a rank refusal fails the run");
    }

    #[test]
    fn relay_cpu_is_divided_by_clients_and_ticks() {
        let cpu = RelayCpu {
            used: Duration::from_millis(900),
            ticks: 300,
            cores: 0.09,
        };
        // 900 ms over 100 clients × 300 ticks: 30 µs each.
        assert!((cpu.us_per_client_tick(100).unwrap() - 30.0).abs() < 1e-9);
        assert_eq!(cpu.us_per_client_tick(0), None);
        assert_eq!(RelayCpu { ticks: 0, ..cpu }.us_per_client_tick(100), None);
    }

    #[test]
    fn memory_growth_is_taken_from_a_minute_past_the_ramp() {
        let mib = 1024 * 1024;
        let mut w = RssWatch::default();
        // A 10 s ramp, samples every 10 s: 100 MiB until 70 s, then 103, then 102.
        for (t, m) in [
            (0, 50),
            (10, 90),
            (40, 100),
            (70, 100),
            (80, 103),
            (90, 102),
        ] {
            w.samples.push((f64::from(t), m * mib));
        }
        let f = w.figures(Duration::from_secs(10)).unwrap();
        assert_eq!(f.baseline_at_s, Some(70.0));
        assert_eq!(f.baseline_bytes, Some(100 * mib));
        assert!((f.growth_pct.unwrap() - 2.0).abs() < 1e-9);
        assert!((f.max_growth_pct.unwrap() - 3.0).abs() < 1e-9);
        assert_eq!((f.last_bytes, f.max_bytes), (102 * mib, 103 * mib));
        // A run that ends before the baseline: no growth, never a zero.
        let short = w.figures(Duration::from_secs(60)).unwrap();
        assert_eq!((short.baseline_at_s, short.growth_pct), (None, None));
        assert!(RssWatch::default().figures(Duration::ZERO).is_none());
    }

    #[test]
    fn the_walk_area_is_sized_for_the_visible_count() {
        let r = f64::from(neonet_proto::transform::config::INTEREST_RADIUS_DEFAULT_M);
        let half = walk_area_half_m(10_000, 100);
        let density = 10_000.0 / (4.0 * half * half);
        // Others within one interest disc, were the crowd uniform and the square endless.
        assert!((density * std::f64::consts::PI * r * r * WALK_AREA_GAIN - 100.0).abs() < 1e-6);
        // A stationary random-waypoint crowd in it, with the square's edges: about 100.
        for clients in [300u32, 1_000] {
            let half = walk_area_half_m(clients, 100);
            let mut rng = neonet_proto::rng::Rng::new(u64::from(clients));
            let crowd: Vec<[f64; 2]> = (0..clients)
                .map(|_| crate::behaviour::Walker::stationary(&mut rng, half).position())
                .collect();
            let seen: usize = crowd
                .iter()
                .map(|p| {
                    crowd
                        .iter()
                        .filter(|q| (p[0] - q[0]).hypot(p[1] - q[1]) <= r)
                        .count()
                        - 1
                })
                .sum();
            let mean = seen as f64 / f64::from(clients);
            assert!(
                (85.0..=115.0).contains(&mean),
                "{clients} clients see {mean:.1} each"
            );
        }
        assert!(
            walk_area_half_m(10_000, 50) > half,
            "fewer visible: a wider area"
        );
        assert_eq!(walk_area_half_m(2, 100), crate::behaviour::WALK_AREA_HALF_M);
    }

    #[test]
    fn the_progress_label_tells_the_ramp_from_the_measurement() {
        let (ramp, duration) = (Duration::from_secs(5), Duration::from_secs(15));
        let at = |s: u64| phase_label(Duration::from_millis(s), ramp, duration);
        assert_eq!(at(0), "ramp 0/5s");
        assert_eq!(at(4_900), "ramp 4/5s");
        assert_eq!(at(5_000), "measure 0/15s");
        assert_eq!(at(12_000), "measure 7/15s");
        assert_eq!(at(20_000), "measure 15/15s");
        assert_eq!(at(21_000), "measure 15/15s", "never past --duration");
        assert_eq!(
            phase_label(Duration::ZERO, Duration::ZERO, duration),
            "measure 0/15s",
            "no ramp: measuring from the start"
        );
    }

    #[test]
    fn acks_are_reported_once_measured() {
        let live = LiveCounters::default();
        let mut agg = Aggregate::default();
        let mut c = joined(5);
        let mut acks = LatencyRecorder::new();
        acks.record(Duration::from_millis(3));
        c.ack_latency = Some(acks);
        c.acked_changes = 50; // over 10 s joined
        agg.add(Ok(Ok(c)), &live);
        let report = agg.report(RunSetup::default(), 1);
        assert_eq!(report.acked_changes_per_s, Some(5.0));
        assert!(report.ack_latency_ms.is_some());
        assert!(report.not_measured.is_empty());
        assert!(report.succeeded());
    }
}
