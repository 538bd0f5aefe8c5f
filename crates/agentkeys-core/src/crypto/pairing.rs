//! Pair codes (`ABCD-EFGH`) and the 6-digit OTP that the master compares before approving.
//!
//! Decision 71: a pair request gets a short code the master types (`agentkeys approve
//! ABCD-EFGH`) and an OTP derived from the request's nonce and canonical bytes, shown on both
//! sides, so the master can check they are approving the request the daemon actually made.
//!
//! Neither value is a secret on its own (the code is displayed, the OTP is a comparison aid);
//! what protects the session is that it is sealed to the daemon's key.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::random_array;

/// The pair-code alphabet: 31 symbols, digits 2–9 and upper-case letters without `I`, `L`
/// and `O`, so nothing can be misread (`0`/`O`, `1`/`I`/`L`). Eight symbols give
/// 31^8 ≈ 8.5 × 10^11 codes (≈ 39.6 bits).
pub const PAIR_CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";

/// Symbols in a pair code (shown as two groups of four).
const PAIR_CODE_SYMBOLS: usize = 8;
/// 31^8, the number of distinct pair codes.
const PAIR_CODE_SPACE: u64 = 31u64.pow(8);
/// Domain separation for the OTP MAC, so this HMAC can never collide with another use of the
/// same key.
const OTP_DOMAIN: &[u8] = b"agentkeys-otp-v1\0";

/// The pair code for an 8-byte seed: the seed read as a big-endian `u64`, reduced mod 31^8,
/// written as 8 base-31 digits (most significant first), shown `ABCD-EFGH`.
///
/// The reduction's bias is below 2^-24 (2^64 / 31^8 ≈ 2.2 × 10^7 full cycles), which is
/// irrelevant for a short-lived, single-use code.
pub fn pair_code_from_bytes(seed: &[u8; 8]) -> String {
    let mut n = u64::from_be_bytes(*seed) % PAIR_CODE_SPACE;
    let mut digits = [0u8; PAIR_CODE_SYMBOLS];
    for slot in digits.iter_mut().rev() {
        // `n % 31` < 31, so the index is always within the alphabet.
        *slot = PAIR_CODE_ALPHABET[(n % 31) as usize];
        n /= 31;
    }
    format_code(&digits)
}

/// A fresh random pair code.
///
/// # Panics
/// If the operating system's random number generator fails.
pub fn new_pair_code() -> String {
    pair_code_from_bytes(&random_array())
}

/// The canonical `ABCD-EFGH` form of what a human typed, or `None` if it is not a pair code.
///
/// Accepts lower case, a missing dash, and surrounding whitespace. Rejects everything else,
/// including look-alikes outside the alphabet (`0`, `1`, `I`, `L`, `O`): guessing what the
/// user meant would make two codes equivalent and shrink the code space silently.
pub fn normalize_pair_code(input: &str) -> Option<String> {
    let trimmed = input.trim().as_bytes();
    let compact: Vec<u8> = match trimmed.len() {
        8 => trimmed.to_vec(),
        9 if trimmed[4] == b'-' => [&trimmed[..4], &trimmed[5..]].concat(),
        _ => return None,
    };
    let mut digits = [0u8; PAIR_CODE_SYMBOLS];
    for (slot, &c) in digits.iter_mut().zip(&compact) {
        let c = c.to_ascii_uppercase();
        if !PAIR_CODE_ALPHABET.contains(&c) {
            return None;
        }
        *slot = c;
    }
    Some(format_code(&digits))
}

/// The 6-digit OTP for a request: `HMAC-SHA256(key = nonce, msg = "agentkeys-otp-v1\0" ||
/// canonical)`, RFC 4226 dynamic truncation, mod 10^6, zero-padded.
pub fn otp(nonce: &[u8], canonical: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(nonce).expect("invariant: HMAC accepts keys of any length");
    mac.update(OTP_DOMAIN);
    mac.update(canonical);
    let digest = mac.finalize().into_bytes();
    format!("{:06}", dynamic_truncate(&digest) % 1_000_000)
}

/// RFC 4226 §5.3 dynamic truncation: the low 4 bits of the last byte pick an offset, and the
/// 4 bytes there, big-endian with the top bit cleared, are the 31-bit result.
///
/// `mac` must be at least 20 bytes (HMAC-SHA-1 or longer), so `offset + 4 <= 19 < len`.
fn dynamic_truncate(mac: &[u8]) -> u32 {
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let word = [
        mac[offset],
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ];
    u32::from_be_bytes(word) & 0x7fff_ffff
}

fn format_code(digits: &[u8; PAIR_CODE_SYMBOLS]) -> String {
    let mut code = String::with_capacity(PAIR_CODE_SYMBOLS + 1);
    for (i, &d) in digits.iter().enumerate() {
        if i == 4 {
            code.push('-');
        }
        code.push(char::from(d));
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alphabet_has_31_unambiguous_unique_symbols() {
        assert_eq!(PAIR_CODE_ALPHABET.len(), 31);
        for bad in b"01ILO" {
            assert!(!PAIR_CODE_ALPHABET.contains(bad), "{}", char::from(*bad));
        }
        let mut sorted = PAIR_CODE_ALPHABET.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 31);
    }

    #[test]
    fn pair_codes_match_the_checked_in_vectors() {
        // Computed independently (a ten-line Python script, int.from_bytes(seed, "big") %
        // 31**8 in base 31) and pinned. The first four are checkable by hand: 0 → all "2"s,
        // 1 → last digit "3", 31^8 - 1 → all "Z"s, 31^8 wraps to 0.
        let cases: [([u8; 8], &str); 6] = [
            ([0; 8], "2222-2222"),
            ([0, 0, 0, 0, 0, 0, 0, 1], "2222-2223"),
            ((PAIR_CODE_SPACE - 1).to_be_bytes(), "ZZZZ-ZZZZ"),
            (PAIR_CODE_SPACE.to_be_bytes(), "2222-2222"),
            ([0xff; 8], "MD67-PA8H"),
            (*b"agentkey", "TP2K-V4B3"),
        ];
        for (seed, expected) in cases {
            assert_eq!(pair_code_from_bytes(&seed), expected, "seed {seed:?}");
        }
    }

    #[test]
    fn new_pair_codes_are_canonical_and_vary() {
        let a = new_pair_code();
        assert_eq!(normalize_pair_code(&a).as_deref(), Some(a.as_str()));
        // Two random codes collide with probability 1/31^8; ten draws all equal is impossible.
        let codes: Vec<String> = (0..10).map(|_| new_pair_code()).collect();
        assert!(codes.iter().any(|c| c != &codes[0]));
    }

    #[test]
    fn normalize_accepts_case_missing_dash_and_spaces() {
        for input in [
            "ABCD-EFGH",
            "abcd-efgh",
            "AbCd-eFgH",
            "ABCDEFGH",
            "abcdefgh",
            "  abcd-efgh\n",
            "\tABCDEFGH ",
        ] {
            assert_eq!(
                normalize_pair_code(input).as_deref(),
                Some("ABCD-EFGH"),
                "{input:?}"
            );
        }
    }

    #[test]
    fn normalize_rejects_anything_that_is_not_a_pair_code() {
        for input in [
            "",
            "ABCD-EFG",
            "ABCD-EFGHJ",
            "ABC-DEFGH",
            "ABCD--EFGH",
            "ABCD EFGH",
            "ABCD_EFGH",
            "ABCD-EFG0", // 0 is not in the alphabet (no mapping to O)
            "ABCD-EFG1",
            "ABCD-EFGI",
            "abcd-efgl",
            "ABCD-EFGO",
            "ABCD-EFGÉ",
            "ABCDÉFGH",
        ] {
            assert_eq!(normalize_pair_code(input), None, "{input:?}");
        }
    }

    #[test]
    fn dynamic_truncation_matches_the_rfc_4226_worked_example() {
        // RFC 4226 §5.4: HMAC-SHA-1 1f8698690e02ca16618550ef7f19da8e945b555a → offset 0xa,
        // 0x50ef7f19 = 1357872921 → 872921 for 6 digits.
        let mac = [
            0x1f, 0x86, 0x98, 0x69, 0x0e, 0x02, 0xca, 0x16, 0x61, 0x85, 0x50, 0xef, 0x7f, 0x19,
            0xda, 0x8e, 0x94, 0x5b, 0x55, 0x5a,
        ];
        assert_eq!(dynamic_truncate(&mac), 1_357_872_921);
        assert_eq!(dynamic_truncate(&mac) % 1_000_000, 872_921);
    }

    #[test]
    fn otps_match_the_checked_in_vectors() {
        // Computed independently with Python's hmac/hashlib (same construction) and pinned,
        // so the server, every client and any later refactor must agree bit for bit.
        let cases: [(&[u8], &[u8], &str); 4] = [
            (b"", b"", "533107"),
            (&[0u8; 32], b"pair\0v1", "633392"),
            (b"nonce-0123456789abcdef", b"{\"kind\":\"pair\"}", "796057"),
            (&[0xffu8; 16], &[0u8; 64], "969389"),
        ];
        for (nonce, canonical, expected) in cases {
            let code = otp(nonce, canonical);
            assert_eq!(code.len(), 6);
            assert_eq!(code, expected, "nonce {nonce:?} canonical {canonical:?}");
        }
    }

    #[test]
    fn the_worked_examples_of_docs_api_md_hold() {
        use agentkeys_types::api::{AuthKind, auth_request_canonical_bytes};
        // docs/api.md, "OTP": nonce a0..af, requester key 01..20, wallet 0x11…11.
        let nonce: Vec<u8> = (0xa0..=0xaf).collect();
        let key: Vec<u8> = (1..=32).collect();
        let wallet = format!("0x{}", "11".repeat(20));
        let cases = [
            (AuthKind::Pair, key.as_slice(), String::new(), "765779"),
            (
                AuthKind::Recover,
                key.as_slice(),
                format!("{wallet}/research-bot"),
                "183202",
            ),
            (
                AuthKind::HighValue,
                &[][..],
                format!("{wallet}/openai"),
                "248696",
            ),
        ];
        for (kind, k, subject, want) in cases {
            let canonical = auth_request_canonical_bytes(kind, k, &subject);
            assert_eq!(otp(&nonce, &canonical), want, "{kind:?}");
        }
    }

    #[test]
    fn otps_depend_on_both_the_nonce_and_the_canonical_bytes() {
        let base = otp(b"nonce", b"request");
        assert_ne!(otp(b"nonce2", b"request"), base);
        assert_ne!(otp(b"nonce", b"request2"), base);
        assert!(base.bytes().all(|b| b.is_ascii_digit()));
    }
}
