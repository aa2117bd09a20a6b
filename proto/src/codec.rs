//! Encoding and framing of reliable messages.
//!
//! A frame on a stream is a 4-byte little-endian length followed by that many bytes of postcard.
//! Decoding never panics: oversize, truncated, unknown and malformed input each give a
//! [`DecodeError`] variant, and the caller closes that one peer with a clear reason.

use serde::{de::DeserializeOwned, Serialize};

use crate::limits::FRAME_BYTES_MAX;
use crate::msg::{ClientMsg, ServerMsg};

/// Bytes of the frame length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Number of `ClientMsg` variants: a tag at or above it is an unknown message.
pub const CLIENT_MSG_VARIANTS: u32 = 18;
/// Number of `ServerMsg` variants.
pub const SERVER_MSG_VARIANTS: u32 = 20;

/// Why bytes from a peer could not be decoded. Every variant is the peer's fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame's declared length exceeds the limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    Oversize {
        /// Declared length, bytes.
        len: usize,
        /// The limit, bytes.
        max: usize,
    },
    /// The input ended inside a frame or a message.
    #[error("truncated input")]
    Truncated,
    /// The message tag names no message of this protocol version.
    #[error("unknown message tag {0}")]
    UnknownMessage(u32),
    /// The bytes do not form a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes were left over after the message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Encodes any message body with postcard. Infallible for this protocol's types.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_allocvec(msg).expect("postcard encoding of protocol types cannot fail")
}

/// Encodes `msg` as a length-prefixed frame.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = encode(msg);
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn read_varint_u32(bytes: &[u8]) -> Result<u32, DecodeError> {
    let mut v: u32 = 0;
    for (i, b) in bytes.iter().take(5).enumerate() {
        if i == 4 && *b > 0x0f {
            return Err(DecodeError::Malformed("tag varint overflows u32".into()));
        }
        v |= ((b & 0x7f) as u32) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    if bytes.len() < 5 {
        Err(DecodeError::Truncated)
    } else {
        Err(DecodeError::Malformed("tag varint too long".into()))
    }
}

fn decode_tagged<T: DeserializeOwned>(bytes: &[u8], variants: u32) -> Result<T, DecodeError> {
    let tag = read_varint_u32(bytes)?;
    if tag >= variants {
        return Err(DecodeError::UnknownMessage(tag));
    }
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(DecodeError::TrailingBytes(rest.len())),
        Err(postcard::Error::DeserializeUnexpectedEnd) => Err(DecodeError::Truncated),
        Err(e) => Err(DecodeError::Malformed(e.to_string())),
    }
}

/// Decodes one client message body (without frame header).
pub fn decode_client(bytes: &[u8]) -> Result<ClientMsg, DecodeError> {
    decode_tagged(bytes, CLIENT_MSG_VARIANTS)
}

/// Decodes one server message body (without frame header).
pub fn decode_server(bytes: &[u8]) -> Result<ServerMsg, DecodeError> {
    decode_tagged(bytes, SERVER_MSG_VARIANTS)
}

/// Splits a byte stream into frames. Feed it whatever arrives; take complete frames out.
/// Memory is bounded by the frame limit plus what one `push` adds.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already returned as frames; compacted lazily so that taking many small
    /// frames from one large push costs linear time, not quadratic.
    start: usize,
    max: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max` bytes.
    pub fn new(max: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// A decoder with the protocol's [`FRAME_BYTES_MAX`].
    pub fn with_default_limit() -> FrameDecoder {
        FrameDecoder::new(FRAME_BYTES_MAX)
    }

    /// Appends received bytes. Callers take frames out after every push, so the buffer holds
    /// at most one partial frame (bounded by the limit) plus one push.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame body, `Ok(None)` if more bytes are needed, or an error if the
    /// declared length is over the limit (the stream cannot be resynchronized: close it).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        let avail = &self.buf[self.start..];
        if avail.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let len = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > self.max {
            return Err(DecodeError::Oversize { len, max: self.max });
        }
        if avail.len() < FRAME_HEADER_BYTES + len {
            return Ok(None);
        }
        let body = avail[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len].to_vec();
        self.start += FRAME_HEADER_BYTES + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(body))
    }

    /// Called at end of stream: an error if a partial frame remains.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buffered() == 0 {
            Ok(())
        } else {
            Err(DecodeError::Truncated)
        }
    }
}
