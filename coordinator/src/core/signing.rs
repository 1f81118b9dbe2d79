//! Signed download URLs: the SDK fetches exported adapter files with plain `urllib` and no API
//! key, so the URL itself carries the authority: an expiry and an HMAC-SHA256 over
//! (path, expiry) under the coordinator's secret. Pure functions; the caller supplies `now`.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a signed URL was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("download URL expired; ask for new URLs (external_weights_urls)")]
    Expired,
    #[error("download URL signature is invalid")]
    Invalid,
}

fn mac(secret: &[u8], path: &str, expires_ms: u64) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(path.as_bytes());
    m.update(b"\n");
    m.update(expires_ms.to_string().as_bytes());
    m
}

/// The signature (URL-safe base64) of `path` valid until `expires_ms`.
pub fn sign(secret: &[u8], path: &str, expires_ms: u64) -> String {
    assert!(!secret.is_empty(), "a signing secret must not be empty");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac(secret, path, expires_ms).finalize().into_bytes())
}

/// Checks a signature made by [`sign`] (in constant time) and that it has not expired.
pub fn verify(secret: &[u8], path: &str, expires_ms: u64, signature: &str, now_ms: u64) -> Result<(), SignatureError> {
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).map_err(|_| SignatureError::Invalid)?;
    mac(secret, path, expires_ms).verify_slice(&bytes).map_err(|_| SignatureError::Invalid)?;
    if now_ms >= expires_ms {
        return Err(SignatureError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signature_verifies_until_it_expires() {
        let sig = sign(SECRET, "run/external_weights/x/adapter_config.json", 10_000);
        assert_eq!(verify(SECRET, "run/external_weights/x/adapter_config.json", 10_000, &sig, 9_999), Ok(()));
        assert_eq!(
            verify(SECRET, "run/external_weights/x/adapter_config.json", 10_000, &sig, 10_000),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn changing_the_path_the_expiry_or_the_secret_invalidates_it() {
        let sig = sign(SECRET, "a/b", 10_000);
        assert_eq!(verify(SECRET, "a/c", 10_000, &sig, 0), Err(SignatureError::Invalid));
        assert_eq!(verify(SECRET, "a/b", 20_000, &sig, 0), Err(SignatureError::Invalid));
        assert_eq!(verify(b"another secret", "a/b", 10_000, &sig, 0), Err(SignatureError::Invalid));
        assert_eq!(verify(SECRET, "a/b", 10_000, "not base64!", 0), Err(SignatureError::Invalid));
    }
}
