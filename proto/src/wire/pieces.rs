//! A big snapshot in pieces (`ServerMsg::SnapshotPiece`): how many pieces an encoded snapshot
//! takes, and the client's reassembly, bounded by [`SNAPSHOT_PIECES_MAX`] pieces of
//! [`SNAPSHOT_PIECE_BYTES_MAX`] bytes. Every malformed sequence (a piece out of order, a count
//! that changes or passes the bound, a piece of the wrong size, a whole that is not a
//! `Snapshot`) is refused with a [`PieceError`], which a client answers by closing with
//! `ProtocolViolation`; none panics.

use super::codec;
use super::limits::{SNAPSHOT_BYTES_MAX, SNAPSHOT_PIECES_MAX, SNAPSHOT_PIECE_BYTES_MAX};
use super::msg::{ServerMsg, Snapshot};

/// Why a sequence of snapshot pieces was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    /// The count is below 2 (a snapshot that fits one piece goes whole) or above
    /// [`SNAPSHOT_PIECES_MAX`].
    #[error("snapshot of {0} pieces: 2 to {SNAPSHOT_PIECES_MAX} allowed")]
    Count(u32),
    /// A piece's count differs from the first piece's.
    #[error("snapshot piece says {got} pieces, the first said {first}")]
    CountChanged {
        /// The first piece's count.
        first: u32,
        /// This piece's.
        got: u32,
    },
    /// A piece came out of order.
    #[error("snapshot piece {got} where {expected} was due")]
    Order {
        /// The piece due.
        expected: u32,
        /// The piece that came.
        got: u32,
    },
    /// A piece has the wrong size: every piece but the last exactly
    /// [`SNAPSHOT_PIECE_BYTES_MAX`] bytes, the last 1 to that many.
    #[error("snapshot piece {index} of {len} bytes")]
    Size {
        /// Which piece.
        index: u32,
        /// Its bytes.
        len: usize,
    },
    /// The reassembled bytes are not a `Snapshot` message.
    #[error("reassembled snapshot: {0}")]
    Whole(String),
}

/// How many pieces an encoded snapshot of `len` bytes takes (1: it goes whole).
pub fn piece_count(len: usize) -> usize {
    len.div_ceil(SNAPSHOT_PIECE_BYTES_MAX).max(1)
}

/// A snapshot arriving in pieces: feed each piece to [`Reassembly::push`] in order; the last one
/// gives the decoded `Snapshot`. Holds at most [`SNAPSHOT_BYTES_MAX`] bytes.
#[derive(Debug, Default)]
pub struct Reassembly {
    /// The first piece's count; 0 before the first piece.
    count: u32,
    /// Pieces taken so far.
    next: u32,
    /// Their bytes, in order.
    buf: Vec<u8>,
}

impl Reassembly {
    /// Whether pieces have started to arrive and the last has not.
    pub fn in_progress(&self) -> bool {
        self.next > 0
    }

    /// Takes piece `index` of `count`: `Ok(None)` while pieces are missing, `Ok(Some(..))` with
    /// the snapshot after the last one (the reassembly is then empty again), or why the
    /// sequence is refused.
    pub fn push(
        &mut self,
        index: u32,
        count: u32,
        data: &[u8],
    ) -> Result<Option<Box<Snapshot>>, PieceError> {
        if self.next == 0 {
            if !(2..=SNAPSHOT_PIECES_MAX as u32).contains(&count) {
                return Err(PieceError::Count(count));
            }
            self.count = count;
        } else if count != self.count {
            return Err(PieceError::CountChanged {
                first: self.count,
                got: count,
            });
        }
        if index != self.next {
            return Err(PieceError::Order {
                expected: self.next,
                got: index,
            });
        }
        let last = index + 1 == count;
        let size_ok = if last {
            (1..=SNAPSHOT_PIECE_BYTES_MAX).contains(&data.len())
        } else {
            data.len() == SNAPSHOT_PIECE_BYTES_MAX
        };
        if !size_ok || self.buf.len() + data.len() > SNAPSHOT_BYTES_MAX {
            return Err(PieceError::Size {
                index,
                len: data.len(),
            });
        }
        if self.next == 0 {
            // Grown piece by piece: a count alone reserves nothing.
            self.buf = Vec::with_capacity(SNAPSHOT_PIECE_BYTES_MAX);
        }
        self.buf.extend_from_slice(data);
        self.next += 1;
        if !last {
            return Ok(None);
        }
        let whole = std::mem::take(self);
        match codec::decode_server(&whole.buf) {
            Ok(ServerMsg::Snapshot(s)) => Ok(Some(s)),
            Ok(other) => Err(PieceError::Whole(format!("a {} message", other.name()))),
            Err(e) => Err(PieceError::Whole(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::*;

    /// A snapshot of a blueprint of `bytes` bytes, and its encoding.
    fn big_snapshot(bytes: usize) -> (Snapshot, Vec<u8>) {
        let mut s = Snapshot {
            player: EntityId(1),
            user: UserId(1),
            rank: Rank::Visitor,
            server_tick: 0,
            server_time_us: 0,
            settings: Settings::default(),
            spawn: Spawn::default(),
            chat: Vec::new(),
            blueprints: Vec::new(),
            entities: Vec::new(),
            auth_token: String::new(),
        };
        s.blueprints.push(Blueprint {
            id: BlueprintId("big".into()),
            version: 1,
            props: Bytes(vec![7; bytes]),
            ..Blueprint::default()
        });
        let body = codec::encode(&ServerMsg::Snapshot(Box::new(s.clone())));
        (s, body)
    }

    fn pieces(body: &[u8]) -> Vec<&[u8]> {
        body.chunks(SNAPSHOT_PIECE_BYTES_MAX).collect()
    }

    #[test]
    fn pieces_in_order_give_back_the_snapshot() {
        let (s, body) = big_snapshot(200 * 1024);
        let p = pieces(&body);
        assert_eq!(p.len(), piece_count(body.len()));
        assert_eq!(p.len(), 4);
        let mut r = Reassembly::default();
        for (i, d) in p.iter().enumerate() {
            let got = r.push(i as u32, p.len() as u32, d).unwrap();
            assert_eq!(got.is_some(), i + 1 == p.len());
            if let Some(got) = got {
                assert_eq!(*got, s);
            }
        }
        assert!(!r.in_progress());
    }

    #[test]
    fn malformed_sequences_are_refused() {
        let (_, body) = big_snapshot(200 * 1024);
        let p = pieces(&body);
        let n = p.len() as u32;
        let fresh = |steps: &[(u32, u32, &[u8])]| {
            let mut r = Reassembly::default();
            let mut last = Ok(None);
            for &(i, c, d) in steps {
                last = r.push(i, c, d);
                if last.is_err() {
                    break;
                }
            }
            last.map(|s| s.is_some())
        };
        // Counts out of bounds, before anything is kept.
        assert_eq!(fresh(&[(0, 1, p[0])]), Err(PieceError::Count(1)));
        assert_eq!(fresh(&[(0, 0, p[0])]), Err(PieceError::Count(0)));
        let too_many = SNAPSHOT_PIECES_MAX as u32 + 1;
        assert_eq!(
            fresh(&[(0, too_many, p[0])]),
            Err(PieceError::Count(too_many))
        );
        assert_eq!(
            fresh(&[(0, u32::MAX, p[0])]),
            Err(PieceError::Count(u32::MAX))
        );
        // Out of order: a gap, a repeat, a start past 0.
        assert_eq!(
            fresh(&[(1, n, p[1])]),
            Err(PieceError::Order {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(
            fresh(&[(0, n, p[0]), (0, n, p[0])]),
            Err(PieceError::Order {
                expected: 1,
                got: 0
            })
        );
        assert_eq!(
            fresh(&[(0, n, p[0]), (2, n, p[2])]),
            Err(PieceError::Order {
                expected: 1,
                got: 2
            })
        );
        // The count changes midway.
        assert_eq!(
            fresh(&[(0, n, p[0]), (1, n + 1, p[1])]),
            Err(PieceError::CountChanged {
                first: n,
                got: n + 1
            })
        );
        // Sizes: a short middle piece, an oversized piece, an empty last piece.
        assert_eq!(
            fresh(&[(0, n, &p[0][..100])]),
            Err(PieceError::Size { index: 0, len: 100 })
        );
        let over = vec![0u8; SNAPSHOT_PIECE_BYTES_MAX + 1];
        assert_eq!(
            fresh(&[(0, n, &over)]),
            Err(PieceError::Size {
                index: 0,
                len: over.len()
            })
        );
        assert_eq!(
            fresh(&[(0, 2, p[0]), (1, 2, &[])]),
            Err(PieceError::Size { index: 1, len: 0 })
        );
        // Ending early: two whole pieces of a longer snapshot do not decode.
        assert!(matches!(
            fresh(&[(0, 2, p[0]), (1, 2, p[1])]),
            Err(PieceError::Whole(_))
        ));
        // Pieces of something that is not a snapshot.
        let chat = codec::encode(&ServerMsg::ChatAdded(ChatMessage {
            id: 1,
            from_user: None,
            from_name: String::new(),
            from_entity: None,
            body: "x".repeat(70_000),
            created_at_ms: 0,
        }));
        let c = pieces(&chat);
        assert!(matches!(
            fresh(&[(0, 2, c[0]), (1, 2, c[1])]),
            Err(PieceError::Whole(w)) if w.contains("chat_added")
        ));
        // Garbage of the right sizes.
        let junk = vec![0xffu8; SNAPSHOT_PIECE_BYTES_MAX];
        assert!(matches!(
            fresh(&[(0, 2, &junk), (1, 2, &junk[..9])]),
            Err(PieceError::Whole(_))
        ));
    }
}
