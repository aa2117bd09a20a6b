//! The seam between transports and the core task: a connection's outbound side ([`Link`]),
//! everything that flows into the core task ([`Inbound`]), and connection ids unique across
//! transports ([`ConnIds`]). None of it knows QUIC: a WebSocket or WebTransport transport is
//! another [`Link`] feeding the same [`Inbound`] queue.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use neonet_proto::persist::StoreReport;
use neonet_proto::server::{ConnId, Transmit, TransportKind};
use neonet_proto::wire::codec::DecodeError;
use neonet_proto::wire::msg::Channel;

/// The outbound side of one connection, whatever its transport. The core task calls it; it must
/// never block. If it cannot keep up, it closes its connection and the transport reports
/// [`Inbound::Disconnect`].
pub trait Link: Send + Sync + 'static {
    /// Sends (or queues) one transmit for this connection. `Transmit::Close` flushes what was
    /// queued before it, then closes.
    fn transmit(&self, transmit: Transmit);
    /// The largest datagram the connection's path carries now, `None` if it has no datagrams.
    fn max_datagram_size(&self) -> Option<usize>;
    /// The peer's address, for the status page and the core's per-address limits.
    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }
    /// The smoothed round-trip time, for the status page.
    fn rtt(&self) -> Option<Duration> {
        None
    }
    /// What the transport reports about the path (QUIC's RTT, congestion window, congestion
    /// events), for the client's transform budget; `None` where the transport has no such
    /// figures (WebSocket), and the budget follows the acks alone.
    fn path_signals(&self) -> Option<neonet_proto::transform::PathSignals> {
        None
    }
    /// Reliable bytes waiting in this connection's send queue (the fullest channel's, not yet
    /// handed to the transport), for the core to pace a big snapshot's pieces
    /// (`ServerCore::handle_send_queue`); `None` where the transport cannot tell, and the core
    /// then sends every piece at once.
    fn queued_bytes(&self) -> Option<usize> {
        None
    }
}

/// Input to the core task, from any transport or the persistence layer.
pub enum Inbound {
    /// A connection opened; it must send `Hello` first.
    Connect {
        /// Its id, from [`super::RelayHandle::conn_ids`].
        conn: ConnId,
        /// Its transport.
        transport: TransportKind,
        /// Where its transmits go.
        link: Arc<dyn Link>,
    },
    /// A complete frame body arrived on a channel.
    Frame {
        /// From whom.
        conn: ConnId,
        /// Which channel.
        channel: Channel,
        /// The body, without its length prefix.
        body: Vec<u8>,
    },
    /// Complete frames that arrived together on a channel: consecutive frames, each with its
    /// length prefix (see [`neonet_proto::wire::codec::frames`]), each within the frame limit. What a QUIC stream
    /// read yields; one message for all of them.
    Frames {
        /// From whom.
        conn: ConnId,
        /// Which channel.
        channel: Channel,
        /// The frames.
        frames: Vec<u8>,
    },
    /// A datagram arrived.
    Datagram {
        /// From whom.
        conn: ConnId,
        /// The bytes.
        data: Bytes,
    },
    /// A stream broke the framing rules.
    StreamError {
        /// Whose.
        conn: ConnId,
        /// What was wrong.
        error: DecodeError,
    },
    /// The connection closed.
    Disconnect {
        /// Which.
        conn: ConnId,
    },
    /// What the store did with the effects it was given (a commit, or a failure).
    Store(StoreReport),
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inbound::Connect {
                conn, transport, ..
            } => write!(f, "Connect({conn:?}, {transport:?})"),
            Inbound::Frame {
                conn,
                channel,
                body,
            } => write!(f, "Frame({conn:?}, {channel:?}, {} bytes)", body.len()),
            Inbound::Frames {
                conn,
                channel,
                frames,
            } => write!(f, "Frames({conn:?}, {channel:?}, {} bytes)", frames.len()),
            Inbound::Datagram { conn, data } => {
                write!(f, "Datagram({conn:?}, {} bytes)", data.len())
            }
            Inbound::StreamError { conn, error } => write!(f, "StreamError({conn:?}, {error})"),
            Inbound::Disconnect { conn } => write!(f, "Disconnect({conn:?})"),
            Inbound::Store(r) => write!(f, "Store({r:?})"),
        }
    }
}

/// Allocates connection ids, unique for the relay's lifetime across all transports.
#[derive(Debug, Default)]
pub struct ConnIds(AtomicU64);

impl ConnIds {
    /// The next unused id.
    pub fn next(&self) -> ConnId {
        ConnId(self.0.fetch_add(1, Ordering::Relaxed) + 1)
    }
}
