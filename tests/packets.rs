//! Packets per client tick over real QUIC on loopback: a few clients walk for a few seconds and
//! each one's UDP datagrams each way are counted against its own prediction ticks (counts, not
//! times). Clock sync rides in the datagrams and QUIC acknowledgements ride on them, so a moving
//! client costs about one packet per tick each way (PROTOCOL.md sections 1 and 12.7).

mod common;

use std::time::{Duration, Instant};

use common::{TestRelay, WAIT};
use neonet::client::{CharacterInput, Client};

/// Clients walking at once.
const CLIENTS: usize = 4;
/// Client ticks each client runs before counting starts: the handshake, the snapshot, the clock's
/// fast convergence and the first datagrams are behind it (2 s at 30 Hz).
const WARM_UP_TICKS: u64 = 60;
/// Client ticks counted (5 s at 30 Hz).
const COUNTED_TICKS: u64 = 150;
/// Most UDP datagrams per client tick each way: one carries the tick's datagram, plus room for
/// QUIC keep-alives (one a second), the rare acknowledgement-only packet and a fallback ping.
const PACKETS_PER_TICK_MAX: f64 = 1.3;

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

#[test]
fn a_walking_client_costs_about_one_packet_per_tick_each_way() {
    let relay = TestRelay::start();
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|i| relay.client(&format!("walker{i}")))
        .collect();
    for (i, c) in clients.iter().enumerate() {
        // Each walks its own way, so every tick changes every player.
        c.set_input(CharacterInput {
            move_z: 127,
            yaw: (i as u16).wrapping_mul(16_384),
            ..Default::default()
        });
    }
    let zero = vec![0; CLIENTS];
    wait_ticks(&clients, &zero, WARM_UP_TICKS);
    let start: Vec<u64> = clients.iter().map(|c| client_tick(c).unwrap()).collect();
    let before: Vec<_> = clients.iter().map(Client::connection_stats).collect();
    wait_ticks(&clients, &start, COUNTED_TICKS);
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
