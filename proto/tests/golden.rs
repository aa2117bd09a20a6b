//! Golden byte tests: the exact wire encoding of every `ClientMsg` and `ServerMsg` variant and of
//! every nested type, pinned as hex. A failure here means the wire format changed: that must be
//! a deliberate act (append-only variants, or a `PROTOCOL_VERSION` bump), never an accident.
//!
//! The values are representative rather than trivial: multi-byte varints, `Some` and `None`,
//! negative and fractional floats, empty and non-empty strings. PROTOCOL.md walks through two of
//! these encodings byte by byte (the `Hello` and `Chat` frames); those walkthroughs are checked
//! here too.
//!
//! To regenerate after a deliberate change:
//! `NEONET_PRINT_GOLDEN=1 cargo test -p neonet-proto --test golden print_golden -- --nocapture`
//! and review every changed line by hand against PROTOCOL.md before pinning it.

use neonet_proto::types::*;
use neonet_proto::wire::codec::{self, DecodeError, CLIENT_MSG_VARIANTS, SERVER_MSG_VARIANTS};
use neonet_proto::wire::msg::{
    Channel, ClientMsg, CloseReason, Refusal, ServerMsg, Snapshot, ALPN, PROTOCOL_VERSION,
};

// ---------------------------------------------------------------------------------------------
// Hex helpers. Expected values may contain spaces (ignored) to separate the frame header and
// fields for the reader.

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits in {s:?}");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// Frame as printed for pinning: the 4-byte length header, a space, then the body.
fn frame_hex(frame: &[u8]) -> String {
    format!("{} {}", hex(&frame[..4]), hex(&frame[4..]))
}

// ---------------------------------------------------------------------------------------------
// Representative values.

fn transform() -> Transform {
    Transform {
        position: Vec3::new(1.5, -2.0, 0.25),
        rotation: Quat::from_xyzw(0.0, 0.0, 0.0, 1.0),
        scale: Some(Vec3::new(2.0, 2.0, 2.0)),
    }
}

fn blueprint() -> Blueprint {
    Blueprint {
        id: BlueprintId("tree".into()),
        version: 3,
        name: "Tree".into(),
        author: "ana".into(),
        model: Some("asset://tree.glb".into()),
        script: None,
        image: Some("".into()),
        desc: "a tree".into(),
        props: Bytes(vec![0xde, 0xad]),
        flags: BlueprintFlags {
            preload: true,
            public: false,
            locked: true,
            frozen: false,
            unique: false,
            scene: false,
            disabled: true,
        },
    }
}

fn blueprint_patch() -> BlueprintPatch {
    BlueprintPatch {
        name: Some("Oak".into()),
        author: None,
        model: Some(None),
        script: Some(Some("s.js".into())),
        image: None,
        desc: None,
        props: Some(Bytes(vec![1])),
        flags: None,
    }
}

fn app_entity() -> Entity {
    Entity {
        id: EntityId(300),
        kind: EntityKind::App,
        owner: None,
        user: None,
        blueprint: Some(BlueprintId("tree".into())),
        transform: transform(),
        props: vec![("state".into(), Bytes(vec![7]))],
    }
}

fn player_entity() -> Entity {
    Entity {
        id: EntityId(1),
        kind: EntityKind::Player,
        owner: Some(SessionId(2)),
        user: Some(UserId(5)),
        blueprint: None,
        transform: Transform::default(),
        props: vec![
            ("name".into(), Bytes::from("bo")),
            ("rank".into(), Bytes(vec![0])),
        ],
    }
}

fn entity_patch() -> EntityPatch {
    EntityPatch {
        set: vec![("health".into(), Bytes(vec![100]))],
        unset: vec!["emote".into()],
        transform: None,
    }
}

fn chat_message() -> ChatMessage {
    ChatMessage {
        id: 42,
        from_user: Some(UserId(5)),
        from_name: "bo".into(),
        from_entity: Some(EntityId(1)),
        body: "hi".into(),
        created_at_ms: 1_700_000_000_000,
    }
}

fn system_chat_message() -> ChatMessage {
    ChatMessage {
        id: 1,
        from_user: None,
        from_name: "".into(),
        from_entity: None,
        body: "welcome".into(),
        created_at_ms: 0,
    }
}

fn settings() -> Settings {
    Settings {
        title: "w".into(),
        desc: "".into(),
        image: None,
        avatar: Some("a.vrm".into()),
        custom_avatars: true,
        default_rank: Rank::Builder,
        player_limit: 100,
        ao: true,
        movement: MovementAuthority::Client,
    }
}

fn spawn() -> Spawn {
    Spawn {
        position: Vec3::new(0.0, 1.0, 0.0),
        rotation: Quat::from_xyzw(0.0, 0.0, 0.0, 1.0),
    }
}

fn snapshot() -> Snapshot {
    Snapshot {
        player: EntityId(1),
        user: UserId(5),
        rank: Rank::Visitor,
        server_tick: 1000,
        server_time_us: 33_333_333,
        settings: settings(),
        spawn: spawn(),
        chat: vec![system_chat_message()],
        blueprints: vec![blueprint()],
        entities: vec![player_entity(), app_entity()],
        auth_token: "user:5".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// The cases, in tag order. The `*_tag` functions have no wildcard arm, so adding a variant breaks
// this file's compilation until a golden case is added for it.

fn client_tag(m: &ClientMsg) -> u32 {
    use ClientMsg::*;
    match m {
        Hello { .. } => 0,
        Ping { .. } => 1,
        Command { .. } => 2,
        Chat { .. } => 3,
        BlueprintAdd { .. } => 4,
        BlueprintModify { .. } => 5,
        EntityAdd { .. } => 6,
        EntityModify { .. } => 7,
        EntityRemove { .. } => 8,
        EntityEvent { .. } => 9,
        PlayerTeleport { .. } => 10,
        PlayerPush { .. } => 11,
        SettingsModify { .. } => 12,
        SpawnModify { .. } => 13,
        ModifyRank { .. } => 14,
        Kick { .. } => 15,
        Mute { .. } => 16,
        Goodbye => 17,
        Spectate { .. } => 18,
        SpectatorCamera { .. } => 19,
        BlueprintRemove { .. } => 20,
        Resume { .. } => 21,
    }
}

fn server_tag(m: &ServerMsg) -> u32 {
    use ServerMsg::*;
    match m {
        Welcome { .. } => 0,
        Snapshot(_) => 1,
        Pong { .. } => 2,
        Ack { .. } => 3,
        Refused { .. } => 4,
        ChatAdded(_) => 5,
        ChatCleared => 6,
        BlueprintAdded(_) => 7,
        BlueprintModified { .. } => 8,
        EntityAdded(_) => 9,
        EntityModified { .. } => 10,
        EntityEvent { .. } => 11,
        EntityRemoved(_) => 12,
        PlayerTeleport { .. } => 13,
        PlayerPush { .. } => 14,
        SettingsModified(_) => 15,
        SpawnModified(_) => 16,
        RankModified { .. } => 17,
        Muted { .. } => 18,
        Close { .. } => 19,
        BlueprintRemoved(_) => 20,
        CommandReply { .. } => 21,
        AuthToken { .. } => 22,
        ResumeToken { .. } => 23,
        SnapshotPiece { .. } => 24,
    }
}

/// One message per variant, in tag order, with its pinned frame (header, space, body).
pub fn client_cases() -> Vec<(ClientMsg, &'static str)> {
    vec![
        (
            ClientMsg::Hello {
                protocol_version: 1,
                name: "ana".into(),
                token: Some("user:7".into()),
            },
            "0e000000 000103616e610106757365723a37",
        ),
        (
            ClientMsg::Ping {
                client_time_us: 1_000_000,
            },
            "04000000 01c0843d",
        ),
        (
            ClientMsg::Command {
                req: ReqId(1),
                args: vec!["spawn".into(), "set".into()],
            },
            "0d000000 02010205737061776e03736574",
        ),
        (
            ClientMsg::Chat {
                req: ReqId(2),
                body: "hi".into(),
            },
            "05000000 0302026869",
        ),
        (
            ClientMsg::BlueprintAdd {
                req: ReqId(3),
                blueprint: blueprint(),
            },
            "37000000 0403047472656503045472656503616e61011061737365743a2f2f747265652e676c620001000661207472656502dead01000100000001",
        ),
        (
            ClientMsg::BlueprintModify {
                req: ReqId(4),
                id: BlueprintId("tree".into()),
                version: 4,
                patch: blueprint_patch(),
            },
            "1d000000 050404747265650401034f616b000100010104732e6a73000001010100",
        ),
        (
            ClientMsg::EntityAdd {
                req: ReqId(5),
                blueprint: BlueprintId("tree".into()),
                transform: transform(),
                props: vec![("state".into(), Bytes(vec![7]))],
            },
            "39000000 060504747265650000c03f000000c00000803e0000000000000000000000000000803f01000000400000004000000040010573746174650107",
        ),
        (
            ClientMsg::EntityModify {
                req: ReqId(6),
                id: EntityId(300),
                patch: entity_patch(),
            },
            "16000000 0706ac0201066865616c746801640105656d6f746500",
        ),
        (
            ClientMsg::EntityRemove {
                req: ReqId(7),
                id: EntityId(300),
            },
            "04000000 0807ac02",
        ),
        (
            ClientMsg::EntityEvent {
                entity: EntityId(300),
                blueprint_version: 3,
                name: "hit".into(),
                data: Bytes(vec![1, 2]),
                to: Some(EntityId(1)),
            },
            "0d000000 09ac0203036869740201020101",
        ),
        (
            ClientMsg::PlayerTeleport {
                target: EntityId(1),
                position: Vec3::new(10.0, 0.0, -5.5),
                rotation_y: std::f32::consts::PI,
            },
            "12000000 0a0100002041000000000000b0c0db0f4940",
        ),
        (
            ClientMsg::PlayerPush {
                target: EntityId(1),
                force: Vec3::new(0.0, 9.0, 0.0),
            },
            "0e000000 0b01000000000000104100000000",
        ),
        (
            ClientMsg::SettingsModify {
                req: ReqId(8),
                setting: Setting::Title("My world".into()),
            },
            "0c000000 0c0800084d7920776f726c64",
        ),
        (
            ClientMsg::SpawnModify {
                req: ReqId(9),
                set: true,
            },
            "03000000 0d0901",
        ),
        (
            ClientMsg::ModifyRank {
                req: ReqId(10),
                user: UserId(5),
                rank: Rank::Admin,
            },
            "04000000 0e0a0502",
        ),
        (
            ClientMsg::Kick {
                req: ReqId(11),
                target: EntityId(1),
            },
            "03000000 0f0b01",
        ),
        (
            ClientMsg::Mute {
                req: ReqId(12),
                target: EntityId(1),
                muted: true,
            },
            "04000000 100c0101",
        ),
        (ClientMsg::Goodbye, "01000000 11"),
        (
            ClientMsg::Spectate {
                protocol_version: 1,
                name: "eve".into(),
                token: None,
                camera: Vec3::new(0.0, 10.0, -5.0),
            },
            "13000000 1201036576650000000000000020410000a0c0",
        ),
        (
            ClientMsg::SpectatorCamera {
                position: Vec3::new(1.5, 2.0, -3.0),
            },
            "0d000000 130000c03f00000040000040c0",
        ),
        (
            ClientMsg::BlueprintRemove {
                req: ReqId(13),
                id: BlueprintId("tree".into()),
            },
            "07000000 140d0474726565",
        ),
        (
            ClientMsg::Resume {
                protocol_version: 1,
                name: "ana".into(),
                token: Some("user:7".into()),
                session: SessionId(2),
                resume_token: "2.ab".into(),
            },
            "14000000 150103616e610106757365723a370204322e6162",
        ),
    ]
}

/// One message per variant, in tag order, with its pinned frame.
pub fn server_cases() -> Vec<(ServerMsg, &'static str)> {
    vec![
        (
            ServerMsg::Welcome {
                protocol_version: 1,
                session: SessionId(2),
                tick_hz: 30,
                transform: Box::default(),
                character: Default::default(),
            },
            "7a000000 0001021e000080c4000080c2000080c4000080440000e0430000804480040a0080021e80d00f00008043000000410000803f00000042000080400000803e00000041000080400000e04000007042000070410000c0400000a041000048420000000000007ac40000c8c200007ac400007a440000fa4300007a44",
        ),
        (ServerMsg::Snapshot(Box::new(snapshot())), "f3000000 01010500e807d5c0f20f017700000105612e76726d0101640101000000000000803f000000000000000000000000000000000000803f01010000000777656c636f6d650001047472656503045472656503616e61011061737365743a2f2f747265652e676c620001000661207472656502dead0100010000000102010001020105000000000000000000000000000000000000000000000000000000803f0002046e616d6502626f0472616e6b0100ac020100000104747265650000c03f000000c00000803e0000000000000000000000000000803f0100000040000000400000004001057374617465010706757365723a35"),
        (
            ServerMsg::Pong {
                client_time_us: 1_000_000,
                server_time_us: 5_000_123,
                server_tick: 150,
            },
            "0a000000 02c0843dbb97b1029601",
        ),
        (ServerMsg::Ack { req: ReqId(300) }, "03000000 03ac02"),
        (
            ServerMsg::Refused {
                req: ReqId(4),
                reason: Refusal::Conflict,
            },
            "03000000 040404",
        ),
        (ServerMsg::ChatAdded(chat_message()), "12000000 052a010502626f010102686980d095ffbc31"),
        (ServerMsg::ChatCleared, "01000000 06"),
        (ServerMsg::BlueprintAdded(blueprint()), "36000000 07047472656503045472656503616e61011061737365743a2f2f747265652e676c620001000661207472656502dead01000100000001"),
        (
            ServerMsg::BlueprintModified {
                id: BlueprintId("tree".into()),
                version: 4,
                patch: blueprint_patch(),
            },
            "1c000000 0804747265650401034f616b000100010104732e6a73000001010100",
        ),
        (ServerMsg::EntityAdded(player_entity()), "35000000 09010001020105000000000000000000000000000000000000000000000000000000803f0002046e616d6502626f0472616e6b0100"),
        (
            ServerMsg::EntityModified {
                id: EntityId(300),
                patch: EntityPatch {
                    set: vec![],
                    unset: vec![],
                    transform: Some(Transform::default()),
                },
            },
            "23000000 0aac020000010000000000000000000000000000000000000000000000000000803f00",
        ),
        (
            ServerMsg::EntityEvent {
                entity: EntityId(300),
                blueprint_version: 3,
                name: "hit".into(),
                data: Bytes(vec![1, 2]),
                from: Some(EntityId(1)),
            },
            "0d000000 0bac0203036869740201020101",
        ),
        (ServerMsg::EntityRemoved(EntityId(300)), "03000000 0cac02"),
        (
            ServerMsg::PlayerTeleport {
                position: Vec3::new(10.0, 0.0, -5.5),
                rotation_y: std::f32::consts::PI,
            },
            "11000000 0d00002041000000000000b0c0db0f4940",
        ),
        (
            ServerMsg::PlayerPush {
                force: Vec3::new(0.0, 9.0, 0.0),
            },
            "0d000000 0e000000000000104100000000",
        ),
        (ServerMsg::SettingsModified(Setting::PlayerLimit(128)), "04000000 0f068001"),
        (ServerMsg::SpawnModified(spawn()), "1d000000 10000000000000803f000000000000000000000000000000000000803f"),
        (
            ServerMsg::RankModified {
                user: UserId(5),
                rank: Rank::Builder,
            },
            "03000000 110501",
        ),
        (
            ServerMsg::Muted {
                player: EntityId(1),
                muted: false,
            },
            "03000000 120100",
        ),
        (
            ServerMsg::Close {
                reason: CloseReason::VersionMismatch,
                detail: "v2".into(),
            },
            "05000000 1304027632",
        ),
        (
            ServerMsg::BlueprintRemoved(BlueprintId("tree".into())),
            "06000000 140474726565",
        ),
        (
            ServerMsg::CommandReply {
                req: ReqId(7),
                text: "hi".into(),
            },
            "05000000 1507026869",
        ),
        (
            ServerMsg::AuthToken { token: "t".into() },
            "03000000 160174",
        ),
        (
            ServerMsg::ResumeToken {
                token: "2.ab".into(),
            },
            "06000000 1704322e6162",
        ),
        (
            ServerMsg::SnapshotPiece {
                index: 1,
                count: 3,
                data: Bytes(vec![0xab, 0xcd]),
            },
            "06000000 18010302abcd",
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn print_golden() {
    if std::env::var_os("NEONET_PRINT_GOLDEN").is_none() {
        return;
    }
    for (m, _) in client_cases() {
        println!("C {:>16} {}", m.name(), frame_hex(&codec::encode_frame(&m)));
    }
    for (m, _) in server_cases() {
        println!("S {:>18} {}", m.name(), frame_hex(&codec::encode_frame(&m)));
    }
}

/// Reads the message tag (a postcard varint) at the start of a body.
fn body_tag(body: &[u8]) -> u32 {
    let mut v = 0u32;
    for (i, b) in body.iter().enumerate().take(5) {
        v |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return v;
        }
    }
    panic!("bad tag varint in {}", hex(body));
}

#[test]
fn every_client_msg_is_pinned() {
    let cases = client_cases();
    assert_eq!(cases.len() as u32, CLIENT_MSG_VARIANTS);
    for (i, (msg, expected)) in cases.into_iter().enumerate() {
        assert_eq!(client_tag(&msg), i as u32, "cases must be in tag order");
        let frame = codec::encode_frame(&msg);
        assert_eq!(
            frame_hex(&frame),
            frame_hex(&unhex(expected)),
            "encoding of {} changed",
            msg.name()
        );
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4, "frame header is the body length");
        let body = &frame[4..];
        assert_eq!(body_tag(body), i as u32, "wire tag of {}", msg.name());
        assert_eq!(codec::decode_client(body), Ok(msg.clone()));
        // The same bytes never decode as the other direction's message of that tag silently
        // into something else that re-encodes differently.
        if let Ok(other) = codec::decode_server(body) {
            assert_eq!(codec::encode(&other), body, "{}", msg.name());
        }
    }
}

#[test]
fn every_server_msg_is_pinned() {
    let cases = server_cases();
    assert_eq!(cases.len() as u32, SERVER_MSG_VARIANTS);
    for (i, (msg, expected)) in cases.into_iter().enumerate() {
        assert_eq!(server_tag(&msg), i as u32, "cases must be in tag order");
        let frame = codec::encode_frame(&msg);
        assert_eq!(
            frame_hex(&frame),
            frame_hex(&unhex(expected)),
            "encoding of {} changed",
            msg.name()
        );
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4, "frame header is the body length");
        let body = &frame[4..];
        assert_eq!(body_tag(body), i as u32, "wire tag of {}", msg.name());
        assert_eq!(codec::decode_server(body), Ok(msg.clone()));
    }
}

#[test]
fn variant_counts_match_the_enums() {
    // The highest tag is a real message: the constant is not too small.
    let (last_client, _) = client_cases().pop().unwrap();
    assert_eq!(client_tag(&last_client), CLIENT_MSG_VARIANTS - 1);
    assert_eq!(
        codec::decode_client(&[(CLIENT_MSG_VARIANTS - 1) as u8, 1, 0, 0, 0, 0]),
        Ok(ClientMsg::Resume {
            protocol_version: 1,
            name: String::new(),
            token: None,
            session: SessionId(0),
            resume_token: String::new(),
        })
    );
    assert_eq!(codec::decode_client(&[17]), Ok(ClientMsg::Goodbye));
    let (last_server, _) = server_cases().pop().unwrap();
    assert_eq!(server_tag(&last_server), SERVER_MSG_VARIANTS - 1);
    assert_eq!(
        codec::decode_server(&unhex("14 01 78")),
        Ok(ServerMsg::BlueprintRemoved(BlueprintId("x".into())))
    );
    // The tag equal to the count is unknown to the codec...
    assert_eq!(
        codec::decode_client(&[CLIENT_MSG_VARIANTS as u8]),
        Err(DecodeError::UnknownMessage(CLIENT_MSG_VARIANTS))
    );
    assert_eq!(
        codec::decode_server(&[SERVER_MSG_VARIANTS as u8]),
        Err(DecodeError::UnknownMessage(SERVER_MSG_VARIANTS))
    );
    // ...and to serde too: the constant is not too large (no variant hides behind it).
    let mut long = vec![CLIENT_MSG_VARIANTS as u8];
    long.extend_from_slice(&[0; 64]);
    assert!(postcard::from_bytes::<ClientMsg>(&long).is_err());
    let mut long = vec![SERVER_MSG_VARIANTS as u8];
    long.extend_from_slice(&[0; 64]);
    assert!(postcard::from_bytes::<ServerMsg>(&long).is_err());
    // Multi-byte tags are read as varints, not bytes.
    assert_eq!(
        codec::decode_client(&[0x80, 0x01]),
        Err(DecodeError::UnknownMessage(128))
    );
    assert_eq!(
        codec::decode_server(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
        Err(DecodeError::UnknownMessage(u32::MAX))
    );
}

#[test]
fn protocol_constants() {
    assert_eq!(PROTOCOL_VERSION, 1);
    assert_eq!(ALPN, b"neonet/1");
    assert_eq!(codec::FRAME_HEADER_BYTES, 4);
    let ids: Vec<u8> = Channel::ALL.iter().map(|c| *c as u8).collect();
    assert_eq!(ids, [0, 1, 2, 3]);
    assert_eq!(
        Channel::ALL.map(|c| Channel::from_u8(c as u8)),
        Channel::ALL.map(Some)
    );
    assert_eq!(Channel::from_u8(4), None);
}

#[test]
fn channels_of_every_message() {
    use Channel::*;
    let client: Vec<Channel> = client_cases().iter().map(|(m, _)| m.channel()).collect();
    assert_eq!(
        client,
        [
            Control, // Hello
            Control, // Ping
            Chat,    // Command
            Chat,    // Chat
            World,   // BlueprintAdd
            World,   // BlueprintModify
            World,   // EntityAdd
            World,   // EntityModify
            World,   // EntityRemove
            Events,  // EntityEvent
            World,   // PlayerTeleport
            World,   // PlayerPush
            World,   // SettingsModify
            World,   // SpawnModify
            Control, // ModifyRank
            Control, // Kick
            Control, // Mute
            Control, // Goodbye
            Control, // Spectate
            Control, // SpectatorCamera
            World,   // BlueprintRemove
            Control, // Resume
        ]
    );
    let server: Vec<Channel> = server_cases().iter().map(|(m, _)| m.channel()).collect();
    assert_eq!(
        server,
        [
            World,   // Welcome
            World,   // Snapshot
            Control, // Pong
            Control, // Ack
            Control, // Refused
            Chat,    // ChatAdded
            Chat,    // ChatCleared
            World,   // BlueprintAdded
            World,   // BlueprintModified
            World,   // EntityAdded
            World,   // EntityModified
            Events,  // EntityEvent
            World,   // EntityRemoved
            World,   // PlayerTeleport
            World,   // PlayerPush
            World,   // SettingsModified
            World,   // SpawnModified
            Control, // RankModified
            Control, // Muted
            Control, // Close
            World,   // BlueprintRemoved
            Control, // CommandReply
            Control, // AuthToken
            World,   // ResumeToken
            World,   // SnapshotPiece
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Nested types on their own (postcard body, no frame header).

fn pin<T>(what: &str, value: T, expected: &str)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = codec::encode(&value);
    if std::env::var_os("NEONET_PRINT_GOLDEN").is_some() {
        println!("N {what:>28} {}", hex(&bytes));
        return;
    }
    assert_eq!(
        hex(&bytes),
        hex(&unhex(expected)),
        "encoding of {what} changed"
    );
    let back: T = postcard::from_bytes(&bytes).expect(what);
    assert_eq!(back, value, "{what} round trip");
}

#[test]
fn nested_types_are_pinned() {
    pin("EntityId", EntityId(300), "ac02");
    pin("UserId", UserId(u64::MAX), "ffffffffffffffffff01");
    pin("SessionId", SessionId(0), "00");
    pin("ReqId", ReqId(u32::MAX), "ffffffff0f");
    pin("BlueprintId", BlueprintId("tree".into()), "0474726565");
    pin("Bytes", Bytes(vec![0, 0xff]), "0200ff");
    pin("Bytes empty", Bytes(vec![]), "00");
    pin(
        "Transform",
        transform(),
        "0000c03f000000c00000803e0000000000000000000000000000803f01000000400000004000000040",
    );
    pin(
        "Transform default",
        Transform::default(),
        "0000000000000000000000000000000000000000000000000000803f00",
    );
    pin("Rank::Visitor", Rank::Visitor, "00");
    pin("Rank::Builder", Rank::Builder, "01");
    pin("Rank::Admin", Rank::Admin, "02");
    pin("EntityKind::Player", EntityKind::Player, "00");
    pin("EntityKind::App", EntityKind::App, "01");
    pin("MovementAuthority::Server", MovementAuthority::Server, "00");
    pin("MovementAuthority::Client", MovementAuthority::Client, "01");
    pin("Entity app", app_entity(), "ac020100000104747265650000c03f000000c00000803e0000000000000000000000000000803f01000000400000004000000040010573746174650107");
    pin("Entity player", player_entity(), "010001020105000000000000000000000000000000000000000000000000000000803f0002046e616d6502626f0472616e6b0100");
    pin(
        "EntityPatch",
        entity_patch(),
        "01066865616c746801640105656d6f746500",
    );
    pin("EntityPatch default", EntityPatch::default(), "000000");
    pin("Blueprint", blueprint(), "047472656503045472656503616e61011061737365743a2f2f747265652e676c620001000661207472656502dead01000100000001");
    pin(
        "Blueprint default",
        Blueprint::default(),
        "00000000000000000000000000000000",
    );
    pin("BlueprintFlags", blueprint().flags, "01000100000001");
    pin(
        "BlueprintPatch",
        blueprint_patch(),
        "01034f616b000100010104732e6a73000001010100",
    );
    pin(
        "BlueprintPatch default",
        BlueprintPatch::default(),
        "0000000000000000",
    );
    pin("BlueprintPatch full", BlueprintPatch::full(&blueprint()), "0104547265650103616e6101011061737365743a2f2f747265652e676c62010001010001066120747265650102dead0101000100000001");
    pin(
        "ChatMessage",
        chat_message(),
        "2a010502626f010102686980d095ffbc31",
    );
    pin(
        "ChatMessage system",
        system_chat_message(),
        "010000000777656c636f6d6500",
    );
    pin("Settings", settings(), "017700000105612e76726d0101640101");
    pin(
        "Settings default",
        Settings::default(),
        "0c6e656f6e657420776f726c640000000000000100",
    );
    pin(
        "Spawn",
        spawn(),
        "000000000000803f000000000000000000000000000000000000803f",
    );
    pin("Snapshot", snapshot(), "010500e807d5c0f20f017700000105612e76726d0101640101000000000000803f000000000000000000000000000000000000803f01010000000777656c636f6d650001047472656503045472656503616e61011061737365743a2f2f747265652e676c620001000661207472656502dead0100010000000102010001020105000000000000000000000000000000000000000000000000000000803f0002046e616d6502626f0472616e6b0100ac020100000104747265650000c03f000000c00000803e0000000000000000000000000000803f0100000040000000400000004001057374617465010706757365723a35");
    pin("Setting::Title", Setting::Title("t".into()), "000174");
    pin("Setting::Desc", Setting::Desc("d".into()), "010164");
    pin(
        "Setting::Image",
        Setting::Image(Some("i".into())),
        "02010169",
    );
    pin("Setting::Avatar", Setting::Avatar(None), "0300");
    pin(
        "Setting::CustomAvatars",
        Setting::CustomAvatars(true),
        "0401",
    );
    pin(
        "Setting::DefaultRank",
        Setting::DefaultRank(Rank::Builder),
        "0501",
    );
    pin("Setting::PlayerLimit", Setting::PlayerLimit(0), "0600");
    pin("Setting::Ao", Setting::Ao(false), "0700");
    pin(
        "Setting::Movement",
        Setting::Movement(MovementAuthority::Client),
        "0801",
    );
    pin("Refusal::Rank", Refusal::Rank, "00");
    pin("Refusal::NotOwner", Refusal::NotOwner, "01");
    pin("Refusal::NotFound", Refusal::NotFound, "02");
    pin("Refusal::Exists", Refusal::Exists, "03");
    pin("Refusal::Conflict", Refusal::Conflict, "04");
    pin("Refusal::Invalid", Refusal::Invalid, "05");
    pin("Refusal::Muted", Refusal::Muted, "06");
    pin("Refusal::RateLimited", Refusal::RateLimited, "07");
    pin("Refusal::Storage", Refusal::Storage, "08");
    pin("Refusal::UnknownCommand", Refusal::UnknownCommand, "09");
    pin("Refusal::WorldFull", Refusal::WorldFull, "0a");
    pin("Refusal::Busy", Refusal::Busy, "0b");
    pin("CloseReason::PlayerLimit", CloseReason::PlayerLimit, "00");
    pin(
        "CloseReason::DuplicateUser",
        CloseReason::DuplicateUser,
        "01",
    );
    pin("CloseReason::Moderation", CloseReason::Moderation, "02");
    pin(
        "CloseReason::ProtocolViolation",
        CloseReason::ProtocolViolation,
        "03",
    );
    pin(
        "CloseReason::VersionMismatch",
        CloseReason::VersionMismatch,
        "04",
    );
    pin("CloseReason::AuthFailed", CloseReason::AuthFailed, "05");
    pin(
        "CloseReason::ServerShutdown",
        CloseReason::ServerShutdown,
        "06",
    );
    pin("CloseReason::Timeout", CloseReason::Timeout, "07");
    pin("CloseReason::ClientLeft", CloseReason::ClientLeft, "08");
    pin("CloseReason::Flooding", CloseReason::Flooding, "09");
    pin("Channel::Events", Channel::Events, "03");
}

#[test]
fn boxed_snapshot_is_transparent() {
    // `ServerMsg::Snapshot(Box<Snapshot>)`: the box adds nothing on the wire.
    let body = codec::encode(&ServerMsg::Snapshot(Box::new(snapshot())));
    assert_eq!(body[0], 1);
    assert_eq!(&body[1..], codec::encode(&snapshot()).as_slice());
}

#[test]
fn blueprint_added_body_is_tag_then_blueprint() {
    // A newtype variant is its tag followed by the value, nothing else.
    let body = codec::encode(&ServerMsg::BlueprintAdded(blueprint()));
    assert_eq!(body[0], 7);
    assert_eq!(&body[1..], codec::encode(&blueprint()).as_slice());
    let body = codec::encode(&ServerMsg::ChatAdded(chat_message()));
    assert_eq!(body[0], 5);
    assert_eq!(&body[1..], codec::encode(&chat_message()).as_slice());
}

// ---------------------------------------------------------------------------------------------
// PROTOCOL.md agrees with the code: its worked examples are these bytes, and its tag tables
// name the variants in wire order.

const PROTOCOL_MD: &str = include_str!("../PROTOCOL.md");

/// The variant name of a value, from its `Debug` form (`Hello { .. }` → `Hello`).
fn variant_name(debug: String) -> String {
    debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect()
}

#[test]
fn protocol_md_worked_examples_match_the_encoder() {
    let examples: Vec<(String, Vec<u8>)> = vec![
        (
            "Hello".into(),
            codec::encode_frame(&ClientMsg::Hello {
                protocol_version: 1,
                name: "ana".into(),
                token: Some("user:7".into()),
            }),
        ),
        (
            "Chat".into(),
            codec::encode_frame(&ClientMsg::Chat {
                req: ReqId(2),
                body: "hi".into(),
            }),
        ),
        (
            "Welcome".into(),
            codec::encode_frame(&ServerMsg::Welcome {
                protocol_version: 1,
                session: SessionId(2),
                tick_hz: 30,
                transform: Box::default(),
                character: Default::default(),
            }),
        ),
        (
            "ChatAdded".into(),
            codec::encode_frame(&ServerMsg::ChatAdded(chat_message())),
        ),
        (
            "PlayerTeleport".into(),
            codec::encode_frame(&ClientMsg::PlayerTeleport {
                target: EntityId(1),
                position: Vec3::new(10.0, 0.0, -5.5),
                rotation_y: std::f32::consts::PI,
            }),
        ),
    ];
    for (what, frame) in examples {
        let line = format!("\n{}\n", frame_hex(&frame));
        assert!(
            PROTOCOL_MD.contains(&line),
            "PROTOCOL.md lacks the {what} example {}",
            line.trim()
        );
    }
    // The Hello and Chat examples are also the golden cases.
    assert_eq!(client_cases()[0].1, "0e000000 000103616e610106757365723a37");
    assert_eq!(client_cases()[3].1, "05000000 0302026869");
}

#[test]
fn protocol_md_message_tables_match_the_tags() {
    for (i, (m, _)) in client_cases().iter().enumerate() {
        let row = format!("| {i} | `{}` |", variant_name(format!("{m:?}")));
        assert!(PROTOCOL_MD.contains(&row), "PROTOCOL.md lacks row {row}");
    }
    for (i, (m, _)) in server_cases().iter().enumerate() {
        let row = format!("| {i} | `{}` |", variant_name(format!("{m:?}")));
        assert!(PROTOCOL_MD.contains(&row), "PROTOCOL.md lacks row {row}");
    }
}

#[test]
fn protocol_md_enum_tables_match_the_tags() {
    let refusals = [
        Refusal::Rank,
        Refusal::NotOwner,
        Refusal::NotFound,
        Refusal::Exists,
        Refusal::Conflict,
        Refusal::Invalid,
        Refusal::Muted,
        Refusal::RateLimited,
        Refusal::Storage,
        Refusal::UnknownCommand,
        Refusal::WorldFull,
        Refusal::Busy,
    ];
    let closes = [
        CloseReason::PlayerLimit,
        CloseReason::DuplicateUser,
        CloseReason::Moderation,
        CloseReason::ProtocolViolation,
        CloseReason::VersionMismatch,
        CloseReason::AuthFailed,
        CloseReason::ServerShutdown,
        CloseReason::Timeout,
        CloseReason::ClientLeft,
        CloseReason::Flooding,
    ];
    let settings = [
        Setting::Title(String::new()),
        Setting::Desc(String::new()),
        Setting::Image(None),
        Setting::Avatar(None),
        Setting::CustomAvatars(false),
        Setting::DefaultRank(Rank::Visitor),
        Setting::PlayerLimit(0),
        Setting::Ao(false),
        Setting::Movement(MovementAuthority::Server),
    ];
    let mut rows: Vec<(Vec<u8>, String)> = Vec::new();
    rows.extend(
        refusals
            .iter()
            .map(|v| (codec::encode(v), format!("{v:?}"))),
    );
    rows.extend(closes.iter().map(|v| (codec::encode(v), format!("{v:?}"))));
    rows.extend(
        settings
            .iter()
            .map(|v| (codec::encode(v), format!("{v:?}"))),
    );
    for (bytes, debug) in rows {
        let row = format!("| {} | {} |", bytes[0], variant_name(debug));
        assert!(PROTOCOL_MD.contains(&row), "PROTOCOL.md lacks row {row}");
    }
    // Rank, EntityKind and MovementAuthority are described in prose.
    for s in [
        "`0` Visitor",
        "`1` Builder",
        "`2` Admin",
        "`0` Player",
        "`1` App",
        "`0` Server",
        "`1` Client",
    ] {
        assert!(PROTOCOL_MD.contains(s), "PROTOCOL.md lacks {s}");
    }
    // The variant counts quoted in the decoding-errors section.
    let counts =
        format!("{CLIENT_MSG_VARIANTS} for `ClientMsg`, {SERVER_MSG_VARIANTS} for `ServerMsg`");
    assert!(PROTOCOL_MD.contains(&counts), "PROTOCOL.md lacks {counts}");
}

#[test]
fn protocol_md_limits_match_limits_rs() {
    use neonet_proto::wire::limits::*;
    let grouped = |n: usize| {
        // 1048576 → "1 048 576", as the document writes numbers.
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 && s.len() > 4 {
                out.push(' ');
            }
            out.push(c);
        }
        out
    };
    for (name, value) in [
        ("FRAME_BYTES_MAX", FRAME_BYTES_MAX),
        ("SNAPSHOT_BYTES_MAX", SNAPSHOT_BYTES_MAX),
        ("SNAPSHOT_PIECE_BYTES_MAX", SNAPSHOT_PIECE_BYTES_MAX),
        ("SNAPSHOT_PIECES_MAX", SNAPSHOT_PIECES_MAX),
        ("NAME_BYTES_MAX", NAME_BYTES_MAX),
        ("ID_BYTES_MAX", ID_BYTES_MAX),
        ("CHAT_BYTES_MAX", CHAT_BYTES_MAX),
        ("CHAT_HISTORY_LEN", CHAT_HISTORY_LEN),
        ("TOKEN_BYTES_MAX", TOKEN_BYTES_MAX),
        ("COMMAND_ARGS_MAX", COMMAND_ARGS_MAX),
        ("COMMAND_ARG_BYTES_MAX", COMMAND_ARG_BYTES_MAX),
        ("ENTITY_PROPS_MAX", ENTITY_PROPS_MAX),
        ("EVENT_NAME_BYTES_MAX", EVENT_NAME_BYTES_MAX),
        ("EVENT_DATA_BYTES_MAX", EVENT_DATA_BYTES_MAX),
        ("HELD_EVENTS_MAX", HELD_EVENTS_MAX),
        ("TEXT_BYTES_MAX", TEXT_BYTES_MAX),
        ("DATAGRAM_BYTES_MAX", DATAGRAM_BYTES_MAX),
        ("ENTITIES_MAX", ENTITIES_MAX),
        ("BLUEPRINTS_MAX", BLUEPRINTS_MAX),
        ("USERS_MAX", USERS_MAX),
    ] {
        let row = format!("| `{name}` | {} |", grouped(value));
        assert!(PROTOCOL_MD.contains(&row), "PROTOCOL.md lacks row {row}");
    }
}

// ---------------------------------------------------------------------------------------------
// Rotation quantization constants (PROTOCOL.md section 12.3). The smallest-three mapping is
// `round((c × sign + K) × (R / (2K)))` with K = `f64::consts::FRAC_1_SQRT_2`, the f64 nearest
// 1/√2. `1.0 / 2f64.sqrt()` is one ulp below it and moves the identity from 512 to 511, so an
// implementation in another language must use these exact bits and this operation order.

#[test]
fn rotation_quantization_constants_and_the_identity_are_pinned() {
    use neonet_proto::transform::{QRot, Quantizer, TransformConfig};
    const K: f64 = std::f64::consts::FRAC_1_SQRT_2;
    assert_eq!(K.to_bits(), 0x3FE6_A09E_667F_3BCD);
    assert_eq!((2.0 * K).to_bits(), 0x3FF6_A09E_667F_3BCD);
    assert_eq!((2.0 * K).to_bits(), 2f64.sqrt().to_bits());
    assert_eq!(
        (1.0 / 2f64.sqrt()).to_bits(),
        0x3FE6_A09E_667F_3BCC,
        "the trap: one ulp low"
    );
    // The per-component factor, computed once: R / (2K). At 10 bits: 723.3...
    assert_eq!((1023.0 / (2.0 * K)).to_bits(), 0x4086_9AF6_3EE5_9BFD);
    // The identity at every allowed width. K × (R / (2K)) is R / 2 = 2^(B-1) - 0.5 exactly,
    // except at 12 bits where it comes out one ulp below (2047.4999999999998).
    for (bits, c) in [
        (9, 256),
        (10, 512),
        (11, 1024),
        (12, 2047),
        (13, 4096),
        (14, 8192),
        (15, 16384),
    ] {
        let q = Quantizer::new(&TransformConfig {
            rotation_bits: bits,
            ..TransformConfig::default()
        })
        .unwrap();
        assert_eq!(
            q.quantize_rotation(Quat::from_xyzw(0.0, 0.0, 0.0, 1.0)),
            QRot {
                largest: 3,
                comps: [c; 3]
            },
            "identity at {bits} bits"
        );
    }
    // Dequantized (10 bits): c × (2K / R) − K for each small component, then normalized, as f32.
    let q = Quantizer::new(&TransformConfig::default()).unwrap();
    let back = q.dequantize_rotation(QRot {
        largest: 3,
        comps: [512; 3],
    });
    assert_eq!(
        back.to_array().map(f32::to_bits),
        [0x3A35_3240, 0x3A35_3240, 0x3A35_3240, 0x3F7F_FFF4]
    );
    // 90° about +y (PROTOCOL.md 12.9, entity 2): y and w tie, the lower index wins.
    let s = std::f32::consts::FRAC_1_SQRT_2;
    assert_eq!(
        q.quantize_rotation(Quat::from_xyzw(0.0, s, 0.0, s)),
        QRot {
            largest: 1,
            comps: [512, 512, 1023]
        }
    );
}
