//! The browser transports over real sockets, driven from Rust so they are checked without a
//! browser too: a WebTransport session on the relay's QUIC port (HTTP/3, pinned by the hash
//! `/connect.json` publishes) and a WebSocket on its HTTP port join the same world as a native
//! client, chat with it and receive its motion as transform datagrams. Also: the WebSocket
//! origin check, and a slow WebSocket reader cut with a reason while others carry on.

mod common;

use std::time::Duration;

use common::browser::{chat, connect_info, hello, ws_connect, ws_frame};
use common::{expect, TestRelay, WAIT};
use futures_util::{SinkExt, StreamExt};
use neonet::client::ClientEvent;
use neonet::config::QuicDriver;
use neonet::proto::wire::codec;
use neonet::proto::wire::msg::{Channel, ClientMsg, ServerMsg};
use neonet::relay::websocket::{WS_CLOSE_OVERFLOW, WS_DATAGRAM};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// What a browser session saw: chat bodies, datagrams, how it ended.
#[derive(Debug, Default)]
struct Seen {
    chat: Vec<String>,
    datagrams: usize,
    welcomed: bool,
}

/// What arrives at a browser-like session, whatever its transport.
#[derive(Debug)]
enum Incoming {
    /// A reliable message (boxed: a snapshot is large, a datagram marker is nothing).
    Msg(Box<ServerMsg>),
    /// A transform datagram.
    Datagram,
}

/// The browser side of a conversation with a native client: once joined it says
/// `said`, and it runs until it heard `expected` and got `DATAGRAMS_MIN` datagrams (or `WAIT`
/// passed). Transport-neutral: `incoming` carries what arrived, `outgoing` what to send.
async fn converse(
    mut incoming: tokio::sync::mpsc::Receiver<Incoming>,
    outgoing: tokio::sync::mpsc::Sender<ClientMsg>,
    said: &str,
    expected: &str,
) -> Seen {
    outgoing.send(hello("browser")).await.unwrap();
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.datagrams < DATAGRAMS_MIN || !seen.chat.iter().any(|c| c == expected) {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, incoming.recv()).await else {
            break;
        };
        let Incoming::Msg(m) = m else {
            seen.datagrams += 1;
            continue;
        };
        match *m {
            ServerMsg::Welcome { .. } => seen.welcomed = true,
            ServerMsg::Snapshot(_) => outgoing.send(chat(said)).await.unwrap(),
            ServerMsg::ChatAdded(m) => seen.chat.push(m.body),
            _ => {}
        }
    }
    seen
}

/// Datagrams a browser session must receive while the native player walks.
const DATAGRAMS_MIN: usize = 10;

/// The native side (joined before the browser, so it hears the browser's chat live): waits for
/// the browser's chat, answers, walks (so the browser gets its
/// motion as datagrams), then checks what the browser saw.
fn native_side(
    relay: &TestRelay,
    native: neonet::client::Client,
    browser: tokio::task::JoinHandle<Seen>,
    said: &str,
) {
    expect(
        &native,
        "the browser's chat",
        |e| matches!(e, ClientEvent::Chat(m) if m.body == said),
    );
    native.send_chat("hello from native").unwrap();
    for _ in 0..60 {
        native.set_input(neonet::client::CharacterInput {
            move_z: 127,
            ..Default::default()
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = relay.runtime().block_on(browser).unwrap();
    assert!(seen.welcomed, "{seen:?}");
    assert!(
        seen.chat.iter().any(|c| c == "hello from native"),
        "{seen:?}"
    );
    assert!(
        seen.datagrams >= DATAGRAMS_MIN,
        "transform datagrams: {seen:?}"
    );
    native.close();
}

#[test]
fn a_websocket_session_joins_chats_with_a_native_client_and_receives_its_motion() {
    let relay = TestRelay::start();
    let http = relay.browser_http();
    let native = relay.client("native");
    let said = "hello from the browser";
    let browser = relay.runtime().spawn(async move {
        let ws = ws_connect(http, Some(&format!("http://{http}")))
            .await
            .expect("the WebSocket opens");
        let (mut sink, mut stream) = ws.split();
        let (in_tx, in_rx) = tokio::sync::mpsc::channel(1024);
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<ClientMsg>(16);
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(ws_frame(&m)).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(Ok(Message::Binary(b))) = stream.next().await {
                let m = if b[0] == WS_DATAGRAM {
                    Incoming::Datagram
                } else {
                    Incoming::Msg(Box::new(
                        codec::decode_server(&b[1..]).expect("a server message"),
                    ))
                };
                if in_tx.send(m).await.is_err() {
                    return;
                }
            }
        });
        converse(in_rx, out_tx, said, "hello from native").await
    });
    native_side(&relay, native, browser, said);
}

#[test]
fn a_websocket_from_another_site_or_without_the_subprotocol_is_refused() {
    let relay = TestRelay::start();
    let http = relay.browser_http();
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
    // Far past the default quotas (19 MB of blueprints from one user, fast): lifted here, this
    // proves the send queue's bound (tests/adversarial_limits.rs proves the quotas).
    let mut world = neonet::proto::persist::World::default();
    world.settings.default_rank = neonet::proto::types::Rank::Builder;
    let relay = TestRelay::start_config(
        |c| {
            c.limits = neonet::limits::LimitsSection {
                blueprint_bytes_per_user_max: 64 << 20,
                world_bytes_max: 64 << 20,
                ..neonet::limits::LimitsSection::for_load()
            }
        },
        neonet::relay::RelayHooks {
            world,
            ..Default::default()
        },
    );
    let http = relay.browser_http();
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
    let http = relay.browser_http();
    let native = relay.client("native");
    let rt = relay.runtime();
    let (port, hash) = rt.block_on(connect_info(http));
    match common::quic_driver() {
        QuicDriver::Tasks => {
            assert_eq!(port, relay.addr.port(), "WebTransport shares the QUIC port")
        }
        // The single loop serves native QUIC alone; `/connect.json` names WebTransport's port.
        QuicDriver::Loop => assert_ne!(
            port,
            relay.addr.port(),
            "WebTransport has a port of its own"
        ),
    }
    let said = "hello over webtransport";
    let browser = rt.spawn(async move {
        let client = web_transport_quinn::ClientBuilder::new()
            .with_server_certificate_hashes(vec![hash])
            .expect("client");
        let url = url::Url::parse(&format!("https://127.0.0.1:{port}/neonet")).unwrap();
        let session = client.connect(url).await.expect("session");
        let (in_tx, in_rx) = tokio::sync::mpsc::channel(1024);
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<ClientMsg>(16);
        // One stream per channel, opened on first use, first byte the channel id.
        let writer = session.clone();
        tokio::spawn(async move {
            let mut streams = std::collections::HashMap::new();
            while let Some(m) = out_rx.recv().await {
                let ch = m.channel();
                if let std::collections::hash_map::Entry::Vacant(v) = streams.entry(ch as u8) {
                    let mut s = writer.open_uni().await.unwrap();
                    s.write_all(&[ch as u8]).await.unwrap();
                    v.insert(s);
                }
                let s = streams.get_mut(&(ch as u8)).unwrap();
                s.write_all(&codec::encode_frame(&m)).await.unwrap();
            }
        });
        let streams_tx = in_tx.clone();
        let reader = session.clone();
        tokio::spawn(async move {
            while let Ok(mut recv) = reader.accept_uni().await {
                let tx = streams_tx.clone();
                tokio::spawn(async move {
                    let mut dec = codec::FrameDecoder::for_server_channel(Channel::World);
                    let mut first = true;
                    while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
                        let bytes = if first {
                            &chunk.bytes[1..]
                        } else {
                            &chunk.bytes[..]
                        };
                        first = false;
                        dec.push(bytes);
                        while let Ok(Some(body)) = dec.next_frame() {
                            let m = codec::decode_server(&body).expect("a server message");
                            if tx.send(Incoming::Msg(Box::new(m))).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        tokio::spawn(async move {
            while session.read_datagram().await.is_ok() {
                if in_tx.send(Incoming::Datagram).await.is_err() {
                    return;
                }
            }
        });
        converse(in_rx, out_tx, said, "hello from native").await
    });
    native_side(&relay, native, browser, said);
}
