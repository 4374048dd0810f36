//! Signature checks over the raw body, before anything is parsed. Every comparison of secret
//! material is constant-time.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// What a delivery's headers say about how it is signed; checked against each repo's secret.
#[derive(Debug)]
pub enum Check<'a> {
    /// HMAC-SHA256 of `signed`, hex in the header (after `prefix`, if any).
    HmacHex {
        signature: &'a str,
        prefix: &'static str,
        signed: Cow<'a, [u8]>,
    },
    /// The secret itself, sent as a token (GitLab's `X-Gitlab-Token`).
    Token(&'a str),
    /// GitLab's two schemes: a `whsec_` secret is a signing token, checked against the Standard
    /// Webhooks signature; any other is the secret token, checked against `X-Gitlab-Token`.
    /// Chosen by the secret, never by which headers a delivery carries.
    TokenOrSigned {
        token: Option<&'a str>,
        signed: Option<Box<Check<'a>>>,
    },
    /// Standard Webhooks (GitLab's `webhook-signature`): HMAC-SHA256 of `id.timestamp.body`,
    /// base64, `v1,` prefixed, several allowed; the timestamp bounds replays.
    StandardWebhooks {
        id: &'a str,
        timestamp: &'a str,
        signatures: &'a str,
        body: &'a [u8],
    },
}

/// Why a signed delivery is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    BadSignature,
    StaleTimestamp,
}

impl Check<'_> {
    /// The delivery id the signature covers, when this secret checks a scheme that signs one
    /// (Standard Webhooks' `webhook-id`).
    pub fn signed_id(&self, secret: &[u8]) -> Option<&str> {
        match self {
            Check::StandardWebhooks { id, .. } => Some(id),
            Check::TokenOrSigned {
                signed: Some(signed),
                ..
            } if secret.starts_with(b"whsec_") => signed.signed_id(secret),
            _ => None,
        }
    }

    pub fn verify(&self, secret: &[u8], tolerance: Duration) -> Result<(), Mismatch> {
        let ok = match self {
            Check::HmacHex {
                signature,
                prefix,
                signed,
            } => {
                let Some(hex_digest) = signature.strip_prefix(prefix) else {
                    return Err(Mismatch::BadSignature);
                };
                // Lower-case only, as every host sends it: one signature, one spelling.
                if !hex_digest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(Mismatch::BadSignature);
                }
                let Ok(expected) = hex::decode(hex_digest) else {
                    return Err(Mismatch::BadSignature);
                };
                let mut mac =
                    HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
                mac.update(signed);
                mac.verify_slice(&expected).is_ok()
            }
            Check::Token(token) => same_secret(token.as_bytes(), secret),
            Check::TokenOrSigned { token, signed } => {
                return match (secret.starts_with(b"whsec_"), token, signed) {
                    (true, _, Some(signed)) => signed.verify(secret, tolerance),
                    (false, Some(token), _) => Check::Token(token).verify(secret, tolerance),
                    _ => Err(Mismatch::BadSignature),
                };
            }
            Check::StandardWebhooks {
                id,
                timestamp,
                signatures,
                body,
            } => {
                let Ok(sent) = timestamp.parse::<u64>() else {
                    return Err(Mismatch::BadSignature);
                };
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                if now.abs_diff(sent) > tolerance.as_secs() {
                    return Err(Mismatch::StaleTimestamp);
                }
                let key = standard_webhooks_key(secret);
                let mut mac =
                    HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length");
                mac.update(id.as_bytes());
                mac.update(b".");
                mac.update(timestamp.as_bytes());
                mac.update(b".");
                mac.update(body);
                let expected = mac.finalize().into_bytes();
                signatures
                    .split(' ')
                    .filter_map(|s| s.strip_prefix("v1,"))
                    .any(|b64| {
                        BASE64.decode(b64).is_ok_and(|sent| {
                            bool::from(sent.as_slice().ct_eq(expected.as_slice()))
                        })
                    })
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Mismatch::BadSignature)
        }
    }
}

/// Compares digests, not the bytes: a byte-wise compare of unequal lengths answers at once,
/// which would tell a caller the token's length.
fn same_secret(sent: &[u8], secret: &[u8]) -> bool {
    let digest = |b: &[u8]| Sha256::digest(b);
    bool::from(digest(sent).ct_eq(&digest(secret)))
}

/// Standard Webhooks secrets are `whsec_` + base64 of the key; anything else is the key.
fn standard_webhooks_key(secret: &[u8]) -> Vec<u8> {
    secret
        .strip_prefix(b"whsec_")
        .and_then(|b64| BASE64.decode(b64).ok())
        .unwrap_or_else(|| secret.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn hex_check<'a>(signature: &'a str, prefix: &'static str, body: &[u8]) -> Check<'a> {
        Check::HmacHex {
            signature,
            prefix,
            signed: Cow::Owned(body.to_vec()),
        }
    }

    /// docs.github.com, "Validating webhook deliveries", "Testing the webhook payload validation".
    #[test]
    fn github_documented_vector() {
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let secret = b"It's a Secret to Everybody";
        assert_eq!(
            hex_check(header, "sha256=", b"Hello, World!").verify(secret, DAY),
            Ok(())
        );
        assert!(
            hex_check(header, "sha256=", b"Hello, World?")
                .verify(secret, DAY)
                .is_err()
        );
        assert!(
            hex_check(header, "sha256=", b"Hello, World!")
                .verify(b"another secret", DAY)
                .is_err()
        );
    }

    /// octokit/webhooks-methods.js: uppercase hex and a missing prefix are refused.
    #[test]
    fn octokit_vector_and_malformed_headers() {
        let hex = "4864d2759938a15468b5df9ade20bf161da9b4f737ea61794142f3484236bda3";
        let body = br#"{"foo":"bar"}"#;
        assert!(
            hex_check(&format!("sha256={hex}"), "sha256=", body)
                .verify(b"mysecret", DAY)
                .is_ok()
        );
        assert!(
            hex_check(hex, "sha256=", body)
                .verify(b"mysecret", DAY)
                .is_err()
        );
        assert!(
            hex_check("sha256=", "sha256=", body)
                .verify(b"mysecret", DAY)
                .is_err()
        );
        assert!(
            hex_check("sha256=zz", "sha256=", body)
                .verify(b"mysecret", DAY)
                .is_err()
        );
    }

    /// standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py.
    #[test]
    fn standard_webhooks_vector_and_timestamp_tolerance() {
        let check = Check::StandardWebhooks {
            id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
            timestamp: "1614265330",
            signatures: "v1,bm90IGl0 v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            body: br#"{"test": 2432232314}"#,
        };
        let secret = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert_eq!(
            check.verify(secret, Duration::from_secs(300)),
            Err(Mismatch::StaleTimestamp)
        );
        assert_eq!(
            check.verify(secret, Duration::from_secs(100 * 365 * 86_400)),
            Ok(())
        );
        assert_eq!(
            check.verify(b"whsec_b3RoZXI=", Duration::from_secs(100 * 365 * 86_400)),
            Err(Mismatch::BadSignature)
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(Check::Token("s3cret").verify(b"s3cret", DAY).is_ok());
        assert!(Check::Token("s3cre").verify(b"s3cret", DAY).is_err());
        assert!(Check::Token("s3cret!").verify(b"s3cret", DAY).is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;

    fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn flip(bytes: &[u8], at: Index, with: u8) -> Vec<u8> {
        let mut changed = bytes.to_vec();
        let i = at.index(changed.len());
        changed[i] ^= with;
        changed
    }

    proptest! {
        /// Any single-byte change to the body or to the signature header is refused.
        #[test]
        fn hmac_refuses_any_single_byte_change(
            secret in proptest::collection::vec(any::<u8>(), 1..64),
            body in proptest::collection::vec(any::<u8>(), 1..512),
            at in any::<Index>(),
            with in 1u8..=255,
            prefixed in any::<bool>(),
        ) {
            let prefix = if prefixed { "sha256=" } else { "" };
            let signature = format!("{prefix}{}", hmac_hex(&secret, &body));
            let ok = Check::HmacHex { signature: &signature, prefix, signed: Cow::Borrowed(&body) };
            prop_assert_eq!(ok.verify(&secret, Duration::ZERO), Ok(()));
            let changed_body = Check::HmacHex { signature: &signature, prefix, signed: Cow::Owned(flip(&body, at, with)) };
            prop_assert_eq!(changed_body.verify(&secret, Duration::ZERO), Err(Mismatch::BadSignature));
            if let Ok(changed) = String::from_utf8(flip(signature.as_bytes(), at, with)) {
                let changed_signature = Check::HmacHex { signature: &changed, prefix, signed: Cow::Borrowed(&body) };
                prop_assert_eq!(changed_signature.verify(&secret, Duration::ZERO), Err(Mismatch::BadSignature));
            }
        }

        #[test]
        fn standard_webhooks_and_tokens_refuse_any_single_byte_change(
            key in proptest::collection::vec(any::<u8>(), 16..33),
            body in proptest::collection::vec(any::<u8>(), 1..256),
            at in any::<Index>(),
            with in 1u8..=255,
        ) {
            let secret = format!("whsec_{}", BASE64.encode(&key));
            let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
            let mut mac = HmacSha256::new_from_slice(&key).unwrap();
            mac.update(format!("msg_1.{timestamp}.").as_bytes());
            mac.update(&body);
            let signatures = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
            let check = |signatures: &str, body: &[u8]| {
                Check::StandardWebhooks { id: "msg_1", timestamp: &timestamp, signatures, body }
                    .verify(secret.as_bytes(), Duration::from_secs(300))
            };
            prop_assert_eq!(check(&signatures, &body), Ok(()));
            prop_assert_eq!(check(&signatures, &flip(&body, at, with)), Err(Mismatch::BadSignature));
            if let Ok(changed) = String::from_utf8(flip(signatures.as_bytes(), at, with)) {
                prop_assert!(check(&changed, &body).is_err());
            }
            if let Ok(changed) = String::from_utf8(flip(secret.as_bytes(), at, with)) {
                prop_assert!(Check::Token(&changed).verify(secret.as_bytes(), Duration::ZERO).is_err());
            }
        }
    }
}
