//! Ward's wire format.
//!
//! Every message that crosses a network or is signed is defined in
//! `proto/ward/v1/*.proto` and generated here with prost. This crate holds no
//! cryptography: signatures, keys and their checks live in `ward-core`.
//!
//! Untrusted bytes are decoded only through [`decode_bounded`], which refuses
//! input over a caller-chosen size, and repeated fields over their caps
//! ([`caps`], counted by a wire walker in [`bounded`]), before prost sees it:
//!
//! ```
//! use ward_proto::{decode_bounded, v1::AuthChallenge, Message};
//!
//! let bytes = AuthChallenge { version: 2, service: "ward-relay".into(), nonce: vec![7; 32], ..Default::default() }
//!     .encode_to_vec();
//! let back: AuthChallenge = decode_bounded(&bytes, 1024).unwrap();
//! assert_eq!(back.nonce, vec![7; 32]);
//! assert!(decode_bounded::<AuthChallenge>(&bytes, 8).is_err());
//! ```
#![forbid(unsafe_code)]

pub use prost::Message;

pub mod bounded;
pub mod caps;
pub use bounded::Bounded;

/// The generated `ward.v1` messages.
#[allow(missing_docs, clippy::all)] // generated code
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/ward.v1.rs"));
}

/// The protocol version carried in every versioned structure
/// (SECURITY.md §1.1). The protobuf package stays `ward.v1`: the package
/// name is not the protocol version.
pub const PROTOCOL_VERSION: u32 = 2;

/// Longest `RegisterPush.token` (SECURITY.md §9.2): the relay refuses a
/// longer one, and the SDK before sending it.
pub const MAX_PUSH_TOKEN_BYTES: usize = 1024;

/// Why untrusted bytes could not be decoded.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The input is longer than the limit for this message kind.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid encoding of the expected message.
    #[error("malformed protobuf message")]
    Malformed,
    /// The bytes decode, but are not the canonical encoding of what they
    /// decode to (unknown fields, repeated scalars, default values written,
    /// fields out of order): refused for signed structures.
    #[error("non-canonical protobuf encoding")]
    NonCanonical,
    /// A repeated field has more entries than its cap ([`caps`]), or the
    /// message more entries in total: refused before decoding.
    #[error("too many entries in field {field} of {message}")]
    TooManyEntries {
        /// The message holding the field.
        message: &'static str,
        /// The field number.
        field: u32,
    },
    /// Messages nested deeper than [`caps::MAX_DEPTH`].
    #[error("messages nested too deeply")]
    TooDeep,
}

/// Decodes a message from untrusted bytes, refusing anything over `max` bytes
/// and any repeated field over its cap before parsing, so that what prost
/// allocates is bounded by the caps, not by how many 2-byte entries fit in
/// `max` (see [`bounded`]).
pub fn decode_bounded<M: Message + Default + Bounded>(
    bytes: &[u8],
    max: usize,
) -> Result<M, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    bounded::check(bytes, M::schema())?;
    M::decode(bytes).map_err(|_| DecodeError::Malformed)
}

/// Decodes a *signed* structure: as [`decode_bounded`], and the bytes must be
/// exactly what encoding the decoded message gives back. Two parsers then
/// cannot read the same signed bytes differently (SECURITY.md §3.2).
pub fn decode_canonical<M: Message + Default + Bounded>(
    bytes: &[u8],
    max: usize,
) -> Result<M, DecodeError> {
    let msg: M = decode_bounded(bytes, max)?;
    if msg.encode_to_vec() != bytes {
        return Err(DecodeError::NonCanonical);
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::v1::*;
    use super::*;
    use proptest::prelude::*;

    fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    proptest! {
        #[test]
        fn envelope_round_trips(header in arb_bytes(200), ct in arb_bytes(2000), sig in arb_bytes(64)) {
            let e = Envelope { header, ciphertext: ct, signature: sig };
            let back: Envelope = decode_bounded(&e.encode_to_vec(), 1 << 20).unwrap();
            prop_assert_eq!(back, e);
        }

        #[test]
        fn header_round_trips(
            rid in arb_bytes(16), cid in arb_bytes(16), user in ".{0,40}", dev in arb_bytes(32),
            ts in any::<u64>(), ct in 0i32..3, nonce in arb_bytes(24),
            recips in proptest::collection::vec(".{0,20}", 0..5), commitment in arb_bytes(32),
        ) {
            let h = EnvelopeHeader {
                version: 1, resource_id: rid, conversation_id: cid, sender_user_id: user,
                sender_device_id: dev, timestamp_ms: ts, content_type: ct, nonce,
                recipient_user_ids: recips, key_commitment: commitment, room: None,
            };
            let back: EnvelopeHeader = decode_bounded(&h.encode_to_vec(), 1 << 20).unwrap();
            prop_assert_eq!(back, h);
        }

        #[test]
        fn relay_frames_round_trip(id in arb_bytes(16), payload in arb_bytes(500), seq in any::<u64>()) {
            let f = ServerFrame { frame: Some(server_frame::Frame::Deliver(Deliver {
                seq, message_id: id.clone(), sender_user_id: "u".into(), sender_device_id: id,
                payload, received_at_ms: seq,
            }))};
            let back: ServerFrame = decode_bounded(&f.encode_to_vec(), 1 << 20).unwrap();
            prop_assert_eq!(back, f);
        }

        #[test]
        fn statement_round_trips(user in ".{0,40}", seq in any::<u64>(), prev in arb_bytes(32), key in arb_bytes(32)) {
            let s = Statement {
                version: 2, user_id: user, seq, prev_hash: prev.clone(), timestamp: seq, author: key.clone(),
                body: Some(statement::Body::DeviceAddition(DeviceAddition {
                    device: Some(DeviceKeys { signing_public_key: key.clone(), encryption_public_key: key }),
                    device_signature: prev.clone(),
                })),
            };
            let back: Statement = decode_bounded(&s.encode_to_vec(), 1 << 20).unwrap();
            prop_assert_eq!(back, s);
        }

        #[test]
        fn garbage_never_panics(bytes in arb_bytes(512)) {
            let _ = decode_bounded::<KsRequest>(&bytes, 1 << 20);
            let _ = decode_bounded::<ClientFrame>(&bytes, 1 << 20);
            let _ = decode_bounded::<Envelope>(&bytes, 1 << 20);
        }
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let big = vec![0u8; 1025];
        assert_eq!(
            decode_bounded::<Envelope>(&big, 1024),
            Err(DecodeError::TooLarge {
                len: 1025,
                max: 1024
            })
        );
    }

    #[test]
    fn non_canonical_signed_bytes_are_refused() {
        let h = EnvelopeHeader {
            version: 1,
            sender_user_id: "a".into(),
            ..Default::default()
        };
        let bytes = h.encode_to_vec();
        assert_eq!(decode_canonical::<EnvelopeHeader>(&bytes, 1024), Ok(h));
        // An unknown field appended (field 99, varint 1): prost skips it.
        let mut extra = bytes.clone();
        extra.extend_from_slice(&[0x98, 0x06, 0x01]);
        assert!(decode_bounded::<EnvelopeHeader>(&extra, 1024).is_ok());
        assert_eq!(
            decode_canonical::<EnvelopeHeader>(&extra, 1024),
            Err(DecodeError::NonCanonical)
        );
        // A scalar field written twice: the last value wins in prost.
        let mut twice = bytes.clone();
        twice.extend_from_slice(&[0x08, 0x01]);
        assert_eq!(
            decode_canonical::<EnvelopeHeader>(&twice, 1024),
            Err(DecodeError::NonCanonical)
        );
    }

    /// SECURITY.md §3.1: a known field with the wrong wire type is refused,
    /// and of a oneof whose members alternate only the last member counts,
    /// its earlier occurrences (before another member) forgotten.
    #[test]
    fn wire_type_and_oneof_rules() {
        // Statement.seq (field 3, varint) written length-delimited.
        assert_eq!(
            decode_bounded::<Statement>(&[0x1a, 0x00], 1024),
            Err(DecodeError::Malformed)
        );
        // device_addition { device_signature: 01 }, device_revocation { device_id: 02 },
        // device_addition { device: {} }.
        let alternating = [
            0x5a, 0x03, 0x12, 0x01, 0x01, 0x62, 0x03, 0x0a, 0x01, 0x02, 0x5a, 0x02, 0x0a, 0x00,
        ];
        let st = decode_bounded::<Statement>(&alternating, 1024).unwrap();
        assert_eq!(
            st.body,
            Some(statement::Body::DeviceAddition(DeviceAddition {
                device: Some(DeviceKeys::default()),
                device_signature: Vec::new(),
            }))
        );
        // The same member twice in a row merges, as any repeated message field.
        let consecutive = [0x5a, 0x03, 0x12, 0x01, 0x01, 0x5a, 0x02, 0x0a, 0x00];
        let st = decode_bounded::<Statement>(&consecutive, 1024).unwrap();
        assert_eq!(
            st.body,
            Some(statement::Body::DeviceAddition(DeviceAddition {
                device: Some(DeviceKeys::default()),
                device_signature: vec![1],
            }))
        );
        // Neither is canonical, so no signed body can carry them.
        assert_eq!(
            decode_canonical::<Statement>(&alternating, 1024),
            Err(DecodeError::NonCanonical)
        );
    }

    #[test]
    fn truncated_input_is_malformed() {
        let e = Envelope {
            header: vec![1; 10],
            ciphertext: vec![2; 10],
            signature: vec![3; 64],
        };
        let bytes = e.encode_to_vec();
        assert_eq!(
            decode_bounded::<Envelope>(&bytes[..bytes.len() - 3], 1024),
            Err(DecodeError::Malformed)
        );
    }
}
