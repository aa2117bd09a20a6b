//! Byte-aligned encodings of the input datagram payload (client → server) and the own-player
//! state blob (server → client).
//!
//! Both are small fixed-layout little-endian records, not postcard: they ride in every datagram,
//! so their size is part of the bandwidth budget, and a fixed layout makes the size bound a
//! constant that is checked at compile time. Decoding never panics; every malformed input gives a
//! [`WireError`].
//!
//! ## Input payload (`encode_inputs`)
//! | bytes | field |
//! |---|---|
//! | 1 | format version, [`INPUTS_FORMAT_VERSION`] |
//! | 8 | `first_tick`: u64 LE, the tick the first input is meant for |
//! | 1 | `count`: 1..=[`INPUTS_PER_PACKET_MAX`] |
//! | count × [`CHARACTER_INPUT_BYTES`] | inputs for `first_tick`, `first_tick + 1`, … |
//!
//! One character input is 5 bytes: `move_x` i8, `move_z` i8, `yaw` u16 LE, buttons u8 (bit 0
//! run, bit 1 jump, other bits must be zero).
//!
//! ## Own-player blob (`encode_own_state`), [`OWN_STATE_BYTES`] bytes
//! | bytes | field |
//! |---|---|
//! | 1 | format version, [`OWN_STATE_FORMAT_VERSION`] |
//! | 8 | server tick the state is after: u64 LE |
//! | 8 | last input tick applied: u64 LE, `u64::MAX` for none yet |
//! | 1 | teleport sequence: u8, wrapping, bumped by every server-side teleport |
//! | 12 | position: 3 × i32 LE in 1/[`POSITION_UNITS_PER_M`] m |
//! | 6 | velocity: 3 × i16 LE in 1/[`VELOCITY_UNITS_PER_MPS`] m/s |
//! | 2 | yaw: u16 LE |
//! | 1 | flags: bit 0 grounded, other bits must be zero |

use super::movement::{
    quantize_position_units, quantize_velocity_units, CharacterInput, CharacterState,
    POSITION_UNITS_PER_M, VELOCITY_UNITS_PER_MPS,
};
use crate::time::Tick;

/// Version byte of the input payload layout.
pub const INPUTS_FORMAT_VERSION: u8 = 1;
/// Version byte of the own-state blob layout.
pub const OWN_STATE_FORMAT_VERSION: u8 = 1;
/// Most inputs in one datagram. Redundancy covers every input the server has not yet
/// acknowledged; 32 ticks is > 1 s at 30 Hz and 267 ms at 120 Hz, more than the lead the clock
/// runs ahead under any RTT the targets consider, and keeps the payload under
/// [`INPUTS_BYTES_MAX`].
pub const INPUTS_PER_PACKET_MAX: usize = 32;
/// Bytes of one encoded [`CharacterInput`].
pub const CHARACTER_INPUT_BYTES: usize = 5;
/// Bytes of the input payload header (version, first tick, count).
pub const INPUTS_HEADER_BYTES: usize = 1 + 8 + 1;
/// Largest input payload, bytes: a budget so inputs never crowd out the datagram.
pub const INPUTS_BYTES_MAX: usize = 256;
/// Bytes of the own-state blob (fixed).
pub const OWN_STATE_BYTES: usize = 1 + 8 + 8 + 1 + 12 + 6 + 2 + 1;
/// Budget the own-state blob must fit, bytes: it shares a transform datagram.
pub const OWN_STATE_BYTES_MAX: usize = 64;

const _: () = assert!(
    INPUTS_HEADER_BYTES + INPUTS_PER_PACKET_MAX * CHARACTER_INPUT_BYTES <= INPUTS_BYTES_MAX
);
const _: () = assert!(OWN_STATE_BYTES <= OWN_STATE_BYTES_MAX);

/// Button bit of [`CharacterInput::run`].
const BUTTON_RUN: u8 = 1;
/// Button bit of [`CharacterInput::jump`].
const BUTTON_JUMP: u8 = 2;
/// Flag bit of [`CharacterState::grounded`] in the own-state blob.
const FLAG_GROUNDED: u8 = 1;

/// Why an input payload or state blob from a peer could not be decoded. Every variant is the
/// peer's fault; the caller drops the datagram (and may count it against the peer).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes ended before the record did.
    #[error("truncated: {len} bytes, at least {needed} needed")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes the record needs.
        needed: usize,
    },
    /// The version byte names no known layout.
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    /// The input count is zero or above [`INPUTS_PER_PACKET_MAX`].
    #[error("input count {0} outside 1..={INPUTS_PER_PACKET_MAX}")]
    BadCount(usize),
    /// The inputs' ticks would pass `u64::MAX`.
    #[error("input ticks overflow")]
    TickOverflow,
    /// A reserved bit was set.
    #[error("reserved bits set: {0:#04x}")]
    ReservedBits(u8),
    /// Bytes were left after the record.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
}

/// Inputs decoded from one datagram: `inputs[i]` is meant for tick `first_tick + i`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputBatch {
    /// The tick of `inputs[0]`.
    pub first_tick: Tick,
    /// Consecutive inputs, 1..=[`INPUTS_PER_PACKET_MAX`].
    pub inputs: Vec<CharacterInput>,
}

/// Encodes inputs for consecutive ticks starting at `first_tick`. Only the last
/// [`INPUTS_PER_PACKET_MAX`] are kept (the newest matter most), so the result is always at most
/// [`INPUTS_BYTES_MAX`] bytes; an empty slice encodes nothing and returns an empty vector.
pub fn encode_inputs(first_tick: Tick, inputs: &[CharacterInput]) -> Vec<u8> {
    if inputs.is_empty() {
        return Vec::new();
    }
    let skip = inputs.len().saturating_sub(INPUTS_PER_PACKET_MAX);
    let inputs = &inputs[skip..];
    let first = first_tick.0.saturating_add(skip as u64);
    let mut out = Vec::with_capacity(INPUTS_HEADER_BYTES + inputs.len() * CHARACTER_INPUT_BYTES);
    out.push(INPUTS_FORMAT_VERSION);
    out.extend_from_slice(&first.to_le_bytes());
    out.push(inputs.len() as u8);
    for i in inputs {
        out.push(i.move_x as u8);
        out.push(i.move_z as u8);
        out.extend_from_slice(&i.yaw.to_le_bytes());
        out.push((u8::from(i.run) * BUTTON_RUN) | (u8::from(i.jump) * BUTTON_JUMP));
    }
    out
}

/// Decodes an input payload. Never panics.
pub fn decode_inputs(bytes: &[u8]) -> Result<InputBatch, WireError> {
    if bytes.len() < INPUTS_HEADER_BYTES {
        return Err(WireError::Truncated {
            len: bytes.len(),
            needed: INPUTS_HEADER_BYTES,
        });
    }
    if bytes[0] != INPUTS_FORMAT_VERSION {
        return Err(WireError::UnknownVersion(bytes[0]));
    }
    let first = u64::from_le_bytes(read8(&bytes[1..9]));
    let count = bytes[9] as usize;
    if count == 0 || count > INPUTS_PER_PACKET_MAX {
        return Err(WireError::BadCount(count));
    }
    if first.checked_add(count as u64 - 1).is_none() {
        return Err(WireError::TickOverflow);
    }
    let needed = INPUTS_HEADER_BYTES + count * CHARACTER_INPUT_BYTES;
    if bytes.len() < needed {
        return Err(WireError::Truncated {
            len: bytes.len(),
            needed,
        });
    }
    if bytes.len() > needed {
        return Err(WireError::TrailingBytes(bytes.len() - needed));
    }
    let mut inputs = Vec::with_capacity(count);
    for rec in bytes[INPUTS_HEADER_BYTES..].chunks_exact(CHARACTER_INPUT_BYTES) {
        let buttons = rec[4];
        if buttons & !(BUTTON_RUN | BUTTON_JUMP) != 0 {
            return Err(WireError::ReservedBits(buttons));
        }
        inputs.push(CharacterInput {
            move_x: rec[0] as i8,
            move_z: rec[1] as i8,
            yaw: u16::from_le_bytes([rec[2], rec[3]]),
            run: buttons & BUTTON_RUN != 0,
            jump: buttons & BUTTON_JUMP != 0,
        });
    }
    Ok(InputBatch {
        first_tick: Tick(first),
        inputs,
    })
}

/// The server's word on one player's own state, sent to that player only.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OwnState {
    /// The server tick this state is the result of.
    pub server_tick: Tick,
    /// The newest tick whose input the server received and applied, `None` before the first.
    /// Inputs for ticks up to it need not be sent again.
    pub last_input_tick: Option<Tick>,
    /// Bumped (wrapping) on every server-side teleport: a client seeing a new value snaps.
    pub teleport_seq: u8,
    /// The state after `server_tick`, quantized.
    pub state: CharacterState,
}

/// Encodes the own-state blob: exactly [`OWN_STATE_BYTES`] bytes.
pub fn encode_own_state(s: &OwnState) -> Vec<u8> {
    let mut out = Vec::with_capacity(OWN_STATE_BYTES);
    out.push(OWN_STATE_FORMAT_VERSION);
    out.extend_from_slice(&s.server_tick.0.to_le_bytes());
    out.extend_from_slice(&s.last_input_tick.map_or(u64::MAX, |t| t.0).to_le_bytes());
    out.push(s.teleport_seq);
    for p in s.state.position.to_array() {
        out.extend_from_slice(&quantize_position_units(p).to_le_bytes());
    }
    for v in s.state.velocity.to_array() {
        out.extend_from_slice(&quantize_velocity_units(v).to_le_bytes());
    }
    out.extend_from_slice(&s.state.yaw.to_le_bytes());
    out.push(u8::from(s.state.grounded) * FLAG_GROUNDED);
    out
}

/// Decodes the own-state blob. Never panics.
pub fn decode_own_state(bytes: &[u8]) -> Result<OwnState, WireError> {
    if bytes.len() < OWN_STATE_BYTES {
        return Err(WireError::Truncated {
            len: bytes.len(),
            needed: OWN_STATE_BYTES,
        });
    }
    if bytes.len() > OWN_STATE_BYTES {
        return Err(WireError::TrailingBytes(bytes.len() - OWN_STATE_BYTES));
    }
    if bytes[0] != OWN_STATE_FORMAT_VERSION {
        return Err(WireError::UnknownVersion(bytes[0]));
    }
    let server_tick = u64::from_le_bytes(read8(&bytes[1..9]));
    let last = u64::from_le_bytes(read8(&bytes[9..17]));
    let teleport_seq = bytes[17];
    let mut position = [0.0f32; 3];
    for (i, p) in position.iter_mut().enumerate() {
        let o = 18 + 4 * i;
        let u = i32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        *p = u as f32 / POSITION_UNITS_PER_M;
    }
    let mut velocity = [0.0f32; 3];
    for (i, v) in velocity.iter_mut().enumerate() {
        let o = 30 + 2 * i;
        *v = i16::from_le_bytes([bytes[o], bytes[o + 1]]) as f32 / VELOCITY_UNITS_PER_MPS;
    }
    let yaw = u16::from_le_bytes([bytes[36], bytes[37]]);
    let flags = bytes[38];
    if flags & !FLAG_GROUNDED != 0 {
        return Err(WireError::ReservedBits(flags));
    }
    Ok(OwnState {
        server_tick: Tick(server_tick),
        last_input_tick: (last != u64::MAX).then_some(Tick(last)),
        teleport_seq,
        state: CharacterState {
            position: position.into(),
            velocity: velocity.into(),
            yaw,
            grounded: flags & FLAG_GROUNDED != 0,
        },
    })
}

fn read8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::movement::{KinematicCharacter, Movement};
    use crate::rng::Rng;
    use crate::types::Vec3;

    fn random_input(r: &mut Rng) -> CharacterInput {
        CharacterInput {
            move_x: r.next_u64() as i8,
            move_z: r.next_u64() as i8,
            yaw: r.next_u64() as u16,
            run: r.chance(0.5),
            jump: r.chance(0.1),
        }
    }

    #[test]
    fn inputs_round_trip_and_fit_the_budget() {
        let mut r = Rng::new(7);
        for n in 1..=40 {
            let inputs: Vec<_> = (0..n).map(|_| random_input(&mut r)).collect();
            let bytes = encode_inputs(Tick(1000), &inputs);
            assert!(bytes.len() <= INPUTS_BYTES_MAX);
            let b = decode_inputs(&bytes).unwrap();
            let kept = n.min(INPUTS_PER_PACKET_MAX);
            assert_eq!(b.inputs, inputs[n - kept..]);
            assert_eq!(b.first_tick, Tick(1000 + (n - kept) as u64));
        }
        assert!(encode_inputs(Tick(0), &[]).is_empty());
    }

    #[test]
    fn own_state_round_trips_exactly_for_quantized_states() {
        let m = KinematicCharacter::default();
        let mut r = Rng::new(9);
        let mut s = m.spawn(Vec3::new(10.0, 0.0, -5.0), 0);
        for i in 0..500u64 {
            s = m.step(&s, &random_input(&mut r), 1.0 / 60.0);
            let o = OwnState {
                server_tick: Tick(i),
                last_input_tick: (i % 7 != 0).then_some(Tick(i)),
                teleport_seq: i as u8,
                state: s,
            };
            let bytes = encode_own_state(&o);
            assert_eq!(bytes.len(), OWN_STATE_BYTES);
            assert_eq!(decode_own_state(&bytes).unwrap(), o);
        }
    }

    #[test]
    fn garbage_never_panics_input_or_state_decode() {
        let mut r = Rng::new(0xBAD);
        let mut ok = 0;
        for _ in 0..20_000 {
            let len = r.below(300) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| r.next_u64() as u8).collect();
            // Half the time make the header plausible so the deeper checks run.
            if r.chance(0.5) && len > INPUTS_HEADER_BYTES {
                b[0] = INPUTS_FORMAT_VERSION;
                b[9] = r.below(40) as u8;
            }
            if decode_inputs(&b).is_ok() {
                ok += 1;
            }
            let _ = decode_own_state(&b);
            let _ = decode_own_state(&b[..len.min(OWN_STATE_BYTES)]);
        }
        // Sanity: the generator does produce some valid payloads but mostly garbage.
        assert!(ok < 20_000);
        // Every truncation of a valid payload is an error, not a panic.
        let bytes = encode_inputs(Tick(5), &[CharacterInput::default(); 4]);
        for cut in 0..bytes.len() {
            assert!(decode_inputs(&bytes[..cut]).is_err());
        }
        assert_eq!(
            decode_inputs(&[
                1, 255, 255, 255, 255, 255, 255, 255, 255, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]),
            Err(WireError::TickOverflow)
        );
    }
}
