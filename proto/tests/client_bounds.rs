//! The client core's memory stays bounded whatever the server sends and however rarely the
//! game polls.

use neonet_proto::client::{ClientConfig, ClientCore, ClientEvent, EVENTS_MAX};
use neonet_proto::codec;
use neonet_proto::msg::{Channel, ServerMsg, Snapshot, PROTOCOL_VERSION};
use neonet_proto::predict::CharacterConfig;
use neonet_proto::time::Time;
use neonet_proto::transform::TransformConfig;
use neonet_proto::types::{ChatMessage, EntityId, Rank, SessionId, UserId};

fn joined() -> ClientCore {
    let mut client = ClientCore::new(
        ClientConfig {
            name: "idle game".into(),
            token: None,
        },
        Time(0),
    );
    let welcome = ServerMsg::Welcome {
        protocol_version: PROTOCOL_VERSION,
        session: SessionId(1),
        tick_hz: 30,
        transform: Box::new(TransformConfig::default()),
        character: CharacterConfig::default(),
    };
    let snapshot = ServerMsg::Snapshot(Box::new(Snapshot {
        player: EntityId(1),
        user: UserId(1),
        rank: Rank::Visitor,
        server_tick: 0,
        server_time_us: 0,
        settings: Default::default(),
        spawn: Default::default(),
        chat: Vec::new(),
        blueprints: Vec::new(),
        entities: Vec::new(),
        auth_token: String::new(),
    }));
    for m in [welcome, snapshot] {
        client
            .handle_frame(Channel::World, &codec::encode(&m), Time(0))
            .expect("valid frame");
    }
    client
}

#[test]
fn a_game_that_never_polls_keeps_only_the_newest_events() {
    let mut client = joined();
    let extra = 1_000u64;
    let total = EVENTS_MAX as u64 + extra;
    for id in 0..total {
        let m = ServerMsg::ChatAdded(ChatMessage {
            id,
            from_user: None,
            from_name: "server".into(),
            from_entity: None,
            body: format!("message {id}"),
            created_at_ms: 0,
        });
        client
            .handle_frame(Channel::Chat, &codec::encode(&m), Time(0))
            .expect("valid frame");
    }
    let mut events = Vec::new();
    while let Some(e) = client.poll_event() {
        events.push(e);
    }
    assert_eq!(events.len(), EVENTS_MAX);
    assert!(
        client.events_dropped() >= extra,
        "dropped {}",
        client.events_dropped()
    );
    assert!(
        matches!(events.last(), Some(ClientEvent::Chat(m)) if m.id == total - 1),
        "the newest event is kept: {:?}",
        events.last()
    );
}
