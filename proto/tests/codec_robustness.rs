//! Decoding never panics and never allocates without a bound, whatever a peer sends.
//!
//! What each kind of bad input gives (PROTOCOL.md, "Decoding errors", states the same):
//! - a strict prefix of a valid body: always `Truncated` (postcard reads fields in order, so a
//!   prefix can never complete a message: every field the full decode needed is still needed);
//! - a valid body with bytes after it: `TrailingBytes(n)`;
//! - a tag at or above the variant count: `UnknownMessage(tag)`;
//! - a bad bool, option tag, nested enum index, UTF-8 or over-long varint: `Malformed`;
//! - a frame header above the limit: `Oversize`, before any of the body is buffered;
//! - bit flips: anything, including a *different valid message*: the codec has no checksum
//!   because QUIC (and TLS) already guarantee integrity; the codec only guarantees no panic and a
//!   typed error.
//!
//! Random cases are seeded; every failure prints its seed and input.
//!
//! The golden cases are shared with `golden.rs` by including it as a module, so its tests also
//! run (in milliseconds) as `golden::*` in this binary.

#[path = "golden.rs"]
#[allow(dead_code)]
mod golden;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use golden::{client_cases, hex, server_cases, unhex};
use neonet_proto::rng::Rng;
use neonet_proto::types::ReqId;
use neonet_proto::wire::codec::{
    self, DecodeError, FrameDecoder, CLIENT_MSG_VARIANTS, FRAME_HEADER_BYTES, SERVER_MSG_VARIANTS,
};
use neonet_proto::wire::limits::FRAME_BYTES_MAX;
use neonet_proto::wire::msg::{ClientMsg, ServerMsg};

// ---------------------------------------------------------------------------------------------
// A counting allocator: per-thread live and peak bytes, so parallel tests do not disturb each
// other's measurements.

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    let _ = LIVE.try_with(|l| {
        let now = l.get() + size;
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn note_free(size: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(size)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the peak heap bytes it allocated on this thread beyond
/// what was live when it started.
fn peak_alloc<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, peak - base)
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn client_bodies() -> Vec<(String, Vec<u8>)> {
    client_cases()
        .into_iter()
        .map(|(m, _)| (m.name().to_string(), codec::encode(&m)))
        .collect()
}

fn server_bodies() -> Vec<(String, Vec<u8>)> {
    server_cases()
        .into_iter()
        .map(|(m, _)| (m.name().to_string(), codec::encode(&m)))
        .collect()
}

/// Decodes `bytes` both ways, turning a panic into a test failure that names the seed and input.
fn decode_both(
    bytes: &[u8],
    seed: u64,
) -> (
    Result<ClientMsg, DecodeError>,
    Result<ServerMsg, DecodeError>,
) {
    match catch_unwind(AssertUnwindSafe(|| {
        (codec::decode_client(bytes), codec::decode_server(bytes))
    })) {
        Ok(r) => r,
        Err(_) => panic!("decoding panicked: seed {seed}, input {}", hex(bytes)),
    }
}

/// An `Ok` from arbitrary bytes must at least re-encode to no more bytes than it came from:
/// the encoder writes the shortest form of everything, decoders accept over-long varints.
fn check_ok_is_sane(bytes: &[u8], seed: u64) {
    let (c, s) = decode_both(bytes, seed);
    if let Ok(m) = c {
        let again = codec::encode(&m);
        assert!(
            again.len() <= bytes.len(),
            "seed {seed}: {} re-encodes longer: {} -> {}",
            m.name(),
            hex(bytes),
            hex(&again)
        );
    }
    if let Ok(m) = s {
        let again = codec::encode(&m);
        assert!(
            again.len() <= bytes.len(),
            "seed {seed}: {} re-encodes longer: {} -> {}",
            m.name(),
            hex(bytes),
            hex(&again)
        );
    }
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// A canonical varint, as the encoder writes it.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

// ---------------------------------------------------------------------------------------------
// Random input.

#[test]
fn random_bytes_never_panic() {
    const CASES: u64 = 20_000;
    for case in 0..CASES {
        let seed = 0x5EED_0000 + case;
        let mut rng = Rng::new(seed);
        let len = rng.below(96) as usize;
        let bytes = random_bytes(&mut rng, len);
        check_ok_is_sane(&bytes, seed);
    }
}

#[test]
fn random_bodies_behind_valid_tags_never_panic() {
    // Uniform random bytes mostly die at the tag; a valid tag makes the field decoders work.
    const CASES: u64 = 20_000;
    for case in 0..CASES {
        let seed = 0x7A6_0000 + case;
        let mut rng = Rng::new(seed);
        let tag = rng.below(u64::from(SERVER_MSG_VARIANTS.max(CLIENT_MSG_VARIANTS))) as u8;
        let len = rng.below(256) as usize;
        let mut bytes = vec![tag];
        bytes.extend(random_bytes(&mut rng, len));
        // Small values make lengths and option tags plausible more often.
        if rng.chance(0.5) {
            for b in bytes.iter_mut().skip(1) {
                *b &= 0x07;
            }
        }
        check_ok_is_sane(&bytes, seed);
    }
}

#[test]
fn random_mutations_of_golden_messages_never_panic() {
    let bodies: Vec<Vec<u8>> = client_bodies()
        .into_iter()
        .chain(server_bodies())
        .map(|(_, b)| b)
        .collect();
    const CASES: u64 = 20_000;
    for case in 0..CASES {
        let seed = 0xB0D1_0000 + case;
        let mut rng = Rng::new(seed);
        let mut bytes = bodies[rng.below(bodies.len() as u64) as usize].clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len() as u64 + 1) as usize;
            match rng.below(4) {
                0 if at < bytes.len() => bytes[at] = rng.next_u64() as u8,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                2 => bytes.insert(at, rng.next_u64() as u8),
                _ if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
                _ => {}
            }
        }
        check_ok_is_sane(&bytes, seed);
    }
}

// ---------------------------------------------------------------------------------------------
// Truncation, extension, bit flips of every golden message.

#[test]
fn every_truncation_of_every_message_is_truncated() {
    for (name, body) in client_bodies() {
        for k in 0..body.len() {
            assert_eq!(
                codec::decode_client(&body[..k]),
                Err(DecodeError::Truncated),
                "{name} cut to {k} of {} bytes: {}",
                body.len(),
                hex(&body[..k])
            );
        }
    }
    for (name, body) in server_bodies() {
        for k in 0..body.len() {
            assert_eq!(
                codec::decode_server(&body[..k]),
                Err(DecodeError::Truncated),
                "{name} cut to {k} of {} bytes: {}",
                body.len(),
                hex(&body[..k])
            );
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    for (name, mut body) in client_bodies() {
        body.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            codec::decode_client(&body),
            Err(DecodeError::TrailingBytes(3)),
            "{name}"
        );
    }
    for (name, mut body) in server_bodies() {
        body.push(0xff);
        assert_eq!(
            codec::decode_server(&body),
            Err(DecodeError::TrailingBytes(1)),
            "{name}"
        );
    }
}

#[test]
fn every_single_bit_flip_is_handled() {
    // Exhaustive: every bit of every golden body. Outcomes are counted to show the mix; a flip
    // may legitimately decode to another valid message (no checksum, see the module docs).
    let (mut ok, mut err) = (0usize, 0usize);
    for (name, body) in client_bodies().into_iter().chain(server_bodies()) {
        for i in 0..body.len() * 8 {
            let mut b = body.clone();
            b[i / 8] ^= 1 << (i % 8);
            let seed = i as u64;
            check_ok_is_sane(&b, seed);
            let (c, s) = decode_both(&b, seed);
            for r in [c.map(|_| ()), s.map(|_| ())] {
                match r {
                    Ok(()) => ok += 1,
                    Err(DecodeError::Oversize { .. }) => {
                        panic!("{name}: Oversize is for frame headers only")
                    }
                    Err(_) => err += 1,
                }
            }
        }
    }
    println!("single-bit flips: {ok} decoded to some message, {err} refused");
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

// ---------------------------------------------------------------------------------------------
// Specific malformed input.

#[test]
fn empty_body_is_truncated() {
    assert_eq!(codec::decode_client(&[]), Err(DecodeError::Truncated));
    assert_eq!(codec::decode_server(&[]), Err(DecodeError::Truncated));
}

#[test]
fn unknown_tags_are_unknown_messages() {
    for tag in CLIENT_MSG_VARIANTS..1000 {
        let mut body = varint(u64::from(tag));
        body.extend_from_slice(&[0; 8]);
        assert_eq!(
            codec::decode_client(&body),
            Err(DecodeError::UnknownMessage(tag))
        );
    }
    for tag in SERVER_MSG_VARIANTS..1000 {
        assert_eq!(
            codec::decode_server(&varint(u64::from(tag))),
            Err(DecodeError::UnknownMessage(tag))
        );
    }
    assert_eq!(
        codec::decode_client(&varint(u64::from(u32::MAX))),
        Err(DecodeError::UnknownMessage(u32::MAX))
    );
}

#[test]
fn tag_varint_errors() {
    // A tag cut inside its varint.
    assert_eq!(codec::decode_client(&[0x80]), Err(DecodeError::Truncated));
    assert_eq!(
        codec::decode_client(&[0xff, 0xff, 0xff, 0xff]),
        Err(DecodeError::Truncated)
    );
    // Six continuation bytes: longer than any u32 varint.
    assert!(matches!(
        codec::decode_client(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
        Err(DecodeError::Malformed(_))
    ));
    // An over-long but in-range tag is accepted, like every postcard varint: 0x81 0x00 is 1.
    assert_eq!(
        codec::decode_client(&[0x81, 0x00, 0x00]),
        Ok(ClientMsg::Ping { client_time_us: 0 })
    );
}

#[test]
fn overlong_varints_are_accepted_but_never_written() {
    // Ping { client_time_us: 0 } written with a two-byte zero. Decoders accept it (postcard
    // does); the encoder always writes the shortest form, so bytes are not a message identity.
    let m = codec::decode_client(&[0x01, 0x80, 0x00]).unwrap();
    assert_eq!(m, ClientMsg::Ping { client_time_us: 0 });
    assert_eq!(codec::encode(&m), [0x01, 0x00]);
    // A u64 varint of 11 bytes is malformed; a 10-byte one whose last byte exceeds 0x01
    // overflows u64 and is malformed too.
    let mut b = vec![0x01];
    b.extend_from_slice(&[0x80; 10]);
    b.push(0x00);
    assert!(matches!(
        codec::decode_client(&b),
        Err(DecodeError::Malformed(_))
    ));
    let mut b = vec![0x01];
    b.extend_from_slice(&[0xff; 9]);
    b.push(0x02);
    assert!(matches!(
        codec::decode_client(&b),
        Err(DecodeError::Malformed(_))
    ));
    let mut b = vec![0x01];
    b.extend_from_slice(&[0xff; 9]);
    b.push(0x01);
    assert_eq!(
        codec::decode_client(&b),
        Ok(ClientMsg::Ping {
            client_time_us: u64::MAX
        })
    );
    // protocol_version is a u16: at most 3 bytes, the last at most 0x03.
    assert!(matches!(
        codec::decode_client(&unhex("00 ffff04 00 00")),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn malformed_fields_are_malformed() {
    let malformed = |b: &str| {
        let r = codec::decode_client(&unhex(b));
        assert!(matches!(r, Err(DecodeError::Malformed(_))), "{b}: {r:?}");
    };
    // SpawnModify { req: 1, set: 2 }: a bool must be 0 or 1.
    malformed("0d 01 02");
    // Hello { 1, "a", token tag 2 }: an Option tag must be 0 or 1.
    malformed("00 01 01 61 02");
    // Chat { req: 1, body: [0xff] }: a string must be UTF-8.
    malformed("03 01 01 ff");
    // ModifyRank { req 1, user 1, rank 3 }: Rank has 3 variants.
    malformed("0e 01 01 03");
    // SettingsModify { req 1, setting tag 9 }: Setting has 9 variants.
    malformed("0c 01 09");
    // Same in the server direction: Refused { req 1, reason 12 }, Close { reason 10, "" }.
    for b in ["04 01 0c", "13 0a 00"] {
        let r = codec::decode_server(&unhex(b));
        assert!(matches!(r, Err(DecodeError::Malformed(_))), "{b}: {r:?}");
    }
}

#[test]
fn non_finite_floats_decode() {
    // The codec carries any f32 bit pattern; rejecting NaN and infinities is the server's
    // authorization step (`Refusal::Invalid`), not the codec's.
    let b = unhex("0b 01 0000c07f 0000807f 000080ff");
    match codec::decode_client(&b) {
        Ok(ClientMsg::PlayerPush { force, .. }) => {
            assert!(force[0].is_nan() && force[1] == f32::INFINITY && force[2] == f32::NEG_INFINITY)
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Huge declared lengths: fail fast, allocate almost nothing.

#[test]
fn huge_declared_lengths_fail_fast_without_allocating() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Command { req 1, args: Vec of 2^32 strings } and nothing after.
        ("vec len 2^32", [vec![0x02, 0x01], varint(1 << 32)].concat()),
        // Same with u64::MAX elements.
        (
            "vec len u64::MAX",
            [vec![0x02, 0x01], varint(u64::MAX)].concat(),
        ),
        // Chat { req 1, body: string of 2^62 bytes }.
        (
            "string len 2^62",
            [vec![0x03, 0x01], varint(1 << 62)].concat(),
        ),
        // EntityEvent { entity 1, version 1, name "", data: bytes of 2^40 }.
        (
            "bytes len 2^40",
            [vec![0x09, 0x01, 0x01, 0x00], varint(1 << 40)].concat(),
        ),
        // A Vec that declares 2^32 elements, followed by a few real ones.
        (
            "vec len 2^32 with data",
            [vec![0x02, 0x01], varint(1 << 32), vec![0x00; 1000]].concat(),
        ),
    ];
    for (what, body) in cases {
        let (r, peak) = peak_alloc(|| codec::decode_client(&body));
        assert_eq!(r, Err(DecodeError::Truncated), "{what}");
        assert!(peak < 64 * 1024, "{what}: allocated {peak} bytes");
    }
}

#[test]
fn a_lying_length_costs_no_more_than_the_elements_sent() {
    // A Vec<String> claiming as many elements as there are bytes left, but cut short: serde
    // preallocates min(len, 1 MiB / size_of element) only when the length fits in what remains,
    // so the peak stays near 1 MiB even for a full-size frame.
    let n = FRAME_BYTES_MAX - 16;
    let mut body = vec![0x02, 0x01];
    body.extend(varint(n as u64 + 1));
    body.extend(std::iter::repeat_n(0x00u8, n));
    let (r, peak) = peak_alloc(|| codec::decode_client(&body));
    assert_eq!(r, Err(DecodeError::Truncated));
    println!("lying Vec length over a full frame: {peak} bytes peak");
    // Decoded elements grow the Vec beyond the preallocation: n empty Strings of 24 bytes.
    // This is the amplification a full frame of minimal elements allows (see the next test).
    assert!(peak <= 64 * n, "peak {peak}");
}

#[test]
fn memory_amplification_of_a_full_frame_is_bounded() {
    // A frame of the maximum size made of the smallest possible elements decodes in full
    // before authorization looks at counts: `Command` with ~1 M empty arguments. Each 1-byte
    // empty string becomes a 24-byte `String`, so the decode allocates ~24 bytes per frame byte
    // (transiently; authorization then refuses more than COMMAND_ARGS_MAX arguments). This pins
    // the factor so it cannot grow unnoticed; PROTOCOL.md and the codec report discuss it.
    let n = FRAME_BYTES_MAX - 16;
    let mut body = vec![0x02, 0x01];
    body.extend(varint(n as u64));
    body.extend(std::iter::repeat_n(0x00u8, n));
    let (r, peak) = peak_alloc(|| codec::decode_client(&body));
    match r {
        Ok(ClientMsg::Command { req, args }) => {
            assert_eq!(req, ReqId(1));
            assert_eq!(args.len(), n);
        }
        other => panic!("{:?}", other.map(|m| m.name())),
    }
    let factor = peak as f64 / body.len() as f64;
    println!("full-frame Command of empty args: {peak} bytes peak, {factor:.1}x the frame");
    assert!(factor < 64.0, "amplification {factor:.1}x ({peak} bytes)");
}

// ---------------------------------------------------------------------------------------------
// Framing.

fn all_frames() -> Vec<Vec<u8>> {
    client_cases()
        .iter()
        .map(|(m, _)| codec::encode_frame(m))
        .chain(server_cases().iter().map(|(m, _)| codec::encode_frame(m)))
        .collect()
}

fn drain(d: &mut FrameDecoder, out: &mut Vec<Vec<u8>>) {
    while let Some(f) = d.next_frame().expect("valid frames") {
        out.push(f);
    }
}

fn expected_bodies() -> Vec<Vec<u8>> {
    all_frames()
        .into_iter()
        .map(|f| f[FRAME_HEADER_BYTES..].to_vec())
        .collect()
}

#[test]
fn frame_decoder_byte_at_a_time() {
    let stream: Vec<u8> = all_frames().concat();
    let mut d = FrameDecoder::with_default_limit();
    let mut got = Vec::new();
    for b in &stream {
        d.push(std::slice::from_ref(b));
        drain(&mut d, &mut got);
    }
    assert_eq!(got, expected_bodies());
    assert_eq!(d.buffered(), 0);
    assert_eq!(d.finish(), Ok(()));
}

#[test]
fn frame_decoder_all_frames_in_one_push() {
    let stream: Vec<u8> = all_frames().concat();
    let mut d = FrameDecoder::with_default_limit();
    d.push(&stream);
    let mut got = Vec::new();
    drain(&mut d, &mut got);
    assert_eq!(got, expected_bodies());
    assert_eq!(d.finish(), Ok(()));
}

#[test]
fn frame_decoder_random_chunks() {
    let stream: Vec<u8> = all_frames().concat();
    for seed in 0..500u64 {
        let mut rng = Rng::new(seed);
        let mut d = FrameDecoder::with_default_limit();
        let mut got = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let n = (1 + rng.below(64) as usize).min(stream.len() - at);
            d.push(&stream[at..at + n]);
            at += n;
            if rng.chance(0.7) {
                drain(&mut d, &mut got);
            }
        }
        drain(&mut d, &mut got);
        assert_eq!(got, expected_bodies(), "seed {seed}");
        assert_eq!(d.finish(), Ok(()), "seed {seed}");
    }
}

#[test]
fn frame_decoder_finish_reports_a_partial_frame() {
    for frame in all_frames() {
        for k in 1..frame.len() {
            let mut d = FrameDecoder::with_default_limit();
            d.push(&frame[..k]);
            assert_eq!(d.next_frame(), Ok(None), "cut at {k}");
            assert_eq!(d.buffered(), k);
            assert_eq!(d.finish(), Err(DecodeError::Truncated), "cut at {k}");
        }
    }
    assert_eq!(FrameDecoder::with_default_limit().finish(), Ok(()));
}

#[test]
fn frame_decoder_refuses_oversize_headers_before_the_body() {
    let max = FRAME_BYTES_MAX;
    for len in [max + 1, max * 2, u32::MAX as usize] {
        let mut d = FrameDecoder::with_default_limit();
        // Only the header: the error comes before any body byte arrives or is buffered.
        d.push(&(len as u32).to_le_bytes());
        let (r, peak) = peak_alloc(|| d.next_frame());
        assert_eq!(r, Err(DecodeError::Oversize { len, max }));
        assert!(peak < 1024, "allocated {peak}");
        // The stream cannot be resynchronized: the error repeats until the stream is closed.
        assert_eq!(d.next_frame(), Err(DecodeError::Oversize { len, max }));
    }
    // Exactly the limit is allowed: the decoder waits for the body.
    let mut d = FrameDecoder::with_default_limit();
    d.push(&(max as u32).to_le_bytes());
    assert_eq!(d.next_frame(), Ok(None));
    // A decoder with its own limit (the client's world stream takes snapshots up to
    // SNAPSHOT_BYTES_MAX) enforces that limit instead.
    let mut d = FrameDecoder::new(16);
    d.push(&17u32.to_le_bytes());
    assert_eq!(
        d.next_frame(),
        Err(DecodeError::Oversize { len: 17, max: 16 })
    );
    let mut d = FrameDecoder::new(16);
    d.push(&[16, 0, 0, 0]);
    d.push(&[0; 16]);
    assert_eq!(d.next_frame(), Ok(Some(vec![0; 16])));
}

#[test]
fn frame_decoder_empty_frame_is_an_empty_body() {
    // A zero-length frame is well framed; its empty body fails to decode as `Truncated`.
    let mut d = FrameDecoder::with_default_limit();
    d.push(&[0, 0, 0, 0, 1, 0, 0, 0, 0x11]);
    let empty = d.next_frame().unwrap().unwrap();
    assert!(empty.is_empty());
    assert_eq!(codec::decode_client(&empty), Err(DecodeError::Truncated));
    let goodbye = d.next_frame().unwrap().unwrap();
    assert_eq!(codec::decode_client(&goodbye), Ok(ClientMsg::Goodbye));
    assert_eq!(d.next_frame(), Ok(None));
}

#[test]
fn frame_decoder_random_streams_never_panic() {
    for seed in 0..2_000u64 {
        let mut rng = Rng::new(seed);
        let mut d = FrameDecoder::new(256);
        let r = catch_unwind(AssertUnwindSafe(|| {
            for _ in 0..8 {
                let n = rng.below(64) as usize;
                let bytes = random_bytes(&mut rng, n);
                d.push(&bytes);
                loop {
                    match d.next_frame() {
                        Ok(Some(body)) => {
                            let _ = codec::decode_client(&body);
                            let _ = codec::decode_server(&body);
                        }
                        Ok(None) => break,
                        Err(DecodeError::Oversize { len, max }) => {
                            assert!(len > max);
                            return;
                        }
                        Err(e) => panic!("only Oversize comes from framing, got {e:?}"),
                    }
                }
                assert!(d.buffered() < FRAME_HEADER_BYTES + 256);
            }
            let _ = d.finish();
        }));
        assert!(r.is_ok(), "seed {seed}");
    }
}
