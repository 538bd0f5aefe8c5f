//! Placeholders: what the agent gets instead of a credential. Random per run, worthless
//! outside the run's proxy, and shaped like the real key where the key has a recognisable
//! shape, so SDKs that check a key's prefix or length accept it.

use agentkeys_core::crypto::random_array;

/// Fewest random characters a placeholder carries (≥ 128 bits for hex, ≥ 142 otherwise).
const MIN_RANDOM: usize = 32;
/// Longest prefix copied from the real key.
const MAX_PREFIX: usize = 16;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";

/// The prefix of a key that names its kind and says nothing secret: whole segments of
/// letters each followed by `-` or `_` (`sk-proj-`, `ghp_`, `github_pat_`, `xoxb-`,
/// `sk_live_`), or Google's fixed `AIza`. A segment with a digit ends it: those carry
/// account or key ids.
fn kind_prefix(key: &[u8]) -> &[u8] {
    if key.starts_with(b"AIza") {
        return &key[..4];
    }
    let mut end = 0;
    let mut at = 0;
    while at < key.len() && at < MAX_PREFIX {
        let seg_len = key[at..]
            .iter()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let sep = at + seg_len;
        if seg_len == 0 || sep >= key.len() || sep >= MAX_PREFIX || !matches!(key[sep], b'-' | b'_')
        {
            break;
        }
        end = sep + 1;
        at = end;
    }
    &key[..end]
}

/// A fresh placeholder for `key`: its kind prefix, then random characters from the key's
/// own alphabet (lower-case hex, or letters and digits) up to the key's length, and at
/// least 32 of them. A key that is not printable ASCII gets
/// `agentkeys-placeholder-` and random letters and digits.
pub fn for_key(key: &[u8]) -> String {
    let printable = !key.is_empty() && key.iter().all(|b| b.is_ascii_graphic());
    let (prefix, alphabet, len) = if printable {
        let prefix = kind_prefix(key);
        let body = &key[prefix.len()..];
        let hex = !body.is_empty() && body.iter().all(|b| HEX.contains(b));
        let alphabet = if hex { HEX } else { ALNUM };
        (prefix, alphabet, key.len().max(prefix.len() + MIN_RANDOM))
    } else {
        (&b"agentkeys-placeholder-"[..], ALNUM, 22 + MIN_RANDOM)
    };
    let mut out = String::with_capacity(len);
    out.push_str(std::str::from_utf8(prefix).unwrap_or(""));
    while out.len() < len {
        // Rejection sampling keeps every character equally likely.
        for b in random_array::<64>() {
            let limit = 256 - 256 % alphabet.len();
            if usize::from(b) < limit && out.len() < len {
                out.push(char::from(alphabet[usize::from(b) % alphabet.len()]));
            }
        }
    }
    out
}

/// A per-run secret for the proxy's `Proxy-Authorization`: 32 letters and digits.
pub fn token() -> String {
    for_key(b"")
        .trim_start_matches("agentkeys-placeholder-")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_shape_keeps_its_prefix_and_length_and_nothing_else() {
        for (key, prefix) in [
            (
                "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7dEf0hIj3kLm6nOp9q",
                "sk-proj-",
            ),
            ("ghp_16C7e42F292c6912E7710c838347Ae178B4a", "ghp_"),
            (
                "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
                "github_pat_",
            ),
            (
                "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
                "xoxb-",
            ),
            (
                "sk_live_51HxYzAbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
                "sk_live_",
            ),
            (
                "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH",
                "sk-ant-",
            ),
            ("AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW", "AIza"),
            ("hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345", "hf_"),
        ] {
            let p = for_key(key.as_bytes());
            assert!(p.starts_with(prefix), "{key} → {p}");
            assert_eq!(p.len(), key.len(), "{key} → {p}");
            assert_ne!(p, key);
            let body = &p[prefix.len()..];
            assert!(body.bytes().all(|b| ALNUM.contains(&b)), "{p}");
            // Nothing of the key past its kind survives.
            assert!(!p.contains(&key[prefix.len()..prefix.len() + 8]), "{p}");
        }
    }

    #[test]
    fn hex_keys_get_hex_and_short_keys_get_enough_randomness() {
        let hex_key = "0123456789abcdef0123456789abcdef0123456789abcdef";
        let p = for_key(hex_key.as_bytes());
        assert_eq!(p.len(), hex_key.len());
        assert!(p.bytes().all(|b| HEX.contains(&b)));
        let p = for_key(b"short");
        assert_eq!(p.len(), MIN_RANDOM);
        let p = for_key(b"k\x00\xff binary");
        assert!(p.starts_with("agentkeys-placeholder-") && p.len() == 22 + MIN_RANDOM);
    }

    #[test]
    fn placeholders_are_fresh_every_time() {
        let key = b"sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z";
        assert_ne!(for_key(key), for_key(key));
        let t = token();
        assert_eq!(t.len(), MIN_RANDOM);
        assert_ne!(t, token());
    }
}
