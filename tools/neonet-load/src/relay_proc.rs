//! `run --spawn-relay --relay-process`: the relay as a process of its own (the workspace's
//! `neonet-relay` binary), optionally pinned to one CPU, so its CPU time and memory are read
//! from `/proc` for it alone.
//!
//! The world is set up as the in-process `--spawn-relay` sets it up, but through the relay's own
//! files, since the binary takes no world from its caller: before the relay starts, this module
//! writes its fresh data folder with the relay's store ([`neonet::store::Store`]): world settings
//! whose default rank is builder, and one user per client with its last position where the
//! client's walker starts. Each client's token is signed with the relay's own key
//! ([`neonet::auth::JwtTokens`], created in the same folder), so the relay verifies real
//! signed tokens. Rate and per-address limits are lifted as in-process
//! ([`neonet::limits::LimitsSection::for_load`]), written as the relay's `--config` file
//! ([`write_load_config`], shared with `fanout`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use neonet::metrics::Status;
use neonet::store::{Store, StoreConfig};
use neonet::tls::Fingerprint;
use neonet_proto::persist::{Change, NextIds, World};
use neonet_proto::server::{Authenticator, TokenGrant};
use neonet_proto::types::{Rank, User, UserId, Vec3};

use crate::driver::ClientPlan;

/// Bound on the relay printing its address lines: 30 s (a cold disk, a busy machine).
const RELAY_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on one HTTP request to the relay's status server: 5 s.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the clients' signed tokens stay valid: one day, longer than any run (a soak is
/// minutes).
const TOKEN_VALID_S: u64 = 24 * 3600;

/// How the relay process is started.
#[derive(Clone, Debug)]
pub struct RelayProcessConfig {
    /// The `neonet-relay` executable.
    pub bin: PathBuf,
    /// The tick rate, Hz.
    pub tick_hz: u32,
    /// Pin the process (all its threads) to this CPU before it starts.
    pub cpu: Option<usize>,
    /// Its native QUIC driver (`--quic-driver`); `None` leaves the relay's default.
    pub quic_driver: Option<neonet::config::QuicDriver>,
}

/// A running relay process, killed and its folder removed when dropped.
///
/// The child leads a process group of its own, and every signal goes to the group: a
/// `--relay-bin` wrapper (a script that runs the relay under `heaptrack` or `perf`) is the
/// child, and the relay its descendant. Signalled by the child's id alone, such a relay
/// outlived the run, still pinned to the relay's CPU, and skewed every run after it.
pub struct RelayProcess {
    child: Child,
    /// The relay's own process id: the child's, or that of the `neonet-relay` process in the
    /// child's group when the child is a wrapper.
    relay_pid: u32,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its status and metrics HTTP address.
    pub http: SocketAddr,
    /// Its certificate's fingerprint.
    pub fingerprint: Fingerprint,
    dir: PathBuf,
}

impl RelayProcess {
    /// The relay's process id (whose CPU time and memory are read), behind any wrapper.
    pub fn pid(&self) -> u32 {
        self.relay_pid
    }

    /// Sends `signal` to the child's process group (the relay and any wrapper around it).
    fn signal_group(&self, signal: libc::c_int) {
        // SAFETY: `kill` with the group our child leads and a valid signal. A group's id is
        // only reused once none of its processes is left (then this fails with ESRCH, unless
        // a new group took the id in between: the pid space would have to wrap meanwhile).
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), signal);
        }
    }

    /// The relay's `/status`, without its chart history and trails.
    pub fn status(&self) -> anyhow::Result<Status> {
        let body = http_get(
            self.http,
            &format!("/status?history=false&since={}", u64::MAX),
        )?;
        serde_json::from_str(&body).context("parsing the relay's /status")
    }

    /// Stops the relay: SIGTERM (it closes sessions and makes every change durable), then a
    /// kill after `grace`.
    pub fn shutdown(mut self, grace: Duration) {
        self.signal_group(libc::SIGTERM);
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        // Even when the child ended (`shutdown` saw it): what a wrapper started may not have.
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The relay executable: `given`, else `neonet-relay` next to this executable.
pub fn relay_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let p = exe.with_file_name(format!("neonet-relay{}", std::env::consts::EXE_SUFFIX));
    ensure!(
        p.is_file(),
        "{} not found: build it (cargo build --release --bin neonet-relay) or pass --relay-bin",
        p.display()
    );
    Ok(p)
}

/// Writes the world for `plans` into a fresh folder, gives each plan its signed token, and
/// starts the relay on it on a free loopback port.
pub fn start(
    config: &RelayProcessConfig,
    seed: u64,
    plans: &mut [ClientPlan],
) -> anyhow::Result<RelayProcess> {
    let dir = std::env::temp_dir().join(format!(
        "neonet-load-relay-process-{}-{:x}",
        std::process::id(),
        seed & 0xFFFF_FFFF
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let guard = RemoveOnError(Some(dir.clone()));
    write_world(&data, plans)?;

    let mut cmd = Command::new(&config.bin);
    cmd.args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--cert-dir")
        .arg(dir.join("certs"))
        .args(["--tick-hz", &config.tick_hz.to_string()])
        .args(["--log-level", "warn"]);
    cmd.arg("--config").arg(write_load_config(&dir)?);
    if let Some(d) = config.quic_driver {
        let name = format!("{d:?}").to_lowercase();
        cmd.args(["--quic-driver", &name]);
    }
    cmd.current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(cpu) = config.cpu {
        crate::cpu::pin_before_exec(&mut cmd, cpu);
    }
    // A group of its own, so that stopping it stops what a wrapper started (see
    // `RelayProcess`).
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", config.bin.display()))?;
    let stdout = child.stdout.take().context("the relay's stdout")?;
    let banner = read_banner(stdout);
    let (addr, http, fingerprint) = match banner {
        Ok(b) => b,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    std::mem::forget(guard);
    let relay_pid = relay_in_group(child.id()).unwrap_or(child.id());
    tracing::info!(%addr, %http, pid = relay_pid, cpu = ?config.cpu, "spawned a relay process");
    Ok(RelayProcess {
        child,
        relay_pid,
        addr,
        http,
        fingerprint,
        dir,
    })
}

/// The `neonet-relay` process in process group `group`: the group's leader itself unless it
/// is a wrapper. `None` if `/proc` shows none (the caller then reads the leader).
fn relay_in_group(group: u32) -> Option<u32> {
    let is_relay = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim_end().starts_with("neonet-relay"))
    };
    if is_relay(group) {
        return Some(group);
    }
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            crate::cpu::process_group_of_stat(&stat) == Some(group) && is_relay(pid)
        })
}

/// Removes a folder when dropped (on an error path before the relay owns it).
struct RemoveOnError(Option<PathBuf>);

impl Drop for RemoveOnError {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Writes `dir/relay.toml`, a relay configuration whose `[limits]` are
/// [`LimitsSection::for_load`] (every client joins from one address at many times a person's
/// pace), and returns its path for the relay's `--config`.
///
/// [`LimitsSection::for_load`]: neonet::limits::LimitsSection::for_load
pub fn write_load_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        neonet::limits::LimitsSection::for_load().config_toml()?,
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The in-process relay's world, written with the relay's own store and key: default rank
/// builder, each client's user with its last position where its walker starts, each plan's
/// token signed by the relay's key.
fn write_world(data: &Path, plans: &mut [ClientPlan]) -> anyhow::Result<()> {
    let tokens =
        neonet::auth::JwtTokens::load_or_create(data).context("creating the relay's token key")?;
    let (store, loaded) = Store::open(data, StoreConfig::default(), |_| {})
        .context("creating the relay's world database")?;
    let world = World::default();
    let mut settings = loaded.settings;
    settings.default_rank = Rank::Builder;
    store.submit(Change::PutSettings(settings), None)?;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for plan in plans.iter_mut() {
        let user = UserId(u64::from(plan.id) + 1);
        let last_position = plan
            .script()
            .start_position()
            .map(|[x, z]| Vec3::new(x as f32, world.spawn.position.y, z as f32));
        store.submit(
            Change::PutUser(User {
                id: user,
                name: format!("load{}", plan.id),
                rank: Rank::Builder,
                muted: false,
                banned: false,
                last_position,
                standing: Default::default(),
            }),
            None,
        )?;
        plan.token = Some(tokens.issue(&TokenGrant {
            issued_at_s: now_s,
            expires_at_s: now_s + TOKEN_VALID_S,
            ..TokenGrant::user(user)
        }));
    }
    store.submit(
        Change::ReserveIds(NextIds {
            entity: loaded.next_ids.entity,
            user: plans.len() as u64 + 1,
            chat: loaded.next_ids.chat,
        }),
        None,
    )?;
    store.flush().context("writing the relay's world")?;
    store.shutdown().context("closing the relay's world")?;
    Ok(())
}

/// Reads the relay's stdout banner: UDP address, HTTP address, certificate fingerprint; then
/// keeps draining its stdout on a thread so it never blocks on a full pipe.
pub(crate) fn read_banner(
    stdout: ChildStdout,
) -> anyhow::Result<(SocketAddr, SocketAddr, Fingerprint)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + RELAY_START_TIMEOUT;
    let (mut addr, mut http, mut fp) = (None, None, None);
    while addr.is_none() || http.is_none() || fp.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).map_err(|_| {
            anyhow::anyhow!("neonet-relay: no address lines within {RELAY_START_TIMEOUT:?}")
        })?;
        if let Some(v) = line.strip_prefix("status and metrics on http://") {
            http = Some(v.trim().parse::<SocketAddr>()?);
        } else if let Some(v) = line.strip_prefix("neonet-relay listening on udp ") {
            addr = Some(v.trim().parse::<SocketAddr>()?);
        } else if let Some(v) = line.strip_prefix("certificate sha-256: ") {
            fp = Some(v.trim().parse::<Fingerprint>()?);
        }
    }
    match (addr, http, fp) {
        (Some(a), Some(h), Some(f)) => Ok((a, h, f)),
        _ => bail!("incomplete relay banner"),
    }
}

/// GETs `path` from `http` (plain HTTP/1.1, `Connection: close`) and returns the body.
pub(crate) fn http_get(http: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&http, HTTP_TIMEOUT)
        .with_context(|| format!("connecting to {http}"))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .with_context(|| format!("reading http://{http}{path}"))?;
    ensure!(
        text.starts_with("HTTP/1.1 200"),
        "http://{http}{path}: {}",
        text.lines().next().unwrap_or("")
    );
    let (_, body) = text
        .split_once("\r\n\r\n")
        .context("an HTTP response without a body")?;
    Ok(body.to_string())
}
