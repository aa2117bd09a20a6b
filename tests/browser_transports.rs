//! The browser transports over real sockets, driven from Rust so they are checked without a
//! browser too: a WebTransport session on the relay's QUIC port (HTTP/3, pinned by the hash
//! `/connect.json` publishes) and a WebSocket on its HTTP port join the same world as a native
//! client, chat with it and receive its motion as transform datagrams. Also: the WebSocket
//! origin check, and a slow WebSocket reader cut with a reason while others carry on.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{expect, TestRelay, WAIT};
use futures_util::{SinkExt, StreamExt};
use neonet::client::ClientEvent;
use neonet::proto::wire::codec;
use neonet::proto::wire::msg::{Channel, ClientMsg, ServerMsg, PROTOCOL_VERSION};
use neonet::relay::websocket::{WS_CLOSE_OVERFLOW, WS_DATAGRAM, WS_PROTOCOL};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Starts the browser-facing HTTP server for `relay` on a free loopback port.
fn http(relay: &TestRelay) -> SocketAddr {
    let metrics = Arc::new(neonet::metrics::Metrics::new(Default::default()));
    let access = relay.handle().browser_access();
    relay.runtime().block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(neonet::http::serve_with_browsers(
            listener,
            metrics,
            access,
            std::future::pending(),
        ));
        addr
    })
}

fn hello(name: &str) -> ClientMsg {
    ClientMsg::Hello {
        protocol_version: PROTOCOL_VERSION,
        name: name.into(),
        token: None,
    }
}

fn chat(body: &str) -> ClientMsg {
    ClientMsg::Chat {
        req: neonet::proto::types::ReqId(1),
        body: body.into(),
    }
}

/// A WebSocket message carrying one reliable message.
fn ws_frame(msg: &ClientMsg) -> Message {
    let mut m = vec![msg.channel() as u8];
    m.extend_from_slice(&codec::encode(msg));
    Message::Binary(Bytes::from(m))
}

async fn ws_connect(
    http: SocketAddr,
    origin: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let mut req = format!("ws://{http}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", WS_PROTOCOL.parse().unwrap());
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

/// What a browser session saw: chat bodies, datagrams, how it ended.
#[derive(Debug, Default)]
struct Seen {
    chat: Vec<String>,
    datagrams: usize,
    welcomed: bool,
}

#[test]
fn a_websocket_session_joins_chats_with_a_native_client_and_receives_its_motion() {
    let relay = TestRelay::start();
    let http = http(&relay);
    let native = relay.client("native");
    let rt = relay.runtime();
    let ws_task = rt.spawn(async move {
        let mut ws = ws_connect(http, Some(&format!("http://{http}")))
            .await
            .expect("the WebSocket opens");
        ws.send(ws_frame(&hello("browser"))).await.unwrap();
        let mut seen = Seen::default();
        let mut said = false;
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            let Ok(Some(Ok(m))) = tokio::time::timeout(WAIT, ws.next()).await else {
                break;
            };
            let Message::Binary(b) = m else { continue };
            if b[0] == WS_DATAGRAM {
                seen.datagrams += 1;
                continue;
            }
            match codec::decode_server(&b[1..]).expect("a server message") {
                ServerMsg::Welcome { .. } => seen.welcomed = true,
                ServerMsg::Snapshot(_) if !said => {
                    ws.send(ws_frame(&chat("hello from the browser")))
                        .await
                        .unwrap();
                    said = true;
                }
                ServerMsg::ChatAdded(m) => seen.chat.push(m.body),
                _ => {}
            }
            if seen.chat.iter().any(|c| c == "hello from native") && seen.datagrams >= 10 {
                break;
            }
        }
        seen
    });
    expect(
        &native,
        "the browser's chat",
        |e| matches!(e, ClientEvent::Chat(m) if m.body == "hello from the browser"),
    );
    native.send_chat("hello from native").unwrap();
    // The native player walks, so the browser gets its motion as datagrams over the socket.
    for _ in 0..60 {
        native.set_input(neonet::client::CharacterInput {
            move_z: 127,
            ..Default::default()
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = rt.block_on(ws_task).unwrap();
    assert!(seen.welcomed, "{seen:?}");
    assert!(
        seen.chat.iter().any(|c| c == "hello from native"),
        "{seen:?}"
    );
    assert!(
        seen.datagrams >= 10,
        "transform datagrams over the socket: {seen:?}"
    );
    native.close();
}

#[test]
fn a_websocket_from_another_site_or_without_the_subprotocol_is_refused() {
    let relay = TestRelay::start();
    let http = http(&relay);
    relay.runtime().block_on(async {
        let evil = ws_connect(http, Some("http://evil.example")).await;
        assert!(evil.is_err(), "cross-origin refused");
        let mut req = format!("ws://{http}/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("Origin", format!("http://{http}").parse().unwrap());
        assert!(
            tokio_tungstenite::connect_async(req).await.is_err(),
            "no subprotocol refused"
        );
    });
}

/// A browser that never reads its socket while the world is busy is cut with a reason once its
/// reliable budget is spent, and a native client carries on.
#[test]
fn a_slow_websocket_reader_is_cut_with_a_reason_and_others_carry_on() {
    let relay = TestRelay::start();
    let http = http(&relay);
    let native = relay.client("native");
    let rt = relay.runtime();
    // A socket with a tiny receive buffer that joins, then stops reading.
    let sleeper = rt.block_on(async {
        let mut ws = ws_connect(http, None).await.unwrap();
        ws.send(ws_frame(&hello("sleeper"))).await.unwrap();
        ws
    });
    // Big blueprints broadcast to everyone fill the sleeper's reliable queue.
    let props = neonet::proto::types::Bytes(vec![7; 400 * 1024]);
    // One at a time (each acknowledged), so the native client's own queue never fills: 48 of
    // 400 KiB are 19 MB, past what loopback TCP buffers absorb (a few MB) plus the sleeper's
    // 4 MiB reliable budget.
    for i in 0..48 {
        let req = native
            .add_blueprint(neonet::proto::types::Blueprint {
                id: neonet::proto::types::BlueprintId(format!("big{i}")),
                version: 1,
                props: props.clone(),
                ..Default::default()
            })
            .unwrap();
        expect(&native, "the blueprint acknowledged", |e| {
            *e == ClientEvent::Acked(req)
        });
    }
    let closed = rt.block_on(async move {
        let mut ws = sleeper;
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Now read what made it: the stream ends with the overflow close.
        let deadline = tokio::time::Instant::now() + WAIT * 3;
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(c))))) => return Some(c),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
        None
    });
    let close = closed.expect("the slow reader gets a close frame");
    assert_eq!(u16::from(close.code), WS_CLOSE_OVERFLOW, "{close:?}");
    assert!(close.reason.contains("reading too slowly"), "{close:?}");
    native.send_chat("still here").unwrap();
    expect(
        &native,
        "own chat",
        |e| matches!(e, ClientEvent::Chat(m) if m.body == "still here"),
    );
    native.close();
}

#[test]
fn a_webtransport_session_on_the_quic_port_joins_and_chats_with_a_native_client() {
    let relay = TestRelay::start();
    let http = http(&relay);
    let native = relay.client("native");
    let rt = relay.runtime();
    let (port, hash) = rt.block_on(body_info(http));
    assert_eq!(port, relay.addr.port(), "WebTransport shares the QUIC port");
    let wt = rt.spawn(async move {
        let client = web_transport_quinn::ClientBuilder::new()
            .with_server_certificate_hashes(vec![hash])
            .expect("client");
        let url = url::Url::parse(&format!("https://127.0.0.1:{port}/neonet")).unwrap();
        let session = client.connect(url).await.expect("session");
        let mut control = session.open_uni().await.unwrap();
        control.write_all(&[Channel::Control as u8]).await.unwrap();
        control
            .write_all(&codec::encode_frame(&hello("wt")))
            .await
            .unwrap();
        let mut chat_stream = session.open_uni().await.unwrap();
        chat_stream.write_all(&[Channel::Chat as u8]).await.unwrap();
        let mut seen = Seen::default();
        let mut said = false;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        let reader = {
            let session = session.clone();
            tokio::spawn(async move {
                while let Ok(mut recv) = session.accept_uni().await {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let mut dec = neonet::proto::wire::codec::FrameDecoder::for_server_channel(
                            Channel::World,
                        );
                        let mut first = true;
                        while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
                            let mut bytes = &chunk.bytes[..];
                            if first {
                                bytes = &bytes[1..];
                                first = false;
                            }
                            dec.push(bytes);
                            while let Ok(Some(body)) = dec.next_frame() {
                                if tx.send(body).await.is_err() {
                                    return;
                                }
                            }
                        }
                    });
                }
            })
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                body = rx.recv() => {
                    let Some(body) = body else { break };
                    match codec::decode_server(&body).expect("a server message") {
                        ServerMsg::Welcome { .. } => seen.welcomed = true,
                        ServerMsg::Snapshot(_) if !said => {
                            chat_stream
                                .write_all(&codec::encode_frame(&chat("hello over webtransport")))
                                .await
                                .unwrap();
                            said = true;
                        }
                        ServerMsg::ChatAdded(m) => seen.chat.push(m.body),
                        _ => {}
                    }
                }
                d = session.read_datagram() => {
                    if d.is_ok() {
                        seen.datagrams += 1;
                    }
                }
            }
            if seen.chat.iter().any(|c| c == "hello from native") && seen.datagrams >= 10 {
                break;
            }
        }
        reader.abort();
        seen
    });
    expect(
        &native,
        "the WebTransport client's chat",
        |e| matches!(e, ClientEvent::Chat(m) if m.body == "hello over webtransport"),
    );
    native.send_chat("hello from native").unwrap();
    for _ in 0..60 {
        native.set_input(neonet::client::CharacterInput {
            move_z: 127,
            ..Default::default()
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = rt.block_on(wt).unwrap();
    assert!(seen.welcomed, "{seen:?}");
    assert!(
        seen.chat.iter().any(|c| c == "hello from native"),
        "{seen:?}"
    );
    assert!(seen.datagrams >= 10, "WebTransport datagrams: {seen:?}");
    native.close();
}

/// The WebTransport port and certificate hash from `/connect.json`.
async fn body_info(http: SocketAddr) -> (u16, Vec<u8>) {
    let body = reqwest_like_get(http, "/connect.json").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let port = v["webtransport"]["port"].as_u64().unwrap() as u16;
    let hex = v["webtransport"]["cert_sha256"].as_str().unwrap();
    let hash = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    (port, hash)
}

/// A plain HTTP/1.1 GET over a TCP stream (no HTTP client crate needed for one request).
async fn reqwest_like_get(http: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}
