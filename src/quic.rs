//! The QUIC transport (quinn over real UDP), shared by the relay and the client.
//!
//! ## Stream mapping
//! Each side opens one unidirectional stream per [`Channel`] the first time it has something to
//! send on it. The stream's first byte is the channel id ([`Channel`] as `u8`); then come
//! length-prefixed frames ([`neonet_proto::wire::codec`]). Order holds within a channel, never across
//! channels. A second stream for a channel already seen, an unknown channel id, an oversize
//! frame, or a stream that ends or is reset inside a frame is a stream error: the relay reports
//! it to the core (`handle_stream_error`), which closes that connection with a reason.
//! Send priorities put Control above Chat above Events above World, so a big blueprint or
//! snapshot never holds up chat.
//!
//! Unreliable messages travel as QUIC datagrams, sized by the connection's current
//! `max_datagram_size()`.
//!
//! ## Closing
//! A close flushes first: every stream is finished and, for at most [`CLOSE_FLUSH_TIMEOUT`], the
//! peer's acknowledgement of all stream data is awaited; then the connection is closed with the
//! application error code [`close_code`] of the [`CloseReason`] and the reason as text, so a peer
//! learns why even if it never read the `Close` message.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, EndpointConfig, TransportConfig, VarInt};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use neonet_proto::wire::codec::{DecodeError, FrameDecoder};
use neonet_proto::wire::msg::{Channel, CloseReason};

use crate::tls::{ServerIdentity, TlsError, Trust};

/// Default QUIC idle timeout, ms: a connection silent this long is gone. Clients ping every
/// second and QUIC keep-alives run every [`KEEP_ALIVE_INTERVAL`], so only a dead peer or path
/// reaches it. Here rather than in the relay's configuration because the client uses it too.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// QUIC keep-alive interval: well under any NAT's UDP mapping timeout (≥ 30 s is common) and the
/// idle timeout, so a quiet but live connection is never dropped.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Requested `SO_RCVBUF`/`SO_SNDBUF`, bytes. The default overflowed from 500 clients up on this
/// kind of machine (numbers.md); 8 MiB holds ≈ 7,000 full-size packets. The kernel may grant
/// less (`net.core.rmem_max`); the relay logs what it got.
pub const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// Requested socket buffers of a client, bytes: one connection, but a snapshot arrives as a
/// burst of packets.
pub const CLIENT_SOCKET_BUFFER_BYTES: usize = 2 * 1024 * 1024;
/// Datagrams buffered for the application per connection, bytes (quinn drops the oldest beyond).
pub const DATAGRAM_RECEIVE_BUFFER_BYTES: usize = 1024 * 1024;
/// Datagrams queued for sending per connection, bytes (quinn drops the oldest beyond).
pub const DATAGRAM_SEND_BUFFER_BYTES: usize = 1024 * 1024;
/// Largest chunk read from a stream at once, bytes: bounds a decoder's buffer to the frame limit
/// plus this.
pub const STREAM_READ_CHUNK_BYTES: usize = 64 * 1024;
/// Longest wait for the peer to acknowledge stream data before closing the connection.
pub const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// Unidirectional streams a peer may have open at once: one per channel.
pub const UNI_STREAMS_MAX: u32 = Channel::ALL.len() as u32;
/// Longest close reason text sent, bytes (it must fit in one packet with room to spare).
pub const CLOSE_TEXT_BYTES_MAX: usize = 512;
/// Application close code when the local side gave up on a peer that reads too slowly.
pub const CLOSE_CODE_OVERFLOW: u32 = 0x100;
/// Application close code of a client that closes without a protocol reason (dropped).
pub const CLOSE_CODE_LOCAL: u32 = 0;

/// The application error code a connection is closed with for `reason` (1 + its index).
pub fn close_code(reason: CloseReason) -> VarInt {
    let i = CLOSE_REASONS.iter().position(|r| *r == reason).unwrap_or(0);
    VarInt::from_u32(1 + i as u32)
}

/// The [`CloseReason`] of an application error code, if it is one of [`close_code`]'s.
pub fn close_reason_of(code: u64) -> Option<CloseReason> {
    let i = usize::try_from(code.checked_sub(1)?).ok()?;
    CLOSE_REASONS.get(i).copied()
}

/// Close codes, in order: code = 1 + index. Append only.
const CLOSE_REASONS: [CloseReason; 10] = [
    CloseReason::PlayerLimit,
    CloseReason::DuplicateUser,
    CloseReason::Moderation,
    CloseReason::ProtocolViolation,
    CloseReason::VersionMismatch,
    CloseReason::AuthFailed,
    CloseReason::ServerShutdown,
    CloseReason::Timeout,
    CloseReason::ClientLeft,
    CloseReason::Flooding,
];

/// The close text for `reason` and `detail`, cut to [`CLOSE_TEXT_BYTES_MAX`].
pub fn close_text(reason: CloseReason, detail: &str) -> String {
    let mut s = if detail.is_empty() {
        reason.to_string()
    } else {
        format!("{reason}: {detail}")
    };
    if s.len() > CLOSE_TEXT_BYTES_MAX {
        let mut end = CLOSE_TEXT_BYTES_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Why the transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Binding or configuring the UDP socket failed.
    #[error("UDP socket on {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Certificates or TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Socket buffer sizes the kernel granted, bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketBuffers {
    /// `SO_RCVBUF`.
    pub recv_bytes: usize,
    /// `SO_SNDBUF`.
    pub send_bytes: usize,
}

/// Binds a non-blocking UDP socket with raised buffers (best effort: the kernel may cap them).
pub fn bind_udp(
    addr: SocketAddr,
    buffer_bytes: usize,
) -> Result<(std::net::UdpSocket, SocketBuffers), TransportError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| TransportError::Socket { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if addr.is_ipv6() {
        // Dual stack on `[::]`, so one relay serves IPv4 and IPv6.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: unprivileged processes are capped by net.core.{r,w}mem_max. Zero keeps the
    // system default (asking for 0 would get the kernel's minimum).
    if buffer_bytes > 0 {
        let _ = socket.set_recv_buffer_size(buffer_bytes);
        let _ = socket.set_send_buffer_size(buffer_bytes);
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    let buffers = SocketBuffers {
        recv_bytes: socket.recv_buffer_size().unwrap_or(0),
        send_bytes: socket.send_buffer_size().unwrap_or(0),
    };
    Ok((socket.into(), buffers))
}

/// The transport parameters both sides use: keep-alive, idle timeout, one uni stream per
/// channel, no bidirectional streams, datagram buffers.
pub fn transport_config(idle_timeout: Duration) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    t.max_concurrent_uni_streams(VarInt::from_u32(UNI_STREAMS_MAX));
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    t.datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER_BYTES));
    t.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER_BYTES);
    t
}

/// Unidirectional streams a browser's WebTransport session may have open at once: neonet's
/// channels plus HTTP/3's own (its control stream and the two QPACK streams).
pub const WEBTRANSPORT_UNI_STREAMS_MAX: u32 = UNI_STREAMS_MAX + 3;

/// Bidirectional streams a peer may open on the relay's port: one, the WebTransport `CONNECT`
/// request. Native connections never use one (nothing reads it; flow control bounds it).
pub const WEBTRANSPORT_BIDI_STREAMS_MAX: u32 = 1;

/// A server endpoint on `addr` presenting `identity`, native clients only. Must be called
/// inside a tokio runtime.
pub fn server_endpoint(
    addr: SocketAddr,
    identity: &ServerIdentity,
    idle_timeout: Duration,
) -> Result<(Endpoint, SocketBuffers), TransportError> {
    let crypto = crate::tls::server_crypto(identity)?;
    endpoint_with(addr, crypto, transport_config(idle_timeout))
}

/// The relay's endpoint on `addr`: native clients and browsers' WebTransport sessions on one
/// UDP port, told apart by ALPN, with certificates picked by `resolver`
/// ([`crate::tls::AlpnCertResolver`]). Must be called inside a tokio runtime.
pub fn relay_endpoint(
    addr: SocketAddr,
    resolver: Arc<crate::tls::AlpnCertResolver>,
    idle_timeout: Duration,
) -> Result<(Endpoint, SocketBuffers), TransportError> {
    let crypto = crate::tls::relay_server_crypto(resolver)?;
    let mut transport = transport_config(idle_timeout);
    transport.max_concurrent_uni_streams(VarInt::from_u32(WEBTRANSPORT_UNI_STREAMS_MAX));
    transport.max_concurrent_bidi_streams(VarInt::from_u32(WEBTRANSPORT_BIDI_STREAMS_MAX));
    endpoint_with(addr, crypto, transport)
}

fn endpoint_with(
    addr: SocketAddr,
    crypto: rustls::ServerConfig,
    transport: TransportConfig,
) -> Result<(Endpoint, SocketBuffers), TransportError> {
    let crypto = QuicServerConfig::try_from(crypto)
        .map_err(|e| TransportError::Tls(TlsError::Quic(e.to_string())))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    let (socket, buffers) = bind_udp(addr, SOCKET_BUFFER_BYTES)?;
    let endpoint = Endpoint::new(
        EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Socket { addr, source })?;
    Ok((endpoint, buffers))
}

/// A quinn client configuration trusting the server as `trust` says.
pub fn client_config(
    trust: &Trust,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, TransportError> {
    let crypto = crate::tls::client_crypto(trust)?;
    let crypto = QuicClientConfig::try_from(crypto)
        .map_err(|e| TransportError::Tls(TlsError::Quic(e.to_string())))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport_config(idle_timeout)));
    Ok(cfg)
}

/// A client endpoint on an ephemeral port of the right address family for `server`. Must be
/// called inside a tokio runtime.
pub fn client_endpoint(server: SocketAddr) -> Result<Endpoint, TransportError> {
    let bind: SocketAddr = if server.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let (socket, _) = bind_udp(bind, CLIENT_SOCKET_BUFFER_BYTES)?;
    Endpoint::new(
        EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Socket { addr: bind, source })
}

// ---------------------------------------------------------------------------------------------
// Reading

/// What a stream reader produced.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// Every complete frame of one read, in order: consecutive frames, each with its 4-byte
    /// length prefix, each within the channel's limit. Iterate the bodies with
    /// [`neonet_proto::wire::codec::frames`]. Never empty.
    Frames {
        /// The stream's channel.
        channel: Channel,
        /// The frames.
        frames: Vec<u8>,
    },
    /// The stream broke the framing rules; it is no longer read.
    Error(DecodeError),
}

// ---------------------------------------------------------------------------------------------
// Stream connections: native QUIC and WebTransport carry channels the same way

/// A connection that carries neonet's channels on unidirectional streams: a native QUIC
/// connection, or a WebTransport session (whose streams are QUIC streams under an HTTP/3
/// session). The stream readers and [`ChannelWriters`] work over either.
pub trait UniStreams: Clone + Send + Sync + 'static {
    /// Its sending stream.
    type Send: UniSend;
    /// Its receiving stream.
    type Recv: UniRecv;
    /// Opens a stream; `None` once the connection is gone.
    fn open_uni(&self) -> impl std::future::Future<Output = Option<Self::Send>> + Send;
    /// The peer's next stream; `None` once the connection is gone.
    fn accept_uni(&self) -> impl std::future::Future<Output = Option<Self::Recv>> + Send;
}

/// The sending half of a unidirectional stream.
pub trait UniSend: Send + 'static {
    /// Sets the stream's priority (higher first).
    fn set_priority(&self, priority: i32);
    /// Writes all of `bytes`; `false` if the stream or connection failed.
    fn write_all(&mut self, bytes: &[u8]) -> impl std::future::Future<Output = bool> + Send;
    /// Writes one chunk without a copy; `false` if the stream or connection failed.
    fn write_chunk(&mut self, bytes: Bytes) -> impl std::future::Future<Output = bool> + Send;
    /// Finishes the stream; `false` if it was already closed.
    fn finish(&mut self) -> bool;
    /// Abandons the stream: the peer sees it reset (what was unsent is dropped).
    fn reset(&mut self);
    /// Waits until the peer has everything (or stopped the stream, or the connection ended).
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// How reading a stream went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFailure {
    /// The peer reset the stream.
    Reset,
    /// The connection is gone (its end is reported elsewhere).
    Gone,
}

/// The receiving half of a unidirectional stream.
pub trait UniRecv: Send + 'static {
    /// The next chunk of at most `max` bytes, in order; `None` at the end of the stream.
    fn read_chunk(
        &mut self,
        max: usize,
    ) -> impl std::future::Future<Output = Result<Option<Bytes>, ReadFailure>> + Send;
    /// Tells the peer to stop sending.
    fn stop(&mut self);
}

impl UniStreams for Connection {
    type Send = quinn::SendStream;
    type Recv = quinn::RecvStream;
    async fn open_uni(&self) -> Option<quinn::SendStream> {
        Connection::open_uni(self).await.ok()
    }
    async fn accept_uni(&self) -> Option<quinn::RecvStream> {
        Connection::accept_uni(self).await.ok()
    }
}

impl UniSend for quinn::SendStream {
    fn set_priority(&self, priority: i32) {
        let _ = quinn::SendStream::set_priority(self, priority);
    }
    async fn write_all(&mut self, bytes: &[u8]) -> bool {
        quinn::SendStream::write_all(self, bytes).await.is_ok()
    }
    async fn write_chunk(&mut self, bytes: Bytes) -> bool {
        quinn::SendStream::write_chunk(self, bytes).await.is_ok()
    }
    fn finish(&mut self) -> bool {
        quinn::SendStream::finish(self).is_ok()
    }
    fn reset(&mut self) {
        let _ = quinn::SendStream::reset(self, VarInt::from_u32(0));
    }
    async fn stopped(&self) {
        let _ = quinn::SendStream::stopped(self).await;
    }
}

impl UniRecv for quinn::RecvStream {
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadFailure> {
        match quinn::RecvStream::read_chunk(self, max, true).await {
            Ok(c) => Ok(c.map(|c| c.bytes)),
            Err(quinn::ReadError::Reset(_)) => Err(ReadFailure::Reset),
            Err(_) => Err(ReadFailure::Gone),
        }
    }
    fn stop(&mut self) {
        let _ = quinn::RecvStream::stop(self, VarInt::from_u32(0));
    }
}

/// Accepts the peer's unidirectional streams until the connection ends, reading each in its own
/// task: first byte the channel, then frames within the limit of the decoder `decoder_for(channel)`
/// gives (the protocol crate's per-channel decoders: `FrameDecoder::for_client_channel` on a
/// server, `FrameDecoder::for_server_channel` on a client). The complete
/// frames of each read go to `tx` together as one `map(StreamEvent::Frames)` (one message per
/// read, not per frame), errors as `map(StreamEvent::Error)`; a full `tx` holds the reader
/// back (and QUIC flow control holds the peer back).
pub async fn accept_streams<C, T, F>(
    conn: C,
    decoder_for: fn(Channel) -> FrameDecoder,
    tx: mpsc::Sender<T>,
    map: F,
) where
    C: UniStreams,
    T: Send + 'static,
    F: Fn(StreamEvent) -> T + Clone + Send + Sync + 'static,
{
    let seen = Arc::new(AtomicU8::new(0));
    while let Some(recv) = conn.accept_uni().await {
        tokio::spawn(read_stream(
            recv,
            seen.clone(),
            decoder_for,
            tx.clone(),
            map.clone(),
        ));
    }
}

async fn read_stream<R: UniRecv, T, F>(
    mut recv: R,
    seen: Arc<AtomicU8>,
    decoder_for: fn(Channel) -> FrameDecoder,
    tx: mpsc::Sender<T>,
    map: F,
) where
    F: Fn(StreamEvent) -> T,
{
    let mut channel: Option<Channel> = None;
    let mut decoder: Option<FrameDecoder> = None;
    let error = loop {
        let chunk = match recv.read_chunk(STREAM_READ_CHUNK_BYTES).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => {
                match &decoder {
                    Some(d) => match d.finish() {
                        Ok(()) => return,
                        Err(e) => break e,
                    },
                    None => return,
                };
            }
            Err(ReadFailure::Reset) => break DecodeError::Truncated,
            Err(ReadFailure::Gone) => return, // its end is reported elsewhere
        };
        let mut bytes = &chunk[..];
        let ch = match channel {
            Some(ch) => ch,
            None => {
                let Some((&first, rest)) = bytes.split_first() else {
                    continue;
                };
                bytes = rest;
                let Some(ch) = Channel::from_u8(first) else {
                    break DecodeError::Malformed(format!("unknown channel id {first}"));
                };
                let bit = 1u8 << (ch as u8);
                if seen.fetch_or(bit, Ordering::Relaxed) & bit != 0 {
                    break DecodeError::Malformed(format!(
                        "a second stream for the {ch:?} channel"
                    ));
                }
                channel = Some(ch);
                decoder = Some(decoder_for(ch));
                ch
            }
        };
        let Some(d) = decoder.as_mut() else { return };
        let mut frames = Vec::new();
        let taken = d.push_and_take(bytes, &mut frames);
        if !frames.is_empty()
            && tx
                .send(map(StreamEvent::Frames {
                    channel: ch,
                    frames,
                }))
                .await
                .is_err()
        {
            return;
        }
        if let Err(e) = taken {
            break e;
        }
    };
    recv.stop();
    let _ = tx.send(map(StreamEvent::Error(error))).await;
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Bytes one channel of one connection may have queued for its writer (frames not yet handed
/// to quinn), 4 MiB. The relay broadcasts every change to every client: at 20,000 changes/s of
/// ≈ 29-byte frames a client's World channel takes ≈ 0.6 MB/s, so this absorbs several seconds
/// of a stalled reader (and a scheduling hiccup of a few hundred ms many times over) before
/// the peer counts as too slow and is closed ([`CLOSE_CODE_OVERFLOW`]); it still bounds memory
/// per connection. Bytes already handed to quinn are not counted (quinn holds at most the
/// peer's stream flow-control window of them). A frame larger than this (a snapshot) is
/// accepted when the queue is empty.
pub const CHANNEL_QUEUE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most capacity a channel's queue starts with after the writer took its bytes, bytes: it
/// starts with what the last take held, so a steady stream rarely reallocates, but a burst's
/// size is not kept reserved for the connection's lifetime.
const QUEUE_CAPACITY_HINT_MAX: usize = 64 * 1024;

/// A channel's queue is full: the peer reads too slowly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {0:?} channel's send queue is full")]
pub struct QueueFull(pub Channel);

/// What a channel's producers and its writer task share.
#[derive(Debug, Default)]
struct QueueState {
    /// Frames queued and not yet taken by the writer, in order.
    buf: Vec<u8>,
    /// Finish the stream after `buf`; nothing queued later is sent.
    finish: bool,
    /// The writer has stopped (the connection is gone or the stream finished).
    stopped: bool,
}

/// One channel's outgoing byte queue, bounded in bytes. Producers append whole frames under a
/// short lock; the writer swaps the whole buffer out and writes it in one call.
#[derive(Debug)]
struct ByteQueue {
    state: Mutex<QueueState>,
    /// Wakes the writer: the buffer went from empty to non-empty, or a finish was asked for.
    /// `notify_one` stores a permit when the writer is busy, so no wake-up is lost.
    wake: Notify,
    max_bytes: usize,
}

impl ByteQueue {
    fn new(max_bytes: usize) -> ByteQueue {
        ByteQueue {
            state: Mutex::new(QueueState::default()),
            wake: Notify::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // Every update is a single append or swap: a panic cannot leave it half done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `frame`; `false` if that would pass the byte bound (the frame is not queued).
    /// A frame queued after a finish, or once the writer stopped, is dropped silently: the
    /// stream is ending or the connection is gone, which is reported elsewhere.
    fn push(&self, frame: &[u8]) -> bool {
        let mut s = self.lock();
        if s.finish || s.stopped {
            return true;
        }
        let was_empty = s.buf.is_empty();
        if !was_empty && s.buf.len() + frame.len() > self.max_bytes {
            return false;
        }
        s.buf.extend_from_slice(frame);
        drop(s);
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// Asks the writer to finish the stream after what is queued.
    fn finish(&self) {
        self.lock().finish = true;
        self.wake.notify_one();
    }

    /// Waits until there are bytes or a finish; returns the queued bytes and whether to finish
    /// after them. The queue starts afresh with room for `next_capacity` bytes.
    async fn take(&self, next_capacity: usize) -> (Vec<u8>, bool) {
        loop {
            {
                let mut s = self.lock();
                if !s.buf.is_empty() || s.finish {
                    let out = std::mem::replace(&mut s.buf, Vec::with_capacity(next_capacity));
                    return (out, s.finish);
                }
            }
            self.wake.notified().await;
        }
    }

    /// Marks the writer stopped and frees what is queued.
    fn stop(&self) {
        let mut s = self.lock();
        s.stopped = true;
        s.buf = Vec::new();
    }
}

/// The outbound side of one connection: per channel, one byte queue bounded by
/// [`CHANNEL_QUEUE_BYTES_MAX`] and one writer task that writes everything queued in one call,
/// so a stalled channel (a big snapshot under flow control) never blocks another and a burst of
/// small frames costs one stream write, not one per frame. Dropping it finishes the streams
/// after what is queued, like [`ChannelWriters::finish`] without the wait.
#[derive(Debug)]
pub struct ChannelWriters {
    queues: Vec<Arc<ByteQueue>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A channel's send priority: Control above Chat above Events above World.
pub(crate) fn priority(channel: Channel) -> i32 {
    match channel {
        Channel::Control => 3,
        Channel::Chat => 2,
        Channel::Events => 1,
        Channel::World => 0,
    }
}

impl ChannelWriters {
    /// Spawns one writer per channel on `conn`. Streams open lazily, on the first frame.
    pub fn spawn<C: UniStreams>(conn: &C) -> ChannelWriters {
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        for ch in Channel::ALL {
            let q = Arc::new(ByteQueue::new(CHANNEL_QUEUE_BYTES_MAX));
            queues.push(q.clone());
            tasks.push(tokio::spawn(write_channel(conn.clone(), ch, q)));
        }
        ChannelWriters {
            queues,
            tasks: Mutex::new(tasks),
        }
    }

    /// Queues a frame (length prefix included) without waiting; [`QueueFull`] if the channel
    /// already holds so many bytes that this frame would pass [`CHANNEL_QUEUE_BYTES_MAX`].
    pub fn try_send(&self, channel: Channel, frame: &[u8]) -> Result<(), QueueFull> {
        if self.queues[channel as usize].push(frame) {
            Ok(())
        } else {
            Err(QueueFull(channel))
        }
    }

    /// Finishes every stream after what is queued, and waits (at most [`CLOSE_FLUSH_TIMEOUT`]
    /// plus a little) for the peer to acknowledge it all.
    pub async fn finish(&self) {
        for q in &self.queues {
            q.finish();
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT + Duration::from_millis(200), all).await;
    }
}

impl Drop for ChannelWriters {
    fn drop(&mut self) {
        // The writers flush, finish and exit rather than wait for frames for ever.
        for q in &self.queues {
            q.finish();
        }
    }
}

async fn write_channel<C: UniStreams>(conn: C, channel: Channel, queue: Arc<ByteQueue>) {
    let stream = write_queued(&conn, channel, &queue).await;
    queue.stop();
    if let Some(mut s) = stream {
        if s.finish() {
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, s.stopped()).await;
        }
    }
}

/// Writes what `queue` gets until it asks for a finish; the stream, if one was opened and
/// still works, to be finished. Each take is handed to quinn as one chunk, without a copy.
async fn write_queued<C: UniStreams>(
    conn: &C,
    channel: Channel,
    queue: &ByteQueue,
) -> Option<C::Send> {
    let mut stream: Option<C::Send> = None;
    let mut capacity = 0;
    loop {
        let (bytes, finishing) = queue.take(capacity).await;
        capacity = bytes.len().min(QUEUE_CAPACITY_HINT_MAX);
        if !bytes.is_empty() {
            let s = match stream.as_mut() {
                Some(s) => s,
                None => {
                    let s = conn.open_uni().await?;
                    s.set_priority(priority(channel));
                    let s = stream.insert(s);
                    if !s.write_all(&[channel as u8]).await {
                        return None;
                    }
                    s
                }
            };
            if !s.write_chunk(Bytes::from(bytes)).await {
                return None;
            }
        }
        if finishing {
            return stream;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_round_trip() {
        for r in CLOSE_REASONS {
            assert_eq!(close_reason_of(close_code(r).into_inner()), Some(r));
        }
        assert_eq!(close_reason_of(0), None);
        assert_eq!(close_reason_of(CLOSE_CODE_OVERFLOW as u64), None);
        let long = "é".repeat(1000);
        assert!(close_text(CloseReason::Moderation, &long).len() <= CLOSE_TEXT_BYTES_MAX);
    }

    /// Whether the queue's wake-up is pending (a permit stored), consuming it.
    async fn woken(q: &ByteQueue) -> bool {
        tokio::time::timeout(Duration::from_millis(20), q.wake.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn the_byte_queue_is_bounded_in_bytes_and_keeps_order() {
        let q = ByteQueue::new(10);
        assert!(q.push(&[1, 2, 3, 4, 5, 6]));
        assert!(!q.push(&[7, 8, 9, 10, 11]), "6 + 5 bytes is over 10");
        assert!(q.push(&[7, 8, 9, 10]), "exactly at the bound");
        assert!(!q.push(&[11]));
        let (bytes, finish) = q.take(0).await;
        assert_eq!(bytes, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert!(!finish);
        // Taking empties the queue: the bound applies afresh.
        assert!(q.push(&[11]));
        assert_eq!(q.take(4).await.0, [11]);
        // A frame over the bound still goes through an empty queue (a snapshot), alone.
        assert!(q.push(&[0; 32]));
        assert!(!q.push(&[1]));
        assert_eq!(q.take(0).await.0.len(), 32);
    }

    #[tokio::test]
    async fn the_byte_queue_wakes_its_writer_on_the_first_byte_only() {
        let q = ByteQueue::new(1024);
        assert!(!woken(&q).await);
        assert!(q.push(&[1]));
        assert!(woken(&q).await, "empty to non-empty wakes the writer");
        assert!(q.push(&[2]));
        assert!(!woken(&q).await, "already non-empty: no second wake-up");
        assert_eq!(q.take(0).await.0, [1, 2]);
        // A waiting writer is woken by the next push.
        let q = Arc::new(q);
        let writer = tokio::spawn({
            let q = q.clone();
            async move { q.take(0).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished());
        assert!(q.push(&[3, 4]));
        let (bytes, finish) = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer woke")
            .expect("no panic");
        assert_eq!((bytes, finish), (vec![3, 4], false));
    }

    #[tokio::test]
    async fn a_finish_flushes_first_and_later_frames_are_dropped() {
        let q = ByteQueue::new(1024);
        assert!(q.push(&[1, 2]));
        q.finish();
        assert!(
            q.push(&[3]),
            "accepted but dropped: the stream is finishing"
        );
        assert_eq!(q.take(0).await, (vec![1, 2], true));
        let q = ByteQueue::new(4);
        q.stop();
        assert!(
            q.push(&[0; 8]),
            "a stopped writer's queue drops frames, never fills"
        );
        assert!(q.push(&[0; 8]));
    }
}
