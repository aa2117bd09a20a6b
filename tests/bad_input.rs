//! Bad input over a real QUIC socket: each misbehaving connection is closed with a clear reason
//! while a well-behaved client connected at the same time carries on chatting.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{expect, TestRelay, WAIT};
use neonet::client::{Client, ClientEvent};
use neonet::proto::wire::codec::{self, FrameDecoder};
use neonet::proto::wire::limits::{FRAME_BYTES_MAX, SMALL_FRAME_BYTES_MAX};
use neonet::proto::wire::msg::{
    Channel, ClientMsg, CloseReason, ServerMsg, ALPN, PROTOCOL_VERSION,
};
use neonet::quic;
use neonet::tls::{self, Trust};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, ConnectionError};

/// How a raw connection ended.
#[derive(Debug)]
struct Ended {
    /// The reason from the application close code.
    reason: Option<CloseReason>,
    /// The close reason text.
    text: String,
    /// The `Close` message read from the control stream, if it arrived.
    close_msg: Option<(CloseReason, String)>,
}

async fn raw_connect(
    addr: SocketAddr,
    relay: &TestRelay,
    alpn: &[&[u8]],
) -> Result<Connection, ConnectionError> {
    raw_connect_with(addr, relay, alpn, quinn::TransportConfig::default()).await
}

async fn raw_connect_with(
    addr: SocketAddr,
    relay: &TestRelay,
    alpn: &[&[u8]],
    transport: quinn::TransportConfig,
) -> Result<Connection, ConnectionError> {
    let mut crypto = tls::client_crypto(&Trust::Sha256(relay.fingerprint)).unwrap();
    crypto.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let mut cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto).unwrap()));
    cfg.transport_config(Arc::new(transport));
    let endpoint = quic::client_endpoint(addr).unwrap();
    endpoint.connect_with(cfg, addr, "localhost").unwrap().await
}

/// Opens a stream for `channel_byte` and writes `bytes` on it (without finishing it).
async fn send_raw(conn: &Connection, channel_byte: u8, bytes: &[u8]) -> quinn::SendStream {
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&[channel_byte]).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

/// Reads the server's control stream for a `Close` message until the connection ends.
async fn ended(conn: Connection) -> Ended {
    let reader = {
        let conn = conn.clone();
        async move {
            let mut close_msg = None;
            while let Ok(mut recv) = conn.accept_uni().await {
                let mut first = [0u8; 1];
                if recv.read_exact(&mut first).await.is_err() || first[0] != Channel::Control as u8
                {
                    continue;
                }
                let mut dec = FrameDecoder::with_default_limit();
                while let Ok(Some(chunk)) = recv.read_chunk(4096, true).await {
                    dec.push(&chunk.bytes);
                    while let Ok(Some(body)) = dec.next_frame() {
                        if let Ok(ServerMsg::Close { reason, detail }) = codec::decode_server(&body)
                        {
                            close_msg = Some((reason, detail));
                        }
                    }
                }
                if close_msg.is_some() {
                    break;
                }
            }
            close_msg
        }
    };
    let close_msg = tokio::time::timeout(WAIT, reader)
        .await
        .expect("the server closes in time");
    let why = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("connection closes");
    match why {
        ConnectionError::ApplicationClosed(c) => Ended {
            reason: quic::close_reason_of(c.error_code.into_inner()),
            text: String::from_utf8_lossy(&c.reason).into_owned(),
            close_msg,
        },
        other => panic!("expected an application close, got {other}"),
    }
}

fn hello(version: u16, name: &str) -> Vec<u8> {
    codec::encode_frame(&ClientMsg::Hello {
        protocol_version: version,
        name: name.into(),
        token: None,
    })
}

/// Checks the good client can still chat.
fn still_chatting(good: &Client, n: u32) {
    let body = format!("still here {n}");
    good.send_chat(body.clone()).unwrap();
    expect(
        good,
        "own chat back",
        |e| matches!(e, ClientEvent::Chat(m) if m.body == body),
    );
}

#[test]
fn misbehaving_connections_are_closed_with_a_reason_and_others_carry_on() {
    let relay = TestRelay::start();
    let good = relay.client("good");
    let addr = relay.addr;
    let rt = relay.runtime();

    // 1. Garbage after a valid hello: the session ends, the good client sees it leave.
    let e = rt.block_on(async {
        let conn = raw_connect(addr, &relay, &[ALPN]).await.unwrap();
        let mut bytes = hello(PROTOCOL_VERSION, "mallory");
        // A chat message whose body is noise.
        bytes.extend_from_slice(&12u32.to_le_bytes());
        bytes.extend_from_slice(&[
            3, 0x9f, 0xff, 0x13, 0x37, 0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, 0x80,
        ]);
        let _s = send_raw(&conn, Channel::Control as u8, &bytes).await;
        ended(conn).await
    });
    assert_eq!(e.reason, Some(CloseReason::ProtocolViolation), "{e:?}");
    assert!(e.text.starts_with("protocol violation"), "{e:?}");
    let mallory = match expect(&good, "mallory's arrival", |e| {
        matches!(e, ClientEvent::EntityAdded(_))
    }) {
        ClientEvent::EntityAdded(id) => id,
        _ => unreachable!(),
    };
    expect(&good, "mallory's removal", |e| {
        *e == ClientEvent::EntityRemoved(mallory)
    });
    still_chatting(&good, 1);

    // 2. An oversize frame (declared length over the limit).
    let e = rt.block_on(async {
        let conn = raw_connect(addr, &relay, &[ALPN]).await.unwrap();
        let len = (FRAME_BYTES_MAX as u32 + 1).to_le_bytes();
        let _s = send_raw(&conn, Channel::Control as u8, &len).await;
        ended(conn).await
    });
    assert_eq!(e.reason, Some(CloseReason::ProtocolViolation), "{e:?}");
    assert!(e.text.contains("exceeds"), "{e:?}");
    still_chatting(&good, 2);

    // 3. A wrong protocol version in hello.
    let e = rt.block_on(async {
        let conn = raw_connect(addr, &relay, &[ALPN]).await.unwrap();
        let _s = send_raw(
            &conn,
            Channel::Control as u8,
            &hello(PROTOCOL_VERSION + 98, "future"),
        )
        .await;
        ended(conn).await
    });
    assert_eq!(e.reason, Some(CloseReason::VersionMismatch), "{e:?}");
    assert!(e.text.contains("version"), "{e:?}");
    let (reason, detail) = e
        .close_msg
        .expect("the Close message is flushed before the close");
    assert_eq!(reason, CloseReason::VersionMismatch);
    assert!(
        detail.contains(&format!("{}", PROTOCOL_VERSION + 98)),
        "{detail}"
    );
    still_chatting(&good, 3);

    // 4. An unknown message tag (varint 200).
    let e = rt.block_on(async {
        let conn = raw_connect(addr, &relay, &[ALPN]).await.unwrap();
        let mut bytes = 2u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0xc8, 0x01]);
        let _s = send_raw(&conn, Channel::Control as u8, &bytes).await;
        ended(conn).await
    });
    assert_eq!(e.reason, Some(CloseReason::ProtocolViolation), "{e:?}");
    assert!(e.text.contains("unknown message tag 200"), "{e:?}");
    still_chatting(&good, 4);

    // 5. An unknown channel id on a stream.
    let e = rt.block_on(async {
        let conn = raw_connect(addr, &relay, &[ALPN]).await.unwrap();
        let _s = send_raw(&conn, 9, &hello(PROTOCOL_VERSION, "x")).await;
        ended(conn).await
    });
    assert_eq!(e.reason, Some(CloseReason::ProtocolViolation), "{e:?}");
    assert!(e.text.contains("unknown channel"), "{e:?}");
    still_chatting(&good, 5);

    // 6. A message on the wrong channel (hello on the chat stream).
    let e = rt.block_on(async {
        let conn = raw_connect(addr, &relay, &[ALPN]).await.unwrap();
        let _s = send_raw(&conn, Channel::Chat as u8, &hello(PROTOCOL_VERSION, "x")).await;
        ended(conn).await
    });
    assert_eq!(e.reason, Some(CloseReason::ProtocolViolation), "{e:?}");
    still_chatting(&good, 6);

    good.close();
}

/// PROTOCOL.md promises 64 KiB frames on the control, chat and events streams (1 MiB only on
/// the world stream): a joined client that sends a chat frame one byte over is closed with a
/// reason that says so, and a client chatting beside it carries on.
#[test]
fn a_chat_frame_one_byte_over_64_kib_closes_that_connection_and_others_carry_on() {
    let relay = TestRelay::start();
    let good = relay.client("good");
    let addr = relay.addr;
    let rt = relay.runtime();
    let e = rt.block_on(async {
        let conn = raw_connect(addr, &relay, &[ALPN]).await.unwrap();
        let _hello = send_raw(
            &conn,
            Channel::Control as u8,
            &hello(PROTOCOL_VERSION, "big"),
        )
        .await;
        // A chat-stream frame of 64 KiB + 1 byte (the limit is checked on the declared length,
        // before the body is read).
        let body_len = SMALL_FRAME_BYTES_MAX + 1;
        let mut frame = (body_len as u32).to_le_bytes().to_vec();
        frame.resize(4 + body_len, b'a');
        let _chat = send_raw(&conn, Channel::Chat as u8, &frame).await;
        ended(conn).await
    });
    assert_eq!(e.reason, Some(CloseReason::ProtocolViolation), "{e:?}");
    assert!(
        e.text.contains("exceeds") && e.text.contains(&SMALL_FRAME_BYTES_MAX.to_string()),
        "the reason names the limit: {e:?}"
    );
    let (reason, detail) = e.close_msg.expect("the Close message arrives first");
    assert_eq!(reason, CloseReason::ProtocolViolation);
    assert!(detail.contains("exceeds"), "{detail}");
    still_chatting(&good, 1);
    still_chatting(&good, 2);
    good.close();
}

#[test]
fn a_client_without_the_alpn_is_refused() {
    let relay = TestRelay::start();
    let good = relay.client("good");
    let addr = relay.addr;
    for alpn in [&[][..], &[&b"h3"[..]][..]] {
        let r = relay.runtime().block_on(raw_connect(addr, &relay, alpn));
        let err = r.expect_err("the handshake must fail");
        assert!(
            matches!(
                err,
                ConnectionError::ConnectionClosed(_) | ConnectionError::TransportError(_)
            ),
            "{err}"
        );
    }
    still_chatting(&good, 1);
}

/// A client that floods pings and never reads the answers: its reads are throttled by the
/// bounded queues, and once its own send queue overflows it is closed, while a well-behaved
/// client keeps chatting throughout.
#[test]
fn a_flooding_client_that_never_reads_is_cut_off_and_others_carry_on() {
    let relay = TestRelay::start();
    let good = relay.client("good");
    let addr = relay.addr;
    let mut pings = hello(PROTOCOL_VERSION, "flood");
    for t in 0..300_000u64 {
        pings.extend_from_slice(&codec::encode_frame(&ClientMsg::Ping { client_time_us: t }));
    }
    let rt = relay.runtime();
    // Small receive windows: the relay can have little unread data in flight to it, so its
    // pongs pile up in its own bounded send queue (and the flooder's quinn never has to buffer
    // megabytes it does not read).
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(16 * 1024));
    transport.receive_window(quinn::VarInt::from_u32(64 * 1024));
    let conn = rt
        .block_on(raw_connect_with(addr, &relay, &[ALPN], transport))
        .unwrap();
    let flood = {
        let conn = conn.clone();
        rt.spawn(async move {
            let mut s = conn.open_uni().await.unwrap();
            let _ = s.write_all(&[Channel::Control as u8]).await;
            let _ = s.write_all(&pings).await;
        })
    };
    for n in 0..3 {
        still_chatting(&good, n);
    }
    let why = rt
        .block_on(async { tokio::time::timeout(WAIT * 3, conn.closed()).await })
        .expect("the flooder is cut off");
    // Either limit may fire first: the rate limit (Flooding) or its own unread answers
    // overflowing its send queue.
    match why {
        ConnectionError::ApplicationClosed(c) => {
            let code = c.error_code.into_inner();
            let text = String::from_utf8_lossy(&c.reason);
            let flooding = quic::close_code(CloseReason::Flooding).into_inner();
            assert!(
                (code == quic::CLOSE_CODE_OVERFLOW as u64 && text.contains("send queue full"))
                    || code == flooding,
                "{c:?}"
            );
        }
        other => panic!("expected an application close, got {other}"),
    }
    flood.abort();
    still_chatting(&good, 9);
}
