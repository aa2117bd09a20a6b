//! Bit packing: a [`BitWriter`] and a [`BitReader`], least significant bit first.
//!
//! Hand-written rather than taken from a crate because the writer must support cheap rollback
//! ([`BitWriter::truncate`]) and bit-range copies ([`BitWriter::append_bits`]) for the datagram
//! packer, and the reader must turn every overrun into a typed error instead of a panic.

use super::TransformError;

/// Longest Exp-Golomb prefix a reader accepts, in zero bits: values above 2^40 never appear in
/// this protocol, so a longer prefix is garbage.
const EG_PREFIX_MAX: u32 = 40;

/// Writes bits into 64-bit words, least significant bit first. Full words go to a vector; the
/// partial last word stays in a register-sized accumulator.
#[derive(Clone, Debug, Default)]
pub struct BitWriter {
    words: Vec<u64>,
    acc: u64,
    acc_bits: u32,
}

#[inline]
fn low_mask(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

impl BitWriter {
    /// An empty writer.
    pub fn new() -> BitWriter {
        BitWriter::default()
    }

    /// Bits written so far.
    #[inline]
    pub fn len_bits(&self) -> usize {
        self.words.len() * 64 + self.acc_bits as usize
    }

    /// Bytes the written bits occupy once padded to a byte.
    pub fn len_bytes(&self) -> usize {
        self.len_bits().div_ceil(8)
    }

    /// Forgets everything written, keeping the allocation.
    pub fn clear(&mut self) {
        self.words.clear();
        self.acc = 0;
        self.acc_bits = 0;
    }

    /// Drops every bit at or after `len_bits` (rollback to an earlier [`BitWriter::len_bits`]).
    pub fn truncate(&mut self, len_bits: usize) {
        if len_bits >= self.len_bits() {
            return;
        }
        let w = len_bits / 64;
        let r = (len_bits % 64) as u32;
        if w < self.words.len() {
            self.acc = self.words[w];
            self.words.truncate(w);
        }
        self.acc &= low_mask(r);
        self.acc_bits = r;
    }

    /// Writes the low `n` bits of `value` (`n` ≤ 64; higher bits of `value` are ignored).
    #[inline]
    pub fn write(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 64);
        if n == 0 {
            return;
        }
        let value = value & low_mask(n);
        let fill = self.acc_bits;
        self.acc |= value << fill;
        let total = fill + n;
        if total >= 64 {
            self.words.push(self.acc);
            self.acc = if fill == 0 { 0 } else { value >> (64 - fill) };
            self.acc_bits = total - 64;
        } else {
            self.acc_bits = total;
        }
    }

    /// Writes one bit.
    #[inline]
    pub fn write_bool(&mut self, b: bool) {
        self.write(b as u64, 1);
    }

    /// Writes `v` as an order-`k` Exp-Golomb code: short for small values, unbounded above.
    /// Laid out as the zero count in unary (zeros, then a one), then the low `nbits - 1` bits
    /// of `v + 2^k`.
    #[inline]
    pub fn write_eg(&mut self, v: u64, k: u32) {
        let q = v + (1u64 << k);
        let nbits = 64 - q.leading_zeros();
        let zeros = nbits - k - 1;
        let total = zeros + nbits;
        if total <= 64 {
            let low = q & low_mask(nbits - 1);
            let code = (1u64 << zeros)
                | if zeros + 1 < 64 {
                    low << (zeros + 1)
                } else {
                    0
                };
            self.write(code, total);
        } else {
            self.write(0, zeros);
            self.write(1, 1);
            self.write(q, nbits - 1);
        }
    }

    /// Copies `len` bits starting at bit `start` of `src` to the end of this writer.
    pub fn append_bits(&mut self, src: &BitWriter, start: usize, len: usize) {
        let mut pos = start;
        let end = start + len;
        while pos < end {
            let n = (end - pos).min(64) as u32;
            self.write(src.peek(pos, n), n);
            pos += n as usize;
        }
    }

    #[inline]
    fn word(&self, i: usize) -> u64 {
        match self.words.get(i) {
            Some(w) => *w,
            None if i == self.words.len() => self.acc,
            None => 0,
        }
    }

    #[inline]
    fn peek(&self, pos: usize, n: u32) -> u64 {
        let i = pos / 64;
        let off = (pos % 64) as u32;
        let lo = self.word(i) >> off;
        let v = if off != 0 && off + n > 64 {
            lo | (self.word(i + 1) << (64 - off))
        } else {
            lo
        };
        v & low_mask(n)
    }

    /// Appends the written bits, zero-padded to a whole byte, to `out`.
    pub fn copy_to(&self, out: &mut Vec<u8>) {
        for w in &self.words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        let tail = (self.acc_bits as usize).div_ceil(8);
        out.extend_from_slice(&self.acc.to_le_bytes()[..tail]);
    }
}

/// A run of writes to a [`BitWriter`] gathered in a register: the writer's partial
/// word is loaded once, full words are pushed as they fill, and the rest is stored back by
/// [`BitRun::finish`]. The bits are exactly those the same [`BitWriter::write`] calls give.
pub(crate) struct BitRun<'a> {
    w: &'a mut BitWriter,
    acc: u64,
    n: u32,
}

impl<'a> BitRun<'a> {
    /// Starts a run at the end of `w`.
    #[inline]
    pub(crate) fn new(w: &'a mut BitWriter) -> BitRun<'a> {
        BitRun {
            acc: w.acc,
            n: w.acc_bits,
            w,
        }
    }

    /// Writes the low `n` bits of `value` (`n` ≤ 64), like [`BitWriter::write`].
    #[inline(always)]
    pub(crate) fn write(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 64);
        self.write_fitting(value & low_mask(n), n);
    }

    /// Writes `value`, which must fit in `n` ≤ 64 bits.
    #[inline(always)]
    pub(crate) fn write_fitting(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 64 && (n == 64 || value >> n == 0));
        let fill = self.n;
        self.acc |= value << fill; // fill < 64
        self.n = fill + n;
        if self.n >= 64 {
            self.w.words.push(self.acc);
            // The bits of `value` that did not fit (none when it filled the word exactly).
            self.acc = ((value as u128) >> (64 - fill)) as u64;
            self.n -= 64;
        }
    }

    /// Writes one bit.
    #[inline(always)]
    pub(crate) fn write_bool(&mut self, b: bool) {
        self.write_fitting(b as u64, 1);
    }

    /// Writes an order-`k` Exp-Golomb code, like [`BitWriter::write_eg`].
    #[inline(always)]
    pub(crate) fn write_eg(&mut self, v: u64, k: u32) {
        let q = v + (1u64 << k);
        let nbits = 64 - q.leading_zeros();
        let zeros = nbits - k - 1;
        let total = zeros + nbits;
        if total <= 64 {
            // The zero run, its terminating one, then `q` below its top bit.
            let low = q ^ (1u64 << (nbits - 1));
            self.write_fitting(((low << 1) | 1) << zeros, total);
        } else {
            self.write_fitting(0, zeros);
            self.write_fitting(1, 1);
            self.write(q, nbits - 1);
        }
    }

    /// Copies `len` bits starting at bit `start` of `src`, like [`BitWriter::append_bits`].
    #[inline]
    pub(crate) fn append_bits(&mut self, src: &BitWriter, start: usize, len: usize) {
        let mut pos = start;
        let end = start + len;
        while pos < end {
            let n = (end - pos).min(64) as u32;
            self.write_fitting(src.peek(pos, n), n);
            pos += n as usize;
        }
    }

    /// Bits written so far by the writer, this run included.
    #[inline]
    pub(crate) fn len_bits(&self) -> usize {
        self.w.words.len() * 64 + self.n as usize
    }

    /// The bits written since bit `start` of the writer (at most 128 of them), least
    /// significant bit first: what a caller wrote, read back to be remembered.
    #[inline]
    pub(crate) fn bits_since(&self, start: usize) -> u128 {
        let len = self.len_bits() - start;
        debug_assert!(len <= 128);
        let full = self.w.words.len();
        // Word `k` of the writer with this run's partial word last; bits past the end are 0
        // (the partial word keeps its unwritten bits clear).
        let word = |k: usize| -> u128 {
            match self.w.words.get(k) {
                Some(&v) => u128::from(v),
                None if k == full => u128::from(self.acc),
                None => 0,
            }
        };
        let k = start / 64;
        let off = (start % 64) as u32;
        let mut v = (word(k) | word(k + 1) << 64) >> off;
        if off != 0 {
            v |= word(k + 2) << (128 - off);
        }
        if len < 128 {
            v &= (1u128 << len) - 1;
        }
        v
    }

    /// Stores the partial word back into the writer.
    #[inline(always)]
    pub(crate) fn finish(self) {
        self.w.acc = self.acc;
        self.w.acc_bits = self.n;
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
        let v = self.peek_word() & ((1u64 << n) - 1);
        self.pos_bits += n as usize;
        Ok(v)
    }

    /// The next bits from the read position, the next one lowest: at least 57 valid bits (fewer
    /// at the end of the input, the rest zero). Reads no further than the input.
    #[inline(always)]
    fn peek_word(&self) -> u64 {
        let byte = self.pos_bits / 8;
        let off = (self.pos_bits % 8) as u32;
        let word = match self.bytes.get(byte..byte + 8) {
            // One 8-byte load in the middle of the input (the usual case).
            Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
            None => {
                let rest = self.bytes.get(byte..).unwrap_or(&[]);
                let mut buf = [0u8; 8];
                buf[..rest.len()].copy_from_slice(rest);
                u64::from_le_bytes(buf)
            }
        };
        word >> off
    }

    /// Reads one bit.
    #[inline]
    pub fn read_bool(&mut self) -> Result<bool, TransformError> {
        Ok(self.read(1)? == 1)
    }

    /// Reads an order-`k` Exp-Golomb code written by [`BitWriter::write_eg`].
    #[inline]
    pub fn read_eg(&mut self, k: u32) -> Result<u64, TransformError> {
        // Fast path: the prefix's terminating one bit is among the next bits held in one word.
        let avail = self.remaining_bits().min(57) as u32;
        let zeros = self.peek_word().trailing_zeros();
        if zeros < avail && zeros <= EG_PREFIX_MAX {
            self.pos_bits += zeros as usize + 1;
            let nbits = zeros + k + 1;
            let low = self.read(nbits - 1)?;
            return Ok(((1u64 << (nbits - 1)) | low) - (1u64 << k));
        }
        // Slow path (a long prefix, the end of the input, garbage): bit by bit, for the errors.
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
    fn truncate_and_copy_match_a_writer_that_stopped_there() {
        let mut rng = Rng::new(8);
        for _ in 0..500 {
            let items: Vec<(u64, u32)> = (0..rng.below(40))
                .map(|_| (rng.next_u64(), rng.below(65) as u32))
                .collect();
            let mut full = BitWriter::new();
            let mut marks = vec![0];
            for &(v, n) in &items {
                full.write(v, n);
                marks.push(full.len_bits());
            }
            let cut = rng.below(items.len() as u64 + 1) as usize;
            let mut short = BitWriter::new();
            for &(v, n) in &items[..cut] {
                short.write(v, n);
            }
            let mut copy = BitWriter::new();
            copy.write(1, 3);
            copy.append_bits(&full, 0, marks[cut]);
            full.truncate(marks[cut]);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            full.copy_to(&mut a);
            short.copy_to(&mut b);
            assert_eq!(a, b);
            assert_eq!(full.len_bits(), short.len_bits());
            full.write(0x5, 3);
            short.write(0x5, 3);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            full.copy_to(&mut a);
            short.copy_to(&mut b);
            assert_eq!(a, b);
            let mut c = Vec::new();
            copy.copy_to(&mut c);
            let mut r = BitReader::new(&c);
            assert_eq!(r.read(3).unwrap(), 1);
            for &(v, n) in &items[..cut] {
                let got = if n > 32 {
                    r.read(32).unwrap() | r.read(n - 32).unwrap() << 32
                } else {
                    r.read(n).unwrap()
                };
                assert_eq!(got, v & if n == 64 { u64::MAX } else { (1 << n) - 1 });
            }
        }
    }

    #[test]
    fn a_bit_run_writes_exactly_what_the_writer_writes() {
        let mut rng = Rng::new(9);
        for _ in 0..300 {
            let (mut a, mut b) = (BitWriter::new(), BitWriter::new());
            for _ in 0..rng.below(60) {
                let mut run = BitRun::new(&mut b);
                for _ in 0..rng.below(8) {
                    let n = rng.below(65) as u32;
                    let v = rng.next_u64();
                    let eg = (rng.next_u64() >> rng.below(64)).min(1 << 39);
                    let k = rng.below(6) as u32;
                    a.write(v, n);
                    run.write(v, n);
                    a.write_eg(eg, k);
                    run.write_eg(eg, k);
                    assert_eq!(run.len_bits(), a.len_bits());
                }
                run.finish();
                let v = rng.next_u64();
                a.write(v, 5);
                b.write(v, 5);
            }
            let (mut x, mut y) = (Vec::new(), Vec::new());
            a.copy_to(&mut x);
            b.copy_to(&mut y);
            assert_eq!(x, y);
            assert_eq!(a.len_bits(), b.len_bits());
        }
    }

    #[test]
    fn reading_past_the_end_is_an_error_not_a_panic() {
        let mut r = BitReader::new(&[0u8; 2]);
        assert!(r.read(17).is_err());
        assert!(r.read_eg(0).is_err());
        let mut r = BitReader::new(&[]);
        assert!(r.read(1).is_err());
    }

    /// The reader's reference: one bit at a time, as the format is specified.
    fn read_eg_bitwise(r: &mut BitReader, k: u32) -> Result<u64, TransformError> {
        let mut zeros = 0;
        while !r.read_bool()? {
            zeros += 1;
            if zeros > EG_PREFIX_MAX {
                return Err(TransformError::Malformed("exp-golomb prefix too long"));
            }
        }
        // The code's low bits, first read lowest.
        let mut low = 0u64;
        for i in 0..zeros + k {
            low |= r.read(1)? << i;
        }
        Ok(((1u64 << (zeros + k)) | low) - (1u64 << k))
    }

    #[test]
    fn fast_reads_match_bit_by_bit_reads_on_any_input() {
        let mut rng = Rng::new(3);
        for _ in 0..3000 {
            let len = rng.below(24) as usize;
            // Sparse bytes make long Exp-Golomb prefixes and reads across the end likely.
            let sparse = rng.below(2) == 0;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let b = rng.next_u64() as u8;
                    if sparse && rng.below(4) != 0 {
                        0
                    } else {
                        b
                    }
                })
                .collect();
            let (mut fast, mut slow) = (BitReader::new(&bytes), BitReader::new(&bytes));
            for _ in 0..40 {
                let (a, b) = if rng.below(2) == 0 {
                    let n = rng.below(58) as u32;
                    let b = (0..n).try_fold(0u64, |v, i| Ok(v | slow.read(1)? << i));
                    (fast.read(n), b)
                } else {
                    let k = rng.below(4) as u32;
                    (fast.read_eg(k), read_eg_bitwise(&mut slow, k))
                };
                assert_eq!(a, b, "{bytes:02x?}");
                if a.is_err() {
                    break;
                }
                assert_eq!(fast.remaining_bits(), slow.remaining_bits());
            }
        }
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
