//! The worked datagram examples of PROTOCOL.md section 12, pinned byte for byte: the default
//! `TransformConfig`, two entities, three ticks with acknowledgements between them (an absolute
//! datagram, a delta datagram, a predicted delta datagram), plus a client → server datagram.
//! If this test fails, PROTOCOL.md section 12 and the codec disagree: fix one of them on purpose.
//!
//! To print the bytes: `NEONET_PRINT_GOLDEN=1 cargo test -p neonet-proto --test datagram_doc -- --nocapture`.

use neonet_proto::time::Tick;
use neonet_proto::transform::{
    decode_client_datagram, encode_client_datagram, AckHeader, ClientReplicator, EntitySample,
    Freshness, QRot, QTransform, ReplicaReceiver, Seq, TickInput, TransformConfig,
};
use neonet_proto::types::{EntityId, Quat, Transform, Vec3};
use neonet_proto::Time;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let d: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    d.chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
        .collect()
}

const S: f32 = std::f32::consts::FRAC_1_SQRT_2;

fn t(position: [f32; 3], rotation: [f32; 4]) -> Transform {
    Transform {
        position: position.into(),
        rotation: Quat::from_array(rotation),
        scale: None,
    }
}

/// Entity 1 at (1, 2, 3), identity; it moves +5 steps (5/512 m) along x per tick from tick 101.
fn e1(tick: u64) -> Transform {
    let x = 1.0 + (tick - 100) as f32 * 5.0 / 512.0;
    t([x, 2.0, 3.0], [0.0, 0.0, 0.0, 1.0])
}

/// Entity 2 at (-10.5, 0, 20.25), turned 90° about +y; it never moves.
fn e2() -> Transform {
    t([-10.5, 0.0, 20.25], [0.0, S, 0.0, S])
}

/// Tick 100, seq 0: both entities absolute (no baseline yet).
const DGRAM_TICK_100: &str = "01 0000 64 00 00 02 12400001080130c0010410c002ac1f00208028188000fe0f";
/// Tick 101, seq 1: entity 1 as a delta (+5 steps on x) against tick 100; entity 2 unchanged
/// and acknowledged, so not sent.
const DGRAM_TICK_101: &str = "01 0100 65 00 01 01 5a5300";
/// Tick 102, seq 2: entity 1 predicted from its motion (+5 steps per tick), zero residual.
const DGRAM_TICK_102: &str = "01 0200 66 00 01 01 3a";

#[test]
fn server_datagrams_of_the_worked_example() {
    let config = TransformConfig::default();
    let mut tx = ClientReplicator::new(config.clone(), None).unwrap();
    let mut rx = ReplicaReceiver::new(&config).unwrap();
    let qz = rx.quantizer().clone();
    let print = std::env::var_os("NEONET_PRINT_GOLDEN").is_some();
    let expected = [DGRAM_TICK_100, DGRAM_TICK_101, DGRAM_TICK_102];
    for (i, tick) in [100u64, 101, 102].into_iter().enumerate() {
        let now = Time::from_millis(1000 + 33 * i as u64);
        let entities = [
            EntitySample::new(EntityId(1), &e1(tick), &qz),
            EntitySample::new(EntityId(2), &e2(), &qz),
        ];
        let input = TickInput {
            tick: Tick(tick),
            now,
            viewer: None,
            entities: &entities,
            max_datagram_size: 1200,
            own_blob: None,
        };
        let mut out = Vec::new();
        tx.write_tick(&input, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let d = &out[0];
        if print {
            println!("tick {tick}: {}", hex(d));
        }
        if !print {
            assert_eq!(hex(d), hex(&unhex(expected[i])), "tick {tick}");
        }
        let rt = rx.handle_datagram(d, now).unwrap();
        assert_eq!(rt.freshness, Freshness::Applied);
        assert!(rt.acked);
        let expected_ids = if tick == 100 {
            vec![EntityId(1), EntityId(2)]
        } else {
            vec![EntityId(1)]
        };
        assert_eq!(rt.updated, expected_ids);
        // The positions are multiples of 1/512 m: they come back exactly.
        assert_eq!(
            rx.latest(EntityId(1)).unwrap().1.position,
            e1(tick).position
        );
        // A duplicate is ignored.
        assert_eq!(
            rx.handle_datagram(d, now).unwrap().freshness,
            Freshness::Duplicate
        );
        for e in &entities {
            if rt.updated.contains(&e.id) {
                assert_eq!(rx.latest_quantized(e.id), Some((Tick(tick), e.q)));
            }
        }
        let ack = rx.ack_header();
        assert_eq!(ack.latest, Seq(i as u16));
        assert_eq!(ack.received, (1u64 << (i + 1)) - 1);
        if print {
            let mut b = Vec::new();
            ack.encode(&mut b);
            println!("ack after tick {tick}: {}", hex(&b));
        }
        assert_eq!(
            tx.handle_ack(&ack, now + std::time::Duration::from_millis(20)),
            1
        );
    }
}

/// Ack (latest 1, bits 0b11), seq 5, a 20-byte input blob, entity 2's absolute transform.
const CLIENT_DGRAM: &str = "02 0100 0300000000000000 0500 14 01 6700000000000000 02 007f000000 \
                            007f000001 01 0500d60f401040140c4000ff07";
/// The 39-byte own-player state blob.
const OWN_STATE: &str = "01 6600000000000000 6500000000000000 01 00060000 00000000 00f8ffff \
                         0000 00ff 8004 0040 01";

#[test]
fn client_datagram_of_the_worked_example() {
    use neonet_proto::predict::wire::{decode_inputs, encode_inputs};
    use neonet_proto::predict::CharacterInput;
    let config = TransformConfig::default();
    let rx = ReplicaReceiver::new(&config).unwrap();
    let qz = rx.quantizer().clone();
    let print = std::env::var_os("NEONET_PRINT_GOLDEN").is_some();
    // The ack the receiver above sends after tick 101: newest seq 1, seqs 0 and 1 received.
    let ack = AckHeader {
        latest: Seq(1),
        received: 0b11,
    };
    // Two inputs, for ticks 103 and 104: forward at yaw 0, the second also running.
    let walk = CharacterInput {
        move_z: 127,
        ..Default::default()
    };
    let run = CharacterInput { run: true, ..walk };
    let inputs = encode_inputs(Tick(103), &[walk, run]);
    // An app this client is moving (entity 2 of the server example, lifted 1 m).
    let moved = qz.quantize(&t([-10.5, 1.0, 20.25], [0.0, S, 0.0, S]));
    let mut out = Vec::new();
    encode_client_datagram(
        &qz,
        &ack,
        Seq(5),
        &inputs,
        &[(EntityId(2), moved)],
        &mut out,
    )
    .unwrap();
    if print {
        println!("client datagram: {}", hex(&out));
    }
    if !print {
        assert_eq!(hex(&out), hex(&unhex(CLIENT_DGRAM)));
    }
    let d = decode_client_datagram(&qz, &out).unwrap();
    assert_eq!(d.ack, ack);
    assert_eq!(d.seq, Seq(5));
    assert_eq!(d.owned, vec![(EntityId(2), moved)]);
    assert_eq!(
        moved,
        QTransform {
            pos: [518_912, 33_280, 534_656],
            rot: QRot {
                largest: 1,
                comps: [512, 512, 1023]
            },
            scale: None
        }
    );
    let batch = decode_inputs(&d.input_blob).unwrap();
    assert_eq!(batch.first_tick, Tick(103));
    assert_eq!(batch.inputs, vec![walk, run]);
}

/// Tick 103, seq 3: entity 1 stopped where it was at tick 102 and entity 2 is unchanged, both
/// acknowledged: nothing to send but the clock echo of a client datagram stamped 2 s on the
/// client's clock, held 20 ms, written 1.5 ms into tick 103.
const DGRAM_TICK_103_ECHO: &str = "01 0300 67 02 80897a a09c01 dc0b 00 00";
/// `CLIENT_DGRAM` as kind 0x03, stamped 2 s (2 000 000 µs) on the client's clock.
const CLIENT_DGRAM_CLOCK: &str = "03 0100 0300000000000000 0500 80897a 14 01 6700000000000000 02 \
                                  007f000000 007f000001 01 0500d60f401040140c4000ff07";

#[test]
fn clock_echo_of_the_worked_example() {
    use neonet_proto::transform::{encode_client_datagram_clocked, ClockEcho};
    let config = TransformConfig::default();
    let mut tx = ClientReplicator::new(config.clone(), None).unwrap();
    let mut rx = ReplicaReceiver::new(&config).unwrap();
    let qz = rx.quantizer().clone();
    let print = std::env::var_os("NEONET_PRINT_GOLDEN").is_some();
    let echo = ClockEcho {
        client_time_us: 2_000_000,
        hold_us: 20_000,
        phase_us: 1_500,
    };
    for (i, tick) in [100u64, 101, 102, 103].into_iter().enumerate() {
        let now = Time::from_millis(1000 + 33 * i as u64);
        let entities = [
            EntitySample::new(EntityId(1), &e1(tick.min(102)), &qz),
            EntitySample::new(EntityId(2), &e2(), &qz),
        ];
        let input = TickInput {
            tick: Tick(tick),
            now,
            viewer: None,
            entities: &entities,
            max_datagram_size: 1200,
            own_blob: None,
        };
        if tick == 103 {
            tx.set_clock_echo(echo);
        }
        let mut out = Vec::new();
        tx.write_tick(&input, &mut out).unwrap();
        assert_eq!(out.len(), 1, "tick {tick}");
        let rt = rx.handle_datagram(&out[0], now).unwrap();
        tx.handle_ack(&rx.ack_header(), now);
        if tick < 103 {
            assert_eq!(rt.echo, None);
            continue;
        }
        if print {
            println!("tick 103 with an echo: {}", hex(&out[0]));
        } else {
            assert_eq!(hex(&out[0]), hex(&unhex(DGRAM_TICK_103_ECHO)));
        }
        assert_eq!(rt.echo, Some(echo));
        assert!(rt.updated.is_empty() && rt.acked);
        // The echo goes once: the next tick, with nothing to send, sends nothing.
        let input = TickInput {
            tick: Tick(104),
            ..input
        };
        out.clear();
        tx.write_tick(&input, &mut out).unwrap();
        assert!(out.is_empty());
    }
    // The client datagram that asked for it.
    let ack = AckHeader {
        latest: Seq(1),
        received: 0b11,
    };
    let walk = neonet_proto::predict::CharacterInput {
        move_z: 127,
        ..Default::default()
    };
    let run = neonet_proto::predict::CharacterInput { run: true, ..walk };
    let inputs = neonet_proto::predict::wire::encode_inputs(Tick(103), &[walk, run]);
    let moved = qz.quantize(&t([-10.5, 1.0, 20.25], [0.0, S, 0.0, S]));
    let mut out = Vec::new();
    encode_client_datagram_clocked(
        &qz,
        &ack,
        Seq(5),
        Some(2_000_000),
        &inputs,
        &[(EntityId(2), moved)],
        &mut out,
    )
    .unwrap();
    if print {
        println!("client datagram with its clock: {}", hex(&out));
    } else {
        assert_eq!(hex(&out), hex(&unhex(CLIENT_DGRAM_CLOCK)));
    }
    let d = decode_client_datagram(&qz, &out).unwrap();
    assert_eq!(d.client_time_us, Some(2_000_000));
    assert_eq!((d.seq, d.owned.len()), (Seq(5), 1));
    // Kind 0x02 carries no clock.
    encode_client_datagram(&qz, &ack, Seq(5), &inputs, &[], &mut out).unwrap();
    assert_eq!(
        decode_client_datagram(&qz, &out).unwrap().client_time_us,
        None
    );
}

#[test]
fn own_state_blob_of_the_worked_example() {
    use neonet_proto::predict::wire::{decode_own_state, encode_own_state, OwnState};
    use neonet_proto::predict::CharacterState;
    let s = OwnState {
        server_tick: Tick(102),
        last_input_tick: Some(Tick(101)),
        teleport_seq: 1,
        state: CharacterState {
            position: Vec3::new(1.5, 0.0, -2.0),
            velocity: Vec3::new(0.0, -1.0, 4.5),
            yaw: 16_384,
            grounded: true,
        },
    };
    let b = encode_own_state(&s);
    assert_eq!(b.len(), 39);
    if std::env::var_os("NEONET_PRINT_GOLDEN").is_some() {
        println!("own state: {}", hex(&b));
    } else {
        assert_eq!(hex(&b), hex(&unhex(OWN_STATE)));
    }
    assert_eq!(decode_own_state(&b).unwrap(), s);
}

#[test]
fn protocol_md_shows_the_pinned_bytes_and_values() {
    let doc: String = include_str!("../PROTOCOL.md")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    for h in [
        DGRAM_TICK_100,
        DGRAM_TICK_101,
        DGRAM_TICK_102,
        CLIENT_DGRAM,
        OWN_STATE,
        DGRAM_TICK_103_ECHO,
        CLIENT_DGRAM_CLOCK,
    ] {
        let h: String = h.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(doc.contains(&h), "PROTOCOL.md section 12.9 lacks {h}");
    }
    let qz = ReplicaReceiver::new(&TransformConfig::default())
        .unwrap()
        .quantizer()
        .clone();
    assert_eq!(qz.position_bits(), [20, 18, 20]);
    assert_eq!(
        qz.quantize(&e1(100)),
        QTransform {
            pos: [524_800, 33_792, 525_824],
            rot: QRot {
                largest: 3,
                comps: [512, 512, 512]
            },
            scale: None
        }
    );
    assert_eq!(
        qz.quantize(&e2()),
        QTransform {
            pos: [518_912, 32_768, 534_656],
            rot: QRot {
                largest: 1,
                comps: [512, 512, 1023]
            },
            scale: None
        }
    );
}
