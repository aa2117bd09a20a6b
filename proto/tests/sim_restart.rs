//! Exactly-once changes across a relay restart, on the seeded simulated network: the store made
//! a change durable (and, in the same transaction, remembered it as acknowledged) in the
//! instant before the relay died, so its `Ack` never left; the relay restarts from the
//! persisted world, the client comes back by itself and resends the change, and the change is
//! applied once and answered with its original outcome. The store here is the test.

use std::time::Duration;

use neonet_proto::client::{ClientConfig, ClientEvent, ClientState, ReconnectConfig};
use neonet_proto::persist::{AckToken, Change, StoreReport};
use neonet_proto::server::{InsecureTokens, ServerConfig, ServerCore};
use neonet_proto::sim::{run_seeds, LinkConfig, Sim};

fn config() -> ServerConfig {
    ServerConfig {
        durable_acks: true,
        ..ServerConfig::default()
    }
}

fn joined(s: &Sim) -> bool {
    *s.clients[0].core.state() == ClientState::Joined
}

/// Runs one restart: returns (times the change is in the restarted world's chat, acks the
/// client saw for it).
fn restart_after_a_lost_ack(seed: u64, persist_ack: bool) -> (usize, usize) {
    let world = neonet_proto::persist::World::default();
    let mut s = Sim::new(seed, config(), world, Box::new(InsecureTokens)).with_effects();
    let link = LinkConfig::with_latency(Duration::from_millis(30));
    s.add_client(
        ClientConfig {
            name: "ada".into(),
            token: None,
        },
        link.clone(),
        link,
    );
    s.with_client(0, |c| {
        c.set_reconnect(Some(ReconnectConfig {
            seed,
            ..ReconnectConfig::default()
        }))
    });
    assert!(
        s.run_until_true(Duration::from_secs(10), joined),
        "seed {seed}: joined"
    );
    let req = s.with_client(0, |c| c.send_chat("once"));
    // The core applied the change and handed it to the store with its token.
    let mut token: Option<AckToken> = None;
    assert!(s.run_until_true(Duration::from_secs(5), |s| {
        s.server_effects.iter().any(
            |e| matches!((&e.change, e.ack), (Change::AppendChat(m), Some(_)) if m.body == "once"),
        )
    }));
    for e in s.server_effects.drain(..) {
        if let (Change::AppendChat(m), Some(t)) = (&e.change, e.ack) {
            if m.body == "once" {
                token = Some(t);
            }
        }
    }
    let token = token.expect("a durable change waits for the store");
    // The store committed it (the change and, with `persist_ack`, its acknowledgement row in
    // the same transaction); the relay dies before the old core hears of it: no `Ack` left.
    s.partition(0, Duration::from_secs(4));
    let mut persisted = s.server.world().clone();
    if persist_ack {
        persisted.acked = vec![token];
    }
    s.server = ServerCore::new(config(), persisted, Box::new(InsecureTokens), s.now());
    // The test is the new core's store: it makes every effect durable within 100 ms.
    s.server_effects.clear();
    let mut back = false;
    for _ in 0..300 {
        s.run_for(Duration::from_millis(100));
        let acks: Vec<AckToken> = s.server_effects.drain(..).filter_map(|e| e.ack).collect();
        s.server.handle_store(StoreReport::Durable(acks));
        if joined(&s) && s.clients[0].core.pending_requests().next().is_none() {
            back = true;
            break;
        }
    }
    assert!(back, "seed {seed}: back, nothing pending");
    s.run_for(Duration::from_secs(1));
    let in_world = s
        .server
        .world()
        .chat
        .iter()
        .filter(|m| m.body == "once")
        .count();
    let acks = s.clients[0]
        .events
        .iter()
        .filter(|e| **e == ClientEvent::Acked(req))
        .count();
    (in_world, acks)
}

#[test]
fn a_change_durable_before_a_restart_whose_ack_was_lost_is_applied_once_and_acked() {
    run_seeds(0..4, |seed| {
        assert_eq!(restart_after_a_lost_ack(seed, true), (1, 1), "seed {seed}");
    });
}

/// The control: without the persisted acknowledgement the resend is applied again, so the
/// test above can fail.
#[test]
fn without_the_persisted_acknowledgement_a_restart_applies_the_resend_twice() {
    let (in_world, _) = restart_after_a_lost_ack(1, false);
    assert_eq!(in_world, 2);
}
