//! A game hosting the world over real sockets: the relay runtime calls the game before every
//! tick (`RelayHooks::host`), the game moves its own body through the core's host methods, and
//! a native spectator and a native player watch it over QUIC.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestRelay, WAIT};
use neonet::client::Client;
use neonet::metrics::{Metrics, MetricsConfig};
use neonet::proto::server::ServerCore;
use neonet::proto::types::{EntityId, EntityKind, Transform, Vec3};
use neonet::relay::RelayHooks;

#[test]
fn a_hosted_body_moves_for_a_spectator_and_a_player_over_quic() {
    // The body's id and how many ticks the host was called for, seen from the test.
    let body = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let (b, c) = (body.clone(), calls.clone());
    let mut id: Option<EntityId> = None;
    let metrics = Arc::new(Metrics::new(MetricsConfig::default()));
    let hooks = RelayHooks {
        metrics: Some(metrics.clone()),
        host: Some(Box::new(move |core: &mut ServerCore| {
            let e = *id.get_or_insert_with(|| {
                let e = core
                    .host_spawn(None, Transform::default(), vec![])
                    .expect("spawn");
                b.store(u64::from(e.0), Ordering::SeqCst);
                e
            });
            let n = c.fetch_add(1, Ordering::SeqCst);
            let t = Transform {
                position: Vec3::new((n % 200) as f32 * 0.05, 1.0, 0.0),
                ..Default::default()
            };
            core.host_set_transform(e, t).expect("finite");
        })),
        ..RelayHooks::default()
    };
    let relay = TestRelay::start_with(hooks);
    let spectator =
        Client::connect_spectator(relay.addr, relay.options("eve"), Vec3::new(0.0, 10.0, 0.0))
            .expect("the spectator joins");
    let player = relay.client("ada");
    assert!(spectator.is_spectator());
    assert_eq!(spectator.player(), None);
    let id = EntityId(body.load(Ordering::SeqCst) as u32);
    assert_ne!(id.0, 0, "the host ran before the joins");
    // Both see the body move: its latest received position changes over time.
    for client in [&spectator, &player] {
        let deadline = Instant::now() + WAIT;
        let first = loop {
            if let Some((_, t)) = client.latest_transform(id) {
                break t.position;
            }
            assert!(Instant::now() < deadline, "the body never arrived");
            std::thread::sleep(Duration::from_millis(20));
        };
        loop {
            let (_, t) = client.latest_transform(id).expect("still there");
            if t.position != first {
                break;
            }
            assert!(Instant::now() < deadline, "the body never moved");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The spectator has no player entity: the player sees only itself as a player.
    let players = player.with_world(|w| {
        w.entities
            .values()
            .filter(|e| e.kind == EntityKind::Player)
            .count()
    });
    assert_eq!(players, 1);
    let f = spectator.figures();
    assert!(f.datagrams_down > 0 && f.bytes_down > 0, "{f:?}");
    assert_eq!(f.own_state_bytes_up, 0, "a spectator sends no player state");
    assert!(calls.load(Ordering::SeqCst) >= 2);
    // `/status` and `/metrics` show the top connections by bytes, from the core's figures.
    let deadline = Instant::now() + WAIT;
    let top = loop {
        let top = metrics.status().top_connections;
        if top.len() == 2 {
            break top;
        }
        assert!(Instant::now() < deadline, "no top connections: {top:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(top[0].bytes_in + top[0].bytes_out >= top[1].bytes_in + top[1].bytes_out);
    let mut names: Vec<_> = top.iter().filter_map(|c| c.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["ada", "eve"]);
    assert!(top
        .iter()
        .any(|c| c.spectator && c.own_state_bytes_out == 0));
    assert!(top.iter().all(|c| c.bytes_out > 0 && c.datagrams_out > 0));
    let text = metrics.render_prometheus();
    assert!(
        text.contains("neonet_connection_bytes_top{conn=") && text.contains("rank=\"2\""),
        "{text}"
    );
}
