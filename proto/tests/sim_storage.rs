//! Storage answers over the simulated network: what a client sees when the store is full
//! (back-pressure), when the disk fails (refused up front until a commit succeeds), and when it
//! recovers. The store here is the test, answering the core's effects with `handle_store`.

use std::time::Duration;

use neonet_proto::client::{ClientConfig, ClientEvent, ClientState};
use neonet_proto::persist::{AckToken, Change, StoreReport, World};
use neonet_proto::server::{InsecureTokens, ServerConfig};
use neonet_proto::sim::{run_seeds, LinkConfig, Sim};
use neonet_proto::types::ReqId;
use neonet_proto::wire::msg::Refusal;

fn joined_sim(seed: u64) -> Sim {
    let config = ServerConfig {
        durable_acks: true,
        ..ServerConfig::default()
    };
    let mut s = Sim::new(seed, config, World::default(), Box::new(InsecureTokens)).with_effects();
    let link = LinkConfig::hostile();
    s.add_client(
        ClientConfig {
            name: "ada".into(),
            token: None,
        },
        link.clone(),
        link,
    );
    assert!(
        s.run_until_true(Duration::from_secs(10), |s| {
            *s.clients[0].core.state() == ClientState::Joined
        }),
        "seed {seed}: joined"
    );
    s
}

/// Sends a chat message and runs until the server emitted its effect; returns the token the
/// store must answer, if the core asked for one.
fn chat(s: &mut Sim, body: &str) -> (ReqId, Option<AckToken>) {
    let req = s.with_client(0, |c| c.send_chat(body));
    let mut token = None;
    let mut seen_refusal = false;
    s.run_until_true(Duration::from_secs(10), |s| {
        seen_refusal = s.clients[0]
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::Refused { req: r, .. } if *r == req));
        seen_refusal
    });
    for e in s.server_effects.drain(..) {
        if let (Change::AppendChat(m), Some(t)) = (&e.change, e.ack) {
            if m.body == body {
                token = Some(t);
            }
        }
    }
    (req, token)
}

fn answer(s: &mut Sim, req: ReqId) -> ClientEvent {
    let mut found = None;
    s.run_until_true(Duration::from_secs(10), |s| {
        found = s.clients[0]
            .events
            .iter()
            .find(|e| {
                matches!(e, ClientEvent::Acked(r) if *r == req)
                    || matches!(e, ClientEvent::Refused { req: r, .. } if *r == req)
            })
            .cloned();
        found.is_some()
    });
    found.expect("the change was answered")
}

#[test]
fn a_full_store_refuses_that_change_as_busy_and_the_next_one_passes() {
    run_seeds(0..8, |seed| {
        let mut s = joined_sim(seed);
        let (req, token) = chat(&mut s, "one");
        let token = token.expect("a durable change waits for the store");
        s.server.handle_store(StoreReport::Full(vec![token]));
        assert_eq!(
            answer(&mut s, req),
            ClientEvent::Refused {
                req,
                reason: Refusal::Busy
            },
            "seed {seed}"
        );
        // Back-pressure is not a failure: the next change is taken and acknowledged.
        let (req, token) = chat(&mut s, "two");
        let token = token.expect("the next change goes to the store");
        s.server.handle_store(StoreReport::Durable(vec![token]));
        assert_eq!(answer(&mut s, req), ClientEvent::Acked(req), "seed {seed}");
    });
}

#[test]
fn a_failing_disk_refuses_changes_up_front_until_a_commit_succeeds() {
    run_seeds(0..8, |seed| {
        let mut s = joined_sim(seed);
        let (req, token) = chat(&mut s, "one");
        s.server
            .handle_store(StoreReport::Failed(vec![token.expect("a token")]));
        assert_eq!(
            answer(&mut s, req),
            ClientEvent::Refused {
                req,
                reason: Refusal::Storage
            },
            "seed {seed}"
        );
        // While the disk fails, the next change is refused before it is applied.
        let (req, token) = chat(&mut s, "two");
        assert_eq!(
            token, None,
            "seed {seed}: refused up front, nothing to store"
        );
        assert_eq!(
            answer(&mut s, req),
            ClientEvent::Refused {
                req,
                reason: Refusal::Storage
            },
            "seed {seed}"
        );
        // A durable commit (even one with no acknowledgements) says the disk works again.
        s.server.handle_store(StoreReport::Durable(Vec::new()));
        let (req, token) = chat(&mut s, "three");
        s.server
            .handle_store(StoreReport::Durable(vec![token.expect("accepted again")]));
        assert_eq!(answer(&mut s, req), ClientEvent::Acked(req), "seed {seed}");
    });
}
