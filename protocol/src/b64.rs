//! Payload base64 (standard alphabet, padded), with SIMD where the CPU has
//! it: a payload is encoded or decoded on every publish and delivery, and
//! the scalar codec was the largest single cost of a publish in profiles.

/// Appends the base64 of `raw` to `out`.
pub fn encode_append(raw: &[u8], out: &mut Vec<u8>) {
    base64_simd::STANDARD.encode_append(raw, out);
}

/// The base64 of `raw`.
pub fn encode(raw: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(raw)
}

/// The bytes `text` encodes; `None` unless it is canonical padded base64.
pub fn decode(text: &[u8]) -> Option<Vec<u8>> {
    base64_simd::STANDARD.decode_to_vec(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// The same answers as the scalar `base64` crate: every length, and the
    /// malformed inputs it refuses (missing padding, trailing bits set,
    /// bad characters, whitespace).
    #[test]
    fn agrees_with_the_scalar_codec() {
        let scalar = base64::engine::general_purpose::STANDARD;
        for n in 0..200usize {
            let raw: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let text = encode(&raw);
            assert_eq!(text, scalar.encode(&raw));
            let mut appended = b"x".to_vec();
            encode_append(&raw, &mut appended);
            assert_eq!(&appended[1..], text.as_bytes());
            assert_eq!(decode(text.as_bytes()), Some(raw));
        }
        for bad in ["QQ", "QR==", "QUJ=", "Q===", "QUJD\n", " QUJD", "QU*D", "QUJDR", "=QUJ", "QUJD===="] {
            assert_eq!(decode(bad.as_bytes()), None, "{bad:?}");
            assert!(scalar.decode(bad).is_err(), "{bad:?}");
        }
    }
}
