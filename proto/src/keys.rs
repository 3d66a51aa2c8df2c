//! Signer keys: ed25519, stored as PKCS#8 / SPKI PEM, named by key id.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::{Digest, DigestParseError};

/// A key id: `sha256:<hex of the raw 32-byte public key>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Digest);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &VerifyingKey) -> Self {
        Self(Digest::of(key.as_bytes()))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

impl FromStr for KeyId {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Digest::deserialize(d).map(Self)
    }
}

/// Why a key could not be read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not a PKCS#8 ed25519 private key in PEM.
    #[error("not an ed25519 private key in PKCS#8 PEM ({0})")]
    Private(String),
    /// Not an SPKI ed25519 public key in PEM.
    #[error("not an ed25519 public key in PEM ({0})")]
    Public(String),
    /// Not 32 bytes, or not a point on the curve.
    #[error("not an ed25519 public key: {0}")]
    Raw(String),
    /// A small-order key: signatures by it prove nothing.
    #[error("weak ed25519 key (small order): refused")]
    Weak,
}

/// A signing key from 32 random bytes.
pub fn signing_key_from_seed(seed: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(seed)
}

/// Reads a private key from PKCS#8 PEM.
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, KeyError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Private(e.to_string()))
}

/// Writes a private key as PKCS#8 PEM in the plain form of RFC 8410 (version 1, the seed
/// alone, no public key attribute), which OpenSSL and Python's `cryptography` read; the
/// string is wiped when dropped. (Both forms are read.)
pub fn signing_key_to_pem(key: &SigningKey) -> Result<zeroize::Zeroizing<String>, KeyError> {
    let plain = ed25519_dalek::pkcs8::KeypairBytes { secret_key: key.to_bytes(), public_key: None };
    plain.to_pkcs8_pem(LineEnding::LF).map_err(|e| KeyError::Private(e.to_string()))
}

/// A private key as PKCS#8 DER (the plain RFC 8410 form), wiped when dropped: what a TLS
/// stack takes.
pub fn signing_key_to_der(key: &SigningKey) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
    let plain = ed25519_dalek::pkcs8::KeypairBytes { secret_key: key.to_bytes(), public_key: None };
    let doc = plain.to_pkcs8_der().map_err(|e| KeyError::Private(e.to_string()))?;
    Ok(zeroize::Zeroizing::new(doc.as_bytes().to_vec()))
}

/// Reads a public key from SPKI PEM, refusing weak keys.
pub fn verifying_key_from_pem(pem: &str) -> Result<VerifyingKey, KeyError> {
    let key =
        VerifyingKey::from_public_key_pem(pem).map_err(|e| KeyError::Public(e.to_string()))?;
    if key.is_weak() {
        return Err(KeyError::Weak);
    }
    Ok(key)
}

/// Reads a public key from SPKI DER (what a certificate carries), refusing weak keys.
pub fn verifying_key_from_spki_der(der: &[u8]) -> Result<VerifyingKey, KeyError> {
    let key =
        VerifyingKey::from_public_key_der(der).map_err(|e| KeyError::Public(e.to_string()))?;
    if key.is_weak() {
        return Err(KeyError::Weak);
    }
    Ok(key)
}

/// Writes a public key as SPKI PEM.
pub fn verifying_key_to_pem(key: &VerifyingKey) -> Result<String, KeyError> {
    key.to_public_key_pem(LineEnding::LF).map_err(|e| KeyError::Public(e.to_string()))
}

/// Reads a raw 32-byte public key, refusing weak keys.
pub fn verifying_key_from_raw(bytes: &[u8]) -> Result<VerifyingKey, KeyError> {
    let raw: &[u8; 32] =
        bytes.try_into().map_err(|_| KeyError::Raw(format!("{} bytes, not 32", bytes.len())))?;
    let key = VerifyingKey::from_bytes(raw).map_err(|e| KeyError::Raw(e.to_string()))?;
    if key.is_weak() {
        return Err(KeyError::Weak);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_and_key_id_is_sha256_of_raw_key() {
        let sk = signing_key_from_seed(&[7; 32]);
        let pem = signing_key_to_pem(&sk).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = signing_key_from_pem(&pem).unwrap();
        assert_eq!(back.to_bytes(), sk.to_bytes());
        let vk = sk.verifying_key();
        let pub_pem = verifying_key_to_pem(&vk).unwrap();
        assert_eq!(verifying_key_from_pem(&pub_pem).unwrap(), vk);
        let der = vk.to_public_key_der().unwrap();
        assert_eq!(verifying_key_from_spki_der(der.as_bytes()).unwrap(), vk);
        assert!(verifying_key_from_spki_der(&der.as_bytes()[1..]).is_err());
        assert_eq!(KeyId::of(&vk).to_string(), Digest::of(vk.as_bytes()).to_string());
    }

    /// The private key is the plain RFC 8410 form: version 1 (0), the Ed25519 OID, the seed
    /// in an OCTET STRING of an OCTET STRING, and nothing after it; the form with a public
    /// key attribute (version 2) that other tools write is read too.
    #[test]
    fn private_keys_are_written_in_the_plain_rfc_8410_form_and_both_forms_are_read() {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let sk = signing_key_from_seed(&[9; 32]);
        let pem = signing_key_to_pem(&sk).unwrap();
        let der = ed25519_dalek::pkcs8::Document::from_pem(&pem).unwrap().1;
        let mut expected = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        expected.extend_from_slice(&[9; 32]);
        assert_eq!(der.as_bytes(), &expected[..]);
        let v2 = sk.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert_eq!(signing_key_from_pem(&v2).unwrap().to_bytes(), sk.to_bytes());
    }

    #[test]
    fn small_order_raw_key_is_refused() {
        // The identity point, encoded: a small-order point.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(verifying_key_from_raw(&identity), Err(KeyError::Weak));
        assert!(matches!(verifying_key_from_raw(&[1; 31]), Err(KeyError::Raw(_))));
    }
}
