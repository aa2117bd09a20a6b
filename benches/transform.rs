//! Transform codec benchmarks: one entity delta (encode, decode), one client's datagrams for a
//! tick with 100 and 1,000 relevant moving entities, a whole server tick of 100 clients × 1,000
//! entities all in interest, and one of 1,000 clients each seeing ≈ 100 of 1,000 entities
//! (through the interest grid). Motion comes from the crowd scenario (every entity moves every tick); the
//! motion step and quantization happen outside the timed section (the server quantizes once per
//! tick for all clients).
//!
//! `client_receive/100_moving_entities` is the other end: one client's whole receive path for a
//! datagram of 100 moving entities.
//!
//! Run: `cargo bench --bench transform` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use neonet_proto::client::ClientCore;
use neonet_proto::time::{Tick, Time};
use neonet_proto::transform::scenario::{joined_client, CrowdSamples};
use neonet_proto::transform::{
    AckHeader, ClientReplicator, EntitySample, InterestGrid, ReplicaReceiver, Seq, TickInput,
    TransformConfig,
};
use neonet_proto::types::Vec3;

const TICK_US: u64 = 33_333;
const MAX_DATAGRAM: usize = 1162;

type World = CrowdSamples;

/// Acknowledges the datagram just written (the newest sequence) and all before it.
fn ack_all(out: &[Vec<u8>]) -> Option<AckHeader> {
    let last = out.last()?;
    Some(AckHeader {
        latest: Seq(u16::from_le_bytes([last[1], last[2]])),
        received: u64::MAX,
    })
}

fn client_tick(
    server: &mut ClientReplicator,
    world: &World,
    tick: u64,
    viewer: Option<Vec3>,
    out: &mut Vec<Vec<u8>>,
) {
    client_tick_of(server, &world.samples, tick, viewer, out);
}

/// [`client_tick`] sending only `entities`.
fn client_tick_of(
    server: &mut ClientReplicator,
    entities: &[EntitySample],
    tick: u64,
    viewer: Option<Vec3>,
    out: &mut Vec<Vec<u8>>,
) {
    out.clear();
    let input = TickInput {
        tick: Tick(tick),
        now: Time(tick * TICK_US),
        viewer,
        entities,
        max_datagram_size: MAX_DATAGRAM,
        own_blob: None,
    };
    black_box(server.write_tick(&input, out).expect("valid input"));
    // The client's ack arrives 3 ticks later in reality; acking at once keeps the benchmark in
    // the steady delta state and costs the same.
    if let Some(ack) = ack_all(out) {
        server.handle_ack(&ack, Time(tick * TICK_US));
    }
}

fn bench_one_entity(c: &mut Criterion) {
    let mut world = World::new(1);
    let config = TransformConfig::default();
    let mut server = ClientReplicator::new(config.clone(), None).expect("config");
    let mut client = ReplicaReceiver::new(&config).expect("config");
    let mut out = Vec::new();
    let mut tick = 0;
    for _ in 0..10 {
        world.step();
        client_tick(&mut server, &world, tick, None, &mut out);
        for d in &out {
            client.handle_datagram(d, Time(0)).expect("valid");
        }
        tick += 1;
    }
    c.bench_function("delta/encode_one_entity", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                world.step();
                let start = Instant::now();
                client_tick(&mut server, &world, tick, None, &mut out);
                total += start.elapsed();
                tick += 1;
            }
            total
        })
    });
    // Decode: the receiver as it was before the last datagram, fed that datagram.
    world.step();
    client_tick(&mut server, &world, tick, None, &mut out);
    let dgram = out[0].clone();
    c.bench_function("delta/decode_one_entity", |b| {
        b.iter_batched(
            || client.clone(),
            |mut r| black_box(r.handle_datagram(&dgram, Time(0)).expect("valid")),
            BatchSize::SmallInput,
        )
    });
}

fn bench_client(c: &mut Criterion) {
    for n in [100usize, 1000] {
        let mut world = World::new(n);
        let mut server = ClientReplicator::new(TransformConfig::default(), None).expect("config");
        let mut out = Vec::new();
        let mut tick = 0;
        for _ in 0..30 {
            world.step();
            client_tick(&mut server, &world, tick, Some(Vec3::ZERO), &mut out);
            tick += 1;
        }
        c.bench_function(&format!("client_tick/{n}_moving_entities"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    world.step();
                    let start = Instant::now();
                    client_tick(&mut server, &world, tick, Some(Vec3::ZERO), &mut out);
                    total += start.elapsed();
                    tick += 1;
                }
                total
            })
        });
    }
}

fn bench_server(c: &mut Criterion) {
    let clients = 100;
    let mut world = World::new(1000);
    let mut servers: Vec<ClientReplicator> = (0..clients)
        .map(|_| ClientReplicator::new(TransformConfig::default(), None).expect("config"))
        .collect();
    let mut out = Vec::new();
    let mut tick = 0;
    let viewers = |w: &World, c: usize| Some(w.samples[c * 10].position);
    for _ in 0..10 {
        world.step();
        for (i, s) in servers.iter_mut().enumerate() {
            client_tick(s, &world, tick, viewers(&world, i), &mut out);
        }
        tick += 1;
    }
    let mut group = c.benchmark_group("server_tick");
    group.sample_size(10);
    group.bench_function("100_clients_x_1000_entities", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                world.step();
                let start = Instant::now();
                for (i, s) in servers.iter_mut().enumerate() {
                    client_tick(s, &world, tick, viewers(&world, i), &mut out);
                }
                total += start.elapsed();
                tick += 1;
            }
            total
        })
    });
    group.finish();
}

/// The load tool's target world: 1,000 players, each client's player one of them, each within
/// interest of about 100 others (the crowd gives every player 100 m²; a 56 m radius holds ≈ 100
/// of them). The server tick as `ServerCore::run_tick` runs it: build the interest grid, then per
/// client query it and write that client's datagrams.
fn bench_server_spread(c: &mut Criterion) {
    let clients = 1000;
    let config = TransformConfig {
        interest_radius_m: 56.0,
        interest_hysteresis_m: 4.0,
        ..TransformConfig::default()
    };
    let radius = config.interest_radius_m + config.interest_hysteresis_m;
    let mut world = World::new(clients);
    let mut servers: Vec<ClientReplicator> = (0..clients)
        .map(|_| ClientReplicator::new(config.clone(), None).expect("config"))
        .collect();
    let mut grid = InterestGrid::new();
    let mut nearby: Vec<EntitySample> = Vec::new();
    let mut out = Vec::new();
    let mut tick = 0;
    let mut run_tick = |world: &World, tick: u64, servers: &mut [ClientReplicator]| {
        let mut updates = 0;
        grid.build(&world.samples, radius);
        for (i, s) in servers.iter_mut().enumerate() {
            let viewer = world.samples[i].position;
            grid.query(&world.samples, viewer, s.retained(), &mut nearby);
            out.clear();
            let input = TickInput {
                tick: Tick(tick),
                now: Time(tick * TICK_US),
                viewer: Some(viewer),
                entities: &nearby,
                max_datagram_size: MAX_DATAGRAM,
                own_blob: None,
            };
            updates += black_box(s.write_tick(&input, &mut out).expect("valid input")).updates;
            if let Some(ack) = ack_all(&out) {
                s.handle_ack(&ack, Time(tick * TICK_US));
            }
        }
        updates
    };
    let mut updates = 0;
    for _ in 0..10 {
        world.step();
        updates = run_tick(&world, tick, &mut servers);
        tick += 1;
    }
    println!(
        "server_tick/1000_clients_100_visible: {:.0} entity updates per client per tick",
        updates as f64 / clients as f64
    );
    let mut group = c.benchmark_group("server_tick");
    group.sample_size(10);
    group.bench_function("1000_clients_100_visible", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                world.step();
                let start = Instant::now();
                black_box(run_tick(&world, tick, &mut servers));
                total += start.elapsed();
                tick += 1;
            }
            total
        })
    });
    group.finish();
}

/// One client receiving one server datagram per tick with 100 moving entities: the whole
/// receive path (decode, baselines, interpolation buffers, world mirror), per datagram. The
/// server side (world step, replicator, acks) runs outside the timed section.
fn bench_client_receive(c: &mut Criterion) {
    let n = 100;
    let config = TransformConfig::default();
    let mut world = World::new(n);
    let mut server = ClientReplicator::new(config.clone(), None).expect("config");
    let mut client = joined_client(&config, &world.samples);
    let mut out = Vec::new();
    let mut tick = 1;
    let arrival = |tick: u64| Time(tick * TICK_US + 50_000);
    let mut feed = |client: &mut ClientCore, world: &mut World, tick: &mut u64| {
        world.step();
        client_tick(&mut server, world, *tick, Some(Vec3::ZERO), &mut out);
        let now = arrival(*tick);
        *tick += 1;
        let start = Instant::now();
        for d in &out {
            client.handle_datagram(d, now);
        }
        start.elapsed()
    };
    // Past the warm-up: every entity known, baselines and interpolation buffers full.
    for _ in 0..60 {
        feed(&mut client, &mut world, &mut tick);
    }
    assert_eq!(client.datagrams_rejected(), 0);
    c.bench_function(&format!("client_receive/{n}_moving_entities"), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| feed(&mut client, &mut world, &mut tick))
                .sum()
        })
    });
    assert_eq!(client.datagrams_rejected(), 0);
}

/// The load tool's receive side: many headless clients (no interpolation, as its simulated
/// clients run) in one process, each receiving one datagram per tick with 100 moving entities of
/// a 1,000-player world. Their state together is far larger than the last-level cache, so this
/// measures the receive path cold, as the load tool runs it, not the single warm client above.
/// Every client receives the same datagram (one server replicator), which decodes the same way
/// in each because each holds the same baselines.
fn bench_many_clients_receive(c: &mut Criterion) {
    let clients = 1000;
    let visible = 100;
    let config = TransformConfig::default();
    let mut world = World::new(clients);
    let mut server = ClientReplicator::new(config.clone(), None).expect("config");
    let mut cores: Vec<ClientCore> = (0..clients)
        .map(|_| {
            let mut core = joined_client(&config, &world.samples);
            core.set_interpolation(false);
            core
        })
        .collect();
    let mut out = Vec::new();
    let mut tick = 1;
    let mut feed = |cores: &mut [ClientCore], world: &mut World, tick: &mut u64| {
        world.step();
        client_tick_of(
            &mut server,
            &world.samples[..visible],
            *tick,
            None,
            &mut out,
        );
        let now = Time(*tick * TICK_US + 50_000);
        *tick += 1;
        let start = Instant::now();
        for core in cores.iter_mut() {
            for d in &out {
                core.handle_datagram(d, now);
            }
        }
        start.elapsed()
    };
    for _ in 0..30 {
        feed(&mut cores, &mut world, &mut tick);
    }
    assert!(cores.iter().all(|c| c.datagrams_rejected() == 0));
    let mut group = c.benchmark_group("many_clients_receive");
    group.sample_size(10);
    group.bench_function("1000_headless_clients_x_100_moving", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| feed(&mut cores, &mut world, &mut tick))
                .sum()
        })
    });
    group.finish();
    assert!(cores.iter().all(|c| c.datagrams_rejected() == 0));
}

criterion_group!(
    benches,
    bench_one_entity,
    bench_client,
    bench_server,
    bench_server_spread,
    bench_client_receive,
    bench_many_clients_receive
);
criterion_main!(benches);
