//! The deterministic simulated network: one [`ServerCore`] and many [`ClientCore`]s over links
//! with latency, jitter, loss (independent and in bursts), duplication, reordering, partitions
//! and an MTU, all in virtual time. Thousands of ticks run in milliseconds, and the same seed
//! always gives the same [`Trace`].
//!
//! ## What is modelled
//! - **Reliable frames** behave like QUIC streams: never lost, never duplicated, ordered within a
//!   channel (head-of-line blocking included) and not across channels. A packet "lost" on the
//!   link costs its frame a retransmission timeout (1.5 × the link's round trip) per loss; a
//!   partition holds frames until it ends.
//! - **Datagrams** are lost, duplicated, reordered and delayed as configured, and dropped when
//!   larger than the link's MTU. The server is told each connection's `max_datagram_size` = MTU.
//!   Datagrams reach the server as they reach the relay's: through the core's
//!   [`DatagramInbox`] (with its bounds), taken before every other server input and tick.
//!   Before each tick the server is told each client's downstream path signals
//!   ([`Link::path_signals`]), as the relay tells it quinn's path stats; a link with a capacity
//!   (`rate_bytes_per_s`) queues datagrams behind its bottleneck and drops them at the tail.
//!   A link with a stream capacity (`stream_rate_bytes_per_s`) sends reliable frames one after
//!   another at that rate; the server is told, before each tick and at connect, how many bytes
//!   wait ([`ServerCore::handle_send_queue`]), as the relay reports its send queues.
//! - **Persistence effects** are dropped unless [`Sim::with_effects`] keeps them in
//!   [`Sim::server_effects`] for a test to answer as a store would.
//! - A `Transmit::Close` from the server disconnects that client after the frames queued before
//!   it have arrived.
//!
//! ## Reproducing a failure
//! [`run_seeds`] runs a scenario for many seeds and prints the failing seed; set `NEONET_SEED`
//! to run only that seed again.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use crate::client::{ClientConfig, ClientCore, ClientEvent, ClientState, ClientTransmit};
use crate::persist::Effect;
use crate::persist::World;
use crate::rng::Rng;
use crate::server::{
    Authenticator, ConnId, DatagramInbox, InboxBatch, InboxQuota, InsecureTokens, ServerConfig,
    ServerCore, ServerEvent, Transmit,
};
use crate::time::Time;
use crate::wire::msg::{Channel, CloseReason};

mod link;
pub use link::{Link, LinkConfig};

/// Most deliveries in flight at once across the whole simulation: a runaway scenario fails
/// loudly instead of eating memory.
pub const IN_FLIGHT_MAX: usize = 10_000_000;

/// Most steps the simulation takes without virtual time moving before it declares a spin.
pub const SAME_TIME_STEPS_MAX: u32 = 1_000_000;

/// Connection ids of reconnections start here, far above the first connections' (one per
/// client, numbered from 1), so the two never meet.
const RECONNECT_CONN_IDS_FROM: u64 = 1 << 32;

/// Something in flight, named by its destination and the connection it travels on: whatever
/// arrives for a connection its client has since replaced is dropped, as a closed QUIC
/// connection's packets are.
#[derive(Clone, Debug)]
enum Delivery {
    ServerFrame(ConnId, Channel, Vec<u8>),
    ServerDatagram(usize, ConnId, Vec<u8>),
    ClientFrame(usize, ConnId, Channel, Vec<u8>),
    ClientDatagram(usize, ConnId, Vec<u8>),
    /// The transport closes with the server's reason and detail (as QUIC's application close
    /// carries them).
    ClientClose(usize, ConnId, CloseReason, String),
    ServerDisconnect(ConnId),
}

/// A simulated client: its core, its links and what it has seen.
#[derive(Debug)]
pub struct SimClient {
    /// The client core.
    pub core: ClientCore,
    /// Its connection id at the server.
    pub conn: ConnId,
    up: Link,
    down: Link,
    /// Events the client produced, in order (drained by the harness each step).
    pub events: Vec<ClientEvent>,
    /// Whether the transport is still up.
    pub connected: bool,
    /// Its process died ([`Sim::kill`]): nothing drives its core any more.
    pub killed: bool,
    /// Its share of the server's datagram inbox (as its reader keeps it in the relay).
    inbox_quota: InboxQuota,
    /// The most reliable frame bytes ever waiting in the server's send queue to it (with a
    /// stream capacity, [`LinkConfig::stream_rate_bytes_per_s`]), over all its connections.
    pub stream_queue_peak: u64,
}

/// What happened during a run, in order: the determinism witness.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// One line per event: time, who, what.
    pub lines: Vec<String>,
}

impl Trace {
    /// A 64-bit FNV-1a hash of all lines (for compact comparison).
    pub fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for l in &self.lines {
            for b in l.bytes().chain([b'\n']) {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }
}

/// Counters of what the links did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams handed to links.
    pub datagrams_sent: u64,
    /// Datagrams delivered (duplicates count twice).
    pub datagrams_delivered: u64,
    /// Datagram bytes handed to links, server → clients.
    pub datagram_bytes_down: u64,
    /// Datagram bytes handed to links, clients → server.
    pub datagram_bytes_up: u64,
    /// Reliable frames handed to links.
    pub frames_sent: u64,
    /// Reliable frame bytes, server → clients.
    pub frame_bytes_down: u64,
}

/// The whole simulation: server, clients, links, virtual clock, seeded randomness.
pub struct Sim {
    /// The server core.
    pub server: ServerCore,
    /// The clients, by index.
    pub clients: Vec<SimClient>,
    /// Events the server produced, in order.
    pub server_events: Vec<ServerEvent>,
    /// Persistence effects the server emitted, in order, if kept ([`Sim::with_effects`]).
    pub server_effects: Vec<Effect>,
    keep_effects: bool,
    /// Datagrams on their way to the server core.
    inbox: DatagramInbox<Vec<u8>>,
    inbox_batch: InboxBatch<Vec<u8>>,
    /// What the links did.
    pub stats: SimStats,
    now: Time,
    rng: Rng,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    payloads: BTreeMap<usize, Delivery>,
    next_slot: usize,
    conn_to_client: BTreeMap<ConnId, usize>,
    /// The id the next reconnection's connection gets (above every first connection's).
    next_conn: u64,
    trace: Trace,
    record_trace: bool,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now)
            .field("clients", &self.clients.len())
            .field("in_flight", &self.queue.len())
            .finish()
    }
}

impl Sim {
    /// A simulation seeded with `seed`, hosting `world` with `config` and `auth`.
    pub fn new(seed: u64, config: ServerConfig, world: World, auth: Box<dyn Authenticator>) -> Sim {
        Sim {
            server: ServerCore::new(config, world, auth, Time::ZERO),
            clients: Vec::new(),
            server_events: Vec::new(),
            server_effects: Vec::new(),
            keep_effects: false,
            inbox: DatagramInbox::new(),
            inbox_batch: InboxBatch::default(),
            stats: SimStats::default(),
            now: Time::ZERO,
            rng: Rng::new(seed),
            seq: 0,
            queue: BinaryHeap::new(),
            payloads: BTreeMap::new(),
            next_slot: 0,
            conn_to_client: BTreeMap::new(),
            next_conn: RECONNECT_CONN_IDS_FROM,
            trace: Trace::default(),
            record_trace: true,
        }
    }

    /// Keeps the server's persistence effects in [`Sim::server_effects`] (dropped otherwise).
    pub fn with_effects(mut self) -> Sim {
        self.keep_effects = true;
        self
    }

    /// Sends `data` from client `idx` to the server as a datagram, through its link, as if its
    /// transport had sent it: for peers that misbehave (floods, garbage) beside honest ones.
    pub fn inject_datagram(&mut self, idx: usize, data: Vec<u8>) {
        self.send_up_datagram(idx, data);
    }

    fn send_up_datagram(&mut self, idx: usize, data: Vec<u8>) {
        self.stats.datagrams_sent += 1;
        self.stats.datagram_bytes_up += data.len() as u64;
        let conn = self.clients[idx].conn;
        let arrivals = self.clients[idx]
            .up
            .datagram_arrivals(data.len(), self.now, &mut self.rng);
        for at in arrivals {
            self.schedule(at, Delivery::ServerDatagram(idx, conn, data.clone()));
        }
    }

    /// Hands the server every datagram waiting in its inbox.
    fn take_inbox(&mut self) {
        let mut batch = std::mem::take(&mut self.inbox_batch);
        self.inbox.take(&mut batch);
        self.server.handle_inbox(&mut batch);
        self.inbox_batch = batch;
    }

    /// Stops recording the trace (long load runs).
    pub fn without_trace(mut self) -> Sim {
        self.record_trace = false;
        self
    }

    /// Virtual time now.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The trace so far.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// Connects a new client over links with the given impairments; returns its index.
    pub fn add_client(&mut self, config: ClientConfig, up: LinkConfig, down: LinkConfig) -> usize {
        let core = ClientCore::new(config, self.now);
        self.add_core(core, up, down)
    }

    /// Connects a spectator with its camera at `camera` ([`ClientCore::new_spectator`]).
    pub fn add_spectator(
        &mut self,
        config: ClientConfig,
        camera: crate::types::Vec3,
        up: LinkConfig,
        down: LinkConfig,
    ) -> usize {
        let core = ClientCore::new_spectator(config, camera, self.now);
        self.add_core(core, up, down)
    }

    fn add_core(&mut self, core: ClientCore, up: LinkConfig, down: LinkConfig) -> usize {
        let idx = self.clients.len();
        let conn = ConnId(idx as u64 + 1);
        let mtu = down.mtu;
        self.server
            .handle_connect(conn, crate::server::TransportKind::Sim, self.now);
        self.server.handle_max_datagram_size(conn, mtu);
        self.server.handle_send_queue(conn, 0);
        self.clients.push(SimClient {
            core,
            conn,
            up: Link::new(up),
            down: Link::new(down),
            events: Vec::new(),
            connected: true,
            killed: false,
            inbox_quota: InboxQuota::default(),
            stream_queue_peak: 0,
        });
        self.conn_to_client.insert(conn, idx);
        self.note(format!("c{idx} connect"));
        self.flush_client(idx);
        idx
    }

    /// Cuts both directions of client `idx`'s link from now for `duration`.
    pub fn partition(&mut self, idx: usize, duration: Duration) {
        let w = (self.now, self.now + duration);
        self.clients[idx].up.partition(w.0, w.1);
        self.clients[idx].down.partition(w.0, w.1);
        self.note(format!("c{idx} partition {}ms", duration.as_millis()));
    }

    /// Changes client `idx`'s link impairments (both directions).
    pub fn set_link(&mut self, idx: usize, up: LinkConfig, down: LinkConfig) {
        self.clients[idx].up.set_config(up);
        self.clients[idx].down.set_config(down);
    }

    /// The client's transport drops (as if its process died): the server notices after
    /// the uplink latency.
    pub fn disconnect(&mut self, idx: usize) {
        if !self.clients[idx].connected {
            return;
        }
        self.clients[idx].connected = false;
        let at = self.now + self.clients[idx].up.config.latency;
        let conn = self.clients[idx].conn;
        self.schedule(at, Delivery::ServerDisconnect(conn));
        self.note(format!("c{idx} disconnect"));
    }

    /// The client's process dies without a word: nothing more is sent or received on its
    /// connection, and the server is never told (it notices by its idle timeout). The client's
    /// core stays as it was; nothing drives it any more.
    pub fn kill(&mut self, idx: usize) {
        self.clients[idx].connected = false;
        self.clients[idx].killed = true;
        self.note(format!("c{idx} killed"));
    }

    /// Opens a new connection for client `idx` (its core asked, [`ClientCore::poll_connect`]):
    /// refused at once while its link is partitioned (no handshake gets through), else
    /// connected with a new [`ConnId`] and handed to the core.
    fn reconnect(&mut self, idx: usize) {
        let now = self.now;
        if self.clients[idx].up.partitioned_until(now).is_some()
            || self.clients[idx].down.partitioned_until(now).is_some()
        {
            self.note(format!("c{idx} reconnect failed"));
            self.clients[idx].core.handle_transport_lost(
                CloseReason::Timeout,
                "handshake timed out".into(),
                now,
            );
            self.flush_client(idx);
            return;
        }
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let mtu = self.clients[idx].down.config.mtu;
        self.take_inbox();
        self.server
            .handle_connect(conn, crate::server::TransportKind::Sim, now);
        self.server.handle_max_datagram_size(conn, mtu);
        self.server.handle_send_queue(conn, 0);
        self.conn_to_client.insert(conn, idx);
        let c = &mut self.clients[idx];
        c.conn = conn;
        c.connected = true;
        c.up.new_streams();
        c.down.new_streams();
        c.inbox_quota = InboxQuota::default();
        c.core.handle_connected(now);
        self.note(format!("c{idx} reconnect as {}", conn.0));
        self.flush_client(idx);
    }

    /// After client `idx` acted: a core that gave up its connection (silence, a lost-connection
    /// close) drops it without telling the server, and one that wants a new one gets it.
    fn check_connection(&mut self, idx: usize) {
        let c = &mut self.clients[idx];
        if c.killed {
            return;
        }
        if c.connected && !matches!(c.core.state(), ClientState::Joining | ClientState::Joined) {
            c.connected = false;
        }
        if c.core.poll_connect() {
            self.reconnect(idx);
        }
    }

    /// Lets client `idx` act (call its commands), then sends what it queued.
    pub fn with_client<R>(&mut self, idx: usize, f: impl FnOnce(&mut ClientCore) -> R) -> R {
        let r = f(&mut self.clients[idx].core);
        self.flush_client(idx);
        r
    }

    /// Runs the simulation for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        self.run_until(end);
    }

    /// Runs until virtual time `end`, processing every delivery and timer in order.
    pub fn run_until(&mut self, end: Time) {
        self.run_until_step(end, |_| false);
    }

    /// Runs like [`Sim::run_until`] but checks `done` after every single delivery or timer and
    /// stops as soon as it holds, before anything later happens; returns whether it held
    /// (`false`: virtual time reached `end` first).
    pub fn run_until_step(&mut self, end: Time, mut done: impl FnMut(&Sim) -> bool) -> bool {
        // A core whose poll_timeout stays at `now` after handle_timeout(now) would spin here
        // forever: fail loudly instead.
        let mut same_time_steps = 0u32;
        let mut last = self.now;
        loop {
            if done(self) {
                return true;
            }
            let next_delivery = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let mut next_timer = self.server.poll_timeout();
            for c in &self.clients {
                if !c.killed {
                    if let Some(t) = c.core.poll_timeout() {
                        next_timer = Some(next_timer.map_or(t, |n: Time| n.min(t)));
                    }
                }
            }
            let next = match (next_delivery, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(end),
            };
            if next > end {
                self.now = end;
                return done(self);
            }
            self.now = self.now.max(next);
            if self.now == last {
                same_time_steps += 1;
                assert!(
                    same_time_steps < SAME_TIME_STEPS_MAX,
                    "a core keeps asking to be woken at {:?} without progress",
                    self.now
                );
            } else {
                same_time_steps = 0;
                last = self.now;
            }
            if next_delivery == Some(next) {
                let Reverse((_, _, slot)) = self.queue.pop().expect("peeked");
                if let Some(d) = self.payloads.remove(&slot) {
                    self.deliver(d);
                }
            } else {
                self.take_inbox();
                // As the relay feeds quinn's path stats before each tick: here the link
                // model's equivalent for each client's downstream path.
                for c in self.clients.iter().filter(|c| c.connected) {
                    let signals = c.down.path_signals(self.now);
                    self.server.handle_path_signals(c.conn, signals);
                    // And, as the relay reports its send queues, the frames still waiting.
                    let queued = c.down.stream_queue_bytes(self.now) as usize;
                    self.server.handle_send_queue(c.conn, queued);
                }
                self.server.handle_timeout(self.now);
                self.flush_server();
                for idx in 0..self.clients.len() {
                    if !self.clients[idx].killed
                        && self.clients[idx]
                            .core
                            .poll_timeout()
                            .is_some_and(|t| t <= self.now)
                    {
                        self.clients[idx].core.handle_timeout(self.now);
                        self.flush_client(idx);
                        self.check_connection(idx);
                    }
                }
            }
        }
    }

    /// Runs until `pred` holds (checked after each step) or `limit` of virtual time passes;
    /// returns whether it held.
    pub fn run_until_true(&mut self, limit: Duration, mut pred: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if pred(self) {
                return true;
            }
            self.run_for(Duration::from_millis(5));
        }
        pred(self)
    }

    fn note(&mut self, line: String) {
        if self.record_trace {
            self.trace
                .lines
                .push(format!("{:>10} {}", self.now.as_micros(), line));
        }
    }

    fn schedule(&mut self, at: Time, d: Delivery) {
        assert!(self.queue.len() < IN_FLIGHT_MAX, "simulation overflow");
        let slot = self.next_slot;
        self.next_slot += 1;
        self.payloads.insert(slot, d);
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, slot)));
    }

    fn deliver(&mut self, d: Delivery) {
        let now = self.now;
        match d {
            Delivery::ServerFrame(conn, ch, frame) => {
                self.take_inbox();
                // Frames carry their 4-byte prefix; the core takes the body.
                self.server.handle_frame(conn, ch, &frame[4..], now);
                self.flush_server();
            }
            Delivery::ServerDatagram(idx, conn, data) => {
                self.stats.datagrams_delivered += 1;
                if conn != self.clients[idx].conn {
                    // The relay's reader of that connection is gone with it.
                    return;
                }
                let quota = &mut self.clients[idx].inbox_quota;
                // Dropped past the inbox's bounds, as the relay drops them: counted by the core.
                let _ = self.inbox.push(conn, data, now, quota);
            }
            Delivery::ServerDisconnect(conn) => {
                self.take_inbox();
                self.server.handle_disconnect(conn, now);
                self.flush_server();
            }
            Delivery::ClientFrame(idx, conn, ch, frame) => {
                if !self.clients[idx].connected || conn != self.clients[idx].conn {
                    return;
                }
                let _ = self.clients[idx].core.handle_frame(ch, &frame[4..], now);
                self.flush_client(idx);
                self.check_connection(idx);
            }
            Delivery::ClientDatagram(idx, conn, data) => {
                if !self.clients[idx].connected || conn != self.clients[idx].conn {
                    return;
                }
                self.stats.datagrams_delivered += 1;
                self.clients[idx].core.handle_datagram(&data, now);
                self.flush_client(idx);
            }
            Delivery::ClientClose(idx, conn, reason, detail) => {
                if self.clients[idx].connected && conn == self.clients[idx].conn {
                    self.clients[idx].connected = false;
                    self.clients[idx]
                        .core
                        .handle_transport_lost(reason, detail, now);
                    self.flush_client(idx);
                    self.check_connection(idx);
                }
            }
        }
    }

    fn flush_server(&mut self) {
        while let Some(ev) = self.server.poll_event() {
            self.note(format!("server {ev:?}"));
            self.server_events.push(ev);
        }
        while let Some(e) = self.server.poll_effect() {
            if self.keep_effects {
                self.server_effects.push(e);
            }
        }
        while let Some(t) = self.server.poll_transmit() {
            match t {
                Transmit::Frame {
                    conn,
                    channel,
                    frame,
                } => {
                    let Some(&idx) = self.conn_to_client.get(&conn) else {
                        continue;
                    };
                    if !self.clients[idx].connected || conn != self.clients[idx].conn {
                        continue;
                    }
                    self.stats.frames_sent += 1;
                    self.stats.frame_bytes_down += frame.len() as u64;
                    let c = &mut self.clients[idx];
                    let at = c
                        .down
                        .reliable_arrival(channel, frame.len(), self.now, &mut self.rng);
                    c.stream_queue_peak =
                        c.stream_queue_peak.max(c.down.stream_queue_bytes(self.now));
                    self.schedule(
                        at,
                        Delivery::ClientFrame(idx, conn, channel, frame.to_vec()),
                    );
                }
                Transmit::Datagram { conn, data, .. } => {
                    let Some(&idx) = self.conn_to_client.get(&conn) else {
                        continue;
                    };
                    self.stats.datagrams_sent += 1;
                    self.stats.datagram_bytes_down += data.len() as u64;
                    let arrivals = self.clients[idx].down.datagram_arrivals(
                        data.len(),
                        self.now,
                        &mut self.rng,
                    );
                    for at in arrivals {
                        self.schedule(at, Delivery::ClientDatagram(idx, conn, data.clone()));
                    }
                }
                Transmit::Close {
                    conn,
                    reason,
                    detail,
                } => {
                    let Some(&idx) = self.conn_to_client.get(&conn) else {
                        continue;
                    };
                    // After everything queued on the control channel.
                    let at = self.clients[idx].down.last_reliable[Channel::Control as usize]
                        .max(self.now)
                        + Duration::from_micros(1);
                    if conn == self.clients[idx].conn {
                        self.schedule(at, Delivery::ClientClose(idx, conn, reason, detail));
                    }
                    let up_at = at + self.clients[idx].up.config.latency;
                    self.schedule(up_at, Delivery::ServerDisconnect(conn));
                }
            }
        }
    }

    fn flush_client(&mut self, idx: usize) {
        while let Some(ev) = self.clients[idx].core.poll_event() {
            self.note(format!("c{idx} {ev:?}"));
            self.clients[idx].events.push(ev);
        }
        while let Some(t) = self.clients[idx].core.poll_transmit() {
            if !self.clients[idx].connected {
                continue;
            }
            match t {
                ClientTransmit::Frame { channel, frame } => {
                    let conn = self.clients[idx].conn;
                    let at = self.clients[idx].up.reliable_arrival(
                        channel,
                        frame.len(),
                        self.now,
                        &mut self.rng,
                    );
                    self.schedule(at, Delivery::ServerFrame(conn, channel, frame));
                }
                ClientTransmit::Datagram(data) => self.send_up_datagram(idx, data),
            }
        }
    }
}

/// Longest virtual time [`joined_client`]'s handshake may take: its links are instant, so it
/// completes at time zero; the bound turns a handshake that never completes into a failure
/// instead of a spin.
const JOIN_TIME_MAX: Duration = Duration::from_secs(1);

/// A client core that joined a server hosting `world` with `config` by the real handshake
/// (`Hello`, then the server's own `Welcome` and `Snapshot`) over instant, lossless simulated
/// links, returned at virtual time zero before it received anything else: the start of tests and
/// benchmarks of the client's receive path, which then feed it frames and datagrams of their own.
/// The client's events so far (its join) are drained. Panics if the server refuses the client.
pub fn joined_client(config: ServerConfig, world: World, client: ClientConfig) -> ClientCore {
    let instant = LinkConfig::with_latency(Duration::ZERO);
    let mut sim = Sim::new(0, config, world, Box::new(InsecureTokens)).without_trace();
    let idx = sim.add_client(client, instant.clone(), instant);
    let joined = sim.run_until_step(Time::ZERO + JOIN_TIME_MAX, |s| {
        *s.clients[idx].core.state() != ClientState::Joining
    });
    let state = sim.clients[idx].core.state().clone();
    assert!(
        joined && state == ClientState::Joined,
        "the simulated server did not let the client join: {state:?}"
    );
    sim.clients.swap_remove(idx).core
}

/// Runs `scenario` once per seed, printing the seed of a failure before re-raising it. With the
/// environment variable `NEONET_SEED` set, runs only that seed.
pub fn run_seeds(seeds: std::ops::Range<u64>, scenario: impl Fn(u64)) {
    let only = std::env::var("NEONET_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let seeds: Vec<u64> = match only {
        Some(s) => vec![s],
        None => seeds.collect(),
    };
    for seed in seeds {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(seed)));
        if let Err(e) = r {
            eprintln!("simulation failed with seed {seed}: rerun with NEONET_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joined_client_holds_what_a_real_server_sent_it_and_nothing_more() {
        let mut world = World::default();
        let app = crate::types::Entity {
            id: crate::types::EntityId(5),
            kind: crate::types::EntityKind::App,
            owner: None,
            user: None,
            blueprint: None,
            transform: Default::default(),
            props: Vec::new(),
        };
        world.entities.insert(app.id, app);
        let config = ServerConfig {
            tick_hz: 60,
            ..ServerConfig::default()
        };
        let client = ClientConfig {
            name: "joiner".into(),
            token: None,
        };
        let mut core = joined_client(config, world, client);
        assert_eq!(*core.state(), ClientState::Joined);
        assert_eq!(core.tick_hz(), 60, "the server's Welcome");
        // The server allocated the player after the world's entities, and the snapshot holds
        // both.
        let player = core.player().expect("a player");
        assert_eq!(player, crate::types::EntityId(6));
        let ids: Vec<_> = core.world().entities.keys().copied().collect();
        assert_eq!(ids, [crate::types::EntityId(5), player]);
        assert_eq!(core.poll_event(), None, "the join's events are drained");
        // No tick ran for it: no transform datagram arrived to confuse a test's own.
        assert_eq!(core.latest_transform(crate::types::EntityId(5)), None);
        assert_eq!(core.datagrams_rejected(), 0);
    }
}
