//! TLS 1.3 over QUIC with ALPN `agenix/1`, no 0-RTT, and exactly one server key accepted:
//! the queue's, pinned by the sha256 of its SubjectPublicKeyInfo.
//!
//! Workers authenticate in the same handshake (mutual TLS): a worker presents a
//! self-signed certificate over its own ed25519 key and signs the handshake with it; the
//! queue accepts any such certificate ([`worker_verifier`]), so that it learns the key (by
//! its key id, [`peer_key`]) and can refuse one it has not enrolled by name. Nothing but
//! the key in the certificate counts: its names, dates and issuer are ignored, and the
//! handshake signature proves the worker holds the key.

use std::sync::Arc;
use std::time::Duration;

use agenix_proto::Digest;
use agenix_proto::action::Fingerprint;
use agenix_proto::keys::{
    SigningKey, VerifyingKey, signing_key_to_der, verifying_key_from_spki_der,
};
use agenix_proto::wire::ALPN;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use subtle::ConstantTimeEq;

use crate::LinkError;

/// How long a connection may go without hearing from the other end: a vanished queue or
/// client is noticed this fast.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle connection pings, well inside the idle timeout.
pub const KEEP_ALIVE: Duration = Duration::from_secs(3);

/// The identity of a certificate: `sha256:` of its SubjectPublicKeyInfo.
pub fn fingerprint_of(cert: &CertificateDer<'_>) -> Result<Fingerprint, LinkError> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| LinkError::Tls(format!("bad certificate: {e:?}")))?;
    Ok(Fingerprint(Digest::of(ee.subject_public_key_info().as_ref())))
}

/// The ring crypto provider, the only one this build uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly one server key: the pinned one. The handshake signature is still
/// verified, so only the holder of that key can complete it.
#[derive(Debug)]
struct Pinned {
    fingerprint: Fingerprint,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The identity a refused server presented, for the caller to name.
    refused: Refused,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found =
            fingerprint_of(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if bool::from(found.0.as_bytes().ct_eq(self.fingerprint.0.as_bytes())) {
            Ok(ServerCertVerified::assertion())
        } else {
            if let Ok(mut slot) = self.refused.lock() {
                *slot = Some(found);
            }
            Err(rustls::Error::General(format!(
                "the queue's identity is {found}, not the pinned {}",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not spoken here".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Transport settings both ends use.
pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // The idle timeout is well under u32::MAX ms, so the conversion cannot fail.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t
}

/// The client's TLS: 1.3 only, ALPN agenix/1, no early data, and exactly the queue whose
/// key has `fingerprint` accepted; a worker also proves `key`.
pub fn client_tls(
    fingerprint: Fingerprint,
    key: Option<&SigningKey>,
) -> Result<rustls::ClientConfig, LinkError> {
    pinned_tls(fingerprint, key).map(|(tls, _)| tls)
}

/// The ed25519 key in a certificate's SubjectPublicKeyInfo; any other key is refused.
pub fn key_of(cert: &CertificateDer<'_>) -> Result<VerifyingKey, LinkError> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| LinkError::Tls(format!("bad certificate: {e:?}")))?;
    verifying_key_from_spki_der(ee.subject_public_key_info().as_ref())
        .map_err(|e| LinkError::Tls(format!("a worker's key must be ed25519: {e}")))
}

/// A self-signed certificate over `key`, and the key in the form rustls takes: what a
/// worker presents.
fn self_signed(
    key: &SigningKey,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), LinkError> {
    let der = signing_key_to_der(key).map_err(|e| LinkError::Tls(e.to_string()))?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec()));
    let pair = rcgen::KeyPair::from_der_and_sign_algo(&private, &rcgen::PKCS_ED25519)
        .map_err(|e| LinkError::Tls(format!("cannot use the worker key: {e}")))?;
    let cert = rcgen::CertificateParams::new(vec!["agenix-worker".to_string()])
        .and_then(|p| p.self_signed(&pair))
        .map_err(|e| LinkError::Tls(format!("cannot make the worker's certificate: {e}")))?;
    Ok((vec![cert.der().clone()], private))
}

/// The queue's side of worker authentication: any client may present a certificate (a
/// planner or observer presents none and authenticates with its token); one that is
/// presented must be a lone certificate over an ed25519 key, and the handshake must be
/// signed by that key. Whether the key is enrolled is the queue's decision, made after the
/// handshake, so that a refusal can name the key.
pub fn worker_verifier() -> Arc<dyn ClientCertVerifier> {
    Arc::new(AnyWorkerKey { provider: provider() })
}

#[derive(Debug)]
struct AnyWorkerKey {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for AnyWorkerKey {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "a worker presents its own certificate alone".into(),
            ));
        }
        key_of(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not spoken here".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::General("a worker signs with ed25519".into()));
        }
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The key the peer proved in the handshake, if it presented one (only a connection
/// accepted through [`worker_verifier`] has one).
pub fn peer_key(conn: &quinn::Connection) -> Option<VerifyingKey> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    certs.first().and_then(|c| key_of(c).ok())
}

/// Where the pinning verifier leaves the identity of a server it refused.
pub(crate) type Refused = Arc<std::sync::Mutex<Option<Fingerprint>>>;

/// [`client_tls`], and where the identity of a server it refused is left.
pub(crate) fn pinned_tls(
    fingerprint: Fingerprint,
    key: Option<&SigningKey>,
) -> Result<(rustls::ClientConfig, Refused), LinkError> {
    let provider = provider();
    let refused = Arc::new(std::sync::Mutex::new(None));
    let pinned = Pinned { fingerprint, provider: provider.clone(), refused: refused.clone() };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LinkError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pinned));
    let mut tls = match key {
        None => builder.with_no_client_auth(),
        Some(key) => {
            let (certs, private) = self_signed(key)?;
            builder
                .with_client_auth_cert(certs, private)
                .map_err(|e| LinkError::Tls(e.to_string()))?
        }
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    Ok((tls, refused))
}

/// A QUIC client configuration over `tls`, with the transport settings both ends use.
pub fn quic_client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, LinkError> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| LinkError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(transport()));
    Ok(cfg)
}
