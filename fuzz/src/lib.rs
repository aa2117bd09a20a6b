//! neonet's fuzz targets, one function per target, each taking the fuzzer's bytes. The same
//! functions run under libFuzzer (`fuzz_targets/`, `cargo fuzz`) and under the stable driver
//! (`src/bin/fuzz-stable.rs`). A target fails by panicking; every input a peer can send must
//! come back as an error, never a panic.

use neonet_proto::client::{ClientConfig, ClientCore};
use neonet_proto::persist::{AckToken, StoreReport};
use neonet_proto::server::{ConnId, InsecureTokens, ServerConfig, ServerCore, TransportKind, World};
use neonet_proto::time::Time;
use neonet_proto::transform::{decode_client_datagram, Quantizer, ReplicaReceiver, TransformConfig};
use neonet_proto::types::*;
use neonet_proto::wire::codec::{self, FrameDecoder};
use neonet_proto::wire::msg::{Channel, ClientMsg, ServerMsg, PROTOCOL_VERSION};

/// The names of every target, for the stable driver.
pub const TARGETS: [&str; 7] = [
    "frame_decoder",
    "client_msg",
    "server_msg",
    "client_datagram",
    "server_datagram",
    "server_core",
    "client_core",
];

/// Runs target `name` on `data`; `false` if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "frame_decoder" => frame_decoder(data),
        "client_msg" => client_msg(data),
        "server_msg" => server_msg(data),
        "client_datagram" => client_datagram(data),
        "server_datagram" => server_datagram(data),
        "server_core" => server_core(data),
        "client_core" => client_core(data),
        _ => return false,
    }
    true
}

/// Reads the fuzzer's bytes as a stream of choices; past the end everything is zero.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// Any f32 bit pattern: NaN, infinities, 1e30, denormals.
    fn f32(&mut self) -> f32 {
        match self.u8() % 4 {
            0 => f32::from_bits(self.u32()),
            1 => f32::from(self.u8()) - 128.0,
            2 => [0.0, 1.0, -1.0, 1e30, -1e30, f32::NAN, f32::INFINITY, 1e-30][self.u8() as usize % 8],
            _ => f32::from(self.u16() as i16) / 16.0,
        }
    }
    fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = (self.u16() as usize).min(max).min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
    fn string(&mut self, max: usize) -> String {
        String::from_utf8_lossy(self.bytes(max)).into_owned()
    }
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// The frame decoder of every channel, fed in pieces of fuzzer-chosen sizes, then every frame
/// it yields through the message decoder of that direction.
pub fn frame_decoder(data: &[u8]) {
    let mut inp = Input { data };
    let channel = Channel::from_u8(inp.u8() % 4).unwrap_or(Channel::Control);
    let server_side = inp.u8() % 2 == 0;
    let mut dec = if server_side {
        FrameDecoder::for_client_channel(channel)
    } else {
        FrameDecoder::for_server_channel(channel)
    };
    while !inp.is_empty() {
        let piece = inp.bytes(4096);
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(body)) => {
                    if server_side {
                        let _ = codec::decode_client(&body);
                    } else {
                        let _ = codec::decode_server(&body);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// `decode_client`; whatever decodes must encode back to bytes that decode and encode to the
/// same bytes (compared as bytes: a NaN float is not equal to itself).
pub fn client_msg(data: &[u8]) {
    if let Ok(m) = codec::decode_client(data) {
        let again = codec::encode(&m);
        let m2 = codec::decode_client(&again).expect("an encoded message decodes");
        assert_eq!(codec::encode(&m2), again);
    }
}

/// `decode_server`, round-tripped like [`client_msg`].
pub fn server_msg(data: &[u8]) {
    if let Ok(m) = codec::decode_server(data) {
        let again = codec::encode(&m);
        let m2 = codec::decode_server(&again).expect("an encoded message decodes");
        assert_eq!(codec::encode(&m2), again);
    }
}

/// The server's decoder of client datagrams (acks, inputs, owned transforms).
pub fn client_datagram(data: &[u8]) {
    let qz = Quantizer::new(&TransformConfig::default()).expect("default config");
    if let Ok(d) = decode_client_datagram(&qz, data) {
        for (_, q) in &d.owned {
            let t = qz.dequantize(q);
            assert!(t.position.is_finite());
        }
    }
}

/// The client's decoder of server transform datagrams, a few in a row into one receiver (so
/// deltas find baselines).
pub fn server_datagram(data: &[u8]) {
    let mut rx = ReplicaReceiver::new(&TransformConfig::default()).expect("default config");
    let mut inp = Input { data };
    let mut t = 0u64;
    while !inp.is_empty() {
        let d = inp.bytes(1500);
        t += 33_000;
        let _ = rx.handle_datagram(d, Time(t));
    }
}

/// A message built from the fuzzer's choices: well-formed, with hostile values.
fn client_message(inp: &mut Input) -> ClientMsg {
    let req = ReqId(u32::from(inp.u8()));
    let entity = EntityId(u32::from(inp.u8() % 16));
    let bp = BlueprintId(["a", "b", "c"][inp.u8() as usize % 3].into());
    let transform = |inp: &mut Input| Transform {
        position: Vec3::new(inp.f32(), inp.f32(), inp.f32()),
        rotation: Quat::from_xyzw(inp.f32(), inp.f32(), inp.f32(), inp.f32()),
        scale: if inp.u8() % 2 == 0 {
            None
        } else {
            Some(Vec3::new(inp.f32(), inp.f32(), inp.f32()))
        },
    };
    match inp.u8() % 16 {
        0 => ClientMsg::Chat {
            req,
            body: inp.string(3000),
        },
        1 => ClientMsg::Command {
            req,
            args: (0..inp.u8() % 4)
                .map(|_| {
                    [
                        "chat", "clear", "spawn", "set", "name", "admin", "delete", "blueprint",
                        "entity", "a", "1", "2",
                    ][inp.u8() as usize % 12]
                        .into()
                })
                .collect(),
        },
        2 => ClientMsg::BlueprintAdd {
            req,
            blueprint: Blueprint {
                id: bp,
                version: inp.u32(),
                name: inp.string(100),
                props: Bytes(inp.bytes(70_000).to_vec()),
                ..Default::default()
            },
        },
        3 => ClientMsg::BlueprintModify {
            req,
            id: bp,
            version: inp.u32(),
            patch: BlueprintPatch {
                desc: Some(inp.string(5000)),
                ..Default::default()
            },
        },
        4 => ClientMsg::EntityAdd {
            req,
            blueprint: bp,
            transform: transform(inp),
            props: vec![("k".into(), Bytes(inp.bytes(20_000).to_vec()))],
        },
        5 => ClientMsg::EntityModify {
            req,
            id: entity,
            patch: EntityPatch {
                set: vec![(
                    ["mover", "name", "x"][inp.u8() as usize % 3].into(),
                    Bytes(inp.bytes(64).to_vec()),
                )],
                unset: vec![],
                transform: if inp.u8() % 2 == 0 {
                    None
                } else {
                    Some(transform(inp))
                },
            },
        },
        6 => ClientMsg::EntityRemove { req, id: entity },
        7 => ClientMsg::PlayerTeleport {
            target: entity,
            position: Vec3::new(inp.f32(), inp.f32(), inp.f32()),
            rotation_y: inp.f32(),
        },
        8 => ClientMsg::PlayerPush {
            target: entity,
            force: Vec3::new(inp.f32(), inp.f32(), inp.f32()),
        },
        9 => ClientMsg::SpawnModify {
            req,
            set: inp.u8() % 2 == 0,
        },
        10 => ClientMsg::ModifyRank {
            req,
            user: UserId(u64::from(inp.u8() % 8)),
            rank: [Rank::Visitor, Rank::Builder, Rank::Admin][inp.u8() as usize % 3],
        },
        11 => ClientMsg::Kick { req, target: entity },
        12 => ClientMsg::EntityEvent {
            entity,
            blueprint_version: inp.u32(),
            name: inp.string(80),
            data: Bytes(inp.bytes(20_000).to_vec()),
            to: None,
        },
        13 => ClientMsg::BlueprintRemove { req, id: bp },
        14 => ClientMsg::Ping {
            client_time_us: u64::from(inp.u32()),
        },
        _ => ClientMsg::Goodbye,
    }
}

/// Sequences of inputs to one `ServerCore`: connects (with addresses), valid joins, hostile
/// messages, raw frames and datagrams, disconnects, store reports, time. After each step the
/// outputs are drained.
pub fn server_core(data: &[u8]) {
    let mut inp = Input { data };
    let mut config = ServerConfig {
        admin_code: Some("sesame".into()),
        durable_acks: inp.u8() % 2 == 0,
        ..ServerConfig::default()
    };
    config.limits.world_bytes_max = 64 * 1024;
    let mut core = ServerCore::new(
        config,
        World::default(),
        Box::new(InsecureTokens),
        Time::ZERO,
    );
    let mut now = 0u64;
    let mut acks = Vec::new();
    while !inp.is_empty() {
        let conn = ConnId(u64::from(inp.u8() % 8));
        match inp.u8() % 10 {
            0 => {
                core.handle_connect(conn, TransportKind::Sim, Time(now));
                core.handle_peer_address(conn, std::net::IpAddr::from([10, 0, 0, inp.u8() % 3]));
            }
            1 => {
                let name = inp.string(80);
                let token = (inp.u8() % 4 == 0).then(|| format!("user:{}", inp.u8() % 8));
                let hello = ClientMsg::Hello {
                    protocol_version: PROTOCOL_VERSION,
                    name,
                    token,
                };
                core.handle_frame(conn, Channel::Control, &codec::encode(&hello), Time(now));
            }
            2 | 3 | 4 => {
                let msg = client_message(&mut inp);
                core.handle_frame(conn, msg.channel(), &codec::encode(&msg), Time(now));
            }
            5 => {
                let channel = Channel::from_u8(inp.u8() % 4).unwrap_or(Channel::Control);
                let body = inp.bytes(2000);
                core.handle_frame(conn, channel, body, Time(now));
            }
            6 => {
                let d = inp.bytes(1600);
                core.handle_datagram(conn, d, Time(now));
            }
            7 => core.handle_disconnect(conn, Time(now)),
            8 => {
                now += u64::from(inp.u16()) * 100;
                core.handle_timeout(Time(now));
            }
            _ => {
                let report = match inp.u8() % 3 {
                    0 => StoreReport::Durable(std::mem::take(&mut acks)),
                    1 => StoreReport::Failed(std::mem::take(&mut acks)),
                    _ => StoreReport::Full(std::mem::take(&mut acks)),
                };
                core.handle_store(report);
            }
        }
        while core.poll_transmit().is_some() {}
        while core.poll_event().is_some() {}
        while let Some(e) = core.poll_effect() {
            if let Some(a) = e.ack {
                acks.push(AckToken { ..a });
            }
        }
        // Invariants: every session has its player; usage never exceeds the world's cap by
        // more than what a restart can load.
        for s in core.sessions() {
            assert!(core.world().entities.contains_key(&s.player));
        }
    }
}

/// Sequences of inputs to one `ClientCore`: a valid `Welcome` and `Snapshot` (or not), raw
/// and well-formed server frames with hostile values, datagrams, time.
pub fn client_core(data: &[u8]) {
    let mut inp = Input { data };
    let mut core = ClientCore::new(
        ClientConfig {
            name: "fuzz".into(),
            token: None,
        },
        Time::ZERO,
    );
    let mut now = 0u64;
    if inp.u8() % 2 == 0 {
        let welcome = ServerMsg::Welcome {
            protocol_version: PROTOCOL_VERSION,
            session: SessionId(1),
            tick_hz: inp.u16(),
            transform: Box::new(TransformConfig::default()),
            character: Default::default(),
        };
        let _ = core.handle_frame(Channel::World, &codec::encode(&welcome), Time(now));
    }
    while !inp.is_empty() {
        match inp.u8() % 6 {
            0 | 1 => {
                let channel = Channel::from_u8(inp.u8() % 4).unwrap_or(Channel::World);
                let body = inp.bytes(4000);
                let _ = core.handle_frame(channel, body, Time(now));
            }
            2 => {
                let id = EntityId(u32::from(inp.u8() % 8));
                let msg = match inp.u8() % 5 {
                    0 => ServerMsg::EntityAdded(Entity {
                        id,
                        kind: EntityKind::App,
                        owner: None,
                        user: None,
                        blueprint: Some(BlueprintId("a".into())),
                        transform: Transform {
                            position: Vec3::new(inp.f32(), inp.f32(), inp.f32()),
                            rotation: Quat::from_xyzw(inp.f32(), inp.f32(), inp.f32(), inp.f32()),
                            scale: None,
                        },
                        props: vec![],
                    }),
                    1 => ServerMsg::EntityRemoved(id),
                    2 => ServerMsg::PlayerTeleport {
                        position: Vec3::new(inp.f32(), inp.f32(), inp.f32()),
                        rotation_y: inp.f32(),
                    },
                    3 => ServerMsg::BlueprintRemoved(BlueprintId("a".into())),
                    _ => ServerMsg::PlayerPush {
                        force: Vec3::new(inp.f32(), inp.f32(), inp.f32()),
                    },
                };
                let _ = core.handle_frame(msg.channel(), &codec::encode(&msg), Time(now));
            }
            3 => {
                let d = inp.bytes(1500);
                core.handle_datagram(d, Time(now));
            }
            _ => {
                now += u64::from(inp.u16()) * 100;
                core.handle_timeout(Time(now));
            }
        }
        while core.poll_transmit().is_some() {}
        while core.poll_event().is_some() {}
    }
}
