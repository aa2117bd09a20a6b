//! Deterministic motion scenarios and the in-process bandwidth runner the load tool calls.
//!
//! - [`Scenario::Cubes`]: Fiedler's scene, rigid cubes on a grid, mostly asleep; every
//!   [`CUBES_IMPULSE_INTERVAL_S`] a group around a random point is knocked into the air, tumbles,
//!   lands, slides and goes back to sleep (exact rest: the quantized value stops changing).
//! - [`Scenario::Crowd`]: players walking or running continuously, turning towards new headings
//!   and now and then jumping.
//!
//! [`bench_run`] drives a [`ClientReplicator`] per client and a [`ReplicaReceiver`] per client
//! over the simulated network's link model ([`crate::sim::Link`]: one-way delay, uniform jitter,
//! independent loss, both directions), and reports bandwidth and bytes per update against the reference engine's
//! msgpack encoding ([`baseline_msgpack_bytes`]).
//!
//! Why one module of about 700 lines: it is test and measurement equipment behind the `sim`
//! feature, one concern (the scenarios and the runner that measures them) whose parts share
//! the scenario state; splitting the motion generators from the runner would only spread one
//! measurement over files.

use std::collections::BinaryHeap;
use std::time::Duration;

use super::budget::PACKET_OVERHEAD_BYTES;
use super::{
    decode_client_datagram, encode_client_datagram, ClientReplicator, EntitySample, Quantizer,
    ReplicaReceiver, Seq, TickInput, TransformConfig,
};
use crate::client::{ClientConfig, ClientCore};
use crate::persist::World;
use crate::rng::Rng;
use crate::server::ServerConfig;
use crate::sim::{Link, LinkConfig};
use crate::time::{Tick, Time};
use crate::types::{Entity, EntityId, EntityKind, Quat, Transform, Vec3};

/// Gravity, m/s².
const GRAVITY: f64 = 9.81;
/// Half a cube's edge, metres: cubes are 1 m, resting centres sit 0.5 m above the ground.
const CUBE_HALF_M: f64 = 0.5;
/// Spacing of the cube grid, metres.
const CUBE_SPACING_M: f64 = 2.0;
/// Seconds between impulses in the cube scene.
pub const CUBES_IMPULSE_INTERVAL_S: f64 = 1.0;
/// Radius of an impulse, metres: on a 2 m grid it wakes about 20 cubes.
const CUBES_IMPULSE_RADIUS_M: f64 = 5.0;
/// Ground bounce restitution (fraction of vertical speed kept).
const CUBES_RESTITUTION: f64 = 0.3;
/// Ground friction on linear speed, 1/s (exponential decay rate while touching the ground).
const CUBES_FRICTION_PER_S: f64 = 4.0;
/// Ground damping of angular speed, 1/s.
const CUBES_ANGULAR_DAMPING_PER_S: f64 = 5.0;
/// Below this linear (m/s) and angular (rad/s) speed on the ground, a cube sleeps.
const CUBES_SLEEP_SPEED: f64 = 0.08;

/// Seconds between piles thrown in the bursty scene: long enough for the last pile to come
/// to rest first, so the scene alternates between a burst and a world at rest.
pub const BURST_INTERVAL_S: f64 = 5.0;
/// Fraction of the bodies thrown at once in the bursty scene: 150 of 900, every one of them
/// changing every tick for about a second and a half, several ticks' budget share per tick.
pub const BURST_FRACTION: f64 = 1.0 / 12.0;

/// Walking speed, m/s.
const CROWD_WALK_M_S: f64 = 1.4;
/// Running speed, m/s.
const CROWD_RUN_M_S: f64 = 4.5;
/// Fastest turn, rad/s.
const CROWD_TURN_RAD_S: f64 = 3.0;
/// Chance per second that a grounded player jumps.
const CROWD_JUMP_PER_S: f64 = 0.15;
/// Jump take-off speed, m/s (≈ 1 m high).
const CROWD_JUMP_M_S: f64 = 4.5;
/// Area per player, m² (a 100-player crowd walks a 100 m square).
const CROWD_AREA_PER_PLAYER_M2: f64 = 100.0;

/// Which motion to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Rigid bodies mostly at rest, groups knocked into motion periodically.
    Cubes,
    /// Players walking continuously.
    Crowd,
    /// Rigid bodies at rest, then every [`BURST_INTERVAL_S`] a pile of [`BURST_FRACTION`] of
    /// them (those nearest a random point) thrown up at once: many bodies moving together,
    /// then rest.
    Burst,
}

impl Scenario {
    /// Parses `cubes`, `crowd` or `burst` (the load tool's `--scenario` values).
    pub fn parse(s: &str) -> Option<Scenario> {
        match s {
            "cubes" => Some(Scenario::Cubes),
            "crowd" => Some(Scenario::Crowd),
            "burst" => Some(Scenario::Burst),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
struct Body {
    p: [f64; 3],
    v: [f64; 3],
    q: [f64; 4],
    w: [f64; 3],
    awake: bool,
    // crowd
    heading: f64,
    target_heading: f64,
    speed: f64,
    next_turn_s: f64,
}

/// A crowd of `n` players (the benches' and profiling examples' world), stepped at 30 Hz and
/// quantized once per step with the default configuration, ready for
/// [`super::ClientReplicator::write_tick`].
#[derive(Debug)]
pub struct CrowdSamples {
    gen: MotionGen,
    qz: Quantizer,
    /// This step's samples, ascending by id.
    pub samples: Vec<EntitySample>,
}

impl CrowdSamples {
    /// A crowd of `n` players (seed 7), stepped once.
    pub fn new(n: usize) -> CrowdSamples {
        let qz = Quantizer::new(&TransformConfig::default()).expect("default config");
        let mut w = CrowdSamples {
            gen: MotionGen::new(Scenario::Crowd, n, 7),
            qz,
            samples: Vec::new(),
        };
        w.step();
        w
    }

    /// Advances one 30 Hz tick and requantizes.
    pub fn step(&mut self) {
        self.gen.step(1.0 / 30.0);
        let qz = &self.qz;
        self.samples.clear();
        self.samples.extend(
            self.gen
                .transforms()
                .map(|(id, t)| EntitySample::new(id, &t, qz)),
        );
    }
}

/// A deterministic motion generator: the same seed gives the same transforms on every machine.
#[derive(Clone, Debug)]
pub struct MotionGen {
    scenario: Scenario,
    rng: Rng,
    bodies: Vec<Body>,
    time_s: f64,
    next_impulse_s: f64,
    half_extent_m: f64,
}

impl MotionGen {
    /// `entities` bodies of `scenario`, laid out from `seed`.
    pub fn new(scenario: Scenario, entities: usize, seed: u64) -> MotionGen {
        let mut rng = Rng::new(seed);
        let mut bodies = Vec::with_capacity(entities);
        let half_extent_m = match scenario {
            Scenario::Cubes | Scenario::Burst => {
                let side = (entities as f64).sqrt().ceil().max(1.0);
                side * CUBE_SPACING_M / 2.0
            }
            Scenario::Crowd => (entities as f64 * CROWD_AREA_PER_PLAYER_M2).sqrt() / 2.0,
        };
        for i in 0..entities {
            let b = match scenario {
                Scenario::Cubes | Scenario::Burst => {
                    let side = (2.0 * half_extent_m / CUBE_SPACING_M) as usize;
                    let (gx, gz) = (i % side.max(1), i / side.max(1));
                    let yaw = rng.range_f64(0.0, std::f64::consts::TAU);
                    Body {
                        p: [
                            gx as f64 * CUBE_SPACING_M - half_extent_m + 1.0,
                            CUBE_HALF_M,
                            gz as f64 * CUBE_SPACING_M - half_extent_m + 1.0,
                        ],
                        v: [0.0; 3],
                        q: [0.0, (yaw / 2.0).sin(), 0.0, (yaw / 2.0).cos()],
                        w: [0.0; 3],
                        awake: false,
                        heading: 0.0,
                        target_heading: 0.0,
                        speed: 0.0,
                        next_turn_s: 0.0,
                    }
                }
                Scenario::Crowd => {
                    let h = rng.range_f64(-std::f64::consts::PI, std::f64::consts::PI);
                    Body {
                        p: [
                            rng.range_f64(-half_extent_m, half_extent_m),
                            0.0,
                            rng.range_f64(-half_extent_m, half_extent_m),
                        ],
                        v: [0.0; 3],
                        q: yaw_quat(h),
                        w: [0.0; 3],
                        awake: true,
                        heading: h,
                        target_heading: h,
                        speed: CROWD_WALK_M_S,
                        next_turn_s: rng.range_f64(0.5, 4.0),
                    }
                }
            };
            bodies.push(b);
        }
        MotionGen {
            scenario,
            rng,
            bodies,
            time_s: 0.0,
            next_impulse_s: 0.5,
            half_extent_m,
        }
    }

    /// Bodies currently moving.
    pub fn moving(&self) -> usize {
        self.bodies.iter().filter(|b| b.awake).count()
    }

    /// Advances the motion by `dt_s` seconds.
    pub fn step(&mut self, dt_s: f64) {
        self.time_s += dt_s;
        match self.scenario {
            Scenario::Cubes => self.step_cubes(dt_s),
            Scenario::Burst => self.step_burst(dt_s),
            Scenario::Crowd => self.step_crowd(dt_s),
        }
    }

    /// Whether body `i` (entity id `i + 1`) is moving.
    pub fn is_moving(&self, i: usize) -> bool {
        self.bodies.get(i).is_some_and(|b| b.awake)
    }

    /// The bursty scene: at each burst the bodies nearest a random point are thrown up and
    /// spun, all in the same tick; between bursts the physics of [`Self::step_cubes`] brings
    /// them back to rest.
    fn step_burst(&mut self, dt: f64) {
        if self.time_s >= self.next_impulse_s && !self.bodies.is_empty() {
            self.next_impulse_s += BURST_INTERVAL_S;
            let c = self.rng.below(self.bodies.len() as u64) as usize;
            let centre = self.bodies[c].p;
            let dist = |b: &Body| {
                let (dx, dz) = (b.p[0] - centre[0], b.p[2] - centre[2]);
                dx * dx + dz * dz
            };
            let mut order: Vec<usize> = (0..self.bodies.len()).collect();
            order.sort_by(|&a, &b| dist(&self.bodies[a]).total_cmp(&dist(&self.bodies[b])));
            let n = ((self.bodies.len() as f64 * BURST_FRACTION).ceil() as usize).max(1);
            for &i in order.iter().take(n) {
                let b = &mut self.bodies[i];
                let (dx, dz) = (b.p[0] - centre[0], b.p[2] - centre[2]);
                let d = (dx * dx + dz * dz).sqrt();
                let (ux, uz) = if d > 1e-6 {
                    (dx / d, dz / d)
                } else {
                    (1.0, 0.0)
                };
                let push = self.rng.range_f64(1.0, 3.0);
                b.v[0] += ux * push;
                b.v[2] += uz * push;
                b.v[1] += self.rng.range_f64(3.0, 6.0);
                for a in 0..3 {
                    b.w[a] += self.rng.range_f64(-6.0, 6.0);
                }
                b.awake = true;
            }
        }
        self.integrate_bodies(dt);
    }

    fn step_cubes(&mut self, dt: f64) {
        if self.time_s >= self.next_impulse_s && !self.bodies.is_empty() {
            self.next_impulse_s += CUBES_IMPULSE_INTERVAL_S;
            let c = self.rng.below(self.bodies.len() as u64) as usize;
            let centre = self.bodies[c].p;
            for b in &mut self.bodies {
                let dx = b.p[0] - centre[0];
                let dz = b.p[2] - centre[2];
                let d = (dx * dx + dz * dz).sqrt();
                if d > CUBES_IMPULSE_RADIUS_M {
                    continue;
                }
                let (ux, uz) = if d > 1e-6 {
                    (dx / d, dz / d)
                } else {
                    (1.0, 0.0)
                };
                let push = self.rng.range_f64(1.5, 4.0);
                b.v[0] += ux * push;
                b.v[2] += uz * push;
                b.v[1] += self.rng.range_f64(3.0, 6.0);
                for a in 0..3 {
                    b.w[a] += self.rng.range_f64(-6.0, 6.0);
                }
                b.awake = true;
            }
        }
        self.integrate_bodies(dt);
    }

    /// Moves the awake bodies: gravity, tumbling, walls, bounce, friction, sleep.
    fn integrate_bodies(&mut self, dt: f64) {
        let lim = self.half_extent_m;
        for b in &mut self.bodies {
            if !b.awake {
                continue;
            }
            b.v[1] -= GRAVITY * dt;
            for a in 0..3 {
                b.p[a] += b.v[a] * dt;
            }
            b.q = integrate(b.q, b.w, dt);
            for a in [0, 2] {
                if b.p[a].abs() > lim {
                    b.p[a] = b.p[a].clamp(-lim, lim);
                    b.v[a] = -b.v[a] * 0.5;
                }
            }
            if b.p[1] <= CUBE_HALF_M {
                b.p[1] = CUBE_HALF_M;
                if b.v[1] < 0.0 {
                    b.v[1] = -b.v[1] * CUBES_RESTITUTION;
                    if b.v[1] < 0.5 {
                        b.v[1] = 0.0;
                    }
                }
                let f = (-CUBES_FRICTION_PER_S * dt).exp();
                b.v[0] *= f;
                b.v[2] *= f;
                let fw = (-CUBES_ANGULAR_DAMPING_PER_S * dt).exp();
                for a in 0..3 {
                    b.w[a] *= fw;
                }
                let speed = norm3(b.v);
                if b.v[1] == 0.0 && speed < CUBES_SLEEP_SPEED && norm3(b.w) < CUBES_SLEEP_SPEED {
                    b.v = [0.0; 3];
                    b.w = [0.0; 3];
                    b.awake = false;
                }
            }
        }
    }

    fn step_crowd(&mut self, dt: f64) {
        let lim = self.half_extent_m;
        let t = self.time_s;
        for b in &mut self.bodies {
            if t >= b.next_turn_s {
                b.next_turn_s = t + self.rng.range_f64(1.0, 4.0);
                b.target_heading = b.heading + self.rng.range_f64(-2.0, 2.0);
                b.speed = if self.rng.chance(0.3) {
                    CROWD_RUN_M_S
                } else {
                    CROWD_WALK_M_S
                };
            }
            // Steer back towards the middle near the edge.
            if b.p[0].abs() > lim * 0.9 || b.p[2].abs() > lim * 0.9 {
                b.target_heading = (-b.p[0]).atan2(-b.p[2]);
            }
            let mut diff = b.target_heading - b.heading;
            diff = (diff + std::f64::consts::PI).rem_euclid(std::f64::consts::TAU)
                - std::f64::consts::PI;
            let max = CROWD_TURN_RAD_S * dt;
            b.heading += diff.clamp(-max, max);
            b.p[0] += b.heading.sin() * b.speed * dt;
            b.p[2] += b.heading.cos() * b.speed * dt;
            if b.p[1] <= 0.0 && self.rng.chance(CROWD_JUMP_PER_S * dt) {
                b.v[1] = CROWD_JUMP_M_S;
            }
            b.v[1] -= GRAVITY * dt;
            b.p[1] += b.v[1] * dt;
            if b.p[1] <= 0.0 {
                b.p[1] = 0.0;
                b.v[1] = 0.0;
            }
            b.q = yaw_quat(b.heading);
        }
    }

    /// The current transforms, entity ids 1..=N in order.
    pub fn transforms(&self) -> impl Iterator<Item = (EntityId, Transform)> + '_ {
        self.bodies.iter().enumerate().map(|(i, b)| {
            (
                EntityId(i as u32 + 1),
                Transform {
                    position: b.p.map(|v| v as f32).into(),
                    rotation: Quat::from_array(b.q.map(|v| v as f32)),
                    scale: None,
                },
            )
        })
    }
}

fn yaw_quat(h: f64) -> [f64; 4] {
    [0.0, (h / 2.0).sin(), 0.0, (h / 2.0).cos()]
}

fn norm3(v: [f64; 3]) -> f64 {
    (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
}

/// q' = q + ½ (0, ω) ⊗ q dt, normalized.
fn integrate(q: [f64; 4], w: [f64; 3], dt: f64) -> [f64; 4] {
    let [x, y, z, s] = q;
    let [wx, wy, wz] = w;
    let h = 0.5 * dt;
    let d = [
        h * (wx * s + wy * z - wz * y),
        h * (wy * s + wz * x - wx * z),
        h * (wz * s + wx * y - wy * x),
        h * (-wx * x - wy * y - wz * z),
    ];
    let r = [x + d[0], y + d[1], z + d[2], s + d[3]];
    let n = (r.iter().map(|c| c * c).sum::<f64>()).sqrt();
    r.map(|c| c / n)
}

/// Bytes the reference engine spends on one transform update: a msgpack map
/// `{id, position: [f64; 3], quaternion: [f64; 4]}` (floats always as 9-byte float64).
/// Computed by hand (it is arithmetic) so the runner needs no msgpack dependency.
pub fn baseline_msgpack_bytes(id: EntityId, _t: &Transform) -> usize {
    let uint = |v: u32| match v {
        0..=127 => 1,
        128..=255 => 2,
        256..=65_535 => 3,
        _ => 5,
    };
    let key = |s: &str| 1 + s.len(); // fixstr
    1 // fixmap of 3
        + key("id") + uint(id.0)
        + key("position") + 1 + 3 * 9
        + key("quaternion") + 1 + 4 * 9
}

/// Parameters of one [`bench_run`].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct BenchParams {
    /// Motion to generate.
    pub scenario: Scenario,
    /// Entities in the world.
    pub entities: usize,
    /// Clients, each with its own replicator, receiver and link.
    pub clients: usize,
    /// Server tick rate, Hz (clients send one ack datagram per tick too).
    pub hz: u16,
    /// Simulated seconds.
    pub seconds: f64,
    /// Probability each datagram (either direction) is lost.
    pub loss: f64,
    /// Round-trip time, milliseconds (half each way).
    pub rtt_ms: u64,
    /// Extra uniform random delay per datagram, 0..=this, milliseconds (reorders).
    pub jitter_ms: u64,
    /// Seed of the motion and the link.
    pub seed: u64,
    /// Bottleneck capacity of the server → client direction, kbit/s on the wire, shared by
    /// every client; 0 for none. Its queue holds [`BENCH_QUEUE_MS`] at that rate.
    pub link_kbps: u64,
    /// A change of that capacity during the run: (simulated second, new kbit/s).
    pub link_change: Option<(f64, u64)>,
    /// The budget's ceiling per client, kbit/s; 0 for the configuration's default
    /// ([`super::config::BUDGET_BITS_PER_S_DEFAULT`]).
    pub budget_kbps: u32,
}

/// The simulated bottleneck's queue, milliseconds at its capacity: a router's usual 100–250 ms
/// of buffer, at the short end.
pub const BENCH_QUEUE_MS: u64 = 200;

impl BenchParams {
    /// The cube target run: 901 cubes, 60 Hz, 1 client, 100 ms RTT, no loss, 60 s.
    pub fn cubes() -> BenchParams {
        BenchParams {
            scenario: Scenario::Cubes,
            entities: 901,
            clients: 1,
            hz: 60,
            seconds: 60.0,
            loss: 0.0,
            rtt_ms: 100,
            jitter_ms: 0,
            seed: 1,
            link_kbps: 0,
            link_change: None,
            budget_kbps: 0,
        }
    }

    /// The bursty scene's target run: 900 bodies, 60 Hz, 1 client, 100 ms RTT, no loss, 60 s.
    pub fn burst() -> BenchParams {
        BenchParams {
            scenario: Scenario::Burst,
            entities: 900,
            ..BenchParams::cubes()
        }
    }

    /// The crowd target run: 100 players, 30 Hz, 100 clients would be the full world;
    /// one client's view is measured (all clients see the same crowd).
    pub fn crowd() -> BenchParams {
        BenchParams {
            scenario: Scenario::Crowd,
            entities: 100,
            clients: 1,
            hz: 30,
            seconds: 60.0,
            loss: 0.0,
            rtt_ms: 100,
            jitter_ms: 0,
            seed: 1,
            link_kbps: 0,
            link_change: None,
            budget_kbps: 0,
        }
    }
}

/// What [`bench_run`] measured (serializable for the load tool's `--json`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TransformReport {
    /// The parameters.
    pub params: BenchParams,
    /// Mean server → client transform bandwidth per client, kbit/s (datagram payloads).
    pub kbps_per_client: f64,
    /// The same on the wire: payloads plus [`PACKET_OVERHEAD_BYTES`] per datagram, kbit/s.
    pub wire_kbps_per_client: f64,
    /// The transport's per-datagram overhead counted in the wire figures, bytes.
    pub overhead_bytes_per_datagram: usize,
    /// Ticks that sent more than one datagram to a client (summed over clients).
    pub multi_datagram_ticks: u64,
    /// Position error of moving bodies, 99th percentile, metres: each tick, per client, every
    /// body moving at the client's newest tick, the client's latest value against the truth at
    /// that tick (a value not updated since counts with its staleness).
    pub moving_error_p99_m: f64,
    /// Largest such error, metres.
    pub moving_error_max_m: f64,
    /// The same 99th percentile over moving bodies within [`NEAR_RADIUS_M`] of the client's
    /// viewer (its own surroundings, which priority serves first), metres.
    pub moving_error_near_p99_m: f64,
    /// The 99th percentile over moving bodies farther than [`NEAR_RADIUS_M`], metres.
    pub moving_error_far_p99_m: f64,
    /// Error samples (body × tick × client) counted near and far.
    pub moving_samples_near_far: (u64, u64),
    /// Largest rotation error of a moving body measured the same way, degrees.
    pub moving_rotation_error_max_deg: f64,
    /// Moving bodies a client had never received when measured (counted, not in the errors).
    pub moving_unknown: u64,
    /// Longest time, seconds, from a moment the world came to rest (no body moving) until
    /// every client held every entity's final value (bursty and cube scenes); 0 if it never
    /// came to rest. A rest the run ended in before convergence counts up to the end.
    pub rest_recovery_s_max: f64,
    /// Smallest budget rate any client's replicator used, kbit/s.
    pub budget_kbps_min: f64,
    /// Times a budget went down on congestion, over all clients.
    pub budget_decreases: u64,
    /// Datagrams the simulated bottleneck's queue dropped (server → client).
    pub link_queue_drops: u64,
    /// Mean bytes per entity update (all datagram bytes / updates of changed entities).
    pub bytes_per_entity_update: f64,
    /// Entity updates sent per second per client.
    pub updates_per_s: f64,
    /// Mean bytes the reference engine's msgpack encoding spends on the same updates.
    pub baseline_bytes_per_entity_update: f64,
    /// `baseline_bytes_per_entity_update / bytes_per_entity_update`.
    pub ratio_vs_baseline: f64,
    /// Mean client → server bandwidth per client (acks only here), kbit/s.
    pub upstream_kbps_per_client: f64,
    /// Datagrams per second per client.
    pub datagrams_per_s: f64,
    /// Fraction of updates sent as absolute values (no usable baseline).
    pub absolute_fraction: f64,
    /// Mean number of moving entities per tick.
    pub moving_mean: f64,
    /// Largest distance, metres, between a client's latest view and the server's quantized
    /// state at the end, over entities the client has (a convergence sanity check).
    pub final_error_m_max: f64,
    /// Records receivers could not decode (should be 0).
    pub undecodable: usize,
}

#[derive(PartialEq, Eq)]
struct InFlight {
    at_us: u64,
    order: u64,
    client: usize,
    bytes: Vec<u8>,
}

impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // BinaryHeap is a max-heap: invert for earliest first.
        (o.at_us, o.order).cmp(&(self.at_us, self.order))
    }
}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// One direction shared by every client: the simulated network's [`Link`] deciding each
/// datagram's fate from this direction's own generator, and the datagrams in flight.
struct Path {
    link: Link,
    rng: Rng,
    queue: BinaryHeap<InFlight>,
    order: u64,
}

impl Path {
    /// A direction with one-way latency `rtt_ms / 2`, uniform jitter up to `jitter_ms`,
    /// independent loss `loss`, and the runner's datagram size as its MTU.
    fn new(p: &BenchParams, kbps: u64, rng: Rng) -> Path {
        Path {
            link: Link::new(bench_link(p, kbps)),
            rng,
            queue: BinaryHeap::new(),
            order: 0,
        }
    }

    fn send(&mut self, now_us: u64, client: usize, bytes: Vec<u8>) {
        let arrivals = self
            .link
            .datagram_arrivals(bytes.len(), Time(now_us), &mut self.rng);
        let copies = arrivals.len();
        let mut bytes = Some(bytes);
        for (i, at) in arrivals.into_iter().enumerate() {
            let Some(copy) = (if i + 1 == copies {
                bytes.take()
            } else {
                bytes.clone()
            }) else {
                break;
            };
            self.order += 1;
            self.queue.push(InFlight {
                at_us: at.as_micros(),
                order: self.order,
                client,
                bytes: copy,
            });
        }
    }

    fn poll(&mut self, now_us: u64) -> Option<InFlight> {
        if self.queue.peek().is_some_and(|f| f.at_us <= now_us) {
            self.queue.pop()
        } else {
            None
        }
    }
}

/// The link of one direction: one-way latency `rtt_ms / 2`, uniform jitter up to `jitter_ms`,
/// independent loss `loss`, the runner's datagram size as its MTU, and a bottleneck of `kbps`
/// (0: none) with [`BENCH_QUEUE_MS`] of queue.
fn bench_link(p: &BenchParams, kbps: u64) -> LinkConfig {
    let rate = kbps * 1000 / 8;
    LinkConfig {
        latency: Duration::from_micros(p.rtt_ms * 500),
        jitter: Duration::from_millis(p.jitter_ms),
        loss: p.loss,
        mtu: BENCH_DATAGRAM_BYTES,
        rate_bytes_per_s: rate,
        queue_bytes_max: (rate * BENCH_QUEUE_MS / 1000) as usize,
        ..LinkConfig::default()
    }
}

/// One body's truth at one tick: unquantized position and rotation, and whether it moves.
type TruthSample = ([f32; 3], [f32; 4], bool);

/// Ticks of truth the runner keeps to measure errors at a client's newest tick: 2 s at 60 Hz,
/// beyond any delay the runs use.
const TRUTH_TICKS: usize = 128;

/// Largest datagram the runner passes as `max_datagram_size`: quinn's size at connect.
const BENCH_DATAGRAM_BYTES: usize = 1162;

/// Distance from a client's viewer within which a moving body counts as near in the report's
/// error split, metres: a player's own surroundings (a room, a few strides).
pub const NEAR_RADIUS_M: f32 = 10.0;

/// The 99th percentile of `v` (0 if empty).
fn p99(v: &mut [f32]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let k = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1;
    let (_, x, _) = v.select_nth_unstable_by(k, f32::total_cmp);
    *x as f64
}

/// Runs a scenario in process and measures it. Deterministic for given parameters.
pub fn bench_run(p: &BenchParams) -> TransformReport {
    let hz =
        p.hz.clamp(crate::time::TICK_HZ_MIN, crate::time::TICK_HZ_MAX);
    let mut config = TransformConfig {
        tick_hz: hz,
        ..TransformConfig::default()
    };
    if p.budget_kbps > 0 {
        config.budget_bits_per_s = p
            .budget_kbps
            .saturating_mul(1000)
            .max(super::config::BUDGET_BITS_PER_S_MIN);
    }
    let qz = Quantizer::new(&config).unwrap_or_else(|_| unreachable_config());
    let mut gen = MotionGen::new(p.scenario, p.entities, p.seed);
    let mut root = Rng::new(p.seed ^ 0x5EED_11AC);
    let mut down = Path::new(p, p.link_kbps, root.fork());
    let mut up = Path::new(p, 0, root.fork());
    // The truth of the last ticks (unquantized position, rotation, moving) for the errors.
    let mut truth: Vec<Vec<TruthSample>> = vec![Vec::new(); TRUTH_TICKS];
    let mut errors: Vec<f32> = Vec::new();
    let (mut errors_near, mut errors_far): (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
    let (mut rot_err_max, mut moving_unknown, mut multi_ticks) = (0.0f64, 0u64, 0u64);
    let mut budget_min = u32::MAX;
    let clients = p.clients.max(1);
    let mut servers: Vec<ClientReplicator> = (0..clients)
        .map(|_| {
            ClientReplicator::new(config.clone(), None).unwrap_or_else(|_| unreachable_config())
        })
        .collect();
    let mut receivers: Vec<ReplicaReceiver> = (0..clients)
        .map(|_| ReplicaReceiver::new(&config).unwrap_or_else(|_| unreachable_config()))
        .collect();
    let mut up_seq = vec![Seq(0); clients];
    if p.scenario == Scenario::Crowd {
        for (i, s) in servers.iter_mut().enumerate() {
            if i < p.entities {
                s.set_own_entity(Some(EntityId(i as u32 + 1)));
            }
        }
    }
    let period_us = 1_000_000 / hz as u64;
    let ticks = (p.seconds.max(0.0) * hz as f64).round() as u64;
    let dt = 1.0 / hz as f64;
    let mut samples: Vec<EntitySample> = Vec::with_capacity(p.entities);
    let mut out = Vec::new();
    let mut up_buf = Vec::new();
    let (mut down_bytes, mut up_bytes, mut updates, mut absolute, mut datagrams) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut baseline_bytes = 0u64;
    let mut moving_sum = 0u64;
    let mut undecodable = 0usize;
    let mut changed = false;
    // Since when the world is at rest, and whether every client holds every final value yet.
    let mut rest: Option<(u64, bool)> = None;
    let mut recovery_ticks_max = 0u64;
    for tick in 0..ticks {
        let now_us = tick * period_us;
        let now = Time(now_us);
        if let Some((at_s, kbps)) = p.link_change {
            if !changed && now_us as f64 >= at_s * 1e6 {
                changed = true;
                down.link.set_config(bench_link(p, kbps));
            }
        }
        while let Some(f) = up.poll(now_us) {
            if let Ok(d) = decode_client_datagram(&qz, &f.bytes) {
                servers[f.client].handle_ack(&d.ack, now);
            }
        }
        gen.step(dt);
        moving_sum += gen.moving() as u64;
        samples.clear();
        let t_now = &mut truth[tick as usize % TRUTH_TICKS];
        t_now.clear();
        for (i, (id, t)) in gen.transforms().enumerate() {
            samples.push(EntitySample::new(id, &t, &qz));
            t_now.push((t.position.into(), t.rotation.into(), gen.is_moving(i)));
        }
        let signals = down.link.path_signals(now);
        for (c, server) in servers.iter_mut().enumerate() {
            let viewer = match p.scenario {
                Scenario::Crowd => samples.get(c).map(|s| s.position),
                Scenario::Cubes | Scenario::Burst => Some(Vec3::new(0.0, 1.7, 0.0)),
            };
            server.handle_path_signals(signals);
            out.clear();
            let input = TickInput {
                tick: Tick(tick),
                now,
                viewer,
                entities: &samples,
                max_datagram_size: BENCH_DATAGRAM_BYTES,
                own_blob: None,
            };
            let Ok(s) = server.write_tick(&input, &mut out) else {
                continue;
            };
            budget_min = budget_min.min(s.budget_bits_per_s);
            multi_ticks += (s.datagrams > 1) as u64;
            updates += s.updates as u64;
            absolute += s.absolute as u64;
            datagrams += s.datagrams as u64;
            down_bytes += s.bytes as u64;
            if s.updates > 0 {
                // Every sample has the same msgpack size bar its id's width; charge each update
                // the size of a mid-range id's.
                let mid = samples.len() / 2;
                let (id, t) = (samples[mid].id, qz.dequantize(&samples[mid].q));
                baseline_bytes += (s.updates * baseline_msgpack_bytes(id, &t)) as u64;
            }
            for d in out.drain(..) {
                down.send(now_us, c, d);
            }
        }
        while let Some(f) = down.poll(now_us + period_us - 1) {
            if let Ok(r) = receivers[f.client].handle_datagram(&f.bytes, now) {
                undecodable += r.undecodable;
            }
        }
        for (c, r) in receivers.iter().enumerate() {
            // The client's view against the truth at its newest tick, staleness included.
            let Some(newest) = r.newest_tick() else {
                continue;
            };
            if tick.saturating_sub(newest.0) >= TRUTH_TICKS as u64 {
                continue;
            }
            let own = servers[c].own_entity_id();
            let viewer = match p.scenario {
                Scenario::Crowd => samples.get(c).map(|s| qz.dequantize(&s.q).position),
                Scenario::Cubes | Scenario::Burst => Some(Vec3::new(0.0, 1.7, 0.0)),
            };
            for (i, &(pos, rot, moving)) in
                truth[newest.0 as usize % TRUTH_TICKS].iter().enumerate()
            {
                let id = EntityId(i as u32 + 1);
                if !moving || Some(id) == own {
                    continue;
                }
                let Some((_, q)) = r.latest_quantized(id) else {
                    moving_unknown += 1;
                    continue;
                };
                let got = qz.dequantize(&q);
                let d = (0..3)
                    .map(|a| (got.position[a] as f64 - pos[a] as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                errors.push(d as f32);
                let near = viewer.is_some_and(|v| v.distance(Vec3::from(pos)) <= NEAR_RADIUS_M);
                if near {
                    errors_near.push(d as f32);
                } else {
                    errors_far.push(d as f32);
                }
                let dot = (0..4)
                    .map(|a| got.rotation.to_array()[a] as f64 * rot[a] as f64)
                    .sum::<f64>()
                    .abs()
                    .min(1.0);
                rot_err_max = rot_err_max.max(2.0 * dot.acos().to_degrees());
            }
        }
        if gen.moving() > 0 || p.scenario == Scenario::Crowd {
            rest = None;
        } else {
            let (since, done) = rest.get_or_insert((tick, false));
            if !*done {
                *done = receivers.iter().enumerate().all(|(c, r)| {
                    samples.iter().all(|s| {
                        Some(s.id) == servers[c].own_entity_id()
                            || !servers[c].in_interest(s.id)
                            || r.latest_quantized(s.id).map(|(_, q)| q) == Some(s.q)
                    })
                });
                recovery_ticks_max = recovery_ticks_max.max(tick - *since);
            }
        }
        for (c, r) in receivers.iter().enumerate() {
            up_seq[c] = up_seq[c].next();
            if encode_client_datagram(&qz, &r.ack_header(), up_seq[c], &[], &[], &mut up_buf)
                .is_ok()
            {
                up_bytes += up_buf.len() as u64;
                up.send(now_us, c, up_buf.clone());
            }
        }
    }
    let mut err_max = 0.0f64;
    for (c, r) in receivers.iter().enumerate() {
        for s in &samples {
            if Some(s.id) == servers[c].own_entity_id() {
                continue;
            }
            if let Some((_, q)) = r.latest_quantized(s.id) {
                let a = qz.dequantize_position(q.pos);
                let b = qz.dequantize_position(s.q.pos);
                let d = (0..3)
                    .map(|i| (a[i] as f64 - b[i] as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                err_max = err_max.max(d);
            }
        }
    }
    let secs = (ticks.max(1)) as f64 / hz as f64;
    let per_client = clients as f64;
    let bpu = down_bytes as f64 / (updates.max(1)) as f64;
    let base = baseline_bytes as f64 / (updates.max(1)) as f64;
    let (err_p99, err_max_moving) = if errors.is_empty() {
        (0.0, 0.0)
    } else {
        let k = ((errors.len() as f64 * 0.99).ceil() as usize).clamp(1, errors.len()) - 1;
        let (_, p99, _) = errors.select_nth_unstable_by(k, f32::total_cmp);
        let p99 = *p99 as f64;
        (p99, errors.iter().copied().fold(0.0f32, f32::max) as f64)
    };
    let wire_bytes = down_bytes + datagrams * PACKET_OVERHEAD_BYTES as u64;
    TransformReport {
        params: *p,
        kbps_per_client: down_bytes as f64 * 8.0 / 1000.0 / secs / per_client,
        wire_kbps_per_client: wire_bytes as f64 * 8.0 / 1000.0 / secs / per_client,
        overhead_bytes_per_datagram: PACKET_OVERHEAD_BYTES,
        multi_datagram_ticks: multi_ticks,
        moving_error_p99_m: err_p99,
        moving_error_max_m: err_max_moving,
        moving_samples_near_far: (errors_near.len() as u64, errors_far.len() as u64),
        moving_error_near_p99_m: p99(&mut errors_near),
        moving_error_far_p99_m: p99(&mut errors_far),
        moving_rotation_error_max_deg: rot_err_max,
        moving_unknown,
        rest_recovery_s_max: recovery_ticks_max as f64 / hz as f64,
        budget_kbps_min: if budget_min == u32::MAX {
            0.0
        } else {
            budget_min as f64 / 1000.0
        },
        budget_decreases: servers.iter().map(|s| s.path_budget().decreases()).sum(),
        link_queue_drops: down.link.queue_drops(),
        bytes_per_entity_update: bpu,
        updates_per_s: updates as f64 / secs / per_client,
        baseline_bytes_per_entity_update: base,
        ratio_vs_baseline: base / bpu.max(1e-9),
        upstream_kbps_per_client: up_bytes as f64 * 8.0 / 1000.0 / secs / per_client,
        datagrams_per_s: datagrams as f64 / secs / per_client,
        absolute_fraction: absolute as f64 / (updates.max(1)) as f64,
        moving_mean: moving_sum as f64 / ticks.max(1) as f64,
        final_error_m_max: err_max,
        undecodable,
    }
}

#[cold]
fn unreachable_config() -> ! {
    panic!("the default transform config with a clamped tick rate is valid")
}

/// A client core joined to a world holding `crowd`'s entities, by the real handshake with a
/// [`ServerCore`](crate::server::ServerCore) over the simulated network
/// ([`crate::sim::joined_client`]), as the load tool's clients join a relay: the start of
/// benchmarks and tests of the client's receive path. The server runs at `config`'s tick rate
/// and sends `config` in its `Welcome`. The crowd's entities are apps at rest (a restarted
/// server drops players, so the world cannot hold players without sessions); the client's own
/// player gets the next free id, after the crowd's, so nothing in the crowd moves it.
pub fn joined_client(config: &TransformConfig, crowd: &[EntitySample]) -> ClientCore {
    let mut world = World::default();
    for s in crowd {
        world.entities.insert(
            s.id,
            Entity {
                id: s.id,
                kind: EntityKind::App,
                owner: None,
                user: None,
                blueprint: None,
                transform: Transform::default(),
                props: Vec::new(),
            },
        );
    }
    let server = ServerConfig {
        tick_hz: config.tick_hz,
        transform: config.clone(),
        ..ServerConfig::default()
    };
    let client = ClientConfig {
        name: "scenario".into(),
        token: None,
    };
    crate::sim::joined_client(server, world, client)
}

/// Distance between neighbouring players of a [`CoreCrowd`], metres.
const CORE_CROWD_SPACING_M: f32 = 10.0;
/// Ticks between a [`CoreCrowd`] datagram's sending and its ack's arrival (≈ 66 ms round trip
/// at 30 Hz).
const CORE_CROWD_ACK_DELAY_TICKS: usize = 2;

/// One simulated client of a [`CoreCrowd`].
#[derive(Debug)]
struct CrowdClient {
    conn: crate::server::ConnId,
    player: EntityId,
    /// The player's lattice spot.
    home: Vec3,
    acks: super::AckTracker,
    seq: Seq,
}

/// A [`ServerCore`](crate::server::ServerCore) with many joined clients, each within interest
/// of about 100 moving players, and the clients' acks coming back as real clients' would (one
/// datagram per client per tick through `handle_datagram`, acknowledging what arrived
/// [`CORE_CROWD_ACK_DELAY_TICKS`] ticks before): the relay core's per-client tick work,
/// deterministic, for benchmarks and instruction counts (`proto/examples/server_ticks.rs`,
/// `benches/server_core.rs`).
///
/// The players stand on a square lattice 10 m apart (100 m² each), each walking a 2 m circle
/// (every player moves every tick); the interest radius is 56 m (≈ 100 players in it, fewer at
/// the world's edge). Movement is client-authoritative and set through
/// [`host_set_transform`](crate::server::ServerCore::host_set_transform), so no movement model
/// runs.
#[derive(Debug)]
pub struct CoreCrowd {
    /// The server core.
    pub core: crate::server::ServerCore,
    clients: Vec<CrowdClient>,
    /// Per tick still to be acknowledged: (client index, sequence) of each datagram sent.
    pending: std::collections::VecDeque<Vec<(usize, u16)>>,
    tick_us: u64,
    tick: u64,
    digest: u64,
    updates: usize,
    scratch: Vec<u8>,
}

impl CoreCrowd {
    /// A core with `clients` joined clients (connections 1..=clients), no tick run yet.
    pub fn new(clients: usize) -> CoreCrowd {
        use crate::server::{ConnId, InsecureTokens, LimitsConfig, ServerCore, TransportKind};
        use crate::wire::codec;
        use crate::wire::msg::{ClientMsg, PROTOCOL_VERSION};
        let config = ServerConfig {
            transform: TransformConfig {
                interest_radius_m: 56.0,
                interest_hysteresis_m: 4.0,
                ..TransformConfig::default()
            },
            limits: LimitsConfig::unlimited_rates(),
            ..ServerConfig::default()
        };
        let tick_us = 1_000_000 / u64::from(config.tick_hz);
        let mut world = World::default();
        world.settings.movement = crate::types::MovementAuthority::Client;
        let mut core = ServerCore::new(config, world, Box::new(InsecureTokens), Time::ZERO);
        let side = (clients as f64).sqrt().ceil() as usize;
        let mut out = Vec::with_capacity(clients);
        for i in 0..clients {
            let conn = ConnId(i as u64 + 1);
            core.handle_connect(conn, TransportKind::Sim, Time::ZERO);
            let hello = ClientMsg::Hello {
                protocol_version: PROTOCOL_VERSION,
                name: format!("p{i}"),
                token: None,
            };
            core.handle_frame(conn, hello.channel(), &codec::encode(&hello), Time::ZERO);
            let player = core.session_of(conn).map_or(EntityId(0), |s| s.player);
            let home = Vec3::new(
                (i % side) as f32 * CORE_CROWD_SPACING_M - 400.0,
                1.0,
                (i / side) as f32 * CORE_CROWD_SPACING_M - 400.0,
            );
            out.push(CrowdClient {
                conn,
                player,
                home,
                acks: super::AckTracker::new(),
                seq: Seq(0),
            });
        }
        while core.poll_transmit().is_some() {}
        while core.poll_event().is_some() {}
        CoreCrowd {
            core,
            clients: out,
            pending: std::collections::VecDeque::new(),
            tick_us,
            tick: 0,
            digest: 0xcbf2_9ce4_8422_2325,
            updates: 0,
            scratch: Vec::new(),
        }
    }

    /// Clients joined.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// FNV-1a of every transform datagram's bytes so far, in order: it changes only if what
    /// goes on the wire does.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Entity updates written since the last [`CoreCrowd::reset_updates`], summed over clients.
    pub fn updates(&self) -> usize {
        self.updates
    }

    /// Restarts the count of [`CoreCrowd::updates`].
    pub fn reset_updates(&mut self) {
        self.updates = 0;
    }

    /// One tick with the core's calls made directly.
    pub fn tick(&mut self) {
        self.tick_via(
            |core, conn, data, now| core.handle_datagram(conn, data, now),
            |core, now| core.handle_timeout(now),
        );
    }

    /// One tick: every player steps along its circle, each client's datagram arrives (through
    /// `datagram`, once acks are due), the tick runs (through `timeout`) and its datagrams are
    /// collected for the acks to come. A profiler or bench passes wrappers of the core's calls
    /// to measure them alone.
    pub fn tick_via(
        &mut self,
        mut datagram: impl FnMut(&mut crate::server::ServerCore, crate::server::ConnId, &[u8], Time),
        mut timeout: impl FnMut(&mut crate::server::ServerCore, Time),
    ) {
        use crate::server::Transmit;
        let now = Time(self.tick * self.tick_us);
        for (i, c) in self.clients.iter().enumerate() {
            // Circles of 2 m at a few speeds (≈ 1.3–2.5 m/s), each at its own phase.
            let phase = i as f32 * 0.7 + self.tick as f32 * (0.02 + (i % 5) as f32 * 0.01);
            let t = Transform {
                position: c.home + Vec3::new(2.0 * phase.cos(), 0.0, 2.0 * phase.sin()),
                rotation: Quat::from_rotation_y(phase),
                scale: None,
            };
            // Only a player gone (never, here) refuses.
            let _ = self.core.host_set_transform(c.player, t);
        }
        if self.pending.len() >= CORE_CROWD_ACK_DELAY_TICKS {
            for (ci, seq) in self.pending.pop_front().unwrap_or_default() {
                self.clients[ci].acks.record(Seq(seq));
            }
            for c in &mut self.clients {
                c.seq = c.seq.next();
                let encoded = encode_client_datagram(
                    self.core.quantizer(),
                    &c.acks.header(),
                    c.seq,
                    &[],
                    &[],
                    &mut self.scratch,
                );
                if encoded.is_ok() {
                    datagram(&mut self.core, c.conn, &self.scratch, now);
                }
            }
        }
        timeout(&mut self.core, now);
        let mut sent = Vec::new();
        while let Some(t) = self.core.poll_transmit() {
            if let Transmit::Datagram { conn, data, .. } = t {
                for b in &data {
                    self.digest = (self.digest ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
                }
                sent.push((conn.0 as usize - 1, u16::from_le_bytes([data[1], data[2]])));
            }
        }
        while self.core.poll_event().is_some() {}
        while self.core.poll_effect().is_some() {}
        self.updates += self.core.last_tick_stats().updates;
        self.pending.push_back(sent);
        self.tick += 1;
    }
}
