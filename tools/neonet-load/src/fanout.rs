//! `neonet-load fanout`: server CPU per datagram sent, for a bare quinn fan-out and for
//! `neonet-relay`, and their ratio.
//!
//! ## What is measured
//! - **bare**: a minimal quinn server (ring, a self-signed rcgen certificate, neonet's own
//!   transport settings from [`neonet::quic`]: same socket buffers, keep-alive, idle timeout and
//!   datagram buffers) sends `--per-tick` datagrams of `--bytes` to each of `--clients`
//!   connections every tick at `--hz`. Nothing else: no world, no encoding. With `--up-bytes`
//!   each client also sends it a datagram of that size every tick (a game client's input), so
//!   datagrams flow both ways as in `neonet-load run`.
//! - **relay**: a real `neonet-relay` (tick rate `--hz`, fresh data and certificate folders in a
//!   temporary directory, free loopback ports) with `--clients` joined players, all walking
//!   forward so transforms flow. Its datagrams sent come from its `/metrics`
//!   (`neonet_datagrams_out_total`, `neonet_bytes_out_total{channel="datagram"}`).
//! - **bare-matched** (only with `--target both`, when it differs from the first): the bare
//!   fan-out again, with the relay's measured datagrams per client per tick and mean datagram
//!   size, so the comparison is of the same number and size of datagrams.
//!
//! Each server runs as a **child process** (the bare one is this tool re-executed with the
//! hidden `--role server`), so its CPU (user + system, every thread, from `/proc/<pid>/stat`)
//! is its own; the clients run in this process, each on its own UDP socket. The window opens
//! `--warmup` seconds after every client connected and lasts `--seconds`:
//! µs per datagram = server CPU over the window ÷ datagrams it sent over the window.
//!
//! Caveats, printed with the results: clients and server share the machine's cores (2 here), so
//! a saturated machine inflates both figures; the relay also receives each client's input
//! datagrams (counted as `datagrams_in`) and runs its world, which is part of what it costs.
//!
//! ## Child protocol (bare server)
//! The child prints `addr <ip:port>` and `fingerprint <hex>` on stdout, then answers each
//! `snap` line on stdin with `snap <sent> <bytes> <failed> <connections> <received>`; it exits
//! when its stdin closes.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use serde::Serialize;

use neonet::client::{CharacterInput, Client, ClientOptions};
use neonet::tls::{Fingerprint, ServerIdentity, Trust};

use crate::cli::{MAX_CLIENTS, MAX_HZ};
use crate::cpu::{self, MachineCpu};

/// Largest `--bytes`: 1100, under quinn's smallest `max_datagram_size()` (1162 B at connect,
/// numbers.md), so every datagram fits before path MTU discovery.
pub const MAX_DATAGRAM_BYTES: u32 = 1100;
/// Most datagrams per client per tick: 64. More than any realistic snapshot split, and bounded
/// so a typo cannot flood the 1 MiB datagram send buffers.
pub const MAX_PER_TICK: u32 = 64;
/// Handshakes (bare) or joins (relay) in flight at once: 64. quinn does ≈ 3,200 handshakes/s on
/// this machine (numbers.md); 64 in flight keeps connecting fast without piling up timeouts.
pub const CONNECT_CONCURRENCY: usize = 64;
/// Bound on one client's handshake (and join): 20 s, generous because the 2 cores are shared
/// with the server being measured while hundreds of clients connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a child printing its address lines: 30 s (a debug relay on a busy machine).
pub const CHILD_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest measurement window accepted, seconds: 600. A CPU figure needs seconds, not hours.
pub const MAX_SECONDS: u64 = 600;

/// What `fanout` measures.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The bare quinn fan-out only.
    Bare,
    /// `neonet-relay` only.
    Relay,
    /// Bare, then the relay, then bare matched to the relay's datagram rate and size; prints
    /// the ratios.
    Both,
    /// The bare fan-out served by quinn-proto from one event loop (`fanout_proto.rs`): what
    /// QUIC costs without quinn's per-connection tasks.
    Proto,
    /// Everything: bare, the relay, then bare and proto matched to the relay's datagrams.
    All,
}

/// Internal roles of a re-executed `neonet-load fanout`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The bare quinn fan-out server (see the module documentation for its protocol).
    Server,
    /// The same server on quinn-proto, one thread, one event loop (`fanout_proto.rs`).
    ProtoServer,
}

/// `neonet-load fanout`.
#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Connected clients, each on its own UDP socket.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CLIENTS)))]
    pub clients: u32,
    /// Server tick rate, Hz (bare send rate; the relay's --tick-hz, 10–120).
    #[arg(long, value_name = "N", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_HZ)))]
    pub hz: u32,
    /// Payload bytes of each bare datagram.
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DATAGRAM_BYTES)))]
    pub bytes: u32,
    /// Payload bytes of the datagram each bare client sends the server every tick, as a game
    /// client sends its input (0: the clients send nothing but QUIC's own packets). With it the
    /// bare run moves datagrams both ways, the shape of `neonet-load run`, so its CPU is the
    /// transport's floor for that load.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_DATAGRAM_BYTES)))]
    pub up_bytes: u32,
    /// Bare datagrams per client per tick.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PER_TICK)))]
    pub per_tick: u32,
    /// Measurement window, seconds.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS))]
    pub seconds: u64,
    /// Settling time between the last client connecting and the window opening, seconds.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(0..=MAX_SECONDS))]
    pub warmup: u64,
    /// Spread the clients' connection starts evenly over this many seconds (0: as fast as
    /// [`CONNECT_CONCURRENCY`] handshakes in flight allow).
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=MAX_SECONDS))]
    pub ramp: u64,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Target::Both)]
    pub target: Target,
    /// The relay executable [default: `neonet-relay` next to this executable].
    #[arg(long, value_name = "FILE")]
    pub relay_bin: Option<PathBuf>,
    /// Pin every measured server (the bare quinn child, the quinn-proto child, the relay) to this
    /// CPU (sched_setaffinity before it starts; all its threads), so its figure is one core's.
    #[arg(long, value_name = "N")]
    pub server_cpu: Option<usize>,
    /// Pin this process, the clients, to this CPU (all its threads). Needs `--server-cpu`:
    /// a server started without a pin of its own would inherit this one.
    #[arg(long, value_name = "N", requires = "server_cpu")]
    pub load_cpu: Option<usize>,
    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Internal: run as a child role instead of measuring.
    #[arg(long, value_enum, hide = true)]
    pub role: Option<Role>,
}

/// One measured server.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    /// `bare`, `relay` or `bare-matched`.
    pub target: String,
    /// Clients asked for.
    pub clients: u32,
    /// Clients connected (bare) or joined (relay) when the window opened.
    pub clients_connected: u32,
    /// Connections the server still had when the window closed (bare: its list; relay: its
    /// `neonet_connections` gauge). Fewer than `clients_connected` means peers were dropped
    /// during the window, and the figures are not of a steady state.
    pub server_connections_at_end: u64,
    /// Tick rate, Hz.
    pub hz: u32,
    /// Window length, seconds (wall clock, measured).
    pub window_s: f64,
    /// Datagrams the server sent in the window.
    pub datagrams_sent: u64,
    /// Datagrams the server failed to hand to quinn (bare) — the relay counts only sent ones.
    pub datagrams_failed: u64,
    /// Datagrams the clients received in the window (bare only; `null` for the relay).
    pub datagrams_received: Option<u64>,
    /// Datagrams the server received in the window (relay: client inputs; bare: the clients'
    /// `--up-bytes` datagrams, `null` when they send none).
    pub datagrams_in: Option<u64>,
    /// Payload bytes of each client-to-server datagram (bare only, with `--up-bytes`).
    pub up_datagram_bytes: Option<u32>,
    /// Mean datagram payload, bytes.
    pub mean_datagram_bytes: f64,
    /// Datagrams per client per tick sent.
    pub datagrams_per_client_tick: f64,
    /// Server CPU (user + system) in the window, seconds.
    pub server_cpu_s: f64,
    /// Server CPU as a share of one core, percent.
    pub server_cpu_pct_of_core: f64,
    /// Server CPU per datagram sent, microseconds: the figure compared.
    pub server_cpu_us_per_datagram: f64,
    /// This process (the clients) as a share of one core, percent.
    pub clients_cpu_pct_of_core: f64,
    /// The whole machine's busy time, in cores (2.0 = both cores busy).
    pub machine_busy_cores: f64,
}

/// Everything `fanout` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The measurements, in the order run.
    pub runs: Vec<Measurement>,
    /// Relay µs per datagram ÷ bare µs per datagram (`--bytes`, `--per-tick`), when both ran.
    pub ratio_relay_to_bare: Option<f64>,
    /// Relay µs per datagram ÷ bare-matched µs per datagram, when that ran.
    pub ratio_relay_to_bare_matched: Option<f64>,
    /// Relay µs per datagram ÷ the quinn-proto loop's, matched to the relay's datagrams
    /// (`--target all`).
    pub ratio_relay_to_proto_matched: Option<f64>,
    /// Cores on this machine, shared by the clients and the server.
    pub cores: usize,
    /// The CPU every server was pinned to (`--server-cpu`), if any.
    pub server_cpu: Option<usize>,
    /// The CPU the clients were pinned to (`--load-cpu`), if any.
    pub load_cpu: Option<usize>,
}

/// Runs `fanout` (or, with `--role`, a child role).
pub fn main(args: FanoutArgs) -> anyhow::Result<ExitCode> {
    if args.role == Some(Role::Server) {
        runtime()?.block_on(serve_bare(args))?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.role == Some(Role::ProtoServer) {
        crate::fanout_proto::serve(args)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(cpu) = args.load_cpu {
        // Before the runtime starts: its threads inherit the pin.
        cpu::pin_current_thread(cpu)
            .with_context(|| format!("pinning the clients to CPU {cpu}"))?;
    }
    let rt = runtime()?;
    let mut runs = Vec::new();
    if matches!(args.target, Target::Bare | Target::Both | Target::All) {
        runs.push(rt.block_on(measure_bare(&args, "bare", args.bytes, args.per_tick))?);
    }
    if args.target == Target::Proto {
        runs.push(rt.block_on(measure_bare(&args, "proto", args.bytes, args.per_tick))?);
    }
    if matches!(args.target, Target::Relay | Target::Both | Target::All) {
        runs.push(rt.block_on(measure_relay(&args))?);
    }
    if matches!(args.target, Target::Both | Target::All) {
        let relay = &runs[1];
        let per_tick = (relay.datagrams_per_client_tick.round() as u32).clamp(1, MAX_PER_TICK);
        let bytes = (relay.mean_datagram_bytes.round() as u32).clamp(1, MAX_DATAGRAM_BYTES);
        if (per_tick, bytes) != (args.per_tick, args.bytes) || args.target == Target::All {
            runs.push(rt.block_on(measure_bare(&args, "bare-matched", bytes, per_tick))?);
        }
        if args.target == Target::All {
            runs.push(rt.block_on(measure_bare(&args, "proto-matched", bytes, per_tick))?);
        }
    }
    let us = |t: &str| {
        runs.iter()
            .find(|r| r.target == t)
            .map(|r| r.server_cpu_us_per_datagram)
    };
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?).filter(|r| r.is_finite());
    let report = Report {
        ratio_relay_to_bare: ratio(us("relay"), us("bare")),
        ratio_relay_to_bare_matched: ratio(us("relay"), us("bare-matched")),
        ratio_relay_to_proto_matched: ratio(us("relay"), us("proto-matched")),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        server_cpu: args.server_cpu,
        load_cpu: args.load_cpu,
        runs,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// Pins a server child to `--server-cpu`, when given.
fn pin_server(cmd: &mut Command, args: &FanoutArgs) {
    if let Some(cpu) = args.server_cpu {
        cpu::pin_before_exec(cmd, cpu);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn print_table(r: &Report) {
    println!(
        "{:<13} {:>9} {:>4} {:>7} {:>8} {:>11} {:>10} {:>9} {:>8} {:>10} {:>9} {:>8}",
        "target",
        "clients",
        "hz",
        "B/dgram",
        "dg/cl/tk",
        "dgrams",
        "received",
        "cpu %core",
        "µs/dgram",
        "dgrams_in",
        "tool %core",
        "machine"
    );
    for m in &r.runs {
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        println!(
            "{:<13} {:>9} {:>4} {:>7.0} {:>8.2} {:>11} {:>10} {:>9.1} {:>8.2} {:>10} {:>9.1} {:>7.2}c",
            m.target,
            format!(
                "{}/{}/{}",
                m.server_connections_at_end, m.clients_connected, m.clients
            ),
            m.hz,
            m.mean_datagram_bytes,
            m.datagrams_per_client_tick,
            m.datagrams_sent,
            opt(m.datagrams_received),
            m.server_cpu_pct_of_core,
            m.server_cpu_us_per_datagram,
            opt(m.datagrams_in),
            m.clients_cpu_pct_of_core,
            m.machine_busy_cores,
        );
    }
    if let Some(x) = r.ratio_relay_to_bare {
        println!("ratio relay/bare (µs per datagram): {x:.2}");
    }
    if let Some(x) = r.ratio_relay_to_bare_matched {
        println!("ratio relay/bare-matched (µs per datagram): {x:.2}");
    }
    if let Some(x) = r.ratio_relay_to_proto_matched {
        println!("ratio relay/proto-matched (µs per datagram): {x:.2}");
    }
    println!(
        "clients = server connections at the window's end / connected at its start / asked; \
         dg/cl/tk = datagrams per client per tick"
    );
    let sharing = match (r.server_cpu, r.load_cpu) {
        (Some(s), Some(l)) => format!("servers pinned to CPU {s}, clients to CPU {l}"),
        (Some(s), None) => format!("servers pinned to CPU {s}, clients unpinned"),
        _ => format!("clients and server share this machine's {} cores", r.cores),
    };
    println!(
        "note: {sharing} (machine = busy cores in the window); the relay also receives client \
         inputs (dgrams_in) and runs its world; bare clients send datagrams (dgrams_in) only \
         with --up-bytes."
    );
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// CPU and traffic counters of a server, sampled at one instant.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    server_cpu: Duration,
    own_cpu: Duration,
    machine: MachineCpu,
    sent: u64,
    bytes: u64,
    failed: u64,
    datagrams_in: u64,
    received: u64,
    connections: u64,
}

/// Builds the [`Measurement`] of a window from its two samples.
fn measurement(
    target: &str,
    args: &FanoutArgs,
    connected: u32,
    a: &Sample,
    b: &Sample,
    bare: bool,
) -> Measurement {
    let wall = b.at - a.at;
    let wall_s = wall.as_secs_f64().max(f64::MIN_POSITIVE);
    let sent = b.sent.saturating_sub(a.sent);
    let cpu = b.server_cpu.saturating_sub(a.server_cpu).as_secs_f64();
    let own = b.own_cpu.saturating_sub(a.own_cpu).as_secs_f64();
    let client_ticks = f64::from(connected.max(1)) * f64::from(args.hz) * wall_s;
    Measurement {
        target: target.to_string(),
        clients: args.clients,
        clients_connected: connected,
        server_connections_at_end: b.connections,
        hz: args.hz,
        window_s: wall_s,
        datagrams_sent: sent,
        datagrams_failed: b.failed.saturating_sub(a.failed),
        datagrams_received: bare.then(|| b.received.saturating_sub(a.received)),
        datagrams_in: (!bare || args.up_bytes > 0)
            .then(|| b.datagrams_in.saturating_sub(a.datagrams_in)),
        up_datagram_bytes: (bare && args.up_bytes > 0).then_some(args.up_bytes),
        mean_datagram_bytes: b.bytes.saturating_sub(a.bytes) as f64 / sent.max(1) as f64,
        datagrams_per_client_tick: sent as f64 / client_ticks,
        server_cpu_s: cpu,
        server_cpu_pct_of_core: 100.0 * cpu / wall_s,
        server_cpu_us_per_datagram: if sent == 0 {
            f64::NAN
        } else {
            cpu * 1e6 / sent as f64
        },
        clients_cpu_pct_of_core: 100.0 * own / wall_s,
        machine_busy_cores: a.machine.busy_cores_until(&b.machine, wall),
    }
}

/// Samples the machine and this process; the caller fills in the server's side.
fn sample_local(server_pid: u32) -> anyhow::Result<Sample> {
    Ok(Sample {
        at: Instant::now(),
        server_cpu: cpu::process_cpu(server_pid)?,
        own_cpu: cpu::own_cpu()?,
        machine: MachineCpu::now()?,
        sent: 0,
        bytes: 0,
        failed: 0,
        datagrams_in: 0,
        received: 0,
        connections: 0,
    })
}

/// A child process killed (by its own id) when dropped, so an error path leaves no server
/// behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `child`'s stdout lines on a thread, sending them on the returned channel (and draining
/// the pipe for the child's whole life).
fn stdout_lines(stdout: ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Nobody listens any more: keep draining so the child never blocks on a full
                // pipe.
                continue;
            }
        }
    });
    rx
}

/// The next line from a child, within `deadline`.
fn next_line(
    rx: &std::sync::mpsc::Receiver<String>,
    deadline: Instant,
    what: &str,
) -> anyhow::Result<String> {
    let left = deadline.saturating_duration_since(Instant::now());
    rx.recv_timeout(left)
        .map_err(|_| anyhow::anyhow!("{what}: no output within {CHILD_START_TIMEOUT:?}"))
}

/// Warms up, samples, waits the window, samples again.
async fn window<F>(args: &FanoutArgs, mut sample: F) -> anyhow::Result<(Sample, Sample)>
where
    F: FnMut() -> anyhow::Result<Sample>,
{
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let a = sample()?;
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let b = sample()?;
    Ok((a, b))
}

// ---------------------------------------------------------------------------------------------
// Bare fan-out

/// Measures the bare fan-out server as a child of this executable.
async fn measure_bare(
    args: &FanoutArgs,
    target: &str,
    bytes: u32,
    per_tick: u32,
) -> anyhow::Result<Measurement> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let role = if target.starts_with("proto") {
        "proto-server"
    } else {
        "server"
    };
    let mut cmd = Command::new(&exe);
    cmd.args(["fanout", "--role", role])
        .args(["--hz", &args.hz.to_string()])
        .args(["--bytes", &bytes.to_string()])
        .args(["--per-tick", &per_tick.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    pin_server(&mut cmd, args);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let mut child = ChildGuard(child);
    let pid = child.0.id();
    let stdin = child.0.stdin.take().context("child stdin")?;
    let lines = stdout_lines(child.0.stdout.take().context("child stdout")?);
    let deadline = Instant::now() + CHILD_START_TIMEOUT;
    let addr: SocketAddr = next_line(&lines, deadline, "bare server")?
        .strip_prefix("addr ")
        .context("bare server: expected `addr ...`")?
        .parse()?;
    let fingerprint: Fingerprint = next_line(&lines, deadline, "bare server")?
        .strip_prefix("fingerprint ")
        .context("bare server: expected `fingerprint ...`")?
        .parse()?;
    tracing::info!(%addr, target, clients = args.clients, bytes, per_tick, "bare fan-out server up");

    let received = Arc::new(AtomicU64::new(0));
    let (connected, _endpoints) = connect_bare(addr, fingerprint, args, received.clone()).await?;
    tracing::info!(connected, "bare clients connected; warming up");

    let stdin = Mutex::new(stdin);
    let (a, b) = window(args, || {
        let mut s = sample_bare(pid, &stdin, &lines)?;
        s.received = received.load(Relaxed);
        Ok(s)
    })
    .await?;
    drop(stdin); // the child exits on EOF; the guard kills it otherwise
    drop(child);
    Ok(measurement(target, args, connected, &a, &b, true))
}

/// Asks the bare server for its counters and samples CPU right after.
fn sample_bare(
    pid: u32,
    stdin: &Mutex<ChildStdin>,
    lines: &std::sync::mpsc::Receiver<String>,
) -> anyhow::Result<Sample> {
    {
        let mut w = stdin.lock().unwrap_or_else(|e| e.into_inner());
        writeln!(w, "snap").context("asking the bare server for its counters")?;
        w.flush()?;
    }
    let line = next_line(lines, Instant::now() + CHILD_START_TIMEOUT, "bare server")?;
    let mut s = sample_local(pid)?;
    let v: Vec<u64> = line
        .strip_prefix("snap ")
        .with_context(|| format!("bare server: unexpected {line:?}"))?
        .split_whitespace()
        .map(|f| f.parse::<u64>().context("bare server: bad counter"))
        .collect::<anyhow::Result<_>>()?;
    ensure!(v.len() == 5, "bare server: {line:?}");
    (s.sent, s.bytes, s.failed, s.connections, s.datagrams_in) = (v[0], v[1], v[2], v[3], v[4]);
    Ok(s)
}

/// Connects `n` bare clients, each on its own endpoint (own UDP socket), each counting the
/// datagrams it receives into `received` and, with `--up-bytes`, sending one datagram of that
/// size every tick. Returns how many connected and the endpoints (kept alive by the caller).
async fn connect_bare(
    addr: SocketAddr,
    fingerprint: Fingerprint,
    args: &FanoutArgs,
    received: Arc<AtomicU64>,
) -> anyhow::Result<(u32, Vec<quinn::Endpoint>)> {
    let n = args.clients;
    let config = neonet::quic::client_config(&Trust::Sha256(fingerprint), idle_timeout())?;
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let (up_bytes, hz) = (args.up_bytes, args.hz);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (config, gate, received) = (config.clone(), gate.clone(), received.clone());
        let start = ramp_start(args, i);
        tasks.spawn(async move {
            tokio::time::sleep(start).await;
            let _permit = gate.acquire_owned().await?;
            let endpoint = neonet::quic::client_endpoint(addr)?;
            let connecting =
                endpoint.connect_with(config, addr, neonet::tls::DEFAULT_SERVER_NAME)?;
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
                .await
                .context("handshake timed out")??;
            if up_bytes > 0 {
                let conn = conn.clone();
                let payload = Bytes::from(vec![0x5Au8; up_bytes as usize]);
                tokio::spawn(async move {
                    let mut interval = tokio::time::interval(Duration::from_secs(1) / hz);
                    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        interval.tick().await;
                        // Fails only once the connection is gone, which ends the task.
                        if conn.send_datagram(payload.clone()).is_err() {
                            break;
                        }
                    }
                });
            }
            tokio::spawn(async move {
                while conn.read_datagram().await.is_ok() {
                    received.fetch_add(1, Relaxed);
                }
            });
            anyhow::Ok(endpoint)
        });
    }
    let mut endpoints = Vec::new();
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        match r.context("client task")? {
            Ok(e) => endpoints.push(e),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        tracing::warn!(
            failed = n as usize - endpoints.len(),
            "bare clients failed: {e:#}"
        );
    }
    ensure!(!endpoints.is_empty(), "no bare client connected");
    Ok((endpoints.len() as u32, endpoints))
}

/// When client `i` starts connecting, from the start of connecting: evenly over `--ramp`.
fn ramp_start(args: &FanoutArgs, i: u32) -> Duration {
    Duration::from_secs(args.ramp) * i / args.clients.max(1)
}

pub(crate) fn idle_timeout() -> Duration {
    Duration::from_millis(neonet::config::IDLE_TIMEOUT_MS_DEFAULT)
}

/// A self-signed identity for `localhost`, made with rcgen (as the relay's development
/// certificate is).
pub(crate) fn self_signed() -> anyhow::Result<ServerIdentity> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let names: Vec<String> = neonet::tls::DEV_CERT_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let ck = rcgen::generate_simple_self_signed(names).context("generating a certificate")?;
    let der = ck.cert.der().to_vec();
    Ok(ServerIdentity {
        fingerprint: Fingerprint::of(&der),
        chain: vec![CertificateDer::from(der)],
        key: PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into()),
        generated: true,
    })
}

/// The bare fan-out server (child role): accepts any number of connections, sends `per_tick`
/// datagrams of `bytes` to each every tick and counts the datagrams they send, until stdin
/// closes.
async fn serve_bare(args: FanoutArgs) -> anyhow::Result<()> {
    let identity = self_signed()?;
    let (endpoint, buffers) = neonet::quic::server_endpoint(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &identity,
        idle_timeout(),
    )?;
    tracing::debug!(?buffers, "bare server socket");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "addr {}", endpoint.local_addr()?)?;
        writeln!(out, "fingerprint {}", identity.fingerprint)?;
        out.flush()?;
    }
    let conns: Arc<Mutex<Vec<quinn::Connection>>> = Arc::default();
    let datagrams_in = Arc::new(AtomicU64::new(0));
    let accept = {
        let (endpoint, conns, datagrams_in) =
            (endpoint.clone(), conns.clone(), datagrams_in.clone());
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (conns, datagrams_in) = (conns.clone(), datagrams_in.clone());
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        conns
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(conn.clone());
                        while conn.read_datagram().await.is_ok() {
                            datagrams_in.fetch_add(1, Relaxed);
                        }
                    }
                });
            }
        })
    };
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let tick = {
        let (conns, sent, failed) = (conns.clone(), sent.clone(), failed.clone());
        let payload = Bytes::from(vec![0xA5u8; args.bytes as usize]);
        let per_tick = args.per_tick;
        let mut interval = tokio::time::interval(Duration::from_secs(1) / args.hz);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::spawn(async move {
            loop {
                interval.tick().await;
                let mut conns = conns.lock().unwrap_or_else(|e| e.into_inner());
                conns.retain(|c| c.close_reason().is_none());
                let (mut ok, mut bad) = (0u64, 0u64);
                for c in conns.iter() {
                    for _ in 0..per_tick {
                        match c.send_datagram(payload.clone()) {
                            Ok(()) => ok += 1,
                            Err(_) => bad += 1,
                        }
                    }
                }
                sent.fetch_add(ok, Relaxed);
                failed.fetch_add(bad, Relaxed);
            }
        })
    };
    // stdin: `snap` requests until EOF, on a blocking thread.
    let bytes = u64::from(args.bytes);
    let conns_for_snap = conns.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for line in std::io::stdin().lock().lines() {
            if line?.trim() != "snap" {
                continue;
            }
            let s = sent.load(Relaxed);
            let n = conns_for_snap.lock().map_or(0, |c| c.len());
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "snap {s} {} {} {n} {}",
                s * bytes,
                failed.load(Relaxed),
                datagrams_in.load(Relaxed)
            )?;
            out.flush()?;
        }
        Ok(())
    })
    .await??;
    tick.abort();
    accept.abort();
    endpoint.close(0u32.into(), b"done");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The relay

/// A temporary folder removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("neonet-fanout-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Measures `neonet-relay` as a child with `args.clients` walking players.
async fn measure_relay(args: &FanoutArgs) -> anyhow::Result<Measurement> {
    let bin = crate::relay_proc::relay_bin(args.relay_bin.as_deref())?;
    let tmp = TempDir::new()?;
    let config = crate::relay_proc::write_load_config(&tmp.0)?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(tmp.0.join("data"))
        .arg("--cert-dir")
        .arg(tmp.0.join("certs"))
        .args(["--tick-hz", &args.hz.to_string()])
        .args(["--log-level", "warn"])
        .current_dir(&tmp.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    pin_server(&mut cmd, args);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut child = ChildGuard(child);
    let pid = child.0.id();
    let (addr, http, fingerprint) =
        crate::relay_proc::read_banner(child.0.stdout.take().context("relay stdout")?)?;
    tracing::info!(%addr, %http, clients = args.clients, "relay up");

    let clients = connect_relay(addr, fingerprint, args).await?;
    let connected = clients.len() as u32;
    tracing::info!(connected, "relay clients joined and walking; warming up");

    let (a, b) = window(args, || {
        let m = scrape(http)?;
        let mut s = sample_local(pid)?;
        (s.sent, s.bytes, s.datagrams_in) = (m.datagrams_out, m.bytes_out, m.datagrams_in);
        s.connections = m.connections;
        Ok(s)
    })
    .await?;
    drop(clients); // leave without waiting; the relay is killed next
    drop(child);
    drop(tmp);
    Ok(measurement("relay", args, connected, &a, &b, false))
}

/// Connects and joins `n` clients (each its own UDP socket), all walking forward.
async fn connect_relay(
    addr: SocketAddr,
    fingerprint: Fingerprint,
    args: &FanoutArgs,
) -> anyhow::Result<Vec<Client>> {
    let n = args.clients;
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let gate = gate.clone();
        let start = ramp_start(args, i);
        tasks.spawn(async move {
            tokio::time::sleep(start).await;
            let _permit = gate.acquire_owned().await?;
            let options = ClientOptions {
                trust: Trust::Sha256(fingerprint),
                connect_timeout: CONNECT_TIMEOUT,
                ..ClientOptions::named(format!("fanout-{i}"))
            };
            let client = Client::connect_async(addr, options).await?;
            client.set_input(CharacterInput {
                move_z: 127,
                ..Default::default()
            });
            anyhow::Ok(client)
        });
    }
    let mut clients = Vec::new();
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        match r.context("client task")? {
            Ok(c) => clients.push(c),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        tracing::warn!(
            failed = n as usize - clients.len(),
            "relay clients failed: {e:#}"
        );
    }
    ensure!(!clients.is_empty(), "no client joined the relay");
    Ok(clients)
}

/// The relay counters `fanout` reads from `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct RelayCounters {
    datagrams_out: u64,
    bytes_out: u64,
    datagrams_in: u64,
    connections: u64,
}

/// GETs `/metrics` from `http` (plain HTTP/1.1, `Connection: close`) and parses the counters.
fn scrape(http: SocketAddr) -> anyhow::Result<RelayCounters> {
    parse_metrics(&crate::relay_proc::http_get(http, "/metrics")?)
}

/// Parses the counters out of Prometheus text.
fn parse_metrics(text: &str) -> anyhow::Result<RelayCounters> {
    use neonet::metrics::names;
    let value = |series: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
            rest.trim().parse::<f64>().ok().map(|v| v as u64)
        })
    };
    let dgram_bytes = format!("{}{{channel=\"datagram\"}}", names::BYTES_OUT);
    Ok(RelayCounters {
        datagrams_out: value(names::DATAGRAMS_OUT)
            .with_context(|| format!("no {} in /metrics", names::DATAGRAMS_OUT))?,
        bytes_out: value(&dgram_bytes).with_context(|| format!("no {dgram_bytes} in /metrics"))?,
        datagrams_in: value(names::DATAGRAMS_IN).unwrap_or(0),
        connections: value(names::CONNECTIONS).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_relay_metrics() {
        let text = "# TYPE neonet_datagrams_out_total counter\n\
                    neonet_datagrams_out_total 1234\n\
                    neonet_datagrams_out_total_x 9\n\
                    neonet_bytes_out_total{channel=\"stream\"} 5\n\
                    neonet_bytes_out_total{channel=\"datagram\"} 98765\n\
                    neonet_datagrams_in_total 42\n\
                    neonet_connections 7\n";
        let c = parse_metrics(text).unwrap();
        assert_eq!(
            c,
            RelayCounters {
                datagrams_out: 1234,
                bytes_out: 98765,
                datagrams_in: 42,
                connections: 7,
            }
        );
        assert!(parse_metrics("nothing here\n").is_err());
    }
}
