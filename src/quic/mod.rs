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
//! ## Acknowledgements ride on the datagrams
//! A player moving at 30 Hz sends a datagram every tick and receives one every tick. Each side
//! asks the other, with QUIC's ACK-frequency extension (draft-ietf-quic-ack-frequency, which
//! quinn implements and every quinn peer supports: it always offers `min_ack_delay`), to delay
//! its acknowledgements up to [`ACK_DELAY_MAX_REQUESTED`] and to acknowledge at once only after
//! more than [`ACK_ELICITING_THRESHOLD`] unacknowledged packets, so an acknowledgement waits for
//! the next datagram to ride on instead of taking a packet of its own. quinn caps the delay it
//! requests at the larger of the path's RTT and 25 ms, so on short paths it is the client's
//! clock sync that makes this work: it places the client's sends so that each side's next
//! datagram comes well within 25 ms (`ClockSync::lead_ticks` in `neonet_proto::predict`). A peer that does not support the extension (a
//! browser's WebTransport) acknowledges as QUIC does by default.
//!
//! ## Closing
//! A close flushes first: every stream is finished and, for at most [`CLOSE_FLUSH_TIMEOUT`], the
//! peer's acknowledgement of all stream data is awaited; then the connection is closed with the
//! application error code [`close_code`] of the [`CloseReason`] and the reason as text, so a peer
//! learns why even if it never read the `Close` message.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{AckFrequencyConfig, Endpoint, EndpointConfig, TransportConfig, VarInt};

use neonet_proto::wire::msg::{Channel, CloseReason};

use crate::tls::{ServerIdentity, TlsError, Trust};

/// Default QUIC idle timeout, ms: a connection silent this long is gone, so a dead peer is
/// noticed within 3 s on both sides (2.5 s of silence, and the rest for the news to travel) (a game shows "connection lost" at once instead of a ghost
/// standing for 30 s). Clients ping 5 times a second and QUIC keep-alives run every
/// [`KEEP_ALIVE_INTERVAL`], so only a dead peer or path reaches it. Here rather than in the
/// relay's configuration because the client uses it too.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 2_500;

/// QUIC keep-alive interval: less than half the default idle timeout, so a quiet but live
/// connection sends two keep-alives before it could time out (one may be lost), and well under
/// any NAT's UDP mapping timeout (≥ 30 s is common). QUIC sends them only when nothing else
/// went out.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Requested `SO_RCVBUF`/`SO_SNDBUF`, bytes. The default overflowed from 500 clients up on this
/// kind of machine (numbers.md); 8 MiB holds ≈ 7,000 full-size packets. The kernel may grant
/// less (`net.core.rmem_max`); the relay logs what it got.
pub const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// Requested socket buffers of a client, bytes: one connection, but a snapshot arrives as a
/// burst of packets.
pub const CLIENT_SOCKET_BUFFER_BYTES: usize = 2 * 1024 * 1024;
/// The longest a peer is asked to delay an acknowledgement (ACK-frequency extension): just above
/// one tick period at the default 30 Hz (33.3 ms), so the acknowledgement of a datagram waits
/// for the peer's next tick's datagram. quinn requests at most the larger of the path's RTT and
/// 25 ms. Loss recovery of reliable streams allows for it: the probe timeout adds the peer's
/// delay, 15 ms more than QUIC's default 25 ms at most, and a gap in the packet numbers is still
/// acknowledged at once (the reordering threshold, quinn's default 2).
pub const ACK_DELAY_MAX_REQUESTED: Duration = Duration::from_millis(40);
/// Ack-eliciting packets a peer may receive before it must acknowledge at once (ACK-frequency
/// extension): 3, so a tick of up to two datagrams plus a reliable frame waits for the next
/// datagram, where QUIC's default (1) acknowledges every second packet; a bulk transfer (a
/// snapshot) still sees an acknowledgement every 4 packets.
pub const ACK_ELICITING_THRESHOLD: u32 = 3;
/// Datagrams buffered for the application per connection, bytes (quinn drops the oldest
/// beyond): 64 KiB, ≈ 700 of a client's input datagrams (≈ 90 bytes each, 30 a second: 20 s
/// of them), where the relay reads them as they come. quinn's default, 1 MiB, let a peer
/// flooding a relay that fell behind hold a MiB of it per connection (a GiB at 1,000).
pub const DATAGRAM_RECEIVE_BUFFER_BYTES: usize = 64 * 1024;
/// Datagrams queued for sending per connection, bytes (quinn drops the oldest beyond): 64 KiB,
/// 2 s of transforms at the default budget (256 kbit/s), 250 ms at 2 Mbit/s. A transform
/// datagram queued longer than that is stale (the next tick's supersedes it, and an unacked
/// value is resent), so the oldest go first. quinn's default, 1 MiB, held up to 33 s of stale
/// state per connection behind a slow path or a relay I/O thread that fell behind, and a relay
/// soak read the largest such backlog so far as memory creeping.
pub const DATAGRAM_SEND_BUFFER_BYTES: usize = 64 * 1024;
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
/// Application close code of a browser session whose relay could not be reached or vanished
/// without closing it (the bridge's; a WebSocket sees `4000 +` this).
pub const CLOSE_CODE_UPSTREAM: u32 = 0x101;
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
/// channel, no bidirectional streams, datagram buffers, and delayed acknowledgements that ride
/// on the datagrams (see the module documentation).
pub fn transport_config(idle_timeout: Duration) -> TransportConfig {
    let mut t = TransportConfig::default();
    let mut ack = AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD))
        .max_ack_delay(Some(ACK_DELAY_MAX_REQUESTED));
    t.ack_frequency_config(Some(ack));
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
    // A client whose address changes (a phone changing networks, a NAT rebinding, a rebound
    // socket: `Client::rebind`) keeps its connection and session: no reconnection at all.
    // quinn's default, said here because sessions rely on it (tests/reconnect.rs).
    server.migration(true);
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

mod streams;
#[cfg(target_os = "linux")]
pub mod udp_batch;
mod writers;

/// What quinn reports about a connection's path, as the transform budget reads it
/// ([`neonet_proto::transform::budget`]): smoothed RTT, congestion window, congestion events.
pub fn path_signals(conn: &quinn::Connection) -> neonet_proto::transform::PathSignals {
    let path = conn.stats().path;
    neonet_proto::transform::PathSignals {
        rtt_us: path.rtt.as_micros() as u64,
        cwnd_bytes: path.cwnd,
        congestion_events: path.congestion_events,
    }
}

pub use streams::{
    accept_streams, ChannelStream, ChannelsSeen, ProtoRead, ReadFailure, StreamEvent, UniRecv,
    UniSend, UniStreams,
};
pub use writers::{priority, ChannelWriters, QueueFull, CHANNEL_QUEUE_BYTES_MAX};

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
}
