//! The single-loop light clients against a real relay over real loopback QUIC: they join, walk,
//! receive transform datagrams whose update latency they measure, chat and edit with their
//! changes acknowledged, and leave cleanly (the relay ends every session and closes every
//! connection). No timing assertions.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use neonet::tls::Trust;

use super::LightLoop;
use crate::cli::MoveMode;
use crate::driver::ClientPlan;
use crate::run::{spawn_relay, LiveCounters};

/// Clients in the test: 5, over sockets of 2 clients each (3 sockets, one with a single client).
const CLIENTS: u32 = 5;

/// How long they walk once started: 4 s, long enough for the clock sync's first echoes and the
/// update latency's phase bounds (about a second).
const WALK: Duration = Duration::from_secs(4);

/// Bound on anything the test waits for: 30 s, generous for a busy machine.
const WAIT_MAX: Duration = Duration::from_secs(30);

/// Bound on the relay seeing every client gone after they left: 10 s, a third of the grace
/// period (`neonet_proto::server::RESUME_GRACE_DEFAULT`, 30 s) for which a lost connection's
/// session, and its player, would stay.
const LEAVE_WAIT_MAX: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_loop_light_clients_join_walk_measure_chat_and_leave_over_real_quic() {
    let seed = 21;
    let mut plans: Vec<ClientPlan> = (0..CLIENTS)
        .map(|id| ClientPlan {
            id,
            addr: "127.0.0.1:0".parse().unwrap(),
            trust: Trust::DangerAcceptAnyCert,
            hz: 30,
            movement: MoveMode::Walk,
            chat_per_s: 2.0,
            edits_per_s: 1.0,
            interpolate: false,
            seed: u64::from(id) * 7 + 1,
            run_seed: seed,
            area_half_m: crate::behaviour::WALK_AREA_HALF_M,
            token: None,
        })
        .collect();
    let relay = spawn_relay(30, seed, &mut plans)
        .await
        .expect("a relay in this process");
    let live = Arc::new(LiveCounters::default());
    let lights = LightLoop::start(relay.addr, 2, live.clone()).expect("the loop starts");
    let clients: Vec<_> = plans
        .into_iter()
        .map(|mut p| {
            p.addr = relay.addr;
            p.trust = Trust::Sha256(relay.fingerprint);
            tokio::spawn(lights.client(p))
        })
        .collect();
    let joined_by = tokio::time::Instant::now() + WAIT_MAX;
    while live.connected.load(Ordering::Relaxed) < u64::from(CLIENTS) {
        assert!(
            tokio::time::Instant::now() < joined_by,
            "only {} of {CLIENTS} joined; errors {}",
            live.connected.load(Ordering::Relaxed),
            live.errors.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(WALK).await;
    assert!(
        live.bytes_in.load(Ordering::Relaxed) > 0,
        "live byte counters refresh"
    );
    lights.stop();
    for (id, c) in clients.into_iter().enumerate() {
        let o = tokio::time::timeout(WAIT_MAX, c)
            .await
            .expect("the client leaves in time")
            .expect("no panic")
            .unwrap_or_else(|e| panic!("client {id} failed: {e:#}"));
        assert!(o.joined_after.is_some(), "client {id} joined");
        assert_eq!(o.errors, 0, "client {id}: {:?}", o.error_messages);
        assert!(!o.disconnected, "client {id} was not dropped");
        assert!(
            o.datagrams_measured > 0 && o.records_seen > 0,
            "client {id} received the others' transforms: {o:?}"
        );
        assert!(
            o.update_latency.count() > 0,
            "client {id} measured update latency"
        );
        assert!(o.tick_phase.is_some(), "client {id} bounded the tick phase");
        assert!(
            o.acked_changes > 0,
            "client {id}'s chat and edits were acknowledged"
        );
        assert!(o.packets_in > 0 && o.packets_out > 0 && o.bytes_in > 0 && o.bytes_out > 0);
        assert!(o.connected_for >= WALK);
    }
    assert_eq!(live.connected.load(Ordering::Relaxed), 0);
    assert_eq!(live.errors.load(Ordering::Relaxed), 0);
    drop(lights);

    // Every client left with `Goodbye`: the relay ended each session at once, its player with
    // it, and closed every connection. A connection that merely vanished would leave its
    // session waiting to resume, its player in the world, for the relay's grace period.
    let left_by = tokio::time::Instant::now() + LEAVE_WAIT_MAX;
    loop {
        let status = relay.metrics.status();
        if status.connections == 0 && status.entity_count == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < left_by,
            "{} connections still open and {} players in the world at the relay",
            status.connections,
            status.entity_count
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = relay.metrics.status();
    assert_eq!(status.joins, u64::from(CLIENTS));
    assert!(status.bandwidth.datagrams_in > 0 && status.bandwidth.datagrams_out > 0);
    relay.shutdown().await.expect("the relay stops");
}
