//! A game hosting the world over the simulated network: the host's own entities (spawned,
//! moved every tick by its physics, removed) reach the clients through the same streams as
//! client changes; spectators watch without a player; a player standing still costs no
//! own-state bytes; per-connection figures add up to the totals.

use std::collections::BTreeMap;
use std::time::Duration;

use neonet_proto::client::{ClientConfig, ClientEvent};
use neonet_proto::persist::{Change, World};
use neonet_proto::server::{priority, HostError, InsecureTokens, ServerConfig};
use neonet_proto::sim::{run_seeds, LinkConfig, Sim};
use neonet_proto::time::Tick;
use neonet_proto::types::*;

fn cfg(name: &str) -> ClientConfig {
    ClientConfig {
        name: name.into(),
        token: None,
    }
}

fn sim(seed: u64, clients: usize, link: LinkConfig) -> Sim {
    let mut s = Sim::new(
        seed,
        ServerConfig::default(),
        World::default(),
        Box::new(InsecureTokens),
    )
    .with_effects();
    for i in 0..clients {
        s.add_client(cfg(&format!("c{i}")), link.clone(), link.clone());
    }
    s
}

fn period(s: &Sim) -> Duration {
    Duration::from_secs(1) / u32::from(s.server.config().tick_hz)
}

fn cube() -> Blueprint {
    Blueprint {
        id: BlueprintId("cube".into()),
        version: 1,
        name: "Cube".into(),
        ..Default::default()
    }
}

/// A body of the host's own toy physics: falls, bounces off the floor, drifts, and is kicked
/// up every 2 s (a burst of motion, then it settles).
#[derive(Clone, Copy)]
struct Body {
    p: Vec3,
    v: Vec3,
    spin: f32,
}

fn step(bodies: &mut [Body], tick: u64, dt: f32) {
    for (i, b) in bodies.iter_mut().enumerate() {
        if tick % 120 == 0 {
            b.v += Vec3::new((i % 3) as f32 - 1.0, 4.0 + (i % 5) as f32, 0.5);
        }
        b.v.y -= 9.81 * dt;
        b.p += b.v * dt;
        if b.p.y < 0.5 {
            b.p.y = 0.5;
            b.v.y = -b.v.y * 0.5;
            b.v.x *= 0.8;
            b.v.z *= 0.8;
            if b.v.length() < 0.2 {
                b.v = Vec3::ZERO;
            }
        }
        b.spin += b.v.length() * dt;
    }
}

fn transform(b: &Body) -> Transform {
    Transform {
        position: b.p,
        rotation: Quat::from_rotation_y(b.spin),
        scale: None,
    }
}

#[test]
fn clients_see_the_hosts_simulated_bodies_as_quantized_at_every_tick() {
    run_seeds(0..3, |seed| {
        let link = LinkConfig {
            jitter: Duration::from_millis(5),
            loss: 0.05,
            ..LinkConfig::with_latency(Duration::from_millis(30))
        };
        let mut s = sim(seed, 2, link);
        s.server.host_add_blueprint(cube());
        let mut bodies: Vec<Body> = (0..40)
            .map(|i| Body {
                p: Vec3::new((i % 8) as f32 * 2.0, 0.5 + (i / 8) as f32, 5.0),
                v: Vec3::ZERO,
                spin: 0.0,
            })
            .collect();
        let ids: Vec<EntityId> = bodies
            .iter()
            .map(|b| {
                s.server
                    .host_spawn(Some(cube().id), transform(b), vec![])
                    .unwrap()
            })
            .collect();
        let dt = period(&s).as_secs_f32();
        // What the host set for each tick, as the wire carries it (quantized once).
        let mut truth: BTreeMap<u64, Vec<Transform>> = BTreeMap::new();
        let q = s.server.quantizer().clone();
        let mut checked = 0u64;
        for _ in 0..360 {
            let tick = s.server.tick();
            step(&mut bodies, tick.0, dt);
            for (id, b) in ids.iter().zip(&bodies) {
                s.server.host_set_transform(*id, transform(b)).unwrap();
            }
            let row: Vec<Transform> = bodies
                .iter()
                .map(|b| q.dequantize(&q.quantize(&transform(b))))
                .collect();
            s.run_for(period(&s));
            for t in tick.0..s.server.tick().0 {
                truth.insert(t, row.clone());
            }
            if tick.0 < 60 {
                continue; // joining, and the interpolation delay
            }
            for c in 0..2 {
                for (k, id) in ids.iter().enumerate() {
                    let (Tick(at), seen) = s.clients[c]
                        .core
                        .latest_transform(*id)
                        .unwrap_or_else(|| panic!("seed {seed}: client {c} lacks {id:?}"));
                    assert_eq!(
                        seen, truth[&at][k],
                        "seed {seed}: client {c}, {id:?} at tick {at}"
                    );
                    // And current: what the host had at one of the ticks within the largest
                    // interpolation delay (0.35 s, 21 ticks) before now. A body at rest is
                    // not resent, so its tick may be older while its value is still current.
                    let recent = (tick.0.saturating_sub(21)..=tick.0)
                        .any(|t| truth.get(&t).is_some_and(|r| r[k] == seen));
                    assert!(recent, "seed {seed}: client {c}, {id:?} stuck at tick {at}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 20_000, "{checked}");
        // The bodies were persisted as they moved, as apps moved by clients are.
        assert!(s
            .server_effects
            .iter()
            .any(|e| matches!(&e.change, Change::PutEntityState(e) if e.id == ids[0])));
    });
}

#[test]
fn host_spawned_and_removed_entities_appear_and_vanish_in_order_with_their_blueprints() {
    let mut s = sim(4, 1, LinkConfig::hostile());
    s.run_for(Duration::from_secs(1));
    let ball = Blueprint {
        id: BlueprintId("ball".into()),
        version: 1,
        name: "Ball".into(),
        ..Default::default()
    };
    s.server.host_add_blueprint(ball.clone());
    let a = s
        .server
        .host_spawn(Some(ball.id.clone()), Transform::default(), vec![])
        .unwrap();
    let b = s
        .server
        .host_spawn(
            Some(ball.id.clone()),
            Transform::default(),
            vec![("hp".into(), Bytes::from("9"))],
        )
        .unwrap();
    s.server
        .host_modify(
            b,
            EntityPatch {
                set: vec![("hp".into(), Bytes::from("3"))],
                ..Default::default()
            },
        )
        .unwrap();
    s.server
        .host_event(b, "hit".into(), Bytes::from("x"), None)
        .unwrap();
    s.server.host_remove(a).unwrap();
    assert_eq!(s.server.host_remove(a), Err(HostError::NoEntity(a)));
    assert_eq!(
        s.server.host_spawn(
            Some(BlueprintId("none".into())),
            Transform::default(),
            vec![]
        ),
        Err(HostError::NoBlueprint(BlueprintId("none".into())))
    );
    let mut bad = Transform::default();
    bad.position.x = f32::NAN;
    assert!(s.server.host_set_transform(b, bad).is_err());
    s.run_for(Duration::from_secs(3));
    let ev = &s.clients[0].events;
    let at = |e: &ClientEvent| ev.iter().position(|x| x == e).unwrap_or(usize::MAX);
    let bp = at(&ClientEvent::BlueprintAdded(ball.id.clone()));
    let (add_a, add_b) = (
        at(&ClientEvent::EntityAdded(a)),
        at(&ClientEvent::EntityAdded(b)),
    );
    let (modified, removed) = (
        at(&ClientEvent::EntityModified(b)),
        at(&ClientEvent::EntityRemoved(a)),
    );
    assert!(
        bp < add_a && add_a < add_b && add_b < modified && modified < removed,
        "{ev:?}"
    );
    assert!(removed < usize::MAX);
    assert!(ev.iter().any(
        |e| matches!(e, ClientEvent::EntityEvent { entity, name, from: None, .. } if *entity == b && name == "hit")
    ), "{ev:?}");
    let world = s.clients[0].core.world();
    assert!(!world.entities.contains_key(&a));
    let eb = &world.entities[&b];
    assert_eq!(eb.blueprint.as_ref(), Some(&ball.id));
    assert_eq!(eb.props, vec![("hp".to_string(), Bytes::from("3"))]);
    // Persisted in the same order.
    let changes: Vec<&Change> = s.server_effects.iter().map(|e| &e.change).collect();
    let pos = |f: &dyn Fn(&Change) -> bool| changes.iter().position(|c| f(c)).unwrap();
    let put_bp = pos(&|c| matches!(c, Change::PutBlueprint(x) if x.id == ball.id));
    let put_a = pos(&|c| matches!(c, Change::PutEntity(e) if e.id == a));
    let del_a = pos(&|c| matches!(c, Change::DeleteEntity(id) if *id == a));
    assert!(put_bp < put_a && put_a < del_a);
}

#[test]
fn a_global_entity_reaches_a_client_beyond_the_interest_radius_first_by_priority() {
    let mut s = sim(5, 1, LinkConfig::with_latency(Duration::from_millis(20)));
    s.run_for(Duration::from_secs(1));
    let far = Transform {
        position: Vec3::new(900.0, 0.0, 900.0),
        ..Default::default()
    };
    let near = s.server.host_spawn(None, far, vec![]).unwrap();
    let global = s.server.host_spawn(None, far, vec![]).unwrap();
    s.server.host_set_global(global, true).unwrap();
    s.server
        .host_set_priority(global, priority::PLAYER)
        .unwrap();
    assert!(s.server.host_set_priority(global, f32::NAN).is_err());
    s.run_for(Duration::from_secs(1));
    assert!(s.clients[0].core.latest_transform(global).is_some());
    assert!(s.clients[0].core.latest_transform(near).is_none());
}

#[test]
fn a_standing_client_pays_no_own_state_bytes_either_way() {
    run_seeds(0..3, |seed| {
        let link = LinkConfig {
            loss: 0.02,
            ..LinkConfig::with_latency(Duration::from_millis(30))
        };
        let mut s = sim(seed, 2, link);
        // Something moves all along, so transform datagrams and their acks keep flowing.
        let mover = s
            .server
            .host_spawn(None, Transform::default(), vec![])
            .unwrap();
        let walk = neonet_proto::predict::CharacterInput {
            move_z: 127,
            ..Default::default()
        };
        s.with_client(0, |c| c.set_input(walk));
        s.run_for(Duration::from_secs(1));
        s.with_client(0, |c| c.set_input(Default::default()));
        s.run_for(Duration::from_secs(1)); // come to rest
        let conn = s.clients[0].conn;
        let server_before = s.server.conn_figures(conn).unwrap();
        let client_before = s.clients[0].core.figures();
        assert!(server_before.own_state_bytes_down > 0 && client_before.own_state_bytes_up > 0);
        for i in 0..180 {
            let t = Transform {
                position: Vec3::new(i as f32 * 0.05, 0.0, 0.0),
                ..Default::default()
            };
            s.server.host_set_transform(mover, t).unwrap();
            s.run_for(period(&s));
        }
        let server_after = s.server.conn_figures(conn).unwrap();
        let client_after = s.clients[0].core.figures();
        assert!(server_after.datagrams_down > server_before.datagrams_down + 100);
        assert!(client_after.datagrams_up > client_before.datagrams_up);
        assert_eq!(
            server_after.own_state_bytes_down, server_before.own_state_bytes_down,
            "seed {seed}: downstream"
        );
        assert_eq!(
            server_after.own_state_bytes_up, server_before.own_state_bytes_up,
            "seed {seed}: upstream (server)"
        );
        assert_eq!(
            client_after.own_state_bytes_up, client_before.own_state_bytes_up,
            "seed {seed}: upstream (client)"
        );
        assert_eq!(
            client_after.own_state_bytes_down,
            client_before.own_state_bytes_down
        );
        // Walking again costs own-state bytes again, and the client stays in step.
        s.with_client(0, |c| c.set_input(walk));
        s.run_for(Duration::from_secs(1));
        assert!(
            s.server.conn_figures(conn).unwrap().own_state_bytes_down
                > server_after.own_state_bytes_down
        );
        assert!(s.clients[0].core.figures().own_state_bytes_up > client_after.own_state_bytes_up);
        s.with_client(0, |c| c.set_input(Default::default()));
        s.run_for(Duration::from_secs(1));
        let p = s.clients[0].core.player().unwrap();
        let server_at = s.server.world().entities[&p].transform.position;
        let client_at = s.clients[0]
            .core
            .player_transform(s.now())
            .unwrap()
            .position;
        assert!(
            server_at.distance(client_at) < 0.01,
            "seed {seed}: {server_at} vs {client_at}"
        );
    });
}

#[test]
fn per_connection_figures_add_up_to_the_totals() {
    let mut s = sim(6, 3, LinkConfig::with_latency(Duration::from_millis(25)));
    let mover = s
        .server
        .host_spawn(None, Transform::default(), vec![])
        .unwrap();
    s.with_client(1, |c| {
        c.set_input(neonet_proto::predict::CharacterInput {
            move_x: 100,
            ..Default::default()
        })
    });
    s.with_client(2, |c| {
        c.send_chat("hello");
    });
    for i in 0..120 {
        let t = Transform {
            position: Vec3::new(0.0, 0.0, i as f32 * 0.1),
            ..Default::default()
        };
        s.server.host_set_transform(mover, t).unwrap();
        s.run_for(period(&s));
    }
    s.run_for(Duration::from_millis(200)); // everything in flight lands
    let per: Vec<_> = s.server.all_conn_figures().collect();
    assert_eq!(per.len(), 3);
    let total = s.server.figures_total();
    let sum = |f: fn(&neonet_proto::server::ConnFigures) -> u64| {
        per.iter().map(|(_, x)| f(x)).sum::<u64>()
    };
    assert_eq!(sum(|f| f.bytes_down), total.bytes_down);
    assert_eq!(sum(|f| f.bytes_up), total.bytes_up);
    assert_eq!(sum(|f| f.datagrams_down), total.datagrams_down);
    assert_eq!(sum(|f| f.datagrams_up), total.datagrams_up);
    // The core's totals are what the network carried (lossless here): the core counts when it
    // queues, the network when it sends, so these match exactly...
    assert_eq!(
        total.bytes_down,
        s.stats.frame_bytes_down + s.stats.datagram_bytes_down
    );
    let client_up: u64 = s
        .clients
        .iter()
        .map(|c| c.core.figures().datagrams_up)
        .sum();
    assert_eq!(total.datagrams_down + client_up, s.stats.datagrams_sent);
    let client_up_bytes: u64 = s
        .clients
        .iter()
        .map(|c| c.core.figures().datagram_bytes_up)
        .sum();
    assert_eq!(client_up_bytes, s.stats.datagram_bytes_up);
    // ...and each side of a connection counted the same, but for what is still in flight.
    for (i, c) in s.clients.iter().enumerate() {
        let srv = s.server.conn_figures(c.conn).unwrap();
        let cl = c.core.figures();
        assert!(cl.bytes_down <= srv.bytes_down, "client {i}");
        assert!(srv.bytes_up <= cl.bytes_up, "client {i}");
        assert!(srv.bytes_down - cl.bytes_down < 2_000, "client {i}");
        assert!(cl.bytes_up - srv.bytes_up < 2_000, "client {i}");
        assert_eq!(cl.frames_up, srv.frames_up, "client {i}");
        assert_eq!(cl.datagrams_lost, 0);
        assert!(srv.rtt_us > 0 && cl.rtt_us > 0);
        assert!(srv.budget_used() > 0.0);
    }
    let top = s.server.top_conns_by_bytes(2);
    assert_eq!(top.len(), 2);
    assert!(top[0].1.bytes() >= top[1].1.bytes());
}

#[test]
fn spectators_receive_the_world_around_their_camera_and_send_no_player_state() {
    run_seeds(0..3, |seed| {
        let link = LinkConfig {
            loss: 0.05,
            ..LinkConfig::with_latency(Duration::from_millis(30))
        };
        let mut s = sim(seed, 1, link.clone());
        let near = s
            .server
            .host_spawn(None, Transform::default(), vec![])
            .unwrap();
        let far_t = Transform {
            position: Vec3::new(800.0, 0.0, 0.0),
            ..Default::default()
        };
        let far = s.server.host_spawn(None, far_t, vec![]).unwrap();
        let spec = s.add_spectator(cfg("eve"), Vec3::new(0.0, 5.0, 0.0), link.clone(), link);
        s.with_client(0, |c| {
            c.set_input(neonet_proto::predict::CharacterInput {
                move_z: 127,
                ..Default::default()
            })
        });
        for i in 0..120 {
            let t = Transform {
                position: Vec3::new((i as f32 * 0.1).sin(), 0.0, 0.0),
                ..Default::default()
            };
            s.server.host_set_transform(near, t).unwrap();
            s.run_for(period(&s));
        }
        let c = &s.clients[spec].core;
        assert!(c.is_spectator());
        assert_eq!(c.player(), None, "seed {seed}");
        // No player entity anywhere for it, and everyone else sees just one player.
        let players = |w: &std::collections::BTreeMap<EntityId, Entity>| {
            w.values().filter(|e| e.kind == EntityKind::Player).count()
        };
        assert_eq!(players(&s.server.world().entities), 1);
        assert_eq!(players(&s.clients[0].core.world().entities), 1);
        let session = s.server.sessions().find(|x| x.is_spectator()).unwrap();
        assert_eq!(session.player, neonet_proto::server::NO_PLAYER);
        // It receives the world around its camera: the moving body and the walking player,
        // current as the host has them, and nothing 800 m away.
        let (_, seen) = s.clients[spec]
            .core
            .latest_transform(near)
            .expect("near body");
        let q = s.server.quantizer();
        let truth = q.dequantize(&q.quantize(&s.server.world().entities[&near].transform));
        assert!(seen.position.distance(truth.position) < 0.2, "seed {seed}");
        let walker = s.clients[0].core.player().unwrap();
        assert!(s.clients[spec].core.latest_transform(walker).is_some());
        assert!(s.clients[spec].core.latest_transform(far).is_none());
        // It sent no player state, and got none.
        let conn = s.clients[spec].conn;
        let f = s.server.conn_figures(conn).unwrap();
        assert!(
            f.datagrams_up > 0 && f.datagrams_acked > 0,
            "seed {seed}: {f:?}"
        );
        assert_eq!(f.own_state_bytes_up, 0);
        assert_eq!(f.own_state_bytes_down, 0);
        let cf = s.clients[spec].core.figures();
        assert_eq!((cf.own_state_bytes_up, cf.own_state_bytes_down), (0, 0));
        // Its camera moves: the far body comes into view.
        s.with_client(spec, |c| c.set_camera(Vec3::new(790.0, 0.0, 0.0)));
        s.run_for(Duration::from_secs(1));
        assert!(
            s.clients[spec].core.latest_transform(far).is_some(),
            "seed {seed}"
        );
        // It may chat but not change the world.
        s.with_client(spec, |c| {
            c.send_chat("watching");
            c.add_entity(BlueprintId("x".into()), Transform::default(), vec![]);
        });
        s.run_for(Duration::from_secs(1));
        assert!(s.server.world().chat.iter().any(|m| m.body == "watching"));
        assert!(s.clients[spec].events.iter().any(|e| matches!(
            e,
            ClientEvent::Refused {
                reason: neonet_proto::wire::msg::Refusal::Rank,
                ..
            }
        )));
    });
}
