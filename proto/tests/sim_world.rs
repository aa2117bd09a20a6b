//! World scenarios over the simulated network: joins and leaves, chat order, blueprint
//! conflicts, authorization, all under loss, reordering and duplication; and determinism.

use std::time::Duration;

use neonet_proto::client::{ClientConfig, ClientEvent, ClientState};
use neonet_proto::persist::World;
use neonet_proto::server::{InsecureTokens, ServerConfig};
use neonet_proto::sim::{run_seeds, LinkConfig, Sim};
use neonet_proto::types::*;
use neonet_proto::wire::msg::{ClientMsg, CloseReason, Refusal};

fn cfg(name: &str) -> ClientConfig {
    ClientConfig {
        name: name.into(),
        token: None,
    }
}

fn with_token(name: &str, user: u64) -> ClientConfig {
    ClientConfig {
        name: name.into(),
        token: Some(format!("user:{user}")),
    }
}

/// A world with user 1 an admin, user 2 a builder, user 3 a visitor, and one blueprint.
fn seeded_world() -> World {
    let mut w = World::default();
    for (id, rank) in [(1, Rank::Admin), (2, Rank::Builder), (3, Rank::Visitor)] {
        w.users.insert(
            UserId(id),
            User {
                id: UserId(id),
                name: format!("u{id}"),
                rank,
                muted: false,
                banned: false,
                last_position: None,
                standing: Default::default(),
            },
        );
    }
    let bp = Blueprint {
        id: BlueprintId("cube".into()),
        version: 1,
        name: "Cube".into(),
        ..Default::default()
    };
    w.blueprints.insert(bp.id.clone(), bp);
    w
}

fn sim(seed: u64) -> Sim {
    Sim::new(
        seed,
        ServerConfig::default(),
        seeded_world(),
        Box::new(InsecureTokens),
    )
}

fn joined(s: &Sim, idx: usize) -> bool {
    *s.clients[idx].core.state() == ClientState::Joined
}

fn players_seen(s: &mut Sim, idx: usize) -> Vec<EntityId> {
    s.clients[idx]
        .core
        .world()
        .entities
        .values()
        .filter(|e| e.kind == EntityKind::Player)
        .map(|e| e.id)
        .collect()
}

fn server_players(s: &Sim) -> Vec<EntityId> {
    s.server
        .world()
        .entities
        .values()
        .filter(|e| e.kind == EntityKind::Player)
        .map(|e| e.id)
        .collect()
}

fn refusals(s: &Sim, idx: usize) -> Vec<Refusal> {
    s.clients[idx]
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Refused { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

#[test]
fn many_clients_join_and_leave_under_hostile_links_and_agree_on_who_is_there() {
    run_seeds(0..8, |seed| {
        let mut s = sim(seed);
        let n = 12;
        for i in 0..n {
            let idx = s.add_client(
                cfg(&format!("p{i}")),
                LinkConfig::hostile(),
                LinkConfig::hostile(),
            );
            // As the client library does by default, the clients that stay come back by
            // themselves when a hostile link stalls their connection past the idle timeout
            // (and resume unseen); the ones cut below do not.
            if i % 3 == 0 {
                s.run_for(Duration::from_millis(37));
                continue;
            }
            s.with_client(idx, |c| {
                c.set_reconnect(Some(neonet_proto::client::ReconnectConfig {
                    seed: idx as u64 + 1,
                    ..Default::default()
                }))
            });
            s.run_for(Duration::from_millis(37));
        }
        assert!(
            s.run_until_true(Duration::from_secs(20), |s| (0..n).all(|i| joined(s, i))),
            "seed {seed}: not everyone joined"
        );
        // A third leave; the rest must converge on the server's view once the grace period
        // for a resume is over.
        for i in (0..n).step_by(3) {
            s.disconnect(i);
        }
        s.run_for(ServerConfig::default().resume_grace + Duration::from_secs(15));
        let truth = server_players(&s);
        assert_eq!(truth.len(), n - n.div_ceil(3), "seed {seed}");
        for i in (0..n).filter(|i| i % 3 != 0) {
            assert_eq!(
                players_seen(&mut s, i),
                truth,
                "seed {seed}: client {i} disagrees (state {:?})",
                s.clients[i].core.state()
            );
        }
    });
}

#[test]
fn chat_arrives_in_one_order_everywhere_and_is_stamped_by_the_server() {
    run_seeds(0..8, |seed| {
        let mut s = sim(seed);
        for i in 0..4 {
            s.add_client(
                cfg(&format!("p{i}")),
                LinkConfig::hostile(),
                LinkConfig::hostile(),
            );
        }
        assert!(s.run_until_true(Duration::from_secs(20), |s| (0..4).all(|i| joined(s, i))));
        for round in 0..5 {
            for i in 0..4 {
                s.with_client(i, |c| c.send_chat(format!("m{round}-{i}")));
            }
            s.run_for(Duration::from_millis(13));
        }
        s.run_for(Duration::from_secs(15));
        let truth: Vec<(String, String)> = s
            .server
            .world()
            .chat
            .iter()
            .map(|m| (m.from_name.clone(), m.body.clone()))
            .collect();
        assert_eq!(truth.len(), 20, "seed {seed}");
        for (name, body) in &truth {
            let i: usize = body.rsplit('-').next().unwrap().parse().unwrap();
            assert_eq!(
                name,
                &format!("p{i}"),
                "seed {seed}: sender stamped wrongly"
            );
        }
        for i in 0..4 {
            let seen: Vec<(String, String)> = s.clients[i]
                .core
                .world()
                .chat
                .iter()
                .map(|m| (m.from_name.clone(), m.body.clone()))
                .collect();
            assert_eq!(seen, truth, "seed {seed}: client {i} saw another order");
        }
    });
}

#[test]
fn concurrent_blueprint_edits_have_one_winner_and_everyone_converges() {
    run_seeds(0..8, |seed| {
        let mut s = sim(seed);
        let a = s.add_client(
            with_token("admin", 1),
            LinkConfig::hostile(),
            LinkConfig::hostile(),
        );
        let b = s.add_client(
            with_token("builder", 2),
            LinkConfig::hostile(),
            LinkConfig::hostile(),
        );
        let v = s.add_client(
            with_token("visitor", 3),
            LinkConfig::hostile(),
            LinkConfig::hostile(),
        );
        assert!(s.run_until_true(Duration::from_secs(20), |s| (0..3).all(|i| joined(s, i))));
        let id = BlueprintId("cube".into());
        let patch = |name: &str| BlueprintPatch {
            name: Some(name.into()),
            ..Default::default()
        };
        // Both claim version 2 at the same moment.
        let ra = s.with_client(a, |c| c.modify_blueprint(id.clone(), patch("A")));
        let rb = s.with_client(b, |c| c.modify_blueprint(id.clone(), patch("B")));
        s.run_for(Duration::from_secs(15));
        let server_bp = s.server.world().blueprints[&id].clone();
        assert_eq!(server_bp.version, 2, "seed {seed}");
        let a_won = server_bp.name == "A";
        let (loser, lreq) = if a_won { (b, rb) } else { (a, ra) };
        assert!(
            s.clients[loser].events.contains(&ClientEvent::Refused {
                req: lreq,
                reason: Refusal::Conflict
            }),
            "seed {seed}: loser not told"
        );
        for i in [a, b, v] {
            assert_eq!(
                s.clients[i].core.world().blueprints[&id],
                server_bp,
                "seed {seed}: client {i} diverged"
            );
        }
    });
}

#[test]
fn ranks_and_ownership_are_enforced_at_the_one_authorization_point() {
    let mut s = sim(7);
    let admin = s.add_client(
        with_token("admin", 1),
        LinkConfig::default(),
        LinkConfig::default(),
    );
    let visitor = s.add_client(
        with_token("visitor", 3),
        LinkConfig::default(),
        LinkConfig::default(),
    );
    assert!(s.run_until_true(Duration::from_secs(5), |s| joined(s, 0) && joined(s, 1)));
    let admin_player = s.clients[admin].core.player().unwrap();
    let visitor_player = s.clients[visitor].core.player().unwrap();
    s.with_client(visitor, |c| {
        c.add_blueprint(Blueprint {
            id: BlueprintId("evil".into()),
            version: 1,
            ..Default::default()
        });
        c.modify_entity(admin_player, EntityPatch::default());
        c.send_raw(&ClientMsg::Kick {
            req: ReqId(900),
            target: admin_player,
        });
        c.send_raw(&ClientMsg::ModifyRank {
            req: ReqId(901),
            user: UserId(3),
            rank: Rank::Admin,
        });
        c.send_command(vec!["chat".into(), "clear".into()]);
        // Its own player it may modify.
        c.modify_entity(visitor_player, EntityPatch::default());
    });
    s.run_for(Duration::from_secs(1));
    assert_eq!(
        refusals(&s, visitor),
        vec![
            Refusal::Rank,
            Refusal::NotOwner,
            Refusal::Rank,
            Refusal::Rank,
            Refusal::Rank
        ]
    );
    assert!(!s
        .server
        .world()
        .blueprints
        .contains_key(&BlueprintId("evil".into())));
    // The admin outranks the visitor: kick works and closes with a reason.
    s.with_client(admin, |c| {
        c.send_raw(&ClientMsg::Kick {
            req: ReqId(1),
            target: visitor_player,
        })
    });
    s.run_for(Duration::from_secs(1));
    assert!(matches!(
        s.clients[visitor].core.state(),
        ClientState::Closed {
            reason: CloseReason::Moderation,
            ..
        }
    ));
    assert_eq!(server_players(&s), vec![admin_player]);
}

#[test]
fn a_second_join_of_the_same_user_replaces_the_first() {
    let mut s = sim(3);
    s.add_client(
        with_token("first", 2),
        LinkConfig::default(),
        LinkConfig::default(),
    );
    s.run_for(Duration::from_secs(1));
    s.add_client(
        with_token("second", 2),
        LinkConfig::default(),
        LinkConfig::default(),
    );
    s.run_for(Duration::from_secs(1));
    assert!(matches!(
        s.clients[0].core.state(),
        ClientState::Closed {
            reason: CloseReason::DuplicateUser,
            ..
        }
    ));
    assert!(joined(&s, 1));
    assert_eq!(server_players(&s).len(), 1);
}

#[test]
fn the_player_limit_refuses_newcomers_with_a_reason() {
    let mut world = seeded_world();
    world.settings.player_limit = 2;
    let mut s = Sim::new(1, ServerConfig::default(), world, Box::new(InsecureTokens));
    for i in 0..3 {
        s.add_client(
            cfg(&format!("p{i}")),
            LinkConfig::default(),
            LinkConfig::default(),
        );
        s.run_for(Duration::from_millis(200));
    }
    assert!(joined(&s, 0) && joined(&s, 1));
    assert!(matches!(
        s.clients[2].core.state(),
        ClientState::Closed {
            reason: CloseReason::PlayerLimit,
            ..
        }
    ));
}

#[test]
fn a_peer_with_another_protocol_version_is_refused_with_a_reason() {
    let mut core = neonet_proto::client::ClientCore::with_protocol_version(
        cfg("old"),
        neonet_proto::Time::ZERO,
        99,
    );
    let mut server = neonet_proto::server::ServerCore::new(
        ServerConfig::default(),
        World::default(),
        Box::new(InsecureTokens),
        neonet_proto::Time::ZERO,
    );
    let conn = neonet_proto::server::ConnId(1);
    server.handle_connect(
        conn,
        neonet_proto::server::TransportKind::Sim,
        neonet_proto::Time::ZERO,
    );
    while let Some(neonet_proto::client::ClientTransmit::Frame { channel, frame }) =
        core.poll_transmit()
    {
        server.handle_frame(conn, channel, &frame[4..], neonet_proto::Time::ZERO);
    }
    let mut closed = None;
    while let Some(t) = server.poll_transmit() {
        if let neonet_proto::server::Transmit::Frame { channel, frame, .. } = t {
            let _ = core.handle_frame(channel, &frame[4..], neonet_proto::Time::ZERO);
        }
    }
    while let Some(e) = core.poll_event() {
        if let ClientEvent::Disconnected { reason, detail } = e {
            closed = Some((reason, detail));
        }
    }
    let (reason, detail) = closed.expect("closed");
    assert_eq!(reason, CloseReason::VersionMismatch);
    assert!(detail.contains("99"), "{detail}");
}

#[test]
fn entity_events_wait_for_the_blueprint_version_they_need() {
    let mut s = sim(5);
    let b = s.add_client(
        with_token("builder", 2),
        LinkConfig::default(),
        LinkConfig::default(),
    );
    let v = s.add_client(
        with_token("visitor", 3),
        LinkConfig::default(),
        LinkConfig::default(),
    );
    assert!(s.run_until_true(Duration::from_secs(5), |s| joined(s, 0) && joined(s, 1)));
    let id = BlueprintId("cube".into());
    s.with_client(b, |c| {
        c.add_entity(id.clone(), Transform::default(), vec![])
    });
    s.run_for(Duration::from_secs(1));
    let app = *s
        .server
        .world()
        .entities
        .iter()
        .find(|(_, e)| e.kind == EntityKind::App)
        .unwrap()
        .0;
    // The visitor learns of an event for version 5 before the blueprint reaches it.
    s.with_client(b, |c| {
        c.send_raw(&ClientMsg::EntityEvent {
            entity: app,
            blueprint_version: 2,
            name: "ring".into(),
            data: Bytes::from("x"),
            to: None,
        })
    });
    s.run_for(Duration::from_secs(1));
    let fired = |s: &Sim| {
        s.clients[v]
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::EntityEvent { name, .. } if name == "ring"))
    };
    assert!(!fired(&s), "event released before its blueprint version");
    s.with_client(b, |c| {
        c.modify_blueprint(id.clone(), BlueprintPatch::default())
    });
    s.run_for(Duration::from_secs(1));
    assert!(fired(&s), "event never released");
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let run = |seed: u64| {
        let mut s = sim(seed);
        for i in 0..6 {
            s.add_client(
                cfg(&format!("p{i}")),
                LinkConfig::hostile(),
                LinkConfig::hostile(),
            );
        }
        for r in 0..20 {
            s.run_for(Duration::from_millis(50));
            s.with_client(r % 6, |c| c.send_chat(format!("hello {r}")));
        }
        s.disconnect(2);
        s.run_for(Duration::from_secs(10));
        s.trace().clone()
    };
    let a = run(42);
    let b = run(42);
    assert!(a.lines.len() > 100, "trace too small to mean anything");
    assert_eq!(a, b);
    assert_ne!(a.hash(), run(43).hash(), "different seeds should differ");
}

#[test]
fn a_flooding_client_is_rate_limited_then_closed_and_others_carry_on() {
    let mut s = sim(11);
    let flood = s.add_client(cfg("flood"), LinkConfig::default(), LinkConfig::default());
    let calm = s.add_client(cfg("calm"), LinkConfig::default(), LinkConfig::default());
    assert!(s.run_until_true(Duration::from_secs(5), |s| joined(s, 0) && joined(s, 1)));
    // Chat has its own, smaller budget (`limits.chat`) inside the generic one.
    let burst = ServerConfig::default().limits.chat.burst as usize;
    // Raw sends: the library itself holds at most PENDING_REQUESTS_MAX unanswered changes; a
    // flooder does not use it.
    let chat = |i: usize, body: String| ClientMsg::Chat {
        req: ReqId(i as u32 + 1),
        body,
    };
    s.with_client(flood, |c| {
        for i in 0..burst + burst / 2 {
            c.send_raw(&chat(i, format!("spam {i}")));
        }
    });
    s.run_for(Duration::from_millis(200));
    assert!(refusals(&s, flood).contains(&Refusal::RateLimited));
    assert!(
        joined(&s, flood),
        "closed before flooding a whole burst past the limit"
    );
    s.with_client(flood, |c| {
        for i in 0..burst * 2 {
            c.send_raw(&chat(burst + 100 + i, format!("more {i}")));
        }
    });
    s.run_for(Duration::from_millis(500));
    assert!(matches!(
        s.clients[flood].core.state(),
        ClientState::Closed {
            reason: CloseReason::Flooding,
            ..
        }
    ));
    s.with_client(calm, |c| c.send_chat("still here"));
    s.run_for(Duration::from_millis(500));
    assert!(s.clients[calm]
        .core
        .world()
        .chat
        .iter()
        .any(|m| m.body == "still here"));
}

#[test]
fn the_admin_command_needs_the_configured_code() {
    let config = ServerConfig {
        admin_code: Some("s3cret".into()),
        ..ServerConfig::default()
    };
    let mut s = Sim::new(2, config, seeded_world(), Box::new(InsecureTokens));
    let v = s.add_client(
        with_token("visitor", 3),
        LinkConfig::default(),
        LinkConfig::default(),
    );
    assert!(s.run_until_true(Duration::from_secs(5), |s| joined(s, 0)));
    s.with_client(v, |c| c.send_command(vec!["admin".into(), "guess".into()]));
    s.run_for(Duration::from_millis(500));
    assert_eq!(refusals(&s, v), vec![Refusal::Rank]);
    assert_eq!(s.clients[v].core.rank(), Rank::Visitor);
    s.with_client(v, |c| c.send_command(vec!["admin".into(), "s3cret".into()]));
    s.run_for(Duration::from_millis(500));
    assert_eq!(s.clients[v].core.rank(), Rank::Admin);
    assert_eq!(s.server.world().users[&UserId(3)].rank, Rank::Admin);
}

#[test]
fn rapid_edits_of_one_blueprint_reach_others_once_per_tick_and_each_is_acknowledged() {
    run_seeds(0..4, |seed| {
        let mut s = sim(seed);
        let b = s.add_client(
            with_token("builder", 2),
            LinkConfig::default(),
            LinkConfig::default(),
        );
        let v = s.add_client(
            with_token("visitor", 3),
            LinkConfig::hostile(),
            LinkConfig::hostile(),
        );
        assert!(s.run_until_true(Duration::from_secs(20), |s| (0..2).all(|i| joined(s, i))));
        let id = BlueprintId("cube".into());
        let edits = 50u32;
        // A burst: 50 versions within one tick, each touching a different field now and then.
        let reqs: Vec<ReqId> = (0..edits)
            .map(|k| {
                let patch = BlueprintPatch {
                    desc: Some(format!("edit {k}")),
                    name: (k % 10 == 0).then(|| format!("name {k}")),
                    ..Default::default()
                };
                s.with_client(b, |c| {
                    c.modify_blueprint_at(id.clone(), 2 + k, patch.clone())
                })
            })
            .collect();
        s.run_for(Duration::from_secs(10));
        let server_bp = s.server.world().blueprints[&id].clone();
        assert_eq!(server_bp.version, 1 + edits, "seed {seed}");
        assert_eq!(server_bp.desc, format!("edit {}", edits - 1));
        assert_eq!(server_bp.name, "name 40");
        for req in reqs {
            assert!(
                s.clients[b].events.contains(&ClientEvent::Acked(req)),
                "seed {seed}: {req:?} not acknowledged"
            );
        }
        for i in [b, v] {
            assert_eq!(
                s.clients[i].core.world().blueprints[&id],
                server_bp,
                "seed {seed}: client {i} diverged"
            );
            let modified = s.clients[i]
                .events
                .iter()
                .filter(|e| matches!(e, ClientEvent::BlueprintModified { .. }))
                .count();
            assert!(
                (1..=3).contains(&modified),
                "seed {seed}: client {i} got {modified} modifications for {edits} edits in a burst"
            );
        }
    });
}
