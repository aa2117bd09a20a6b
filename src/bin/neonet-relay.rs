//! `neonet-relay`: the standalone server.
//!
//! Zero configuration: `cargo run --bin neonet-relay` listens on UDP `0.0.0.0:4433`, creates
//! `./certs/` (a self-signed development certificate, reused later) and `./data/` in the working
//! directory (the world database `world.redb` lives there), prints its address and certificate
//! fingerprint, and shuts down cleanly on Ctrl-C or SIGTERM: sessions closed, every change made
//! durable, the database closed. A second relay on the same data folder exits with an error
//! (status 1) saying so. Flags override an optional TOML file (`--config FILE`), which overrides defaults.
//! The status page and Prometheus metrics are served on `http_listen` (default
//! `http://127.0.0.1:4480`).
//!
//! `neonet-relay bridge --upstream HOST:PORT` runs a bridge instead ([`neonet::bridge`]): the
//! browsers' ways in (WebTransport on UDP `0.0.0.0:4443`, the page, `/connect.json` and the
//! WebSocket fallback on `http://127.0.0.1:4490`) in front of a relay kept off the public web,
//! each browser session forwarded to it over native QUIC.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use neonet::bridge::{Bridge, BridgeConfig};
use neonet::config::RelayConfig;
use neonet::metrics::{Metrics, MetricsConfig};
use neonet::relay::{Relay, RelayHooks};
use neonet::tls::{Fingerprint, Trust};

/// neonet relay: hosts a world for QUIC clients.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "neonet relay: hosts a persistent world for QUIC clients",
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// Run something else than a relay.
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (every key optional; flags win).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// UDP address to listen on [default: 0.0.0.0:4433].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// TCP address of the metrics/status HTTP server [default: 127.0.0.1:4480].
    #[arg(long, value_name = "ADDR", conflicts_with = "no_http")]
    http_listen: Option<SocketAddr>,
    /// Serve no metrics/status HTTP.
    #[arg(long)]
    no_http: bool,
    /// Data folder [default: ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    certs: CertArgs,
    /// Server tick rate, Hz (10-120) [default: 30].
    #[arg(long, value_name = "HZ")]
    tick_hz: Option<u16>,
    /// Most joined players; 0 keeps the world's setting [default: 0].
    #[arg(long, value_name = "N")]
    player_limit: Option<u32>,
    /// Keep the world in memory only: no database, lost on exit.
    #[arg(long)]
    no_persist: bool,
    /// Native QUIC driver: `tasks` (quinn's; WebTransport on the same port) or `loop` (one
    /// loop over quinn-proto, less CPU per client, Linux; WebTransport on the port + 1)
    /// [default: tasks].
    #[arg(long, value_name = "DRIVER", value_enum)]
    quic_driver: Option<neonet::config::QuicDriver>,
    /// Secret a user types as `/admin CODE` in chat to become admin [default: none].
    #[arg(
        long,
        value_name = "CODE",
        env = "NEONET_ADMIN_CODE",
        hide_env_values = true
    )]
    admin_code: Option<String>,
    /// Log filter, e.g. `info` or `neonet=debug` [default: RUST_LOG, else info].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Set a limit or quota (repeatable), by its `[limits]` TOML name, e.g.
    /// `--limit chat_per_s=5 --limit world_bytes_max=8388608` (README "Limits and quotas").
    #[arg(long = "limit", value_name = "NAME=VALUE")]
    limits: Vec<String>,
    // ---- identity and tokens (issue 15: tokens, moderation) ----
    /// How long the relay's tokens stay valid, e.g. `7d`, `12h` [default: 7d].
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    token_ttl: Option<Duration>,
    /// Trust players' tokens signed by a game backend: a file with an HS256 secret or a PEM
    /// public key (see --backend-key-alg).
    #[arg(long, value_name = "FILE")]
    backend_key: Option<PathBuf>,
    /// Algorithm of --backend-key: HS256, EdDSA or ES256 [default: HS256].
    #[arg(long, value_name = "ALG", requires = "backend_key")]
    backend_key_alg: Option<String>,
    /// The `kid` the backend's tokens carry [default: none].
    #[arg(long, value_name = "KID", requires = "backend_key")]
    backend_key_id: Option<String>,
}

/// `7d`, `12h`, `30m`, `90s`, `1w` (at most 365 days).
fn parse_ttl(s: &str) -> Result<Duration, String> {
    neonet::proto::server::moderation::parse_duration(
        s,
        Duration::from_secs(neonet::config::TOKEN_TTL_S_MAX),
    )
    .ok_or_else(|| format!("{s:?}: a whole number and s, m, h, d or w, at most 365d"))
}

/// The certificate a relay or a bridge presents (the same flags for both).
#[derive(Debug, clap::Args)]
struct CertArgs {
    /// Development certificate folder [default: ./certs].
    #[arg(long, value_name = "DIR")]
    cert_dir: Option<PathBuf>,
    /// A real certificate chain (PEM), instead of the development certificate.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
}

/// What `neonet-relay` runs besides a relay.
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve browsers (WebTransport, WebSocket, the page) in front of a remote relay, each
    /// session forwarded to it over native QUIC.
    Bridge(BridgeArgs),
    /// Mint a token signed with this relay's key (created in the data folder if absent) and
    /// print it: `--rank admin` makes the first admin.
    Token(TokenArgs),
}

/// `neonet-relay token`.
#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The user id the token names (decimal); the user is created at first join if new.
    #[arg(long, value_name = "ID")]
    user: u64,
    /// The display name it vouches for.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// A rank it grants: visitor, builder or admin [default: none, the user's own].
    #[arg(long, value_name = "RANK")]
    rank: Option<String>,
    /// How long it is valid, e.g. 7d, 12h [default: 7d].
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    ttl: Option<Duration>,
    /// Data folder holding the relay's key [default: ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// `neonet-relay bridge`.
#[derive(Debug, clap::Args)]
struct BridgeArgs {
    /// The relay to forward to.
    #[arg(long, value_name = "HOST:PORT")]
    upstream: String,
    /// Trust the relay by this SHA-256 fingerprint (what it printed) [default: the development
    /// certificate in --upstream-cert-dir].
    #[arg(long, value_name = "HEX", conflicts_with = "upstream_cert")]
    upstream_cert_sha256: Option<String>,
    /// Trust the relay by this certificate file (PEM or DER).
    #[arg(long, value_name = "FILE")]
    upstream_cert: Option<PathBuf>,
    /// Folder of the relay's development certificate to trust when neither --upstream-cert nor
    /// --upstream-cert-sha256 is given [default: ./certs].
    #[arg(long, value_name = "DIR")]
    upstream_cert_dir: Option<PathBuf>,
    /// UDP address of the WebTransport endpoint [default: 0.0.0.0:4443].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// TCP address of the HTTP server (page, /connect.json, /ws) [default: 127.0.0.1:4490].
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    #[command(flatten)]
    certs: CertArgs,
    /// Most browser sessions bridged at once [default: 4096].
    #[arg(long, value_name = "N")]
    connections_max: Option<usize>,
    /// An origin besides the page's own allowed to open WebSocket sessions (repeatable).
    #[arg(long, value_name = "ORIGIN")]
    browser_origin: Vec<String>,
    /// Log filter, e.g. `info` or `neonet=debug` [default: RUST_LOG, else info].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

/// Prints a failure as its chain of causes on one line and exits with status 1: returning the
/// error from `main` would print its `Debug` form instead, with a backtrace whenever
/// `RUST_BACKTRACE` is set, burying the message of an ordinary refused start.
fn main() -> ExitCode {
    match start() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start() -> anyhow::Result<()> {
    let mut args = Args::parse();
    match args.command.take() {
        Some(Command::Bridge(bridge)) => return run_bridge(bridge),
        Some(Command::Token(token)) => return mint_token(token),
        None => {}
    }
    let mut config = match &args.config {
        Some(path) => RelayConfig::from_toml_file(path)?,
        None => RelayConfig::default(),
    };
    let file_has_log_level = args.config.is_some() && config.log_level != "info";
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.http_listen {
        config.http_listen = Some(v);
    }
    if args.no_http {
        config.http_listen = None;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.certs.cert_dir {
        config.cert_dir = v;
    }
    if let (Some(c), Some(k)) = (args.certs.cert, args.certs.key) {
        config.cert_path = Some(c);
        config.key_path = Some(k);
    }
    if let Some(v) = args.tick_hz {
        config.tick_hz = v;
    }
    if let Some(v) = args.admin_code {
        config.admin_code = Some(v);
    }
    if let Some(v) = args.player_limit {
        config.player_limit = v;
    }
    if args.no_persist {
        config.persist = false;
    }
    if let Some(v) = args.quic_driver {
        config.quic_driver = v;
    }
    for l in &args.limits {
        let (name, value) = l
            .split_once('=')
            .with_context(|| format!("--limit {l}: expected NAME=VALUE"))?;
        config.limits.set(name.trim(), value)?;
    }
    if let Some(v) = args.token_ttl {
        config.token_ttl_s = v.as_secs();
    }
    if let Some(v) = args.backend_key {
        config.backend_key_path = Some(v);
    }
    if let Some(v) = args.backend_key_alg {
        config.backend_key_alg = v;
    }
    if let Some(v) = args.backend_key_id {
        config.backend_key_id = Some(v);
    }
    let filter = match (&args.log_level, std::env::var("RUST_LOG")) {
        (Some(flag), _) => flag.clone(),
        (None, Ok(env)) if !file_has_log_level => env,
        _ => config.log_level.clone(),
    };
    config.log_level = filter.clone();
    // Logs on stderr; stdout carries only the address and fingerprint lines, for scripts.
    init_logging(&filter)?;
    config.validate()?;

    // Its I/O threads are named, as the core (`neonet-core`) and store (`neonet-store`) threads
    // are, so `top -H` and the load tool's `/proc/<pid>/task` reading tell them apart.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("neonet-relay")
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: RelayConfig) -> anyhow::Result<()> {
    tracing::info!(
        data_dir = %config.data_dir.display(),
        persist = config.persist,
        tick_hz = config.tick_hz,
        "starting neonet-relay"
    );
    let metrics = Arc::new(Metrics::new(MetricsConfig {
        tick_period: Duration::from_secs(1) / u32::from(config.tick_hz),
    }));
    let http_listen = config.http_listen;
    // The relay first: it opens the world database, and a second relay on the same data folder
    // must be told that, not that the HTTP port is taken.
    let relay = Relay::start_with(
        config,
        RelayHooks {
            metrics: Some(metrics.clone()),
            ..RelayHooks::default()
        },
    )
    .await
    .context("starting the relay")?;
    let http = match http_listen {
        Some(addr) => {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    relay.shutdown().await?;
                    return Err(e).with_context(|| format!("binding the HTTP server to {addr}"));
                }
            };
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let http_addr = listener.local_addr()?;
            println!("status and metrics on http://{http_addr}");
            println!("play in a browser: http://{}/play", dialable(http_addr));
            let task = tokio::spawn(neonet::http::serve_with_browsers(
                listener,
                metrics.clone(),
                relay.browser_access(),
                async {
                    let _ = stopped.await;
                },
            ));
            Some((stop, task))
        }
        None => None,
    };
    println!("neonet-relay listening on udp {}", relay.local_addr());
    println!("certificate sha-256: {}", relay.cert_fingerprint());
    println!(
        "connect with: cargo run --release --example chat -- {}   (from another folder add --cert-sha256 {})",
        dialable(relay.local_addr()),
        relay.cert_fingerprint()
    );
    wait_for_signal().await?;
    tracing::info!("signal received: shutting down");
    relay.shutdown().await?;
    if let Some((stop, task)) = http {
        let _ = stop.send(());
        task.await.context("the HTTP task")??;
    }
    Ok(())
}

/// `neonet-relay token`: prints a token signed with the relay's key.
fn mint_token(args: TokenArgs) -> anyhow::Result<()> {
    use neonet::proto::server::{Authenticator, TokenGrant};
    let rank = match args.rank.as_deref() {
        None => None,
        Some(r) => Some(
            neonet::auth::parse_rank(r)
                .with_context(|| format!("--rank {r:?}: visitor, builder or admin"))?,
        ),
    };
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from(neonet::config::DEFAULT_DATA_DIR));
    let tokens = neonet::auth::JwtTokens::load_or_create(&data_dir)
        .with_context(|| format!("the relay key in {}", data_dir.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let ttl = args
        .ttl
        .unwrap_or(Duration::from_secs(neonet::config::TOKEN_TTL_S_DEFAULT));
    println!(
        "{}",
        tokens.issue(&TokenGrant {
            user: neonet::proto::types::UserId(args.user),
            name: Some(args.name),
            rank,
            issued_at_s: now,
            expires_at_s: now + ttl.as_secs(),
            // Revoked by its issue time (the minting tool does not know the user's generation).
            generation: None,
        })
    );
    Ok(())
}

/// `neonet-relay bridge`: starts the bridge, prints where browsers go, serves until a signal.
fn run_bridge(args: BridgeArgs) -> anyhow::Result<()> {
    let filter = match (&args.log_level, std::env::var("RUST_LOG")) {
        (Some(flag), _) => flag.clone(),
        (None, Ok(env)) => env,
        _ => "info".into(),
    };
    init_logging(&filter)?;
    let mut config = BridgeConfig {
        upstream: args.upstream,
        ..BridgeConfig::default()
    };
    config.upstream_trust = if let Some(hex) = &args.upstream_cert_sha256 {
        Trust::Sha256(
            hex.parse::<Fingerprint>()
                .context("--upstream-cert-sha256")?,
        )
    } else if let Some(path) = args.upstream_cert {
        Trust::CertFile(path)
    } else {
        Trust::DevCertDir(
            args.upstream_cert_dir
                .unwrap_or_else(|| PathBuf::from(neonet::tls::DEFAULT_CERT_DIR)),
        )
    };
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.http_listen {
        config.http_listen = v;
    }
    if let Some(v) = args.certs.cert_dir {
        config.cert_dir = v;
    }
    config.cert_path = args.certs.cert;
    config.key_path = args.certs.key;
    if let Some(v) = args.connections_max {
        config.connections_max = v;
    }
    config.allowed_origins = args.browser_origin;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let upstream = config.upstream.clone();
        let bridge = Bridge::start(config).await.context("starting the bridge")?;
        println!(
            "neonet bridge to {upstream}: WebTransport on udp {}",
            bridge.local_addr()
        );
        println!(
            "play in a browser: http://{}/play",
            dialable(bridge.http_addr())
        );
        wait_for_signal().await?;
        tracing::info!("signal received: shutting down");
        bridge.shutdown().await;
        Ok(())
    })
}

/// Logs on stderr, coloured only when stderr is a terminal (not when piped to a file).
fn init_logging(filter: &str) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let targets: tracing_subscriber::filter::Targets = filter
        .parse()
        .with_context(|| format!("--log-level {filter:?}: a level, or target=level pairs"))?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .finish()
        .with(targets)
        .init();
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}

/// The address a local client dials: an unspecified listen address (`0.0.0.0`, `::`) becomes
/// loopback.
fn dialable(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}
