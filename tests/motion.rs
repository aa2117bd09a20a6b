//! Motion over real QUIC on loopback: transform datagrams reach other clients, and a client
//! predicts its own movement against the relay.

mod common;

use std::time::{Duration, Instant};

use common::{TestRelay, WAIT};
use neonet::client::{CharacterInput, Client};

fn wait_until(mut pred: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if pred() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    pred()
}

fn walk_forward() -> CharacterInput {
    CharacterInput {
        move_z: 127,
        ..Default::default()
    }
}

#[test]
fn two_clients_over_quic_see_each_other_move() {
    let relay = TestRelay::start();
    let a = Client::connect(relay.addr, relay.options("ada")).expect("ada joins");
    let b = Client::connect(relay.addr, relay.options("bob")).expect("bob joins");
    let pa = a.player().unwrap();
    let pb = b.player().unwrap();
    // Each sees the other's transform stream in.
    assert!(
        wait_until(|| b.latest_transform(pa).is_some()),
        "bob never got ada's transform"
    );
    let (_, start) = b.latest_transform(pa).unwrap();
    a.set_input(walk_forward());
    assert!(
        wait_until(|| b
            .latest_transform(pa)
            .is_some_and(|(_, t)| (t.position[2] - start.position[2]).abs() > 1.0)),
        "bob never saw ada move"
    );
    b.set_input(walk_forward());
    assert!(
        wait_until(|| a
            .latest_transform(pb)
            .is_some_and(|(_, t)| t.position[2] > 1.0)),
        "ada never saw bob move"
    );
    // Interpolation has samples to render.
    assert!(wait_until(|| {
        let at = b.begin_frame(1.0 / 60.0);
        at.is_some_and(|at| b.entity_transform(pa, at).is_some())
    }));
    a.close();
    b.close();
}

#[test]
fn a_client_predicts_its_own_movement_against_the_relay() {
    let relay = TestRelay::start();
    let c = Client::connect(relay.addr, relay.options("cam")).expect("joins");
    assert!(
        wait_until(|| c.player_transform().is_some()),
        "no authoritative state arrived"
    );
    c.set_input(walk_forward());
    // The predicted player moves at once, and the server agrees: compared states pile up.
    assert!(
        wait_until(|| c.player_transform().is_some_and(|t| t.position[2] > 2.0)),
        "the predicted player did not move"
    );
    assert!(
        wait_until(|| c.correction_stats().is_some_and(|s| s.checked > 30)),
        "no authoritative state was compared with the prediction"
    );
    c.set_input(CharacterInput::default());
    let stopped_at = c.player_transform().unwrap();
    assert!(stopped_at.position[2] > 2.0);
    c.close();
}

#[test]
fn through_a_lossy_jittery_proxy_a_client_still_sees_movement_and_chat() {
    use neonet_proxy::{Proxy, ProxyConfig, ProxyLimits};
    let relay = TestRelay::start();
    let proxy = Proxy::start_on_thread(
        ProxyConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: relay.addr,
            loss: 0.1,
            delay_ms: 20,
            jitter_ms: 10,
            dup: 0.05,
            reorder: 0.05,
            rate_kbps: 0,
            queue_ms: neonet_proxy::QUEUE_MS_DEFAULT,
            seed: 11,
        },
        ProxyLimits::default(),
    )
    .expect("proxy starts");
    let mover = Client::connect(relay.addr, relay.options("mover")).expect("joins");
    let far = Client::connect(proxy.local_addr(), relay.options("far")).expect("joins via proxy");
    let pm = mover.player().unwrap();
    mover.set_input(walk_forward());
    assert!(
        wait_until(|| far
            .latest_transform(pm)
            .is_some_and(|(_, t)| t.position[2] > 2.0)),
        "the client behind the proxy never saw the mover move"
    );
    mover.send_chat("over the lossy link").unwrap();
    assert!(wait_until(|| far.with_world(|w| w
        .chat
        .iter()
        .any(|m| m.body == "over the lossy link"))));
    let stats = proxy.stats();
    assert!(
        stats.to_client.dropped + stats.to_upstream.dropped > 0,
        "the proxy dropped nothing: {stats:?}"
    );
    mover.close();
    far.close();
}
