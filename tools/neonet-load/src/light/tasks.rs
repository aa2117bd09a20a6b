//! The light client over quinn's own driver (`--light-driver tasks`): one tokio task per
//! client around a [`LightCore`] and its QUIC connection, plus quinn's connection driver and
//! neonet's stream reader and writer tasks (which sleep unless a frame moves). This is the
//! transport a real client has (`neonet::quic`'s `ChannelWriters` and `accept_streams` over
//! quinn); the single event loop ([`super::single_loop`]) is the cheaper default.
//!
//! The task wakes for a datagram, a frame, or its one timer ([`LightSession::next_wake`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use neonet::quic::{self, ChannelWriters, StreamEvent};
use neonet_proto::client::ClientTransmit;
use neonet_proto::wire::codec::{self, FrameDecoder};
use neonet_proto::wire::msg::CloseReason;
use neonet_proto::Time;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::core::{LightCore, LightState};
use super::session::LightSession;
use crate::driver::{ClientOutcome, ClientPlan, CONNECT_TIMEOUT};
use crate::run::LiveCounters;

/// Stream events queued between neonet's stream readers and the light client's task: 64.
/// Frames are rare for a light client (pongs, answers, others' chat); a full queue holds the
/// readers back, and QUIC's flow control the relay.
const STREAM_EVENTS_QUEUE: usize = 64;

/// One light client, from connect until `stop` turns true, on `endpoint` when given (shared). Fails (an unexpected failure) when
/// it cannot join; a session that ends early is returned with `disconnected`.
pub async fn light_client_task(
    plan: ClientPlan,
    endpoint: Option<quinn::Endpoint>,
    live: Arc<LiveCounters>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<ClientOutcome> {
    let started = Instant::now();
    let conn = tokio::select! {
        r = connect(plan.addr, &plan, endpoint) => r.with_context(|| format!("client {} connecting to {}", plan.id, plan.addr))?,
        _ = stop.wait_for(|s| *s) => anyhow::bail!("client {}: the run ended before it joined", plan.id),
    };
    let now_of = |at: Instant| Time(at.saturating_duration_since(started).as_micros() as u64);
    let mut core = LightCore::new(
        format!("load{}", plan.id),
        plan.token.clone(),
        now_of(Instant::now()),
    );
    let (tx, mut rx) = mpsc::channel::<StreamEvent>(STREAM_EVENTS_QUEUE);
    let readers = tokio::spawn(quic::accept_streams(
        conn.clone(),
        FrameDecoder::for_server_channel,
        tx,
        |e| e,
    ));
    let writers = ChannelWriters::spawn(&conn);
    flush(&mut core, &conn, &writers);

    // Join: frames until the snapshot, within the bound a full client has.
    let join_deadline = started + CONNECT_TIMEOUT;
    while *core.state() == LightState::Joining {
        let timer = core
            .poll_timeout()
            .map_or(join_deadline, |t| started + Duration::from_micros(t.0))
            .min(join_deadline);
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => frames(&mut core, ev, now_of(Instant::now())),
                None => core.handle_disconnect(CloseReason::Timeout, "connection ended".into()),
            },
            _ = tokio::time::sleep_until(timer) => {
                if Instant::now() >= join_deadline {
                    readers.abort();
                    anyhow::bail!("client {} joining {}: no snapshot within {CONNECT_TIMEOUT:?}", plan.id, plan.addr);
                }
                core.handle_timeout(now_of(Instant::now()));
            }
            _ = stop.wait_for(|s| *s) => {
                readers.abort();
                anyhow::bail!("client {}: the run ended before it joined", plan.id);
            }
        }
        flush(&mut core, &conn, &writers);
    }
    if let LightState::Closed { reason, detail } = core.state() {
        readers.abort();
        anyhow::bail!(
            "client {} joining {}: {reason} ({detail})",
            plan.id,
            plan.addr
        );
    }
    let mut s = LightSession::joined(&mut core, &plan, &live, started, Instant::now());
    loop {
        let wake = s.next_wake(&core);
        tokio::select! {
            d = conn.read_datagram() => match d {
                Ok(d) => s.datagram(&mut core, &d, now_of(Instant::now())),
                Err(e) => core.handle_disconnect(CloseReason::Timeout, e.to_string()),
            },
            ev = rx.recv() => match ev {
                Some(ev) => frames(&mut core, ev, now_of(Instant::now())),
                None => core.handle_disconnect(CloseReason::Timeout, "connection ended".into()),
            },
            _ = tokio::time::sleep_until(wake) => {
                if s.wake(&mut core, &plan, &live, Instant::now()) {
                    s.live_bytes(&live, &conn.stats());
                }
            }
            _ = stop.changed() => {}
        }
        if !s.take_events(&mut core, &live) || *stop.borrow() {
            break;
        }
        flush(&mut core, &conn, &writers);
    }
    let outcome = s.finish(&core, &live, &conn.stats());
    if !outcome.disconnected {
        core.leave();
        flush(&mut core, &conn, &writers);
        writers.finish().await;
        let _ = tokio::time::timeout(quic::CLOSE_FLUSH_TIMEOUT, conn.closed()).await;
        conn.close(quic::close_code(CloseReason::ClientLeft), b"");
    }
    readers.abort();
    Ok(outcome)
}

/// The QUIC handshake, on `endpoint` (shared with other light clients: `--light-share`) or on an
/// endpoint (and UDP socket) of the client's own, as a full client's.
async fn connect(
    addr: SocketAddr,
    plan: &ClientPlan,
    endpoint: Option<quinn::Endpoint>,
) -> anyhow::Result<quinn::Connection> {
    let config = quic::client_config(
        &plan.trust,
        Duration::from_millis(quic::IDLE_TIMEOUT_MS_DEFAULT),
    )?;
    let endpoint = match endpoint {
        Some(e) => e,
        None => quic::client_endpoint(addr)?,
    };
    let connecting = endpoint.connect_with(config, addr, neonet::tls::DEFAULT_SERVER_NAME)?;
    Ok(tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .context("QUIC handshake timed out")??)
}

/// Sends what the core queued.
fn flush(core: &mut LightCore, conn: &quinn::Connection, writers: &ChannelWriters) {
    while let Some(t) = core.poll_transmit() {
        match t {
            ClientTransmit::Frame { channel, frame } => {
                if let Err(e) = writers.try_send(channel, &frame) {
                    core.handle_disconnect(CloseReason::Timeout, e.to_string());
                }
            }
            ClientTransmit::Datagram(d) => {
                let _ = conn.send_datagram(Bytes::from(d));
            }
        }
    }
}

/// Frames the stream readers read, to the core.
fn frames(core: &mut LightCore, ev: StreamEvent, now: Time) {
    match ev {
        StreamEvent::Frames { channel, frames } => {
            for body in codec::frames(&frames) {
                core.handle_frame(channel, body, now);
            }
        }
        StreamEvent::Error(e) => core.handle_disconnect(
            CloseReason::ProtocolViolation,
            format!("server stream: {e}"),
        ),
    }
}
