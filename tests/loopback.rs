//! A relay and real clients over real QUIC on loopback: join, chat, blueprints, leave.

mod common;

use common::{expect, expect_all, TestRelay, WAIT};
use neonet::client::{Client, ClientEvent, ClientOptions, ConnectError};
use neonet::proto::types::{Blueprint, BlueprintId, BlueprintPatch};
use neonet::proto::wire::msg::{CloseReason, Refusal};
use neonet::tls::Trust;

#[test]
fn two_clients_join_chat_edit_a_blueprint_and_leave() {
    let relay = TestRelay::start();
    let ada = relay.client("ada");
    let ada_player = ada.player().expect("ada has a player");
    expect(&ada, "ada's join", |e| {
        matches!(e, ClientEvent::Joined { .. })
    });

    let bob = relay.client("bob");
    let bob_player = bob.player().expect("bob has a player");
    // Bob's snapshot lists ada; ada sees bob arrive.
    let names: Vec<String> = bob
        .world()
        .player_names()
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert!(names.contains(&"ada".to_string()), "bob sees {names:?}");
    expect(&ada, "bob's arrival", |e| {
        *e == ClientEvent::EntityAdded(bob_player)
    });
    assert!(ada
        .world()
        .player_names()
        .contains(&(bob_player, "bob".to_string())));

    // Chat, stamped by the server with the sender.
    bob.send_chat("hello ada").unwrap();
    let ClientEvent::Chat(m) = expect(&ada, "bob's chat", |e| matches!(e, ClientEvent::Chat(_)))
    else {
        unreachable!()
    };
    assert_eq!(
        (m.body.as_str(), m.from_name.as_str()),
        ("hello ada", "bob")
    );
    assert_eq!(m.from_entity, Some(bob_player));
    ada.send_chat("hi bob").unwrap();
    let ClientEvent::Chat(m) = expect(
        &bob,
        "ada's chat",
        |e| matches!(e, ClientEvent::Chat(m) if m.body == "hi bob"),
    ) else {
        unreachable!()
    };
    assert_eq!(m.from_entity, Some(ada_player));

    // A blueprint: ada adds it, bob sees it.
    let id = BlueprintId("crate".into());
    let add = ada
        .add_blueprint(Blueprint {
            id: id.clone(),
            version: 1,
            name: "Crate".into(),
            ..Blueprint::default()
        })
        .unwrap();
    expect(&bob, "the blueprint", |e| {
        *e == ClientEvent::BlueprintAdded(id.clone())
    });
    // The ack (control stream) and the relayed blueprint (world stream) may come in either order.
    expect_all(
        &ada,
        "the add's ack and own blueprint relayed back",
        &mut [&mut |e| *e == ClientEvent::Acked(add), &mut |e| {
            *e == ClientEvent::BlueprintAdded(id.clone())
        }],
    );

    // Ada modifies it to version 2; bob, not having seen that yet, also claims version 2 and
    // loses: refused with Conflict, and the current blueprint comes back.
    let req = ada
        .modify_blueprint(
            id.clone(),
            BlueprintPatch {
                name: Some("Ada's crate".into()),
                ..BlueprintPatch::default()
            },
        )
        .unwrap();
    let v2 = ClientEvent::BlueprintModified {
        id: id.clone(),
        version: 2,
    };
    expect_all(
        &ada,
        "ada's ack and own modification relayed back",
        &mut [&mut |e| *e == ClientEvent::Acked(req), &mut |e| *e == v2],
    );
    let bob_req = bob.with_core(|core| {
        core.modify_blueprint_at(
            id.clone(),
            2,
            BlueprintPatch {
                name: Some("Bob's crate".into()),
                ..BlueprintPatch::default()
            },
        )
    });
    // The refusal (control stream) and the current blueprint (world stream) travel on
    // different streams: wait for both, in either order.
    let (mut refused, mut current) = (false, false);
    expect(&bob, "the conflict and the current blueprint", |e| {
        match e {
            ClientEvent::Refused { req, reason } if *req == bob_req => {
                assert_eq!(*reason, Refusal::Conflict);
                refused = true;
            }
            ClientEvent::BlueprintModified { id: i, version: 2 } if *i == id => current = true,
            _ => {}
        }
        refused && current
    });
    let b = bob.with_world(|w| w.blueprints[&id].clone());
    assert_eq!((b.name.as_str(), b.version), ("Ada's crate", 2));
    let a = ada.with_world(|w| w.blueprints[&id].clone());
    assert_eq!(a, b, "both mirrors hold the same blueprint");

    // Bob leaves; ada sees his player removed.
    bob.close();
    expect(&ada, "bob's departure", |e| {
        *e == ClientEvent::EntityRemoved(bob_player)
    });
    ada.close();
    relay.shutdown();
}

#[test]
fn a_token_brings_back_the_same_user() {
    let relay = TestRelay::start();
    let ada = relay.client("ada");
    let (user, token) = (ada.user(), ada.token());
    // A signed JWT: header.payload.signature.
    assert!(token
        .as_deref()
        .is_some_and(|t| t.starts_with("ey") && t.split('.').count() == 3));
    ada.close();
    let again = Client::connect(
        relay.addr,
        ClientOptions {
            token: token.clone(),
            ..relay.options("ada")
        },
    )
    .unwrap();
    assert_eq!(again.user(), user);
    again.close();

    // A forged token (its payload naming another user, the signature kept) is refused with a
    // reason.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = token.unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let payload = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
    let other = payload.replace(
        &format!("\"sub\":\"{}\"", user.unwrap().0),
        "\"sub\":\"999\"",
    );
    assert_ne!(payload, other);
    let forged = format!("{}.{}.{}", parts[0], b64.encode(other), parts[2]);
    let err = Client::connect(
        relay.addr,
        ClientOptions {
            token: Some(forged),
            ..relay.options("mallory")
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Refused {
                reason: CloseReason::AuthFailed,
                ref detail,
            } if detail == "token refused: bad signature"
        ),
        "{err}"
    );
}

#[test]
fn trust_modes_accept_the_right_certificate_and_refuse_others() {
    let relay = TestRelay::start();
    let certs = relay.dir.path().join("certs");
    for trust in [
        Trust::DevCertDir(certs.clone()),
        Trust::CertFile(certs.join("dev-cert.pem")),
        Trust::DangerAcceptAnyCert,
    ] {
        let c = Client::connect(
            relay.addr,
            ClientOptions {
                trust: trust.clone(),
                ..relay.options("ada")
            },
        )
        .unwrap_or_else(|e| panic!("{trust:?}: {e}"));
        c.close();
    }
    let wrong = Client::connect(
        relay.addr,
        ClientOptions {
            trust: Trust::Sha256(neonet::tls::Fingerprint([7; 32])),
            ..relay.options("ada")
        },
    )
    .unwrap_err();
    assert!(matches!(wrong, ConnectError::Handshake(_)), "{wrong}");
}

#[test]
fn shutdown_tells_clients_why() {
    let relay = TestRelay::start();
    let ada = relay.client("ada");
    relay.shutdown();
    // The client says why, and (reconnection being on) starts coming back.
    let ev = ada
        .wait_for(WAIT, |e| {
            matches!(
                e,
                ClientEvent::Disconnected { .. } | ClientEvent::Reconnecting { .. }
            )
        })
        .unwrap();
    assert!(
        matches!(
            ev,
            ClientEvent::Reconnecting {
                reason: CloseReason::ServerShutdown,
                ..
            }
        ),
        "{ev:?}"
    );
}

#[test]
fn the_player_limit_refuses_with_a_reason() {
    let relay =
        TestRelay::start_config(|c| c.player_limit = 1, neonet::relay::RelayHooks::default());
    let ada = relay.client("ada");
    let err = Client::connect(relay.addr, relay.options("bob")).unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Refused {
                reason: CloseReason::PlayerLimit,
                ..
            }
        ),
        "{err}"
    );
    ada.close();
}

#[test]
fn the_connection_limit_refuses_extra_connections() {
    let relay = TestRelay::start_config(
        |c| c.connections_max = 1,
        neonet::relay::RelayHooks::default(),
    );
    let ada = relay.client("ada");
    let err = Client::connect(relay.addr, relay.options("bob")).unwrap_err();
    assert!(matches!(err, ConnectError::Handshake(_)), "{err}");
    ada.send_chat("still fine").unwrap();
    expect(&ada, "own chat", |e| matches!(e, ClientEvent::Chat(_)));
}

#[test]
fn effects_reach_the_sink() {
    use neonet::proto::persist::Change;
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let relay = TestRelay::start_with(neonet::relay::RelayHooks {
        effects: Some(Box::new(move |e| sink.lock().unwrap().push(e.change))),
        ..Default::default()
    });
    let ada = relay.client("ada");
    ada.send_chat("remember me").unwrap();
    expect(&ada, "own chat", |e| matches!(e, ClientEvent::Chat(_)));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = seen
            .lock()
            .unwrap()
            .iter()
            .any(|c| matches!(c, Change::AppendChat(m) if m.body == "remember me"));
        if found {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no AppendChat effect");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn datagrams_are_sized_by_the_path() {
    let relay = TestRelay::start();
    let ada = relay.client("ada");
    ada.send_datagram(vec![0u8; 16]).unwrap();
    // Path MTU discovery raises the maximum while the connection is young: one byte over the
    // maximum is refused, unless the maximum grew between reading it and sending (then again,
    // with the new one; it grows a bounded number of times).
    let err = loop {
        let max = ada.max_datagram_size().expect("datagrams are on");
        match ada.send_datagram(vec![0u8; max + 1]) {
            Err(e) => break e,
            Ok(()) => assert!(
                ada.max_datagram_size().expect("datagrams are on") > max,
                "a datagram of {} bytes went over a path whose maximum is {max}",
                max + 1
            ),
        }
    };
    assert!(
        matches!(err, neonet::client::ClientError::DatagramTooLarge { .. }),
        "{err}"
    );
}

#[test]
fn metrics_count_connections_joins_and_users() {
    use neonet::metrics::{Metrics, MetricsConfig};
    use std::sync::Arc;
    let metrics = Arc::new(Metrics::new(MetricsConfig::default()));
    let relay = TestRelay::start_with(neonet::relay::RelayHooks {
        metrics: Some(metrics.clone()),
        ..Default::default()
    });
    let ada = relay.client("ada");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = metrics.status();
        if s.connections == 1 && s.joins == 1 && s.users.iter().any(|u| u.name == "ada") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never showed ada: {s:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ada.close();
}

/// The binary with no configuration: creates `certs/` and `data/` in its working folder, prints
/// its address and fingerprint, serves a client that trusts `./certs/` by default, and exits
/// cleanly on SIGTERM.
#[cfg(unix)]
#[test]
fn the_relay_binary_starts_with_no_configuration_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_neonet-relay"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the relay binary runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = None;
    let mut fingerprint = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("neonet-relay listening on udp ") {
            addr = Some(a.trim().parse::<std::net::SocketAddr>().unwrap());
        }
        if let Some(f) = line.strip_prefix("certificate sha-256: ") {
            fingerprint = Some(f.trim().parse::<neonet::tls::Fingerprint>().unwrap());
            break;
        }
    }
    let (addr, fingerprint) = (
        addr.expect("address printed"),
        fingerprint.expect("fingerprint"),
    );
    // The hint it prints is the release build the README uses (a plain `cargo run` would start
    // a second, debug build).
    let hint = lines.next().expect("a connect hint").unwrap();
    assert!(
        hint.starts_with(&format!(
            "connect with: cargo run --release --example chat -- {addr}"
        )),
        "{hint}"
    );
    assert!(dir.path().join("certs/dev-cert.der").is_file());
    assert!(dir.path().join("data").is_dir());
    let client = Client::connect(
        addr,
        ClientOptions {
            trust: Trust::DevCertDir(dir.path().join("certs")),
            connect_timeout: WAIT,
            ..ClientOptions::named("ada")
        },
    )
    .unwrap();
    assert_eq!(
        fingerprint,
        neonet::tls::Fingerprint::of(
            &std::fs::read(dir.path().join("certs/dev-cert.der")).unwrap()
        )
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The client says why, and (reconnection being on) starts coming back.
    let ev = client
        .wait_for(WAIT, |e| {
            matches!(
                e,
                ClientEvent::Disconnected { .. } | ClientEvent::Reconnecting { .. }
            )
        })
        .unwrap();
    assert!(
        matches!(
            ev,
            ClientEvent::Reconnecting {
                reason: CloseReason::ServerShutdown,
                ..
            }
        ),
        "{ev:?}"
    );
    let deadline = std::time::Instant::now() + WAIT;
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the relay did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_configured_certificate_is_used_instead_of_the_development_one() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["relay.test".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("real.pem"), dir.path().join("real.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let relay = TestRelay::start_config(
        |c| {
            c.cert_path = Some(cert.clone());
            c.key_path = Some(key.clone());
        },
        neonet::relay::RelayHooks::default(),
    );
    assert_eq!(
        relay.fingerprint,
        neonet::tls::Fingerprint::of(ck.cert.der())
    );
    assert!(
        !relay.dir.path().join("certs").exists(),
        "no development certificate made"
    );
    // Ordinary WebPKI verification with the certificate as the root and its name.
    let c = Client::connect(
        relay.addr,
        ClientOptions {
            trust: Trust::Roots(vec![ck.cert.der().clone()]),
            server_name: "relay.test".into(),
            ..relay.options("ada")
        },
    )
    .unwrap();
    c.close();
    // The wrong name fails verification.
    let err = Client::connect(
        relay.addr,
        ClientOptions {
            trust: Trust::Roots(vec![ck.cert.der().clone()]),
            server_name: "other.test".into(),
            ..relay.options("ada")
        },
    )
    .unwrap_err();
    assert!(matches!(err, ConnectError::Handshake(_)), "{err}");
}

/// Many clients as tasks on one runtime (as the load tool runs them): all join, and a chat
/// reaches every one of them.
#[test]
fn async_clients_share_one_runtime() {
    let relay = TestRelay::start();
    let addr = relay.addr;
    let options: Vec<ClientOptions> = (0..20).map(|i| relay.options(&format!("bot{i}"))).collect();
    relay.runtime().block_on(async move {
        let mut clients = Vec::new();
        for o in options {
            clients.push(Client::connect_async(addr, o).await.expect("joins"));
        }
        clients[0].send_chat("hello bots").unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut heard = vec![false; clients.len()];
        while !heard.iter().all(|h| *h) {
            for (i, c) in clients.iter().enumerate() {
                while let Some(e) = c.poll_event() {
                    if matches!(e, ClientEvent::Chat(ref m) if m.body == "hello bots") {
                        heard[i] = true;
                    }
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "heard: {heard:?}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        for c in clients {
            c.close_async().await;
        }
    });
}

#[test]
fn joining_again_replaces_the_old_session() {
    let relay = TestRelay::start();
    let first = relay.client("ada");
    let token = first.token();
    let second = Client::connect(
        relay.addr,
        ClientOptions {
            token,
            ..relay.options("ada")
        },
    )
    .unwrap();
    assert_eq!(second.user(), first.user());
    let ev = first
        .wait_for(WAIT, |e| matches!(e, ClientEvent::Disconnected { .. }))
        .unwrap();
    assert!(
        matches!(
            ev,
            ClientEvent::Disconnected {
                reason: CloseReason::DuplicateUser,
                ..
            }
        ),
        "{ev:?}"
    );
    assert!(matches!(
        first.send_chat("still here?"),
        Err(neonet::client::ClientError::Closed { .. })
    ));
    second.send_chat("I am the one").unwrap();
    expect(&second, "own chat", |e| matches!(e, ClientEvent::Chat(_)));
}

/// With durable acknowledgements, a change is acknowledged only after the store says so
/// through `Inbound::Store`.
#[test]
fn durable_acks_wait_for_the_store() {
    use neonet::proto::persist::Change;
    use neonet::relay::{Inbound, RelayHooks};
    let (tx, rx) = std::sync::mpsc::channel();
    let relay = TestRelay::start_with(RelayHooks {
        effects: Some(Box::new(move |e| {
            let _ = tx.send(e);
        })),
        durable_acks: true,
        ..Default::default()
    });
    let ada = relay.client("ada");
    let req = ada.send_chat("keep this").unwrap();
    let effect = loop {
        let e = rx.recv_timeout(WAIT).expect("the chat's effect");
        if matches!(e.change, Change::AppendChat(_)) {
            break e;
        }
    };
    let token = effect.ack.expect("the sender waits for this change");
    assert_eq!(token.req, req);
    // The chat is relayed at once; its ack is held until the store confirms it.
    let mut early = Vec::new();
    expect(&ada, "own chat", |e| {
        early.push(e.clone());
        matches!(e, ClientEvent::Chat(_))
    });
    assert!(!early.contains(&ClientEvent::Acked(req)), "{early:?}");
    relay
        .handle()
        .inbound()
        .blocking_send(Inbound::Store(
            neonet::proto::persist::StoreReport::Durable(vec![token]),
        ))
        .unwrap();
    expect(&ada, "the durable ack", |e| *e == ClientEvent::Acked(req));
}

/// A large blueprint travels on the world stream, reaches the others and a newcomer's snapshot,
/// and chat keeps flowing beside it.
#[test]
fn a_large_blueprint_reaches_everyone() {
    use neonet::proto::types::Bytes as PropBytes;
    let relay = TestRelay::start();
    let ada = relay.client("ada");
    let bob = relay.client("bob");
    let id = BlueprintId("big".into());
    let props = PropBytes((0..500_000u32).map(|i| (i % 251) as u8).collect());
    ada.add_blueprint(Blueprint {
        id: id.clone(),
        version: 1,
        props: props.clone(),
        ..Blueprint::default()
    })
    .unwrap();
    ada.send_chat("sent a big one").unwrap();
    expect_all(
        &bob,
        "the big blueprint and the chat",
        &mut [
            &mut |e| *e == ClientEvent::BlueprintAdded(id.clone()),
            &mut |e| matches!(e, ClientEvent::Chat(m) if m.body == "sent a big one"),
        ],
    );
    assert_eq!(bob.with_world(|w| w.blueprints[&id].props.clone()), props);
    let cy = relay.client("cy");
    assert_eq!(cy.with_world(|w| w.blueprints[&id].props.clone()), props);
}
