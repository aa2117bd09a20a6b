//! Connections that survive, on the seeded simulated network: a lost connection is resumed
//! (same session, player and id; the others see no leave or join), a late one is a clean leave
//! and a fresh join, a change resent after a lost acknowledgement is applied once and answered
//! with its original outcome, and a sweep over loss, duplication, reordering and partitions
//! keeps every invariant after every step.
//!
//! The sweep's size: `NEONET_SWEEP_SEEDS` seeds (default 200, from `NEONET_SWEEP_FIRST`,
//! default 0) of `NEONET_SWEEP_TICKS` server ticks each (default 300); the long run is
//! `NEONET_SWEEP_SEEDS=10000 NEONET_SWEEP_TICKS=1000 cargo test --release -p neonet-proto
//! --features sim --test sim_resume sweep`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use neonet_proto::client::{ClientConfig, ClientEvent, ClientState, ReconnectConfig};
use neonet_proto::persist::{Change, World};
use neonet_proto::rng::Rng;
use neonet_proto::server::{InsecureTokens, ServerConfig, ServerEvent, LOST_PROP};
use neonet_proto::sim::{run_seeds, LinkConfig, Sim};
use neonet_proto::types::*;
use neonet_proto::wire::msg::{ClientMsg, Refusal};

fn cfg(name: &str) -> ClientConfig {
    ClientConfig {
        name: name.into(),
        token: None,
    }
}

/// A simulation whose clients reconnect by themselves.
fn sim(seed: u64, config: ServerConfig) -> Sim {
    Sim::new(seed, config, World::default(), Box::new(InsecureTokens)).with_effects()
}

fn add(s: &mut Sim, name: &str, link: LinkConfig) -> usize {
    let idx = s.add_client(cfg(name), link.clone(), link);
    let seed = idx as u64 + 1;
    s.with_client(idx, |c| {
        c.set_reconnect(Some(ReconnectConfig {
            seed,
            ..ReconnectConfig::default()
        }))
    });
    idx
}

fn joined(s: &Sim, idx: usize) -> bool {
    *s.clients[idx].core.state() == ClientState::Joined
}

fn all_joined(s: &Sim) -> bool {
    (0..s.clients.len()).all(|i| joined(s, i))
}

/// Every chat message the server applied, in order (from its persistence effects).
fn applied_chat(s: &Sim) -> Vec<ChatMessage> {
    s.server_effects
        .iter()
        .filter_map(|e| match &e.change {
            Change::AppendChat(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn count_body(s: &Sim, body: &str) -> usize {
    applied_chat(s).iter().filter(|m| m.body == body).count()
}

fn chat_ids(s: &mut Sim, idx: usize) -> Vec<u64> {
    s.clients[idx]
        .core
        .world()
        .chat
        .iter()
        .map(|m| m.id)
        .collect()
}

fn server_chat_ids(s: &Sim) -> Vec<u64> {
    s.server.world().chat.iter().map(|m| m.id).collect()
}

fn left_events(s: &Sim) -> usize {
    s.server_events
        .iter()
        .filter(|e| matches!(e, ServerEvent::Left { .. }))
        .count()
}

fn saw(s: &Sim, idx: usize, pred: impl Fn(&ClientEvent) -> bool) -> usize {
    s.clients[idx].events.iter().filter(|e| pred(e)).count()
}

#[test]
fn a_five_second_partition_resumes_the_session_and_loses_or_repeats_no_chat() {
    run_seeds(0..4, |seed| {
        let mut s = sim(seed, ServerConfig::default());
        let link = LinkConfig::with_latency(Duration::from_millis(30));
        let (a, b, c) = (
            add(&mut s, "a", link.clone()),
            add(&mut s, "b", link.clone()),
            add(&mut s, "c", link),
        );
        assert!(s.run_until_true(Duration::from_secs(5), all_joined));
        let (session, player) = (s.clients[c].core.session(), s.clients[c].core.player());
        let joins_before = left_events(&s);
        let seen_before: Vec<usize> = s.clients.iter().map(|x| x.events.len()).collect();
        s.partition(c, Duration::from_secs(5));
        for i in 0..10 {
            s.with_client(a, |x| x.send_chat(format!("a{i}")));
            s.with_client(c, |x| x.send_chat(format!("c{i}")));
            s.run_for(Duration::from_millis(350));
        }
        // 3.5 s in, the others see c's player marked as having lost its connection.
        let marked = s.server.world().entities[&player.unwrap()]
            .props
            .iter()
            .any(|(k, _)| k == LOST_PROP);
        assert!(marked, "seed {seed}: c is not marked lost on the server");
        let b_sees = s.clients[b].core.world().entities[&player.unwrap()]
            .props
            .iter()
            .any(|(k, _)| k == LOST_PROP);
        assert!(b_sees, "seed {seed}: b does not see c's connection lost");
        assert!(
            s.run_until_true(Duration::from_secs(15), |s| joined(s, c)
                && s.clients[c].core.pending_requests().next().is_none()),
            "seed {seed}: c did not come back: {:?}",
            s.clients[c].core.state()
        );
        s.run_for(Duration::from_secs(2));
        assert_eq!(
            s.clients[c].core.session(),
            session,
            "seed {seed}: same session"
        );
        assert_eq!(
            s.clients[c].core.player(),
            player,
            "seed {seed}: same player"
        );
        assert_eq!(saw(&s, c, |e| matches!(e, ClientEvent::Resumed { .. })), 1);
        assert_eq!(left_events(&s), joins_before, "seed {seed}: nobody left");
        for other in [a, b] {
            let p = player.unwrap();
            let left_or_joined = s.clients[other].events[seen_before[other]..]
                .iter()
                .filter(|e| matches!(e, ClientEvent::EntityRemoved(id) | ClientEvent::EntityAdded(id) if *id == p))
                .count();
            assert_eq!(
                left_or_joined, 0,
                "seed {seed}: client {other} saw c leave or join"
            );
            assert!(!s.clients[other].core.world().entities[&p]
                .props
                .iter()
                .any(|(k, _)| k == LOST_PROP));
        }
        // Every message applied exactly once, and everyone holds the server's chat.
        for i in 0..10 {
            assert_eq!(count_body(&s, &format!("a{i}")), 1, "seed {seed}: a{i}");
            assert_eq!(count_body(&s, &format!("c{i}")), 1, "seed {seed}: c{i}");
        }
        let truth = server_chat_ids(&s);
        for idx in [a, b, c] {
            assert_eq!(
                chat_ids(&mut s, idx),
                truth,
                "seed {seed}: client {idx}'s chat"
            );
            let mut seen: Vec<u64> = s.clients[idx]
                .events
                .iter()
                .filter_map(|e| match e {
                    ClientEvent::Chat(m) => Some(m.id),
                    _ => None,
                })
                .collect();
            let all = seen.len();
            seen.dedup();
            assert_eq!(
                seen.len(),
                all,
                "seed {seed}: client {idx} was told a message twice"
            );
            assert_eq!(seen, truth, "seed {seed}: client {idx} missed a message");
        }
    });
}

#[test]
fn a_partition_longer_than_the_grace_period_is_a_clean_leave_then_a_fresh_join() {
    let config = ServerConfig {
        resume_grace: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let mut s = sim(7, config);
    let link = LinkConfig::with_latency(Duration::from_millis(30));
    let (a, c) = (add(&mut s, "a", link.clone()), add(&mut s, "c", link));
    assert!(s.run_until_true(Duration::from_secs(5), all_joined));
    let (session, player) = (
        s.clients[c].core.session(),
        s.clients[c].core.player().unwrap(),
    );
    s.partition(c, Duration::from_secs(12));
    s.with_client(c, |x| x.send_chat("while away"));
    s.run_for(Duration::from_secs(10));
    // Past 3 s (lost) + 5 s (grace): an ordinary leave.
    assert_eq!(left_events(&s), 1);
    assert!(!s.server.world().entities.contains_key(&player));
    assert_eq!(saw(&s, a, |e| *e == ClientEvent::EntityRemoved(player)), 1);
    assert!(s.run_until_true(Duration::from_secs(20), |s| joined(s, c)));
    s.run_for(Duration::from_secs(1));
    let new_player = s.clients[c].core.player().unwrap();
    assert_ne!(s.clients[c].core.session(), session, "a new session");
    assert_ne!(new_player, player, "a new player");
    assert_eq!(saw(&s, c, |e| matches!(e, ClientEvent::Joined { .. })), 2);
    assert_eq!(saw(&s, c, |e| matches!(e, ClientEvent::Resumed { .. })), 0);
    assert_eq!(
        saw(&s, a, |e| *e == ClientEvent::EntityAdded(new_player)),
        1
    );
    assert_eq!(count_body(&s, "while away"), 1, "the held change went once");
    let truth = server_chat_ids(&s);
    assert_eq!(chat_ids(&mut s, a), truth);
    assert_eq!(chat_ids(&mut s, c), truth);
}

#[test]
fn a_change_resent_after_its_answer_was_lost_is_answered_as_before_and_applied_once() {
    let mut s = sim(3, ServerConfig::default());
    let link = LinkConfig::with_latency(Duration::from_millis(40));
    let (a, c) = (add(&mut s, "a", link.clone()), add(&mut s, "c", link));
    assert!(s.run_until_true(Duration::from_secs(5), all_joined));
    let player = s.clients[c].core.player().unwrap();
    // A change the server applies and one it refuses (a visitor may not add blueprints); the
    // link fails once both reached the server, before either answer is back.
    let (chat, bp) = s.with_client(c, |x| {
        let chat = x.send_chat("once");
        let bp = x.add_blueprint(Blueprint {
            id: BlueprintId("b".into()),
            version: 1,
            ..Default::default()
        });
        (chat, bp)
    });
    assert!(s.run_until_step(s.now() + Duration::from_secs(1), |s| s
        .server_events
        .iter()
        .any(|e| matches!(e, ServerEvent::Refused { .. }))));
    s.partition(c, Duration::from_secs(4));
    assert!(s.run_until_true(Duration::from_secs(15), |s| joined(s, c)
        && s.clients[c].core.pending_requests().next().is_none()));
    s.run_for(Duration::from_secs(1));
    assert_eq!(s.clients[c].core.player(), Some(player), "resumed");
    assert_eq!(count_body(&s, "once"), 1, "applied once");
    assert_eq!(saw(&s, c, |e| *e == ClientEvent::Acked(chat)), 1);
    assert_eq!(
        saw(&s, c, |e| *e
            == ClientEvent::Refused {
                req: bp,
                reason: Refusal::Rank
            }),
        1
    );
    // The server was asked twice and refused twice, the second time from memory.
    let refused = s
        .server_events
        .iter()
        .filter(|e| matches!(e, ServerEvent::Refused { .. }))
        .count();
    assert_eq!(refused, 1, "the resend was not run through policy again");
    let truth = server_chat_ids(&s);
    assert_eq!(chat_ids(&mut s, a), truth);
    assert_eq!(chat_ids(&mut s, c), truth);
    assert_eq!(
        s.clients[a]
            .core
            .world()
            .chat
            .iter()
            .filter(|m| m.body == "once")
            .count(),
        1
    );
}

#[test]
fn a_duplicate_change_on_the_same_connection_gets_the_original_answer() {
    let mut s = sim(5, ServerConfig::default());
    let c = add(&mut s, "c", LinkConfig::default());
    assert!(s.run_until_true(Duration::from_secs(5), all_joined));
    let msg = ClientMsg::Chat {
        req: ReqId(77),
        body: "dup".into(),
    };
    s.with_client(c, |x| {
        x.send_raw(&msg);
        x.send_raw(&msg);
    });
    s.run_for(Duration::from_secs(1));
    assert_eq!(count_body(&s, "dup"), 1);
    assert_eq!(saw(&s, c, |e| *e == ClientEvent::Acked(ReqId(77))), 2);
}

#[test]
fn a_killed_client_is_marked_lost_at_once_and_leaves_after_the_grace_period() {
    let config = ServerConfig {
        resume_grace: Duration::from_secs(4),
        ..ServerConfig::default()
    };
    let idle = config.idle_timeout;
    let mut s = sim(9, config);
    let link = LinkConfig::with_latency(Duration::from_millis(20));
    let (a, c) = (add(&mut s, "a", link.clone()), add(&mut s, "c", link));
    assert!(s.run_until_true(Duration::from_secs(5), all_joined));
    let player = s.clients[c].core.player().unwrap();
    let killed_at = s.now();
    s.kill(c);
    let lost = |s: &Sim| {
        s.clients[a]
            .events
            .contains(&ClientEvent::EntityModified(player))
    };
    assert!(s.run_until_step(s.now() + Duration::from_secs(10), lost));
    let after = s.now().saturating_since(killed_at);
    assert!(
        after <= idle + Duration::from_millis(200),
        "seen lost after {after:?}"
    );
    assert_eq!(left_events(&s), 0);
    s.run_for(Duration::from_secs(6));
    assert_eq!(left_events(&s), 1);
    assert_eq!(saw(&s, a, |e| *e == ClientEvent::EntityRemoved(player)), 1);
}

/// Server ticks per second in the sweep.
const SWEEP_TICK_HZ: u16 = 30;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Random impairments: some loss, duplication, reordering and jitter.
fn random_link(rng: &mut Rng) -> LinkConfig {
    LinkConfig {
        latency: Duration::from_millis(10 + rng.below(80)),
        jitter: Duration::from_millis(rng.below(30)),
        loss: rng.range_f64(0.0, 0.25),
        burst_enter: rng.range_f64(0.0, 0.03),
        burst_exit: 0.3,
        duplicate: rng.range_f64(0.0, 0.1),
        reorder: rng.range_f64(0.0, 0.15),
        reorder_delay: Duration::from_millis(30),
        mtu: 1200,
        ..LinkConfig::default()
    }
}

/// The invariants that hold after every step: each client's chat is in the server's order with
/// the server's messages; nothing is applied twice; every acknowledged chat was applied.
fn check_step(s: &mut Sim, sent: &BTreeMap<(usize, ReqId), String>, seed: u64) {
    let applied = applied_chat(s);
    let mut bodies = BTreeSet::new();
    for m in &applied {
        let once = bodies.insert(m.body.clone());
        if !once && std::env::var("NEONET_SWEEP_TRACE").is_ok() {
            for l in &s.trace().lines {
                eprintln!("{l}");
            }
        }
        assert!(once, "seed {seed}: {} applied twice", m.body);
    }
    let by_id: BTreeMap<u64, &ChatMessage> = applied.iter().map(|m| (m.id, m)).collect();
    for idx in 0..s.clients.len() {
        let chat: Vec<ChatMessage> = s.clients[idx].core.world().chat.iter().cloned().collect();
        for w in chat.windows(2) {
            assert!(
                w[0].id < w[1].id,
                "seed {seed}: client {idx}'s chat out of order"
            );
        }
        for m in &chat {
            assert_eq!(
                by_id.get(&m.id).copied(),
                Some(m),
                "seed {seed}: client {idx}'s chat"
            );
        }
        for e in &s.clients[idx].events {
            if let ClientEvent::Acked(req) = e {
                if let Some(body) = sent.get(&(idx, *req)) {
                    assert!(
                        bodies.contains(body),
                        "seed {seed}: {body} acked, never applied"
                    );
                }
            }
        }
    }
}

fn sweep_one(seed: u64, ticks: u64) {
    let mut rng = Rng::new(seed ^ 0x5EED);
    let config = ServerConfig {
        tick_hz: SWEEP_TICK_HZ,
        // Shorter than the longest partition below, so both resume and rejoin happen.
        resume_grace: Duration::from_secs(4),
        ..ServerConfig::default()
    };
    let mut s = sim(seed, config);
    if std::env::var("NEONET_SWEEP_TRACE").is_err() {
        s = s.without_trace();
    }
    let n = 3;
    for i in 0..n {
        let link = random_link(&mut rng);
        add(&mut s, &format!("p{i}"), link);
    }
    let everyone = s.run_until_true(Duration::from_secs(20), all_joined);
    if !everyone && std::env::var("NEONET_SWEEP_TRACE").is_ok() {
        for l in &s.trace().lines {
            eprintln!("{l}");
        }
    }
    assert!(
        everyone,
        "seed {seed}: not everyone joined: {:?}",
        (0..n)
            .map(|i| s.clients[i].core.state().clone())
            .collect::<Vec<_>>()
    );
    let tick = Duration::from_micros(1_000_000 / u64::from(SWEEP_TICK_HZ));
    let mut sent: BTreeMap<(usize, ReqId), String> = BTreeMap::new();
    let mut next_msg = 0u64;
    for t in 0..ticks {
        let who = rng.below(n as u64) as usize;
        if rng.chance(0.05) && !matches!(s.clients[who].core.state(), ClientState::Closed { .. }) {
            let body = format!("m{next_msg}");
            next_msg += 1;
            let req = s.with_client(who, |c| c.send_chat(body.clone()));
            sent.insert((who, req), body);
        }
        if rng.chance(0.004) {
            // Up to 8 s: past the silence timeout (3 s) and sometimes past the grace period.
            let d = Duration::from_millis(200 + rng.below(7800));
            s.partition(who, d);
        }
        if rng.chance(0.01) {
            let link = random_link(&mut rng);
            s.set_link(who, link.clone(), link);
        }
        let end = s.now() + tick;
        s.run_until(end);
        check_step(&mut s, &sent, seed);
        let _ = t;
    }
    // Heal: perfect links, no partition past its end, and time to come back and converge.
    for i in 0..n {
        let l = LinkConfig::with_latency(Duration::from_millis(20));
        s.set_link(i, l.clone(), l);
    }
    // Past the end of any partition still running (at most 8 s long).
    s.run_for(Duration::from_secs(8));
    let converged = |s: &Sim| {
        all_joined(s) && (0..n).all(|i| s.clients[i].core.pending_requests().next().is_none())
    };
    assert!(
        s.run_until_true(Duration::from_secs(60), converged),
        "seed {seed}: did not settle: {:?}",
        (0..n)
            .map(|i| s.clients[i].core.state().clone())
            .collect::<Vec<_>>()
    );
    s.run_for(Duration::from_secs(2));
    check_step(&mut s, &sent, seed);
    // Every change was answered; every acknowledged one applied exactly once.
    let applied = applied_chat(&s);
    for ((idx, req), body) in &sent {
        let acked = s.clients[*idx].events.contains(&ClientEvent::Acked(*req));
        let refused = s.clients[*idx]
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::Refused { req: r, .. } if r == req));
        assert!(acked || refused, "seed {seed}: {body} never answered");
        if acked {
            assert_eq!(
                applied.iter().filter(|m| &m.body == body).count(),
                1,
                "seed {seed}"
            );
        }
    }
    // Every client converged on the server's world.
    let truth_chat = server_chat_ids(&s);
    let truth_entities: Vec<(EntityId, Vec<(String, Bytes)>)> = s
        .server
        .world()
        .entities
        .values()
        .map(|e| (e.id, e.props.clone()))
        .collect();
    if std::env::var("NEONET_SWEEP_TRACE").is_ok() {
        for l in &s.trace().lines {
            eprintln!("{l}");
        }
    }
    for i in 0..n {
        assert_eq!(
            chat_ids(&mut s, i),
            truth_chat,
            "seed {seed}: client {i}'s chat"
        );
        let mine: Vec<(EntityId, Vec<(String, Bytes)>)> = s.clients[i]
            .core
            .world()
            .entities
            .values()
            .map(|e| (e.id, e.props.clone()))
            .collect();
        assert_eq!(mine, truth_entities, "seed {seed}: client {i}'s entities");
    }
}

#[test]
fn sweep_over_loss_duplication_reordering_and_partitions_keeps_every_invariant() {
    let first = env_or("NEONET_SWEEP_FIRST", 0);
    let seeds = env_or("NEONET_SWEEP_SEEDS", 200);
    let ticks = env_or("NEONET_SWEEP_TICKS", 300);
    run_seeds(first..first + seeds, |seed| sweep_one(seed, ticks));
}

#[test]
fn a_player_kicked_while_its_connection_is_lost_cannot_resume() {
    let mut world = World::default();
    world.users.insert(
        UserId(1),
        User {
            id: UserId(1),
            name: "admin".into(),
            rank: Rank::Admin,
            muted: false,
            banned: false,
            last_position: None,
            standing: Default::default(),
        },
    );
    let mut s =
        Sim::new(4, ServerConfig::default(), world, Box::new(InsecureTokens)).with_effects();
    let admin = s.add_client(
        ClientConfig {
            name: "admin".into(),
            token: Some("user:1".into()),
        },
        LinkConfig::default(),
        LinkConfig::default(),
    );
    let c = add(&mut s, "c", LinkConfig::default());
    assert!(s.run_until_true(Duration::from_secs(5), all_joined));
    let player = s.clients[c].core.player().unwrap();
    s.partition(c, Duration::from_secs(6));
    s.run_for(Duration::from_secs(3));
    assert!(s
        .server
        .sessions()
        .any(|x| x.player == player && x.is_lost()));
    s.with_client(admin, |x| {
        x.send_raw(&ClientMsg::Kick {
            req: ReqId(500),
            target: player,
        })
    });
    s.run_for(Duration::from_secs(10));
    assert!(!s.server.world().entities.contains_key(&player), "kicked");
    // Its resume fails and it joins afresh: kicks of a lost player are not a ban.
    assert!(s.run_until_true(Duration::from_secs(20), |s| joined(s, c)));
    assert_ne!(s.clients[c].core.player(), Some(player));
}
