//! The light clients' single event loop (`--light-driver loop`, the default): every light
//! client of a run, its [`LightCore`] and its QUIC connection (a quinn-proto [`Connection`]),
//! driven from one loop on one thread, as `fanout --target proto` drives a server
//! ([`crate::fanout_proto`]). quinn's own driver costs a task per connection and more (quinn's
//! connection task, neonet's stream readers and writers, a tokio timer and wake-up for each);
//! profiles of the task driver showed that machinery, not the light core, was most of a light
//! client's cost.
//!
//! - **Sockets**: client `i` uses socket `i / share` (`--light-share`, [`LOOP_SHARE_DEFAULT`]
//!   by default), each one UDP socket and one quinn-proto [`Endpoint`] holding its clients'
//!   connections. All sockets are on one address: a relay counts every client against its
//!   per-address limits (a spawned relay lifts them, `LimitsSection::for_load`; an external
//!   relay must raise `connections_per_addr_max` and `connection_attempts_per_addr_per_s` /
//!   `_burst` above the clients and the join rate, and `handshakes_before_retry` is best
//!   above the clients too, though quinn-proto answers a Retry).
//! - **Receive**: `recvmmsg` with GRO through quinn-udp on every readable socket, each packet
//!   straight into its endpoint and connection ([`RecvBatch`]); the arrival time of a server
//!   datagram (its update latency) is when the wait for packets returned.
//! - **Timers**: one heap ([`Deadlines`]) of each client's next deadline: the sooner of its
//!   connection's timer, its core's next wake-up or script frame ([`LightSession::next_wake`]),
//!   and its join or leave deadline. The wait is `ppoll` with microsecond resolution, so a
//!   client tick is sent when the core asks, not on the next millisecond.
//! - **Streams**: one unidirectional stream per channel, opened on the first frame, its first
//!   byte the channel, at the channel's priority ([`neonet::quic::priority`]), finished on
//!   leave; incoming streams read with [`ChannelStream`] and
//!   [`FrameDecoder::for_server_channel`]: the stream mapping of `neonet::quic`, so the relay
//!   sees what it sees from quinn's driver ([`super::tasks`]).
//! - **Send**: every client touched in a pass is polled for packets, and the packets go out in
//!   batches per socket ([`SendQueue`], `sendmmsg`), without ECN marks (quinn-proto then stops
//!   claiming ECN; the relay's acknowledgements carry no ECN counts).
//! - **Join, leave**: as the task driver: the join within [`CONNECT_TIMEOUT`] of the client's
//!   start; on stop `Goodbye`, every stream finished and its acknowledgement awaited (at most
//!   [`CLOSE_FLUSH_TIMEOUT`] plus [`WRITERS_FINISH_SLACK`]), the relay's close awaited (at most
//!   [`CLOSE_FLUSH_TIMEOUT`]), then the connection closed with `ClientLeft`.
//!
//! The run talks to the loop through [`LightLoop`]: a command channel (a client to start, the
//! stop) with a wake-up socket the loop also waits on, and each client's outcome on a oneshot
//! channel, so `run` aggregates outcomes as it does for tasks.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use neonet::quic::{
    self, ChannelStream, ChannelsSeen, ProtoRead, QueueFull, CHANNEL_QUEUE_BYTES_MAX,
};
use neonet_proto::client::ClientTransmit;
use neonet_proto::wire::codec::{self, FrameDecoder};
use neonet_proto::wire::msg::{Channel, CloseReason};
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, StreamEvent, StreamId,
    VarInt, WriteError,
};
use tokio::sync::oneshot;

use super::core::{LightCore, LightState};
use super::session::LightSession;
use crate::driver::{ClientOutcome, ClientPlan, CONNECT_TIMEOUT};
use crate::run::LiveCounters;
use neonet::quic::udp_batch::{Deadlines, RecvBatch, SendQueue, PACKET_SLOT_BYTES};

use quinn_proto::Connection;

/// Light clients per socket and endpoint when `--light-share` is not given: 64. One socket's
/// receive buffer (`neonet::quic::SOCKET_BUFFER_BYTES` asked, the kernel's `rmem_max` granted)
/// then holds many ticks of their datagrams (64 × ≈ 1 KB a tick), and 1,000 clients wait on 16
/// sockets: few enough for one `ppoll`, many packets per `recvmmsg`.
pub const LOOP_SHARE_DEFAULT: u32 = 64;

/// Longest the loop waits with nothing due: 100 ms. Commands wake it at once (the wake-up
/// socket); this only bounds how stale a missed wake-up could leave it.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// The loop's timer resolution: 1 ms, tokio's. Every deadline is rounded up to the next whole
/// millisecond since the loop started, as tokio's timer wheel rounds a `sleep_until`, so a
/// client's core runs at the moments it runs under the task driver (and under the full
/// client's driver). With exact deadlines the core's acknowledgement-only datagram, due one
/// period after its last datagram, fell a few microseconds before its next client tick, whose
/// input datagram would have carried the acknowledgement: 8% more datagrams up than either
/// tokio driver sends (measured: 509 acknowledgement-only datagrams against 4 in 10 s of 20
/// walking clients). It also gathers the clients' deadlines of one millisecond into one
/// wake-up.
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

/// `t` rounded up to the [`TIMER_RESOLUTION`] grid that starts at `epoch`.
fn on_timer_grid(t: Instant, epoch: Instant) -> Instant {
    let res = TIMER_RESOLUTION.as_nanos();
    let since = t.saturating_duration_since(epoch).as_nanos();
    let steps = since.div_ceil(res);
    epoch + Duration::from_nanos(u64::try_from(steps * res).unwrap_or(u64::MAX))
}

/// What the task driver's `ChannelWriters::finish` allows beyond [`CLOSE_FLUSH_TIMEOUT`] for its
/// writers to end: 200 ms; the loop waits as long for its streams' acknowledgement on leave.
const WRITERS_FINISH_SLACK: Duration = Duration::from_millis(200);

use quic::CLOSE_FLUSH_TIMEOUT;

/// A connection handle without a client (`LoopSocket::conns`).
const NO_CLIENT: usize = usize::MAX;

/// What a client's outcome is delivered as.
type Reply = oneshot::Sender<anyhow::Result<ClientOutcome>>;

/// What the run asks of the loop.
enum Command {
    /// Start a client now; its outcome goes to the sender.
    Client(Box<ClientPlan>, Reply),
    /// Every client leaves (the run is over); the loop ends once all have.
    Stop,
}

/// The run's handle on the loop's thread. Dropping it without [`LightLoop::stop`] ends the loop
/// at once (clients still running are dropped, their outcomes with them).
pub struct LightLoop {
    commands: mpsc::Sender<Command>,
    wake: UnixStream,
}

impl LightLoop {
    /// Starts the loop's thread for clients of `server`, `share` clients per socket.
    pub fn start(
        server: SocketAddr,
        share: u32,
        live: Arc<LiveCounters>,
    ) -> anyhow::Result<LightLoop> {
        let (wake, wake_rx) = UnixStream::pair().context("the light loop's wake-up socket")?;
        wake.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let (commands, rx) = mpsc::channel();
        let mut l = Loop {
            server,
            share: share.max(1),
            live,
            commands: rx,
            wake: wake_rx,
            sockets: Vec::new(),
            clients: Vec::new(),
            waiting: 0,
            deadlines: Deadlines::default(),
            dirty: Vec::new(),
            recv: RecvBatch::new(),
            scratch: Vec::with_capacity(PACKET_SLOT_BYTES),
            stopping: false,
            epoch: Instant::now(),
        };
        std::thread::Builder::new()
            .name("neonet-light".into())
            .spawn(move || l.run())
            .context("starting the light loop's thread")?;
        Ok(LightLoop { commands, wake })
    }

    /// Starts the client of `plan`; resolves to its outcome once it has left (or failed).
    pub fn client(
        &self,
        plan: ClientPlan,
    ) -> impl std::future::Future<Output = anyhow::Result<ClientOutcome>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let id = plan.id;
        let sent = self.send(Command::Client(Box::new(plan), tx));
        async move {
            sent?;
            rx.await.map_err(|_| {
                anyhow::anyhow!("client {id}: the light loop ended without its outcome")
            })?
        }
    }

    /// Every client leaves and returns its outcome.
    pub fn stop(&self) {
        let _ = self.send(Command::Stop);
    }

    fn send(&self, c: Command) -> anyhow::Result<()> {
        self.commands
            .send(c)
            .map_err(|_| anyhow::anyhow!("the light loop has ended"))?;
        // One byte wakes the loop; a full socket already does.
        let _ = (&self.wake).write(&[1]);
        Ok(())
    }
}

/// One UDP socket, its endpoint and its clients' connections.
struct LoopSocket {
    socket: UdpSocket,
    state: quinn_udp::UdpSocketState,
    endpoint: Endpoint,
    /// Connection handle (quinn-proto's dense slab index) → client index, [`NO_CLIENT`] when
    /// none.
    conns: Vec<usize>,
    out: SendQueue,
}

/// One channel's outgoing stream.
#[derive(Default)]
struct SendChannel {
    id: Option<StreamId>,
    /// Bytes quinn has not taken yet (flow control, or the stream not yet open): the channel
    /// byte first when the stream is new, then whole frames. Bounded as the task driver's
    /// queue: [`CHANNEL_QUEUE_BYTES_MAX`].
    pending: Vec<u8>,
    /// Finish the stream once `pending` is written.
    finishing: bool,
    /// The stream is finished and acknowledged, stopped by the peer, or broken: nothing more
    /// goes out on it.
    done: bool,
}

/// Where a client is.
enum Phase {
    /// The QUIC handshake.
    Handshaking,
    /// `Hello` sent: until the snapshot.
    Joining,
    /// Joined: walking, measuring.
    Joined(Box<LightSession>),
    /// Told to stop: its outcome is taken; `Goodbye` sent, the streams finishing, until
    /// `until`; then the relay's close awaited.
    Leaving {
        outcome: Box<ClientOutcome>,
        streams_done: bool,
        until: Instant,
    },
    /// Its outcome is delivered; the connection drains.
    Over,
}

/// One light client.
struct Client {
    plan: ClientPlan,
    socket: usize,
    ch: ConnectionHandle,
    conn: Connection,
    /// When it started (the core's clock starts here), and its join deadline.
    started: Instant,
    core: Option<LightCore>,
    phase: Phase,
    send: [SendChannel; Channel::ALL.len()],
    recv: HashMap<StreamId, ChannelStream>,
    seen: ChannelsSeen,
    reply: Option<Reply>,
    /// The deadline filed in the heap.
    filed: Option<Instant>,
}

/// The loop's state, on its thread.
struct Loop {
    server: SocketAddr,
    share: u32,
    live: Arc<LiveCounters>,
    commands: mpsc::Receiver<Command>,
    wake: UnixStream,
    sockets: Vec<LoopSocket>,
    /// Indexed by the order clients started; `None` once gone (indices are never reused, so a
    /// stale heap entry cannot name another client).
    clients: Vec<Option<Client>>,
    /// Clients whose outcome is not delivered yet.
    waiting: usize,
    deadlines: Deadlines,
    dirty: Vec<usize>,
    recv: RecvBatch,
    scratch: Vec<u8>,
    stopping: bool,
    /// Where the timer grid starts ([`TIMER_RESOLUTION`]).
    epoch: Instant,
}

impl Loop {
    fn run(&mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        loop {
            let now = Instant::now();
            self.receive(&fds, now);
            if !self.commands(now) {
                return;
            }
            if self.stopping && self.waiting == 0 {
                return;
            }
            while let Some((t, ci)) = self.deadlines.pop_due(now) {
                if let Some(c) = self.clients.get_mut(ci).and_then(Option::as_mut) {
                    if Deadlines::popped(t, &mut c.filed) {
                        self.dirty.push(ci);
                    }
                }
            }
            let mut dirty = std::mem::take(&mut self.dirty);
            dirty.sort_unstable();
            dirty.dedup();
            for ci in dirty.drain(..) {
                self.drive(ci, now);
            }
            self.dirty = dirty;
            for s in &mut self.sockets {
                s.out.flush(&s.socket);
            }
            self.wait(&mut fds);
        }
    }

    /// Waits for a packet, a command or the next deadline.
    fn wait(&mut self, fds: &mut Vec<libc::pollfd>) {
        fds.clear();
        fds.push(libc::pollfd {
            fd: self.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        fds.extend(self.sockets.iter().map(|s| libc::pollfd {
            fd: s.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        let now = Instant::now();
        let until = self
            .deadlines
            .next()
            .map_or(now + IDLE_WAIT, |t| t.min(now + IDLE_WAIT));
        let wait = until.saturating_duration_since(now);
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a live array of `fds.len()` pollfds, `ts` a valid timespec, and a
        // null signal mask leaves the thread's mask as it is.
        let r = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if r <= 0 {
            for f in fds.iter_mut() {
                f.revents = 0;
            }
        }
    }

    /// Reads every socket `fds` says is readable, each packet into its endpoint and connection.
    fn receive(&mut self, fds: &[libc::pollfd], now: Instant) {
        if fds.first().is_some_and(|f| f.revents != 0) {
            let mut buf = [0u8; 256];
            while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        }
        for (si, f) in fds.iter().skip(1).enumerate() {
            if f.revents == 0 {
                continue;
            }
            let Some(s) = self.sockets.get_mut(si) else {
                continue;
            };
            loop {
                // A batch with room to spare emptied the socket: what comes later wakes the
                // next wait, so no read that would find nothing.
                let full = match self.recv.recv(&s.socket, &s.state) {
                    Ok(0) => break,
                    Ok(n) => n == quinn_udp::BATCH_SIZE,
                    Err(e) => {
                        tracing::warn!("light loop: receiving on socket {si}: {e}");
                        break;
                    }
                };
                for (meta, seg) in self.recv.packets() {
                    self.scratch.clear();
                    match s.endpoint.handle(
                        now,
                        meta.addr,
                        meta.dst_ip,
                        neonet::quic::udp_batch::ecn(meta),
                        BytesMut::from(seg),
                        &mut self.scratch,
                    ) {
                        Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                            if let Some(&ci) = s.conns.get(ch.0) {
                                if let Some(c) = self.clients.get_mut(ci).and_then(Option::as_mut) {
                                    c.conn.handle_event(ev);
                                    self.dirty.push(ci);
                                }
                            }
                        }
                        Some(DatagramEvent::Response(t)) => {
                            s.out
                                .slot(&s.socket)
                                .extend_from_slice(&self.scratch[..t.size]);
                            s.out.push(t.destination);
                        }
                        // A client endpoint accepts no connections.
                        Some(DatagramEvent::NewConnection(incoming)) => s.endpoint.ignore(incoming),
                        None => {}
                    }
                }
                if !full {
                    break;
                }
            }
        }
    }

    /// Takes the run's commands; false when the run has gone (the loop then ends).
    fn commands(&mut self, now: Instant) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Client(plan, reply)) => self.start_client(*plan, reply, now),
                Ok(Command::Stop) => {
                    self.stopping = true;
                    for ci in 0..self.clients.len() {
                        if self.clients[ci].is_some() {
                            self.dirty.push(ci);
                        }
                    }
                }
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn start_client(&mut self, plan: ClientPlan, reply: Reply, now: Instant) {
        let id = plan.id;
        let addr = plan.addr;
        match self.connect(plan, reply, now) {
            Ok(ci) => {
                self.waiting += 1;
                self.dirty.push(ci);
            }
            Err((e, reply)) => {
                let _ = reply.send(Err(e.context(format!("client {id} connecting to {addr}"))));
            }
        }
    }

    /// Opens the client's connection on its socket; its index.
    fn connect(
        &mut self,
        plan: ClientPlan,
        reply: Reply,
        now: Instant,
    ) -> Result<usize, (anyhow::Error, Reply)> {
        if self.stopping {
            return Err((anyhow::anyhow!("the run ended before it joined"), reply));
        }
        let si = (plan.id / self.share) as usize;
        while self.sockets.len() <= si {
            match self.bind() {
                Ok(s) => self.sockets.push(s),
                Err(e) => return Err((e, reply)),
            }
        }
        let config = match quic::client_config(
            &plan.trust,
            Duration::from_millis(quic::IDLE_TIMEOUT_MS_DEFAULT),
        ) {
            Ok(c) => c,
            Err(e) => return Err((e.into(), reply)),
        };
        let s = &mut self.sockets[si];
        let (ch, conn) =
            match s
                .endpoint
                .connect(now, config, plan.addr, neonet::tls::DEFAULT_SERVER_NAME)
            {
                Ok(c) => c,
                Err(e) => return Err((e.into(), reply)),
            };
        let ci = self.clients.len();
        if s.conns.len() <= ch.0 {
            s.conns.resize(ch.0 + 1, NO_CLIENT);
        }
        s.conns[ch.0] = ci;
        self.clients.push(Some(Client {
            plan,
            socket: si,
            ch,
            conn,
            started: now,
            core: None,
            phase: Phase::Handshaking,
            send: Default::default(),
            recv: HashMap::new(),
            seen: ChannelsSeen::default(),
            reply: Some(reply),
            filed: None,
        }));
        Ok(ci)
    }

    /// A new socket and endpoint, on an ephemeral port of the server's address family.
    fn bind(&self) -> anyhow::Result<LoopSocket> {
        let bind: SocketAddr = if self.server.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let (socket, _) = quic::bind_udp(bind, quic::SOCKET_BUFFER_BYTES)?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())
            .context("configuring a light loop socket")?;
        let endpoint = Endpoint::new(
            Arc::new(EndpointConfig::default()),
            None,
            !state.may_fragment(),
            None,
        );
        Ok(LoopSocket {
            socket,
            state,
            endpoint,
            conns: Vec::new(),
            out: SendQueue::new(),
        })
    }

    /// Everything due for client `ci` at `now`: its connection's timer and events, its core's
    /// inputs and timers, its script, its join or leave; then its packets out and its next
    /// deadline filed.
    fn drive(&mut self, ci: usize, now: Instant) {
        let Some(c) = self.clients.get_mut(ci).and_then(Option::as_mut) else {
            return;
        };
        let s = &mut self.sockets[c.socket];
        let had_reply = c.reply.is_some();
        if c.conn.poll_timeout().is_some_and(|t| t <= now) {
            c.conn.handle_timeout(now);
        }
        loop {
            while let Some(ev) = c.conn.poll() {
                c.event(ev, now);
            }
            c.step(now, &self.live, self.stopping);
            c.flush();
            loop {
                let slot = s.out.slot(&s.socket);
                match c.conn.poll_transmit(now, 1, slot) {
                    Some(t) => s.out.push(t.destination),
                    None => break,
                }
            }
            let mut progressed = false;
            while let Some(ev) = c.conn.poll_endpoint_events() {
                progressed = true;
                if let Some(back) = s.endpoint.handle_event(c.ch, ev) {
                    c.conn.handle_event(back);
                }
            }
            if !progressed {
                break;
            }
        }
        if had_reply && c.reply.is_none() {
            self.waiting = self.waiting.saturating_sub(1);
        }
        if c.reply.is_none() && c.conn.is_closed() {
            // Delivered and closed (the close packet went out above): nothing waits for the
            // connection to drain.
            s.conns[c.ch.0] = NO_CLIENT;
            self.clients[ci] = None;
            return;
        }
        let at = c.deadline().map(|t| on_timer_grid(t, self.epoch));
        self.deadlines.file(ci, at, &mut c.filed);
    }
}

impl Client {
    /// The client's next deadline: its connection's timer, and its own.
    fn deadline(&mut self) -> Option<Instant> {
        let conn = self.conn.poll_timeout();
        let own = match (&self.phase, &self.core) {
            (Phase::Handshaking, _) => Some(self.started + CONNECT_TIMEOUT),
            (Phase::Joining, Some(core)) => {
                let join = self.started + CONNECT_TIMEOUT;
                Some(
                    core.poll_timeout()
                        .map_or(join, |t| self.started + Duration::from_micros(t.0))
                        .min(join),
                )
            }
            (Phase::Joined(s), Some(core)) => Some(s.next_wake(core).into_std()),
            (Phase::Leaving { until, .. }, _) => Some(*until),
            _ => None,
        };
        match (conn, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `at` on the core's clock.
    fn time(&self, at: Instant) -> neonet_proto::Time {
        neonet_proto::Time(at.saturating_duration_since(self.started).as_micros() as u64)
    }

    /// One connection event.
    fn event(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::Connected => {
                if matches!(self.phase, Phase::Handshaking) {
                    self.core = Some(LightCore::new(
                        format!("load{}", self.plan.id),
                        self.plan.token.clone(),
                        self.time(now),
                    ));
                    self.phase = Phase::Joining;
                }
            }
            Event::ConnectionLost { reason } => match (&mut self.phase, &mut self.core) {
                (Phase::Handshaking, _) => self.fail(anyhow::anyhow!(
                    "client {} connecting to {}: {reason}",
                    self.plan.id,
                    self.plan.addr
                )),
                (Phase::Leaving { .. }, _) => {
                    // The relay closed the connection: the leave is complete.
                    self.left();
                }
                (_, Some(core)) => core.handle_disconnect(CloseReason::Timeout, reason.to_string()),
                _ => {}
            },
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                while let Some(id) = self.conn.streams().accept(Dir::Uni) {
                    self.recv.insert(id, ChannelStream::default());
                    self.read(id, now);
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => self.read(id, now),
            Event::Stream(StreamEvent::Writable { id }) => {
                if let Some(ch) = self.send.iter().position(|s| s.id == Some(id)) {
                    self.write(ch);
                }
            }
            Event::Stream(StreamEvent::Finished { id } | StreamEvent::Stopped { id, .. }) => {
                if let Some(s) = self.send.iter_mut().find(|s| s.id == Some(id)) {
                    s.done = true;
                    s.pending = Vec::new();
                }
            }
            Event::Stream(StreamEvent::Available { dir: Dir::Uni }) => {
                for ch in 0..self.send.len() {
                    if self.send[ch].id.is_none() && !self.send[ch].pending.is_empty() {
                        self.write(ch);
                    }
                }
            }
            Event::DatagramReceived => {
                if let (Phase::Joined(s), Some(core)) = (&mut self.phase, &mut self.core) {
                    let t = neonet_proto::Time(
                        now.saturating_duration_since(self.started).as_micros() as u64,
                    );
                    while let Some(d) = self.conn.datagrams().recv() {
                        s.datagram(core, &d, t);
                    }
                }
                // Before the join they wait in quinn's buffer, as the task driver leaves them
                // until it joined.
            }
            _ => {}
        }
    }

    /// Reads what stream `id` has: frames to the core, in order.
    fn read(&mut self, id: StreamId, now: Instant) {
        let Some(reader) = self.recv.get_mut(&id) else {
            return;
        };
        let mut frames = Vec::new();
        let read = reader.read_proto(
            &mut self.conn,
            id,
            &self.seen,
            FrameDecoder::for_server_channel,
            &mut frames,
        );
        let channel = reader.channel();
        let t = self.time(now);
        if let (Some(channel), Some(core)) = (channel, self.core.as_mut()) {
            for body in codec::frames(&frames) {
                core.handle_frame(channel, body, t);
            }
        }
        match read {
            ProtoRead::Blocked => {}
            ProtoRead::Ended | ProtoRead::Gone => {
                self.recv.remove(&id);
            }
            ProtoRead::Failed(e) => {
                self.recv.remove(&id);
                if let Some(core) = self.core.as_mut() {
                    core.handle_disconnect(
                        CloseReason::ProtocolViolation,
                        format!("server stream: {e}"),
                    );
                }
            }
        }
    }

    /// Hands channel `ch`'s pending bytes to quinn, opening its stream first if need be.
    fn write(&mut self, ch: usize) {
        let s = &mut self.send[ch];
        if s.done {
            return;
        }
        let id = match s.id {
            Some(id) => id,
            None => {
                if s.pending.is_empty() {
                    return;
                }
                // None: the relay's stream limit is reached; `Available` retries.
                let Some(id) = self.conn.streams().open(Dir::Uni) else {
                    return;
                };
                let _ = self
                    .conn
                    .send_stream(id)
                    .set_priority(quic::priority(Channel::ALL[ch]));
                s.id = Some(id);
                id
            }
        };
        let mut stream = self.conn.send_stream(id);
        while !s.pending.is_empty() {
            match stream.write(&s.pending) {
                Ok(n) => {
                    s.pending.drain(..n);
                }
                Err(WriteError::Blocked) => return,
                Err(_) => {
                    s.done = true;
                    s.pending = Vec::new();
                    return;
                }
            }
        }
        if s.finishing {
            if stream.finish().is_err() {
                s.done = true;
            }
            s.finishing = false;
        }
    }

    /// Queues a frame on its channel's stream and writes what quinn takes.
    fn send_frame(&mut self, channel: Channel, frame: &[u8]) -> Result<(), QueueFull> {
        let ch = channel as usize;
        let s = &mut self.send[ch];
        if s.done || s.finishing {
            // The stream is ending or gone (reported elsewhere): dropped, as the task driver's
            // queue drops it.
            return Ok(());
        }
        if !s.pending.is_empty() && s.pending.len() + frame.len() > CHANNEL_QUEUE_BYTES_MAX {
            return Err(QueueFull(channel));
        }
        if s.id.is_none() && s.pending.is_empty() {
            s.pending.push(channel as u8);
        }
        s.pending.extend_from_slice(frame);
        self.write(ch);
        Ok(())
    }

    /// Sends what the core queued.
    fn flush(&mut self) {
        let Some(mut core) = self.core.take() else {
            return;
        };
        while let Some(t) = core.poll_transmit() {
            match t {
                ClientTransmit::Frame { channel, frame } => {
                    if let Err(e) = self.send_frame(channel, &frame) {
                        core.handle_disconnect(CloseReason::Timeout, e.to_string());
                    }
                }
                ClientTransmit::Datagram(d) => {
                    let _ = self.conn.datagrams().send(Bytes::from(d), true);
                }
            }
        }
        self.core = Some(core);
    }

    /// What is due at `now` beyond the connection: the join, the session, the leave.
    fn step(&mut self, now: Instant, live: &LiveCounters, stopping: bool) {
        if self.reply.is_none() {
            return;
        }
        let id = self.plan.id;
        let addr = self.plan.addr;
        match &mut self.phase {
            Phase::Handshaking | Phase::Joining if stopping => {
                self.fail(anyhow::anyhow!(
                    "client {id}: the run ended before it joined"
                ));
            }
            Phase::Handshaking => {
                if now >= self.started + CONNECT_TIMEOUT {
                    self.fail(anyhow::anyhow!(
                        "client {id} connecting to {addr}: QUIC handshake timed out"
                    ));
                }
            }
            Phase::Joining => {
                let Some(core) = self.core.as_mut() else {
                    return;
                };
                match core.state().clone() {
                    LightState::Joining => {
                        if now >= self.started + CONNECT_TIMEOUT {
                            return self.fail(anyhow::anyhow!(
                                "client {id} joining {addr}: no snapshot within {CONNECT_TIMEOUT:?}"
                            ));
                        }
                        if core
                            .poll_timeout()
                            .is_some_and(|t| self.started + Duration::from_micros(t.0) <= now)
                        {
                            let t = neonet_proto::Time(
                                now.saturating_duration_since(self.started).as_micros() as u64,
                            );
                            core.handle_timeout(t);
                        }
                    }
                    LightState::Closed { reason, detail } => {
                        self.fail(anyhow::anyhow!(
                            "client {id} joining {addr}: {reason} ({detail})"
                        ));
                    }
                    LightState::Joined => {
                        let session = LightSession::joined(
                            core,
                            &self.plan,
                            live,
                            tokio::time::Instant::from_std(self.started),
                            tokio::time::Instant::from_std(now),
                        );
                        self.phase = Phase::Joined(Box::new(session));
                        // Datagrams that came before the snapshot, as the task driver reads
                        // them once joined.
                        self.event(Event::DatagramReceived, now);
                        self.step(now, live, stopping);
                    }
                }
            }
            Phase::Joined(s) => {
                let Some(core) = self.core.as_mut() else {
                    return;
                };
                let at = tokio::time::Instant::from_std(now);
                if at >= s.next_wake(core) && s.wake(core, &self.plan, live, at) {
                    s.live_bytes(live, &self.conn.stats());
                }
                if !s.take_events(core, live) || stopping {
                    self.end_session(now, live);
                }
            }
            Phase::Leaving {
                streams_done,
                until,
                ..
            } => {
                if !*streams_done {
                    let all = self.send.iter().all(|s| s.id.is_none() || s.done);
                    if all || now >= *until {
                        // The streams are acknowledged (or given up on): the relay's close is
                        // awaited next.
                        *streams_done = true;
                        *until = now + CLOSE_FLUSH_TIMEOUT;
                    }
                } else if now >= *until || self.conn.is_closed() {
                    self.left();
                }
            }
            Phase::Over => {}
        }
    }

    /// The joined session stops (told to, or it ended): its outcome; a client told to stop
    /// leaves first.
    fn end_session(&mut self, now: Instant, live: &LiveCounters) {
        let Phase::Joined(s) = std::mem::replace(&mut self.phase, Phase::Over) else {
            return;
        };
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let outcome = s.finish(core, live, &self.conn.stats());
        if outcome.disconnected {
            self.close(quic::CLOSE_CODE_LOCAL);
            self.deliver(Ok(outcome));
            return;
        }
        core.leave();
        self.flush();
        for s in &mut self.send {
            if s.id.is_some() || !s.pending.is_empty() {
                s.finishing = true;
            }
        }
        for ch in 0..self.send.len() {
            self.write(ch);
        }
        self.phase = Phase::Leaving {
            outcome: Box::new(outcome),
            streams_done: false,
            until: now + CLOSE_FLUSH_TIMEOUT + WRITERS_FINISH_SLACK,
        };
    }

    /// The leave is over: the connection closed with `ClientLeft`, the outcome delivered.
    fn left(&mut self) {
        let Phase::Leaving { outcome, .. } = std::mem::replace(&mut self.phase, Phase::Over) else {
            return;
        };
        self.close(quic::close_code(CloseReason::ClientLeft).into_inner() as u32);
        self.deliver(Ok(*outcome));
    }

    /// The client failed before it joined: the connection closed, the error delivered.
    fn fail(&mut self, e: anyhow::Error) {
        self.phase = Phase::Over;
        self.close(quic::CLOSE_CODE_LOCAL);
        self.deliver(Err(e));
    }

    fn close(&mut self, code: u32) {
        if !self.conn.is_closed() {
            self.conn
                .close(Instant::now(), VarInt::from_u32(code), Bytes::new());
        }
    }

    fn deliver(&mut self, r: anyhow::Result<ClientOutcome>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(r);
        }
    }
}
