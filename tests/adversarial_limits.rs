//! The limits half of the adversarial suite, over real QUIC: hostile values, quota breaches,
//! floods of chat and commands, tokenless joins and connections from one address, and a
//! handshake flood, each expecting a specific refusal or drop, while two honest clients keep
//! chatting and moving and lose nothing that was acknowledged to them. The relay's memory
//! after the handshake flood is checked against its baseline: right after it (a generous
//! bound), and after a bounded recovery wait (within [`RECOVERED_MARGIN`]).

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{expect, TestRelay, WAIT};
use neonet::client::{Client, ClientEvent, ConnectError};
use neonet::config::RelayConfig;
use neonet::proto::predict::CharacterInput;
use neonet::proto::types::*;
use neonet::proto::wire::limits::SNAPSHOT_PIECE_BYTES_MAX;
use neonet::proto::wire::msg::{CloseReason, Refusal};
use neonet::relay::{Relay, RelayHooks};

/// Two honest clients that chat and walk throughout a case.
struct Honest {
    a: Client,
    b: Client,
    /// Chat bodies acknowledged to either, which the other must have received.
    rounds: u32,
}

impl Honest {
    fn join(relay: &TestRelay) -> Honest {
        let (a, b) = (relay.client("honest-a"), relay.client("honest-b"));
        let walk = CharacterInput {
            move_z: 127,
            ..CharacterInput::default()
        };
        a.set_input(walk);
        b.set_input(walk);
        Honest { a, b, rounds: 0 }
    }

    /// One round: each says something, gets it acknowledged, and the other hears it.
    fn round(&mut self) {
        self.rounds += 1;
        for (from, to, who) in [(&self.a, &self.b, "a"), (&self.b, &self.a, "b")] {
            let body = format!("{who} round {}", self.rounds);
            let req = from
                .send_chat(body.clone())
                .expect("honest client still connected");
            expect(
                from,
                "the honest chat's ack",
                |e| matches!(e, ClientEvent::Acked(r) if *r == req),
            );
            expect(
                to,
                "the other honest client hears it",
                |e| matches!(e, ClientEvent::Chat(m) if m.body == body),
            );
        }
    }

    /// Both still joined and their players have walked away from the spawn point.
    fn check_moved(&self) {
        for c in [&self.a, &self.b] {
            let moved = (0..100).any(|_| {
                let _ = c.begin_frame(0.016);
                let t = c.player_transform();
                std::thread::sleep(Duration::from_millis(20));
                t.is_some_and(|t| t.position.z.abs() > 0.5)
            });
            assert!(moved, "an honest player walks on");
        }
    }
}

/// A builder world (everyone a builder) with `limits` set as `--limit NAME=VALUE` would.
fn relay_with(limits: &[(&str, &str)]) -> TestRelay {
    relay_configured(limits, |_| {})
}

/// [`relay_with`], with other configuration changes too.
fn relay_configured(limits: &[(&str, &str)], more: impl FnOnce(&mut RelayConfig)) -> TestRelay {
    let mut world = neonet::proto::persist::World::default();
    world.settings.default_rank = Rank::Builder;
    TestRelay::start_config(
        |c| {
            c.admin_code = Some("sesame".into());
            for (k, v) in limits {
                c.limits.set(k, v).unwrap();
            }
            more(c);
        },
        RelayHooks {
            world,
            ..RelayHooks::default()
        },
    )
}

fn refusal_of(c: &Client, req: ReqId) -> Option<Refusal> {
    match expect(
        c,
        "an answer",
        |e| matches!(e, ClientEvent::Acked(r) | ClientEvent::Refused { req: r, .. } if *r == req),
    ) {
        ClientEvent::Refused { reason, .. } => Some(reason),
        _ => None,
    }
}

fn blueprint(id: &str, props: usize) -> Blueprint {
    Blueprint {
        id: BlueprintId(id.into()),
        version: 1,
        name: id.into(),
        props: Bytes(vec![7; props]),
        ..Blueprint::default()
    }
}

fn at(position: [f32; 3], rotation: [f32; 4], scale: Option<[f32; 3]>) -> Transform {
    Transform {
        position: Vec3::from_array(position),
        rotation: Quat::from_array(rotation),
        scale: scale.map(Vec3::from_array),
    }
}

/// Resident memory of this process (relay included), bytes, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn hostile_values_are_refused_or_normalized_and_versions_cannot_jump() {
    let relay = relay_with(&[]);
    let mut honest = Honest::join(&relay);
    let x = relay.client("builder");
    let id = BlueprintId("crate".into());
    let req = x.add_blueprint(blueprint("crate", 16)).unwrap();
    assert_eq!(refusal_of(&x, req), None);
    let add = |t: Transform| {
        let req = x.add_entity(id.clone(), t, vec![]).unwrap();
        refusal_of(&x, req)
    };
    let unit = [0.0, 0.0, 0.0, 1.0];
    assert_eq!(
        add(at([1e30, 0.0, 0.0], unit, None)),
        Some(Refusal::Invalid),
        "1e30"
    );
    assert_eq!(
        add(at([0.0, 0.0, 5000.0], unit, None)),
        Some(Refusal::Invalid),
        "out of bounds"
    );
    assert_eq!(
        add(at([0.0; 3], [0.0; 4], None)),
        Some(Refusal::Invalid),
        "[0,0,0,0]"
    );
    assert_eq!(
        add(at([0.0; 3], [f32::NAN, 0.0, 0.0, 1.0], None)),
        Some(Refusal::Invalid),
        "NaN rotation"
    );
    assert_eq!(
        add(at([0.0; 3], unit, Some([1e9, 1.0, 1.0]))),
        Some(Refusal::Invalid),
        "scale"
    );
    // A long rotation is stored and relayed normalized.
    assert_eq!(add(at([1.0, 2.0, 3.0], [1e30, 0.0, 0.0, 0.0], None)), None);
    let app_rotation = |c: &Client| {
        c.with_world(|w| {
            w.entities
                .values()
                .find(|e| e.kind == EntityKind::App)
                .map(|e| e.transform.rotation)
        })
    };
    let rotation = (0..200)
        .find_map(|_| {
            let _ = honest.a.poll_event();
            std::thread::sleep(Duration::from_millis(10));
            app_rotation(&honest.a)
        })
        .expect("the app reaches the others");
    // Exactly [1, 0, 0, 0] from the reliable placement, or that rotation as quantized by the
    // transform datagrams (10-bit smallest-three: components within 1e-3) when a datagram of
    // the app reached the client first: either way normalized, never 1e30.
    let expected = [1.0f32, 0.0, 0.0, 0.0];
    assert!(
        rotation
            .to_array()
            .iter()
            .zip(expected)
            .all(|(got, want)| (got - want).abs() < 1e-3),
        "relayed normalized: {rotation:?}"
    );
    // Versions: a new blueprint may not start at u32::MAX, nor jump there.
    let mut locked = blueprint("locked", 4);
    locked.version = u32::MAX;
    let req = x.add_blueprint(locked).unwrap();
    assert_eq!(refusal_of(&x, req), Some(Refusal::Invalid));
    let req =
        x.with_core(|c| c.modify_blueprint_at(id.clone(), u32::MAX, BlueprintPatch::default()));
    assert_eq!(refusal_of(&x, req), Some(Refusal::Invalid), "version jump");
    let req = x
        .modify_blueprint(id.clone(), BlueprintPatch::default())
        .unwrap();
    assert_eq!(refusal_of(&x, req), None, "the next version still passes");
    honest.round();
    // Teleporting oneself to 1e30 (no change id to refuse) closes the sender.
    let t = relay.client("teleporter");
    let me = t.player().unwrap();
    t.with_core(|c| {
        c.send_raw(&neonet::proto::ClientMsg::PlayerTeleport {
            target: me,
            position: Vec3::new(1e30, 0.0, 0.0),
            rotation_y: 0.0,
        })
    });
    let err = t.wait_for(WAIT, |_| false).unwrap_err();
    assert!(
        err.to_string().contains("player_teleport breaks a limit"),
        "closed with the reason: {err}"
    );
    honest.round();
    honest.check_moved();
}

#[test]
fn quotas_refuse_what_would_fill_the_world_and_an_admin_deletes_it() {
    let relay = relay_with(&[
        ("entities_per_user_max", "3"),
        ("blueprint_bytes_per_user_max", "20000"),
        ("world_bytes_max", "50000"),
    ]);
    let mut honest = Honest::join(&relay);
    let x = relay.client("hoarder");
    let req = x.add_blueprint(blueprint("small", 100)).unwrap();
    assert_eq!(refusal_of(&x, req), None);
    let place = |c: &Client| {
        let req = c
            .add_entity(BlueprintId("small".into()), Transform::default(), vec![])
            .unwrap();
        refusal_of(c, req)
    };
    for _ in 0..3 {
        assert_eq!(place(&x), None);
    }
    assert_eq!(
        place(&x),
        Some(Refusal::WorldFull),
        "past the per-user app cap"
    );
    assert_eq!(place(&honest.a), None, "another builder still places apps");
    let req = x.add_blueprint(blueprint("big", 19_000)).unwrap();
    assert_eq!(refusal_of(&x, req), None);
    let req = x.add_blueprint(blueprint("bigger", 2_000)).unwrap();
    assert_eq!(
        refusal_of(&x, req),
        Some(Refusal::WorldFull),
        "past the per-user blueprint bytes"
    );
    // Two more builders fill the world's bytes; the third is refused.
    let (y, z) = (relay.client("y"), relay.client("z"));
    let req = y.add_blueprint(blueprint("y1", 19_000)).unwrap();
    assert_eq!(refusal_of(&y, req), None);
    let req = z.add_blueprint(blueprint("z1", 19_000)).unwrap();
    assert_eq!(
        refusal_of(&z, req),
        Some(Refusal::WorldFull),
        "past the world's bytes"
    );
    honest.round();
    // An admin deletes the hoarder's blueprint and its apps; the space comes back.
    let admin = relay.client("admin");
    let req = admin
        .send_command(vec!["admin".into(), "sesame".into()])
        .unwrap();
    assert_eq!(refusal_of(&admin, req), None);
    let req = x
        .send_command(vec!["delete".into(), "blueprint".into(), "big".into()])
        .unwrap();
    assert_eq!(
        refusal_of(&x, req),
        Some(Refusal::Rank),
        "only an admin deletes blueprints"
    );
    let req = admin
        .send_command(vec!["delete".into(), "blueprint".into(), "big".into()])
        .unwrap();
    assert_eq!(refusal_of(&admin, req), None);
    let req = admin.with_core(|c| c.remove_blueprint(BlueprintId("small".into())));
    assert_eq!(refusal_of(&admin, req), None, "BlueprintRemove");
    expect(
        &honest.b,
        "the deletion reaches everyone",
        |e| matches!(e, ClientEvent::BlueprintRemoved(id) if id.0 == "small"),
    );
    honest.b.with_world(|w| {
        assert!(w
            .entities
            .values()
            .all(|e| e.blueprint.as_ref().is_none_or(|b| b.0 != "small")));
        assert!(!w.blueprints.contains_key(&BlueprintId("big".into())));
    });
    let req = z.add_blueprint(blueprint("z1", 19_000)).unwrap();
    assert_eq!(refusal_of(&z, req), None, "room again after the deletion");
    honest.round();
    honest.check_moved();
}

#[test]
fn chat_and_command_floods_are_refused_then_the_flooder_is_closed() {
    let relay = relay_with(&[]);
    let mut honest = Honest::join(&relay);
    let f = relay.client("chatty");
    let reqs: Vec<ReqId> = (0..15)
        .map(|i| f.send_chat(format!("spam {i}")).unwrap())
        .collect();
    let mut refused = 0;
    for req in reqs {
        if refusal_of(&f, req) == Some(Refusal::RateLimited) {
            refused += 1;
        }
    }
    assert!(
        refused >= 3,
        "a chat burst past 10 is refused RateLimited ({refused})"
    );
    honest.round();
    for i in 0..40 {
        if f.send_chat(format!("more {i}")).is_err() {
            break;
        }
    }
    let err = f.wait_for(WAIT, |_| false).unwrap_err();
    assert!(
        err.to_string().contains("flooding"),
        "closed Flooding: {err}"
    );
    let c = relay.client("commander");
    for _ in 0..40 {
        if c.send_command(vec!["name".into(), "x".into()]).is_err() {
            break;
        }
    }
    let err = c.wait_for(WAIT, |_| false).unwrap_err();
    assert!(
        err.to_string().contains("commands kept coming"),
        "closed: {err}"
    );
    honest.round();
    honest.check_moved();
}

#[test]
fn tokenless_joins_from_one_address_are_capped_and_joins_with_a_token_are_not() {
    let relay = relay_with(&[
        ("tokenless_joins_per_addr_burst", "5"),
        ("tokenless_joins_per_addr_per_s", "0.01"),
    ]);
    let mut honest = Honest::join(&relay);
    let token = honest.a.token().unwrap();
    // Two tokenless joins spent by the honest clients; three more pass, then refusals.
    let mut joined = Vec::new();
    let mut refused = None;
    for i in 0..6 {
        match Client::connect(relay.addr, relay.options(&format!("new{i}"))) {
            Ok(c) => joined.push(c),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert_eq!(
        joined.len(),
        3,
        "the burst of tokenless joins, less the honest two"
    );
    match refused {
        Some(ConnectError::Refused { reason, detail }) => {
            assert_eq!(reason, CloseReason::Flooding);
            assert!(detail.contains("join with your token"), "{detail}");
        }
        other => panic!("expected a Flooding refusal, got {other:?}"),
    }
    honest.round();
    // Coming back with a token is never held back.
    drop(std::mem::replace(
        &mut honest.a,
        Client::connect(
            relay.addr,
            neonet::client::ClientOptions {
                token: Some(token),
                ..relay.options("honest-a")
            },
        )
        .expect("a join with a token is never held back"),
    ));
    // The new connection is a new client: it walks on as the old one did.
    honest.a.set_input(CharacterInput {
        move_z: 127,
        ..CharacterInput::default()
    });
    honest.round();
    honest.check_moved();
}

#[test]
fn connections_from_one_address_are_capped_and_a_closed_one_frees_its_slot() {
    let relay = relay_with(&[("connections_per_addr_max", "4")]);
    let mut honest = Honest::join(&relay);
    let (c3, _c4) = (relay.client("third"), relay.client("fourth"));
    match Client::connect(relay.addr, relay.options("fifth")) {
        Err(ConnectError::Handshake(e)) => {
            assert!(e.to_string().contains("refused"), "refused: {e}")
        }
        other => panic!(
            "expected the fifth connection refused, got {:?}",
            other.map(|_| ())
        ),
    }
    honest.round();
    c3.close();
    let again = (0..50).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        Client::connect(relay.addr, relay.options("fifth")).ok()
    });
    assert!(
        again.is_some(),
        "a closed connection frees its address's slot"
    );
    honest.round();
    honest.check_moved();
}

/// `n` QUIC Initials of `n` distinct connection attempts (each its own connection id), made by
/// a real quinn client pointed at a socket of ours that never answers.
fn capture_initials(relay: &TestRelay, n: usize) -> Vec<Vec<u8>> {
    let trap = UdpSocket::bind("127.0.0.1:0").unwrap();
    trap.set_read_timeout(Some(WAIT)).unwrap();
    let addr = trap.local_addr().unwrap();
    let crypto =
        neonet::tls::client_crypto(&neonet::tls::Trust::Sha256(relay.fingerprint)).unwrap();
    let mut crypto = crypto;
    crypto.alpn_protocols = vec![neonet::proto::wire::msg::ALPN.to_vec()];
    let cfg = quinn::ClientConfig::new(std::sync::Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap(),
    ));
    let _guard = relay.runtime().enter();
    let endpoint = neonet::quic::client_endpoint(addr).unwrap();
    let attempts: Vec<_> = (0..n)
        .map(|_| {
            endpoint
                .connect_with(cfg.clone(), addr, "localhost")
                .unwrap()
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut initials = Vec::new();
    let mut buf = vec![0u8; 2048];
    while initials.len() < n {
        let (len, _) = trap.recv_from(&mut buf).expect("the client's Initials");
        // Long header, type Initial; the destination connection id tells attempts apart.
        if buf[0] & 0xf0 != 0xc0 {
            continue;
        }
        let dcid_len = buf[5] as usize;
        if seen.insert(buf[6..6 + dcid_len].to_vec()) {
            initials.push(buf[..len].to_vec());
        }
    }
    drop(attempts);
    endpoint.close(0u32.into(), b"");
    initials
}

#[test]
fn a_handshake_flood_gets_retries_holds_no_join_slots_and_an_honest_newcomer_gets_in() {
    // Six connection slots: the two honest clients and the newcomer need three; the flood's
    // 300 half-open handshakes hold none.
    let relay = relay_configured(&[("handshakes_before_retry", "32")], |c| {
        c.connections_max = 6
    });
    let mut honest = Honest::join(&relay);
    // The attacker's tooling (a quinn client endpoint making 300 attempts) runs in this
    // process too and costs ~10 MiB that glibc keeps after it is freed: the baseline is taken
    // after it, so what is measured is the relay's answer to the flood.
    let initials = capture_initials(&relay, 300);
    let baseline = rss_bytes();
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in &initials {
        flood.send_to(i, relay.addr).unwrap();
    }
    // Past 32 half-open handshakes, unvalidated attempts are answered with a Retry (long
    // header, type 3) instead of a handshake.
    flood
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let (mut retries, mut handshakes) = (0, 0);
    let mut buf = [0u8; 2048];
    while let Ok(n) = flood.recv(&mut buf) {
        match buf[0] & 0xf0 {
            _ if n == 0 => {}
            0xf0 => retries += 1,
            0xc0 => handshakes += 1,
            _ => {}
        }
    }
    assert!(
        retries >= 100,
        "the flood got Retry packets ({retries}, {handshakes} handshake replies)"
    );
    // An honest newcomer still gets in (its client answers a Retry if it gets one), and joins.
    let newcomer = relay.client("newcomer");
    assert!(newcomer.player().is_some());
    honest.round();
    honest.check_moved();
    drop(flood);
    drop(newcomer);
    // Memory: the process (relay and test) stays near its baseline right after the flood...
    let after = rss_bytes();
    assert!(
        after < baseline + 128 * 1024 * 1024,
        "memory after the flood {after} B, baseline {baseline} B"
    );
    // ...and returns to within RECOVERED_MARGIN of it once the flood's connection state is
    // gone (half-open handshakes time out; their buffers are freed).
    let mut polls = 0;
    let recovered = loop {
        let now = rss_bytes();
        if now <= baseline + RECOVERED_MARGIN || polls >= RECOVERY_POLLS_MAX {
            break now;
        }
        polls += 1;
        honest.round();
        std::thread::sleep(RECOVERY_POLL);
    };
    let mib = |b: u64| b as f64 / 1048576.0;
    eprintln!(
        "rss baseline {:.1} MiB, after a 300-handshake flood {:.1} MiB ({retries} retries), \
         {:.1} MiB after {polls} polls",
        mib(baseline),
        mib(after),
        mib(recovered),
    );
    assert!(
        recovered <= baseline + RECOVERED_MARGIN,
        "memory {recovered} B did not come back within {RECOVERED_MARGIN} B of the baseline \
         {baseline} B"
    );
}

/// How near its baseline the process's resident memory must come back after a flood: 8 MiB.
/// Measured (2 cores, glibc): baseline 29.4 MiB, 31.1 MiB right after the 300-handshake
/// flood, 31.5 MiB after the newcomer came and went, then flat over 30 polls (15 s): ~2 MiB
/// stays. glibc keeps freed small chunks in its per-thread arenas rather than returning them
/// to the system (std has no `malloc_trim`), and the honest clients keep running meanwhile;
/// this test does not tell that apart from state the flood left, but the margin is four times
/// what stays, so a leak per handshake or per-connection buffers kept after close would pass
/// it.
const RECOVERED_MARGIN: u64 = 8 * 1024 * 1024;
/// Polls of the resident memory after a flood, [`RECOVERY_POLL`] apart: 20, ten seconds at
/// most, never an assertion on time.
const RECOVERY_POLLS_MAX: u32 = 20;
/// Between two polls of the resident memory.
const RECOVERY_POLL: Duration = Duration::from_millis(500);

#[test]
fn a_world_at_every_cap_still_admits_a_newcomer_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = RelayConfig::for_tests(dir.path());
        c.persist = true;
        c.limits.entities_per_user_max = 20;
        // One builder may fill the whole world's bytes (the default world cap, 3 MiB).
        c.limits.blueprint_bytes_per_user_max = 8 * 1024 * 1024;
        c
    };
    let rt = common::runtime();
    let mut world = neonet::proto::persist::World::default();
    world.settings.default_rank = Rank::Builder;
    let relay = rt
        .block_on(Relay::start_with(
            config(),
            RelayHooks {
                world,
                ..RelayHooks::default()
            },
        ))
        .unwrap();
    let fingerprint = relay.cert_fingerprint();
    let opts = |name: &str| neonet::client::ClientOptions {
        name: name.into(),
        trust: neonet::tls::Trust::Sha256(fingerprint),
        connect_timeout: WAIT,
        ..neonet::client::ClientOptions::default()
    };
    let x = Client::connect(relay.local_addr(), opts("filler")).unwrap();
    let mut n = 0;
    loop {
        n += 1;
        let req = x
            .add_blueprint(blueprint(&format!("b{n}"), 400 * 1024))
            .unwrap();
        match refusal_of(&x, req) {
            None => {}
            Some(Refusal::WorldFull) => break,
            Some(r) => panic!("unexpected refusal {r:?}"),
        }
        assert!(n < 20, "the world cap holds");
    }
    let placed = (0..25)
        .filter(|_| {
            let req = x
                .add_entity(BlueprintId("b1".into()), Transform::default(), vec![])
                .unwrap();
            refusal_of(&x, req).is_none()
        })
        .count();
    assert!(placed <= 20, "the per-user app cap holds ({placed})");
    let newcomer =
        Client::connect(relay.local_addr(), opts("newcomer")).expect("joins a full world");
    assert!(newcomer.with_world(|w| w.blueprints.len()) >= n - 1);
    // The world's 3 MiB came in pieces of at most 64 KiB (the client refuses any other size).
    let pieces = newcomer.figures().snapshot_pieces;
    eprintln!("the newcomer's snapshot came in {pieces} pieces");
    assert!(
        pieces as usize >= (n - 1) * 400 * 1024 / SNAPSHOT_PIECE_BYTES_MAX,
        "the snapshot came in pieces ({pieces})"
    );
    drop(newcomer);
    drop(x);
    rt.block_on(relay.shutdown()).unwrap();
    let relay = rt
        .block_on(Relay::start_with(config(), RelayHooks::default()))
        .unwrap();
    assert_eq!(relay.cert_fingerprint(), fingerprint);
    let again = Client::connect(relay.local_addr(), opts("after-restart"))
        .expect("joins the full world after a restart");
    assert!(again.with_world(|w| w.blueprints.len()) >= n - 1);
    assert!(
        again.figures().snapshot_pieces > 1,
        "in pieces after a restart too"
    );
    drop(again);
    rt.block_on(relay.shutdown()).unwrap();
}
