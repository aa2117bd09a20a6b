//! The bridge over real sockets: a relay, and a bridge in front of it (its own WebTransport
//! port and HTTP server, forwarding each browser session to the relay over native QUIC).
//! Browsers on either of the bridge's transports join the relay's world, chat with a native
//! client connected to the relay directly and receive its motion; when the relay shuts down,
//! the browsers see its `Close` message and their session end with the relay's reason.

mod common;

use std::net::SocketAddr;

use common::browser::{
    connect_info, hello, native_hears_answers_and_walks, read_server_streams, websocket_session,
    webtransport_connect, webtransport_session, ws_connect, ws_frame,
};
use common::{TestRelay, WAIT};
use futures_util::{SinkExt, StreamExt};
use neonet::bridge::{Bridge, BridgeConfig, BridgeHandle};
use neonet::proto::wire::codec;
use neonet::proto::wire::msg::{Channel, CloseReason, ServerMsg};
use neonet::quic::close_code;
use neonet::relay::websocket::{ws_close_code, WS_DATAGRAM};
use neonet::tls::Trust;
use tokio_tungstenite::tungstenite::Message;

/// A bridge in front of a [`TestRelay`], on a runtime of its own (so it outlives the relay's).
struct TestBridge {
    rt: tokio::runtime::Runtime,
    handle: Option<BridgeHandle>,
    /// Its development certificate; removed on drop.
    _dir: tempfile::TempDir,
    /// The HTTP server (page, `/connect.json`, `/ws`).
    http: SocketAddr,
    /// The WebTransport endpoint.
    quic: SocketAddr,
}

impl TestBridge {
    fn start(relay: &TestRelay) -> TestBridge {
        let dir = tempfile::tempdir().expect("temp dir");
        let rt = common::runtime();
        let handle = rt
            .block_on(Bridge::start(BridgeConfig {
                upstream: relay.addr.to_string(),
                upstream_trust: Trust::Sha256(relay.fingerprint),
                listen: "127.0.0.1:0".parse().unwrap(),
                http_listen: "127.0.0.1:0".parse().unwrap(),
                cert_dir: dir.path().join("certs"),
                ..BridgeConfig::default()
            }))
            .expect("the bridge starts");
        TestBridge {
            http: handle.http_addr(),
            quic: handle.local_addr(),
            handle: Some(handle),
            rt,
            _dir: dir,
        }
    }
}

impl Drop for TestBridge {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.rt.block_on(h.shutdown());
        }
    }
}

#[test]
fn a_websocket_session_through_the_bridge_chats_with_a_native_client_and_receives_its_motion() {
    let relay = TestRelay::start();
    let bridge = TestBridge::start(&relay);
    let native = relay.client("native");
    let says = "hello through the bridge's WebSocket";
    let ws = bridge
        .rt
        .spawn(websocket_session(bridge.http, "ws-browser", says));
    native_hears_answers_and_walks(&native, says);
    let seen = bridge.rt.block_on(ws).unwrap();
    seen.assert_saw_native("transform datagrams over the socket");
    native.close();
}

#[test]
fn a_webtransport_session_through_the_bridge_chats_with_a_native_client_and_receives_its_motion() {
    let relay = TestRelay::start();
    let bridge = TestBridge::start(&relay);
    let native = relay.client("native");
    let (port, hash) = bridge.rt.block_on(connect_info(bridge.http));
    assert_eq!(
        port,
        bridge.quic.port(),
        "/connect.json names the bridge's own WebTransport port"
    );
    assert_eq!(
        Some(hash.clone()),
        bridge
            .handle
            .as_ref()
            .and_then(|h| h.browser_cert_fingerprint())
            .map(|f| f.0.to_vec()),
        "and the bridge's own browser certificate"
    );
    let says = "hello through the bridge's WebTransport";
    let wt = bridge
        .rt
        .spawn(webtransport_session(port, hash, "wt-browser", says));
    native_hears_answers_and_walks(&native, says);
    let seen = bridge.rt.block_on(wt).unwrap();
    seen.assert_saw_native("WebTransport datagrams");
    native.close();
}

/// Reads a bridged WebSocket until it closes: whether the relay's `Close` message came, and
/// the close frame's code and reason.
async fn websocket_end(mut ws: common::browser::Ws) -> (bool, Option<(u16, String)>) {
    let mut close_message = false;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(WAIT, ws.next()).await {
        match m {
            Message::Binary(b) if b[0] != WS_DATAGRAM => {
                if let Ok(ServerMsg::Close { reason, .. }) = codec::decode_server(&b[1..]) {
                    assert_eq!(reason, CloseReason::ServerShutdown);
                    close_message = true;
                }
            }
            Message::Close(c) => {
                return (
                    close_message,
                    c.map(|c| (u16::from(c.code), c.reason.to_string())),
                )
            }
            _ => {}
        }
    }
    (close_message, None)
}

#[test]
fn when_the_relay_shuts_down_bridged_browsers_get_its_close_message_and_reason() {
    let relay = TestRelay::start();
    let bridge = TestBridge::start(&relay);
    let rt = &bridge.rt;
    // A WebSocket session, joined.
    let ws = rt.block_on(async {
        let mut ws = ws_connect(bridge.http, None)
            .await
            .expect("the WebSocket opens");
        ws.send(ws_frame(&hello("ws-browser"))).await.unwrap();
        loop {
            let Ok(Some(Ok(Message::Binary(b)))) = tokio::time::timeout(WAIT, ws.next()).await
            else {
                panic!("no Welcome over the bridged WebSocket");
            };
            if b[0] != WS_DATAGRAM
                && matches!(codec::decode_server(&b[1..]), Ok(ServerMsg::Welcome { .. }))
            {
                break ws;
            }
        }
    });
    // A WebTransport session, joined.
    let (port, hash) = rt.block_on(connect_info(bridge.http));
    let (session, mut bodies, reader) = rt.block_on(async {
        let session = webtransport_connect(port, hash).await;
        let mut control = session.open_uni().await.unwrap();
        control.write_all(&[Channel::Control as u8]).await.unwrap();
        control
            .write_all(&codec::encode_frame(&hello("wt-browser")))
            .await
            .unwrap();
        let (mut bodies, reader) = read_server_streams(&session);
        loop {
            let body = tokio::time::timeout(WAIT, bodies.recv())
                .await
                .expect("a message in time")
                .expect("the session is open");
            if matches!(codec::decode_server(&body), Ok(ServerMsg::Welcome { .. })) {
                break;
            }
        }
        (session, bodies, reader)
    });
    let ws_end = rt.spawn(websocket_end(ws));
    let wt_end = rt.spawn(async move {
        let mut close_message = false;
        let ended = loop {
            tokio::select! {
                body = bodies.recv() => match body {
                    Some(body) => {
                        if let Ok(ServerMsg::Close { reason, .. }) = codec::decode_server(&body) {
                            assert_eq!(reason, CloseReason::ServerShutdown);
                            close_message = true;
                        }
                    }
                    None => break session.closed().await,
                },
                e = session.closed() => break e,
            }
        };
        reader.abort();
        (close_message, ended)
    });

    relay.shutdown();

    let (ws_saw_close, ws_close) = rt.block_on(ws_end).unwrap();
    assert!(
        ws_saw_close,
        "the relay's Close message reached the WebSocket"
    );
    let (code, reason) = ws_close.expect("a close frame");
    assert_eq!(code, ws_close_code(CloseReason::ServerShutdown));
    assert!(reason.contains("shut"), "{reason}");

    let (wt_saw_close, ended) = rt
        .block_on(async { tokio::time::timeout(WAIT, wt_end).await })
        .expect("the WebTransport session ends")
        .unwrap();
    assert!(
        wt_saw_close,
        "the relay's Close message reached the session"
    );
    match ended {
        web_transport_quinn::SessionError::WebTransportError(
            web_transport_quinn::WebTransportError::Closed(code, reason),
        ) => {
            assert_eq!(
                code as u64,
                close_code(CloseReason::ServerShutdown).into_inner()
            );
            assert!(reason.contains("shut"), "{reason}");
        }
        other => panic!("the session ended without the relay's close: {other:?}"),
    }
}
