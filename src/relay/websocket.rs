//! The WebSocket fallback: browsers that cannot open WebTransport join over a WebSocket on the
//! relay's HTTP port (`GET /ws`, subprotocol [`WS_PROTOCOL`]). A WebSocket session is a session
//! of the same world: the same messages, the same limits (the protocol crate's per-channel
//! frame limits), the same core.
//!
//! ## Framing
//! Every WebSocket message is binary. Its first byte says what follows:
//! - `0..=3`: one reliable frame on that channel (`Control`, `World`, `Chat`, `Events`): the
//!   frame's postcard body, without the 4-byte length prefix (a WebSocket message is already
//!   delimited);
//! - [`WS_DATAGRAM`] (`0x80`): one datagram, the same bytes as a QUIC datagram.
//!
//! A text message, an unknown first byte or a frame over its channel's limit closes the
//! connection with `ProtocolViolation`, as on QUIC.
//!
//! ## Over TCP, nothing unreliable queues
//! One TCP stream carries everything, so a datagram held up behind a slow reader would only
//! arrive stale. Transform datagrams are **latest-wins**: the link keeps only the newest tick's
//! datagrams waiting, and a newer tick replaces older unsent ones. Delta baselines stay correct
//! because the server only ever uses state the client acknowledged as a baseline. Reliable
//! frames have a byte budget ([`WS_RELIABLE_QUEUE_BYTES_MAX`]); a browser that reads too slowly
//! to stay within it is told so (a WebSocket close with code [`WS_CLOSE_OVERFLOW`] and a reason)
//! and disconnected, never costing unbounded memory.
//!
//! ## Origins
//! A page on another site must not open a session with a visitor's browser. The `Origin` header
//! a browser sends must name the host the request was made to (same origin), or one of the
//! configured allowed origins; a request without `Origin` (not a browser) is accepted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;

use neonet_proto::server::{ConnId, InboxQuota, Transmit, TransportKind};
use neonet_proto::time::Tick;
use neonet_proto::wire::codec::DecodeError;
use neonet_proto::wire::limits::{client_frame_bytes_max, FRAME_BYTES_MAX};
use neonet_proto::wire::msg::{Channel, CloseReason};

use super::browser::{Backend, BrowserAccess, CoreAccess};
use super::{Inbound, Link};
use crate::quic;

/// The WebSocket subprotocol a browser must ask for: the protocol and its version.
pub const WS_PROTOCOL: &str = "neonet.1";

/// First byte of a WebSocket message carrying a datagram.
pub const WS_DATAGRAM: u8 = 0x80;

/// Largest WebSocket message accepted, bytes: a kind byte and the largest frame any channel
/// allows (1 MiB, the world channel's); each channel's own limit is checked after.
pub const WS_MESSAGE_BYTES_MAX: usize = 1 + FRAME_BYTES_MAX;

/// Reliable bytes one WebSocket connection may have waiting to be written, 4 MiB: the same
/// budget as one QUIC channel's queue (`quic::CHANNEL_QUEUE_BYTES_MAX`), which absorbs seconds
/// of a stalled reader under a heavy broadcast. Past it the browser is disconnected.
pub const WS_RELIABLE_QUEUE_BYTES_MAX: usize = quic::CHANNEL_QUEUE_BYTES_MAX;

/// Datagram size the core writes for a WebSocket connection, bytes: the QUIC minimum every
/// path carries, so a browser's transform stream is packed exactly like a native client's.
pub const WS_DATAGRAM_BYTES: usize = 1200;

/// WebSocket close code when the relay gives up on a reader too slow for the reliable budget
/// (4000–4999 is the range for applications).
pub const WS_CLOSE_OVERFLOW: u16 = ws_close_code_of(quic::CLOSE_CODE_OVERFLOW);

/// First WebSocket close code of the range for applications (RFC 6455, 4000–4999): a QUIC
/// application close code `c` travels as `4000 + c % 1000`.
const WS_CLOSE_APPLICATION_FIRST: u16 = 4000;

/// Width of the WebSocket application close-code range (4000–4999).
const WS_CLOSE_APPLICATION_CODES: u32 = 1000;

/// WebSocket close code for a neonet close reason: 4000 + its QUIC application code.
pub fn ws_close_code(reason: CloseReason) -> u16 {
    ws_close_code_of(quic::close_code(reason).into_inner() as u32)
}

/// WebSocket close code for a QUIC application close code: 4000 + the code (modulo 1000, so it
/// stays in the applications' range).
pub const fn ws_close_code_of(quic_code: u32) -> u16 {
    WS_CLOSE_APPLICATION_FIRST + (quic_code % WS_CLOSE_APPLICATION_CODES) as u16
}

/// The QUIC application close code a WebSocket close code stands for: the inverse of
/// [`ws_close_code_of`] in 4000–4999, [`quic::CLOSE_CODE_LOCAL`] for any other code (a
/// browser's plain `1000` or `1001`).
pub fn quic_close_code_of(ws_code: u16) -> u32 {
    match ws_code.checked_sub(WS_CLOSE_APPLICATION_FIRST) {
        Some(c) if u32::from(c) < WS_CLOSE_APPLICATION_CODES => u32::from(c),
        _ => quic::CLOSE_CODE_LOCAL,
    }
}

/// `text` cut (at a character boundary) to what a WebSocket close reason holds,
/// [`WS_CLOSE_REASON_BYTES_MAX`].
pub fn ws_close_reason(text: &str) -> String {
    let mut end = text.len().min(WS_CLOSE_REASON_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Datagrams a WebSocket keeps waiting when their tick is unknown (a bridge forwards the
/// relay's datagrams without decoding them): the newest 8, about two ticks of a crowded view at
/// [`WS_DATAGRAM_BYTES`] each; an older one is dropped when a newer one arrives, so a slow
/// reader gets fresh motion rather than a backlog.
pub const WS_DATAGRAMS_WAITING_MAX: usize = 8;

/// `GET /ws`: checks the origin and the subprotocol, then upgrades and serves the session.
pub async fn ws_handler(
    State(access): State<Arc<BrowserAccess>>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    upgrade: WebSocketUpgrade,
) -> Response {
    let peer = extensions
        .get::<axum::extract::ConnectInfo<crate::http::PeerAddr>>()
        .map(|c| c.0 .0);
    if let Err(why) = check_origin(&headers, &access.allowed_origins) {
        tracing::info!(why, "WebSocket refused");
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    let upgrade = upgrade
        .protocols([WS_PROTOCOL])
        .max_message_size(WS_MESSAGE_BYTES_MAX)
        .max_frame_size(WS_MESSAGE_BYTES_MAX);
    if upgrade.selected_protocol().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "ask for the WebSocket subprotocol neonet.1",
        )
            .into_response();
    }
    upgrade.on_upgrade(move |socket| async move {
        match &access.backend {
            Backend::Core(core) => serve_ws(socket, core.clone(), peer).await,
            Backend::Upstream(upstream) => {
                crate::bridge::serve_websocket(socket, upstream.clone()).await
            }
        }
    })
}

/// Same origin (the `Origin` names the `Host` asked for), an allowed origin, or no `Origin`.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), &'static str> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().map_err(|_| "unreadable Origin")?;
    if allowed.iter().any(|a| a == origin) {
        return Ok(());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or("no Host")?;
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .ok_or("Origin is not http(s)")?;
    if origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err("cross-origin WebSocket refused")
    }
}

async fn serve_ws(socket: WebSocket, access: CoreAccess, peer: Option<SocketAddr>) {
    let id = access.conn_ids.next();
    let out = Arc::new(WsOut::default());
    let link = Arc::new(WsLink {
        out: out.clone(),
        peer,
    });
    if access
        .inbound
        .send(Inbound::Connect {
            conn: id,
            transport: TransportKind::WebSocket,
            link,
        })
        .await
        .is_err()
    {
        return;
    }
    tracing::debug!(conn = id.0, "WebSocket connected");
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(out.clone().write_to(sink));
    let mut quota = InboxQuota::default();
    while let Some(m) = stream.next().await {
        let Ok(m) = m else { break };
        match read_message(id, m, &mut quota, &access).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(error) => {
                let _ = access
                    .inbound
                    .send(Inbound::StreamError { conn: id, error })
                    .await;
                break;
            }
        }
    }
    // The reader is done; the writer finishes what the core sends until it closes (or the
    // socket is gone), then the core learns the connection ended.
    out.peer_gone();
    let _ = writer.await;
    tracing::debug!(conn = id.0, "WebSocket closed");
    let _ = access.inbound.send(Inbound::Disconnect { conn: id }).await;
}

/// One WebSocket message from a browser, checked as the framing says (see the module
/// documentation).
#[derive(Debug)]
pub(crate) enum WsIn {
    /// A reliable frame's body (no length prefix), within its channel's limit.
    Frame {
        /// The channel.
        channel: Channel,
        /// The frame's postcard body.
        body: Bytes,
    },
    /// A datagram's bytes.
    Datagram(Bytes),
    /// The browser closed the socket, perhaps with a code and reason.
    Close(Option<CloseFrame>),
    /// Nothing to forward (a ping or pong).
    Nothing,
}

/// Parses one message; a text message, an empty one, an unknown kind or a frame over its
/// channel's limit is an error.
pub(crate) fn parse_message(m: Message) -> Result<WsIn, DecodeError> {
    let data = match m {
        Message::Binary(b) => b,
        Message::Close(c) => return Ok(WsIn::Close(c)),
        Message::Ping(_) | Message::Pong(_) => return Ok(WsIn::Nothing),
        Message::Text(_) => {
            return Err(DecodeError::Malformed(
                "a text WebSocket message (neonet speaks binary)".into(),
            ))
        }
    };
    let Some(&kind) = data.first() else {
        return Err(DecodeError::Malformed("an empty WebSocket message".into()));
    };
    let body = data.slice(1..);
    if kind == WS_DATAGRAM {
        return Ok(WsIn::Datagram(body));
    }
    let channel = Channel::from_u8(kind)
        .ok_or_else(|| DecodeError::Malformed(format!("unknown WebSocket message kind {kind}")))?;
    let max = client_frame_bytes_max(channel);
    if body.len() > max {
        return Err(DecodeError::Oversize {
            len: body.len(),
            max,
        });
    }
    Ok(WsIn::Frame { channel, body })
}

/// Forwards one message; `Ok(false)` at the peer's close.
async fn read_message(
    id: ConnId,
    m: Message,
    quota: &mut InboxQuota,
    access: &CoreAccess,
) -> Result<bool, DecodeError> {
    match parse_message(m)? {
        WsIn::Frame { channel, body } => {
            let sent = access
                .inbound
                .send(Inbound::Frame {
                    conn: id,
                    channel,
                    body: body.to_vec(),
                })
                .await;
            Ok(sent.is_ok())
        }
        WsIn::Datagram(data) => {
            access.inbox.push(id, data, quota);
            Ok(true)
        }
        WsIn::Close(_) => Ok(false),
        WsIn::Nothing => Ok(true),
    }
}

/// What waits to be written to one WebSocket: reliable frames in order (within a byte budget),
/// the newest tick's datagrams, and a close. Used by the relay's [`WsLink`] and by the bridge.
#[derive(Debug, Default)]
pub(crate) struct WsOut {
    state: Mutex<WsOutState>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct WsOutState {
    reliable: VecDeque<Bytes>,
    reliable_bytes: usize,
    datagrams: VecDeque<Bytes>,
    datagram_tick: Option<Tick>,
    /// The close to send after the reliable frames queued before it.
    close: Option<CloseFrame>,
    /// Nothing more is written (closed, or the peer is gone).
    done: bool,
}

impl WsOut {
    fn lock(&self) -> std::sync::MutexGuard<'_, WsOutState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what is queued to `sink` until the close is sent, the socket fails or the peer is
    /// gone, then closes the sink.
    pub(crate) async fn write_to(
        self: Arc<Self>,
        mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    ) {
        while let Some(m) = self.next().await {
            let last = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
    }

    /// Queues a reliable frame on `channel` (its body, without the length prefix). `false` if
    /// it would pass [`WS_RELIABLE_QUEUE_BYTES_MAX`]: the reader is too slow, what waits is
    /// dropped and the socket closes with [`WS_CLOSE_OVERFLOW`] and a reason.
    pub(crate) fn push_frame(&self, channel: Channel, body: &[u8]) -> bool {
        let mut m = Vec::with_capacity(1 + body.len());
        m.push(channel as u8);
        m.extend_from_slice(body);
        let mut s = self.lock();
        if s.done || s.close.is_some() {
            return true;
        }
        if s.reliable_bytes + m.len() > WS_RELIABLE_QUEUE_BYTES_MAX {
            tracing::warn!("WebSocket send queue full: closing the slow reader");
            s.reliable.clear();
            s.reliable_bytes = 0;
            drop(s);
            self.close(WS_CLOSE_OVERFLOW, OVERFLOW_REASON);
            return false;
        }
        s.reliable_bytes += m.len();
        s.reliable.push_back(Bytes::from(m));
        drop(s);
        self.wake.notify_one();
        true
    }

    /// Reliable bytes waiting to be written.
    pub(crate) fn reliable_bytes(&self) -> usize {
        self.lock().reliable_bytes
    }

    /// Queues a datagram, latest-wins: with its `tick`, a newer tick replaces what an older one
    /// left unsent (and an older tick's is dropped); without one, only the newest
    /// [`WS_DATAGRAMS_WAITING_MAX`] wait.
    pub(crate) fn push_datagram(&self, tick: Option<Tick>, data: &[u8]) {
        let mut m = Vec::with_capacity(1 + data.len());
        m.push(WS_DATAGRAM);
        m.extend_from_slice(data);
        let mut s = self.lock();
        if s.done || s.close.is_some() {
            return;
        }
        match tick {
            Some(tick) if s.datagram_tick.is_none_or(|t| tick > t) => {
                s.datagrams.clear();
                s.datagram_tick = Some(tick);
            }
            Some(tick) if Some(tick) != s.datagram_tick => return,
            Some(_) => {}
            None => {
                while s.datagrams.len() >= WS_DATAGRAMS_WAITING_MAX {
                    s.datagrams.pop_front();
                }
            }
        }
        s.datagrams.push_back(Bytes::from(m));
        drop(s);
        self.wake.notify_one();
    }

    /// The next message to write: reliable frames first, then the newest datagrams, then the
    /// close. `None` once done.
    async fn next(&self) -> Option<Message> {
        loop {
            let notified = self.wake.notified();
            {
                let mut s = self.lock();
                if let Some(f) = s.reliable.pop_front() {
                    s.reliable_bytes -= f.len();
                    return Some(Message::Binary(f));
                }
                if let Some(close) = s.close.take() {
                    s.done = true;
                    s.datagrams.clear();
                    return Some(Message::Close(Some(close)));
                }
                if s.done {
                    return None;
                }
                if let Some(d) = s.datagrams.pop_front() {
                    return Some(Message::Binary(d));
                }
            }
            notified.await;
        }
    }

    /// The peer is gone: nothing more is written, unless a close is already queued.
    pub(crate) fn peer_gone(&self) {
        let mut s = self.lock();
        if s.close.is_none() {
            s.done = true;
        }
        drop(s);
        self.wake.notify_one();
    }

    /// Queues a close after the reliable frames already queued (`reason` is cut to
    /// [`WS_CLOSE_REASON_BYTES_MAX`]); later frames and datagrams are dropped.
    pub(crate) fn close(&self, code: u16, reason: &str) {
        let mut s = self.lock();
        if s.close.is_some() || s.done {
            return;
        }
        s.close = Some(CloseFrame {
            code,
            reason: ws_close_reason(reason).into(),
        });
        drop(s);
        self.wake.notify_one();
    }
}

/// The WebSocket [`Link`]: never blocks; see the module documentation for what it keeps.
struct WsLink {
    out: Arc<WsOut>,
    /// The browser's address, for the status page.
    peer: Option<SocketAddr>,
}

impl Link for WsLink {
    fn transmit(&self, transmit: Transmit) {
        match transmit {
            Transmit::Frame { channel, frame, .. } => {
                let body = &frame[neonet_proto::wire::codec::FRAME_HEADER_BYTES..];
                self.out.push_frame(channel, body);
            }
            Transmit::Datagram { tick, data, .. } => self.out.push_datagram(Some(tick), &data),
            Transmit::Close { reason, detail, .. } => {
                // `quic::close_text` bounds the text; `close` cuts it to a WebSocket reason's.
                self.out
                    .close(ws_close_code(reason), &quic::close_text(reason, &detail));
            }
        }
    }

    fn max_datagram_size(&self) -> Option<usize> {
        Some(WS_DATAGRAM_BYTES)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    fn queued_bytes(&self) -> Option<usize> {
        Some(self.out.reliable_bytes())
    }
}

/// The reason a reader too slow for its reliable budget is given.
pub(crate) const OVERFLOW_REASON: &str = "send queue full: reading too slowly";

/// Longest WebSocket close reason, bytes (RFC 6455: a control frame's payload is at most 125
/// bytes, two of them the code).
pub const WS_CLOSE_REASON_BYTES_MAX: usize = 123;

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_same_origin_allowed_origins_or_non_browsers_may_open_a_websocket() {
        let allowed = vec!["https://game.example".to_string()];
        assert!(check_origin(&headers(None, "relay:4480"), &allowed).is_ok());
        assert!(check_origin(&headers(Some("http://relay:4480"), "relay:4480"), &allowed).is_ok());
        assert!(check_origin(
            &headers(Some("https://game.example"), "relay:4480"),
            &allowed
        )
        .is_ok());
        assert!(check_origin(
            &headers(Some("http://evil.example"), "relay:4480"),
            &allowed
        )
        .is_err());
        assert!(check_origin(&headers(Some("http://relay:9999"), "relay:4480"), &allowed).is_err());
    }

    #[tokio::test]
    async fn datagrams_are_latest_wins_and_reliable_frames_keep_their_order() {
        let out = Arc::new(WsOut::default());
        let link = WsLink {
            out: out.clone(),
            peer: None,
        };
        let frame = |b: u8| Transmit::Frame {
            conn: ConnId(1),
            channel: Channel::Chat,
            frame: neonet_proto::wire::codec::encode_frame(&b).into(),
        };
        let dg = |t: u64, b: u8| Transmit::Datagram {
            conn: ConnId(1),
            tick: Tick(t),
            data: vec![b],
        };
        link.transmit(dg(1, 10));
        link.transmit(frame(1));
        link.transmit(dg(2, 20));
        link.transmit(dg(2, 21));
        link.transmit(frame(2));
        link.transmit(dg(1, 11)); // older than the newest: dropped
        let mut got = Vec::new();
        for _ in 0..4 {
            match out.next().await {
                Some(Message::Binary(b)) => got.push(b.to_vec()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            got,
            vec![
                vec![Channel::Chat as u8, 1],
                vec![Channel::Chat as u8, 2],
                vec![WS_DATAGRAM, 20],
                vec![WS_DATAGRAM, 21],
            ]
        );
    }

    #[tokio::test]
    async fn a_reader_past_the_reliable_budget_is_closed_with_a_reason() {
        let out = Arc::new(WsOut::default());
        let link = WsLink {
            out: out.clone(),
            peer: None,
        };
        let big = vec![7u8; 1024 * 1024];
        for _ in 0..5 {
            link.transmit(Transmit::Frame {
                conn: ConnId(1),
                channel: Channel::World,
                frame: neonet_proto::wire::codec::encode_frame(&serde_bytes_like(&big)).into(),
            });
        }
        match out.next().await {
            Some(Message::Close(Some(c))) => {
                assert_eq!(c.code, WS_CLOSE_OVERFLOW);
                assert!(c.reason.as_str().contains("reading too slowly"));
            }
            other => panic!("{other:?}"),
        }
        assert!(out.next().await.is_none());
    }

    fn serde_bytes_like(b: &[u8]) -> Vec<u8> {
        b.to_vec()
    }
}
