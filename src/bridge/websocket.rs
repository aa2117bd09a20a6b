//! A browser's WebSocket session through the bridge: WebSocket messages converted to frames and
//! datagrams on its own upstream QUIC connection and back, with the relay's WebSocket framing,
//! limits and latest-wins send queue.

// The bridge's shared vocabulary (ends, upstream, limits) and imports.
use super::*;

/// One WebSocket session (origin and subprotocol already checked by the handler): its own
/// upstream connection, messages converted to frames and datagrams both ways, until one side
/// ends, then the other closed with the same code and reason.
pub(crate) async fn serve_websocket(socket: WebSocket, upstream: Arc<Upstream>) {
    let (sink, mut stream) = socket.split();
    let out = Arc::new(WsOut::default());
    let writer = tokio::spawn(out.clone().write_to(sink));
    let Some(_permit) = upstream.permit() else {
        tracing::warn!("bridge connection limit reached; refusing a WebSocket");
        out.close(
            WS_CLOSE_TRY_AGAIN_LATER,
            "the bridge is full; try again later",
        );
        let _ = tokio::time::timeout(quic::CLOSE_FLUSH_TIMEOUT, writer).await;
        return;
    };
    let conn = match upstream.connect().await {
        Ok(c) => c,
        Err(why) => {
            tracing::warn!(%why, "a browser session could not be bridged");
            out.close(ws_close_code_of(CLOSE_CODE_UPSTREAM), &why);
            let _ = tokio::time::timeout(quic::CLOSE_FLUSH_TIMEOUT, writer).await;
            return;
        }
    };
    tracing::debug!("WebSocket session bridged");
    let writers = ChannelWriters::spawn(&conn);
    let (tx, rx) = mpsc::channel(WS_DOWN_QUEUE_LEN);
    let readers = tokio::spawn(quic::accept_streams(
        conn.clone(),
        FrameDecoder::for_server_channel,
        tx,
        |ev| ev,
    ));
    let down = tokio::spawn(frames_to_websocket(rx, out.clone(), conn.clone()));
    let datagrams = tokio::spawn({
        let (conn, out) = (conn.clone(), out.clone());
        async move {
            while let Some(d) = PeerConn::read_datagram(&conn).await {
                out.push_datagram(None, &d);
            }
        }
    });
    let mut shutdown = upstream.shutdown.clone();
    let closed = PeerConn::closed(&conn);
    tokio::pin!(closed);
    let end = loop {
        let m = tokio::select! {
            e = &mut closed => break End::Upstream(e),
            _ = shutdown.wait_for(|s| *s) => break shutdown_close(),
            m = stream.next() => m,
        };
        let Some(Ok(m)) = m else {
            break End::Browser(Ended {
                code: None,
                reason: "the browser's WebSocket was lost".into(),
            });
        };
        if let Some(end) = forward_message(m, &writers, &conn) {
            break end;
        }
    };
    match end {
        End::Upstream(e) => {
            tracing::debug!(ended = %e, "the relay ended a bridged WebSocket session");
            // What the relay sent before it closed (its `Close` message) goes out first.
            let _ = tokio::time::timeout(quic::CLOSE_FLUSH_TIMEOUT, down).await;
            let (code, text) = carried(e);
            out.close(ws_close_code_of(code), &text);
        }
        End::Browser(e) => {
            tracing::debug!(ended = %e, "the browser ended a bridged WebSocket session");
            out.peer_gone();
            writers.finish().await;
            let (code, text) = carried(e);
            PeerConn::close(&conn, code, text.as_bytes());
        }
        End::Bridge(code, text) => {
            out.close(ws_close_code_of(code), &text);
            PeerConn::close(&conn, code, text.as_bytes());
        }
    }
    let _ = tokio::time::timeout(quic::CLOSE_FLUSH_TIMEOUT, writer).await;
    readers.abort();
    datagrams.abort();
}

/// Forwards one browser message upstream; the end of the session if it ends it.
fn forward_message(m: Message, writers: &ChannelWriters, conn: &Connection) -> Option<End> {
    match parse_message(m) {
        Ok(WsIn::Frame { channel, body }) => {
            // Within the channel's limit (checked by `parse_message`), so the length fits.
            let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
            frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
            frame.extend_from_slice(&body);
            match writers.try_send(channel, &frame) {
                Ok(()) => None,
                Err(e) => Some(End::Bridge(
                    quic::CLOSE_CODE_OVERFLOW,
                    format!("{e}: the relay reads too slowly"),
                )),
            }
        }
        Ok(WsIn::Datagram(d)) => {
            PeerConn::send_datagram(conn, d);
            None
        }
        Ok(WsIn::Close(c)) => Some(End::Browser(match c {
            Some(c) => Ended {
                code: Some(quic_close_code_of(c.code)),
                reason: c.reason.to_string(),
            },
            None => Ended {
                code: Some(quic::CLOSE_CODE_LOCAL),
                reason: "the browser closed the WebSocket".into(),
            },
        })),
        Ok(WsIn::Nothing) => None,
        Err(e) => Some(violation(&e)),
    }
}

/// The end of a session whose browser broke the framing: `ProtocolViolation`, as the relay
/// would close it.
fn violation(e: &DecodeError) -> End {
    let reason = CloseReason::ProtocolViolation;
    End::Bridge(
        quic::close_code(reason).into_inner() as u32,
        quic::close_text(reason, &e.to_string()),
    )
}

/// Turns the upstream's decoded frames into WebSocket messages until its streams end; a reader
/// too slow for the reliable budget ends the session (both sides told why).
async fn frames_to_websocket(
    mut rx: mpsc::Receiver<StreamEvent>,
    out: Arc<WsOut>,
    conn: Connection,
) {
    while let Some(ev) = rx.recv().await {
        match ev {
            StreamEvent::Frames { channel, frames } => {
                for body in codec::frames(&frames) {
                    if !out.push_frame(channel, body) {
                        PeerConn::close(
                            &conn,
                            quic::CLOSE_CODE_OVERFLOW,
                            OVERFLOW_REASON.as_bytes(),
                        );
                        return;
                    }
                }
            }
            StreamEvent::Error(e) => {
                let text = format!("the relay broke the framing: {e}");
                tracing::warn!(%text);
                out.close(ws_close_code_of(CLOSE_CODE_UPSTREAM), &text);
                PeerConn::close(&conn, CLOSE_CODE_UPSTREAM, text.as_bytes());
                return;
            }
        }
    }
}
