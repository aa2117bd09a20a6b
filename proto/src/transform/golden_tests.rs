//! Golden output of the server-side writer: seeded scenarios whose every datagram, summary and
//! ack result is pinned (exact bytes for the first datagrams, a digest over everything), so any
//! internal change to the replicator or the record coder is proven to leave the wire format and
//! the behaviour bit-identical.
//!
//! The scenarios cover the single-datagram fast path, the priority-ordered multi-datagram path
//! under tight budgets and small datagrams, interest enter/leave (left notices), entities added
//! and removed, own entity and own blob, ownership weights, scale, lost datagrams and late acks.

use super::scenario::{MotionGen, Scenario};
use super::*;
use crate::rng::Rng;
use crate::time::{Tick, Time};
use crate::types::{EntityId, Quat, SessionId, Transform, Vec3};

/// FNV-1a, 64 bit: stable everywhere, enough to notice any changed byte. Also counts which
/// paths the scenario took, so the test can check it covers them.
struct Digest(u64, TickSummary);

impl Digest {
    fn new() -> Digest {
        Digest(0xcbf2_9ce4_8422_2325, TickSummary::default())
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn summary(&mut self, s: &TickSummary) {
        let c = &mut self.1;
        c.datagrams += (s.datagrams > 1) as usize; // ticks with several datagrams
        c.deferred += (s.deferred > 0) as usize; // ticks limited by the budget
        c.updates += (s.datagrams == 1 && s.deferred == 0) as usize; // ticks that fit in one
        c.absolute += s.absolute;
        c.left_notices += s.left_notices;
        for v in [
            s.datagrams,
            s.bytes,
            s.updates,
            s.absolute,
            s.left_notices,
            s.deferred,
        ] {
            self.u64(v as u64);
        }
    }
}

/// A world whose entities wander, jump, spin, change weight and owner, and come and go.
struct World {
    rng: Rng,
    next_id: u32,
    ents: Vec<(EntityId, Transform, Vec3, f32, Option<SessionId>)>,
}

impl World {
    fn new(seed: u64, n: usize, spread: f64) -> World {
        let mut w = World {
            rng: Rng::new(seed),
            next_id: 0,
            ents: Vec::new(),
        };
        for _ in 0..n {
            w.add(spread);
        }
        w
    }

    fn add(&mut self, spread: f64) {
        let rng = &mut self.rng;
        let span = if rng.chance(0.05) { 3000 } else { 3 };
        self.next_id += 1 + rng.below(span) as u32;
        let t = Transform {
            position: Vec3::from_array([0; 3].map(|_| rng.range_f64(-spread, spread) as f32)),
            rotation: Quat::from_array([0; 4].map(|_| rng.range_f64(-1.0, 1.0) as f32)),
            scale: rng
                .chance(0.3)
                .then(|| Vec3::from_array([0; 3].map(|_| rng.range_f64(0.5, 2.0) as f32))),
        };
        let v = Vec3::from_array([0; 3].map(|_| rng.range_f64(-0.4, 0.4) as f32));
        let weight = [1.0, 1.0, 1.0, 0.0, 3.5][rng.below(5) as usize];
        let owner = rng.chance(0.2).then(|| SessionId(rng.below(3)));
        self.ents
            .push((EntityId(self.next_id), t, v, weight, owner));
    }

    fn step(&mut self, spread: f64, churn: bool) {
        let rng = &mut self.rng;
        for (_, t, v, _, _) in &mut self.ents {
            let r = rng.f64();
            if r < 0.25 {
                continue;
            } else if r < 0.27 {
                t.position =
                    Vec3::from_array([0; 3].map(|_| rng.range_f64(-spread, spread) as f32));
            } else {
                for a in 0..3 {
                    t.position[a] += v[a];
                }
                if rng.chance(0.1) {
                    *v = Vec3::from_array([0; 3].map(|_| rng.range_f64(-0.6, 0.6) as f32));
                }
            }
            if rng.chance(0.4) {
                let mut r = t.rotation.to_array();
                for c in &mut r {
                    *c += rng.range_f64(-0.03, 0.03) as f32;
                }
                t.rotation = Quat::from_array(r);
            }
            if rng.chance(0.01) {
                t.rotation = Quat::from_array([0; 4].map(|_| rng.range_f64(-1.0, 1.0) as f32));
            }
            if rng.chance(0.005) {
                t.scale = Some(Vec3::from_array(
                    [0; 3].map(|_| rng.range_f64(0.5, 2.0) as f32),
                ));
            }
        }
        if churn {
            let n = self.ents.len();
            if n > 0 && self.rng.chance(0.3) {
                let i = self.rng.below(n as u64) as usize;
                self.ents.remove(i);
            }
            if self.rng.chance(0.3) {
                self.add(spread);
            }
        }
    }

    fn samples(&self, qz: &Quantizer) -> Vec<EntitySample> {
        self.ents
            .iter()
            .map(|(id, t, _, weight, owner)| EntitySample {
                weight: *weight,
                owner: *owner,
                ..EntitySample::new(*id, t, qz)
            })
            .collect()
    }
}

/// One server-side replicator and its client, acks delayed and some datagrams lost both ways.
struct Link {
    server: ClientReplicator,
    client: ReplicaReceiver,
    rng: Rng,
    loss: f64,
    acks: Vec<(u64, AckHeader)>,
    delay: u64,
}

impl Link {
    fn new(config: &TransformConfig, session: Option<SessionId>, seed: u64, loss: f64) -> Link {
        Link {
            server: ClientReplicator::new(config.clone(), session).unwrap(),
            client: ReplicaReceiver::new(config).unwrap(),
            rng: Rng::new(seed),
            loss,
            acks: Vec::new(),
            delay: 2 + seed % 3,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn tick(
        &mut self,
        d: &mut Digest,
        tick: u64,
        samples: &[EntitySample],
        viewer: Option<Vec3>,
        max: usize,
        blob: Option<&[u8]>,
        kept: &mut Vec<Vec<u8>>,
    ) {
        let now = Time(tick * 33_333);
        let (due, later): (Vec<_>, Vec<_>) = self.acks.drain(..).partition(|(t, _)| *t <= tick);
        self.acks = later;
        for (_, a) in due {
            d.u64(self.server.handle_ack(&a, now) as u64);
        }
        let mut out = Vec::new();
        let input = TickInput {
            tick: Tick(tick),
            now,
            viewer,
            entities: samples,
            max_datagram_size: max,
            own_blob: blob,
        };
        let s = self.server.write_tick(&input, &mut out).unwrap();
        d.summary(&s);
        d.u64(out.len() as u64);
        for dg in out {
            d.u64(dg.len() as u64);
            d.bytes(&dg);
            if kept.len() < 6 {
                kept.push(dg.clone());
            }
            if self.rng.chance(self.loss) {
                continue;
            }
            let r = self.client.handle_datagram(&dg, now).unwrap();
            assert_eq!(r.undecodable, 0);
        }
        if !self.rng.chance(self.loss) {
            self.acks
                .push((tick + self.delay, self.client.ack_header()));
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Crowd of 100 (the bench's scene), one client at the origin, acks 2 ticks late.
fn crowd_100(d: &mut Digest, kept: &mut Vec<Vec<u8>>) {
    let config = TransformConfig::default();
    let qz = Quantizer::new(&config).unwrap();
    let mut gen = MotionGen::new(Scenario::Crowd, 100, 7);
    let mut link = Link::new(&config, None, 7, 0.0);
    for tick in 0..40 {
        gen.step(1.0 / 30.0);
        let samples: Vec<_> = gen
            .transforms()
            .map(|(id, t)| EntitySample::new(id, &t, &qz))
            .collect();
        link.tick(d, tick, &samples, Some(Vec3::ZERO), 1162, None, kept);
    }
}

/// A churning world under tight budgets, small and varying datagrams, moving viewers (entities
/// enter and leave interest), own entity and blob, ownership, scale, 10 % loss.
fn churn(d: &mut Digest, seed: u64, scale_enabled: bool) {
    let config = TransformConfig {
        scale_enabled,
        tick_hz: 60,
        budget_bits_per_s: [8_000, 64_000, 256_000, 2_000_000][seed as usize % 4],
        interest_radius_m: 60.0,
        interest_hysteresis_m: 4.0,
        ..Default::default()
    };
    let qz = Quantizer::new(&config).unwrap();
    let spread = 150.0;
    let mut world = World::new(seed, 400, spread);
    let mut links: Vec<Link> = (0..3)
        .map(|c| Link::new(&config, Some(SessionId(c)), seed * 10 + c, 0.1))
        .collect();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut kept = Vec::new();
    for tick in 0..240 {
        world.step(spread, true);
        let samples = world.samples(&qz);
        for (c, link) in links.iter_mut().enumerate() {
            if tick % 50 == c as u64 {
                let own = samples[rng.below(samples.len() as u64) as usize].id;
                link.server.set_own_entity(Some(own));
            }
            let phase = tick as f32 / 40.0 + c as f32;
            let viewer = (c != 2).then(|| Vec3::new(phase.sin() * 120.0, 0.0, phase.cos() * 90.0));
            let max = 96 + rng.below(1400) as usize;
            let blob_len = rng.below(OWN_BLOB_BYTES_MAX as u64 + 1) as usize;
            let blob = vec![tick as u8; blob_len];
            let blob = rng.chance(0.5).then_some(&blob[..]);
            link.tick(d, tick, &samples, viewer, max, blob, &mut kept);
        }
    }
}

/// Cubes at 60 Hz: mostly at rest, bursts of motion.
fn cubes(d: &mut Digest) {
    let config = TransformConfig {
        tick_hz: 60,
        ..Default::default()
    };
    let qz = Quantizer::new(&config).unwrap();
    let mut gen = MotionGen::new(Scenario::Cubes, 901, 3);
    let mut link = Link::new(&config, None, 3, 0.05);
    let mut kept = Vec::new();
    for tick in 0..200 {
        gen.step(1.0 / 60.0);
        let samples: Vec<_> = gen
            .transforms()
            .map(|(id, t)| EntitySample::new(id, &t, &qz))
            .collect();
        link.tick(d, tick, &samples, None, 1162, None, &mut kept);
    }
}

#[test]
fn writer_output_is_pinned_byte_for_byte() {
    let mut kept = Vec::new();
    let mut d = Digest::new();
    crowd_100(&mut d, &mut kept);
    let crowd = d.0;
    let first: Vec<String> = kept.iter().map(|b| hex(&b[..b.len().min(48)])).collect();
    let lens: Vec<usize> = kept.iter().map(Vec::len).collect();
    let mut d = Digest::new();
    for seed in 0..4 {
        churn(&mut d, seed, seed % 2 == 1);
    }
    let churned = d.0;
    let c = d.1;
    assert!(
        c.datagrams > 50 && c.deferred > 50 && c.updates > 50,
        "{c:?}"
    );
    assert!(c.absolute > 100 && c.left_notices > 100, "{c:?}");
    let mut d = Digest::new();
    cubes(&mut d);
    let cubes = d.0;
    println!("crowd {crowd:#018x} churn {churned:#018x} cubes {cubes:#018x}");
    println!("lens {lens:?} churn paths {c:?}");
    for f in &first {
        println!("{f}");
    }
    assert_eq!(lens, PINNED_LENS);
    assert_eq!(first, PINNED_FIRST);
    assert_eq!(
        (crowd, churned, cubes),
        (PINNED_CROWD, PINNED_CHURN, PINNED_CUBES)
    );
}

/// The first datagrams of the crowd scene (ticks 0–5): lengths and first 48 bytes.
const PINNED_LENS: [usize; 6] = [1056, 1068, 1068, 555, 504, 503];
const PINNED_FIRST: [&str; 6] = [
    "0100000000005af27afa0000a11fc201541d40f9a47b00806821e000a20460699810009019fb0b4000136d4afe0100e2",
    "0101000100005bd27dfa0000e11fc201541dc0462a210020f7a7178000525821dd0300a40d0107102500dbc384008070",
    "0102000200005b9280fa00001920c201541d4049a37b00800422e000a204608d9810001003fb0b4000136d3efe010002",
    "010300030003645a061180452995100090e3d30b400029bcc4136077191b80429779043070893e60a81db60700c811e9",
    "010400040003645a061140c56510001e5d220ab0bb8c0dc0a0cb3c0218b8441f30741942009c198058804bfc013f97f0",
    "010500050003645a461180c52ea300f0eb125180dd656c00065de611c0c025fa80a15d4615806a06201ee0127fc0cf2e",
];
/// Digests of every datagram, summary and ack result of each scene.
const PINNED_CROWD: u64 = 0x721312c3db32ac5e;
const PINNED_CHURN: u64 = 0x15c706ff5f77d633;
const PINNED_CUBES: u64 = 0x49ebcf3dc38db3b7;
