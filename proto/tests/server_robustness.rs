//! The server core under hostile input: random valid messages, random garbage and random
//! disconnects from many peers. It must never panic, and after every step its invariants hold:
//! every session has its player entity, closed connections belong to no session, and chat stays
//! within its limit. Some seeds run the ticks in small steps, so a tick is still under way while
//! input, connects and disconnects arrive.

use neonet_proto::rng::Rng;
use neonet_proto::server::{
    ConnId, InsecureTokens, ServerConfig, ServerCore, Transmit, TransportKind, World,
};
use neonet_proto::sim::run_seeds;
use neonet_proto::time::Time;
use neonet_proto::types::*;
use neonet_proto::wire::codec;
use neonet_proto::wire::limits::CHAT_HISTORY_LEN;
use neonet_proto::wire::msg::{Channel, ClientMsg, PROTOCOL_VERSION};

fn random_string(rng: &mut Rng, max: u64) -> String {
    let n = rng.below(max + 1);
    (0..n)
        .map(|_| char::from(b'a' + rng.below(26) as u8))
        .collect()
}

fn random_msg(rng: &mut Rng, entities: &[EntityId]) -> ClientMsg {
    let req = ReqId(rng.next_u64() as u32);
    let entity = if entities.is_empty() || rng.chance(0.1) {
        EntityId(rng.below(1000) as u32)
    } else {
        entities[rng.below(entities.len() as u64) as usize]
    };
    let bp = BlueprintId(["cube", "ball", "x"][rng.below(3) as usize].into());
    match rng.below(17) {
        0 => ClientMsg::Hello {
            protocol_version: PROTOCOL_VERSION,
            name: random_string(rng, 80),
            token: None,
        },
        1 => ClientMsg::Ping {
            client_time_us: rng.next_u64(),
        },
        2 => ClientMsg::Command {
            req,
            args: (0..rng.below(3))
                .map(|_| {
                    [
                        "chat", "clear", "spawn", "set", "name", "zz", "kick", "mute", "ban",
                        "unban", "rank", "revoke", "help", "admin", "#1", "1h", "builder",
                    ][rng.below(17) as usize]
                        .into()
                })
                .collect(),
        },
        3 => ClientMsg::Chat {
            req,
            body: random_string(rng, 3000),
        },
        4 => ClientMsg::BlueprintAdd {
            req,
            blueprint: Blueprint {
                id: bp,
                version: rng.below(5) as u32,
                name: random_string(rng, 10),
                ..Default::default()
            },
        },
        5 => ClientMsg::BlueprintModify {
            req,
            id: bp,
            version: rng.below(10) as u32,
            patch: BlueprintPatch {
                name: Some(random_string(rng, 10)),
                ..Default::default()
            },
        },
        6 => ClientMsg::EntityAdd {
            req,
            blueprint: bp,
            transform: Transform {
                position: Vec3::new(rng.f64() as f32, f32::NAN, 0.0),
                ..Default::default()
            },
            props: vec![],
        },
        7 => ClientMsg::EntityAdd {
            req,
            blueprint: bp,
            transform: Transform::default(),
            props: vec![("k".into(), Bytes::from("v"))],
        },
        8 => ClientMsg::EntityModify {
            req,
            id: entity,
            patch: EntityPatch {
                set: vec![(random_string(rng, 5), Bytes::from("v"))],
                ..Default::default()
            },
        },
        9 => ClientMsg::EntityRemove { req, id: entity },
        10 => ClientMsg::EntityEvent {
            entity,
            blueprint_version: rng.below(4) as u32,
            name: random_string(rng, 70),
            data: Bytes::from("d"),
            to: rng.chance(0.5).then_some(entity),
        },
        11 => ClientMsg::PlayerTeleport {
            target: entity,
            position: Vec3::new(1.0, 2.0, 3.0),
            rotation_y: 0.5,
        },
        12 => ClientMsg::SettingsModify {
            req,
            setting: Setting::PlayerLimit(rng.below(20) as u32),
        },
        13 => ClientMsg::ModifyRank {
            req,
            user: UserId(rng.below(10)),
            rank: Rank::Builder,
        },
        14 => ClientMsg::Kick {
            req,
            target: entity,
        },
        15 => ClientMsg::Mute {
            req,
            target: entity,
            muted: rng.chance(0.5),
        },
        _ => ClientMsg::Goodbye,
    }
}

fn check_invariants(core: &ServerCore, seed: u64) {
    for s in core.sessions() {
        let e = core
            .world()
            .entities
            .get(&s.player)
            .unwrap_or_else(|| panic!("seed {seed}: session {:?} lost its player", s.id));
        assert_eq!(e.owner, Some(s.id), "seed {seed}");
    }
    let players = core
        .world()
        .entities
        .values()
        .filter(|e| e.kind == EntityKind::Player)
        .count();
    assert_eq!(
        players,
        core.sessions().count(),
        "seed {seed}: orphan players"
    );
    assert!(core.world().chat.len() <= CHAT_HISTORY_LEN, "seed {seed}");
}

#[test]
fn random_and_garbage_input_never_panics_and_keeps_invariants() {
    run_seeds(0..20, |seed| drive_randomly(seed, |_| {}));
}

/// Every close a driver is told to carry out names its reason and detail, and the peer was
/// sent the same reason and detail in a `Close` frame just before: a driver never has to
/// decode the core's frames to learn why a connection ends.
#[test]
fn every_close_reaches_the_driver_with_its_reason_and_detail() {
    run_seeds(0..20, |seed| {
        let mut last_control: std::collections::HashMap<ConnId, Vec<u8>> = Default::default();
        let mut closes = 0;
        drive_randomly(seed, |t| match t {
            Transmit::Frame {
                conn,
                channel: Channel::Control,
                frame,
            } => {
                last_control.insert(conn, frame[codec::FRAME_HEADER_BYTES..].to_vec());
            }
            Transmit::Close {
                conn,
                reason,
                detail,
            } => {
                closes += 1;
                assert!(
                    !detail.is_empty(),
                    "seed {seed}: a close of {conn:?} without detail"
                );
                let sent = last_control
                    .get(&conn)
                    .map(|body| codec::decode_server(body));
                assert_eq!(
                    sent,
                    Some(Ok(neonet_proto::ServerMsg::Close { reason, detail })),
                    "seed {seed}: the peer was told the same"
                );
            }
            _ => {}
        });
        assert!(closes > 0, "seed {seed}: the random input closed nobody");
    });
}

/// Random connects, disconnects, garbage and random messages against one core for 3,000 steps,
/// checking the invariants after each and handing every transmit to `on_transmit`.
fn drive_randomly(seed: u64, mut on_transmit: impl FnMut(Transmit)) {
    {
        let mut rng = Rng::new(seed);
        let mut world = World::default();
        world.settings.default_rank = if seed % 2 == 0 {
            Rank::Builder
        } else {
            Rank::Visitor
        };
        let mut core = ServerCore::new(
            ServerConfig::default(),
            world,
            Box::new(InsecureTokens),
            Time::ZERO,
        );
        let mut now = Time::ZERO;
        let mut open: Vec<ConnId> = Vec::new();
        let mut next_conn = 1;
        for _ in 0..3000 {
            now += std::time::Duration::from_micros(rng.below(20_000));
            match rng.below(10) {
                0 => {
                    let c = ConnId(next_conn);
                    next_conn += 1;
                    core.handle_connect(c, TransportKind::Sim, now);
                    open.push(c);
                }
                1 if !open.is_empty() => {
                    let i = rng.below(open.len() as u64) as usize;
                    core.handle_disconnect(open.swap_remove(i), now);
                }
                2 if !open.is_empty() => {
                    let c = open[rng.below(open.len() as u64) as usize];
                    let garbage: Vec<u8> =
                        (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect();
                    let ch = Channel::from_u8(rng.below(4) as u8).unwrap();
                    core.handle_frame(c, ch, &garbage, now);
                    core.handle_datagram(c, &garbage, now);
                }
                _ if !open.is_empty() => {
                    let c = open[rng.below(open.len() as u64) as usize];
                    let entities: Vec<EntityId> = core.world().entities.keys().copied().collect();
                    let msg = if rng.chance(0.3) {
                        ClientMsg::Hello {
                            protocol_version: PROTOCOL_VERSION,
                            name: format!("p{}", c.0),
                            token: rng.chance(0.3).then(|| format!("user:{}", rng.below(5))),
                        }
                    } else {
                        random_msg(&mut rng, &entities)
                    };
                    let body = codec::encode(&msg);
                    core.handle_frame(c, msg.channel(), &body, now);
                }
                _ => {}
            }
            if seed % 4 == 3 {
                // One step of a few clients at a time: ticks stay under way across inputs,
                // connects and disconnects.
                core.handle_timeout_step(now, 1 + rng.below(3) as usize);
            } else {
                core.handle_timeout(now);
            }
            while let Some(t) = core.poll_transmit() {
                on_transmit(t);
            }
            while core.poll_event().is_some() {}
            while core.poll_effect().is_some() {}
            check_invariants(&core, seed);
        }
    }
}

#[test]
fn a_connection_that_never_joins_is_closed_after_the_join_timeout_and_a_joined_one_is_not() {
    use neonet_proto::wire::msg::CloseReason;
    // An idle timeout longer than the join timeout, so the join timeout is what closes.
    let config = ServerConfig {
        idle_timeout: std::time::Duration::from_secs(30),
        ..ServerConfig::default()
    };
    let join_timeout = config.join_timeout;
    let idle_timeout = config.idle_timeout;
    let mut core = ServerCore::new(
        config,
        World::default(),
        Box::new(InsecureTokens),
        Time::ZERO,
    );
    let (silent, joiner) = (ConnId(1), ConnId(2));
    core.handle_connect(silent, TransportKind::Sim, Time::ZERO);
    core.handle_connect(joiner, TransportKind::Sim, Time::ZERO);
    let hello = ClientMsg::Hello {
        protocol_version: PROTOCOL_VERSION,
        name: "j".into(),
        token: None,
    };
    core.handle_frame(joiner, hello.channel(), &codec::encode(&hello), Time::ZERO);
    let mut closed = Vec::new();
    let mut now = Time::ZERO;
    // The joiner keeps talking; the silent one says nothing (its transport may keep the
    // connection alive without the core hearing anything), past the join timeout but well
    // before the idle timeout.
    while now.as_micros() <= join_timeout.as_micros() as u64 + 1_000_000 {
        now += std::time::Duration::from_millis(100);
        let ping = ClientMsg::Ping {
            client_time_us: now.as_micros(),
        };
        core.handle_frame(joiner, ping.channel(), &codec::encode(&ping), now);
        core.handle_timeout(now);
        while let Some(t) = core.poll_transmit() {
            if let Transmit::Close {
                conn,
                reason,
                detail,
            } = t
            {
                assert_eq!(detail, "did not join in time", "the close says why");
                closed.push((conn, reason, now));
            }
        }
    }
    assert_eq!(closed.len(), 1, "{closed:?}");
    let (conn, reason, at) = closed[0];
    assert_eq!((conn, reason), (silent, CloseReason::Timeout));
    assert!(
        at.as_micros() > join_timeout.as_micros() as u64,
        "not before the timeout"
    );
    assert!(
        at.as_micros() < idle_timeout.as_micros() as u64,
        "by the join timeout, not the idle timeout"
    );
}
