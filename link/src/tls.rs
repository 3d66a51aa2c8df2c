//! TLS 1.3 over QUIC with ALPN `agenix/1`, no 0-RTT, and exactly one server key accepted:
//! the queue's, pinned by the sha256 of its SubjectPublicKeyInfo.

use std::sync::Arc;
use std::time::Duration;

use agenix_proto::Digest;
use agenix_proto::action::Fingerprint;
use agenix_proto::wire::ALPN;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
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
/// key has `fingerprint` accepted.
pub fn client_tls(fingerprint: Fingerprint) -> Result<rustls::ClientConfig, LinkError> {
    pinned_tls(fingerprint).map(|(tls, _)| tls)
}

/// Where the pinning verifier leaves the identity of a server it refused.
pub(crate) type Refused = Arc<std::sync::Mutex<Option<Fingerprint>>>;

/// [`client_tls`], and where the identity of a server it refused is left.
pub(crate) fn pinned_tls(
    fingerprint: Fingerprint,
) -> Result<(rustls::ClientConfig, Refused), LinkError> {
    let provider = provider();
    let refused = Arc::new(std::sync::Mutex::new(None));
    let pinned = Pinned { fingerprint, provider: provider.clone(), refused: refused.clone() };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LinkError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pinned))
        .with_no_client_auth();
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
