//! The relay's QUIC port: the accept loop (behind the connection limit), and for each
//! connection one task that only parses and forwards (frames to the [`Inbound`] queue,
//! datagrams to the [`SharedInbox`]), and the [`Link`] that carries the core's transmits out.
//!
//! Native clients and browsers share the port, told apart by ALPN: `neonet/1` is a native
//! connection; `h3` is a browser's WebTransport session (HTTP/3 `CONNECT` to
//! [`WEBTRANSPORT_PATH`]), whose streams and datagrams carry exactly what a native connection's
//! do. Both run through the same code, generic over [`PeerConn`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, Endpoint};
use tokio::sync::{mpsc, watch, Semaphore};

use neonet_proto::server::addr::{AddrVerdict, AddressGate};
use neonet_proto::server::{
    ConnId, DatagramInbox, InboxBatch, InboxQuota, Transmit, TransportKind,
};
use neonet_proto::transform::PathSignals;
use neonet_proto::wire::codec::FrameDecoder;
use neonet_proto::Time;

use super::{ConnIds, Inbound, Link, HANDSHAKE_TIMEOUT};
use crate::metrics::Metrics;
use crate::quic::{self, ChannelWriters, StreamEvent};
use crate::tls;

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

/// The path of the WebTransport endpoint (`https://HOST:PORT/neonet`).
pub const WEBTRANSPORT_PATH: &str = "/neonet";

/// How a connection ended, so that a bridge can tell the other side the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ended {
    /// The application close code, when one side closed it on purpose (either side: a local
    /// close is reported too); `None` when the transport gave up (a timeout, a reset).
    pub(crate) code: Option<u32>,
    /// The close reason text, or what went wrong.
    pub(crate) reason: String,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "closed with code {code}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// What the relay needs of a connection beyond its streams ([`quic::UniStreams`]): datagrams,
/// its end, its path figures. A native QUIC connection or a WebTransport session.
pub(crate) trait PeerConn: quic::UniStreams {
    /// The next datagram; `None` once the connection is gone.
    fn read_datagram(&self) -> impl std::future::Future<Output = Option<Bytes>> + Send;
    /// Sends a datagram (dropped if the path cannot take it now).
    fn send_datagram(&self, data: Bytes);
    /// The largest datagram the path carries now.
    fn max_datagram_size(&self) -> Option<usize>;
    /// Closes with an application code and reason text.
    fn close(&self, code: u32, text: &[u8]);
    /// Waits for the end and says why.
    fn closed(&self) -> impl std::future::Future<Output = Ended> + Send;
    /// The peer's address.
    fn remote_address(&self) -> SocketAddr;
    /// The smoothed round-trip time.
    fn rtt(&self) -> Duration;
    /// The QUIC path's RTT, congestion window and congestion events, for the transform budget.
    fn path_signals(&self) -> PathSignals;
}

impl PeerConn for Connection {
    async fn read_datagram(&self) -> Option<Bytes> {
        Connection::read_datagram(self).await.ok()
    }
    fn send_datagram(&self, data: Bytes) {
        if let Err(e) = Connection::send_datagram(self, data) {
            tracing::trace!(error = %e, "datagram not sent");
        }
    }
    fn max_datagram_size(&self) -> Option<usize> {
        Connection::max_datagram_size(self)
    }
    fn close(&self, code: u32, text: &[u8]) {
        Connection::close(self, quinn::VarInt::from_u32(code), text);
    }
    async fn closed(&self) -> Ended {
        match Connection::closed(self).await {
            quinn::ConnectionError::ApplicationClosed(c) => Ended {
                code: u32::try_from(c.error_code.into_inner()).ok(),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            quinn::ConnectionError::LocallyClosed => Ended {
                code: Some(quic::CLOSE_CODE_LOCAL),
                reason: "closed here".into(),
            },
            e => Ended {
                code: None,
                reason: e.to_string(),
            },
        }
    }
    fn remote_address(&self) -> SocketAddr {
        Connection::remote_address(self)
    }
    fn rtt(&self) -> Duration {
        Connection::rtt(self)
    }
    fn path_signals(&self) -> PathSignals {
        quic::path_signals(self)
    }
}

/// The accept loop's defences against handshake floods and greedy addresses (the limits in
/// [`crate::limits::LimitsSection`]): a QUIC Retry (address validation) for unvalidated
/// attempts once more than `handshakes_before_retry` handshakes are in progress, a cap on
/// handshakes in progress, and the per-address [`AddressGate`] (connections held, attempts
/// per second). A handshake holds no connection slot: one of `connections_max` is taken only
/// once it completes, so half-open handshakes cannot lock joiners out.
pub(super) struct Defences {
    gate: Mutex<AddressGate>,
    /// Handshakes in progress.
    handshaking: AtomicUsize,
    retry_above: usize,
    handshakes_max: usize,
    /// The gate's clock zero.
    start: Instant,
}

impl Defences {
    pub(super) fn new(limits: &crate::limits::LimitsSection, start: Instant) -> Arc<Defences> {
        Arc::new(Defences {
            gate: Mutex::new(AddressGate::new(limits.addr())),
            handshaking: AtomicUsize::new(0),
            retry_above: limits.handshakes_before_retry,
            handshakes_max: limits.handshakes_max,
            start,
        })
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, AddressGate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Screens one attempt: `Some` admits it (holding its address's slot and a handshake
    /// count until dropped), `None` means it was retried, refused or dropped here.
    fn screen(self: &Arc<Self>, incoming: quinn::Incoming) -> Option<(quinn::Incoming, Admitted)> {
        match self.screen_attempt(
            incoming.remote_address(),
            incoming.remote_address_validated(),
            incoming.may_retry(),
        ) {
            Screened::Retry => {
                let _ = incoming.retry();
                None
            }
            Screened::Ignore => {
                incoming.ignore();
                None
            }
            Screened::Refuse => {
                incoming.refuse();
                None
            }
            Screened::Admit(admitted) => Some((incoming, admitted)),
        }
    }

    /// The verdict on one attempt from `peer` (whether its address is validated, whether a
    /// Retry may be sent), whatever drives the endpoint: quinn's accept loop here, the
    /// single-loop driver ([`super::quic_loop`]) over quinn-proto.
    pub(super) fn screen_attempt(
        self: &Arc<Self>,
        peer: SocketAddr,
        validated: bool,
        may_retry: bool,
    ) -> Screened {
        let busy = self.handshaking.load(Ordering::Relaxed);
        if busy >= self.retry_above && !validated && may_retry {
            tracing::debug!(%peer, busy, "handshakes piling up: address validation (Retry)");
            return Screened::Retry;
        }
        if busy >= self.handshakes_max {
            tracing::debug!(%peer, busy, "too many handshakes in progress: attempt dropped");
            return Screened::Ignore;
        }
        let now = Time(self.start.elapsed().as_micros() as u64);
        match self.gate().attempt(peer.ip(), now) {
            AddrVerdict::Admit => {}
            verdict => {
                tracing::info!(%peer, ?verdict, "per-address limit: refusing");
                return Screened::Refuse;
            }
        }
        self.handshaking.fetch_add(1, Ordering::Relaxed);
        Screened::Admit(Admitted {
            defences: self.clone(),
            addr: peer.ip(),
            handshaking: true,
        })
    }
}

/// What [`Defences::screen_attempt`] decided.
pub(super) enum Screened {
    /// Answer with a QUIC Retry (address validation).
    Retry,
    /// Drop the attempt without an answer.
    Ignore,
    /// Refuse it (a connection refused error).
    Refuse,
    /// Go on with the handshake.
    Admit(Admitted),
}

/// An admitted attempt: holds its address's slot (and, until [`Admitted::handshake_done`], a
/// handshake count) until dropped.
pub(super) struct Admitted {
    defences: Arc<Defences>,
    addr: std::net::IpAddr,
    handshaking: bool,
}

impl Admitted {
    pub(super) fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.defences.handshaking.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.handshake_done();
        self.defences.gate().release(self.addr);
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn accept_loop(
    endpoint: Endpoint,
    permits: Arc<Semaphore>,
    defences: Arc<Defences>,
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
        if permits.available_permits() == 0 {
            tracing::warn!(peer = %incoming.remote_address(), "connection limit reached; refusing");
            incoming.refuse();
            continue;
        }
        let Some((incoming, mut admitted)) = defences.screen(incoming) else {
            continue;
        };
        let permits = permits.clone();
        let conn_ids = conn_ids.clone();
        let inbound = inbound.clone();
        let inbox = inbox.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let conn = accept_handshake(incoming).await;
            admitted.handshake_done();
            let Some(conn) = conn else {
                return;
            };
            // The connection slot is taken only now: a half-open handshake holds none.
            let Ok(_permit) = permits.try_acquire_owned() else {
                tracing::warn!(peer = %conn.remote_address(), "connection limit reached; closing");
                conn.close(
                    quic::close_code(neonet_proto::wire::msg::CloseReason::PlayerLimit),
                    b"server full: connection limit reached",
                );
                return;
            };
            let _admitted = admitted;
            if let Some(m) = &metrics {
                m.connection_opened();
            }
            if is_webtransport(&conn) {
                if let Some(session) = webtransport_session(conn).await {
                    serve(
                        conn_ids.next(),
                        session,
                        TransportKind::WebTransport,
                        inbound,
                        inbox,
                    )
                    .await;
                }
            } else {
                serve(conn_ids.next(), conn, TransportKind::Quic, inbound, inbox).await;
            }
            if let Some(m) = &metrics {
                m.connection_closed();
            }
        });
    }
}

/// Completes a QUIC handshake within [`HANDSHAKE_TIMEOUT`]; `None` (logged) if it fails or
/// takes too long.
pub(crate) async fn accept_handshake(incoming: quinn::Incoming) -> Option<Connection> {
    let peer = incoming.remote_address();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(%peer, "handshake timed out");
            None
        }
    }
}

/// Whether the connection negotiated HTTP/3 (a browser's WebTransport).
pub(crate) fn is_webtransport(conn: &Connection) -> bool {
    conn.handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol)
        .is_some_and(|p| p == tls::WEBTRANSPORT_ALPN)
}

/// Completes the HTTP/3 handshake and the WebTransport `CONNECT` to [`WEBTRANSPORT_PATH`]
/// (anything else is answered 404), within [`HANDSHAKE_TIMEOUT`].
pub(crate) async fn webtransport_session(conn: Connection) -> Option<web_transport_quinn::Session> {
    let peer = conn.remote_address();
    let request = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        web_transport_quinn::Request::accept(conn),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "WebTransport handshake failed");
            return None;
        }
        Err(_) => {
            tracing::info!(%peer, "WebTransport handshake timed out");
            return None;
        }
    };
    if request.url.path() != WEBTRANSPORT_PATH {
        tracing::info!(%peer, url = %request.url, "WebTransport session for another path: 404");
        let _ = request
            .reject(web_transport_quinn::http::StatusCode::NOT_FOUND)
            .await;
        return None;
    }
    match request.ok().await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::info!(%peer, error = %e, "WebTransport session not established");
            None
        }
    }
}

/// One connection: announce it, parse and forward until it ends, then report the end.
async fn serve<C: PeerConn>(
    id: ConnId,
    conn: C,
    transport: TransportKind,
    inbound: mpsc::Sender<Inbound>,
    inbox: Arc<SharedInbox>,
) {
    tracing::debug!(conn = id.0, peer = %conn.remote_address(), ?transport, "connected");
    let link = Arc::new(StreamLink::new(conn.clone()));
    if inbound
        .send(Inbound::Connect {
            conn: id,
            transport,
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
            while let Some(data) = conn.read_datagram().await {
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

/// The [`Link`] of a stream connection (QUIC or WebTransport): per-channel writers, datagrams
/// straight to the connection, flush-then-close.
struct StreamLink<C: PeerConn> {
    conn: C,
    /// The I/O runtime the connection lives on: closes are finished there, not on the core's
    /// thread (whose runtime ends with the core, which would cut a close's flush short).
    io: tokio::runtime::Handle,
    writers: Arc<ChannelWriters>,
    closing: AtomicBool,
}

impl<C: PeerConn> StreamLink<C> {
    fn new(conn: C) -> StreamLink<C> {
        StreamLink {
            writers: Arc::new(ChannelWriters::spawn(&conn)),
            conn,
            io: tokio::runtime::Handle::current(),
            closing: AtomicBool::new(false),
        }
    }
}

impl<C: PeerConn> Link for StreamLink<C> {
    fn transmit(&self, transmit: Transmit) {
        match transmit {
            Transmit::Frame { channel, frame, .. } => {
                if let Err(e) = self.writers.try_send(channel, &frame) {
                    if !self.closing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(peer = %self.conn.remote_address(), "{e}: closing the slow peer");
                        self.conn.close(
                            quic::CLOSE_CODE_OVERFLOW,
                            b"send queue full: reading too slowly",
                        );
                    }
                }
            }
            Transmit::Datagram { data, .. } => self.conn.send_datagram(Bytes::from(data)),
            Transmit::Close { reason, detail, .. } => {
                if self.closing.swap(true, Ordering::Relaxed) {
                    return;
                }
                let text = quic::close_text(reason, &detail);
                let writers = self.writers.clone();
                let conn = self.conn.clone();
                self.io.spawn(async move {
                    writers.finish().await;
                    conn.close(
                        quic::close_code(reason).into_inner() as u32,
                        text.as_bytes(),
                    );
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

    fn path_signals(&self) -> Option<PathSignals> {
        Some(self.conn.path_signals())
    }

    fn queued_bytes(&self) -> Option<usize> {
        Some(self.writers.queued_bytes())
    }
}
