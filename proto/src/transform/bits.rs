//! Bit packing: a [`BitWriter`] and a [`BitReader`], least significant bit first.
//!
//! Hand-written rather than taken from a crate because the writer must support cheap rollback
//! ([`BitWriter::truncate`]) and bit-range copies ([`BitWriter::append_bits`]) for the datagram
//! packer, and the reader must turn every overrun into a typed error instead of a panic.

use super::TransformError;

/// Longest Exp-Golomb prefix a reader accepts, in zero bits: values above 2^40 never appear in
/// this protocol, so a longer prefix is garbage.
const EG_PREFIX_MAX: u32 = 40;

/// Writes bits into 64-bit words, least significant bit first.
#[derive(Clone, Debug, Default)]
pub struct BitWriter {
    words: Vec<u64>,
    len_bits: usize,
}

impl BitWriter {
    /// An empty writer.
    pub fn new() -> BitWriter {
        BitWriter::default()
    }

    /// Bits written so far.
    pub fn len_bits(&self) -> usize {
        self.len_bits
    }

    /// Bytes the written bits occupy once padded to a byte.
    pub fn len_bytes(&self) -> usize {
        self.len_bits.div_ceil(8)
    }

    /// Forgets everything written, keeping the allocation.
    pub fn clear(&mut self) {
        self.words.clear();
        self.len_bits = 0;
    }

    /// Drops every bit at or after `len_bits` (rollback to an earlier [`BitWriter::len_bits`]).
    pub fn truncate(&mut self, len_bits: usize) {
        if len_bits >= self.len_bits {
            return;
        }
        self.len_bits = len_bits;
        self.words.truncate(len_bits.div_ceil(64));
        let rem = len_bits % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }

    /// Writes the low `n` bits of `value` (`n` ≤ 64; higher bits of `value` are ignored).
    #[inline]
    pub fn write(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 64);
        if n == 0 {
            return;
        }
        let value = if n == 64 {
            value
        } else {
            value & ((1u64 << n) - 1)
        };
        let word = self.len_bits / 64;
        let off = (self.len_bits % 64) as u32;
        if word == self.words.len() {
            self.words.push(0);
        }
        self.words[word] |= value << off;
        if off + n > 64 {
            self.words.push(value >> (64 - off));
        }
        self.len_bits += n as usize;
    }

    /// Writes one bit.
    #[inline]
    pub fn write_bool(&mut self, b: bool) {
        self.write(b as u64, 1);
    }

    /// Writes `v` as an order-`k` Exp-Golomb code: short for small values, unbounded above.
    #[inline]
    pub fn write_eg(&mut self, v: u64, k: u32) {
        let q = v + (1u64 << k);
        let nbits = 64 - q.leading_zeros();
        let zeros = nbits - k - 1;
        // Zeros then `q` most significant bit first would need a bit reversal; instead write the
        // zero count in unary (zeros, then a one) and then the low `nbits - 1` bits of `q`.
        self.write(0, zeros);
        self.write(1, 1);
        self.write(q, nbits - 1);
    }

    /// Copies `len` bits starting at bit `start` of `src` to the end of this writer.
    pub fn append_bits(&mut self, src: &BitWriter, start: usize, len: usize) {
        let mut pos = start;
        let end = start + len;
        while pos < end {
            let n = (end - pos).min(57) as u32;
            self.write(src.peek(pos, n), n);
            pos += n as usize;
        }
    }

    fn peek(&self, pos: usize, n: u32) -> u64 {
        let word = pos / 64;
        let off = (pos % 64) as u32;
        let lo = self.words.get(word).copied().unwrap_or(0) >> off;
        let v = if off + n > 64 {
            lo | (self.words.get(word + 1).copied().unwrap_or(0) << (64 - off))
        } else {
            lo
        };
        if n == 64 {
            v
        } else {
            v & ((1u64 << n) - 1)
        }
    }

    /// Appends the written bits, zero-padded to a whole byte, to `out`.
    pub fn copy_to(&self, out: &mut Vec<u8>) {
        let n = self.len_bytes();
        let mut left = n;
        for w in &self.words {
            let bytes = w.to_le_bytes();
            let take = left.min(8);
            out.extend_from_slice(&bytes[..take]);
            left -= take;
            if left == 0 {
                break;
            }
        }
    }
}

/// Reads bits written by a [`BitWriter`]. Every read past the end is a
/// [`TransformError::Truncated`], never a panic.
#[derive(Clone, Debug)]
pub struct BitReader<'a> {
    bytes: &'a [u8],
    pos_bits: usize,
}

impl<'a> BitReader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> BitReader<'a> {
        BitReader { bytes, pos_bits: 0 }
    }

    /// Bits not yet read.
    pub fn remaining_bits(&self) -> usize {
        (self.bytes.len() * 8).saturating_sub(self.pos_bits)
    }

    /// Reads `n` bits (`n` ≤ 57).
    #[inline]
    pub fn read(&mut self, n: u32) -> Result<u64, TransformError> {
        debug_assert!(n <= 57);
        if n == 0 {
            return Ok(0);
        }
        if self.remaining_bits() < n as usize {
            return Err(TransformError::Truncated);
        }
        let byte = self.pos_bits / 8;
        let off = (self.pos_bits % 8) as u32;
        let mut buf = [0u8; 8];
        let avail = (self.bytes.len() - byte).min(8);
        buf[..avail].copy_from_slice(&self.bytes[byte..byte + avail]);
        let v = (u64::from_le_bytes(buf) >> off) & ((1u64 << n) - 1);
        self.pos_bits += n as usize;
        Ok(v)
    }

    /// Reads one bit.
    #[inline]
    pub fn read_bool(&mut self) -> Result<bool, TransformError> {
        Ok(self.read(1)? == 1)
    }

    /// Reads an order-`k` Exp-Golomb code written by [`BitWriter::write_eg`].
    #[inline]
    pub fn read_eg(&mut self, k: u32) -> Result<u64, TransformError> {
        let mut zeros = 0;
        while !self.read_bool()? {
            zeros += 1;
            if zeros > EG_PREFIX_MAX {
                return Err(TransformError::Malformed("exp-golomb prefix too long"));
            }
        }
        let nbits = zeros + k + 1;
        let low = self.read(nbits - 1)?;
        Ok(((1u64 << (nbits - 1)) | low) - (1u64 << k))
    }
}

/// Maps a signed integer to an unsigned one, small magnitudes to small values (0, -1, 1, -2...).
#[inline]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag`].
#[inline]
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Bits needed to write `v` in plain binary (0 for 0).
#[inline]
pub fn bit_width(v: u64) -> u32 {
    64 - v.leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn bits_round_trip_random_widths_and_values() {
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            let mut w = BitWriter::new();
            let mut items = Vec::new();
            for _ in 0..rng.below(100) {
                let n = rng.below(58) as u32;
                let v = rng.next_u64() & if n == 0 { 0 } else { u64::MAX >> (64 - n) };
                let eg = rng.next_u64() >> rng.below(64);
                let eg = eg.min(1 << 39);
                let k = rng.below(6) as u32;
                w.write(v, n);
                w.write_eg(eg, k);
                items.push((v, n, eg, k));
            }
            let mut bytes = Vec::new();
            w.copy_to(&mut bytes);
            assert_eq!(bytes.len(), w.len_bytes());
            let mut r = BitReader::new(&bytes);
            for (v, n, eg, k) in items {
                assert_eq!(r.read(n).unwrap(), v);
                assert_eq!(r.read_eg(k).unwrap(), eg);
            }
            assert!(r.remaining_bits() < 8);
        }
    }

    #[test]
    fn truncate_rolls_back_and_append_copies_bit_ranges() {
        let mut w = BitWriter::new();
        w.write(0b1011, 4);
        let mark = w.len_bits();
        w.write(u64::MAX, 64);
        w.truncate(mark);
        w.write(0b01, 2);
        let mut src = BitWriter::new();
        src.write(0x3FF, 10);
        src.write(0x1234_5678_9ABC, 48);
        let mut dst = w.clone();
        dst.append_bits(&src, 10, 48);
        let mut bytes = Vec::new();
        dst.copy_to(&mut bytes);
        let mut r = BitReader::new(&bytes);
        assert_eq!(r.read(4).unwrap(), 0b1011);
        assert_eq!(r.read(2).unwrap(), 0b01);
        assert_eq!(r.read(48).unwrap(), 0x1234_5678_9ABC);
    }

    #[test]
    fn reading_past_the_end_is_an_error_not_a_panic() {
        let mut r = BitReader::new(&[0u8; 2]);
        assert!(r.read(17).is_err());
        assert!(r.read_eg(0).is_err());
        let mut r = BitReader::new(&[]);
        assert!(r.read(1).is_err());
    }

    #[test]
    fn zigzag_round_trips() {
        for v in [-5i64, -1, 0, 1, 5, i32::MIN as i64, i32::MAX as i64] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }
}
