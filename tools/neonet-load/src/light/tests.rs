//! The light client against the server core over a seeded simulated network: does the relay
//! see it exactly as it sees a full client?
//!
//! The same world is run twice with the same seed: a server core, three full clients walking
//! about, and a subject client walking, stopping and walking again over lossy, jittery links.
//! The first time the subject is a full [`ClientCore`], the second a [`LightCore`]. Every
//! datagram the server sends the subject must be the same bytes both times: the server's delta
//! baselines for it rest on its acknowledgements, so identical datagrams mean identical
//! baselines. Its upstream datagrams (acks and inputs) must be the same bytes too.
//!
//! The harness is a small event loop over the protocol crate's link model
//! ([`neonet_proto::sim::Link`]), not [`neonet_proto::sim::Sim`], whose clients are
//! `ClientCore`s. Each direction of each link draws from random generators of its own, one for
//! frames and one for datagrams, so a client that sent one frame more or less would not shift
//! anyone else's losses.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use neonet_proto::client::{ClientConfig, ClientCore, ClientState, ClientTransmit};
use neonet_proto::persist::World;
use neonet_proto::predict::CharacterInput;
use neonet_proto::rng::Rng;
use neonet_proto::server::{ConnId, InsecureTokens, ServerConfig, ServerCore, Transmit};
use neonet_proto::sim::{Link, LinkConfig};
use neonet_proto::time::Time;
use neonet_proto::transform::{decode_server_header, KIND_CLIENT_STATE_CLOCK};
use neonet_proto::wire::msg::Channel;

use super::core::{LightCore, LightState};

/// A client core the harness drives: the full one or the light one.
trait Peer {
    fn frame(&mut self, channel: Channel, body: &[u8], now: Time);
    fn datagram(&mut self, data: &[u8], now: Time);
    fn timeout(&mut self, now: Time);
    fn next_timeout(&self) -> Option<Time>;
    fn transmit(&mut self) -> Option<ClientTransmit>;
    fn input(&mut self, input: CharacterInput);
    fn joined(&self) -> bool;
}

impl Peer for ClientCore {
    fn frame(&mut self, channel: Channel, body: &[u8], now: Time) {
        let _ = self.handle_frame(channel, body, now);
    }
    fn datagram(&mut self, data: &[u8], now: Time) {
        self.handle_datagram(data, now);
    }
    fn timeout(&mut self, now: Time) {
        self.handle_timeout(now);
        while self.poll_event().is_some() {}
    }
    fn next_timeout(&self) -> Option<Time> {
        self.poll_timeout()
    }
    fn transmit(&mut self) -> Option<ClientTransmit> {
        self.poll_transmit()
    }
    fn input(&mut self, input: CharacterInput) {
        self.set_input(input);
    }
    fn joined(&self) -> bool {
        *self.state() == ClientState::Joined
    }
}

impl Peer for LightCore {
    fn frame(&mut self, channel: Channel, body: &[u8], now: Time) {
        self.handle_frame(channel, body, now);
    }
    fn datagram(&mut self, data: &[u8], now: Time) {
        self.handle_datagram(data, now);
    }
    fn timeout(&mut self, now: Time) {
        self.handle_timeout(now);
        while self.poll_event().is_some() {}
    }
    fn next_timeout(&self) -> Option<Time> {
        self.poll_timeout()
    }
    fn transmit(&mut self) -> Option<ClientTransmit> {
        self.poll_transmit()
    }
    fn input(&mut self, input: CharacterInput) {
        self.set_input(input);
    }
    fn joined(&self) -> bool {
        *self.state() == LightState::Joined
    }
}

/// Something in flight.
enum Delivery {
    ToServer(usize, Option<Channel>, Vec<u8>),
    ToClient(usize, Option<Channel>, Vec<u8>),
}

/// One direction of one client's link, with its own random draws for frames and datagrams.
struct Direction {
    link: Link,
    frames: Rng,
    datagrams: Rng,
}

impl Direction {
    fn new(config: LinkConfig, seed: u64) -> Direction {
        let mut seeds = Rng::new(seed);
        Direction {
            link: Link::new(config),
            frames: Rng::new(seeds.next_u64()),
            datagrams: Rng::new(seeds.next_u64()),
        }
    }

    /// When `payload` arrives (none if lost; twice if duplicated).
    fn arrivals(&mut self, channel: Option<Channel>, len: usize, now: Time) -> Vec<Time> {
        match channel {
            Some(ch) => vec![self.link.reliable_arrival(ch, len, now, &mut self.frames)],
            None => self.link.datagram_arrivals(len, now, &mut self.datagrams),
        }
    }
}

/// What the subject (client 0) exchanged with the server.
#[derive(Debug, Default, PartialEq, Eq)]
struct Exchange {
    /// Every datagram the server sent it, in order.
    down: Vec<Vec<u8>>,
    /// Every datagram it sent the server, in order.
    up: Vec<Vec<u8>>,
}

/// Virtual seconds each world runs: 12, long enough for the sequence window to pass well over
/// its 64 datagrams several times, for the subject to stop and walk again, and for losses
/// to hit both directions.
const RUN_S: u64 = 12;

/// Runs the world with `subject` as client 0 and returns what it exchanged with the server.
fn run_world(seed: u64, subject: Box<dyn Peer>) -> Exchange {
    let link = LinkConfig {
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(8),
        loss: 0.08,
        duplicate: 0.01,
        reorder: 0.02,
        ..LinkConfig::default()
    };
    let mut server = ServerCore::new(
        ServerConfig::default(),
        World::default(),
        Box::new(InsecureTokens),
        Time::ZERO,
    );
    let mut peers: Vec<Box<dyn Peer>> = vec![subject];
    for i in 1..4 {
        peers.push(Box::new(ClientCore::new(
            ClientConfig {
                name: format!("other{i}"),
                token: None,
            },
            Time::ZERO,
        )));
    }
    let mut seeds = Rng::new(seed);
    let mut up: Vec<Direction> = Vec::new();
    let mut down: Vec<Direction> = Vec::new();
    for (i, p) in peers.iter_mut().enumerate() {
        let conn = ConnId(i as u64 + 1);
        server.handle_connect(conn, neonet_proto::server::TransportKind::Sim, Time::ZERO);
        server.handle_max_datagram_size(conn, link.mtu);
        up.push(Direction::new(link.clone(), seeds.next_u64()));
        down.push(Direction::new(link.clone(), seeds.next_u64()));
        // Others walk in circles of their own from the start; the subject's script is below.
        if i > 0 {
            p.input(CharacterInput {
                move_z: 127,
                yaw: (i as u16) * 20_000,
                ..CharacterInput::default()
            });
        }
    }
    let mut queue: BinaryHeap<Reverse<(Time, u64)>> = BinaryHeap::new();
    let mut payloads: std::collections::BTreeMap<u64, Delivery> = Default::default();
    let mut next_id = 0u64;
    let mut exchange = Exchange::default();
    let mut now = Time::ZERO;
    let end = Time::ZERO + Duration::from_secs(RUN_S);
    // The subject's script: walk, stand still from 4 s, walk another way from 7 s.
    let script = |t: Time| -> CharacterInput {
        let s = t.as_micros() / 1_000_000;
        match s {
            0..=3 => CharacterInput {
                move_z: 127,
                yaw: 5_000,
                ..CharacterInput::default()
            },
            4..=6 => CharacterInput::default(),
            _ => CharacterInput {
                move_x: 60,
                move_z: 100,
                yaw: 40_000,
                run: true,
                ..CharacterInput::default()
            },
        }
    };
    loop {
        // Send whatever anyone queued.
        while let Some(t) = server.poll_transmit() {
            let (conn, channel, data) = match t {
                Transmit::Frame {
                    conn,
                    channel,
                    frame,
                } => (conn, Some(channel), frame.to_vec()),
                Transmit::Datagram { conn, data, .. } => (conn, None, data),
                Transmit::Close { .. } => continue,
            };
            let idx = conn.0 as usize - 1;
            if idx == 0 && channel.is_none() {
                exchange.down.push(data.clone());
            }
            for at in down[idx].arrivals(channel, data.len(), now) {
                next_id += 1;
                payloads.insert(next_id, Delivery::ToClient(idx, channel, data.clone()));
                queue.push(Reverse((at, next_id)));
            }
        }
        while server.poll_event().is_some() {}
        while server.poll_effect().is_some() {}
        for (idx, p) in peers.iter_mut().enumerate() {
            while let Some(t) = p.transmit() {
                let (channel, data) = match t {
                    ClientTransmit::Frame { channel, frame } => (Some(channel), frame),
                    ClientTransmit::Datagram(d) => (None, d),
                };
                if idx == 0 && channel.is_none() {
                    exchange.up.push(data.clone());
                }
                for at in up[idx].arrivals(channel, data.len(), now) {
                    next_id += 1;
                    payloads.insert(next_id, Delivery::ToServer(idx, channel, data.clone()));
                    queue.push(Reverse((at, next_id)));
                }
            }
        }
        // The next thing to happen: a delivery or a timer.
        let next_delivery = queue.peek().map(|Reverse((t, _))| *t);
        let mut next_timer = server.poll_timeout();
        for p in &peers {
            if let Some(t) = p.next_timeout() {
                next_timer = Some(next_timer.map_or(t, |n| n.min(t)));
            }
        }
        let next = match (next_delivery, next_timer) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(end),
        };
        if next > end {
            break;
        }
        now = now.max(next);
        peers[0].input(script(now));
        if next_delivery == Some(next) {
            let Some(Reverse((_, id))) = queue.pop() else {
                break;
            };
            match payloads.remove(&id) {
                Some(Delivery::ToServer(idx, Some(ch), frame)) => {
                    server.handle_frame(ConnId(idx as u64 + 1), ch, &frame[4..], now)
                }
                Some(Delivery::ToServer(idx, None, d)) => {
                    server.handle_datagram(ConnId(idx as u64 + 1), &d, now)
                }
                Some(Delivery::ToClient(idx, Some(ch), frame)) => {
                    peers[idx].frame(ch, &frame[4..], now)
                }
                Some(Delivery::ToClient(idx, None, d)) => peers[idx].datagram(&d, now),
                None => {}
            }
        } else {
            if server.poll_timeout().is_some_and(|t| t <= now) {
                server.handle_timeout(now);
            }
            for p in peers.iter_mut() {
                if p.next_timeout().is_some_and(|t| t <= now) {
                    p.timeout(now);
                }
            }
        }
    }
    assert!(peers.iter().all(|p| p.joined()), "everyone joined");
    exchange
}

#[test]
fn the_relay_sends_a_light_client_the_same_datagrams_as_a_full_one() {
    for seed in [1u64, 2, 3] {
        let name = || ClientConfig {
            name: "subject".into(),
            token: None,
        };
        let full = run_world(seed, Box::new(ClientCore::new(name(), Time::ZERO)));
        let light = run_world(
            seed,
            Box::new(LightCore::new(name().name, None, Time::ZERO)),
        );
        // At 30 Hz for 12 s: hundreds of datagrams each way, many carrying records.
        assert!(
            full.down.len() > 200,
            "seed {seed}: {} down",
            full.down.len()
        );
        assert!(full.up.len() > 200, "seed {seed}: {} up", full.up.len());
        // The clock sync rides in the datagrams (PROTOCOL.md 12.4): stamped ones go up, and
        // the server echoes them (its flag bit 1).
        assert!(
            full.up
                .iter()
                .any(|d| d.first() == Some(&KIND_CLIENT_STATE_CLOCK)),
            "seed {seed}: no stamped datagram"
        );
        assert!(
            full.down
                .iter()
                .any(|d| decode_server_header(d).is_ok_and(|h| h.echo.is_some())),
            "seed {seed}: no clock echo"
        );
        for (i, (f, l)) in full.up.iter().zip(&light.up).enumerate() {
            assert_eq!(f, l, "seed {seed}: upstream datagram {i} differs");
        }
        assert_eq!(full.up.len(), light.up.len(), "seed {seed}: upstream count");
        for (i, (f, l)) in full.down.iter().zip(&light.down).enumerate() {
            assert_eq!(f, l, "seed {seed}: server datagram {i} differs");
        }
        assert_eq!(
            full.down.len(),
            light.down.len(),
            "seed {seed}: downstream count"
        );
    }
}

/// A world whose snapshot is larger than one frame (64 KiB) reaches a client in pieces
/// (`SnapshotPiece`); the light client reassembles them and joins, as the full client does.
/// Before it did, every client that joined a relay past that size (≈ 600 players with a few
/// blueprints edited) waited 30 s and failed "no snapshot".
#[test]
fn a_light_client_joins_a_world_whose_snapshot_comes_in_pieces() {
    use neonet_proto::types::{Blueprint, BlueprintFlags, BlueprintId};
    use neonet_proto::wire::codec;
    use neonet_proto::wire::msg::ServerMsg;

    let mut world = World::default();
    // 400 blueprints of ≈ 500 bytes: a snapshot of ≈ 200 KB, four pieces at least.
    for i in 0..400 {
        let id = BlueprintId(format!("bp{i}"));
        world.blueprints.insert(
            id.clone(),
            Blueprint {
                id,
                version: 1,
                name: format!("blueprint {i}"),
                author: "load".into(),
                model: None,
                script: None,
                image: None,
                desc: "d".repeat(480),
                props: Default::default(),
                flags: BlueprintFlags::default(),
            },
        );
    }
    let mut server = ServerCore::new(
        ServerConfig::default(),
        world,
        Box::new(InsecureTokens),
        Time::ZERO,
    );
    let conn = ConnId(1);
    server.handle_connect(conn, neonet_proto::server::TransportKind::Sim, Time::ZERO);
    let mut light = LightCore::new("big".into(), None, Time::ZERO);
    let mut pieces = 0;
    let mut now = Time::ZERO;
    for _ in 0..200 {
        while let Some(t) = light.poll_transmit() {
            if let ClientTransmit::Frame { channel, frame } = t {
                server.handle_frame(conn, channel, &frame[codec::FRAME_HEADER_BYTES..], now);
            }
        }
        while let Some(t) = server.poll_transmit() {
            if let Transmit::Frame { channel, frame, .. } = t {
                let body = &frame[codec::FRAME_HEADER_BYTES..];
                if let Ok(ServerMsg::SnapshotPiece { .. }) = codec::decode_server(body) {
                    pieces += 1;
                }
                light.handle_frame(channel, body, now);
            }
        }
        if *light.state() == LightState::Joined {
            break;
        }
        now += Duration::from_millis(10);
        server.handle_timeout(now);
        light.handle_timeout(now);
    }
    assert!(pieces >= 2, "the snapshot came in {pieces} pieces");
    assert_eq!(*light.state(), LightState::Joined);
}
