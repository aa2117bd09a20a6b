//! The QUIC transport of the relay: the accept loop (behind the connection limit), one task
//! per connection that only parses and forwards (frames to the [`Inbound`] queue, datagrams to
//! the [`SharedInbox`]), and the QUIC [`Link`] that carries the core's transmits out.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, Endpoint};
use tokio::sync::{mpsc, watch, Semaphore};

use neonet_proto::server::{
    ConnId, DatagramInbox, InboxBatch, InboxQuota, Transmit, TransportKind,
};
use neonet_proto::wire::codec::FrameDecoder;
use neonet_proto::Time;

use super::{ConnIds, Inbound, Link, HANDSHAKE_TIMEOUT};
use crate::metrics::Metrics;
use crate::quic::{self, ChannelWriters, StreamEvent};

/// The core's [`DatagramInbox`] shared between the connection readers (which push) and the
/// core task (which takes): a mutex around it, and its length readable without the lock so the
/// core skips an empty inbox. The bounds are the inbox's own (policy, in the core's crate).
#[derive(Debug)]
pub struct SharedInbox {
    inbox: Mutex<DatagramInbox<Bytes>>,
    /// The inbox's length, read without the lock.
    len: AtomicUsize,
    /// The core's clock zero: arrival times are on the core's clock.
    start: Instant,
}

impl SharedInbox {
    /// An empty inbox whose arrival times count from `start`.
    pub(super) fn new(start: Instant) -> SharedInbox {
        SharedInbox {
            inbox: Mutex::new(DatagramInbox::new()),
            len: AtomicUsize::new(0),
            start,
        }
    }

    /// Queues a datagram from `conn` that arrived now (or drops it: see [`DatagramInbox::push`]).
    pub(super) fn push(&self, conn: ConnId, data: Bytes, quota: &mut InboxQuota) {
        let at = Time(self.start.elapsed().as_micros() as u64);
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        let _ = inbox.push(conn, data, at, quota);
        self.len.store(inbox.len(), Ordering::Release);
    }

    /// Moves everything waiting into `into` (which must be empty), unless nothing waits.
    pub(super) fn take(&self, into: &mut InboxBatch<Bytes>) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        inbox.take(into);
        self.len.store(0, Ordering::Release);
    }
}

pub(super) async fn accept_loop(
    endpoint: Endpoint,
    permits: Arc<Semaphore>,
    conn_ids: Arc<ConnIds>,
    inbound: mpsc::Sender<Inbound>,
    inbox: Arc<SharedInbox>,
    mut shutdown: watch::Receiver<bool>,
    metrics: Option<Arc<Metrics>>,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.changed() => return,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(peer = %incoming.remote_address(), "connection limit reached; refusing");
            incoming.refuse();
            continue;
        };
        let conn_ids = conn_ids.clone();
        let inbound = inbound.clone();
        let inbox = inbox.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let peer = incoming.remote_address();
            let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "handshake timed out");
                    return;
                }
            };
            if let Some(m) = &metrics {
                m.connection_opened();
            }
            serve_connection(conn_ids.next(), conn, inbound, inbox).await;
            if let Some(m) = &metrics {
                m.connection_closed();
            }
        });
    }
}

/// One connection: announce it, parse and forward until it ends, then report the end.
async fn serve_connection(
    id: ConnId,
    conn: Connection,
    inbound: mpsc::Sender<Inbound>,
    inbox: Arc<SharedInbox>,
) {
    tracing::debug!(conn = id.0, peer = %conn.remote_address(), "connected");
    let link = Arc::new(QuicLink::new(conn.clone()));
    if inbound
        .send(Inbound::Connect {
            conn: id,
            transport: TransportKind::Quic,
            link,
        })
        .await
        .is_err()
    {
        return;
    }
    let streams = tokio::spawn(quic::accept_streams(
        conn.clone(),
        FrameDecoder::for_client_channel,
        inbound.clone(),
        move |ev| match ev {
            StreamEvent::Frames { channel, frames } => Inbound::Frames {
                conn: id,
                channel,
                frames,
            },
            StreamEvent::Error(error) => Inbound::StreamError { conn: id, error },
        },
    ));
    let datagrams = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut quota = InboxQuota::default();
            while let Ok(data) = conn.read_datagram().await {
                // Unreliable by nature: when the core is behind, dropped rather than waited for.
                inbox.push(id, data, &mut quota);
            }
        })
    };
    let why = conn.closed().await;
    tracing::debug!(conn = id.0, reason = %why, "connection closed");
    streams.abort();
    datagrams.abort();
    let _ = inbound.send(Inbound::Disconnect { conn: id }).await;
}

/// The QUIC [`Link`]: per-channel writers, datagrams straight to quinn, flush-then-close.
struct QuicLink {
    conn: Connection,
    /// The I/O runtime the connection lives on: closes are finished there, not on the core's
    /// thread (whose runtime ends with the core, which would cut a close's flush short).
    io: tokio::runtime::Handle,
    writers: Arc<ChannelWriters>,
    closing: AtomicBool,
}

impl QuicLink {
    fn new(conn: Connection) -> QuicLink {
        QuicLink {
            writers: Arc::new(ChannelWriters::spawn(&conn)),
            conn,
            io: tokio::runtime::Handle::current(),
            closing: AtomicBool::new(false),
        }
    }
}

impl Link for QuicLink {
    fn transmit(&self, transmit: Transmit) {
        match transmit {
            Transmit::Frame { channel, frame, .. } => {
                if let Err(e) = self.writers.try_send(channel, &frame) {
                    if !self.closing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(peer = %self.conn.remote_address(), "{e}: closing the slow peer");
                        self.conn.close(
                            quinn::VarInt::from_u32(quic::CLOSE_CODE_OVERFLOW),
                            b"send queue full: reading too slowly",
                        );
                    }
                }
            }
            Transmit::Datagram { data, .. } => {
                if let Err(e) = self.conn.send_datagram(Bytes::from(data)) {
                    tracing::trace!(error = %e, "datagram not sent");
                }
            }
            Transmit::Close { reason, detail, .. } => {
                if self.closing.swap(true, Ordering::Relaxed) {
                    return;
                }
                let text = quic::close_text(reason, &detail);
                let writers = self.writers.clone();
                let conn = self.conn.clone();
                self.io.spawn(async move {
                    writers.finish().await;
                    conn.close(quic::close_code(reason), text.as_bytes());
                });
            }
        }
    }

    fn max_datagram_size(&self) -> Option<usize> {
        self.conn.max_datagram_size()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.conn.remote_address())
    }

    fn rtt(&self) -> Option<Duration> {
        Some(self.conn.rtt())
    }
}
