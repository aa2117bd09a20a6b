//! A self-contained crowd simulation measuring prediction and interpolation quality, for the load
//! tool (`neonet-load sim`) and this module's scenario tests.
//!
//! It runs one server and `players` clients over the simulated network's link model
//! ([`crate::sim::Link`], each direction of each client with its own generator: independent
//! loss, one-way delay `rtt/2 − jitter/2 + uniform(0, jitter)`, scheduled partitions) in 1 ms
//! steps of virtual time. Every client is a bot
//! that changes direction every 0.5–2 s, runs sometimes and jumps now and then; it predicts with
//! [`Predictor`](super::Predictor), syncs its clock with [`ClockSync`](super::ClockSync) and [`ClientTickClock`](super::ClientTickClock), and sends its
//! unacknowledged inputs every tick. The server buffers them per player ([`InputBuffer`](super::InputBuffer)),
//! simulates every tick, and sends each client its own state blob and a snapshot of everyone.
//! Up to [`OBSERVERS_MAX`] clients also interpolate everyone else ([`Interpolation`](super::Interpolation)) and compare
//! what they render with the server's truth at the same server instant.
//!
//! Everything is seeded: the same arguments give the same report.
//!
//! Why one module of about 700 lines: it is measurement equipment behind the `sim` feature, one
//! self-contained simulation whose bots, server loop and statistics share its state.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use super::client::PredictedClient;
use super::movement::{CharacterConfig, CharacterInput, KinematicCharacter};
use super::predictor::Reconciliation;
use super::server::PlayerMotion;
use crate::rng::Rng;
use crate::sim::{Link, LinkConfig};
use crate::time::{Tick, TickClock, Time};
use crate::types::{EntityId, Transform, Vec3};

/// Clients that interpolate everyone else: interpolation is O(players²), and a few observers
/// measure it as well as all would.
pub const OBSERVERS_MAX: usize = 4;
/// Render frames per second of the observing clients (the common display rate; the delay and
/// underrun figures are per frame, so this is the rate they are sampled at).
pub const RENDER_FPS: u32 = 60;
/// Seconds at the start excluded from the figures: the clock sync converges and the first
/// states arrive.
pub const WARMUP_S: f64 = 1.0;
/// Server ticks of truth kept to compare rendered positions with: 256 ticks is 2 s at 120 Hz,
/// longer than the largest render delay plus transit.
const TRUTH_TICKS_MAX: usize = 256;
/// Virtual time step, microseconds.
const STEP_US: u64 = 1_000;

/// A scenario for [`run_bench`]. [`BenchConfig::new`] gives the plain crowd `bench_run` runs.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchConfig {
    /// Clients, each with a player.
    pub players: usize,
    /// Server tick and send rate, Hz.
    pub hz: u16,
    /// Simulated duration, seconds.
    pub seconds: f64,
    /// Independent loss probability of every datagram, each direction (0..=1).
    pub loss: f64,
    /// Round-trip time without jitter, milliseconds.
    pub rtt_ms: f64,
    /// Spread of the one-way delay, milliseconds (uniform).
    pub jitter_ms: f64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Windows (start s, end s) during which every datagram in both directions is lost.
    pub partitions: Vec<(f64, f64)>,
    /// A new round-trip time from a given second: (at s, rtt ms).
    pub rtt_change: Option<(f64, f64)>,
    /// At this second the server teleports player 0 by 50 m along +X.
    pub teleport_at_s: Option<f64>,
}

impl BenchConfig {
    /// The plain crowd.
    pub fn new(
        players: usize,
        hz: u16,
        seconds: f64,
        loss: f64,
        rtt_ms: f64,
        jitter_ms: f64,
        seed: u64,
    ) -> Self {
        BenchConfig {
            players,
            hz,
            seconds,
            loss,
            rtt_ms,
            jitter_ms,
            seed,
            partitions: Vec::new(),
            rtt_change: None,
            teleport_at_s: None,
        }
    }
}

/// What [`bench_run`] measured. Figures exclude the first [`WARMUP_S`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PredictionReport {
    /// Mispredictions corrected, per client per second.
    pub prediction_corrections_per_s: f64,
    /// Mispredictions corrected in total, all clients.
    pub prediction_corrections: u64,
    /// Corrections per whole second of the run, all clients (index = second).
    pub corrections_by_second: Vec<u64>,
    /// 99th percentile of the prediction error over every authoritative state compared (0 when
    /// the prediction was exact), metres.
    pub prediction_error_p99_m: f64,
    /// Largest prediction error, metres.
    pub prediction_error_max_m: f64,
    /// Mean render delay of interpolated entities, milliseconds (behind the newest data expected).
    pub interpolation_delay_ms: f64,
    /// Send interval, milliseconds (for judging the delay).
    pub send_interval_ms: f64,
    /// 99th percentile distance between what an observer renders for an entity and the server's
    /// truth for that entity at the same server instant, metres.
    pub interpolation_error_p99_m: f64,
    /// Interpolation underruns (an entity-frame rendered past the newest sample), per entity
    /// stream per second.
    pub underruns_per_s: f64,
    /// Fraction of entity-frames that were underruns.
    pub underrun_frame_fraction: f64,
    /// Inputs that reached the server after their tick ran, all clients (after warm-up; the
    /// start always has a few, while the clock sync converges).
    pub inputs_late: u64,
    /// Ticks at which the server had no input and repeated the previous one (after warm-up).
    pub inputs_repeated: u64,
    /// Client tick clock jumps and pauses, all clients.
    pub clock_jumps: u64,
    /// Server teleports the clients applied (snapped to).
    pub teleports: u64,
    /// Corrections shown as snaps rather than smoothed, all clients.
    pub snaps: u64,
}

struct Pending<T> {
    at_us: u64,
    seq: u64,
    msg: T,
}
impl<T> PartialEq for Pending<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.at_us, self.seq) == (o.at_us, o.seq)
    }
}
impl<T> Eq for Pending<T> {}
impl<T> PartialOrd for Pending<T> {
    fn partial_cmp(&self, o: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Pending<T> {
    fn cmp(&self, o: &Self) -> core::cmp::Ordering {
        (self.at_us, self.seq).cmp(&(o.at_us, o.seq))
    }
}

/// A point in the run, `s` seconds in, to the microsecond.
fn at_s(s: f64) -> Time {
    Time((s.max(0.0) * 1e6).round() as u64)
}

/// The simulated network's link for a round trip of `rtt_ms`: each datagram's one-way delay is
/// `rtt/2 − jitter/2 + uniform(0, jitter)` (so the mean one-way delay is half the round trip),
/// each is lost with probability `loss`, and no message is too large (the bench's messages stand
/// for datagrams without being encoded).
fn link_config(cfg: &BenchConfig, rtt_ms: f64) -> LinkConfig {
    let jitter_ms = cfg.jitter_ms.max(0.0);
    let latency_ms = (rtt_ms / 2.0 - jitter_ms / 2.0).max(0.0);
    LinkConfig {
        latency: Duration::from_micros((latency_ms * 1000.0).round() as u64),
        jitter: Duration::from_micros((jitter_ms * 1000.0).round() as u64),
        loss: cfg.loss,
        mtu: usize::MAX,
        ..LinkConfig::default()
    }
}

/// One direction of one client's path: the simulated network's [`Link`] deciding each
/// message's fate from this direction's own generator, and the messages in flight.
struct Path<T> {
    link: Link,
    rng: Rng,
    queue: BinaryHeap<Reverse<Pending<T>>>,
    seq: u64,
}

impl<T: Clone> Path<T> {
    /// A direction of `cfg`'s link, cut during `cfg.partitions`.
    fn new(cfg: &BenchConfig, rng: Rng) -> Self {
        let mut link = Link::new(link_config(cfg, cfg.rtt_ms));
        for &(from, until) in &cfg.partitions {
            link.partition(at_s(from), at_s(until));
        }
        Path {
            link,
            rng,
            queue: BinaryHeap::new(),
            seq: 0,
        }
    }

    fn send(&mut self, now_us: u64, msg: T) {
        let arrivals = self.link.datagram_arrivals(0, Time(now_us), &mut self.rng);
        let copies = arrivals.len();
        let mut msg = Some(msg);
        for (i, at) in arrivals.into_iter().enumerate() {
            let Some(copy) = (if i + 1 == copies {
                msg.take()
            } else {
                msg.clone()
            }) else {
                break;
            };
            self.seq += 1;
            self.queue.push(Reverse(Pending {
                at_us: at.as_micros(),
                seq: self.seq,
                msg: copy,
            }));
        }
    }

    fn poll(&mut self, now_us: u64) -> Option<T> {
        if self.queue.peek()?.0.at_us <= now_us {
            return self.queue.pop().map(|p| p.0.msg);
        }
        None
    }
}

#[derive(Clone)]
enum Up {
    Inputs(Vec<u8>),
    Ping(u64),
}

#[derive(Clone)]
enum Down {
    Own(Vec<u8>),
    Pong {
        client_time_us: u64,
        server_time_us: u64,
        server_tick: u64,
    },
    Snapshot(u64, Rc<Vec<(EntityId, Transform)>>),
}

struct Bot {
    rng: Rng,
    input: CharacterInput,
    next_change_tick: u64,
}

impl Bot {
    fn input(&mut self, tick: u64, hz: u16) -> CharacterInput {
        if tick >= self.next_change_tick {
            let axis = |r: &mut Rng| [-127i8, 0, 127][r.below(3) as usize];
            self.input.move_x = axis(&mut self.rng);
            self.input.move_z = axis(&mut self.rng);
            self.input.yaw = self.rng.next_u64() as u16;
            self.input.run = self.rng.chance(0.3);
            let span = self.rng.range_f64(0.5, 2.0) * hz as f64;
            self.next_change_tick = tick + span as u64;
        }
        let mut i = self.input;
        i.jump = self.rng.chance(0.02);
        i
    }
}

struct Client {
    clock_offset_us: u64,
    core: PredictedClient,
    observer: bool,
    bot: Bot,
    up: Path<Up>,
    down: Path<Down>,
}

/// Resolution of the error histograms, metres: 1 mm, far below the 5 cm target.
const ERROR_BIN_M: f64 = 0.001;
/// Bins of the error histograms: 0 to 20 m; larger errors land in the last bin.
const ERROR_BINS: usize = 20_000;

/// A fixed-size histogram of distances, so a long crowd run needs constant memory. Bin 0 holds
/// exact zeros; bin `i` holds `((i − 1) mm, i mm]`; quantiles report the bin's upper edge.
struct ErrorHistogram {
    bins: Vec<u64>,
    n: u64,
    max: f64,
}

impl ErrorHistogram {
    fn new() -> Self {
        ErrorHistogram {
            bins: vec![0; ERROR_BINS],
            n: 0,
            max: 0.0,
        }
    }

    fn record(&mut self, x: f64) {
        let x = if x.is_finite() { x.max(0.0) } else { f64::MAX };
        let i = ((x / ERROR_BIN_M).ceil() as usize).min(ERROR_BINS - 1);
        self.bins[i] += 1;
        self.n += 1;
        self.max = self.max.max(x);
    }

    fn quantile(&self, q: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let rank = ((self.n as f64 * q).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, c) in self.bins.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return i as f64 * ERROR_BIN_M;
            }
        }
        self.max
    }
}

/// Runs the crowd: `players` bots at `hz` for `seconds` of virtual time, each datagram lost with
/// probability `loss`, round trip `rtt_ms` with `jitter_ms` of one-way spread, everything seeded
/// by `seed`. Deterministic.
pub fn bench_run(
    players: usize,
    hz: u16,
    seconds: f64,
    loss: f64,
    rtt_ms: f64,
    jitter_ms: f64,
    seed: u64,
) -> PredictionReport {
    run_bench(&BenchConfig::new(
        players, hz, seconds, loss, rtt_ms, jitter_ms, seed,
    ))
}

/// Runs a scenario (see [`BenchConfig`]). Deterministic.
pub fn run_bench(cfg: &BenchConfig) -> PredictionReport {
    let hz = cfg
        .hz
        .clamp(crate::time::TICK_HZ_MIN, crate::time::TICK_HZ_MAX);
    let model = KinematicCharacter::default();
    let mut rng = Rng::new(cfg.seed);
    let players = cfg.players.max(1);
    let mut server: Vec<PlayerMotion> = (0..players)
        .map(|i| {
            let spawn = model.spawn(
                Vec3::new((i % 32) as f32 * 3.0 - 48.0, 0.0, (i / 32) as f32 * 3.0),
                0,
            );
            PlayerMotion::new(model, spawn, hz, Tick(0))
        })
        .collect();
    let mut clients: Vec<Client> = (0..players)
        .map(|i| Client {
            clock_offset_us: rng.below(10_000_000),
            core: PredictedClient::new(hz, CharacterConfig::default(), 1),
            observer: i < OBSERVERS_MAX,
            bot: Bot {
                rng: rng.fork(),
                input: CharacterInput::default(),
                next_change_tick: 0,
            },
            up: Path::new(cfg, rng.fork()),
            down: Path::new(cfg, rng.fork()),
        })
        .collect();
    let mut server_clock = TickClock::new(hz, Time::ZERO);
    let mut server_tick: Option<Tick> = None;
    let mut truth: VecDeque<(u64, Vec<Vec3>)> = VecDeque::new();

    let end_us = (cfg.seconds.max(0.0) * 1e6) as u64;
    let warmup_us = (WARMUP_S * 1e6) as u64;
    let frame_us = 1_000_000 / RENDER_FPS as u64;
    let mut next_frame_us = 0;
    let mut pred_errors = ErrorHistogram::new();
    let mut interp_errors = ErrorHistogram::new();
    let mut corrections_by_second = vec![0u64; (cfg.seconds.max(0.0).ceil() as usize).max(1)];
    let mut corrections = 0u64;
    let (mut frames, mut underruns) = (0u64, 0u64);
    let (mut delay_sum_ms, mut delay_n) = (0.0f64, 0u64);
    let mut repeated_at_warmup = None;

    let mut rtt_changed = false;
    let mut now_us = 0u64;
    while now_us < end_us {
        let now = Time(now_us);
        // 0. The round trip changes, for datagrams sent from now on.
        if let Some((at, rtt_ms)) = cfg.rtt_change {
            if !rtt_changed && now >= at_s(at) {
                rtt_changed = true;
                let changed = link_config(cfg, rtt_ms);
                for c in &mut clients {
                    c.up.link.set_config(changed.clone());
                    c.down.link.set_config(changed.clone());
                }
            }
        }
        // 1. Server receives.
        for (p, c) in clients.iter_mut().enumerate() {
            while let Some(m) = c.up.poll(now_us) {
                match m {
                    Up::Inputs(b) => {
                        let _ = server[p].handle_input_datagram(&b);
                    }
                    Up::Ping(client_time_us) => {
                        let pong = Down::Pong {
                            client_time_us,
                            server_time_us: now_us,
                            server_tick: server_tick.map_or(0, |t| t.0),
                        };
                        c.down.send(now_us, pong);
                    }
                }
            }
        }
        // 2. Server ticks.
        while let Some(tick) = server_clock.poll_tick(now) {
            server_tick = Some(tick);
            if let Some(at) = cfg.teleport_at_s {
                let at_tick = (at * hz as f64) as u64;
                if tick.0 == at_tick {
                    let mut s = *server[0].state();
                    s.position[0] += 50.0;
                    server[0].teleport(s);
                }
            }
            let mut snap = Vec::with_capacity(players);
            let mut positions = Vec::with_capacity(players);
            for (p, sp) in server.iter_mut().enumerate() {
                positions.push(sp.tick(tick).position);
                snap.push((EntityId(p as u32), sp.transform()));
            }
            truth.push_back((tick.0, positions));
            if truth.len() > TRUTH_TICKS_MAX {
                truth.pop_front();
            }
            if repeated_at_warmup.is_none() && now_us >= warmup_us {
                let stats = server.iter().map(|s| s.input_stats());
                repeated_at_warmup =
                    Some(stats.fold((0, 0), |(r, l), s| (r + s.repeated, l + s.late)));
            }
            let snap = Rc::new(snap);
            for (p, c) in clients.iter_mut().enumerate() {
                if let Some(blob) = server[p].own_state_blob() {
                    c.down.send(now_us, Down::Own(blob));
                }
                if c.observer {
                    c.down.send(now_us, Down::Snapshot(tick.0, snap.clone()));
                }
            }
        }
        // 3. Clients receive, tick and send.
        for (p, c) in clients.iter_mut().enumerate() {
            let local = Time(now_us + c.clock_offset_us);
            while let Some(m) = c.down.poll(now_us) {
                match m {
                    Down::Own(b) => {
                        let Ok(r) = c.core.handle_own_state(&b) else {
                            continue;
                        };
                        let counted = now_us >= warmup_us;
                        match r {
                            Reconciliation::Matched if counted => pred_errors.record(0.0),
                            Reconciliation::Corrected { error_m, .. } => {
                                let sec = (now_us / 1_000_000) as usize;
                                if let Some(b) = corrections_by_second.get_mut(sec) {
                                    *b += 1;
                                }
                                if counted {
                                    corrections += 1;
                                    pred_errors.record(error_m as f64);
                                }
                            }
                            _ => {}
                        }
                    }
                    Down::Pong {
                        client_time_us,
                        server_time_us,
                        server_tick,
                    } => c
                        .core
                        .handle_pong(client_time_us, server_time_us, server_tick, local),
                    Down::Snapshot(tick, snap) => {
                        c.core.handle_transforms_datagram(local, Tick(tick));
                        for (id, tr) in snap.iter() {
                            if id.0 as usize != p {
                                c.core.handle_entity_transform(*id, Tick(tick), *tr, false);
                            }
                        }
                    }
                }
            }
            if let Some(t) = c.core.poll_ping(local) {
                c.up.send(now_us, Up::Ping(t));
            }
            while let Some(t) = c.core.poll_tick(local) {
                let input = c.bot.input(t.0, hz);
                if let Some(payload) = c.core.apply_input(t, input) {
                    c.up.send(now_us, Up::Inputs(payload));
                }
            }
        }
        // 4. Render frames.
        if now_us >= next_frame_us {
            next_frame_us += frame_us;
            for (p, c) in clients.iter_mut().enumerate() {
                let local = Time(now_us + c.clock_offset_us);
                let Some(at) = c.core.begin_frame(local, frame_us as f32 / 1e6) else {
                    continue;
                };
                let counted = now_us >= warmup_us;
                if counted {
                    delay_sum_ms += c.core.interpolation_delay_ms();
                    delay_n += 1;
                }
                // The server's truth at fractional tick `at`.
                let lo = at.floor() as u64;
                let frac = (at - lo as f64) as f32;
                let front = truth.front().map_or(u64::MAX, |t| t.0);
                let row = |k: u64| truth.get(k.checked_sub(front)? as usize).map(|t| &t.1);
                let (Some(a), Some(b)) = (row(lo), row(lo + 1)) else {
                    continue;
                };
                for q in 0..players {
                    if q == p {
                        continue;
                    }
                    let before = c.core.interpolation_stats().underruns;
                    let Some(s) = c.core.entity_transform(EntityId(q as u32), at) else {
                        continue;
                    };
                    if !counted {
                        continue;
                    }
                    frames += 1;
                    if c.core.interpolation_stats().underruns > before {
                        underruns += 1;
                    }
                    let t = a[q] + (b[q] - a[q]) * frac;
                    interp_errors.record(s.position.distance(t) as f64);
                }
            }
        }
        now_us += STEP_US;
    }

    let measured_s = (cfg.seconds - WARMUP_S).max(1e-9);
    let streams = clients.iter().filter(|c| c.observer).count().max(1) as f64
        * (players.saturating_sub(1)).max(1) as f64;
    let (repeated_warmup, late_warmup) = repeated_at_warmup.unwrap_or((0, 0));
    let inputs_late = server.iter().map(|s| s.input_stats().late).sum::<u64>() - late_warmup;
    let repeated_total: u64 = server.iter().map(|s| s.input_stats().repeated).sum();
    PredictionReport {
        prediction_corrections_per_s: corrections as f64 / measured_s / players as f64,
        prediction_corrections: corrections,
        corrections_by_second,
        prediction_error_p99_m: pred_errors.quantile(0.99),
        prediction_error_max_m: pred_errors.max,
        interpolation_delay_ms: if delay_n > 0 {
            delay_sum_ms / delay_n as f64
        } else {
            0.0
        },
        send_interval_ms: 1000.0 / hz as f64,
        interpolation_error_p99_m: interp_errors.quantile(0.99),
        underruns_per_s: underruns as f64 / measured_s / streams,
        underrun_frame_fraction: if frames > 0 {
            underruns as f64 / frames as f64
        } else {
            0.0
        },
        inputs_late,
        inputs_repeated: repeated_total - repeated_warmup,
        clock_jumps: clients.iter().map(|c| c.core.tick_clock().jumps()).sum(),
        teleports: clients
            .iter()
            .map(|c| c.core.correction_stats().teleports)
            .sum(),
        snaps: clients
            .iter()
            .map(|c| c.core.correction_stats().snaps)
            .sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(name: &str, cfg: &BenchConfig, r: &PredictionReport) {
        eprintln!("{name}: seed {} {cfg:?}\n  {r:?}", cfg.seed);
    }

    #[test]
    fn no_correction_without_loss_after_the_first_second() {
        for (jitter, seed) in [(0.0, 11), (20.0, 12)] {
            let cfg = BenchConfig::new(8, 30, 6.0, 0.0, 100.0, jitter, seed);
            let r = run_bench(&cfg);
            print("no_loss", &cfg, &r);
            assert_eq!(r.prediction_corrections, 0, "seed {seed}");
            assert_eq!(r.inputs_repeated, 0, "seed {seed}");
            assert_eq!(r.prediction_error_p99_m, 0.0);
        }
    }

    #[test]
    fn prediction_recovers_after_a_loss_burst_and_a_partition() {
        for (window, seed) in [((2.0, 2.3), 21), ((2.0, 3.0), 22)] {
            let mut cfg = BenchConfig::new(6, 30, 7.0, 0.0, 100.0, 10.0, seed);
            cfg.partitions.push(window);
            let r = run_bench(&cfg);
            print("partition", &cfg, &r);
            // The outage caused corrections (the server repeated inputs it never got)...
            assert!(r.inputs_repeated > 0, "seed {seed}");
            let during: u64 = r.corrections_by_second[2..4].iter().sum();
            assert!(during > 0, "seed {seed}: {:?}", r.corrections_by_second);
            // ...and within a second of the link coming back, none.
            let after: u64 = r.corrections_by_second[5..].iter().sum();
            assert_eq!(after, 0, "seed {seed}: {:?}", r.corrections_by_second);
        }
    }

    #[test]
    fn lossy_jittery_crowd_meets_the_targets() {
        let cfg = BenchConfig::new(16, 30, 8.0, 0.05, 100.0, 20.0, 31);
        let r = run_bench(&cfg);
        print("crowd", &cfg, &r);
        assert!(r.prediction_error_p99_m <= 0.05, "{r:?}");
        assert!(
            r.interpolation_delay_ms <= 3.5 * r.send_interval_ms + cfg.jitter_ms,
            "{r:?}"
        );
        assert!(r.underrun_frame_fraction <= 0.01, "{r:?}");
    }

    #[test]
    fn server_teleport_snaps_the_client_without_later_corrections() {
        let mut cfg = BenchConfig::new(3, 30, 5.0, 0.0, 100.0, 10.0, 51);
        cfg.teleport_at_s = Some(2.5);
        let r = run_bench(&cfg);
        print("teleport", &cfg, &r);
        assert_eq!(r.teleports, 1);
        assert!(r.snaps >= 1);
        assert_eq!(r.prediction_corrections, 0, "{:?}", r.corrections_by_second);
    }

    #[test]
    fn bench_is_deterministic_for_a_seed() {
        let a = bench_run(4, 30, 3.0, 0.05, 80.0, 20.0, 5);
        let b = bench_run(4, 30, 3.0, 0.05, 80.0, 20.0, 5);
        assert_eq!(a, b);
    }

    #[test]
    fn prediction_follows_an_rtt_change_without_lasting_corrections() {
        let mut cfg = BenchConfig::new(4, 30, 9.0, 0.0, 60.0, 10.0, 41);
        cfg.rtt_change = Some((3.0, 220.0));
        let r = run_bench(&cfg);
        print("rtt_change", &cfg, &r);
        let late: u64 = r.corrections_by_second[6..].iter().sum();
        assert_eq!(late, 0, "{:?}", r.corrections_by_second);
    }

    /// The figures for the targets at crowd scale. Run with
    /// `cargo test -p neonet-proto --release predict::bench::tests::report_figures -- --ignored --nocapture`.
    #[test]
    #[ignore = "long: prints the figures for the notes"]
    fn report_figures() {
        for (name, loss, rtt, jitter) in [
            ("0% loss, constant 100 ms RTT", 0.0, 100.0, 0.0),
            ("0% loss, 100 ms RTT, 20 ms jitter", 0.0, 100.0, 20.0),
            ("5% loss, 100 ms RTT, 20 ms jitter", 0.05, 100.0, 20.0),
            ("10% loss, 200 ms RTT, 40 ms jitter", 0.10, 200.0, 40.0),
        ] {
            for hz in [30u16, 60] {
                let r = bench_run(100, hz, 30.0, loss, rtt, jitter, 7);
                eprintln!(
                    "{name} @ {hz} Hz, 100 players, 30 s, seed 7:\n  corrections/s/client {:.4} \
                     (total {}), prediction_error_p99_m {:.4}, max {:.3}, interpolation_delay_ms \
                     {:.1} (limit {:.1}), interpolation_error_p99_m {:.4}, underruns_per_s {:.4}, \
                     underrun fraction {:.5}, late inputs {}, repeated {}",
                    r.prediction_corrections_per_s,
                    r.prediction_corrections,
                    r.prediction_error_p99_m,
                    r.prediction_error_max_m,
                    r.interpolation_delay_ms,
                    3.5 * r.send_interval_ms + jitter,
                    r.interpolation_error_p99_m,
                    r.underruns_per_s,
                    r.underrun_frame_fraction,
                    r.inputs_late,
                    r.inputs_repeated,
                );
            }
        }
    }
}
