//! Command-line interface: the `proxy`, `sim` and `run` subcommands.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Most simulated clients one `run` starts: 20,000. Each needs its own UDP socket (one shared
/// socket overflows, see numbers.md) and so one ephemeral port; Linux offers about 28,000.
pub const MAX_CLIENTS: u32 = 20_000;

/// Highest client frame or simulation tick rate accepted, in Hz: 1000. Faster than any display,
/// and the tokio timer only resolves milliseconds.
pub const MAX_HZ: u32 = 1000;

/// Most entities `sim` simulates: 100,000, the world's own entity limit
/// (`neonet_proto::wire::limits::ENTITIES_MAX`).
pub const SIM_ENTITIES_MAX: u32 = 100_000;

/// Most clients `sim` simulates: 1,000. Each has its own replicator and link in memory; the
/// server cost grows with clients × entities.
pub const SIM_CLIENTS_MAX: u32 = 1_000;

/// neonet's load tool: load a relay with simulated clients, simulate a network in memory, or
/// impair real UDP traffic.
#[derive(Parser, Debug)]
#[command(name = "neonet-load", version)]
pub struct Cli {
    /// Log filter: a level, or `target=level` pairs (`info`, `neonet=debug,warn`). Logs go to
    /// stderr.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    pub log: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Relay UDP between clients and an upstream server, losing, delaying, jittering,
    /// duplicating and reordering datagrams per client flow. Runs until Ctrl-C.
    Proxy(ProxyArgs),
    /// Measure entity replication over the deterministic in-memory network.
    Sim(SimArgs),
    /// Load a relay with simulated clients over real sockets and report what they saw.
    Run(RunArgs),
    /// Server CPU per datagram sent: a bare quinn fan-out against neonet-relay.
    Fanout(crate::fanout::FanoutArgs),
}

/// Impairment flags, shared by `proxy` and `run --via-proxy`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct ImpairmentArgs {
    /// Probability in [0, 1] that a datagram is lost, per direction.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_probability)]
    pub loss: f64,
    /// One-way delay added in each direction, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub delay_ms: u64,
    /// Uniform jitter on the delay, ± milliseconds (never reorders on its own).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub jitter_ms: u64,
    /// Probability in [0, 1] that a datagram is sent twice, per direction.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_probability)]
    pub dup: f64,
    /// Probability in [0, 1] that a datagram is swapped with the next one of its direction.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_probability)]
    pub reorder: f64,
    /// Bandwidth of each client's path, per direction, in kbit/s on the wire (UDP payload plus
    /// IPv4 and UDP headers); 0 for unlimited. Faster traffic queues, then is dropped.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub rate_kbps: u64,
    /// The bandwidth limit's queue, in milliseconds at that rate: a datagram that would wait
    /// longer is dropped, as a router's full queue does.
    #[arg(long, value_name = "N", default_value_t = neonet_proxy::QUEUE_MS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub queue_ms: u64,
}

impl ImpairmentArgs {
    /// True when any flag asks for impairment.
    pub fn is_impaired(&self) -> bool {
        self.loss > 0.0
            || self.delay_ms > 0
            || self.jitter_ms > 0
            || self.dup > 0.0
            || self.reorder > 0.0
            || self.rate_kbps > 0
    }
}

/// `neonet-load proxy`.
#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Address to listen on for clients, e.g. 127.0.0.1:4434.
    #[arg(long, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Address of the server to relay to, e.g. 127.0.0.1:4433.
    #[arg(long, value_name = "ADDR")]
    pub upstream: std::net::SocketAddr,
    /// What to do to the traffic.
    #[command(flatten)]
    pub impairment: ImpairmentArgs,
    /// Seed of every random decision; printed at start when left to the clock.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

/// Which world `sim` replicates.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Physics cubes (Glenn Fiedler's snapshot compression benchmark: 901 cubes).
    Cubes,
    /// Walking avatars.
    Crowd,
    /// Bodies at rest, then a pile of a twelfth of them thrown at once every 5 s (900 bodies).
    Burst,
}

/// `neonet-load sim`.
#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// The world to replicate.
    #[arg(long, value_enum, default_value_t = Scenario::Cubes)]
    pub scenario: Scenario,
    /// Moving entities in the world (players for `crowd`) [default: 901 for cubes, 100 for
    /// crowd].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(SIM_ENTITIES_MAX)))]
    pub entities: Option<u32>,
    /// Clients receiving the transform stream (each with its own link and replicator).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(SIM_CLIENTS_MAX)))]
    pub clients: u32,
    /// Server tick and send rate, in Hz (the server clamps it to 10–120) [default: 60 for
    /// cubes, 30 for crowd].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_HZ)))]
    pub hz: Option<u32>,
    /// Simulated seconds to run.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub seconds: u64,
    /// Probability in [0, 1] that a datagram is lost, per direction.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_probability)]
    pub loss: f64,
    /// Round-trip time of the simulated network, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub rtt_ms: u64,
    /// Uniform jitter on each one-way delay, ± milliseconds.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub jitter_ms: u64,
    /// Seed of the simulation; the same seed gives the same run.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// The transform budget's ceiling per client, in kbit/s on the wire [default: the
    /// server's, 256].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(8..=1_000_000))]
    pub budget_kbps: Option<u32>,
    /// A bottleneck on the server → client path, in kbit/s on the wire, with a router's
    /// queue of 200 ms that drops when full [default: none].
    #[arg(long, value_name = "N")]
    pub link_kbps: Option<u64>,
    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl SimArgs {
    /// `--entities`, or the scenario's default: Fiedler's 901 cubes, or a crowd of 100.
    pub fn entities(&self) -> u32 {
        self.entities.unwrap_or(match self.scenario {
            Scenario::Cubes => 901,
            Scenario::Crowd => 100,
            Scenario::Burst => 900,
        })
    }

    /// `--hz`, or the scenario's default: 60 Hz for cubes (Fiedler's rate), 30 Hz for a crowd
    /// (the relay's default tick).
    pub fn hz(&self) -> u32 {
        self.hz.unwrap_or(match self.scenario {
            Scenario::Cubes | Scenario::Burst => 60,
            Scenario::Crowd => 30,
        })
    }
}

/// How simulated clients move in `run`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveMode {
    /// Walk between random waypoints at walking speed, pausing now and then.
    Walk,
    /// Stand still (only receive).
    Still,
}

/// Which client each simulated client of `run` is.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// The client library as a game uses it (`neonet::client::Client`): decodes every entity
    /// record, predicts its player, syncs its clock.
    Full,
    /// The protocol exactly (join, clock sync, inputs steered from the same prediction of its
    /// own player, acknowledgements, update latency) without decoding other entities' records
    /// or interpolating (`light::core::LightCore`): the relay does the same work for it.
    Light,
}

/// Most light clients sharing one QUIC endpoint (`--light-share`): 64. One socket's receive
/// buffer (2 MiB, `neonet::quic::CLIENT_SOCKET_BUFFER_BYTES`, for the task driver's shared
/// endpoints) then holds about a tick of their datagrams (64 × ≈ 1 KB) 30 times over;
/// numbers.md saw one socket for 1,000 clients overflow.
pub const LIGHT_SHARE_MAX: i64 = 64;

/// How light clients are driven (`--light-driver`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LightDriver {
    /// Every light client from one event loop on one thread, over quinn-proto
    /// (`light::single_loop`): the cheap one.
    Loop,
    /// One tokio task per light client over quinn's own driver and neonet's stream tasks
    /// (`light::tasks`): the transport a real client has.
    Tasks,
}

/// Default interval between samples of a relay process's resident memory: 10 s.
pub const RSS_INTERVAL_DEFAULT: &str = "10s";

/// Default entities each client sees within its interest (`--visible`): 100, the issue's
/// target load.
pub const VISIBLE_DEFAULT: u32 = 100;

/// `neonet-load run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Relay to load, HOST:PORT. Required unless --spawn-relay.
    #[arg(
        long,
        value_name = "HOST:PORT",
        required_unless_present = "spawn_relay"
    )]
    pub addr: Option<String>,
    /// Start a relay on a free loopback port and load it: in this process, or with
    /// --relay-process as a process of its own.
    #[arg(long, conflicts_with = "addr")]
    pub spawn_relay: bool,
    /// With --spawn-relay: start the relay as a separate process (the `neonet-relay` binary, in
    /// a fresh temporary folder), so its CPU and memory are read from /proc for it alone
    /// (`relay_us_per_client_tick`, `relay_rss`).
    #[arg(long, requires = "spawn_relay")]
    pub relay_process: bool,
    /// The relay executable for --relay-process [default: `neonet-relay` next to this
    /// executable].
    #[arg(long, value_name = "PATH", requires = "relay_process")]
    pub relay_bin: Option<PathBuf>,
    /// Pin the relay process to this CPU (sched_setaffinity before it starts; all its threads).
    #[arg(long, value_name = "N", requires = "relay_process")]
    pub relay_cpu: Option<usize>,
    /// The relay process's native QUIC driver (its `--quic-driver`): `tasks` (quinn's) or
    /// `loop` (one loop over quinn-proto) [default: the relay's, tasks].
    #[arg(long, value_name = "DRIVER", value_enum, requires = "relay_process")]
    pub relay_quic_driver: Option<neonet::config::QuicDriver>,
    /// Pin this process, the load tool, to this CPU (all its threads).
    #[arg(long, value_name = "N")]
    pub load_cpu: Option<usize>,
    /// Which client each simulated client is.
    #[arg(long, value_name = "KIND", value_enum, default_value_t = ClientKind::Full)]
    pub client: ClientKind,
    /// How light clients are driven: `loop` (every client from one event loop on one thread,
    /// over quinn-proto) or `tasks` (a tokio task per client over quinn's own driver).
    #[arg(long, value_name = "DRIVER", value_enum, default_value_t = LightDriver::Loop)]
    pub light_driver: LightDriver,
    /// Light clients per QUIC endpoint (one UDP socket and one endpoint). With `tasks` the
    /// default 1 gives each its own, as full clients have; more share, with fewer sockets and
    /// wake-ups. With `loop` the default is 64 (`light::LOOP_SHARE_DEFAULT`).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=LIGHT_SHARE_MAX))]
    pub light_share: Option<u32>,
    /// Entities each client should see within its interest: a spawned relay's clients walk in
    /// an area sized so that about this many others are within each one's interest radius.
    #[arg(long, value_name = "N", default_value_t = VISIBLE_DEFAULT,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub visible: u32,
    /// A soak: print the relay process's resident memory over time (sampled every
    /// --rss-interval; the JSON always has the samples) and its growth after the first minute.
    #[arg(long, requires = "relay_process")]
    pub soak: bool,
    /// How often a relay process's resident memory is sampled.
    #[arg(long, value_name = "DURATION", default_value = RSS_INTERVAL_DEFAULT, value_parser = humantime::parse_duration)]
    pub rss_interval: Duration,
    /// Simulated clients, each on its own UDP socket.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CLIENTS)))]
    pub clients: u32,
    /// How long to measure once the ramp is over (e.g. 30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Spread the clients' joins evenly over this time (e.g. 5s; 0s joins all at once).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub ramp: Duration,
    /// Client frame rate (input send rate), in Hz.
    #[arg(long, value_name = "N", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_HZ)))]
    pub hz: u32,
    /// How clients move.
    #[arg(long = "move", value_name = "MODE", value_enum, default_value_t = MoveMode::Walk)]
    pub movement: MoveMode,
    /// Chat messages each client sends per second, on average (Poisson).
    #[arg(long, value_name = "R", default_value_t = 0.0, value_parser = parse_rate)]
    pub chat_per_s: f64,
    /// Blueprint edits each client makes per second, on average (Poisson).
    #[arg(long, value_name = "R", default_value_t = 0.0, value_parser = parse_rate)]
    pub edits_per_s: f64,
    /// Buffer remote entities for interpolation, as a rendering game client does. Off by
    /// default: the simulated clients never render, and what they send and receive is the same
    /// either way (`ClientCore::set_interpolation`).
    #[arg(long)]
    pub interpolate: bool,
    /// Also write the report as JSON to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Send every client through an in-process impairment proxy (see the impairment flags).
    #[arg(long)]
    pub via_proxy: bool,
    /// Impairment applied by the proxy; only with --via-proxy.
    #[command(flatten)]
    pub impairment: ImpairmentArgs,
    /// Seed of client behaviour and of the proxy; printed at start when left to the clock.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Trust the relay whose certificate has this SHA-256 fingerprint (what `neonet-relay`
    /// prints). Without it, the development certificate in --cert-dir is trusted.
    #[arg(long, value_name = "HEX", conflicts_with = "spawn_relay")]
    pub cert_sha256: Option<String>,
    /// Folder of the relay's development certificate to trust (with --addr).
    #[arg(long, value_name = "DIR", default_value = neonet::tls::DEFAULT_CERT_DIR)]
    pub cert_dir: PathBuf,
}

/// Parses a probability in `[0, 1]`.
fn parse_probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a probability in [0, 1]"))
    }
}

/// Parses a finite, non-negative rate per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if r.is_finite() && r >= 0.0 {
        Ok(r)
    } else {
        Err(format!("{r} is not a non-negative rate"))
    }
}

/// A seed from the clock, for runs that did not ask for one (it is printed so a run can be
/// repeated).
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn proxy_flags_parse() {
        let cli = Cli::try_parse_from([
            "neonet-load",
            "proxy",
            "--listen",
            "127.0.0.1:4434",
            "--upstream",
            "127.0.0.1:4433",
            "--loss",
            "0.05",
            "--delay-ms",
            "40",
            "--jitter-ms",
            "5",
            "--dup",
            "0.01",
            "--reorder",
            "0.02",
            "--seed",
            "7",
        ])
        .unwrap();
        let Command::Proxy(args) = cli.command else {
            panic!("not proxy")
        };
        assert_eq!(args.impairment.loss, 0.05);
        assert_eq!(args.impairment.delay_ms, 40);
        assert_eq!(args.seed, Some(7));
        assert!(Cli::try_parse_from([
            "neonet-load",
            "proxy",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:2",
            "--loss",
            "1.5",
        ])
        .is_err());
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "neonet-load",
            "run",
            "--addr",
            "localhost:4433",
            "--clients",
            "1000",
            "--duration",
            "1m",
            "--ramp",
            "500ms",
            "--move",
            "still",
            "--chat-per-s",
            "0.2",
            "--json",
            "out.json",
            "--via-proxy",
            "--loss",
            "0.01",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.duration, Duration::from_secs(60));
        assert_eq!(args.ramp, Duration::from_millis(500));
        assert_eq!(args.movement, MoveMode::Still);
        assert_eq!(args.hz, 30);
        assert!(args.via_proxy && args.impairment.is_impaired());
        // Either an address or --spawn-relay, never both, never neither.
        assert!(Cli::try_parse_from(["neonet-load", "run"]).is_err());
        assert!(
            Cli::try_parse_from(["neonet-load", "run", "--addr", "a:1", "--spawn-relay"]).is_err()
        );
        assert!(Cli::try_parse_from(["neonet-load", "run", "--spawn-relay"]).is_ok());
        let cli = Cli::try_parse_from([
            "neonet-load",
            "run",
            "--spawn-relay",
            "--relay-process",
            "--relay-cpu",
            "0",
            "--load-cpu",
            "1",
            "--client",
            "light",
            "--soak",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.client, ClientKind::Light);
        assert_eq!((args.relay_cpu, args.load_cpu), (Some(0), Some(1)));
        assert_eq!(args.rss_interval, Duration::from_secs(10));
        assert_eq!(args.visible, VISIBLE_DEFAULT);
        // Pinning a relay needs it in a process of its own.
        assert!(
            Cli::try_parse_from(["neonet-load", "run", "--spawn-relay", "--relay-cpu", "0"])
                .is_err()
        );
    }

    #[test]
    fn sim_flags_parse() {
        let cli = Cli::try_parse_from([
            "neonet-load",
            "sim",
            "--scenario",
            "crowd",
            "--entities",
            "100",
            "--clients",
            "4",
            "--hz",
            "30",
            "--seconds",
            "5",
            "--loss",
            "0.1",
            "--rtt-ms",
            "80",
            "--jitter-ms",
            "10",
            "--seed",
            "3",
            "--json",
        ])
        .unwrap();
        let Command::Sim(args) = cli.command else {
            panic!("not sim")
        };
        assert_eq!(args.scenario, Scenario::Crowd);
        assert!(args.json);
    }
}
