//! Wrapping datagram sequence numbers and acknowledgements.
//!
//! [`Seq`] is a 16-bit number that wraps, kept apart from [`crate::time::Tick`], which never
//! does. An [`AckHeader`] names the newest sequence received and a 64-bit field for the 63 before
//! it, so every datagram the client sends repeats the last 64 receipts: a lost ack costs nothing
//! as long as one of the next few gets through.

use super::TransformError;

/// A datagram sequence number. Wraps at 2^16; compare with [`Seq::is_newer_than`], which is
/// right while the two numbers are less than 2^15 apart (9 minutes at 60 datagrams/s).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Seq(pub u16);

impl Seq {
    /// The next sequence number (wrapping).
    pub fn next(self) -> Seq {
        Seq(self.0.wrapping_add(1))
    }

    /// Whether `self` comes after `other`, allowing for wrap-around.
    pub fn is_newer_than(self, other: Seq) -> bool {
        (self.0.wrapping_sub(other.0) as i16) > 0
    }

    /// How far `self` is after `other` (negative if before), allowing for wrap-around.
    pub fn diff(self, other: Seq) -> i32 {
        self.0.wrapping_sub(other.0) as i16 as i32
    }

    /// The sequence number `n` before this one.
    pub fn minus(self, n: u16) -> Seq {
        Seq(self.0.wrapping_sub(n))
    }
}

/// Sequences an ack covers: the newest plus the 63 before it.
pub const ACK_WINDOW: u16 = 64;
/// Bytes of an encoded [`AckHeader`]: a u16 sequence and a u64 field, little-endian.
pub const ACK_HEADER_BYTES: usize = 10;

/// Which of the last [`ACK_WINDOW`] datagrams arrived: bit `i` of `received` is set when
/// `latest - i` was received, so `received == 0` means nothing has been received yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AckHeader {
    /// Newest sequence received.
    pub latest: Seq,
    /// Bit `i`: `latest - i` was received.
    pub received: u64,
}

impl AckHeader {
    /// The sequences this header acknowledges, newest first.
    pub fn acked(&self) -> impl Iterator<Item = Seq> + '_ {
        (0..ACK_WINDOW)
            .filter(move |&i| self.received >> i & 1 == 1)
            .map(move |i| self.latest.minus(i))
    }

    /// Appends the 10-byte encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.latest.0.to_le_bytes());
        out.extend_from_slice(&self.received.to_le_bytes());
    }

    /// Decodes from the front of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<AckHeader, TransformError> {
        let b = bytes
            .get(..ACK_HEADER_BYTES)
            .ok_or(TransformError::Truncated)?;
        let mut seq = [0u8; 2];
        seq.copy_from_slice(&b[..2]);
        let mut bits = [0u8; 8];
        bits.copy_from_slice(&b[2..10]);
        Ok(AckHeader {
            latest: Seq(u16::from_le_bytes(seq)),
            received: u64::from_le_bytes(bits),
        })
    }
}

/// What a receiver made of an arriving sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Not seen before and inside the window (or newer than everything).
    New,
    /// Already received.
    Duplicate,
    /// More than [`ACK_WINDOW`] behind the newest: too old to acknowledge or trust.
    TooOld,
}

/// The receiving side's record of which sequences arrived: produces [`AckHeader`]s.
#[derive(Clone, Debug, Default)]
pub struct AckTracker {
    header: AckHeader,
}

impl AckTracker {
    /// Nothing received yet.
    pub fn new() -> AckTracker {
        AckTracker::default()
    }

    /// Classifies `seq` without recording it.
    pub fn classify(&self, seq: Seq) -> Arrival {
        if self.header.received == 0 || seq.is_newer_than(self.header.latest) {
            return Arrival::New;
        }
        let behind = self.header.latest.diff(seq);
        if !(0..ACK_WINDOW as i32).contains(&behind) {
            return Arrival::TooOld;
        }
        if self.header.received >> behind & 1 == 1 {
            Arrival::Duplicate
        } else {
            Arrival::New
        }
    }

    /// Records `seq` as received (call after [`AckTracker::classify`] said [`Arrival::New`]).
    pub fn record(&mut self, seq: Seq) {
        let h = &mut self.header;
        if h.received == 0 {
            *h = AckHeader {
                latest: seq,
                received: 1,
            };
        } else if seq.is_newer_than(h.latest) {
            let ahead = seq.diff(h.latest) as u32;
            h.received = if ahead >= 64 { 0 } else { h.received << ahead } | 1;
            h.latest = seq;
        } else {
            let behind = h.latest.diff(seq);
            if (0..ACK_WINDOW as i32).contains(&behind) {
                h.received |= 1 << behind;
            }
        }
    }

    /// The header to send upstream.
    pub fn header(&self) -> AckHeader {
        self.header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_comparison_survives_wrap_around() {
        assert!(Seq(1).is_newer_than(Seq(0)));
        assert!(Seq(0).is_newer_than(Seq(65535)));
        assert!(Seq(10).is_newer_than(Seq(65530)));
        assert!(!Seq(65530).is_newer_than(Seq(10)));
        assert!(!Seq(5).is_newer_than(Seq(5)));
        assert_eq!(Seq(3).diff(Seq(65533)), 6);
        assert_eq!(Seq(65533).diff(Seq(3)), -6);
        assert_eq!(Seq(0).minus(1), Seq(65535));
        assert_eq!(Seq(65535).next(), Seq(0));
        // Every pair less than 2^15 apart compares by its true distance.
        for base in (0..=u16::MAX).step_by(97) {
            for d in [1u16, 2, 100, 32767] {
                let a = Seq(base);
                let b = Seq(base.wrapping_add(d));
                assert!(b.is_newer_than(a) && !a.is_newer_than(b), "{base} {d}");
            }
        }
    }

    #[test]
    fn ack_tracker_marks_window_detects_duplicates_and_wraps() {
        let mut t = AckTracker::new();
        assert_eq!(t.header().received, 0);
        let start = 65_500u16;
        for i in 0..100u16 {
            if i % 3 == 1 {
                continue; // lost
            }
            let s = Seq(start.wrapping_add(i));
            assert_eq!(t.classify(s), Arrival::New);
            t.record(s);
            assert_eq!(t.classify(s), Arrival::Duplicate);
        }
        let h = t.header();
        assert_eq!(h.latest, Seq(start.wrapping_add(99)));
        for s in h.acked() {
            let i = s.0.wrapping_sub(start);
            assert_ne!(i % 3, 1);
        }
        assert_eq!(h.acked().count(), (36..100).filter(|i| i % 3 != 1).count());
        // A late arrival inside the window is new; outside it is too old.
        let late = Seq(start.wrapping_add(97));
        assert_eq!(t.classify(late), Arrival::New);
        assert_eq!(t.classify(Seq(start.wrapping_add(10))), Arrival::TooOld);
        let mut bytes = Vec::new();
        h.encode(&mut bytes);
        assert_eq!(AckHeader::decode(&bytes).unwrap(), h);
        assert!(AckHeader::decode(&bytes[..9]).is_err());
    }
}
