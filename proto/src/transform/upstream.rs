//! The client's upstream datagram, kind tag [`KIND_CLIENT_STATE`]:
//! `kind u8 | ack header (10 B) | seq u16 LE | input blob len varint | input blob |
//! owned count u8 | bit-packed owned transforms` (each an Exp-Golomb entity id and an absolute
//! quantized transform; absolute because a client owns a handful of entities and its datagram
//! must stand alone, with no upstream baseline state on the server).
//!
//! Kind [`KIND_CLIENT_STATE_CLOCK`] is the same with the client's clock (`client_time_us`
//! varint) after `seq`: the server echoes it in its next datagram for clock sync
//! (PROTOCOL.md 12.4 and 12.7).
//!
//! The server validates bounds here (every value must be inside the quantization ranges);
//! ownership is the server core's check.

use super::bits::{BitReader, BitWriter};
use super::quant::{QTransform, Quantizer};
use super::record::{read_absolute, write_absolute};
use super::seq::{AckHeader, Seq, ACK_HEADER_BYTES};
use super::{
    read_varint, write_varint, TransformError, INPUT_BLOB_BYTES_MAX, KIND_CLIENT_STATE,
    KIND_CLIENT_STATE_CLOCK, OWNED_PER_DATAGRAM_MAX,
};
use crate::types::EntityId;
use crate::wire::limits::DATAGRAM_BYTES_MAX;

/// Exp-Golomb order of owned entity ids (written whole, not as gaps).
const OWNED_ID_EG_K: u32 = 8;

/// A decoded client datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientDatagram {
    /// Which server datagrams the client received.
    pub ack: AckHeader,
    /// The client's own sequence number for this datagram (the server keeps the newest).
    pub seq: Seq,
    /// The client's clock, µs, for the server to echo (kind [`KIND_CLIENT_STATE_CLOCK`]).
    pub client_time_us: Option<u64>,
    /// The prediction module's opaque input bytes.
    pub input_blob: Vec<u8>,
    /// Transforms of entities the client says it owns, quantized.
    pub owned: Vec<(EntityId, QTransform)>,
}

/// Appends a client datagram to `out` (cleared first). Fails if the blob or the owned list is
/// over its limit; quantize the owned transforms with the same [`Quantizer`] as the server.
pub fn encode_client_datagram(
    qz: &Quantizer,
    ack: &AckHeader,
    seq: Seq,
    input_blob: &[u8],
    owned: &[(EntityId, QTransform)],
    out: &mut Vec<u8>,
) -> Result<(), TransformError> {
    encode_client_datagram_clocked(qz, ack, seq, None, input_blob, owned, out)
}

/// [`encode_client_datagram`] with the client's clock: with `Some(client_time_us)` the datagram
/// is of kind [`KIND_CLIENT_STATE_CLOCK`] and the server echoes the time in its next datagram
/// (PROTOCOL.md 12.4); with `None` it is the plain kind [`KIND_CLIENT_STATE`].
pub fn encode_client_datagram_clocked(
    qz: &Quantizer,
    ack: &AckHeader,
    seq: Seq,
    client_time_us: Option<u64>,
    input_blob: &[u8],
    owned: &[(EntityId, QTransform)],
    out: &mut Vec<u8>,
) -> Result<(), TransformError> {
    if input_blob.len() > INPUT_BLOB_BYTES_MAX {
        return Err(TransformError::BlobTooLarge {
            len: input_blob.len(),
            max: INPUT_BLOB_BYTES_MAX,
        });
    }
    if owned.len() > OWNED_PER_DATAGRAM_MAX {
        return Err(TransformError::TooManyRecords(owned.len()));
    }
    out.clear();
    out.push(match client_time_us {
        Some(_) => KIND_CLIENT_STATE_CLOCK,
        None => KIND_CLIENT_STATE,
    });
    ack.encode(out);
    out.extend_from_slice(&seq.0.to_le_bytes());
    if let Some(t) = client_time_us {
        write_varint(out, t);
    }
    write_varint(out, input_blob.len() as u64);
    out.extend_from_slice(input_blob);
    out.push(owned.len() as u8);
    let mut w = BitWriter::new();
    for (id, q) in owned {
        w.write_eg(id.0 as u64, OWNED_ID_EG_K);
        write_absolute(&mut w, qz, q);
    }
    w.copy_to(out);
    Ok(())
}

/// Decodes a client datagram, checking every limit and every transform's bounds.
pub fn decode_client_datagram(
    qz: &Quantizer,
    bytes: &[u8],
) -> Result<ClientDatagram, TransformError> {
    let kind = *bytes.first().ok_or(TransformError::Empty)?;
    if kind != KIND_CLIENT_STATE && kind != KIND_CLIENT_STATE_CLOCK {
        return Err(TransformError::UnknownKind(kind));
    }
    if bytes.len() > DATAGRAM_BYTES_MAX {
        return Err(TransformError::Oversize(bytes.len()));
    }
    let ack = AckHeader::decode(&bytes[1..])?;
    let mut pos = 1 + ACK_HEADER_BYTES;
    let s = bytes.get(pos..pos + 2).ok_or(TransformError::Truncated)?;
    let seq = Seq(u16::from_le_bytes([s[0], s[1]]));
    pos += 2;
    let client_time_us = if kind == KIND_CLIENT_STATE_CLOCK {
        Some(read_varint(bytes, &mut pos)?)
    } else {
        None
    };
    let len = read_varint(bytes, &mut pos)?;
    if len > INPUT_BLOB_BYTES_MAX as u64 {
        return Err(TransformError::BlobTooLarge {
            len: len as usize,
            max: INPUT_BLOB_BYTES_MAX,
        });
    }
    let len = len as usize;
    let input_blob = bytes
        .get(pos..pos + len)
        .ok_or(TransformError::Truncated)?
        .to_vec();
    pos += len;
    let count = *bytes.get(pos).ok_or(TransformError::Truncated)? as usize;
    pos += 1;
    if count > OWNED_PER_DATAGRAM_MAX {
        return Err(TransformError::TooManyRecords(count));
    }
    let mut r = BitReader::new(&bytes[pos..]);
    let mut owned = Vec::with_capacity(count);
    for _ in 0..count {
        let id = r.read_eg(OWNED_ID_EG_K)?;
        if id > u32::MAX as u64 {
            return Err(TransformError::Malformed("entity id out of range"));
        }
        owned.push((EntityId(id as u32), read_absolute(&mut r, qz)?));
    }
    if r.remaining_bits() >= 8 {
        return Err(TransformError::Malformed("trailing bytes"));
    }
    Ok(ClientDatagram {
        ack,
        seq,
        client_time_us,
        input_blob,
        owned,
    })
}
