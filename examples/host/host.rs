//! A game server that hosts the world itself: its own physics moves many bodies, and neonet
//! carries them to everyone watching.
//!
//! ```text
//! cargo run --release --example host                          # the game server
//! cargo run --release --example host -- --watch 127.0.0.1:4433   # watch it (a spectator)
//! ```
//!
//! and, in a browser, the page the server prints (`http://127.0.0.1:4480/play?spectate` to
//! watch, without `?spectate` to walk among the cubes).
//!
//! The server starts neonet's relay runtime as a library (QUIC, WebTransport and the WebSocket
//! fallback, the HTTP page; no relay binary, nothing stored) with a [`RelayHooks::host`] call:
//! right before every tick, on the core's thread, the game steps its physics and tells the
//! `ServerCore` where each body is now (`host_set_transform`). The tick quantizes each body once
//! and sends every client what changed near it, within its budget, highest priority first.
//!
//! The physics is the game's own and deterministic (no clock, a fixed-seed generator): cubes
//! fall, bounce on the floor and off the walls, slide to rest, and every few seconds a blast
//! pushes the ones near a random point: a burst of many bodies moving at once, then rest. A
//! pushed body is raised to the `INTERACTING` priority until it sleeps again (`AT_REST`); a
//! sleeping body is not sent at all.
//!
//! `--watch` joins as a spectator (no player of its own, a camera over the scene) with the
//! native client and prints, once a second, what it sees and what it costs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use neonet::client::{Client, ClientOptions};
use neonet::config::RelayConfig;
use neonet::metrics::{Metrics, MetricsConfig};
use neonet::proto::server::{priority, ServerCore};
use neonet::proto::types::{Blueprint, BlueprintId, EntityId, EntityKind, Quat, Transform, Vec3};
use neonet::relay::{Relay, RelayHooks};
use neonet::tls::{Fingerprint, Trust};

/// Gravity, m/s².
const GRAVITY: f32 = 9.81;
/// Half a cube's edge, metres: where a resting cube's centre is.
const CUBE_HALF_M: f32 = 0.5;
/// Share of vertical speed kept by a bounce.
const RESTITUTION: f32 = 0.45;
/// Horizontal speed kept per second while touching the floor (sliding friction).
const FLOOR_FRICTION_PER_S: f32 = 0.2;
/// A body slower than this on the floor, m/s, goes to sleep (stops moving, stops being sent).
const SLEEP_SPEED_MPS: f32 = 0.15;
/// Seconds between two blasts.
const BLAST_INTERVAL_S: f32 = 4.0;
/// Reach of a blast, metres.
const BLAST_RADIUS_M: f32 = 12.0;
/// Ticks of the host's physics per second: the relay's default tick rate.
const TICK_HZ: u16 = neonet::proto::time::TICK_HZ_DEFAULT;

/// neonet's game-server example.
#[derive(Debug, Parser)]
struct Args {
    /// UDP address to serve QUIC and WebTransport on.
    #[arg(long, default_value = "0.0.0.0:4433")]
    listen: SocketAddr,
    /// HTTP address of the browser page and the status (`off` for none).
    #[arg(long, default_value = "127.0.0.1:4480")]
    http: String,
    /// Bodies to simulate.
    #[arg(long, default_value_t = 400)]
    bodies: usize,
    /// Development certificate folder (created if missing; the watcher trusts it).
    #[arg(long, value_name = "DIR", default_value = "certs")]
    cert_dir: PathBuf,
    /// Instead of serving: watch the server at this address as a spectator.
    #[arg(long, value_name = "ADDR")]
    watch: Option<String>,
    /// With --watch: pin the server's certificate by the fingerprint it printed.
    #[arg(long, value_name = "HEX")]
    cert_sha256: Option<String>,
    /// With --watch: stop after this many seconds (runs until Ctrl-C otherwise).
    #[arg(long)]
    seconds: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.watch.clone() {
        Some(addr) => watch(&addr, &args),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(serve(args)),
    }
}

// ---- the game's own physics ----

/// One cube.
#[derive(Clone, Copy, Debug)]
struct Body {
    id: EntityId,
    position: Vec3,
    velocity: Vec3,
    rotation: Quat,
    /// Angular velocity, radians per second about each axis.
    spin: Vec3,
    awake: bool,
}

/// The scene: bodies in a walled square, and the generator that picks where blasts land.
struct Scene {
    bodies: Vec<Body>,
    half_extent_m: f32,
    rng: u64,
    since_blast_s: f32,
}

impl Scene {
    /// `n` cubes on a grid, dropped from a little height (they fall and settle first).
    fn new(n: usize) -> Scene {
        let side = (n as f32).sqrt().ceil().max(1.0) as usize;
        let spacing = 2.5;
        let half = side as f32 * spacing / 2.0;
        let bodies = (0..n)
            .map(|i| Body {
                id: EntityId(0),
                position: Vec3::new(
                    (i % side) as f32 * spacing - half + spacing / 2.0,
                    CUBE_HALF_M + 1.0 + (i % 3) as f32,
                    (i / side) as f32 * spacing - half + spacing / 2.0,
                ),
                velocity: Vec3::ZERO,
                rotation: Quat::from_rotation_y(i as f32 * 0.7),
                spin: Vec3::ZERO,
                awake: true,
            })
            .collect();
        Scene {
            bodies,
            half_extent_m: half + 2.0,
            rng: 0x9E37_79B9_7F4A_7C15,
            since_blast_s: 0.0,
        }
    }

    /// A uniform number in `[0, 1)` from a fixed-seed xorshift: the same scene every run.
    fn random(&mut self) -> f32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 40) as f32 / (1u64 << 24) as f32
    }

    /// One step of `dt` seconds. Returns the bodies a blast woke.
    fn step(&mut self, dt: f32) -> Vec<usize> {
        let mut blasted = Vec::new();
        self.since_blast_s += dt;
        if self.since_blast_s >= BLAST_INTERVAL_S {
            self.since_blast_s = 0.0;
            let lim = self.half_extent_m;
            let centre = Vec3::new(
                (self.random() * 2.0 - 1.0) * lim,
                0.0,
                (self.random() * 2.0 - 1.0) * lim,
            );
            for i in 0..self.bodies.len() {
                let away = self.bodies[i].position - centre;
                let d = away.length();
                if d > BLAST_RADIUS_M {
                    continue;
                }
                let push = (1.0 - d / BLAST_RADIUS_M) * 9.0;
                let dir = (away.with_y(0.0).normalize_or(Vec3::X) + Vec3::Y * 1.5).normalize();
                let spin = Vec3::new(self.random(), self.random(), self.random()) * 8.0 - 4.0;
                let b = &mut self.bodies[i];
                b.velocity += dir * push;
                b.spin += spin;
                b.awake = true;
                blasted.push(i);
            }
        }
        let lim = self.half_extent_m;
        for b in self.bodies.iter_mut().filter(|b| b.awake) {
            b.velocity.y -= GRAVITY * dt;
            b.position += b.velocity * dt;
            b.rotation = (Quat::from_scaled_axis(b.spin * dt) * b.rotation).normalize();
            for axis in [0, 2] {
                if b.position[axis].abs() > lim {
                    b.position[axis] = b.position[axis].clamp(-lim, lim);
                    b.velocity[axis] = -b.velocity[axis] * 0.5;
                }
            }
            if b.position.y <= CUBE_HALF_M {
                b.position.y = CUBE_HALF_M;
                if b.velocity.y < 0.0 {
                    b.velocity.y = -b.velocity.y * RESTITUTION;
                }
                let keep = FLOOR_FRICTION_PER_S.powf(dt);
                b.velocity.x *= keep;
                b.velocity.z *= keep;
                b.spin *= keep;
                if b.velocity.length() < SLEEP_SPEED_MPS && b.velocity.y.abs() < 0.5 {
                    b.velocity = Vec3::ZERO;
                    b.spin = Vec3::ZERO;
                    b.awake = false;
                }
            }
        }
        blasted
    }
}

/// The game's side of the world: spawns the scene into the core at the first tick, then steps
/// it and tells the core where the moving bodies are, before every tick.
struct Game {
    scene: Scene,
    spawned: bool,
    last: Instant,
}

impl Game {
    fn tick(&mut self, core: &mut ServerCore) {
        let dt = 1.0 / f32::from(core.config().tick_hz);
        if !self.spawned {
            self.spawned = true;
            core.host_add_blueprint(Blueprint {
                id: BlueprintId("cube".into()),
                version: 1,
                name: "Cube".into(),
                author: "host example".into(),
                desc: "a 1 m cube the host simulates".into(),
                ..Default::default()
            });
            for b in &mut self.scene.bodies {
                let t = Transform {
                    position: b.position,
                    rotation: b.rotation,
                    scale: None,
                };
                match core.host_spawn(Some(BlueprintId("cube".into())), t, vec![]) {
                    Ok(id) => b.id = id,
                    Err(e) => eprintln!("spawning a cube: {e}"),
                }
            }
        }
        let blasted = self.scene.step(dt);
        for &i in &blasted {
            let _ = core.host_set_priority(self.scene.bodies[i].id, priority::INTERACTING);
        }
        for b in &self.scene.bodies {
            let t = Transform {
                position: b.position,
                rotation: b.rotation,
                scale: None,
            };
            // Unchanged transforms cost nothing: the core sends only what changed.
            let _ = core.host_set_transform(b.id, t);
            if !b.awake {
                let _ = core.host_set_priority(b.id, priority::AT_REST);
            }
        }
        if self.last.elapsed() >= Duration::from_secs(5) {
            self.last = Instant::now();
            let awake = self.scene.bodies.iter().filter(|b| b.awake).count();
            let total = core.figures_total();
            println!(
                "tick {}: {awake} of {} bodies moving, {} watching, {} KiB sent so far",
                core.tick().0,
                self.scene.bodies.len(),
                core.sessions().count(),
                total.bytes_down / 1024
            );
        }
    }
}

// ---- serving ----

async fn serve(args: Args) -> anyhow::Result<()> {
    let http_listen = match args.http.as_str() {
        "off" => None,
        a => Some(a.parse::<SocketAddr>().context("--http")?),
    };
    let config = RelayConfig {
        listen: args.listen,
        http_listen,
        cert_dir: args.cert_dir.clone(),
        // The world is the game's and lives in its memory: nothing is stored, and the token
        // secret goes to a scratch folder.
        persist: false,
        data_dir: std::env::temp_dir().join("neonet-host-example"),
        tick_hz: TICK_HZ,
        ..RelayConfig::default()
    };
    let metrics = Arc::new(Metrics::new(MetricsConfig {
        tick_period: Duration::from_secs(1) / u32::from(TICK_HZ),
    }));
    let mut game = Game {
        scene: Scene::new(args.bodies),
        spawned: false,
        last: Instant::now(),
    };
    let relay = Relay::start_with(
        config,
        RelayHooks {
            metrics: Some(metrics.clone()),
            host: Some(Box::new(move |core: &mut ServerCore| game.tick(core))),
            ..RelayHooks::default()
        },
    )
    .await
    .context("starting the server")?;
    let port = relay.local_addr().port();
    println!(
        "hosting {} bodies on udp {}",
        args.bodies,
        relay.local_addr()
    );
    println!("certificate sha-256: {}", relay.cert_fingerprint());
    println!("watch it: cargo run --release --example host -- --watch 127.0.0.1:{port}");
    let http = match http_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the HTTP server to {addr}"))?;
            println!(
                "or in a browser: http://{}/play?spectate",
                listener.local_addr()?
            );
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(neonet::http::serve_with_browsers(
                listener,
                metrics,
                relay.browser_access(),
                async {
                    let _ = stopped.await;
                },
            ));
            Some((stop, task))
        }
        None => None,
    };
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    relay.shutdown().await?;
    if let Some((stop, task)) = http {
        let _ = stop.send(());
        task.await??;
    }
    Ok(())
}

// ---- watching ----

fn watch(addr: &str, args: &Args) -> anyhow::Result<()> {
    let trust = match &args.cert_sha256 {
        Some(hex) => Trust::Sha256(
            hex.parse::<Fingerprint>()
                .map_err(|e| anyhow::anyhow!("--cert-sha256: {e}"))?,
        ),
        None => Trust::DevCertDir(args.cert_dir.clone()),
    };
    let options = ClientOptions {
        trust,
        ..ClientOptions::named("watcher")
    };
    // High over the scene's middle: the interest radius covers the whole square.
    let camera = Vec3::new(0.0, 30.0, 0.0);
    let client = Client::connect_spectator(addr, options, camera)
        .with_context(|| format!("watching {addr}"))?;
    println!("watching {addr} as a spectator");
    let start = Instant::now();
    let mut last = std::collections::HashMap::<EntityId, Transform>::new();
    let mut last_figures = client.figures();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        while client.poll_event().is_some() {}
        let now: Vec<(EntityId, Transform)> = client.with_world(|w| {
            w.entities
                .values()
                .filter(|e| e.kind == EntityKind::App)
                .map(|e| (e.id, e.transform))
                .collect()
        });
        let moved = now
            .iter()
            .filter(|(id, t)| last.get(id).is_some_and(|old| old != t))
            .count();
        last = now.iter().copied().collect();
        let f = client.figures();
        println!(
            "{} bodies, {moved} moved in the last second; {:.1} kbit/s down, {:.1} kbit/s up, rtt {:.1} ms, {} datagrams lost",
            now.len(),
            (f.bytes_down - last_figures.bytes_down) as f64 * 8.0 / 1000.0,
            (f.bytes_up - last_figures.bytes_up) as f64 * 8.0 / 1000.0,
            f.rtt_us as f64 / 1000.0,
            f.datagrams_lost
        );
        last_figures = f;
        if let neonet::client::ClientState::Closed { reason, detail } = client.state() {
            anyhow::bail!("disconnected: {reason:?} {detail}");
        }
        if args
            .seconds
            .is_some_and(|s| start.elapsed() >= Duration::from_secs(s))
        {
            client.close();
            return Ok(());
        }
    }
}
