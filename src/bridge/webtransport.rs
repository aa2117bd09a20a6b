//! A browser's WebTransport session through the bridge: its streams and datagrams piped to and
//! from its own upstream QUIC connection, byte for byte (the bytes are the same on both sides),
//! until one side ends, then the other closed with the same code and reason.

// The bridge's shared vocabulary (ends, upstream, limits) and imports.
use super::*;

/// One WebTransport session: its own upstream connection, streams and datagrams piped both
/// ways until one side ends, then the other closed with the same code and reason.
pub(super) async fn serve_webtransport(
    session: web_transport_quinn::Session,
    upstream: Arc<Upstream>,
) {
    let conn = match upstream.connect().await {
        Ok(c) => c,
        Err(why) => {
            tracing::warn!(%why, "a browser session could not be bridged");
            PeerConn::close(&session, CLOSE_CODE_UPSTREAM, why.as_bytes());
            return;
        }
    };
    tracing::debug!(peer = %PeerConn::remote_address(&session), "WebTransport session bridged");
    let up = tokio::spawn(pipe_streams(session.clone(), conn.clone()));
    let down = tokio::spawn(pipe_streams(conn.clone(), session.clone()));
    let datagrams = [
        tokio::spawn(pipe_datagrams(session.clone(), conn.clone())),
        tokio::spawn(pipe_datagrams(conn.clone(), session.clone())),
    ];
    let mut shutdown = upstream.shutdown.clone();
    let end = tokio::select! {
        e = PeerConn::closed(&conn) => End::Upstream(e),
        e = PeerConn::closed(&session) => End::Browser(e),
        _ = shutdown.wait_for(|s| *s) => shutdown_close(),
    };
    match end {
        End::Upstream(e) => {
            tracing::debug!(ended = %e, "the relay ended a bridged WebTransport session");
            // What the relay sent before it closed (its `Close` message) reaches the browser
            // first.
            let _ = tokio::time::timeout(quic::CLOSE_FLUSH_TIMEOUT, down).await;
            let (code, text) = carried(e);
            PeerConn::close(&session, code, text.as_bytes());
        }
        End::Browser(e) => {
            tracing::debug!(ended = %e, "the browser ended a bridged WebTransport session");
            let _ = tokio::time::timeout(quic::CLOSE_FLUSH_TIMEOUT, up).await;
            let (code, text) = carried(e);
            PeerConn::close(&conn, code, text.as_bytes());
        }
        End::Bridge(code, text) => {
            PeerConn::close(&session, code, text.as_bytes());
            PeerConn::close(&conn, code, text.as_bytes());
        }
    }
    for d in datagrams {
        d.abort();
    }
}

/// Every unidirectional stream `from`'s peer opens is opened on `to` and copied, until `from`
/// ends and every copy is done.
async fn pipe_streams<A: UniStreams, B: UniStreams>(from: A, to: B) {
    let mut copies = JoinSet::new();
    loop {
        tokio::select! {
            recv = from.accept_uni() => match recv {
                Some(recv) => {
                    copies.spawn(copy_stream(recv, to.clone()));
                }
                None => break,
            },
            Some(_) = copies.join_next(), if !copies.is_empty() => {}
        }
    }
    while copies.join_next().await.is_some() {}
}

/// Copies one stream a chunk at a time (the stream opens on `to` with the first chunk, at the
/// priority of the channel its first byte names); its end is passed on: finished (and
/// acknowledged, for at most [`quic::CLOSE_FLUSH_TIMEOUT`]) or reset.
async fn copy_stream<R: UniRecv, B: UniStreams>(mut recv: R, to: B) {
    let mut send: Option<B::Send> = None;
    loop {
        match recv.read_chunk(quic::STREAM_READ_CHUNK_BYTES).await {
            Ok(Some(chunk)) => {
                if chunk.is_empty() {
                    continue;
                }
                let s = match send.as_mut() {
                    Some(s) => s,
                    None => {
                        let Some(s) = to.open_uni().await else {
                            recv.stop();
                            return;
                        };
                        if let Some(channel) = Channel::from_u8(chunk[0]) {
                            s.set_priority(quic::priority(channel));
                        }
                        send.insert(s)
                    }
                };
                if !s.write_chunk(chunk).await {
                    recv.stop();
                    return;
                }
            }
            Ok(None) => {
                if let Some(mut s) = send {
                    if s.finish() {
                        let _ = tokio::time::timeout(quic::CLOSE_FLUSH_TIMEOUT, s.stopped()).await;
                    }
                }
                return;
            }
            Err(ReadFailure::Reset) => {
                if let Some(s) = send.as_mut() {
                    s.reset();
                }
                return;
            }
            Err(ReadFailure::Gone) => return,
        }
    }
}

/// Passes `from`'s datagrams to `to` as they come (dropped there if the path cannot take them).
async fn pipe_datagrams<A: PeerConn, B: PeerConn>(from: A, to: B) {
    while let Some(d) = from.read_datagram().await {
        to.send_datagram(d);
    }
}
