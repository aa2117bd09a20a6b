//! A big snapshot in pieces over the simulated network: a world at its data cap (blueprints and
//! apps up to the default 3 MiB, a full chat history) is joined over a slow link. The snapshot
//! arrives in `SnapshotPiece`s none larger than the bound, the server's send queue to the
//! newcomer never holds more than its budget, and what the world did meanwhile reaches the
//! newcomer after its snapshot, in order: it ends up with the server's world.

use std::time::Duration;

use neonet_proto::client::{ClientConfig, ClientState};
use neonet_proto::persist::World;
use neonet_proto::server::limits::WORLD_BYTES_MAX_DEFAULT;
use neonet_proto::server::quota::{app_bytes, blueprint_bytes};
use neonet_proto::server::{InsecureTokens, ServerConfig, SNAPSHOT_QUEUE_BUDGET_BYTES};
use neonet_proto::sim::{run_seeds, LinkConfig, Sim};
use neonet_proto::types::*;
use neonet_proto::wire::limits::{CHAT_BYTES_MAX, CHAT_HISTORY_LEN, SNAPSHOT_PIECE_BYTES_MAX};

fn cfg(name: &str) -> ClientConfig {
    ClientConfig {
        name: name.into(),
        token: None,
    }
}

/// A builders' world at the default world data cap: seven 400 KiB blueprints, apps filling the
/// rest, and a full chat history of the longest messages.
fn world_at_the_cap() -> World {
    let mut w = World::default();
    w.settings.default_rank = Rank::Builder;
    let mut bytes = 0;
    for i in 0..7 {
        let bp = Blueprint {
            id: BlueprintId(format!("big{i}")),
            version: 1,
            name: format!("Big {i}"),
            props: Bytes(vec![i as u8; 400 * 1024]),
            ..Default::default()
        };
        bytes += blueprint_bytes(&bp);
        w.blueprints.insert(bp.id.clone(), bp);
    }
    let mut id = 1_000_000;
    loop {
        let e = Entity {
            id: EntityId(id),
            kind: EntityKind::App,
            owner: None,
            user: None,
            blueprint: Some(BlueprintId("big0".into())),
            transform: Transform::default(),
            props: vec![("state".into(), Bytes(vec![1; 64]))],
        };
        if bytes + app_bytes(&e) > WORLD_BYTES_MAX_DEFAULT {
            break;
        }
        bytes += app_bytes(&e);
        w.entities.insert(e.id, e);
        id += 1;
    }
    for i in 0..CHAT_HISTORY_LEN as u64 {
        w.chat.push_back(ChatMessage {
            id: i + 1,
            from_user: None,
            from_name: "old".into(),
            from_entity: None,
            body: "x".repeat(CHAT_BYTES_MAX),
            created_at_ms: 0,
        });
    }
    w
}

#[test]
fn a_world_at_its_cap_streams_to_a_newcomer_on_a_slow_link_within_the_queue_budget() {
    let world = world_at_the_cap();
    run_seeds(0..3, |seed| {
        let mut sim = Sim::new(
            seed,
            ServerConfig::default(),
            world.clone(),
            Box::new(InsecureTokens),
        );
        // A builder on a good link, in first.
        let b = sim.add_client(cfg("builder"), LinkConfig::default(), LinkConfig::default());
        assert!(sim.run_until_true(Duration::from_secs(5), |s| {
            *s.clients[b].core.state() == ClientState::Joined
        }));
        // The newcomer's downlink: 300 kB/s for reliable frames, a 64 kB/s bottleneck with a
        // 16 kB tail-drop queue for datagrams, 60 ms each way, a little loss.
        let slow = LinkConfig {
            latency: Duration::from_millis(60),
            loss: 0.01,
            rate_bytes_per_s: 64_000,
            queue_bytes_max: 16_000,
            stream_rate_bytes_per_s: 300_000,
            ..LinkConfig::default()
        };
        let n = sim.add_client(cfg("newcomer"), LinkConfig::default(), slow);
        // While the snapshot streams the builder changes the world and chats.
        let mut added = Vec::new();
        for i in 0..20 {
            sim.run_for(Duration::from_millis(250));
            sim.with_client(b, |c| {
                c.send_chat(format!("meanwhile {i}"));
                added.push(c.add_entity(BlueprintId("big1".into()), Transform::default(), vec![]));
            });
        }
        assert!(
            sim.run_until_true(Duration::from_secs(60), |s| {
                *s.clients[n].core.state() == ClientState::Joined
            }),
            "seed {seed}: the newcomer joins ({:?})",
            sim.clients[n].core.state()
        );
        sim.run_for(Duration::from_secs(2));
        let conn = sim.clients[n].conn;
        let figures = sim.server.conn_figures(conn).unwrap();
        let pieces = sim.clients[n].core.figures().snapshot_pieces;
        // Over 3 MiB in pieces of at most 64 KiB (the client's reassembly refuses any other
        // size): at least 48 of them, all of them sent.
        assert!(
            pieces as usize >= WORLD_BYTES_MAX_DEFAULT / SNAPSHOT_PIECE_BYTES_MAX,
            "seed {seed}: {pieces} pieces"
        );
        assert_eq!(figures.snapshot_pieces, pieces);
        let peak = sim.clients[n].stream_queue_peak as usize;
        eprintln!(
            "seed {seed}: {pieces} pieces of {SNAPSHOT_PIECE_BYTES_MAX} B, send queue peak {peak} B \
             (budget {SNAPSHOT_QUEUE_BUDGET_BYTES} B), joined at {:?}",
            sim.now()
        );
        assert!(
            peak <= SNAPSHOT_QUEUE_BUDGET_BYTES,
            "seed {seed}: the send queue held {peak} B, over the budget"
        );
        assert!(
            peak >= SNAPSHOT_QUEUE_BUDGET_BYTES / 2,
            "seed {seed}: the slow link did fill the queue to near its budget ({peak} B)"
        );
        // What happened meanwhile arrived after the snapshot: the newcomer sees the server's
        // world, the builder's chat last.
        let server_ids: Vec<EntityId> = sim.server.world().entities.keys().copied().collect();
        let seen: Vec<EntityId> = {
            let w = sim.clients[n].core.world();
            let mut v: Vec<EntityId> = w.entities.keys().copied().collect();
            v.sort();
            v
        };
        assert_eq!(seen, server_ids, "seed {seed}: the newcomer's entities");
        let chat: Vec<ChatMessage> = sim.clients[n].core.world().chat.iter().cloned().collect();
        let server_chat: Vec<ChatMessage> = sim.server.world().chat.iter().cloned().collect();
        assert_eq!(chat.len(), CHAT_HISTORY_LEN);
        assert_eq!(chat, server_chat, "seed {seed}: the newcomer's chat");
        assert!(
            chat.iter().any(|m| m.body == "meanwhile 0"),
            "seed {seed}: chat sent while the snapshot streamed arrived after it"
        );
        assert_eq!(sim.clients[n].core.world().blueprints.len(), 7);
    });
}
