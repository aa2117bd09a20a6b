//! The datagram inbox: unreliable datagrams waiting for the core, with their arrival times,
//! bounded in all and per connection.
//!
//! A client's datagram carries its inputs and acknowledgements, which the core uses only at its
//! next tick; so datagrams need not wake the core one by one. A driver's connection readers
//! [`push`](DatagramInbox::push) them here and the core takes them all
//! ([`ServerCore::handle_inbox`]) whenever it runs, at the latest at its next tick: a thousand
//! clients' datagrams cost one wake-up per tick instead of thousands.
//!
//! The bounds are policy and live here, where the simulated network exercises them: at most
//! [`DATAGRAM_INBOX_MAX`] datagrams wait in all, and at most [`DATAGRAM_INBOX_PER_CONN_MAX`] from
//! any one connection, so one flooding peer cannot crowd out everyone else's inputs. Beyond
//! them newer datagrams are dropped, as an unreliable channel may, and counted.
//!
//! The inbox does no locking of its own: a threaded driver puts it behind a mutex (the relay
//! does), the simulated network uses it as it is. Each reader keeps its connection's
//! [`InboxQuota`], so the inbox needs no map of connections and the core no per-datagram
//! bookkeeping.

use super::{ConnId, ServerCore, ServerEvent};
use crate::time::Time;

/// Most datagrams waiting in the inbox: 16 ticks of a thousand clients' one datagram each (at
/// most ≈ 19 MiB of 1.2 KB datagrams). More means the core has fallen that far behind; newer
/// datagrams are dropped.
pub const DATAGRAM_INBOX_MAX: usize = 16_384;

/// Most datagrams one connection may have waiting: 64. The core takes the inbox at every tick
/// and whenever it wakes, and a client sends about one datagram per tick, so 64 is two seconds
/// of a 30 Hz client's datagrams behind a stalled core. Filling the whole inbox then takes
/// [`DATAGRAM_INBOX_MAX`] / 64 = 256 connections.
pub const DATAGRAM_INBOX_PER_CONN_MAX: usize = 64;

/// One datagram waiting for the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxDatagram<D> {
    /// From whom.
    pub conn: ConnId,
    /// The bytes.
    pub data: D,
    /// When it arrived, on the core's clock.
    pub at: Time,
}

/// One connection's share of the inbox, kept by its reader: how many of its datagrams wait
/// there since the core's last take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboxQuota {
    /// The take count the `waiting` figure belongs to.
    takes: u64,
    waiting: usize,
}

/// What the core takes from the inbox at once: the datagrams in arrival order, and how many
/// were dropped since the last take.
#[derive(Debug)]
pub struct InboxBatch<D> {
    /// The datagrams, oldest first.
    pub datagrams: Vec<InboxDatagram<D>>,
    /// Dropped because their connection had [`DATAGRAM_INBOX_PER_CONN_MAX`] waiting.
    pub dropped_conn_full: u64,
    /// Dropped because the inbox held [`DATAGRAM_INBOX_MAX`].
    pub dropped_inbox_full: u64,
}

impl<D> Default for InboxBatch<D> {
    fn default() -> Self {
        InboxBatch {
            datagrams: Vec::new(),
            dropped_conn_full: 0,
            dropped_inbox_full: 0,
        }
    }
}

/// Datagrams waiting for the core. See the module documentation. `D` is the driver's byte
/// buffer (`bytes::Bytes` in the relay, `Vec<u8>` in the simulation).
#[derive(Debug)]
pub struct DatagramInbox<D> {
    pending: InboxBatch<D>,
    /// How many times the core has taken the inbox: a quota from an earlier take counts
    /// nothing still waiting.
    takes: u64,
}

impl<D> Default for DatagramInbox<D> {
    fn default() -> Self {
        DatagramInbox {
            pending: InboxBatch::default(),
            takes: 0,
        }
    }
}

/// Why [`DatagramInbox::push`] dropped a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboxDrop {
    /// Its connection already had [`DATAGRAM_INBOX_PER_CONN_MAX`] datagrams waiting.
    ConnFull,
    /// The inbox already held [`DATAGRAM_INBOX_MAX`] datagrams.
    InboxFull,
}

impl<D> DatagramInbox<D> {
    /// An empty inbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.pending.datagrams.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.datagrams.is_empty()
    }

    /// Queues a datagram from `conn` that arrived `at`, or drops (and counts) it when `conn`
    /// already has its share waiting (`quota`, its reader's) or the inbox is full.
    pub fn push(
        &mut self,
        conn: ConnId,
        data: D,
        at: Time,
        quota: &mut InboxQuota,
    ) -> Result<(), InboxDrop> {
        if quota.takes != self.takes {
            *quota = InboxQuota {
                takes: self.takes,
                waiting: 0,
            };
        }
        if quota.waiting >= DATAGRAM_INBOX_PER_CONN_MAX {
            self.pending.dropped_conn_full += 1;
            return Err(InboxDrop::ConnFull);
        }
        if self.pending.datagrams.len() >= DATAGRAM_INBOX_MAX {
            self.pending.dropped_inbox_full += 1;
            return Err(InboxDrop::InboxFull);
        }
        quota.waiting += 1;
        self.pending
            .datagrams
            .push(InboxDatagram { conn, data, at });
        Ok(())
    }

    /// Swaps everything waiting (and the drop counts) into `into`, which must have been
    /// emptied by [`ServerCore::handle_inbox`]; the inbox starts over, every quota with it.
    pub fn take(&mut self, into: &mut InboxBatch<D>) {
        debug_assert!(into.datagrams.is_empty());
        std::mem::swap(&mut self.pending, into);
        self.pending.dropped_conn_full = 0;
        self.pending.dropped_inbox_full = 0;
        self.takes += 1;
    }
}

impl ServerCore {
    /// Handles every datagram taken from the inbox, in arrival order, each at its arrival time
    /// (never before a time the core has already seen), and reports drops as one
    /// [`ServerEvent::DatagramsDropped`]. Leaves `batch` empty for the next take.
    pub fn handle_inbox<D: AsRef<[u8]>>(&mut self, batch: &mut InboxBatch<D>) {
        for d in batch.datagrams.drain(..) {
            self.handle_datagram(d.conn, d.data.as_ref(), d.at);
        }
        let (conn_full, inbox_full) = (batch.dropped_conn_full, batch.dropped_inbox_full);
        if conn_full > 0 || inbox_full > 0 {
            self.events.push_back(ServerEvent::DatagramsDropped {
                conn_full,
                inbox_full,
            });
        }
        batch.dropped_conn_full = 0;
        batch.dropped_inbox_full = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(inbox: &mut DatagramInbox<&'static [u8]>) -> InboxBatch<&'static [u8]> {
        let mut batch = InboxBatch::default();
        inbox.take(&mut batch);
        batch
    }

    #[test]
    fn the_inbox_hands_over_in_arrival_order_and_drops_beyond_its_bound() {
        let mut inbox = DatagramInbox::new();
        assert!(take(&mut inbox).datagrams.is_empty());
        let extra = 10;
        for i in 0..DATAGRAM_INBOX_MAX + extra {
            let mut quota = InboxQuota::default();
            let _ = inbox.push(ConnId(i as u64), &b"abc"[..], Time(i as u64), &mut quota);
        }
        let batch = take(&mut inbox);
        assert_eq!(batch.datagrams.len(), DATAGRAM_INBOX_MAX);
        assert!(batch
            .datagrams
            .iter()
            .enumerate()
            .all(|(i, d)| d.conn == ConnId(i as u64)));
        assert_eq!(batch.dropped_inbox_full, extra as u64);
        // Taken means gone: room again, and the next take holds only what came after.
        let _ = inbox.push(ConnId(7), &b"late"[..], Time(1), &mut InboxQuota::default());
        let batch = take(&mut inbox);
        assert_eq!(batch.datagrams.len(), 1);
        assert_eq!(batch.dropped_inbox_full, 0);
    }

    #[test]
    fn a_flooding_connection_cannot_crowd_out_another_connections_datagrams() {
        let mut inbox = DatagramInbox::new();
        let (mut flood, mut quiet) = (InboxQuota::default(), InboxQuota::default());
        for _ in 0..DATAGRAM_INBOX_MAX {
            let _ = inbox.push(ConnId(1), &b"flood"[..], Time(0), &mut flood);
        }
        assert_eq!(
            inbox.push(ConnId(2), &b"input"[..], Time(0), &mut quiet),
            Ok(())
        );
        let batch = take(&mut inbox);
        let from = |c: u64| {
            batch
                .datagrams
                .iter()
                .filter(|d| d.conn == ConnId(c))
                .count()
        };
        assert_eq!(from(1), DATAGRAM_INBOX_PER_CONN_MAX);
        assert_eq!(from(2), 1, "the quiet connection's datagram got in");
        assert_eq!(
            batch.dropped_conn_full,
            (DATAGRAM_INBOX_MAX - DATAGRAM_INBOX_PER_CONN_MAX) as u64
        );
        assert_eq!(batch.dropped_inbox_full, 0);
        // After the core took them, the flooder's share is free again.
        assert_eq!(
            inbox.push(ConnId(1), &b"next"[..], Time(0), &mut flood),
            Ok(())
        );
    }
}
