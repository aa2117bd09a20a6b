//! Every limit on what a peer may send, with its unit and the reason for its value.
//! Breaking one ends that peer's session with [`crate::wire::msg::CloseReason::ProtocolViolation`] or
//! refuses the one change (`Refused`), and never affects any other session.

/// Largest reliable frame, in bytes, after the 4-byte length prefix. A big blueprint with an
/// inline script fits; anything larger belongs in an asset store, not the world protocol.
pub const FRAME_BYTES_MAX: usize = 1024 * 1024;

/// Largest frame a client may send on the control, chat and events channels, in bytes. Only
/// the world channel carries big payloads (blueprints); a smaller limit elsewhere bounds the
/// memory a decoded message can take (postcard expands a list of empty strings ~30×).
pub const SMALL_FRAME_BYTES_MAX: usize = 64 * 1024;

/// The largest frame a server accepts from a client on `channel`, in bytes.
pub fn client_frame_bytes_max(channel: crate::wire::msg::Channel) -> usize {
    match channel {
        crate::wire::msg::Channel::World => FRAME_BYTES_MAX,
        _ => SMALL_FRAME_BYTES_MAX,
    }
}

/// The largest frame a client accepts from the server on `channel`, in bytes: the snapshot's
/// limit on the world channel (the snapshot is the one message that grows with the world),
/// [`FRAME_BYTES_MAX`] on the others.
pub fn server_frame_bytes_max(channel: crate::wire::msg::Channel) -> usize {
    match channel {
        crate::wire::msg::Channel::World => SNAPSHOT_BYTES_MAX,
        _ => FRAME_BYTES_MAX,
    }
}

/// Largest snapshot, in bytes (server to client only): a world of thousands of entities
/// and blueprints. Clients accept up to this on the world stream for the `Snapshot` message,
/// and reassemble at most this many bytes from `SnapshotPiece`s.
pub const SNAPSHOT_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Largest piece of a snapshot, bytes of the encoded `Snapshot` message per `SnapshotPiece`:
/// 64 KiB. A snapshot up to this size goes as one `Snapshot` message; a larger one in pieces
/// of exactly this size (the last one shorter). Small enough that a piece is a small part of a
/// connection's send queue (4 MiB in the relay) and of a slow path's second (64 KiB is half a
/// second at 1 Mbit/s), large enough that framing costs nothing (12 bytes a piece).
pub const SNAPSHOT_PIECE_BYTES_MAX: usize = 64 * 1024;

/// Most pieces one snapshot may come in: [`SNAPSHOT_BYTES_MAX`] / [`SNAPSHOT_PIECE_BYTES_MAX`],
/// 1,024. A client refuses a larger `count` before keeping any piece.
pub const SNAPSHOT_PIECES_MAX: usize = SNAPSHOT_BYTES_MAX / SNAPSHOT_PIECE_BYTES_MAX;

/// Longest display name, in bytes (UTF-8).
pub const NAME_BYTES_MAX: usize = 64;
/// Longest id (blueprint id), in bytes.
pub const ID_BYTES_MAX: usize = 64;
/// Longest chat message, in bytes (UTF-8). Chat is for people; longer text is abuse.
pub const CHAT_BYTES_MAX: usize = 2000;
/// Chat messages the world keeps (and sends in the snapshot), as the reference does.
pub const CHAT_HISTORY_LEN: usize = 50;
/// Longest auth token, in bytes.
pub const TOKEN_BYTES_MAX: usize = 2048;
/// Most arguments in one command.
pub const COMMAND_ARGS_MAX: usize = 16;
/// Longest command argument, in bytes.
pub const COMMAND_ARG_BYTES_MAX: usize = 256;
/// Most named fields on one entity.
pub const ENTITY_PROPS_MAX: usize = 64;
/// Longest entity event name, in bytes.
pub const EVENT_NAME_BYTES_MAX: usize = 64;
/// Largest entity event payload, in bytes: events are signals, not transfers.
pub const EVENT_DATA_BYTES_MAX: usize = 16 * 1024;
/// Events a client holds while waiting for the blueprint version they need.
pub const HELD_EVENTS_MAX: usize = 1024;
/// Longest setting or URL string, in bytes.
pub const TEXT_BYTES_MAX: usize = 4096;
/// Largest datagram the protocol ever produces or accepts, in bytes. The actual size of every
/// send comes from the connection's current `max_datagram_size()`; this only bounds parsing.
pub const DATAGRAM_BYTES_MAX: usize = 1500;
/// Entities a world may hold: bounds memory and the snapshot.
pub const ENTITIES_MAX: usize = 100_000;
/// Users a world may know. Every join without a token creates one (and stores it), and so does
/// a signed token vouching for a user the world does not know yet (a backend's new player), so
/// this bounds what reconnecting peers, or a backend minting ids, can add to memory and the
/// database (~100 bytes each). Past it only users the world knows may join.
pub const USERS_MAX: usize = 1_000_000;
/// Blueprints a world may hold.
pub const BLUEPRINTS_MAX: usize = 10_000;
