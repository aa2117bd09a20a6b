//! Packets per client tick over real QUIC on loopback: a few clients walk for a few seconds and
//! each one's UDP datagrams each way are counted against its own prediction ticks (counts, not
//! times). Clock sync rides in the datagrams and QUIC acknowledgements ride on them, so a moving
//! client costs about one packet per tick each way (PROTOCOL.md sections 1 and 12.7).

mod common;

use std::time::{Duration, Instant};

use common::{TestRelay, WAIT};
use neonet::client::{CharacterInput, Client, ClientEvent, ClientState};
use neonet::proto::types::Vec3;

/// Clients walking at once.
const CLIENTS: usize = 4;
/// Client ticks each client runs before counting starts: the handshake, the snapshot, the clock's
/// fast convergence and the first datagrams are behind it (2 s at 30 Hz).
const WARM_UP_TICKS: u64 = 60;
/// Client ticks counted (5 s at 30 Hz).
const COUNTED_TICKS: u64 = 150;
/// Most UDP datagrams per client tick each way: one carries the tick's datagram, plus room for
/// the rare acknowledgement-only packet a loaded machine's late timers cause. Before clock sync
/// rode in the datagrams and acknowledgements on them this run measured 1.31 to 1.52.
const PACKETS_PER_TICK_MAX: f64 = 1.2;
/// Chat lines each walking client sends after the count, one at a time.
const CHATS_EACH: usize = 10;
/// How long the still clients of the liveness test stay quiet: past the server's idle timeout
/// (2.5 s) and the client's silence timeout (2.5 s).
const STILL_FOR: Duration = Duration::from_secs(4);
/// Most UDP datagrams per second each way a still client in a world at rest costs: its
/// liveness ping and the pong (one a second), QUIC's acknowledgements of them and a keep-alive.
const STILL_PACKETS_PER_S_MAX: f64 = 4.0;

/// The client's prediction tick (it runs at the server's rate, locked to its clock).
fn client_tick(c: &Client) -> Option<u64> {
    c.with_core(|core| {
        core.predicted()
            .and_then(|p| p.tick_clock().next_tick())
            .map(|t| t.0)
    })
}

fn wait_ticks(clients: &[Client], from: &[u64], ticks: u64) {
    let end = Instant::now() + WAIT + Duration::from_secs(ticks / 30);
    while Instant::now() < end {
        let done = clients
            .iter()
            .zip(from)
            .all(|(c, f)| client_tick(c).is_some_and(|t| t >= f + ticks));
        if done {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the clients' ticks did not advance {ticks} ticks");
}

/// Has every client walk its own way (so every tick changes every player), counts each one's
/// UDP datagrams each way per client tick after the warm-up, and returns the worst of them (up,
/// down). A walking client sends no stream frame: clock sync rides in its datagrams.
fn walk_and_count(clients: &[Client]) -> (f64, f64) {
    for (i, c) in clients.iter().enumerate() {
        // Each walks its own way, so every tick changes every player.
        c.set_input(CharacterInput {
            move_z: 127,
            yaw: (i as u16).wrapping_mul(16_384),
            ..Default::default()
        });
    }
    let zero = vec![0; clients.len()];
    wait_ticks(clients, &zero, WARM_UP_TICKS);
    let start: Vec<u64> = clients.iter().map(|c| client_tick(c).unwrap()).collect();
    let before: Vec<_> = clients.iter().map(Client::connection_stats).collect();
    wait_ticks(clients, &start, COUNTED_TICKS);
    let mut worst = (0.0f64, 0.0f64);
    for (i, c) in clients.iter().enumerate() {
        let ticks = (client_tick(c).unwrap() - start[i]) as f64;
        let after = c.connection_stats();
        let up = (after.udp_tx.datagrams - before[i].udp_tx.datagrams) as f64 / ticks;
        let down = (after.udp_rx.datagrams - before[i].udp_rx.datagrams) as f64 / ticks;
        let acks_up = after.frame_tx.acks - before[i].frame_tx.acks;
        let acks_down = after.frame_rx.acks - before[i].frame_rx.acks;
        let pings = after.frame_tx.ping - before[i].frame_tx.ping;
        let stream_up = after.frame_tx.stream - before[i].frame_tx.stream;
        let stream_down = after.frame_rx.stream - before[i].frame_rx.stream;
        let dgrams_up = after.frame_tx.datagram - before[i].frame_tx.datagram;
        let dgrams_down = after.frame_rx.datagram - before[i].frame_rx.datagram;
        println!(
            "client {i}: {ticks} ticks, packets per tick up {up:.3} down {down:.3} \
             (per second at 30 Hz: {:.1} / {:.1}); frames up: {dgrams_up} datagrams, \
             {stream_up} stream, {acks_up} acks, {pings} pings; down: {dgrams_down} datagrams, \
             {stream_down} stream, {acks_down} acks",
            up * 30.0,
            down * 30.0,
        );
        worst = (worst.0.max(up), worst.1.max(down));
        // Clock sync rides in the datagrams: a moving client pings no more.
        assert_eq!(stream_up, 0, "client {i} sent stream frames while moving");
    }
    worst
}

#[test]
fn a_walking_client_costs_about_one_packet_per_tick_each_way() {
    let relay = TestRelay::start();
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|i| relay.client(&format!("walker{i}")))
        .collect();
    let worst = walk_and_count(&clients);
    // Reliable traffic still flows while acknowledgements are delayed: every chat line reaches
    // everyone, each sender's acknowledged, and QUIC lost nothing (loopback loses nothing; a
    // late acknowledgement mistaken for a loss would count here).
    for (i, c) in clients.iter().enumerate() {
        for k in 0..CHATS_EACH {
            c.send_chat(format!("walker{i} line {k}"))
                .expect("chat sent");
        }
    }
    for (i, c) in clients.iter().enumerate() {
        let (mut acked, mut heard) = (0, 0);
        while acked < CHATS_EACH || heard < CHATS_EACH * CLIENTS {
            match c.wait_for(WAIT, |e| {
                matches!(e, ClientEvent::Acked(_) | ClientEvent::Chat(_))
            }) {
                Ok(ClientEvent::Acked(_)) => acked += 1,
                Ok(_) => heard += 1,
                Err(e) => {
                    panic!("client {i}: {acked} chat lines acknowledged, {heard} heard: {e:?}")
                }
            }
        }
        let lost = c.connection_stats().path.lost_packets;
        assert_eq!(lost, 0, "client {i}: QUIC declared {lost} packets lost");
    }
    for c in clients {
        c.close();
    }
    assert!(
        worst.0 <= PACKETS_PER_TICK_MAX && worst.1 <= PACKETS_PER_TICK_MAX,
        "packets per client tick up {:.3}, down {:.3}: over {PACKETS_PER_TICK_MAX}",
        worst.0,
        worst.1
    );
}

/// One-way delays of the paths of the delayed-path test, ms: round trips of 14 to 70 ms put
/// each client's sends at a different phase of the server's ticks.
const PATH_DELAYS_MS: [u64; 4] = [7, 16, 24, 35];

#[test]
fn walking_clients_on_longer_paths_cost_about_one_packet_per_tick_each_way() {
    use neonet_proxy::{Proxy, ProxyConfig};
    let relay = TestRelay::start();
    // Each client behind its own delaying proxy (no loss, no jitter): an acknowledgement waits
    // up to a tick for the next datagram, so it rides only if the peer agreed to wait that long
    // (the ACK-frequency extension; QUIC's default is 25 ms).
    let proxies: Vec<_> = PATH_DELAYS_MS
        .iter()
        .map(|&delay_ms| {
            let mut cfg = ProxyConfig::passthrough("127.0.0.1:0".parse().unwrap(), relay.addr);
            cfg.delay_ms = delay_ms;
            Proxy::start_on_thread(cfg, Default::default()).expect("proxy starts")
        })
        .collect();
    let clients: Vec<Client> = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Client::connect(p.local_addr(), relay.options(&format!("far{i}")))
                .expect("joins through the proxy")
        })
        .collect();
    let worst = walk_and_count(&clients);
    for c in clients {
        c.close();
    }
    assert!(
        worst.0 <= PACKETS_PER_TICK_MAX && worst.1 <= PACKETS_PER_TICK_MAX,
        "packets per client tick up {:.3}, down {:.3}: over {PACKETS_PER_TICK_MAX}",
        worst.0,
        worst.1
    );
}

#[test]
fn a_still_player_and_a_spectator_stay_connected_in_a_world_at_rest() {
    let relay = TestRelay::start();
    let mut options = relay.options("still");
    // A lost connection would end the session, not come back unnoticed.
    options.reconnect = None;
    let player = Client::connect(relay.addr, options.clone()).expect("player joins");
    options.name = "watcher".into();
    let spectator =
        Client::connect_spectator(relay.addr, options, Vec3::ZERO).expect("spectator joins");
    // Both get their clock from echoes once their first datagrams are answered.
    let exact =
        |c: &Client| c.with_core(|core| core.predicted().is_some_and(|p| p.clock().is_exact()));
    let end = Instant::now() + WAIT;
    while !(exact(&player) && exact(&spectator)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(exact(&player), "the player's clock never got an echo");
    assert!(exact(&spectator), "the spectator's clock never got an echo");
    let before = [player.connection_stats(), spectator.connection_stats()];
    let started = Instant::now();
    std::thread::sleep(STILL_FOR);
    let secs = started.elapsed().as_secs_f64();
    for (c, b, who) in [
        (&player, &before[0], "player"),
        (&spectator, &before[1], "spectator"),
    ] {
        assert_eq!(
            c.state(),
            ClientState::Joined,
            "the {who} lost its connection"
        );
        let s = c.connection_stats();
        let up = (s.udp_tx.datagrams - b.udp_tx.datagrams) as f64 / secs;
        let down = (s.udp_rx.datagrams - b.udp_rx.datagrams) as f64 / secs;
        let stream_up = s.frame_tx.stream - b.frame_tx.stream;
        println!("{who}: {up:.1} packets/s up, {down:.1} down, {stream_up} stream frames up");
        // What kept it alive: its liveness pings, about one a second.
        assert!(
            stream_up >= 2,
            "the {who} sent {stream_up} stream frames in {secs:.1} s"
        );
        assert!(
            up <= STILL_PACKETS_PER_S_MAX && down <= STILL_PACKETS_PER_S_MAX,
            "the {who} costs {up:.1} packets/s up, {down:.1} down"
        );
    }
    player.close();
    spectator.close();
}
