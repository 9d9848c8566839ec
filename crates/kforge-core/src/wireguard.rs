//! WireGuard keys: 32-byte X25519, base64 (44 characters), as `wg genkey`/`wg pubkey`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};
use zeroize::Zeroizing;

use crate::random::random_bytes;

/// A private key in `wg genkey` form. Only ever written into 0600 files.
#[derive(Clone)]
pub struct PrivateKey(Zeroizing<String>);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PrivateKey {
    pub fn generate() -> PrivateKey {
        let bytes: [u8; 32] = random_bytes();
        // Clamping is applied by X25519 itself; `wg genkey` clamps for display, we do too
        // so the stored form matches what wg would print.
        let secret = StaticSecret::from(bytes);
        PrivateKey(Zeroizing::new(STANDARD.encode(clamp(secret.to_bytes()))))
    }

    pub fn parse(text: &str) -> Option<PrivateKey> {
        decode32(text).map(|_| PrivateKey(Zeroizing::new(text.to_string())))
    }

    pub fn as_base64(&self) -> &str {
        &self.0
    }

    pub fn public_key(&self) -> PublicKey {
        let bytes = decode32(&self.0).expect("validated on construction");
        let public = DalekPublic::from(&StaticSecret::from(bytes));
        PublicKey(STANDARD.encode(public.as_bytes()))
    }
}

/// A public key in `wg pubkey` form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(String);

impl PublicKey {
    pub fn parse(text: &str) -> Option<PublicKey> {
        decode32(text).map(|_| PublicKey(text.to_string()))
    }

    pub fn as_base64(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn decode32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 44 {
        return None;
    }
    STANDARD.decode(text).ok()?.try_into().ok()
}

fn clamp(mut k: [u8; 32]) -> [u8; 32] {
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_44_base64_chars_and_public_derives_stably() {
        let k = PrivateKey::generate();
        assert_eq!(k.as_base64().len(), 44);
        assert_eq!(k.public_key(), PrivateKey::parse(k.as_base64()).unwrap().public_key());
        assert_ne!(k.public_key().as_base64(), k.as_base64());
        assert!(PublicKey::parse("short").is_none());
    }

    #[test]
    fn matches_rfc7748_test_vector() {
        // RFC 7748 §6.1: Alice's private and public key.
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
        };
        let private = STANDARD.encode(hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
        let public = STANDARD.encode(hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"));
        assert_eq!(PrivateKey::parse(&private).unwrap().public_key().as_base64(), public);
    }
}
