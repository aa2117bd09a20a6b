//! The client core's memory stays bounded whatever the server sends and however rarely the
//! game polls; a headless client (no interpolation) sees the same world.

use neonet_proto::client::{ClientCore, ClientEvent, EVENTS_MAX};
use neonet_proto::time::{Tick, Time};
use neonet_proto::transform::scenario::{joined_client, CrowdSamples};
use neonet_proto::transform::{ClientReplicator, EntitySample, TickInput, TransformConfig};
use neonet_proto::types::{BlueprintId, BlueprintPatch, ChatMessage};
use neonet_proto::wire::codec;
use neonet_proto::wire::msg::{Channel, ServerMsg};

/// A client that joined an empty world by the real handshake over the simulated network.
fn joined() -> ClientCore {
    joined_client(&TransformConfig::default(), &[])
}

/// Tick period of these tests, microseconds (30 Hz).
const TICK_US: u64 = 33_333;

/// The server's datagrams of `tick` carrying `entities`, into `out` (cleared first), and when
/// they arrive at the client (20 ms later).
fn server_tick(
    server: &mut ClientReplicator,
    entities: &[EntitySample],
    tick: u64,
    out: &mut Vec<Vec<u8>>,
) -> Time {
    out.clear();
    let now = Time(tick * TICK_US);
    let input = TickInput {
        tick: Tick(tick),
        now,
        viewer: None,
        entities,
        max_datagram_size: 1_200,
        own_blob: None,
    };
    server.write_tick(&input, out).expect("valid input");
    Time(now.0 + 20_000)
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

#[test]
fn a_headless_client_skips_interpolation_but_sees_the_same_latest_world() {
    let mut crowd = CrowdSamples::new(50);
    let config = TransformConfig::default();
    let mut full = joined_client(&config, &crowd.samples);
    let mut headless = joined_client(&config, &crowd.samples);
    headless.set_interpolation(false);
    let mut server = ClientReplicator::new(config, None).expect("config");
    let mut out = Vec::new();
    for tick in 1..40u64 {
        crowd.step();
        let arrival = server_tick(&mut server, &crowd.samples, tick, &mut out);
        for d in &out {
            full.handle_datagram(d, arrival);
            headless.handle_datagram(d, arrival);
        }
    }
    let at = Time(40 * TICK_US);
    let render_tick = full.begin_frame(at, 1.0 / 60.0).expect("a render tick");
    headless.begin_frame(at, 1.0 / 60.0);
    for s in &crowd.samples {
        let latest = full.latest_transform(s.id).expect("received");
        assert_eq!(headless.latest_transform(s.id), Some(latest), "{:?}", s.id);
        assert_eq!(
            headless.entity_transform(s.id, render_tick),
            Some(latest.1),
            "headless renders the latest"
        );
        assert!(full.entity_transform(s.id, render_tick).is_some());
    }
    assert_eq!(full.datagrams_rejected(), 0);
    assert_eq!(headless.datagrams_rejected(), 0);
}

#[test]
fn the_world_mirror_shows_each_entitys_latest_transform_whenever_it_is_read() {
    let mut crowd = CrowdSamples::new(30);
    let config = TransformConfig::default();
    let mut client = joined_client(&config, &crowd.samples);
    let mut server = ClientReplicator::new(config, None).expect("config");
    let mut out = Vec::new();
    for tick in 1..25u64 {
        crowd.step();
        // Some ticks carry only part of the crowd: what was not sent keeps its value.
        let sent = &crowd.samples[..if tick % 3 == 0 { 10 } else { 30 }];
        let arrival = server_tick(&mut server, sent, tick, &mut out);
        for d in &out {
            client.handle_datagram(d, arrival);
        }
        // Read every few ticks, as a game might: the mirror matches what was received.
        if tick % 4 == 0 || tick == 24 {
            let latest: Vec<_> = crowd
                .samples
                .iter()
                .map(|s| client.latest_transform(s.id).expect("received").1)
                .collect();
            let world = client.world();
            for (s, t) in crowd.samples.iter().zip(latest) {
                assert_eq!(
                    world.entities[&s.id].transform, t,
                    "{:?} at tick {tick}",
                    s.id
                );
            }
        }
    }
    assert_eq!(client.datagrams_rejected(), 0);
}

#[test]
fn blueprint_edits_from_peers_also_stop_at_the_event_bound() {
    let mut client = joined();
    let extra = 100u32;
    for version in 1..=EVENTS_MAX as u32 + extra {
        let m = ServerMsg::BlueprintModified {
            id: BlueprintId("slider".into()),
            version,
            patch: BlueprintPatch::default(),
        };
        client
            .handle_frame(Channel::World, &codec::encode(&m), Time(0))
            .expect("valid frame");
    }
    assert!(client.events_dropped() >= u64::from(extra));
    let mut n = 0;
    while client.poll_event().is_some() {
        n += 1;
    }
    assert_eq!(n, EVENTS_MAX);
}
