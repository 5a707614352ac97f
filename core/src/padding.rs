//! Length hiding for sealed content (SECURITY.md §7.2).
//!
//! `pad(content) = content || 0x00 * (P - 4 - len) || u32_be(len(content))`
//! with `P = max(256, padme(4 + len))`. The length comes last (v2) so that a
//! receiver decrypting in place finds the content at offset 0 and only
//! truncates: no 10 MiB shift. PADME (Nikitin et al., "Reducing
//! Metadata Leakage from Encrypted Files and Communication with PURBs", 2019)
//! leaks O(log log L) bits of the length with at most 12% overhead; the
//! 256-byte floor makes every short text (most clinical messages) the same
//! size.

#[cfg(test)]
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

/// Appends `pad(content)` to `out`: the seal writes it straight into the
/// envelope buffer and encrypts it there. The caller bounds `content` well
/// below 4 GiB.
pub(crate) fn pad_into(out: &mut Vec<u8>, content: &[u8]) {
    let start = out.len();
    out.extend_from_slice(content);
    out.resize(start + padded_len(content.len()) - 4, 0);
    out.extend_from_slice(&(content.len() as u32).to_be_bytes());
}

/// `pad(content)` in a buffer of its own.
#[cfg(test)]
pub(crate) fn pad(content: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(padded_len(content.len())));
    pad_into(&mut out, content);
    out
}

/// Checks padding, returning the content length (the content is
/// `padded[..len]`). Rejects a length that overruns, a total length other
/// than `padded_len`, and non-zero padding.
pub(crate) fn unpad(padded: &[u8]) -> Option<usize> {
    let split = padded.len().checked_sub(4)?;
    let suffix: [u8; 4] = padded.get(split..)?.try_into().ok()?;
    let len = u32::from_be_bytes(suffix) as usize;
    if len > split || padded.len() != padded_len(len) {
        return None;
    }
    if padded[len..split].iter().any(|&b| b != 0) {
        return None;
    }
    Some(len)
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
        assert_eq!(&p[..5], b"hello");
        assert_eq!(&p[252..], &[0, 0, 0, 5]);
        assert_eq!(unpad(&p), Some(5));
        p[100] = 1;
        assert_eq!(unpad(&p), None);
        let mut long = pad(b"hello").to_vec();
        long.insert(0, 0);
        assert_eq!(unpad(&long), None);
        let mut overrun = pad(b"hello").to_vec();
        overrun[252..].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(unpad(&overrun), None);
        // A length that claims the suffix itself.
        let mut into_suffix = pad(b"hello").to_vec();
        into_suffix[252..].copy_from_slice(&253u32.to_be_bytes());
        assert_eq!(unpad(&into_suffix), None);
        assert_eq!(unpad(&[0, 0]), None);
    }

    proptest! {
        #[test]
        fn pad_round_trips(content in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let p = pad(&content);
            prop_assert_eq!(p.len(), padded_len(content.len()));
            prop_assert!(p.len() as f64 <= (content.len() + 4) as f64 * 1.12 + MIN_PADDED_LEN as f64);
            let n = unpad(&p).unwrap();
            prop_assert_eq!(&p[..n], &content[..]);
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
