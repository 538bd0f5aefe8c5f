//! Placeholders: what the agent gets instead of a credential. Random per run, worthless
//! outside the run's proxy, and shaped like the real key where the key has a recognisable
//! shape, so SDKs that check a key's prefix or length accept it.

use agentkeys_core::crypto::random_array;

/// Fewest random characters a placeholder carries (≥ 128 bits for hex, ≥ 142 otherwise).
const MIN_RANDOM: usize = 32;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";

/// The kind prefixes a placeholder keeps: the fixed, documented part each vendor puts in
/// front of its keys (docs/daemon.md lists them). Nothing else of a key is ever copied: a
/// rule such as "letters up to a `-` or `_`" copied up to 16 characters of the key itself
/// whenever its random body happened to start that way (about one key in eight).
pub const KIND_PREFIXES: &[&str] = &[
    // OpenAI (project, service account, admin; legacy and OpenAI-compatible `sk-`)
    "sk-proj-",
    "sk-svcacct-",
    "sk-admin-",
    // Anthropic
    "sk-ant-api03-",
    "sk-ant-admin01-",
    "sk-ant-",
    // OpenRouter
    "sk-or-v1-",
    "sk-",
    // GitHub
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    // Slack
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxe-",
    "xapp-",
    // Stripe
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "rk_test_",
    "pk_live_",
    "pk_test_",
    "whsec_",
    // Google AI / Cloud API keys
    "AIza",
    // Hugging Face
    "hf_",
    // GitLab
    "glpat-",
    // npm, PyPI
    "npm_",
    "pypi-",
    // Groq, xAI, Perplexity, Replicate, Tavily, Fireworks
    "gsk_",
    "xai-",
    "pplx-",
    "r8_",
    "tvly-",
    "fw_",
    // Docker Hub, Figma, Linear, Notion, Shopify, Sentry, DigitalOcean, Postman
    "dckr_pat_",
    "figd_",
    "lin_api_",
    "ntn_",
    "secret_",
    "shpat_",
    "sntrys_",
    "dop_v1_",
    "PMAK-",
    // SendGrid
    "SG.",
];

/// The documented kind prefix `key` starts with (the longest that fits, and only if the
/// key goes on past it), or nothing.
pub fn kind_prefix(key: &[u8]) -> &[u8] {
    KIND_PREFIXES
        .iter()
        .map(|p| p.as_bytes())
        .filter(|p| key.len() > p.len() && key.starts_with(p))
        .max_by_key(|p| p.len())
        .unwrap_or(&[])
}

/// A fresh placeholder for `key`: its documented kind prefix ([`KIND_PREFIXES`]), then
/// random characters from the key's own alphabet (lower-case hex, or letters and digits)
/// up to the key's length, and at least 32 of them. The first random character differs
/// from the key's character at that place, so the placeholder shares with its key exactly
/// the kind prefix and nothing more. A key that is not printable ASCII gets
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
    // The one character the first random one may not be (none for a generic placeholder).
    let avoid = printable.then(|| key.get(prefix.len()).copied()).flatten();
    let mut out = String::with_capacity(len);
    out.push_str(std::str::from_utf8(prefix).unwrap_or(""));
    while out.len() < len {
        // Rejection sampling keeps every character equally likely.
        for b in random_array::<64>() {
            let limit = 256 - 256 % alphabet.len();
            if usize::from(b) < limit && out.len() < len {
                let c = alphabet[usize::from(b) % alphabet.len()];
                if out.len() == prefix.len() && Some(c) == avoid {
                    continue;
                }
                out.push(char::from(c));
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
                "sk-ant-api03-",
            ),
            ("glpat-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "glpat-"),
            ("sk_test_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "sk_test_"),
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

    /// The length of what `a` and `b` start with alike.
    fn shared(a: &[u8], b: &[u8]) -> usize {
        a.iter().zip(b).take_while(|(x, y)| x == y).count()
    }

    #[test]
    fn no_placeholder_shares_more_than_its_documented_prefix_with_its_key() {
        const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut longest = 0;
        for i in 0..20_000usize {
            let r = random_array::<96>();
            // Random base64url bodies (a run of letters then `-` or `_` is common there),
            // half of them behind a documented prefix.
            let len = 20 + usize::from(r[0]) % 60;
            let body: Vec<u8> = r[1..=len]
                .iter()
                .map(|b| B64URL[usize::from(*b) % 64])
                .collect();
            let prefix = if i % 2 == 0 {
                KIND_PREFIXES[usize::from(r[95]) % KIND_PREFIXES.len()]
            } else {
                ""
            };
            let key = [prefix.as_bytes(), &body].concat();
            let documented = kind_prefix(&key);
            assert!(
                documented.is_empty() || KIND_PREFIXES.iter().any(|p| p.as_bytes() == documented),
                "{}",
                String::from_utf8_lossy(&key)
            );
            let p = for_key(&key);
            assert!(p.as_bytes().starts_with(documented));
            let same = shared(p.as_bytes(), &key);
            assert_eq!(
                same,
                documented.len(),
                "{} → {p}",
                String::from_utf8_lossy(&key)
            );
            longest = longest.max(same);
        }
        assert!(
            longest >= "sk-ant-api03-".len(),
            "the prefixes were exercised"
        );
    }
}
