//! Writing neonet's channels: per channel a bounded byte queue ([`CHANNEL_QUEUE_BYTES_MAX`])
//! and a writer task that opens the channel's stream on first use, at the channel's priority,
//! and finishes it on close ([`ChannelWriters`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use neonet_proto::wire::msg::Channel;

use super::streams::{UniSend, UniStreams};
use super::CLOSE_FLUSH_TIMEOUT;

/// Bytes one channel of one connection may have queued for its writer (frames not yet handed
/// to quinn), 4 MiB. The relay broadcasts every change to every client: at 20,000 changes/s of
/// ≈ 29-byte frames a client's World channel takes ≈ 0.6 MB/s, so this absorbs several seconds
/// of a stalled reader (and a scheduling hiccup of a few hundred ms many times over) before
/// the peer counts as too slow and is closed ([`super::CLOSE_CODE_OVERFLOW`]); it still bounds memory
/// per connection. Bytes already handed to quinn are not counted (quinn holds at most the
/// peer's stream flow-control window of them). A frame larger than this (a snapshot) is
/// accepted when the queue is empty.
pub const CHANNEL_QUEUE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most capacity a channel's queue starts with after the writer took its bytes, bytes: it
/// starts with what the last take held, so a steady stream rarely reallocates, but a burst's
/// size is not kept reserved for the connection's lifetime.
const QUEUE_CAPACITY_HINT_MAX: usize = 64 * 1024;

/// A channel's queue is full: the peer reads too slowly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {0:?} channel's send queue is full")]
pub struct QueueFull(pub Channel);

/// What a channel's producers and its writer task share.
#[derive(Debug, Default)]
struct QueueState {
    /// Frames queued and not yet taken by the writer, in order.
    buf: Vec<u8>,
    /// Finish the stream after `buf`; nothing queued later is sent.
    finish: bool,
    /// The writer has stopped (the connection is gone or the stream finished).
    stopped: bool,
}

/// One channel's outgoing byte queue, bounded in bytes. Producers append whole frames under a
/// short lock; the writer swaps the whole buffer out and writes it in one call.
#[derive(Debug)]
struct ByteQueue {
    state: Mutex<QueueState>,
    /// Wakes the writer: the buffer went from empty to non-empty, or a finish was asked for.
    /// `notify_one` stores a permit when the writer is busy, so no wake-up is lost.
    wake: Notify,
    max_bytes: usize,
}

impl ByteQueue {
    fn new(max_bytes: usize) -> ByteQueue {
        ByteQueue {
            state: Mutex::new(QueueState::default()),
            wake: Notify::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // Every update is a single append or swap: a panic cannot leave it half done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `frame`; `false` if that would pass the byte bound (the frame is not queued).
    /// A frame queued after a finish, or once the writer stopped, is dropped silently: the
    /// stream is ending or the connection is gone, which is reported elsewhere.
    fn push(&self, frame: &[u8]) -> bool {
        let mut s = self.lock();
        if s.finish || s.stopped {
            return true;
        }
        let was_empty = s.buf.is_empty();
        if !was_empty && s.buf.len() + frame.len() > self.max_bytes {
            return false;
        }
        s.buf.extend_from_slice(frame);
        drop(s);
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// Asks the writer to finish the stream after what is queued.
    fn finish(&self) {
        self.lock().finish = true;
        self.wake.notify_one();
    }

    /// Waits until there are bytes or a finish; returns the queued bytes and whether to finish
    /// after them. The queue starts afresh with room for `next_capacity` bytes.
    async fn take(&self, next_capacity: usize) -> (Vec<u8>, bool) {
        loop {
            {
                let mut s = self.lock();
                if !s.buf.is_empty() || s.finish {
                    let out = std::mem::replace(&mut s.buf, Vec::with_capacity(next_capacity));
                    return (out, s.finish);
                }
            }
            self.wake.notified().await;
        }
    }

    /// Marks the writer stopped and frees what is queued.
    fn stop(&self) {
        let mut s = self.lock();
        s.stopped = true;
        s.buf = Vec::new();
    }
}

/// The outbound side of one connection: per channel, one byte queue bounded by
/// [`CHANNEL_QUEUE_BYTES_MAX`] and one writer task that writes everything queued in one call,
/// so a stalled channel (a big snapshot under flow control) never blocks another and a burst of
/// small frames costs one stream write, not one per frame. Dropping it finishes the streams
/// after what is queued, like [`ChannelWriters::finish`] without the wait.
#[derive(Debug)]
pub struct ChannelWriters {
    queues: Vec<Arc<ByteQueue>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A channel's send priority (quinn's stream priority, higher first): Control above Chat above
/// Events above World, so a big blueprint or snapshot never holds up chat.
pub fn priority(channel: Channel) -> i32 {
    match channel {
        Channel::Control => 3,
        Channel::Chat => 2,
        Channel::Events => 1,
        Channel::World => 0,
    }
}

impl ChannelWriters {
    /// Spawns one writer per channel on `conn`. Streams open lazily, on the first frame.
    pub fn spawn<C: UniStreams>(conn: &C) -> ChannelWriters {
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        for ch in Channel::ALL {
            let q = Arc::new(ByteQueue::new(CHANNEL_QUEUE_BYTES_MAX));
            queues.push(q.clone());
            tasks.push(tokio::spawn(write_channel(conn.clone(), ch, q)));
        }
        ChannelWriters {
            queues,
            tasks: Mutex::new(tasks),
        }
    }

    /// Queues a frame (length prefix included) without waiting; [`QueueFull`] if the channel
    /// already holds so many bytes that this frame would pass [`CHANNEL_QUEUE_BYTES_MAX`].
    pub fn try_send(&self, channel: Channel, frame: &[u8]) -> Result<(), QueueFull> {
        if self.queues[channel as usize].push(frame) {
            Ok(())
        } else {
            Err(QueueFull(channel))
        }
    }

    /// Bytes waiting in the fullest channel's queue (not yet taken by its writer).
    pub fn queued_bytes(&self) -> usize {
        self.queues
            .iter()
            .map(|q| q.lock().buf.len())
            .max()
            .unwrap_or(0)
    }

    /// Finishes every stream after what is queued, and waits (at most [`CLOSE_FLUSH_TIMEOUT`]
    /// plus a little) for the peer to acknowledge it all.
    pub async fn finish(&self) {
        for q in &self.queues {
            q.finish();
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT + Duration::from_millis(200), all).await;
    }
}

impl Drop for ChannelWriters {
    fn drop(&mut self) {
        // The writers flush, finish and exit rather than wait for frames for ever.
        for q in &self.queues {
            q.finish();
        }
    }
}

async fn write_channel<C: UniStreams>(conn: C, channel: Channel, queue: Arc<ByteQueue>) {
    let stream = write_queued(&conn, channel, &queue).await;
    queue.stop();
    if let Some(mut s) = stream {
        if s.finish() {
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, s.stopped()).await;
        }
    }
}

/// Writes what `queue` gets until it asks for a finish; the stream, if one was opened and
/// still works, to be finished. Each take is handed to quinn as one chunk, without a copy.
async fn write_queued<C: UniStreams>(
    conn: &C,
    channel: Channel,
    queue: &ByteQueue,
) -> Option<C::Send> {
    let mut stream: Option<C::Send> = None;
    let mut capacity = 0;
    loop {
        let (bytes, finishing) = queue.take(capacity).await;
        capacity = bytes.len().min(QUEUE_CAPACITY_HINT_MAX);
        if !bytes.is_empty() {
            let s = match stream.as_mut() {
                Some(s) => s,
                None => {
                    let s = conn.open_uni().await?;
                    s.set_priority(priority(channel));
                    let s = stream.insert(s);
                    if !s.write_all(&[channel as u8]).await {
                        return None;
                    }
                    s
                }
            };
            if !s.write_chunk(Bytes::from(bytes)).await {
                return None;
            }
        }
        if finishing {
            return stream;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the queue's wake-up is pending (a permit stored), consuming it.
    async fn woken(q: &ByteQueue) -> bool {
        tokio::time::timeout(Duration::from_millis(20), q.wake.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn the_byte_queue_is_bounded_in_bytes_and_keeps_order() {
        let q = ByteQueue::new(10);
        assert!(q.push(&[1, 2, 3, 4, 5, 6]));
        assert!(!q.push(&[7, 8, 9, 10, 11]), "6 + 5 bytes is over 10");
        assert!(q.push(&[7, 8, 9, 10]), "exactly at the bound");
        assert!(!q.push(&[11]));
        let (bytes, finish) = q.take(0).await;
        assert_eq!(bytes, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert!(!finish);
        // Taking empties the queue: the bound applies afresh.
        assert!(q.push(&[11]));
        assert_eq!(q.take(4).await.0, [11]);
        // A frame over the bound still goes through an empty queue (a snapshot), alone.
        assert!(q.push(&[0; 32]));
        assert!(!q.push(&[1]));
        assert_eq!(q.take(0).await.0.len(), 32);
    }

    #[tokio::test]
    async fn the_byte_queue_wakes_its_writer_on_the_first_byte_only() {
        let q = ByteQueue::new(1024);
        assert!(!woken(&q).await);
        assert!(q.push(&[1]));
        assert!(woken(&q).await, "empty to non-empty wakes the writer");
        assert!(q.push(&[2]));
        assert!(!woken(&q).await, "already non-empty: no second wake-up");
        assert_eq!(q.take(0).await.0, [1, 2]);
        // A waiting writer is woken by the next push.
        let q = Arc::new(q);
        let writer = tokio::spawn({
            let q = q.clone();
            async move { q.take(0).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished());
        assert!(q.push(&[3, 4]));
        let (bytes, finish) = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer woke")
            .expect("no panic");
        assert_eq!((bytes, finish), (vec![3, 4], false));
    }

    #[tokio::test]
    async fn a_finish_flushes_first_and_later_frames_are_dropped() {
        let q = ByteQueue::new(1024);
        assert!(q.push(&[1, 2]));
        q.finish();
        assert!(
            q.push(&[3]),
            "accepted but dropped: the stream is finishing"
        );
        assert_eq!(q.take(0).await, (vec![1, 2], true));
        let q = ByteQueue::new(4);
        q.stop();
        assert!(
            q.push(&[0; 8]),
            "a stopped writer's queue drops frames, never fills"
        );
        assert!(q.push(&[0; 8]));
    }
}
