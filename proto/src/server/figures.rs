//! Per-connection figures: what each connection cost and how its path behaves, counted where
//! the core queues or takes the bytes, so the connections' figures add up to the core's totals
//! ([`ServerCore::figures_total`]). For operators (the relay's `/status` and metrics show the
//! top connections by bytes) and for a hosting game's own dashboards.

use super::{ConnId, ServerCore};

/// What one connection cost so far, and how its path behaves. Bytes are message bodies as the
/// core queued or received them (frames with their length prefix, datagrams whole), without the
/// transport's own overhead (QUIC headers, TLS, acknowledgements).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnFigures {
    /// Bytes sent to it: frames and datagrams.
    pub bytes_down: u64,
    /// Bytes received from it: frames and datagrams.
    pub bytes_up: u64,
    /// Frames sent to it.
    pub frames_down: u64,
    /// Frames received from it.
    pub frames_up: u64,
    /// Transform datagrams sent to it.
    pub datagrams_down: u64,
    /// Datagrams received from it.
    pub datagrams_up: u64,
    /// Of `bytes_down`, datagrams.
    pub datagram_bytes_down: u64,
    /// Of `bytes_up`, datagrams.
    pub datagram_bytes_up: u64,
    /// Of `bytes_down`, the own-player state blob (server-authoritative movement).
    pub own_state_bytes_down: u64,
    /// Of `bytes_up`, the player's own inputs (server-authoritative movement).
    pub own_state_bytes_up: u64,
    /// Transform datagrams it acknowledged.
    pub datagrams_acked: u64,
    /// Transform datagrams sent and not acknowledged: lost, or still in flight (at most a
    /// round trip's worth).
    pub datagrams_unacked: u64,
    /// Smoothed round-trip time from its acknowledgements, microseconds (0 before the first).
    pub rtt_us: u64,
    /// Transform bytes of the last tick it was sent.
    pub last_tick_bytes: u64,
    /// Its transform budget per tick, bytes: `last_tick_bytes` over this is the budget used.
    pub budget_bytes_per_tick: u64,
    /// Moves of its player the server refused (client-authoritative movement): each one a
    /// correction the client had to take.
    pub corrections: u64,
    /// Snapshot pieces sent to it (`SnapshotPiece`; 0 for a snapshot sent whole).
    pub snapshot_pieces: u64,
}

impl ConnFigures {
    /// All bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.bytes_down + self.bytes_up
    }

    /// The share of the transform budget the last tick used (1.0 = all of it).
    pub fn budget_used(&self) -> f64 {
        self.last_tick_bytes as f64 / self.budget_bytes_per_tick.max(1) as f64
    }

    /// Adds `other`'s counters to these (path figures, RTT and budget, are not summed).
    fn add(&mut self, o: &ConnFigures) {
        self.bytes_down += o.bytes_down;
        self.bytes_up += o.bytes_up;
        self.frames_down += o.frames_down;
        self.frames_up += o.frames_up;
        self.datagrams_down += o.datagrams_down;
        self.datagrams_up += o.datagrams_up;
        self.datagram_bytes_down += o.datagram_bytes_down;
        self.datagram_bytes_up += o.datagram_bytes_up;
        self.own_state_bytes_down += o.own_state_bytes_down;
        self.own_state_bytes_up += o.own_state_bytes_up;
        self.datagrams_acked += o.datagrams_acked;
        self.datagrams_unacked += o.datagrams_unacked;
        self.last_tick_bytes += o.last_tick_bytes;
        self.corrections += o.corrections;
        self.snapshot_pieces += o.snapshot_pieces;
    }
}

impl ServerCore {
    /// One open connection's figures, with its path's current RTT and budget.
    pub fn conn_figures(&self, conn: ConnId) -> Option<ConnFigures> {
        let c = self.conns.get(&conn)?;
        let mut f = c.figures;
        f.datagrams_unacked = f.datagrams_down.saturating_sub(f.datagrams_acked);
        if let Some(s) = c.session.and_then(|sid| self.sessions.get(&sid)) {
            f.rtt_us = s.replicator.rtt_estimate_us().unwrap_or(0);
            f.budget_bytes_per_tick = s.replicator.budget_bytes_per_tick() as u64;
        }
        Some(f)
    }

    /// Every open connection's figures, by connection id.
    pub fn all_conn_figures(&self) -> impl Iterator<Item = (ConnId, ConnFigures)> + '_ {
        self.conns
            .keys()
            .filter_map(|&c| Some((c, self.conn_figures(c)?)))
    }

    /// The `n` open connections that cost the most bytes (both ways), most first.
    pub fn top_conns_by_bytes(&self, n: usize) -> Vec<(ConnId, ConnFigures)> {
        let mut all: Vec<_> = self.all_conn_figures().collect();
        all.sort_by_key(|(c, f)| (std::cmp::Reverse(f.bytes()), *c));
        all.truncate(n);
        all
    }

    /// The counters summed over every connection the core has had, closed ones included (path
    /// figures are 0): while none has closed, exactly the sum of [`ServerCore::conn_figures`].
    pub fn figures_total(&self) -> ConnFigures {
        let mut t = self.closed_figures;
        for (_, f) in self.all_conn_figures() {
            t.add(&f);
        }
        t.rtt_us = 0;
        t.budget_bytes_per_tick = 0;
        t
    }

    /// Folds a closing connection's counters into the totals.
    pub(super) fn retire_figures(&mut self, conn: ConnId) {
        if let Some(f) = self.conn_figures(conn) {
            self.closed_figures.add(&f);
        }
    }
}
