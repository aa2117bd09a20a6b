//! The datagram inbox in front of the core: a connection flooding datagrams gets its share
//! (`DATAGRAM_INBOX_PER_CONN_MAX` per take) and no more, every other connection's datagrams still
//! reach the core, and the drops are reported.

use neonet_proto::server::{
    ConnId, DatagramInbox, InboxBatch, InboxQuota, InsecureTokens, ServerConfig, ServerCore,
    ServerEvent, TransportKind, World, DATAGRAM_INBOX_PER_CONN_MAX,
};
use neonet_proto::time::Time;
use neonet_proto::wire::codec;
use neonet_proto::wire::msg::{ClientMsg, PROTOCOL_VERSION};

fn joined_core(conns: &[ConnId]) -> ServerCore {
    let mut core = ServerCore::new(
        ServerConfig::default(),
        World::default(),
        Box::new(InsecureTokens),
        Time::ZERO,
    );
    for &c in conns {
        core.handle_connect(c, TransportKind::Sim, Time::ZERO);
        let hello = ClientMsg::Hello {
            protocol_version: PROTOCOL_VERSION,
            name: format!("p{}", c.0),
            token: None,
        };
        core.handle_frame(c, hello.channel(), &codec::encode(&hello), Time::ZERO);
        assert!(core.session_of(c).is_some(), "{c:?} joined");
    }
    while core.poll_event().is_some() {}
    core
}

#[test]
fn a_flooding_connection_gets_its_share_and_the_others_datagrams_still_reach_the_core() {
    let (flood, quiet) = (ConnId(1), ConnId(2));
    let mut core = joined_core(&[flood, quiet]);
    let mut inbox = DatagramInbox::new();
    let (mut flood_quota, mut quiet_quota) = (InboxQuota::default(), InboxQuota::default());
    // Undecodable datagrams: each one the core reads is reported as rejected, so the events
    // show exactly which datagrams reached it.
    let junk = vec![0xffu8; 40];
    let sent = 10_000;
    for i in 0..sent {
        let _ = inbox.push(flood, junk.clone(), Time(i), &mut flood_quota);
    }
    inbox
        .push(quiet, junk.clone(), Time(sent), &mut quiet_quota)
        .expect("the quiet connection's datagram is queued");
    let mut batch = InboxBatch::default();
    inbox.take(&mut batch);
    core.handle_inbox(&mut batch);
    assert!(batch.datagrams.is_empty(), "the core took them all");
    let events: Vec<ServerEvent> = std::iter::from_fn(|| core.poll_event()).collect();
    let read = |c: ConnId| {
        events
            .iter()
            .filter(|e| matches!(e, ServerEvent::DatagramRejected { conn, .. } if *conn == c))
            .count()
    };
    assert_eq!(read(flood), DATAGRAM_INBOX_PER_CONN_MAX);
    assert_eq!(
        read(quiet),
        1,
        "the quiet connection's datagram reached the core"
    );
    assert!(
        events.contains(&ServerEvent::DatagramsDropped {
            conn_full: sent - DATAGRAM_INBOX_PER_CONN_MAX as u64,
            inbox_full: 0,
        }),
        "the drops are reported: {:?}",
        events.last()
    );
    // The next take starts the flooder's share over.
    let _ = inbox.push(flood, junk, Time(sent + 1), &mut flood_quota);
    inbox.take(&mut batch);
    assert_eq!(batch.datagrams.len(), 1);
}

/// Over the simulated network: one client floods the server with datagrams far faster than a
/// tick takes them, while another plays normally. The flood is cut to its share at every take
/// and reported; the honest client's transform acknowledgements keep reaching the server (its
/// replicator keeps a round-trip estimate) and it keeps receiving the world.
#[test]
fn over_the_simulated_network_a_datagram_flood_is_cut_to_its_share_and_an_honest_client_plays_on() {
    use neonet_proto::client::{ClientConfig, ClientState};
    use neonet_proto::sim::{run_seeds, LinkConfig, Sim};
    use std::time::Duration;

    run_seeds(0..4, |seed| {
        // The inbox's share is what this proves; the session's datagram rate limit (which
        // would end the flooder's session: tests/adversarial_limits.rs) is lifted.
        let mut config = ServerConfig::default();
        config.limits.datagrams = neonet_proto::server::RateSpec::new(1e9, u32::MAX / 4);
        config.limits.bytes = neonet_proto::server::RateSpec::new(1e9, u32::MAX / 4);
        let mut s = Sim::new(seed, config, World::default(), Box::new(InsecureTokens));
        let link = LinkConfig::with_latency(Duration::from_millis(20));
        let cfg = |name: &str| ClientConfig {
            name: name.into(),
            token: None,
        };
        let (flooder, honest) = (
            s.add_client(cfg("flood"), link.clone(), link.clone()),
            s.add_client(cfg("honest"), link.clone(), link),
        );
        assert!(s.run_until_true(Duration::from_secs(5), |s| {
            s.clients
                .iter()
                .all(|c| *c.core.state() == ClientState::Joined)
        }));
        // 20 ms of virtual time between bursts, 500 junk datagrams each: far more than the
        // inbox's per-connection share between two takes.
        for _ in 0..100 {
            for _ in 0..500 {
                s.inject_datagram(flooder, vec![0xff; 40]);
            }
            s.run_for(Duration::from_millis(20));
        }
        let dropped: u64 = s
            .server_events
            .iter()
            .map(|e| match e {
                ServerEvent::DatagramsDropped { conn_full, .. } => *conn_full,
                _ => 0,
            })
            .sum();
        assert!(dropped > 0, "seed {seed}: the flood was cut");
        let honest_conn = s.clients[honest].conn;
        let rtt = s
            .server
            .session_of(honest_conn)
            .and_then(|sess| sess.rtt_estimate_us());
        assert!(
            rtt.is_some(),
            "seed {seed}: the honest client's acknowledgements reached the server"
        );
        assert_eq!(
            *s.clients[honest].core.state(),
            ClientState::Joined,
            "seed {seed}"
        );
        assert!(
            s.clients[honest]
                .core
                .latest_transform(s.clients[flooder].core.player().unwrap())
                .is_some(),
            "seed {seed}: the honest client sees the world move on"
        );
    });
}
