//! [`LightCore`]: the light client's protocol, sans-IO (time is an argument, no sockets), so the
//! same code runs over real QUIC ([`super::single_loop`], [`super::tasks`]) and over a simulated
//! network (the test below, which checks that a relay sees it exactly as it sees a full client).
//!
//! What it does as [`neonet_proto::client::ClientCore`] does, with the protocol's own code:
//! - the handshake: `Hello` (or nothing more), then `Welcome` and `Snapshot` (whole, or its
//!   `SnapshotPiece`s reassembled as the full client does: a world past 64 KiB) decoded with the
//!   wire codec ([`codec::decode_server`]); frames out are encoded with [`codec::encode_frame`];
//! - clock sync (PROTOCOL.md 12.4): [`ClockSync`], bootstrapped by pings and their pongs, then
//!   fed by the clock echoes of the server datagrams (read by [`decode_server_header`]) that
//!   answer the upstream datagrams it stamps ([`ClockSync::poll_stamp`], kind `0x03`); from the
//!   first echo on, pings go only for liveness after [`PING_FALLBACK_SILENCE`] without an
//!   upstream datagram ([`fallback_ping_at`]); the prediction tick clock [`ClientTickClock`]
//!   decides when a client tick is due, with the sync's lead (the send placement that lets
//!   acknowledgements ride on datagrams);
//! - inputs and its own player: the protocol's own [`Predictor`] over the relay's movement model
//!   ([`KinematicCharacter`], configured by `Welcome`), as the full client runs it: the history of
//!   unacknowledged inputs, the gap filling and what an own-state blob acknowledges are the
//!   predictor's, so the input blobs ([`encode_inputs`]) are the same bytes; and the predicted
//!   position is what the walker steers from, as a full client's (steering from the position
//!   the server last sent instead lags a round trip and more behind: the players then swerve
//!   differently, and the relay sent a third of the bytes it sends full clients' players);
//! - the upstream datagram ([`encode_client_datagram_clocked`]) with the ack header of an
//!   [`AckTracker`], the receiver's own record of arrivals; what a client tick sends is the full
//!   client's [`UpstreamRule`] (no empty datagram from a client with nothing of its own to send,
//!   nothing for a player standing still once the server applied an input of that stillness),
//!   and which datagrams make an acknowledgement due ([`datagram_wants_ack`]) and the
//!   acknowledgement-only datagram a period after them are the full client's;
//! - server datagrams: only their header ([`decode_server_header`]), for the sequence number to
//!   acknowledge, the tick to time, the record count to weigh the latency with, the clock echo,
//!   and the own-state blob ([`decode_own_state`]) for what the server applied and where the
//!   player is.
//!
//! What it leaves out: decoding entity records (the bulk of a full client's receive work: one
//! cache miss per entity per datagram), the world mirror, interpolation, the visual smoothing
//! of corrections, reconnection, events beyond the answers to its own changes. One difference on the wire can follow: a full
//! client does not acknowledge a datagram one of whose records it could not decode (a delta
//! against a baseline it lacks, which happens only when a datagram races the removal of its
//! entity); the light client acknowledges every datagram whose header reads.

use std::collections::VecDeque;
use std::time::Duration;

use neonet_proto::client::{
    datagram_wants_ack, fallback_ping_at, ClientTransmit, TickSend, UpstreamRule,
    PING_FALLBACK_SILENCE,
};
use neonet_proto::predict::wire::{decode_own_state, encode_inputs};
use neonet_proto::predict::{
    Authoritative, CharacterInput, ClientTickClock, ClockSync, EchoSample, KinematicCharacter,
    PingSample, Predictor, PredictorConfig,
};
use neonet_proto::time::{Tick, Time};
use neonet_proto::transform::{
    decode_server_header, encode_client_datagram_clocked, AckTracker, Arrival, Quantizer, Seq,
};
use neonet_proto::types::{Blueprint, BlueprintId, BlueprintPatch, MovementAuthority, ReqId};
use neonet_proto::wire::codec;
use neonet_proto::wire::msg::{
    Channel, ClientMsg, CloseReason, Refusal, ServerMsg, PROTOCOL_VERSION,
};
use neonet_proto::wire::pieces::Reassembly;

/// How often a welcomed client whose snapshot is still on its way pings, as the full client
/// does ([`neonet_proto::client::PING_INTERVAL`], 1 s), so the relay's idle timeout does not
/// take a slow join for a dead peer.
const JOINING_PING_INTERVAL: Duration = neonet_proto::client::PING_INTERVAL;

/// Events a light client keeps for its driver: 4,096. The driver takes them every frame; a
/// driver that stops taking them loses the oldest (counted in [`LightCore::events_dropped`]).
pub const LIGHT_EVENTS_MAX: usize = 4_096;

/// Where a light client is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LightState {
    /// `Hello` sent; waiting for `Welcome` and `Snapshot`.
    Joining,
    /// The snapshot arrived: sending inputs, acknowledging datagrams.
    Joined,
    /// The session ended (the server closed it, or the driver reported the transport gone).
    Closed {
        /// Why.
        reason: CloseReason,
        /// The server's or the transport's words.
        detail: String,
    },
}

/// What a light client tells its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LightEvent {
    /// The snapshot arrived.
    Joined,
    /// A change of this client's was acknowledged.
    Acked(ReqId),
    /// A change of this client's was refused.
    Refused {
        /// The change.
        req: ReqId,
        /// Why.
        reason: Refusal,
    },
    /// The session ended.
    Disconnected {
        /// Why.
        reason: CloseReason,
        /// The server's or the transport's words.
        detail: String,
    },
}

/// What one server datagram was, for the driver's measurements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatagramSeen {
    /// Its wrapping sequence number.
    pub seq: Seq,
    /// The server tick it carries.
    pub tick: Tick,
    /// Its entity records (not decoded: the update latency weighs each datagram by them).
    pub records: u64,
}

/// The joined part: built from `Welcome`.
struct Stream {
    quantizer: Quantizer,
    sync: ClockSync,
    clock: ClientTickClock,
    inputs: Predictor<KinematicCharacter>,
    acks: AckTracker,
    up_seq: Seq,
    ack_due: bool,
    last_up: Time,
    period: Duration,
    buf: Vec<u8>,
    upstream: UpstreamRule,
}

/// One light client's protocol state. See the module documentation.
pub struct LightCore {
    name: String,
    token: Option<String>,
    state: LightState,
    stream: Option<Box<Stream>>,
    client_authority: bool,
    input: CharacterInput,
    next_req: u32,
    next_ping: Time,
    /// A snapshot larger than one frame arriving in pieces (`SnapshotPiece`), as the full
    /// client reassembles it: a world past 64 KiB (many players, blueprints) comes so.
    pieces: Reassembly,
    transmits: VecDeque<ClientTransmit>,
    events: VecDeque<LightEvent>,
    events_dropped: u64,
}

impl std::fmt::Debug for LightCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LightCore")
            .field("name", &self.name)
            .field("state", &self.state)
            .finish()
    }
}

impl LightCore {
    /// A client that joins as `name` (with `token`, if any); `Hello` is queued at once.
    pub fn new(name: String, token: Option<String>, now: Time) -> LightCore {
        let mut c = LightCore {
            name,
            token,
            state: LightState::Joining,
            stream: None,
            client_authority: false,
            input: CharacterInput::default(),
            next_req: 1,
            next_ping: now,
            pieces: Reassembly::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            events_dropped: 0,
        };
        let hello = ClientMsg::Hello {
            protocol_version: PROTOCOL_VERSION,
            name: c.name.clone(),
            token: c.token.clone(),
        };
        c.push_frame(&hello);
        c
    }

    /// Where the client is.
    pub fn state(&self) -> &LightState {
        &self.state
    }

    /// The clock sync (offset, RTT, the server's tick period), once welcomed.
    pub fn clock(&self) -> Option<&ClockSync> {
        self.stream.as_ref().map(|s| &s.sync)
    }

    /// Where the player is predicted to be, m (x, z): what the walker steers from, as a full
    /// client's; `None` before the first own-state blob.
    pub fn own_position(&self) -> Option<[f64; 2]> {
        let p = self.stream.as_ref()?.inputs.state()?.position;
        Some([f64::from(p.x), f64::from(p.z)])
    }

    /// Events lost because the driver did not take them ([`LIGHT_EVENTS_MAX`]).
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// Sets the input sent from the next client tick on (held until changed).
    pub fn set_input(&mut self, input: CharacterInput) {
        self.input = input;
    }

    /// Says something in chat.
    pub fn send_chat(&mut self, body: String) -> ReqId {
        let req = self.req();
        self.push_frame(&ClientMsg::Chat { req, body });
        req
    }

    /// Adds a blueprint.
    pub fn add_blueprint(&mut self, blueprint: Blueprint) -> ReqId {
        let req = self.req();
        self.push_frame(&ClientMsg::BlueprintAdd { req, blueprint });
        req
    }

    /// Modifies a blueprint claiming an explicit version.
    pub fn modify_blueprint_at(
        &mut self,
        id: BlueprintId,
        version: u32,
        patch: BlueprintPatch,
    ) -> ReqId {
        let req = self.req();
        self.push_frame(&ClientMsg::BlueprintModify {
            req,
            id,
            version,
            patch,
        });
        req
    }

    /// Says goodbye; the server closes the session.
    pub fn leave(&mut self) {
        self.push_frame(&ClientMsg::Goodbye);
    }

    /// The transport ended (the driver knows why). No-op once closed.
    pub fn handle_disconnect(&mut self, reason: CloseReason, detail: String) {
        self.close(reason, detail);
    }

    /// A complete frame body (without its length prefix) arrived. A frame that does not decode,
    /// or a message on the wrong channel, ends the session as a protocol violation.
    pub fn handle_frame(&mut self, channel: Channel, body: &[u8], now: Time) {
        if matches!(self.state, LightState::Closed { .. }) {
            return;
        }
        let msg = match codec::decode_server(body) {
            Ok(m) => m,
            Err(e) => return self.close(CloseReason::ProtocolViolation, e.to_string()),
        };
        if msg.channel() != channel {
            return self.close(
                CloseReason::ProtocolViolation,
                format!("{} on the {channel:?} channel", msg.name()),
            );
        }
        match msg {
            ServerMsg::Welcome {
                protocol_version,
                tick_hz,
                transform,
                character,
                ..
            } => {
                if protocol_version != PROTOCOL_VERSION {
                    return self.close(
                        CloseReason::VersionMismatch,
                        format!("server speaks protocol version {protocol_version}"),
                    );
                }
                let Ok(quantizer) = Quantizer::new(&transform) else {
                    return self.close(
                        CloseReason::ProtocolViolation,
                        "invalid transform configuration in welcome".into(),
                    );
                };
                let hz = tick_hz.clamp(
                    neonet_proto::time::TICK_HZ_MIN,
                    neonet_proto::time::TICK_HZ_MAX,
                );
                self.next_ping = now + JOINING_PING_INTERVAL;
                self.stream = Some(Box::new(Stream {
                    quantizer,
                    sync: ClockSync::new(hz),
                    clock: ClientTickClock::new(hz),
                    inputs: Predictor::new(
                        KinematicCharacter::new(character),
                        1.0 / f32::from(hz),
                        PredictorConfig::default(),
                    ),
                    acks: AckTracker::new(),
                    up_seq: Seq(0),
                    ack_due: false,
                    last_up: now,
                    period: Duration::from_micros(1_000_000 / u64::from(tick_hz.max(1))),
                    buf: Vec::new(),
                    upstream: UpstreamRule::default(),
                }));
            }
            ServerMsg::SnapshotPiece { index, count, data } => {
                if self.stream.is_none() || self.state != LightState::Joining {
                    return self.close(
                        CloseReason::ProtocolViolation,
                        "snapshot piece out of order".into(),
                    );
                }
                match self.pieces.push(index, count, &data.0) {
                    Ok(None) => {}
                    Ok(Some(whole)) => self.joined(whole.settings.movement, now),
                    Err(e) => self.close(CloseReason::ProtocolViolation, e.to_string()),
                }
            }
            ServerMsg::Snapshot(s) => {
                if self.stream.is_none() || self.state != LightState::Joining {
                    return self.close(
                        CloseReason::ProtocolViolation,
                        "snapshot out of order".into(),
                    );
                }
                if self.pieces.in_progress() {
                    return self.close(
                        CloseReason::ProtocolViolation,
                        "snapshot while its pieces were arriving".into(),
                    );
                }
                self.joined(s.settings.movement, now);
            }
            ServerMsg::Pong {
                client_time_us,
                server_time_us,
                server_tick,
            } => {
                if let Some(st) = &mut self.stream {
                    st.sync.handle_sample(PingSample {
                        client_send: Time(client_time_us),
                        server_time_us,
                        server_tick: Tick(server_tick),
                        client_recv: now,
                    });
                }
            }
            ServerMsg::Ack { req } => self.push_event(LightEvent::Acked(req)),
            ServerMsg::Refused { req, reason } => {
                self.push_event(LightEvent::Refused { req, reason })
            }
            ServerMsg::Close { reason, detail } => self.close(reason, detail),
            // The world's changes, chat, moderation: a light client keeps no world.
            _ => {}
        }
    }

    /// The snapshot arrived, whole or as its last piece: joined.
    fn joined(&mut self, movement: MovementAuthority, now: Time) {
        self.client_authority = movement == MovementAuthority::Client;
        self.state = LightState::Joined;
        self.next_ping = now;
        self.push_event(LightEvent::Joined);
    }

    /// A server datagram arrived: acknowledged (when new), its clock echo and own-state blob
    /// read; returns its header for the driver's measurements, `None` before the join or for
    /// anything that is not a server datagram.
    pub fn handle_datagram(&mut self, data: &[u8], now: Time) -> Option<DatagramSeen> {
        if self.state != LightState::Joined {
            return None;
        }
        let st = self.stream.as_deref_mut()?;
        let h = decode_server_header(data).ok()?;
        let seen = DatagramSeen {
            seq: h.seq,
            tick: h.tick,
            records: h.records,
        };
        // As the full client: records, an own-state blob, or a duplicate or one too old (the
        // ack header then repeats what it said) make an acknowledgement due; a clock echo alone
        // does not.
        let fresh = st.acks.classify(h.seq) == Arrival::New;
        st.ack_due |= datagram_wants_ack(h.records > 0, h.own_blob.is_some(), fresh);
        if !fresh {
            return Some(seen);
        }
        st.acks.record(h.seq);
        if let Some(echo) = &h.echo {
            st.sync
                .handle_echo(EchoSample::from_echo(echo, h.tick, now));
        }
        if let Some(own) = h.own_blob.and_then(|b| decode_own_state(b).ok()) {
            st.upstream.server_applied(own.last_input_tick);
            st.inputs.reconcile(&Authoritative::from(own));
        }
        Some(seen)
    }

    /// Runs what is due at `now`: pings, client ticks with their input datagrams, and the
    /// acknowledgement of received datagrams.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.state == LightState::Joining {
            if self.stream.is_some() && now >= self.next_ping {
                self.next_ping = now + JOINING_PING_INTERVAL;
                self.push_frame(&ClientMsg::Ping {
                    client_time_us: now.as_micros(),
                });
            }
            return;
        }
        if self.state != LightState::Joined {
            return;
        }
        let Some(mut st) = self.stream.take() else {
            return;
        };
        if st.sync.ping_due(now) {
            st.sync.on_ping_sent(now);
            self.push_frame(&ClientMsg::Ping {
                client_time_us: now.as_micros(),
            });
        } else if st.sync.is_exact() && now >= fallback_ping_at(st.last_up, self.next_ping) {
            // Clock sync rides in the datagrams; this ping is for liveness only.
            self.next_ping = now + PING_FALLBACK_SILENCE;
            self.push_frame(&ClientMsg::Ping {
                client_time_us: now.as_micros(),
            });
        }
        while let Some(tick) = st.clock.poll_tick(now, &st.sync) {
            // As the full client's `PredictedClient::apply_input`.
            let inputs = if self.client_authority || !st.inputs.step(tick, self.input) {
                None
            } else {
                st.inputs
                    .unacked_inputs()
                    .map(|(first, inputs)| encode_inputs(first, &inputs))
            };
            // A light client moves no apps.
            let send = st.upstream.on_tick(
                tick,
                self.input,
                inputs.is_some(),
                self.client_authority,
                false,
            );
            match send {
                TickSend::Nothing => {}
                TickSend::WithoutInputs => self.send_upstream(&mut st, &[], now),
                TickSend::Inputs => {
                    self.send_upstream(&mut st, inputs.as_deref().unwrap_or(&[]), now)
                }
            }
        }
        if st.ack_due && now >= st.last_up + st.period {
            self.send_upstream(&mut st, &[], now);
        }
        self.stream = Some(st);
    }

    /// When [`LightCore::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Time> {
        match (&self.state, self.stream.as_deref()) {
            (LightState::Joining, Some(_)) => Some(self.next_ping),
            (LightState::Joined, Some(st)) => {
                let mut t = st.sync.next_ping_at();
                if st.clock.next_tick().is_some() {
                    t = t.min(st.clock.next_at());
                }
                if st.sync.is_exact() {
                    t = t.min(fallback_ping_at(st.last_up, self.next_ping));
                }
                if st.ack_due {
                    t = t.min(st.last_up + st.period);
                }
                Some(t)
            }
            _ => None,
        }
    }

    /// The next frame or datagram to send.
    pub fn poll_transmit(&mut self) -> Option<ClientTransmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<LightEvent> {
        self.events.pop_front()
    }

    fn send_upstream(&mut self, st: &mut Stream, inputs: &[u8], now: Time) {
        st.up_seq = st.up_seq.next();
        let ack = st.acks.header();
        // A clock sample is due: this datagram asks the server for an echo (kind 0x03).
        let stamp = st.sync.poll_stamp(now);
        if encode_client_datagram_clocked(
            &st.quantizer,
            &ack,
            st.up_seq,
            stamp,
            inputs,
            &[],
            &mut st.buf,
        )
        .is_ok()
        {
            self.transmits
                .push_back(ClientTransmit::Datagram(st.buf.clone()));
        }
        st.ack_due = false;
        st.last_up = now;
    }

    fn req(&mut self) -> ReqId {
        let r = ReqId(self.next_req);
        self.next_req = self.next_req.wrapping_add(1);
        r
    }

    fn push_frame(&mut self, msg: &ClientMsg) {
        if matches!(self.state, LightState::Closed { .. }) {
            return;
        }
        self.transmits.push_back(ClientTransmit::Frame {
            channel: msg.channel(),
            frame: codec::encode_frame(msg),
        });
    }

    fn push_event(&mut self, event: LightEvent) {
        if self.events.len() >= LIGHT_EVENTS_MAX {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    fn close(&mut self, reason: CloseReason, detail: String) {
        if matches!(self.state, LightState::Closed { .. }) {
            return;
        }
        self.state = LightState::Closed {
            reason,
            detail: detail.clone(),
        };
        self.stream = None;
        self.transmits.clear();
        self.push_event(LightEvent::Disconnected { reason, detail });
    }
}
