//! What drives quinn-proto from one event loop on one thread needs around a UDP socket, shared
//! by the relay's single-loop QUIC driver (`relay::quic_loop`), and the load tool's light
//! clients and its `fanout --target proto` server (Linux only: `sendmmsg`):
//!
//! - [`SendQueue`]: packets of many connections sent in batches of up to [`SEND_BATCH`] per
//!   `sendmmsg` system call (`libc`, since quinn-udp sends one destination per call);
//! - [`RecvBatch`]: `recvmmsg` with GRO through quinn-udp, split back into packets;
//! - [`Deadlines`]: one heap of the connections' next deadlines, stale entries skipped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Instant;

/// Packets per `sendmmsg` call: 64. Enough to amortize the system call (about 1 µs here)
/// over many packets; more only grows the stack arrays.
pub const SEND_BATCH: usize = 64;

/// Bytes of one outgoing packet slot: 1500, the largest datagram quinn sends on this path
/// (GSO is not used: one slot, one packet, so batches can mix destinations and connections).
pub const PACKET_SLOT_BYTES: usize = 1500;

/// Bytes of one receive buffer: 64 KiB, what one GRO-coalesced read can deliver.
const RECV_BUF_BYTES: usize = 64 * 1024;

/// Packets waiting for the next `sendmmsg`.
pub struct SendQueue {
    bufs: Vec<Vec<u8>>,
    dests: Vec<SocketAddr>,
    len: usize,
    /// Packets the kernel refused (a full socket buffer): counted, never retried (QUIC
    /// recovers lost packets itself).
    pub dropped: u64,
}

impl Default for SendQueue {
    fn default() -> Self {
        SendQueue::new()
    }
}

impl SendQueue {
    /// An empty queue with its [`SEND_BATCH`] slots allocated.
    pub fn new() -> SendQueue {
        SendQueue {
            bufs: (0..SEND_BATCH)
                .map(|_| Vec::with_capacity(PACKET_SLOT_BYTES))
                .collect(),
            dests: vec![SocketAddr::from(([0, 0, 0, 0], 0)); SEND_BATCH],
            len: 0,
            dropped: 0,
        }
    }

    /// The next free slot, emptied, flushing to `socket` first when every slot is taken. Fill
    /// it, then [`SendQueue::push`] its destination (or leave it: an unpushed slot is reused).
    pub fn slot(&mut self, socket: &UdpSocket) -> &mut Vec<u8> {
        if self.len == SEND_BATCH {
            self.flush(socket);
        }
        let b = &mut self.bufs[self.len];
        b.clear();
        b
    }

    /// Queues the slot last returned by [`SendQueue::slot`] for `dest`.
    pub fn push(&mut self, dest: SocketAddr) {
        self.dests[self.len] = dest;
        self.len += 1;
    }

    /// Sends everything queued with as few `sendmmsg` calls as the kernel allows.
    pub fn flush(&mut self, socket: &UdpSocket) {
        let mut done = 0;
        while done < self.len {
            match sendmmsg(
                socket,
                &self.bufs[done..self.len],
                &self.dests[done..self.len],
            ) {
                Ok(n) if n > 0 => done += n,
                // The kernel's buffer is full: the rest is dropped (QUIC resends).
                Ok(_) => {
                    self.dropped += (self.len - done) as u64;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.dropped += (self.len - done) as u64;
                    break;
                }
                // This one packet failed (a destination the kernel refuses, such as port 0, or
                // a packet over the interface's MTU): only it is dropped, the batch goes on.
                Err(_) => {
                    self.dropped += 1;
                    done += 1;
                }
            }
        }
        self.len = 0;
    }
}

/// `sendmmsg(2)` of `bufs[i]` to `dests[i]` (IPv4 or IPv6). Returns how many the kernel took.
fn sendmmsg(socket: &UdpSocket, bufs: &[Vec<u8>], dests: &[SocketAddr]) -> std::io::Result<usize> {
    let n = bufs.len().min(SEND_BATCH);
    let addrs: [socket2::SockAddr; SEND_BATCH] =
        std::array::from_fn(|i| socket2::SockAddr::from(dests.get(i).copied().unwrap_or(dests[0])));
    let mut iovs: [libc::iovec; SEND_BATCH] = std::array::from_fn(|i| libc::iovec {
        iov_base: bufs
            .get(i)
            .map_or(std::ptr::null_mut(), |b| b.as_ptr() as *mut _),
        iov_len: bufs.get(i).map_or(0, Vec::len),
    });
    // SAFETY: mmsghdr is plain old data; zeroed is a valid "no name, no control" header.
    let mut hdrs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        hdrs[i].msg_hdr.msg_name = addrs[i].as_ptr() as *mut _;
        hdrs[i].msg_hdr.msg_namelen = addrs[i].len();
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at live buffers (`bufs`, `iovs`, `addrs`) for the call.
    let r = unsafe { libc::sendmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Receive buffers for `recvmmsg` with GRO through quinn-udp: [`quinn_udp::BATCH_SIZE`]
/// buffers of 64 KiB (≈ 2 MiB), one set for every socket a loop reads in turn.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    metas: Vec<quinn_udp::RecvMeta>,
    len: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch::new()
    }
}

impl RecvBatch {
    /// Allocates the buffers.
    pub fn new() -> RecvBatch {
        RecvBatch {
            bufs: (0..quinn_udp::BATCH_SIZE)
                .map(|_| vec![0u8; RECV_BUF_BYTES])
                .collect(),
            metas: vec![quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE],
            len: 0,
        }
    }

    /// One `recvmmsg` on `socket`: how many buffers it filled, 0 when nothing was waiting.
    pub fn recv(
        &mut self,
        socket: &UdpSocket,
        state: &quinn_udp::UdpSocketState,
    ) -> std::io::Result<usize> {
        let mut iovs: Vec<IoSliceMut<'_>> =
            self.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        self.len = match state.recv(socket.into(), &mut iovs, &mut self.metas) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            // A previous send's ICMP error: undefined in QUIC (quinn ignores it too).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(e),
        };
        Ok(self.len)
    }

    /// The packets of the last [`RecvBatch::recv`], GRO segments split apart: each with the
    /// metadata of its buffer (source address, destination IP, ECN).
    pub fn packets(&self) -> impl Iterator<Item = (&quinn_udp::RecvMeta, &[u8])> {
        self.metas
            .iter()
            .zip(self.bufs.iter())
            .take(self.len)
            .flat_map(|(meta, buf)| {
                buf[..meta.len]
                    .chunks(meta.stride.max(1))
                    .map(move |seg| (meta, seg))
            })
    }
}

/// The ECN codepoint quinn-proto takes, of what quinn-udp read.
pub fn ecn(meta: &quinn_udp::RecvMeta) -> Option<quinn_proto::EcnCodepoint> {
    meta.ecn
        .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8))
}

/// One heap of deadlines for many keys (connections, clients), at most one live entry per key:
/// the key's owner keeps the deadline it filed ([`Deadlines::file`]); an entry that no longer
/// matches it is stale and skipped when it pops.
#[derive(Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Deadlines {
    /// Files `at` for `key`, whose filed deadline is `filed`: a new entry only when it comes
    /// before the filed one (or none is filed). A later deadline is re-filed when the earlier
    /// entry pops and the owner finds nothing due.
    pub fn file(&mut self, key: usize, at: Option<Instant>, filed: &mut Option<Instant>) {
        if let Some(t) = at {
            if filed.is_none_or(|f| t < f) {
                *filed = Some(t);
                self.heap.push(Reverse((t, key)));
            }
        }
    }

    /// The next entry due at `now`, `(deadline, key)`; `None` when nothing more is due. Handle
    /// it only if [`Deadlines::popped`] says it is the key's filed one.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        let &Reverse((t, key)) = self.heap.peek()?;
        if t > now {
            return None;
        }
        self.heap.pop();
        Some((t, key))
    }

    /// Whether a popped entry at `t` is the one its key filed (`filed`), which it then clears:
    /// the owner handles what is due and files its next deadline afresh. A stale entry (the key
    /// filed an earlier one since, or is gone) is skipped.
    pub fn popped(t: Instant, filed: &mut Option<Instant>) -> bool {
        if *filed == Some(t) {
            *filed = None;
            true
        } else {
            false
        }
    }

    /// The earliest entry (possibly stale: waking for it costs one skipped pop).
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|r| r.0 .0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_the_kernel_refuses_drops_alone_and_the_batch_goes_on() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let to = rx.local_addr().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut q = SendQueue::new();
        // Port 0: Linux refuses the destination (EINVAL) for this one message only.
        for (byte, dest) in [
            (1u8, to),
            (2, SocketAddr::from(([127, 0, 0, 1], 0))),
            (3, to),
        ] {
            q.slot(&tx).push(byte);
            q.push(dest);
        }
        q.flush(&tx);
        assert_eq!(q.dropped, 1);
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        for _ in 0..2 {
            let (n, _) = rx.recv_from(&mut buf).expect("the good packets arrive");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, [1, 3], "the packet after the refused one went too");
    }
}
