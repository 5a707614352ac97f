//! Length hiding for sealed content (SECURITY.md §7.2).
//!
//! `pad(content) = u32_be(len(content)) || content || 0x00 * (P - 4 - len)`
//! with `P = max(256, padme(4 + len))`. PADME (Nikitin et al., "Reducing
//! Metadata Leakage from Encrypted Files and Communication with PURBs", 2019)
//! leaks O(log log L) bits of the length with at most 12% overhead; the
//! 256-byte floor makes every short text (most clinical messages) the same
//! size.

use zeroize::Zeroizing;

/// Every padded plaintext is at least this long.
pub const MIN_PADDED_LEN: usize = 256;

/// PADME: round `len` up so that only its top O(log log len) bits may be non-zero.
pub fn padme(len: usize) -> usize {
    if len < 2 {
        return len;
    }
    let e = usize::BITS - 1 - len.leading_zeros(); // floor(log2 len)
    let s = u32::BITS - e.leading_zeros(); // floor(log2 e) + 1
    let last_bits = e - s;
    let mask = (1usize << last_bits) - 1;
    (len + mask) & !mask
}

/// The padded length for `content_len` bytes of content.
pub fn padded_len(content_len: usize) -> usize {
    padme(4 + content_len).max(MIN_PADDED_LEN)
}

/// Pads `content`. The caller bounds its length well below 4 GiB.
pub(crate) fn pad(content: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(padded_len(content.len()) + 16));
    out.extend_from_slice(&(content.len() as u32).to_be_bytes());
    out.extend_from_slice(content);
    out.resize(padded_len(content.len()), 0);
    out
}

/// Strips padding, returning the content range. Rejects a length prefix that
/// overruns, a total length other than `padded_len`, and non-zero padding.
pub(crate) fn unpad(padded: &[u8]) -> Option<core::ops::Range<usize>> {
    let prefix: [u8; 4] = padded.get(..4)?.try_into().ok()?;
    let len = u32::from_be_bytes(prefix) as usize;
    let end = 4usize.checked_add(len)?;
    if padded.len() != padded_len(len) || end > padded.len() {
        return None;
    }
    if padded[end..].iter().any(|&b| b != 0) {
        return None;
    }
    Some(4..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn padme_matches_the_paper() {
        // Values from the PURBs paper's definition, computed by hand.
        assert_eq!(padme(0), 0);
        assert_eq!(padme(1), 1);
        assert_eq!(padme(9), 10);
        assert_eq!(padme(100), 104);
        assert_eq!(padme(1000), 1024);
        assert_eq!(padme(1025), 1088);
        assert_eq!(padme(1_000_000), 1_015_808);
    }

    #[test]
    fn short_texts_all_pad_to_the_floor() {
        assert_eq!(pad(b"").len(), MIN_PADDED_LEN);
        assert_eq!(pad(b"BP 120/80, see you at 9").len(), MIN_PADDED_LEN);
        assert_eq!(pad(&[1u8; 252]).len(), MIN_PADDED_LEN);
        assert!(pad(&[1u8; 253]).len() > MIN_PADDED_LEN);
    }

    #[test]
    fn tampered_padding_is_rejected() {
        let mut p = pad(b"hello").to_vec();
        assert_eq!(unpad(&p), Some(4..9));
        p[100] = 1;
        assert_eq!(unpad(&p), None);
        let mut long = pad(b"hello").to_vec();
        long.push(0);
        assert_eq!(unpad(&long), None);
        let mut overrun = pad(b"hello").to_vec();
        overrun[..4].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(unpad(&overrun), None);
        assert_eq!(unpad(&[0, 0]), None);
    }

    proptest! {
        #[test]
        fn pad_round_trips(content in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let p = pad(&content);
            prop_assert_eq!(p.len(), padded_len(content.len()));
            prop_assert!(p.len() as f64 <= (content.len() + 4) as f64 * 1.12 + MIN_PADDED_LEN as f64);
            let r = unpad(&p).unwrap();
            prop_assert_eq!(&p[r], &content[..]);
        }

        #[test]
        fn padme_is_monotonic_and_bounded(len in 2usize..(1 << 40)) {
            let p = padme(len);
            prop_assert!(p >= len);
            prop_assert!(padme(len + 1) >= p);
            prop_assert!((p - len) as f64 <= len as f64 * 0.12 + 1.0);
        }
    }
}
