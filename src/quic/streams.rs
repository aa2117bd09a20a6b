//! Reading neonet's channels off unidirectional streams, over a native QUIC connection or a
//! WebTransport session alike ([`UniStreams`]): one task per stream, the protocol crate's
//! per-channel decoder, complete frames forwarded in batches.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use quinn::{Connection, VarInt};
use tokio::sync::mpsc;

use neonet_proto::wire::codec::{DecodeError, FrameDecoder};
use neonet_proto::wire::msg::Channel;

use super::STREAM_READ_CHUNK_BYTES;

/// What a stream reader produced.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// Every complete frame of one read, in order: consecutive frames, each with its 4-byte
    /// length prefix, each within the channel's limit. Iterate the bodies with
    /// [`neonet_proto::wire::codec::frames`]. Never empty.
    Frames {
        /// The stream's channel.
        channel: Channel,
        /// The frames.
        frames: Vec<u8>,
    },
    /// The stream broke the framing rules; it is no longer read.
    Error(DecodeError),
}

/// A connection that carries neonet's channels on unidirectional streams: a native QUIC
/// connection, or a WebTransport session (whose streams are QUIC streams under an HTTP/3
/// session). The stream readers and [`super::ChannelWriters`] work over either.
pub trait UniStreams: Clone + Send + Sync + 'static {
    /// Its sending stream.
    type Send: UniSend;
    /// Its receiving stream.
    type Recv: UniRecv;
    /// Opens a stream; `None` once the connection is gone.
    fn open_uni(&self) -> impl std::future::Future<Output = Option<Self::Send>> + Send;
    /// The peer's next stream; `None` once the connection is gone.
    fn accept_uni(&self) -> impl std::future::Future<Output = Option<Self::Recv>> + Send;
}

/// The sending half of a unidirectional stream.
pub trait UniSend: Send + 'static {
    /// Sets the stream's priority (higher first).
    fn set_priority(&self, priority: i32);
    /// Writes all of `bytes`; `false` if the stream or connection failed.
    fn write_all(&mut self, bytes: &[u8]) -> impl std::future::Future<Output = bool> + Send;
    /// Writes one chunk without a copy; `false` if the stream or connection failed.
    fn write_chunk(&mut self, bytes: Bytes) -> impl std::future::Future<Output = bool> + Send;
    /// Finishes the stream; `false` if it was already closed.
    fn finish(&mut self) -> bool;
    /// Abandons the stream: the peer sees it reset (what was unsent is dropped).
    fn reset(&mut self);
    /// Waits until the peer has everything (or stopped the stream, or the connection ended).
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// How reading a stream went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFailure {
    /// The peer reset the stream.
    Reset,
    /// The connection is gone (its end is reported elsewhere).
    Gone,
}

/// The receiving half of a unidirectional stream.
pub trait UniRecv: Send + 'static {
    /// The next chunk of at most `max` bytes, in order; `None` at the end of the stream.
    fn read_chunk(
        &mut self,
        max: usize,
    ) -> impl std::future::Future<Output = Result<Option<Bytes>, ReadFailure>> + Send;
    /// Tells the peer to stop sending.
    fn stop(&mut self);
}

impl UniStreams for Connection {
    type Send = quinn::SendStream;
    type Recv = quinn::RecvStream;
    async fn open_uni(&self) -> Option<quinn::SendStream> {
        Connection::open_uni(self).await.ok()
    }
    async fn accept_uni(&self) -> Option<quinn::RecvStream> {
        Connection::accept_uni(self).await.ok()
    }
}

impl UniSend for quinn::SendStream {
    fn set_priority(&self, priority: i32) {
        let _ = quinn::SendStream::set_priority(self, priority);
    }
    async fn write_all(&mut self, bytes: &[u8]) -> bool {
        quinn::SendStream::write_all(self, bytes).await.is_ok()
    }
    async fn write_chunk(&mut self, bytes: Bytes) -> bool {
        quinn::SendStream::write_chunk(self, bytes).await.is_ok()
    }
    fn finish(&mut self) -> bool {
        quinn::SendStream::finish(self).is_ok()
    }
    fn reset(&mut self) {
        let _ = quinn::SendStream::reset(self, VarInt::from_u32(0));
    }
    async fn stopped(&self) {
        let _ = quinn::SendStream::stopped(self).await;
    }
}

impl UniRecv for quinn::RecvStream {
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadFailure> {
        match quinn::RecvStream::read_chunk(self, max, true).await {
            Ok(c) => Ok(c.map(|c| c.bytes)),
            Err(quinn::ReadError::Reset(_)) => Err(ReadFailure::Reset),
            Err(_) => Err(ReadFailure::Gone),
        }
    }
    fn stop(&mut self) {
        let _ = quinn::RecvStream::stop(self, VarInt::from_u32(0));
    }
}

/// The channels a connection's peer has opened a stream for: each may have one, a second is a
/// stream error. Shared by the readers of one connection's streams.
#[derive(Debug, Default)]
pub struct ChannelsSeen(AtomicU8);

impl ChannelsSeen {
    /// Claims `channel` for a new stream; `false` if a stream of it was seen before.
    fn claim(&self, channel: Channel) -> bool {
        let bit = 1u8 << (channel as u8);
        self.0.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }
}

/// One incoming unidirectional stream's framing, sans-IO: the first byte names the channel,
/// then come length-prefixed frames within the limit of the channel's decoder. The async reader
/// ([`accept_streams`]) and the drivers that read quinn-proto's streams themselves (the relay's
/// single loop and the load tool's light clients, through [`ChannelStream::read_proto`]) all read
/// streams with it, so all apply the same rules.
#[derive(Debug, Default)]
pub struct ChannelStream {
    channel: Option<Channel>,
    decoder: Option<FrameDecoder>,
}

impl ChannelStream {
    /// The stream's channel, once its first byte arrived.
    pub fn channel(&self) -> Option<Channel> {
        self.channel
    }

    /// Takes the next bytes read from the stream, in order: appends every complete frame (each
    /// with its length prefix) to `frames`. An unknown channel id, a second stream for a channel
    /// (`seen`), or an oversize frame is an error, after which the stream must not be read any
    /// more; `frames` then holds the complete frames that preceded it, to be delivered first.
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        seen: &ChannelsSeen,
        decoder_for: fn(Channel) -> FrameDecoder,
        frames: &mut Vec<u8>,
    ) -> Result<(), DecodeError> {
        if self.channel.is_none() {
            let Some((&first, rest)) = bytes.split_first() else {
                return Ok(());
            };
            bytes = rest;
            let Some(ch) = Channel::from_u8(first) else {
                return Err(DecodeError::Malformed(format!(
                    "unknown channel id {first}"
                )));
            };
            if !seen.claim(ch) {
                return Err(DecodeError::Malformed(format!(
                    "a second stream for the {ch:?} channel"
                )));
            }
            self.channel = Some(ch);
            self.decoder = Some(decoder_for(ch));
        }
        match self.decoder.as_mut() {
            Some(d) => d.push_and_take(bytes, frames).map(|_| ()),
            None => Ok(()),
        }
    }

    /// The stream ended: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), DecodeError> {
        self.decoder.as_ref().map_or(Ok(()), FrameDecoder::finish)
    }

    /// Reads everything quinn-proto has of stream `id` of `conn` (a driver that drives
    /// quinn-proto itself: the relay's single loop, the load tool's light clients), by
    /// [`ChannelStream::push`]'s rules: complete frames are appended to `frames` (deliver them
    /// first, whatever the outcome). A stream that broke the rules or was reset is stopped.
    pub fn read_proto(
        &mut self,
        conn: &mut quinn_proto::Connection,
        id: quinn_proto::StreamId,
        seen: &ChannelsSeen,
        decoder_for: fn(Channel) -> FrameDecoder,
        frames: &mut Vec<u8>,
    ) -> ProtoRead {
        let mut stream = conn.recv_stream(id);
        let Ok(mut chunks) = stream.read(true) else {
            return ProtoRead::Gone;
        };
        let outcome = loop {
            match chunks.next(STREAM_READ_CHUNK_BYTES) {
                Ok(Some(chunk)) => {
                    if let Err(e) = self.push(&chunk.bytes, seen, decoder_for, frames) {
                        break ProtoRead::Failed(e);
                    }
                }
                Ok(None) => match self.finish() {
                    Ok(()) => break ProtoRead::Ended,
                    Err(e) => break ProtoRead::Failed(e),
                },
                Err(quinn_proto::ReadError::Blocked) => break ProtoRead::Blocked,
                Err(quinn_proto::ReadError::Reset(_)) => {
                    break ProtoRead::Failed(DecodeError::Truncated)
                }
            }
        };
        // Flow-control credit for what was read goes out with the connection's next packets.
        let _ = chunks.finalize();
        if let ProtoRead::Failed(_) = outcome {
            let _ = conn.recv_stream(id).stop(quinn_proto::VarInt::from_u32(0));
        }
        outcome
    }
}

/// How [`ChannelStream::read_proto`] left a stream.
#[derive(Clone, Debug, PartialEq)]
pub enum ProtoRead {
    /// Everything that had arrived was read; more may come.
    Blocked,
    /// The stream ended cleanly: forget it.
    Ended,
    /// The stream broke the framing rules or was reset (as [`DecodeError::Truncated`]): it was
    /// stopped, forget it and report the error.
    Failed(DecodeError),
    /// quinn-proto no longer has the stream: forget it.
    Gone,
}

/// Accepts the peer's unidirectional streams until the connection ends, reading each in its own
/// task: first byte the channel, then frames within the limit of the decoder `decoder_for(channel)`
/// gives (the protocol crate's per-channel decoders: `FrameDecoder::for_client_channel` on a
/// server, `FrameDecoder::for_server_channel` on a client), by [`ChannelStream`]'s rules. The
/// complete frames of each read go to `tx` together as one `map(StreamEvent::Frames)` (one
/// message per read, not per frame), errors as `map(StreamEvent::Error)`; a full `tx` holds the
/// reader back (and QUIC flow control holds the peer back).
pub async fn accept_streams<C, T, F>(
    conn: C,
    decoder_for: fn(Channel) -> FrameDecoder,
    tx: mpsc::Sender<T>,
    map: F,
) where
    C: UniStreams,
    T: Send + 'static,
    F: Fn(StreamEvent) -> T + Clone + Send + Sync + 'static,
{
    let seen = Arc::new(ChannelsSeen::default());
    while let Some(recv) = conn.accept_uni().await {
        tokio::spawn(read_stream(
            recv,
            seen.clone(),
            decoder_for,
            tx.clone(),
            map.clone(),
        ));
    }
}

async fn read_stream<R: UniRecv, T, F>(
    mut recv: R,
    seen: Arc<ChannelsSeen>,
    decoder_for: fn(Channel) -> FrameDecoder,
    tx: mpsc::Sender<T>,
    map: F,
) where
    F: Fn(StreamEvent) -> T,
{
    let mut stream = ChannelStream::default();
    let error = loop {
        let chunk = match recv.read_chunk(STREAM_READ_CHUNK_BYTES).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => match stream.finish() {
                Ok(()) => return,
                Err(e) => break e,
            },
            Err(ReadFailure::Reset) => break DecodeError::Truncated,
            Err(ReadFailure::Gone) => return, // its end is reported elsewhere
        };
        let mut frames = Vec::new();
        let taken = stream.push(&chunk, &seen, decoder_for, &mut frames);
        if let (false, Some(channel)) = (frames.is_empty(), stream.channel()) {
            if tx
                .send(map(StreamEvent::Frames { channel, frames }))
                .await
                .is_err()
            {
                return;
            }
        }
        if let Err(e) = taken {
            break e;
        }
    };
    recv.stop();
    let _ = tx.send(map(StreamEvent::Error(error))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use neonet_proto::wire::codec::encode_frame;
    use neonet_proto::wire::msg::ClientMsg;

    fn frame() -> Vec<u8> {
        encode_frame(&ClientMsg::Goodbye)
    }

    #[test]
    fn a_channel_stream_names_its_channel_then_yields_whole_frames_across_reads() {
        let seen = ChannelsSeen::default();
        let mut s = ChannelStream::default();
        let mut out = Vec::new();
        let f = frame();
        s.push(&[], &seen, FrameDecoder::for_client_channel, &mut out)
            .unwrap();
        assert_eq!(s.channel(), None, "no byte yet");
        let mut bytes = vec![Channel::Control as u8];
        bytes.extend_from_slice(&f);
        bytes.extend_from_slice(&f[..2]);
        s.push(&bytes, &seen, FrameDecoder::for_client_channel, &mut out)
            .unwrap();
        assert_eq!(s.channel(), Some(Channel::Control));
        assert_eq!(out, f, "one whole frame, the partial one held");
        assert_eq!(
            s.finish(),
            Err(DecodeError::Truncated),
            "ends inside a frame"
        );
        out.clear();
        s.push(&f[2..], &seen, FrameDecoder::for_client_channel, &mut out)
            .unwrap();
        assert_eq!(out, f);
        assert_eq!(s.finish(), Ok(()));
    }

    #[test]
    fn a_second_stream_for_a_channel_or_an_unknown_channel_is_an_error() {
        let seen = ChannelsSeen::default();
        let mut out = Vec::new();
        let mut first = ChannelStream::default();
        first
            .push(
                &[Channel::Chat as u8],
                &seen,
                FrameDecoder::for_client_channel,
                &mut out,
            )
            .unwrap();
        let mut second = ChannelStream::default();
        assert!(second
            .push(
                &[Channel::Chat as u8],
                &seen,
                FrameDecoder::for_client_channel,
                &mut out
            )
            .is_err());
        let mut unknown = ChannelStream::default();
        assert!(unknown
            .push(&[200], &seen, FrameDecoder::for_client_channel, &mut out)
            .is_err());
        let mut other = ChannelStream::default();
        other
            .push(
                &[Channel::World as u8],
                &seen,
                FrameDecoder::for_client_channel,
                &mut out,
            )
            .unwrap();
    }
}
