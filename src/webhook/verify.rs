//! Signature checks over the raw body, before anything is parsed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Checks `sha256=<hex>` (GitHub's `X-Hub-Signature-256`) against HMAC-SHA256 of `body`.
/// The comparison is constant-time (`Mac::verify_slice`).
pub fn sha256_prefixed(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_digest) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_digest) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs.github.com, "Validating webhook deliveries", "Testing the webhook payload validation".
    #[test]
    fn github_documented_vector() {
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(sha256_prefixed(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            header
        ));
        assert!(!sha256_prefixed(
            b"It's a Secret to Everybody",
            b"Hello, World?",
            header
        ));
        assert!(!sha256_prefixed(
            b"another secret",
            b"Hello, World!",
            header
        ));
    }

    /// octokit/webhooks-methods.js test vector: uppercase hex and a missing prefix are refused.
    #[test]
    fn octokit_vector_and_malformed_headers() {
        let hex = "4864d2759938a15468b5df9ade20bf161da9b4f737ea61794142f3484236bda3";
        assert!(sha256_prefixed(
            b"mysecret",
            br#"{"foo":"bar"}"#,
            &format!("sha256={hex}")
        ));
        assert!(!sha256_prefixed(b"mysecret", br#"{"foo":"bar"}"#, hex));
        assert!(!sha256_prefixed(
            b"mysecret",
            br#"{"foo":"bar"}"#,
            "sha256="
        ));
        assert!(!sha256_prefixed(
            b"mysecret",
            br#"{"foo":"bar"}"#,
            "sha256=zz"
        ));
    }
}
