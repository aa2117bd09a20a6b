//! Encoding and framing of reliable messages.
//!
//! A frame on a stream is a 4-byte little-endian length followed by that many bytes of postcard.
//! Decoding never panics: oversize, truncated, unknown and malformed input each give a
//! [`DecodeError`] variant, and the caller closes that one peer with a clear reason.

use serde::{de::DeserializeOwned, Serialize};

use super::limits::{client_frame_bytes_max, server_frame_bytes_max, FRAME_BYTES_MAX};
use super::msg::{Channel, ClientMsg, ServerMsg};

/// Bytes of the frame length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Number of `ClientMsg` variants: a tag at or above it is an unknown message.
pub const CLIENT_MSG_VARIANTS: u32 = 22;
/// Number of `ServerMsg` variants.
pub const SERVER_MSG_VARIANTS: u32 = 25;

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

    /// A decoder with the protocol's [`FRAME_BYTES_MAX`], the largest frame any channel allows.
    /// Drivers use the per-channel decoders below instead.
    pub fn with_default_limit() -> FrameDecoder {
        FrameDecoder::new(FRAME_BYTES_MAX)
    }

    /// The decoder a server uses for what a client sends on `channel`: it refuses frames over
    /// that channel's limit ([`client_frame_bytes_max`]: 1 MiB on the world channel, 64 KiB on
    /// the others).
    pub fn for_client_channel(channel: Channel) -> FrameDecoder {
        FrameDecoder::new(client_frame_bytes_max(channel))
    }

    /// The decoder a client uses for what the server sends on `channel`
    /// ([`server_frame_bytes_max`]: the snapshot's limit on the world channel).
    pub fn for_server_channel(channel: Channel) -> FrameDecoder {
        FrameDecoder::new(server_frame_bytes_max(channel))
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
        let Some(len) = complete_frame(avail, self.max)? else {
            return Ok(None);
        };
        let body = avail[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len].to_vec();
        self.start += FRAME_HEADER_BYTES + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(body))
    }

    /// [`FrameDecoder::push`] then [`FrameDecoder::take_frames`], but when nothing is
    /// buffered the complete frames go from `bytes` straight to `out` and only a trailing
    /// partial frame is buffered: one copy instead of two.
    pub fn push_and_take(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<usize, DecodeError> {
        if self.buffered() > 0 {
            self.push(bytes);
            return self.take_frames(out);
        }
        let (end, count, error) = scan_frames(bytes, self.max);
        out.extend_from_slice(&bytes[..end]);
        if error.is_none() {
            self.push(&bytes[end..]);
        }
        match error {
            Some(e) => Err(e),
            None => Ok(count),
        }
    }

    /// Moves every complete buffered frame, length prefix included, to the end of `out`, in
    /// order, and returns how many it moved; iterate them with [`frames`]. Each frame's length
    /// is checked against the limit: an oversize frame is an error (the stream cannot be
    /// resynchronized: close it), and `out` then holds the complete frames that preceded it.
    pub fn take_frames(&mut self, out: &mut Vec<u8>) -> Result<usize, DecodeError> {
        let (len, count, error) = scan_frames(&self.buf[self.start..], self.max);
        let end = self.start + len;
        if count > 0 {
            // Copied rather than handing the buffer over: the decoder keeps its capacity, and
            // `out` is sized to the frames (usually a packet's worth), so a busy stream costs no
            // large allocation per read.
            out.extend_from_slice(&self.buf[self.start..end]);
            self.start = end;
            if self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(count),
        }
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

/// The body length a frame at the start of `bytes` declares, if its header is there.
fn declared_len(bytes: &[u8]) -> Option<usize> {
    let h = bytes.get(..FRAME_HEADER_BYTES)?;
    Some(u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize)
}

/// The body length of the complete frame at the start of `bytes`: `Ok(None)` if more bytes are
/// needed, an error if the declared length is over `max`.
fn complete_frame(bytes: &[u8], max: usize) -> Result<Option<usize>, DecodeError> {
    let Some(len) = declared_len(bytes) else {
        return Ok(None);
    };
    if len > max {
        return Err(DecodeError::Oversize { len, max });
    }
    Ok((bytes.len() >= FRAME_HEADER_BYTES + len).then_some(len))
}

/// Scans `bytes` for consecutive complete frames of at most `max` bytes: the length of the run,
/// how many frames it holds, and the oversize error that ended it, if one did.
fn scan_frames(bytes: &[u8], max: usize) -> (usize, usize, Option<DecodeError>) {
    let mut end = 0;
    let mut count = 0;
    loop {
        match complete_frame(&bytes[end..], max) {
            Ok(Some(len)) => {
                end += FRAME_HEADER_BYTES + len;
                count += 1;
            }
            Ok(None) => return (end, count, None),
            Err(e) => return (end, count, Some(e)),
        }
    }
}

/// Iterates the bodies of consecutive length-prefixed frames in `batch` (as
/// [`FrameDecoder::take_frames`] produces them), without copying.
pub fn frames(batch: &[u8]) -> Frames<'_> {
    Frames { rest: batch }
}

/// The iterator of [`frames`]: yields each frame's body, without its length prefix. It never
/// panics: bytes that do not form a whole frame end the iteration and stay in [`Frames::rest`]
/// (a batch from [`FrameDecoder::take_frames`] never has any).
#[derive(Clone, Debug)]
pub struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Frames<'a> {
    /// The bytes not yet iterated: empty once a well-formed batch is exhausted.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let len = declared_len(self.rest)?;
        let body = self
            .rest
            .get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES.checked_add(len)?)?;
        self.rest = &self.rest[FRAME_HEADER_BYTES + len..];
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    fn bodies(batch: &[u8]) -> Vec<Vec<u8>> {
        frames(batch).map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn take_frames_hands_over_several_frames_in_order() {
        let mut d = FrameDecoder::new(16);
        let mut input = frame(b"a");
        input.extend(frame(b""));
        input.extend(frame(b"hello"));
        input.extend(&frame(b"partial")[..6]);
        d.push(&input);
        let mut out = Vec::new();
        assert_eq!(d.take_frames(&mut out), Ok(3));
        assert_eq!(bodies(&out), [b"a".to_vec(), vec![], b"hello".to_vec()]);
        assert!(frames(&out).last().is_some());
        let mut it = frames(&out);
        it.by_ref().for_each(drop);
        assert!(it.rest().is_empty());
        // The partial frame stays buffered.
        assert_eq!(d.buffered(), 6);
        assert_eq!(d.finish(), Err(DecodeError::Truncated));
    }

    #[test]
    fn a_frame_split_across_chunks_comes_out_whole() {
        let mut d = FrameDecoder::new(64);
        let f = frame(b"split across three chunks");
        let mut out = Vec::new();
        d.push(&f[..2]);
        assert_eq!(d.take_frames(&mut out), Ok(0));
        d.push(&f[2..10]);
        assert_eq!(d.take_frames(&mut out), Ok(0));
        assert!(out.is_empty());
        let mut rest = f[10..].to_vec();
        rest.extend(frame(b"next"));
        d.push(&rest);
        assert_eq!(d.take_frames(&mut out), Ok(2));
        assert_eq!(
            bodies(&out),
            [b"split across three chunks".to_vec(), b"next".to_vec()]
        );
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.finish(), Ok(()));
        // A second call appends after what `out` already holds (the copying path).
        d.push(&frame(b"more"));
        assert_eq!(d.take_frames(&mut out), Ok(1));
        assert_eq!(bodies(&out).len(), 3);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn push_and_take_copies_whole_frames_once_and_keeps_the_partial_one() {
        let mut d = FrameDecoder::new(64);
        let mut input = frame(b"one");
        input.extend(frame(b"two"));
        let third = frame(b"three, split");
        input.extend(&third[..5]);
        let mut out = Vec::new();
        assert_eq!(d.push_and_take(&input, &mut out), Ok(2));
        assert_eq!(bodies(&out), [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(d.buffered(), 5);
        // Something buffered: the next chunk completes it.
        let mut out = Vec::new();
        let mut rest = third[5..].to_vec();
        rest.extend(frame(b"four"));
        assert_eq!(d.push_and_take(&rest, &mut out), Ok(2));
        assert_eq!(bodies(&out), [b"three, split".to_vec(), b"four".to_vec()]);
        assert_eq!(d.finish(), Ok(()));
        let mut input = frame(b"ok");
        input.extend(&1000u32.to_le_bytes());
        let mut out = Vec::new();
        assert_eq!(
            d.push_and_take(&input, &mut out),
            Err(DecodeError::Oversize { len: 1000, max: 64 })
        );
        assert_eq!(bodies(&out), [b"ok".to_vec()]);
    }

    #[test]
    fn an_oversize_frame_is_an_error_after_the_frames_before_it() {
        let mut d = FrameDecoder::new(8);
        let mut input = frame(b"ok");
        input.extend(frame(b"much too long for the limit"));
        d.push(&input);
        let mut out = Vec::new();
        assert_eq!(
            d.take_frames(&mut out),
            Err(DecodeError::Oversize { len: 27, max: 8 })
        );
        assert_eq!(bodies(&out), [b"ok".to_vec()]);
        // Only a declared length over the limit, no body yet: still an error, no panic.
        let mut d = FrameDecoder::new(8);
        d.push(&u32::MAX.to_le_bytes());
        assert!(matches!(
            d.take_frames(&mut Vec::new()),
            Err(DecodeError::Oversize { .. })
        ));
    }

    #[test]
    fn the_iterator_stops_at_bytes_that_are_not_a_whole_frame() {
        let mut batch = frame(b"x");
        batch.extend(&u32::MAX.to_le_bytes());
        batch.push(1);
        let mut it = frames(&batch);
        assert_eq!(it.next(), Some(&b"x"[..]));
        assert_eq!(it.next(), None);
        assert_eq!(it.rest().len(), 5);
        assert_eq!(frames(&[1, 2]).count(), 0);
    }
}
