//! Connections that survive, over real UDP sockets: a client's socket rebinding is a QUIC
//! migration (no reconnection); a relay killed with SIGKILL and restarted is found again by its
//! clients, which lose nothing acknowledged and deliver what they sent while it was down once;
//! a kicked client stays out; a client that dies is shown to the others as "connection lost"
//! within the idle timeout (3 s).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{TestRelay, WAIT};
use neonet::client::{Client, ClientEvent, ClientOptions, ClientState};
use neonet::tls::{Fingerprint, Trust};
use neonet_proto::server::LOST_PROP;
use neonet_proto::types::EntityId;
use neonet_proto::wire::msg::{ClientMsg, CloseReason};

fn chat_bodies(c: &Client) -> Vec<String> {
    c.world().chat.iter().map(|m| m.body.clone()).collect()
}

fn wait_until(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_whose_socket_rebinds_keeps_its_session_without_reconnecting() {
    let relay = TestRelay::start();
    let ada = relay.client("ada");
    let bo = relay.client("bo");
    let (session, player) = (ada.with_core(|c| c.session()), ada.player());
    let before = ada.local_addr().unwrap();
    let after = ada.rebind().unwrap();
    assert_ne!(before.port(), after.port(), "a new socket");
    ada.send_chat("from my new address").unwrap();
    let mut reconnected = false;
    let got = bo.wait_for(
        WAIT,
        |e| matches!(e, ClientEvent::Chat(m) if m.body == "from my new address"),
    );
    assert!(got.is_ok(), "{got:?}");
    ada.wait_for(WAIT, |e| {
        reconnected |= matches!(
            e,
            ClientEvent::Reconnecting { .. } | ClientEvent::Resumed { .. }
        );
        matches!(e, ClientEvent::Acked(_))
    })
    .unwrap();
    assert!(
        !reconnected,
        "the session went on over the migrated connection"
    );
    assert_eq!(ada.with_core(|c| c.session()), session);
    assert_eq!(ada.player(), player);
    assert_eq!(ada.state(), ClientState::Joined);
    // Nobody saw ada leave or join again.
    assert_eq!(bo.world().player_names().len(), 2);
    let mut churn = false;
    while let Some(e) = bo.poll_event() {
        churn |= matches!(e, ClientEvent::EntityRemoved(id) | ClientEvent::EntityAdded(id) if Some(id) == player);
    }
    assert!(!churn);
}

#[test]
fn a_kicked_client_does_not_reconnect() {
    let relay = TestRelay::start_config(
        |c| c.admin_code = Some("letmein".into()),
        neonet::relay::RelayHooks::default(),
    );
    let admin = relay.client("admin");
    admin
        .send_command(vec!["admin".into(), "letmein".into()])
        .unwrap();
    admin
        .wait_for(WAIT, |e| matches!(e, ClientEvent::Acked(_)))
        .unwrap();
    let target = relay.client("target");
    let player = target.player().unwrap();
    admin.with_core(|c| {
        c.send_raw(&ClientMsg::Kick {
            req: neonet_proto::types::ReqId(1000),
            target: player,
        })
    });
    let ev = target
        .wait_for(WAIT, |e| matches!(e, ClientEvent::Disconnected { .. }))
        .unwrap();
    assert!(
        matches!(
            ev,
            ClientEvent::Disconnected {
                reason: CloseReason::Moderation,
                ..
            }
        ),
        "{ev:?}"
    );
    // Long past the first reconnection delay: still out, never tried.
    std::thread::sleep(Duration::from_secs(2));
    let mut tried = false;
    while let Some(e) = target.poll_event() {
        tried |= matches!(
            e,
            ClientEvent::Reconnecting { .. } | ClientEvent::Joined { .. }
        );
    }
    assert!(!tried, "a kicked client tried to come back");
    assert!(matches!(
        target.state(),
        ClientState::Closed {
            reason: CloseReason::Moderation,
            ..
        }
    ));
    assert!(
        !admin.world().entities.contains_key(&player),
        "the kicked player left"
    );
}

/// A UDP forwarder between one client and the relay that can be cut: the client then looks
/// dead to the relay (no close, no packet), as after `kill -9` or a pulled cable.
struct Cable {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Cable {
    fn to(relay: SocketAddr) -> Cable {
        let outside = UdpSocket::bind("127.0.0.1:0").unwrap();
        let inside = UdpSocket::bind("127.0.0.1:0").unwrap();
        inside.connect(relay).unwrap();
        let addr = outside.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        for dir in 0..2 {
            let (outside, inside) = (outside.try_clone().unwrap(), inside.try_clone().unwrap());
            let (cut, client) = (cut.clone(), client.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                loop {
                    if dir == 0 {
                        let Ok((n, from)) = outside.recv_from(&mut buf) else {
                            return;
                        };
                        *client.lock().unwrap() = Some(from);
                        if !cut.load(Ordering::Relaxed) {
                            let _ = inside.send(&buf[..n]);
                        }
                    } else {
                        let Ok(n) = inside.recv(&mut buf) else { return };
                        let to = *client.lock().unwrap();
                        if let (false, Some(to)) = (cut.load(Ordering::Relaxed), to) {
                            let _ = outside.send_to(&buf[..n], to);
                        }
                    }
                }
            });
        }
        Cable { addr, cut }
    }
}

#[test]
fn a_dead_client_is_seen_as_connection_lost_by_the_others_within_the_idle_timeout() {
    let relay = TestRelay::start();
    let watcher = relay.client("watcher");
    let cable = Cable::to(relay.addr);
    let doomed = Client::connect(cable.addr, relay.options("doomed")).unwrap();
    let player = doomed.player().unwrap();
    watcher
        .wait_for(WAIT, |e| *e == ClientEvent::EntityAdded(player))
        .unwrap();
    let cut_at = watcher.core_now();
    cable.cut.store(true, Ordering::Relaxed);
    let lost = |w: &Client, p: EntityId| {
        w.world()
            .entities
            .get(&p)
            .is_some_and(|e| e.props.iter().any(|(k, _)| k == LOST_PROP))
    };
    watcher
        .wait_for(WAIT, |e| *e == ClientEvent::EntityModified(player))
        .unwrap();
    let seen_after = watcher.core_now().saturating_since(cut_at);
    assert!(
        lost(&watcher, player),
        "the player is marked lost, not removed"
    );
    eprintln!(
        "connection lost seen {} ms after the cut",
        seen_after.as_millis()
    );
    // Not left: its session waits for a resume.
    assert_eq!(watcher.world().player_names().len(), 2);
    drop(doomed);
}

/// A relay child process on a fixed port with its data and certificates in `dir`.
fn spawn_relay(dir: &Path, listen: &str) -> (Child, SocketAddr, Fingerprint) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_neonet-relay"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--cert-dir")
        .arg(dir.join("certs"))
        .args(["--listen", listen, "--no-http", "--log-level", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the relay binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut addr, mut fp) = (None, None);
    while addr.is_none() || fp.is_none() {
        let line = lines
            .recv_timeout(WAIT)
            .expect("the relay printed its address");
        if let Some(a) = line.strip_prefix("neonet-relay listening on udp ") {
            addr = Some(a.trim().parse().expect("address"));
        } else if let Some(f) = line.strip_prefix("certificate sha-256: ") {
            fp = Some(f.trim().parse().expect("fingerprint"));
        }
    }
    (child, addr.unwrap(), fp.unwrap())
}

#[test]
fn clients_come_back_by_themselves_after_the_relay_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut relay, addr, fp) = spawn_relay(dir.path(), "127.0.0.1:0");
    let options = |name: &str| ClientOptions {
        name: name.into(),
        trust: Trust::Sha256(fp),
        connect_timeout: WAIT,
        ..ClientOptions::default()
    };
    let ada = Client::connect(addr, options("ada")).unwrap();
    let bo = Client::connect(addr, options("bo")).unwrap();
    let mut acked = Vec::new();
    for i in 0..5 {
        let body = format!("before {i}");
        let req = ada.send_chat(body.clone()).unwrap();
        ada.wait_for(WAIT, |e| *e == ClientEvent::Acked(req))
            .unwrap();
        acked.push(body);
    }
    relay.kill().expect("SIGKILL");
    relay.wait().unwrap();
    // Both notice and start coming back.
    for c in [&ada, &bo] {
        wait_until("reconnecting", || {
            matches!(c.state(), ClientState::Reconnecting { .. })
        });
    }
    // Said while the relay is down: held, delivered once it is back.
    let held = ada.send_chat("while down").unwrap();
    let (mut relay, _, _) = spawn_relay(dir.path(), &addr.to_string());
    for c in [&ada, &bo] {
        wait_until("back in the world", || c.state() == ClientState::Joined);
    }
    ada.wait_for(WAIT, |e| *e == ClientEvent::Acked(held))
        .unwrap();
    acked.push("while down".into());
    wait_until("bo sees the held message", || {
        chat_bodies(&bo).iter().any(|b| b == "while down")
    });
    for c in [&ada, &bo] {
        let chat = chat_bodies(c);
        for body in &acked {
            assert_eq!(
                chat.iter().filter(|b| *b == body).count(),
                1,
                "{body} once in {chat:?}"
            );
        }
    }
    // The same users as before (their tokens survived in the relay's data).
    assert_eq!(ada.state(), ClientState::Joined);
    let _ = relay.kill();
    let _ = relay.wait();
}

#[test]
fn a_client_cut_off_for_seconds_resumes_its_session_and_delivers_what_it_said_once() {
    let relay = TestRelay::start();
    let watcher = relay.client("watcher");
    let cable = Cable::to(relay.addr);
    let ada = Client::connect(cable.addr, relay.options("ada")).unwrap();
    let (session, player) = (ada.with_core(|c| c.session()), ada.player().unwrap());
    watcher
        .wait_for(WAIT, |e| *e == ClientEvent::EntityAdded(player))
        .unwrap();
    cable.cut.store(true, Ordering::Relaxed);
    let said = ada.send_chat("said while cut off").unwrap();
    // Past the idle timeout: the relay marks ada lost, ada starts reconnecting.
    watcher
        .wait_for(WAIT, |e| *e == ClientEvent::EntityModified(player))
        .unwrap();
    wait_until("ada reconnecting", || {
        matches!(ada.state(), ClientState::Reconnecting { .. })
    });
    cable.cut.store(false, Ordering::Relaxed);
    ada.wait_for(WAIT, |e| matches!(e, ClientEvent::Resumed { .. }))
        .unwrap();
    ada.wait_for(WAIT, |e| *e == ClientEvent::Acked(said))
        .unwrap();
    assert_eq!(ada.with_core(|c| c.session()), session, "the same session");
    assert_eq!(ada.player(), Some(player), "the same player");
    wait_until("the watcher sees the message", || {
        chat_bodies(&watcher)
            .iter()
            .any(|b| b == "said while cut off")
    });
    assert_eq!(
        chat_bodies(&watcher)
            .iter()
            .filter(|b| *b == "said while cut off")
            .count(),
        1
    );
    wait_until("ada no longer marked lost", || {
        watcher
            .world()
            .entities
            .get(&player)
            .is_some_and(|e| !e.props.iter().any(|(k, _)| k == LOST_PROP))
    });
    let mut churn = false;
    while let Some(e) = watcher.poll_event() {
        churn |= matches!(e, ClientEvent::EntityRemoved(id) | ClientEvent::EntityAdded(id) if id == player);
    }
    assert!(!churn, "the watcher saw no leave and no join");
}
