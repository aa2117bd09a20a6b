//! Prints the JSON test vectors of the browser client (`web/neonet/test/vectors.json`): the
//! movement model, quantization and a lossy transform stream, so the JavaScript port can be
//! checked bit for bit against this crate. Every `f32` is printed as its bit pattern (`u32`).
//!
//! ```text
//! cargo run -p neonet-proto --example js_vectors --features sim > web/neonet/test/vectors.json
//! ```
// The committed fixture (web/neonet/test/vectors.json) holds exactly these draws: `6.28` (not
// TAU) and the per-axis index loops are kept as written so a rerun reproduces it byte for byte.
#![allow(
    clippy::approx_constant,
    clippy::needless_range_loop,
    clippy::manual_memcpy,
    clippy::unnecessary_lazy_evaluations
)]

use neonet_proto::predict::movement::{sin_cos_u16, yaw_to_quat};
use neonet_proto::predict::wire::{encode_own_state, OwnState};
use neonet_proto::predict::{
    CharacterConfig, CharacterInput, CharacterState, KinematicCharacter, Movement,
};
use neonet_proto::rng::Rng;
use neonet_proto::time::Tick;
use neonet_proto::transform::{
    ClientReplicator, ClockEcho, EntitySample, Freshness, QTransform, Quantizer, ReplicaReceiver,
    TickInput, TransformConfig,
};
use neonet_proto::types::{EntityId, Quat, Transform, Vec3};
use neonet_proto::Time;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bits(v: &[f32]) -> String {
    let s: Vec<String> = v.iter().map(|f| f.to_bits().to_string()).collect();
    format!("[{}]", s.join(","))
}

fn state_json(s: &CharacterState) -> String {
    format!(
        "{{\"position\":{},\"velocity\":{},\"yaw\":{},\"grounded\":{}}}",
        bits(&s.position.to_array()),
        bits(&s.velocity.to_array()),
        s.yaw,
        s.grounded
    )
}

fn input_json(i: &CharacterInput) -> String {
    format!(
        "{{\"move_x\":{},\"move_z\":{},\"yaw\":{},\"run\":{},\"jump\":{}}}",
        i.move_x, i.move_z, i.yaw, i.run, i.jump
    )
}

fn config_json(c: &CharacterConfig) -> String {
    format!(
        "{{\"walk_speed_mps\":{},\"run_speed_mps\":{},\"ground_accel_mps2\":{},\"air_accel_mps2\":{},\"jump_speed_mps\":{},\"gravity_mps2\":{},\"fall_speed_max_mps\":{},\"ground_y\":{},\"bounds_min\":{},\"bounds_max\":{}}}",
        c.walk_speed_mps.to_bits(),
        c.run_speed_mps.to_bits(),
        c.ground_accel_mps2.to_bits(),
        c.air_accel_mps2.to_bits(),
        c.jump_speed_mps.to_bits(),
        c.gravity_mps2.to_bits(),
        c.fall_speed_max_mps.to_bits(),
        c.ground_y.to_bits(),
        bits(&c.bounds_min.to_array()),
        bits(&c.bounds_max.to_array())
    )
}

fn q_json(q: &QTransform) -> String {
    let scale = match q.scale {
        Some(s) => format!("[{},{},{}]", s[0], s[1], s[2]),
        None => "null".into(),
    };
    format!(
        "{{\"pos\":[{},{},{}],\"largest\":{},\"comps\":[{},{},{}],\"scale\":{}}}",
        q.pos[0],
        q.pos[1],
        q.pos[2],
        q.rot.largest,
        q.rot.comps[0],
        q.rot.comps[1],
        q.rot.comps[2],
        scale
    )
}

fn t_json(t: &Transform) -> String {
    format!(
        "{{\"position\":{},\"rotation\":{},\"scale\":{}}}",
        bits(&t.position.to_array()),
        bits(&t.rotation.to_array()),
        t.scale.map_or("null".into(), |s| bits(&s.to_array()))
    )
}

fn tconfig_json(c: &TransformConfig) -> String {
    let w = &c.weights;
    format!(
        "{{\"bounds_min\":{},\"bounds_max\":{},\"position_steps_per_m\":{},\"rotation_bits\":{},\"scale_enabled\":{},\"scale_steps_per_unit\":{},\"tick_hz\":{},\"budget_bits_per_s\":{},\"interest_radius_m\":{},\"interest_hysteresis_m\":{},\"weights\":{{\"base\":{},\"distance_half_m\":{},\"moving\":{},\"owned_by_viewer\":{},\"left_notice\":{}}}}}",
        bits(&c.bounds_min.to_array()),
        bits(&c.bounds_max.to_array()),
        c.position_steps_per_m,
        c.rotation_bits,
        c.scale_enabled,
        c.scale_steps_per_unit,
        c.tick_hz,
        c.budget_bits_per_s,
        c.interest_radius_m.to_bits(),
        c.interest_hysteresis_m.to_bits(),
        w.base.to_bits(),
        w.distance_half_m.to_bits(),
        w.moving.to_bits(),
        w.owned_by_viewer.to_bits(),
        w.left_notice.to_bits()
    )
}

fn movement() -> String {
    let mut out = Vec::new();
    let sc: Vec<String> = (0..=u16::MAX)
        .step_by(331)
        .chain([16383, 16384, 32768, 49152, 65535])
        .map(|y| {
            let (s, c) = sin_cos_u16(y);
            format!("[{y},{},{}]", s.to_bits(), c.to_bits())
        })
        .collect();
    out.push(format!("\"sin_cos\":[{}]", sc.join(",")));
    let yq: Vec<String> = (0..=u16::MAX)
        .step_by(251)
        .chain([1, 3, 65535, 32767, 32769])
        .map(|y| format!("[{y},{}]", bits(&yaw_to_quat(y).to_array())))
        .collect();
    out.push(format!("\"yaw_to_quat\":[{}]", yq.join(",")));

    let mut runs = Vec::new();
    // The determinism test's inputs, default config, 30 Hz.
    let m = KinematicCharacter::default();
    let start = m.spawn(Vec3::new(1.0, 0.0, 2.0), 0);
    let inputs: Vec<CharacterInput> = (0..150u32)
        .map(|i| CharacterInput {
            move_x: (i % 255) as u8 as i8,
            move_z: 100,
            yaw: (i * 977) as u16,
            run: i % 3 == 0,
            jump: i % 40 == 0,
        })
        .collect();
    runs.push(run_json(&m, [1.0, 0.0, 2.0], 0, start, &inputs, 1.0 / 30.0));
    // A small world with a raised ground, 60 Hz, random inputs (-128 included), walls hit.
    let cfg = CharacterConfig {
        walk_speed_mps: 3.5,
        run_speed_mps: 9.25,
        ground_accel_mps2: 45.0,
        air_accel_mps2: 11.0,
        jump_speed_mps: 7.3,
        gravity_mps2: 9.81,
        fall_speed_max_mps: 20.0,
        ground_y: 1.25,
        bounds_min: Vec3::new(-3.0, -10.0, -2.5),
        bounds_max: Vec3::new(4.0, 3.0, 5.5),
    };
    let m2 = KinematicCharacter::new(cfg);
    let mut rng = Rng::new(7);
    let inputs: Vec<CharacterInput> = (0..200)
        .map(|_| CharacterInput {
            move_x: rng.below(256) as u8 as i8,
            move_z: rng.below(256) as u8 as i8,
            yaw: rng.below(65536) as u16,
            run: rng.chance(0.5),
            jump: rng.chance(0.1),
        })
        .collect();
    let start = m2.spawn(Vec3::new(0.3, -5.0, 0.7), 12345);
    runs.push(run_json(
        &m2,
        [0.3, -5.0, 0.7],
        12345,
        start,
        &inputs,
        1.0 / 60.0,
    ));
    // Airborne start (a state that is not grounded), odd dt values.
    let start = m.quantize(&CharacterState {
        position: Vec3::new(10.123, 40.5, -7.77),
        velocity: Vec3::new(3.0, 12.0, -1.5),
        yaw: 40000,
        grounded: false,
    });
    let inputs: Vec<CharacterInput> = (0..120)
        .map(|_| CharacterInput {
            move_x: rng.below(256) as u8 as i8,
            move_z: rng.below(256) as u8 as i8,
            yaw: rng.below(65536) as u16,
            run: rng.chance(0.3),
            jump: rng.chance(0.05),
        })
        .collect();
    runs.push(run_json(
        &m,
        [10.123, 40.5, -7.77],
        40000,
        start,
        &inputs,
        1.0 / 24.0,
    ));
    out.push(format!("\"runs\":[{}]", runs.join(",")));
    let transforms: Vec<String> = [0u16, 1, 12345, 65535]
        .iter()
        .map(|&y| {
            let s = m.spawn(Vec3::new(1.5, 0.0, -2.0), y);
            format!("{{\"yaw\":{y},\"transform\":{}}}", t_json(&m.transform(&s)))
        })
        .collect();
    out.push(format!("\"transforms\":[{}]", transforms.join(",")));
    format!("{{{}}}", out.join(","))
}

fn run_json(
    m: &KinematicCharacter,
    spawn_at: [f32; 3],
    spawn_yaw: u16,
    start: CharacterState,
    inputs: &[CharacterInput],
    dt: f32,
) -> String {
    let mut s = start;
    let mut states = Vec::new();
    for i in inputs {
        s = m.step(&s, i, dt);
        states.push(state_json(&s));
    }
    let ins: Vec<String> = inputs.iter().map(input_json).collect();
    format!(
        "{{\"config\":{},\"spawn\":{{\"position\":{},\"yaw\":{spawn_yaw}}},\"start\":{},\"dt\":{},\"inputs\":[{}],\"states\":[{}]}}",
        config_json(&m.config),
        bits(&spawn_at),
        state_json(&start),
        dt.to_bits(),
        ins.join(","),
        states.join(",")
    )
}

fn custom_config() -> TransformConfig {
    TransformConfig {
        bounds_min: Vec3::new(-50.0, -5.5, -40.0),
        bounds_max: Vec3::new(60.0, 30.0, 45.0),
        position_steps_per_m: 1000,
        rotation_bits: 12,
        scale_enabled: true,
        scale_steps_per_unit: 100,
        interest_radius_m: 20.0,
        interest_hysteresis_m: 4.0,
        ..TransformConfig::default()
    }
}

fn random_transform(rng: &mut Rng, c: &TransformConfig) -> Transform {
    let mut p = [0.0f32; 3];
    for a in 0..3 {
        let (lo, hi) = (c.bounds_min[a] as f64, c.bounds_max[a] as f64);
        let span = hi - lo;
        p[a] = rng.range_f64(lo - 0.05 * span, hi + 0.05 * span) as f32;
    }
    let mut r = [0.0f32; 4];
    for v in &mut r {
        *v = rng.range_f64(-1.0, 1.0) as f32;
    }
    if rng.chance(0.1) {
        r = [0.0, 0.0, 0.0, 0.0];
    }
    let scale = rng
        .chance(0.5)
        .then(|| [0, 1, 2].map(|_| rng.range_f64(-1.0, 70.0) as f32));
    Transform {
        position: p.into(),
        rotation: Quat::from_array(r),
        scale: scale.map(Vec3::from_array),
    }
}

fn quant() -> String {
    let mut cases = Vec::new();
    for (seed, c) in [(1u64, TransformConfig::default()), (2, custom_config())] {
        let qz = Quantizer::new(&c).unwrap();
        let mut rng = Rng::new(seed);
        let mut items = Vec::new();
        let mut ts: Vec<Transform> = (0..150).map(|_| random_transform(&mut rng, &c)).collect();
        let s = std::f32::consts::FRAC_1_SQRT_2;
        ts.push(Transform {
            position: c.bounds_max,
            rotation: Quat::from_xyzw(0.0, s, 0.0, s),
            scale: None,
        });
        ts.push(Transform {
            position: c.bounds_min,
            rotation: Quat::from_xyzw(-0.5, 0.5, -0.5, 0.5),
            scale: Some(Vec3::splat(64.0)),
        });
        ts.push(Transform {
            position: Vec3::new(f32::NAN, f32::INFINITY, f32::NEG_INFINITY),
            rotation: Quat::from_xyzw(f32::NAN, 0.0, 0.0, 1.0),
            scale: Some(Vec3::new(f32::NAN, 1.0, 0.5)),
        });
        for t in &ts {
            let q = qz.quantize(t);
            items.push(format!(
                "{{\"in\":{},\"q\":{},\"out\":{}}}",
                t_json(t),
                q_json(&q),
                t_json(&qz.dequantize(&q))
            ));
        }
        cases.push(format!(
            "{{\"config\":{},\"position_bits\":{:?},\"position_max\":{:?},\"scale_bits\":{},\"items\":[{}]}}",
            tconfig_json(&c),
            qz.position_bits(),
            qz.position_max(),
            qz.scale_bits(),
            items.join(",")
        ));
    }
    format!("[{}]", cases.join(","))
}

/// A lossy, reordering, duplicating transform stream from a real `ClientReplicator` to a real
/// `ReplicaReceiver`, recording every delivery and what the receiver made of it.
// One vector generator's knobs, each a plain value: a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn stream(
    seed: u64,
    config: TransformConfig,
    count: u32,
    ticks: u64,
    max_size: usize,
    viewer: bool,
    own_blob: bool,
    echoes: bool,
) -> String {
    let mut rng = Rng::new(seed);
    let mut tx = ClientReplicator::new(config.clone(), None).unwrap();
    let mut rx = ReplicaReceiver::new(&config).unwrap();
    let qz = rx.quantizer().clone();
    let mut pos: Vec<[f32; 3]> = Vec::new();
    let mut vel: Vec<[f32; 3]> = Vec::new();
    let mut yaw: Vec<f32> = Vec::new();
    let mut spin: Vec<f32> = Vec::new();
    for _ in 0..count {
        let mut p = [0.0f32; 3];
        for a in 0..3 {
            let lo = config.bounds_min[a] as f64;
            let hi = config.bounds_max[a] as f64;
            let mid = (lo + hi) / 2.0;
            let span = ((hi - lo) / 4.0).min(40.0);
            p[a] = rng.range_f64(mid - span, mid + span) as f32;
        }
        pos.push(p);
        let moving = rng.chance(0.6);
        vel.push(if moving {
            [0, 1, 2].map(|_| rng.range_f64(-0.3, 0.3) as f32)
        } else {
            [0.0; 3]
        });
        yaw.push(rng.range_f64(0.0, 6.28) as f32);
        spin.push(if rng.chance(0.5) {
            rng.range_f64(-0.2, 0.2) as f32
        } else {
            0.0
        });
    }
    let mut pending: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut deliveries = Vec::new();
    let mut lows = [0f32; 3];
    let mut highs = [0f32; 3];
    for a in 0..3 {
        lows[a] = config.bounds_min[a];
        highs[a] = config.bounds_max[a];
    }
    for tick in 1..=ticks {
        let now = Time::from_millis(1000 + tick * 33);
        let mut entities = Vec::new();
        for i in 0..count as usize {
            for a in 0..3 {
                pos[i][a] = (pos[i][a] + vel[i][a]).clamp(lows[a], highs[a]);
            }
            if rng.chance(0.02) {
                pos[i][0] += 7.0; // a jump
            }
            if rng.chance(0.05) {
                vel[i] = [0, 1, 2].map(|_| rng.range_f64(-0.3, 0.3) as f32);
            }
            yaw[i] += spin[i];
            let h = yaw[i] / 2.0;
            let t = Transform {
                position: pos[i].into(),
                rotation: Quat::from_xyzw(0.0, h.sin(), 0.0, h.cos()),
                scale: config
                    .scale_enabled
                    .then(|| Vec3::new(1.0 + (i as f32) * 0.25, 1.0, 2.0)),
            };
            entities.push(EntitySample::new(EntityId(i as u32 * 3 + 1), &t, &qz));
        }
        let viewer_at = viewer.then(|| {
            let x = config.bounds_min[0]
                + (config.bounds_max[0] - config.bounds_min[0]) * tick as f32 / ticks as f32;
            Vec3::new(x, 0.0, (config.bounds_min[2] + config.bounds_max[2]) / 2.0)
        });
        let blob = own_blob.then(|| {
            encode_own_state(&OwnState {
                server_tick: Tick(tick),
                last_input_tick: tick.checked_sub(2).map(Tick),
                teleport_seq: (tick / 50) as u8,
                state: CharacterState {
                    position: Vec3::new(tick as f32 * 0.125, 0.0, -1.0),
                    velocity: Vec3::new(0.5, 0.0, 0.0),
                    yaw: (tick * 100) as u16,
                    grounded: true,
                },
            })
        });
        let input = TickInput {
            tick: Tick(tick),
            now,
            viewer: viewer_at,
            entities: &entities,
            max_datagram_size: max_size,
            own_blob: blob.as_deref(),
        };
        if echoes && tick % 4 == 0 {
            // A clock echo every fourth tick (PROTOCOL.md 12.4), values of every varint width.
            tx.set_clock_echo(ClockEcho {
                client_time_us: 990_000 + tick * 33_000,
                hold_us: 7_000 + tick * 11,
                phase_us: tick * 97,
            });
        }
        let mut out = Vec::new();
        tx.write_tick(&input, &mut out).unwrap();
        for d in out {
            if rng.chance(0.12) {
                continue; // lost
            }
            if rng.chance(0.1) {
                pending.push((tick + 1 + rng.below(4), d.clone())); // late
                continue;
            }
            if rng.chance(0.05) {
                pending.push((tick + 1 + rng.below(3), d.clone())); // duplicated later
            }
            pending.push((tick, d));
        }
        let (due, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(at, _)| *at <= tick);
        pending = rest;
        for (_, d) in due {
            let rt = rx.handle_datagram(&d, now).unwrap();
            let fresh = match rt.freshness {
                Freshness::Applied => "Applied",
                Freshness::Duplicate => "Duplicate",
                Freshness::TooOld => "TooOld",
            };
            let updated: Vec<String> = rt
                .updated
                .iter()
                .map(|id| {
                    let (t, q) = rx.latest_quantized(*id).unwrap();
                    format!("{{\"id\":{},\"tick\":{},\"q\":{}}}", id.0, t.0, q_json(&q))
                })
                .collect();
            let left: Vec<String> = rt.left.iter().map(|id| id.0.to_string()).collect();
            let ack = rx.ack_header();
            deliveries.push(format!(
                "{{\"bytes\":\"{}\",\"seq\":{},\"tick\":{},\"freshness\":\"{fresh}\",\"acked\":{},\"own_blob\":{},\"echo\":{},\"updated\":[{}],\"left\":[{}],\"ack\":{{\"latest\":{},\"received\":\"{}\"}}}}",
                hex(&d),
                rt.seq.0,
                rt.tick.0,
                rt.acked,
                rt.own_blob.as_ref().map_or("null".into(), |b| format!("\"{}\"", hex(b))),
                rt.echo.map_or("null".into(), |e| format!(
                    "{{\"client_time_us\":{},\"hold_us\":{},\"phase_us\":{}}}",
                    e.client_time_us, e.hold_us, e.phase_us
                )),
                updated.join(","),
                left.join(","),
                ack.latest.0,
                ack.received
            ));
        }
        if !rng.chance(0.2) {
            tx.handle_ack(&rx.ack_header(), now + std::time::Duration::from_millis(20));
        }
    }
    let finals: Vec<String> = rx
        .iter()
        .map(|(id, tick, t)| {
            format!(
                "{{\"id\":{},\"tick\":{},\"t\":{}}}",
                id.0,
                tick.0,
                t_json(&t)
            )
        })
        .collect();
    format!(
        "{{\"config\":{},\"deliveries\":[{}],\"final\":[{}]}}",
        tconfig_json(&config),
        deliveries.join(","),
        finals.join(",")
    )
}

fn main() {
    let default_stream = stream(
        11,
        TransformConfig::default(),
        32,
        60,
        300,
        false,
        false,
        false,
    );
    let mut viewer_config = custom_config();
    viewer_config.budget_bits_per_s = 64_000;
    let custom_stream = stream(12, viewer_config, 30, 160, 1200, true, true, true);
    println!(
        "{{\"movement\":{},\"quant\":{},\"streams\":[{},{}]}}",
        movement(),
        quant(),
        default_stream,
        custom_stream
    );
}
