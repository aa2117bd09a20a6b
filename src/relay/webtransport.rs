//! WebTransport sessions as stream connections: a browser's session carries neonet's channels
//! on unidirectional streams and transforms in datagrams exactly as a native QUIC connection
//! does, so the relay serves both with the same code ([`super::accept`]). This module only
//! adapts `web_transport_quinn`'s session and streams to [`quic::UniStreams`] and
//! [`PeerConn`].

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use web_transport_quinn::{RecvStream, SendStream, Session};

use super::accept::{Ended, PeerConn};
use crate::quic::{self, ReadFailure};

impl quic::UniStreams for Session {
    type Send = SendStream;
    type Recv = RecvStream;
    async fn open_uni(&self) -> Option<SendStream> {
        Session::open_uni(self).await.ok()
    }
    async fn accept_uni(&self) -> Option<RecvStream> {
        Session::accept_uni(self).await.ok()
    }
}

impl quic::UniSend for SendStream {
    fn set_priority(&self, priority: i32) {
        let _ = SendStream::set_priority(self, priority);
    }
    async fn write_all(&mut self, bytes: &[u8]) -> bool {
        SendStream::write_all(self, bytes).await.is_ok()
    }
    async fn write_chunk(&mut self, bytes: Bytes) -> bool {
        SendStream::write_chunk(self, bytes).await.is_ok()
    }
    fn finish(&mut self) -> bool {
        SendStream::finish(self).is_ok()
    }
    fn reset(&mut self) {
        let _ = SendStream::reset(self, 0);
    }
    async fn stopped(&self) {
        let _ = SendStream::stopped(self).await;
    }
}

impl quic::UniRecv for RecvStream {
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadFailure> {
        match RecvStream::read_chunk(self, max, true).await {
            Ok(c) => Ok(c.map(|c| c.bytes)),
            Err(web_transport_quinn::ReadError::Reset(_)) => Err(ReadFailure::Reset),
            Err(_) => Err(ReadFailure::Gone),
        }
    }
    fn stop(&mut self) {
        let _ = RecvStream::stop(self, 0);
    }
}

impl PeerConn for Session {
    async fn read_datagram(&self) -> Option<Bytes> {
        Session::read_datagram(self).await.ok()
    }
    fn send_datagram(&self, data: Bytes) {
        if let Err(e) = Session::send_datagram(self, data) {
            tracing::trace!(error = %e, "WebTransport datagram not sent");
        }
    }
    fn max_datagram_size(&self) -> Option<usize> {
        Some(Session::max_datagram_size(self)).filter(|&n| n > 0)
    }
    fn close(&self, code: u32, text: &[u8]) {
        Session::close(self, code, text);
    }
    async fn closed(&self) -> Ended {
        match Session::closed(self).await {
            web_transport_quinn::SessionError::WebTransportError(
                web_transport_quinn::WebTransportError::Closed(code, reason),
            ) => Ended {
                code: Some(code),
                reason,
            },
            e => Ended {
                code: None,
                reason: e.to_string(),
            },
        }
    }
    fn remote_address(&self) -> SocketAddr {
        let conn: &quinn::Connection = self;
        conn.remote_address()
    }
    fn rtt(&self) -> Duration {
        let conn: &quinn::Connection = self;
        conn.rtt()
    }
    fn path_signals(&self) -> neonet_proto::transform::PathSignals {
        crate::quic::path_signals(self)
    }
}
