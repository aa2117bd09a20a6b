//! Whole `ServerCore` ticks for many joined clients, each within interest of about 100 moving
//! players, with every client's acks coming back as a real client's would (two ticks later,
//! through `handle_datagram`): the relay core's per-client tick work, deterministic, for
//! instruction counts under callgrind. The measured sections are the core's own calls,
//! `core_datagram` and `core_timeout`, after the warm-up ticks:
//!
//! ```text
//! cargo build --profile profiling -p neonet-proto --example server_ticks
//! valgrind --tool=callgrind --toggle-collect='server_ticks::core_*' \
//!     target/profiling/examples/server_ticks 1000 30
//! ```
//!
//! Instructions per client-tick = the reported `Ir` / (clients × ticks). The players stand on a
//! square lattice 10 m apart (100 m² each), each walking a small circle (every player moves
//! every tick), the interest radius 56 m (≈ 100 players in it, fewer at the world's edge).
//! The run prints the entity updates per client-tick and a digest of every byte sent, which
//! must not change when only the speed of the code changes.

use std::collections::VecDeque;
use std::hint::black_box;

use neonet_proto::server::{
    ConnId, InsecureTokens, ServerConfig, ServerCore, Transmit, TransportKind, World,
};
use neonet_proto::time::Time;
use neonet_proto::transform::{encode_client_datagram, AckTracker, Seq, TransformConfig};
use neonet_proto::types::{EntityId, MovementAuthority, Quat, Transform, Vec3};
use neonet_proto::wire::codec;
use neonet_proto::wire::msg::{ClientMsg, PROTOCOL_VERSION};

/// Distance between neighbouring players, metres.
const SPACING_M: f32 = 10.0;
/// Ticks between a datagram's sending and its ack's arrival (≈ 66 ms round trip at 30 Hz).
const ACK_DELAY_TICKS: usize = 2;
/// Warm-up ticks before the measured ones: joins settled, baselines acknowledged.
const WARMUP_TICKS: u64 = 20;

struct Client {
    conn: ConnId,
    player: EntityId,
    /// The player's lattice spot.
    home: Vec3,
    acks: AckTracker,
    seq: Seq,
}

/// A client's datagrams of one tick, acknowledged [`ACK_DELAY_TICKS`] later.
type Pending = Vec<(usize, u16)>;

struct Bench {
    core: ServerCore,
    clients: Vec<Client>,
    /// Client index by connection id (ids are 1..=clients).
    pending: VecDeque<Pending>,
    tick_us: u64,
    tick: u64,
    /// FNV-1a of every datagram's bytes, in order.
    digest: u64,
    updates: usize,
    scratch: Vec<u8>,
}

impl Bench {
    fn new(clients: usize) -> Bench {
        let config = ServerConfig {
            transform: TransformConfig {
                interest_radius_m: 56.0,
                interest_hysteresis_m: 4.0,
                ..TransformConfig::default()
            },
            limits: neonet_proto::server::LimitsConfig::unlimited_rates(),
            ..ServerConfig::default()
        };
        let tick_us = 1_000_000 / u64::from(config.tick_hz);
        let mut world = World::default();
        world.settings.movement = MovementAuthority::Client;
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
            let player = core.session_of(conn).expect("joined").player;
            let home = Vec3::new(
                (i % side) as f32 * SPACING_M - 400.0,
                1.0,
                (i / side) as f32 * SPACING_M - 400.0,
            );
            out.push(Client {
                conn,
                player,
                home,
                acks: AckTracker::new(),
                seq: Seq(0),
            });
        }
        while core.poll_transmit().is_some() {}
        while core.poll_event().is_some() {}
        Bench {
            core,
            clients: out,
            pending: VecDeque::new(),
            tick_us,
            tick: 0,
            digest: 0xcbf2_9ce4_8422_2325,
            updates: 0,
            scratch: Vec::new(),
        }
    }

    /// One tick: every player steps along its circle, the acks due arrive, the tick runs and
    /// its datagrams are collected for acks to come.
    fn tick(&mut self, measure: bool) {
        let now = Time(self.tick * self.tick_us);
        for (i, c) in self.clients.iter().enumerate() {
            // Circles of 2 m at a few speeds (≈ 1.3–2.5 m/s), each at its own phase.
            let phase = i as f32 * 0.7 + self.tick as f32 * (0.02 + (i % 5) as f32 * 0.01);
            let t = Transform {
                position: c.home + Vec3::new(2.0 * phase.cos(), 0.0, 2.0 * phase.sin()),
                rotation: Quat::from_rotation_y(phase),
                scale: None,
            };
            self.core.host_set_transform(c.player, t).expect("player");
        }
        if self.pending.len() >= ACK_DELAY_TICKS {
            let due = self.pending.pop_front().expect("checked");
            for (ci, seq) in due {
                self.clients[ci].acks.record(Seq(seq));
            }
            // Each client sends one datagram per tick carrying its ack header.
            for c in &mut self.clients {
                c.seq = c.seq.next();
                encode_client_datagram(
                    self.core.quantizer(),
                    &c.acks.header(),
                    c.seq,
                    &[],
                    &[],
                    &mut self.scratch,
                )
                .expect("encodes");
                if measure {
                    core_datagram(&mut self.core, c.conn, &self.scratch, now);
                } else {
                    self.core.handle_datagram(c.conn, &self.scratch, now);
                }
            }
        }
        if measure {
            core_timeout(&mut self.core, now);
        } else {
            self.core.handle_timeout(now);
        }
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

/// The core's work on a client datagram, measured (the bench's own work around it is not).
#[inline(never)]
fn core_datagram(core: &mut ServerCore, conn: ConnId, data: &[u8], now: Time) {
    core.handle_datagram(conn, data, now);
}

/// The core's tick, measured.
#[inline(never)]
fn core_timeout(core: &mut ServerCore, now: Time) {
    core.handle_timeout(now);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let clients: usize = args.next().map_or(1000, |s| s.parse().expect("clients"));
    let ticks: u64 = args.next().map_or(30, |s| s.parse().expect("ticks"));
    let mut bench = Bench::new(clients);
    for _ in 0..WARMUP_TICKS {
        bench.tick(false);
    }
    bench.updates = 0;
    let start = std::time::Instant::now();
    for _ in 0..ticks {
        black_box(&mut bench).tick(true);
    }
    let spent = start.elapsed();
    println!(
        "{clients} clients, {ticks} ticks: {:.1} entity updates per client-tick, digest {:016x}, {:.2} µs per client-tick (wall, noisy)",
        bench.updates as f64 / (clients as u64 * ticks) as f64,
        bench.digest,
        spent.as_secs_f64() * 1e6 / (clients as u64 * ticks) as f64,
    );
}
