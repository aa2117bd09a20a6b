//! Browser sessions driven from Rust, shared by the tests of the relay's browser transports and
//! of the bridge: a WebSocket (`/ws`) and a WebTransport session (pinned by the hash
//! `/connect.json` publishes) that join, chat once the snapshot is in, and count the transform
//! datagrams they receive.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use neonet::client::{Client, ClientEvent};
use neonet::proto::wire::codec;
use neonet::proto::wire::msg::{Channel, ClientMsg, ServerMsg, PROTOCOL_VERSION};
use neonet::relay::websocket::{WS_DATAGRAM, WS_PROTOCOL};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::{expect, WAIT};

/// A client WebSocket as `tokio_tungstenite` gives it.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the native client says to the browser sessions.
pub const NATIVE_SAYS: &str = "hello from native";

/// Transform datagrams a browser session must receive to count the native client's motion as
/// seen.
pub const DATAGRAMS_MIN: usize = 10;

/// `Hello` from a browser named `name`.
pub fn hello(name: &str) -> ClientMsg {
    ClientMsg::Hello {
        protocol_version: PROTOCOL_VERSION,
        name: name.into(),
        token: None,
    }
}

/// A chat message.
pub fn chat(body: &str) -> ClientMsg {
    ClientMsg::Chat {
        req: neonet::proto::types::ReqId(1),
        body: body.into(),
    }
}

/// A WebSocket message carrying one reliable message.
pub fn ws_frame(msg: &ClientMsg) -> Message {
    let mut m = vec![msg.channel() as u8];
    m.extend_from_slice(&codec::encode(msg));
    Message::Binary(Bytes::from(m))
}

/// Opens `ws://{http}/ws` with the subprotocol and, if given, an `Origin`.
pub async fn ws_connect(
    http: SocketAddr,
    origin: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
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

/// What a browser session saw: chat bodies, datagrams, whether it was welcomed.
#[derive(Debug, Default)]
pub struct Seen {
    /// Chat bodies, in order.
    pub chat: Vec<String>,
    /// Transform datagrams received.
    pub datagrams: usize,
    /// `Welcome` arrived.
    pub welcomed: bool,
}

impl Seen {
    /// The native client's chat and enough of its motion arrived.
    pub fn saw_native(&self) -> bool {
        self.chat.iter().any(|c| c == NATIVE_SAYS) && self.datagrams >= DATAGRAMS_MIN
    }

    /// Fails the test unless the session was welcomed, got the native client's chat, and at
    /// least [`DATAGRAMS_MIN`] datagrams (`datagrams` says which kind, for the message).
    pub fn assert_saw_native(&self, datagrams: &str) {
        assert!(self.welcomed, "{self:?}");
        assert!(self.chat.iter().any(|c| c == NATIVE_SAYS), "{self:?}");
        assert!(self.datagrams >= DATAGRAMS_MIN, "{datagrams}: {self:?}");
    }

    /// Handles one server message; `true` when the snapshot is in and it is time to chat.
    fn on_message(&mut self, msg: ServerMsg) -> bool {
        match msg {
            ServerMsg::Welcome { .. } => self.welcomed = true,
            ServerMsg::Snapshot(_) => return true,
            ServerMsg::ChatAdded(m) => self.chat.push(m.body),
            _ => {}
        }
        false
    }
}

/// A WebSocket session on `http` as `name` that says `says` once joined, until it has seen the
/// native client (or [`WAIT`] passes).
pub async fn websocket_session(http: SocketAddr, name: &str, says: &str) -> Seen {
    let mut ws = ws_connect(http, Some(&format!("http://{http}")))
        .await
        .expect("the WebSocket opens");
    ws.send(ws_frame(&hello(name))).await.unwrap();
    let mut seen = Seen::default();
    let mut said = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline && !seen.saw_native() {
        let Ok(Some(Ok(m))) = tokio::time::timeout(WAIT, ws.next()).await else {
            break;
        };
        let Message::Binary(b) = m else { continue };
        if b[0] == WS_DATAGRAM {
            seen.datagrams += 1;
            continue;
        }
        let msg = codec::decode_server(&b[1..]).expect("a server message");
        if seen.on_message(msg) && !said {
            ws.send(ws_frame(&chat(says))).await.unwrap();
            said = true;
        }
    }
    seen
}

/// A WebTransport session to `https://127.0.0.1:{port}/neonet` pinning `hash`.
pub async fn webtransport_connect(port: u16, hash: Vec<u8>) -> web_transport_quinn::Session {
    let client = web_transport_quinn::ClientBuilder::new()
        .with_server_certificate_hashes(vec![hash])
        .expect("client");
    let url = url::Url::parse(&format!("https://127.0.0.1:{port}/neonet")).unwrap();
    client.connect(url).await.expect("session")
}

/// Reads every stream the server opens, sending each frame's body to the returned receiver
/// (with the task reading them).
pub fn read_server_streams(
    session: &web_transport_quinn::Session,
) -> (
    tokio::sync::mpsc::Receiver<Vec<u8>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let session = session.clone();
    let reader = tokio::spawn(async move {
        while let Ok(mut recv) = session.accept_uni().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut dec = codec::FrameDecoder::for_server_channel(Channel::World);
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
    });
    (rx, reader)
}

/// A WebTransport session as `name` that says `says` once joined, until it has seen the
/// native client (or [`WAIT`] passes).
pub async fn webtransport_session(port: u16, hash: Vec<u8>, name: &str, says: &str) -> Seen {
    let session = webtransport_connect(port, hash).await;
    let mut control = session.open_uni().await.unwrap();
    control.write_all(&[Channel::Control as u8]).await.unwrap();
    control
        .write_all(&codec::encode_frame(&hello(name)))
        .await
        .unwrap();
    let mut chat_stream = session.open_uni().await.unwrap();
    chat_stream.write_all(&[Channel::Chat as u8]).await.unwrap();
    let mut seen = Seen::default();
    let mut said = false;
    let (mut rx, reader) = read_server_streams(&session);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.saw_native() {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            body = rx.recv() => {
                let Some(body) = body else { break };
                let msg = codec::decode_server(&body).expect("a server message");
                if seen.on_message(msg) && !said {
                    chat_stream.write_all(&codec::encode_frame(&chat(says))).await.unwrap();
                    said = true;
                }
            }
            d = session.read_datagram() => {
                if d.is_ok() {
                    seen.datagrams += 1;
                }
            }
        }
    }
    reader.abort();
    seen
}

/// The native side of the sessions above: waits for the browser's `says`, answers with
/// [`NATIVE_SAYS`] and walks for a little over a second, so the browser gets its motion.
pub fn native_hears_answers_and_walks(native: &Client, says: &str) {
    expect(
        native,
        "the browser's chat",
        |e| matches!(e, ClientEvent::Chat(m) if m.body == says),
    );
    native.send_chat(NATIVE_SAYS).unwrap();
    for _ in 0..60 {
        native.set_input(neonet::client::CharacterInput {
            move_z: 127,
            ..Default::default()
        });
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The WebTransport port and certificate hash from `/connect.json`.
pub async fn connect_info(http: SocketAddr) -> (u16, Vec<u8>) {
    let body = http_get(http, "/connect.json").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let port = v["webtransport"]["port"].as_u64().unwrap() as u16;
    let hex = v["webtransport"]["cert_sha256"].as_str().unwrap();
    let hash = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    (port, hash)
}

/// A plain HTTP/1.1 GET over a TCP stream (no HTTP client crate needed for one request): the
/// body.
pub async fn http_get(http: SocketAddr, path: &str) -> String {
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
