//! Base64 of bytes that hold one long constant (the executor script, escaped into JSON, is ~17 KB
//! of every ~19 KB patch), with the constant's part encoded once per process instead of once per
//! answer.
//!
//! Base64 turns each group of three bytes into four characters on its own, so the encoding of a
//! constant inside other bytes only depends on where its first byte falls in its group: the
//! position modulo 3. [`PreEncoded`] keeps the three encodings (each starting at the first whole
//! group of the constant) and [`PreEncoded::encode`] joins them with the few groups that straddle
//! the constant's edges. The result is byte for byte the plain encoding (unit-tested for every
//! alignment).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A constant and its base64 for each of the three alignments.
pub struct PreEncoded {
    constant: &'static [u8],
    /// For a constant whose first byte is the last `skip` bytes of a group (`skip` = index):
    /// the base64 of `constant[skip..skip + 3k]` (whole groups), and the 0–2 bytes after them.
    aligned: [(Vec<u8>, &'static [u8]); 3],
}

impl PreEncoded {
    /// Encodes `constant` for the three alignments.
    pub fn new(constant: &'static [u8]) -> Self {
        let aligned = [0, 1, 2].map(|skip: usize| {
            let skip = skip.min(constant.len());
            let rest = &constant[skip..];
            let whole = rest.len() - rest.len() % 3;
            let mut encoded = Vec::new();
            push(&mut encoded, &rest[..whole]);
            (encoded, &rest[whole..])
        });
        Self { constant, aligned }
    }

    /// Appends the base64 (padded, as `STANDARD.encode`) of `bytes` to `out`, where the
    /// constant is expected at `bytes[at..]`; if it is not there, `bytes` is encoded plainly.
    pub fn encode(&self, bytes: &[u8], at: usize, out: &mut Vec<u8>) {
        let end = at.saturating_add(self.constant.len());
        let here = bytes.get(at..end);
        if !here.is_some_and(|here| kosmos_api::bytes::equal(here, self.constant)) {
            push(out, bytes);
            return;
        }
        out.reserve(base64::encoded_len(bytes.len(), true).unwrap_or_default());
        // The prefix up to its last whole group, then the group the constant starts in.
        let whole = at - at % 3;
        push(out, &bytes[..whole]);
        let skip = (3 - at % 3) % 3;
        let skip = skip.min(self.constant.len());
        let mut group = [0u8; 3];
        let straddle = at - whole + skip;
        if straddle > 0 {
            group[..at - whole].copy_from_slice(&bytes[whole..at]);
            group[at - whole..straddle].copy_from_slice(&self.constant[..skip]);
            if straddle < 3 {
                // A constant shorter than the gap to the next group boundary: nothing was
                // pre-encoded for it; the rest is plain.
                push(out, &bytes[whole..]);
                return;
            }
            push(out, &group);
        }
        let (encoded, tail) = &self.aligned[skip];
        out.extend_from_slice(encoded);
        // The constant's last 0–2 bytes and the suffix.
        let suffix = &bytes[end..];
        if tail.is_empty() {
            push(out, suffix);
            return;
        }
        let fill = 3 - tail.len();
        if suffix.len() < fill {
            let mut last = tail.to_vec();
            last.extend_from_slice(suffix);
            push(out, &last);
            return;
        }
        group[..tail.len()].copy_from_slice(tail);
        group[tail.len()..].copy_from_slice(&suffix[..fill]);
        push(out, &group);
        push(out, &suffix[fill..]);
    }
}

/// Appends the padded base64 of `bytes` to `out`.
pub fn push(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    let len = base64::encoded_len(bytes.len(), true).unwrap_or_default();
    out.resize(start + len, 0);
    // The slice is exactly as long as the encoding, so this cannot fail.
    let written = STANDARD.encode_slice(bytes, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(bytes: &[u8]) -> Vec<u8> {
        STANDARD.encode(bytes).into_bytes()
    }

    fn spliced(constant: &'static [u8], prefix: &[u8], suffix: &[u8]) -> Vec<u8> {
        let bytes = [prefix, constant, suffix].concat();
        let mut out = b"kept:".to_vec();
        PreEncoded::new(constant).encode(&bytes, prefix.len(), &mut out);
        assert!(out.starts_with(b"kept:"), "what was in `out` stays");
        out.split_off(5)
    }

    #[test]
    fn equals_plain_base64_for_every_alignment_and_length() {
        let filler: Vec<u8> = (0..=255u8).cycle().take(40).collect();
        let constants: Vec<&'static [u8]> = (0..12)
            .map(|n| &*Vec::leak((100..100 + n).map(|b| b as u8).collect()))
            .chain([crate::mutation::EXECUTOR_SCRIPT.as_bytes()])
            .collect();
        for constant in constants {
            for before in 0..8 {
                for after in 0..8 {
                    let (prefix, suffix) = (&filler[..before], &filler[40 - after..]);
                    let bytes = [prefix, constant, suffix].concat();
                    assert_eq!(
                        spliced(constant, prefix, suffix),
                        plain(&bytes),
                        "constant of {} bytes after {before} bytes and before {after}",
                        constant.len()
                    );
                }
            }
        }
    }

    #[test]
    fn bytes_without_the_constant_are_encoded_plainly() {
        let encoder = PreEncoded::new(b"constant");
        for (bytes, at) in [
            (&b"no constant here"[..], 3),
            (b"constan", 0),
            (b"xxconstant", 3),
            (b"", 0),
            (b"constant", usize::MAX),
        ] {
            let mut out = Vec::new();
            encoder.encode(bytes, at, &mut out);
            assert_eq!(out, plain(bytes), "{bytes:?} at {at}");
        }
    }
}
