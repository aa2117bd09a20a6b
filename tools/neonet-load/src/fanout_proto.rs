//! `neonet-load fanout --target proto`: the bare fan-out again, but served by **quinn-proto
//! driven from one event loop on one thread** instead of quinn's tokio driver.
//!
//! quinn (the high-level crate the relay uses) runs a task per connection: every packet in
//! wakes the endpoint task, which hands it over a channel to that connection's task; every
//! datagram out wakes the connection's task, which encrypts and sends its own packets with its
//! own `sendmsg`. quinn-proto is the same protocol engine without the tasks. This server
//! measures what QUIC itself costs when one loop owns the socket and every connection:
//!
//! - **receive**: `recvmmsg` with GRO through quinn-udp, each packet straight into
//!   `Endpoint::handle` and its `Connection`, no channel, no wake-up;
//! - **timers**: one heap of connection deadlines, stale entries skipped;
//! - **send**: at a tick every connection queues its datagrams, then every connection is
//!   polled for packets, and the packets go out in batches of up to [`neonet::quic::udp_batch::SEND_BATCH`] per
//!   `sendmmsg` system call across connections (`libc`, since quinn-udp sends one destination
//!   per call).
//!
//! Same child protocol, same transport settings (`neonet::quic::transport_config`), same
//! certificate kind and the same clients as `bare`, so the two figures compare the drivers and
//! nothing else. It is a measurement instrument for issue 19, not a server: no streams are
//! read, nothing is authenticated beyond TLS.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig, Event, ServerConfig, Transmit,
};

use crate::fanout::FanoutArgs;
use neonet::quic::udp_batch::{Deadlines, RecvBatch, SendQueue, PACKET_SLOT_BYTES};

/// Shortest interval between two waits for packets: 1 ms. Waking for every packet costs
/// a `poll` and a `recvmmsg` each; waiting a millisecond gathers the packets of that
/// millisecond (about 30 at 1,000 clients × 30 Hz) into one batch, for at most 1 ms of
/// added latency.
const COALESCE: Duration = Duration::from_millis(1);

/// Longest the loop sleeps in `poll` with nothing due, so a `snap` request or the end is
/// noticed: 50 ms.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// Counters the `snap` thread reads.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    connections: AtomicU64,
    datagrams_in: AtomicU64,
}

/// One connection and the deadline last entered in the timer heap for it.
struct Conn {
    conn: quinn_proto::Connection,
    deadline: Option<Instant>,
}

/// The quinn-proto fan-out server (child role `proto-server`): the same protocol with its
/// parent as `serve_bare`, on one thread.
pub fn serve(args: FanoutArgs) -> anyhow::Result<()> {
    let identity = crate::fanout::self_signed()?;
    let crypto = neonet::tls::server_crypto(&identity)?;
    let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| anyhow::anyhow!("QUIC TLS config: {e}"))?;
    let mut server = ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(neonet::quic::transport_config(
        crate::fanout::idle_timeout(),
    )));
    let server = Arc::new(server);
    let (socket, _buffers) = neonet::quic::bind_udp(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        neonet::quic::SOCKET_BUFFER_BYTES,
    )?;
    let state = quinn_udp::UdpSocketState::new((&socket).into())?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "addr {}", socket.local_addr()?)?;
        writeln!(out, "fingerprint {}", identity.fingerprint)?;
        out.flush()?;
    }
    let counters = Arc::new(Counters::default());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (counters, done, bytes) = (counters.clone(), done.clone(), u64::from(args.bytes));
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if line.trim() != "snap" {
                    continue;
                }
                let s = counters.sent.load(Relaxed);
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "snap {s} {} {} {} {}",
                    s * bytes,
                    counters.failed.load(Relaxed),
                    counters.connections.load(Relaxed),
                    counters.datagrams_in.load(Relaxed)
                );
                let _ = out.flush();
            }
            done.store(true, Relaxed);
        });
    }

    let mut endpoint = Endpoint::new(
        Arc::new(EndpointConfig::default()),
        Some(server),
        true,
        None,
    );
    let mut conns: HashMap<ConnectionHandle, Conn> = HashMap::new();
    let mut timers = Deadlines::default();
    let mut dirty: Vec<ConnectionHandle> = Vec::new();
    let mut out = SendQueue::new();
    let mut scratch = Vec::with_capacity(PACKET_SLOT_BYTES);
    let mut recv = RecvBatch::new();
    let payload = Bytes::from(vec![0xA5u8; args.bytes as usize]);
    let period = Duration::from_secs(1) / args.hz;
    let mut next_tick = Instant::now() + period;
    let mut last_wake = Instant::now();

    while !done.load(Relaxed) {
        let now = Instant::now();
        // The tick: every connection queues its datagrams.
        if now >= next_tick {
            let (mut ok, mut bad) = (0u64, 0u64);
            for (&ch, c) in conns.iter_mut() {
                for _ in 0..args.per_tick {
                    match c.conn.datagrams().send(payload.clone(), true) {
                        Ok(()) => ok += 1,
                        Err(_) => bad += 1,
                    }
                }
                dirty.push(ch);
            }
            counters.sent.fetch_add(ok, Relaxed);
            counters.failed.fetch_add(bad, Relaxed);
            next_tick += period;
            if next_tick < now {
                next_tick = now + period;
            }
        }
        // Timers due.
        while let Some((t, idx)) = timers.pop_due(now) {
            let ch = ConnectionHandle(idx);
            let Some(c) = conns.get_mut(&ch) else {
                continue;
            };
            if !Deadlines::popped(t, &mut c.deadline) {
                continue;
            }
            match c.conn.poll_timeout() {
                // The entry is older than the connection's timers: re-filed.
                Some(later) if later > now => timers.file(idx, Some(later), &mut c.deadline),
                _ => {
                    c.conn.handle_timeout(now);
                    dirty.push(ch);
                }
            }
        }
        // Everything touched: events, endpoint events, packets out.
        dirty.sort_unstable_by_key(|ch| ch.0);
        dirty.dedup();
        for ch in dirty.drain(..) {
            let Some(c) = conns.get_mut(&ch) else {
                continue;
            };
            drive(&mut endpoint, ch, c, &counters);
            loop {
                let slot = out.slot(&socket);
                match c.conn.poll_transmit(now, 1, slot) {
                    Some(Transmit { destination, .. }) => out.push(destination),
                    None => break,
                }
            }
            if c.conn.is_drained() {
                conns.remove(&ch);
                counters.connections.store(conns.len() as u64, Relaxed);
                continue;
            }
            // One heap entry per connection: a new one only when the connection's next
            // deadline comes before the filed one; a later deadline is re-filed when the
            // earlier entry pops.
            timers.file(ch.0, c.conn.poll_timeout(), &mut c.deadline);
        }
        out.flush(&socket);
        counters.failed.store(out.dropped, Relaxed);

        // Wait for packets until the next deadline, but wake at most once per
        // `COALESCE`: packets that arrive meanwhile are read in one `recvmmsg` batch.
        let wake = timers
            .next()
            .map_or(next_tick, |t| t.min(next_tick))
            .min(now + IDLE_WAIT);
        let since = last_wake.elapsed();
        if since < COALESCE {
            std::thread::sleep(COALESCE - since);
        }
        let wait = wake.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            let mut pfd = libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
        last_wake = Instant::now();
        recv.recv(&socket, &state).context("receiving")?;
        let now = Instant::now();
        for (meta, seg) in recv.packets() {
            let data = BytesMut::from(seg);
            scratch.clear();
            match endpoint.handle(
                now,
                meta.addr,
                meta.dst_ip,
                neonet::quic::udp_batch::ecn(meta),
                data,
                &mut scratch,
            ) {
                Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                    if let Some(c) = conns.get_mut(&ch) {
                        c.conn.handle_event(ev);
                        dirty.push(ch);
                    }
                }
                Some(DatagramEvent::NewConnection(incoming)) => {
                    let mut resp = Vec::new();
                    match endpoint.accept(incoming, now, &mut resp, None) {
                        Ok((ch, conn)) => {
                            conns.insert(
                                ch,
                                Conn {
                                    conn,
                                    deadline: None,
                                },
                            );
                            counters.connections.store(conns.len() as u64, Relaxed);
                            dirty.push(ch);
                        }
                        Err(e) => {
                            if let Some(t) = e.response {
                                out.slot(&socket).extend_from_slice(&resp[..t.size]);
                                out.push(t.destination);
                            }
                        }
                    }
                }
                Some(DatagramEvent::Response(t)) => {
                    out.slot(&socket).extend_from_slice(&scratch[..t.size]);
                    out.push(t.destination);
                }
                None => {}
            }
        }
    }
    Ok(())
}

/// Runs a connection's application and endpoint events to quiescence.
fn drive(endpoint: &mut Endpoint, ch: ConnectionHandle, c: &mut Conn, counters: &Counters) {
    loop {
        let mut progressed = false;
        while let Some(ev) = c.conn.poll_endpoint_events() {
            progressed = true;
            if let Some(back) = endpoint.handle_event(ch, ev) {
                c.conn.handle_event(back);
            }
        }
        while let Some(ev) = c.conn.poll() {
            progressed = true;
            if let Event::DatagramReceived = ev {
                while c.conn.datagrams().recv().is_some() {
                    counters.datagrams_in.fetch_add(1, Relaxed);
                }
            }
        }
        if !progressed {
            break;
        }
    }
}
