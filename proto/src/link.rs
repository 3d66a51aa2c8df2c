//! The QUIC link: TLS 1.3 over quinn with ALPN `agenix/1`, no 0-RTT, and the queue's
//! identity pinned by the SHA-256 of its public key; plus the client side of the protocol,
//! shared by agx and agw.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use subtle::ConstantTimeEq;
use tokio::io::AsyncReadExt;

use crate::action::{Fingerprint, InputRef};
use crate::digest::{Digest, Hasher};
use crate::wire::{
    ALPN, ClientRole, ErrorCode, FrameError, PROTOCOL_VERSION, Request, Response, read_frame,
    write_frame,
};

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

/// Why the link failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// TLS or QUIC setup failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Could not connect (unreachable, refused, pin mismatch, timeout).
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The queue's address.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
    /// The connection or a stream failed.
    #[error("connection: {0}")]
    Connection(String),
    /// A frame was bad.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The queue answered with an error.
    #[error("{request}: {code:?}: {message}")]
    Remote {
        /// The request.
        request: &'static str,
        /// The error code.
        code: ErrorCode,
        /// The queue's message.
        message: String,
    },
    /// The queue answered something unexpected.
    #[error("{request}: unexpected answer {answer}")]
    Unexpected {
        /// The request.
        request: &'static str,
        /// What came back.
        answer: String,
    },
    /// A blob did not match its digest.
    #[error("blob {expected} arrived with digest {found}")]
    BlobMismatch {
        /// The digest asked for.
        expected: Digest,
        /// What the bytes hash to.
        found: Digest,
    },
}

impl LinkError {
    /// The queue's error code, when it answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Accepts exactly one server key: the pinned one. The handshake signature is still
/// verified, so only the holder of that key can complete it.
#[derive(Debug)]
struct Pinned {
    fingerprint: Fingerprint,
    provider: Arc<rustls::crypto::CryptoProvider>,
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
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LinkError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { fingerprint, provider }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    Ok(tls)
}

/// A QUIC client configuration over `tls`, with the transport settings both ends use.
pub fn quic_client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, LinkError> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| LinkError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(transport()));
    Ok(cfg)
}

/// An authenticated connection to a queue.
#[derive(Debug, Clone)]
pub struct Client {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    queue: Fingerprint,
    role: ClientRole,
}

impl Client {
    /// Connects to the queue at `addr` whose identity is `fingerprint`, and authenticates
    /// as `role` with `token`.
    pub async fn connect(
        addr: SocketAddr,
        fingerprint: Fingerprint,
        role: ClientRole,
        token: &str,
    ) -> Result<Self, LinkError> {
        let conn_err = |message: String| LinkError::Connect { addr, message };
        let bind: SocketAddr =
            if addr.is_ipv6() { ([0u16; 8], 0).into() } else { ([0u8; 4], 0).into() };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| conn_err(e.to_string()))?;
        endpoint.set_default_client_config(quic_client_config(client_tls(fingerprint)?)?);
        let connecting =
            endpoint.connect(addr, "agenix-queue").map_err(|e| conn_err(e.to_string()))?;
        let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| conn_err("timed out".into()))?
            .map_err(|e| conn_err(e.to_string()))?;
        let client = Self { conn, _endpoint: endpoint, queue: fingerprint, role };
        match client
            .request(&Request::Hello { version: PROTOCOL_VERSION, role, token: token.to_owned() })
            .await?
        {
            Response::HelloOk { .. } => Ok(client),
            other => Err(LinkError::Unexpected { request: "hello", answer: format!("{other:?}") }),
        }
    }

    /// The queue's identity.
    pub fn queue(&self) -> Fingerprint {
        self.queue
    }

    /// The role this connection authenticated as.
    pub fn role(&self) -> ClientRole {
        self.role
    }

    /// The QUIC connection (for tests that speak raw frames).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Sends `req` on a new stream and returns the answer; an `Error` answer becomes
    /// [`LinkError::Remote`]. A request the queue throttled is sent again after a backoff
    /// (it was not acted on), for up to [`THROTTLE_PATIENCE`].
    pub async fn request(&self, req: &Request) -> Result<Response, LinkError> {
        let mut backoff = Backoff::new();
        loop {
            match self.request_once(req).await {
                Err(e) if e.code() == Some(ErrorCode::RateLimited) && backoff.wait().await => {}
                other => return other,
            }
        }
    }

    async fn request_once(&self, req: &Request) -> Result<Response, LinkError> {
        let (mut send, mut recv) =
            self.conn.open_bi().await.map_err(|e| LinkError::Connection(e.to_string()))?;
        write_frame(&mut send, req).await?;
        send.finish().map_err(|e| LinkError::Connection(e.to_string()))?;
        let resp: Response = read_frame(&mut recv).await?;
        check(req.name(), resp)
    }

    /// Uploads `bytes` as one blob (the queue checks the digest), retrying while throttled.
    pub async fn put_blob(&self, bytes: &[u8]) -> Result<(), LinkError> {
        self.put_many(&[bytes], false).await.map(drop)
    }

    /// Uploads several blobs in one request (the queue checks each digest), retrying while
    /// throttled; returns how many the queue already had. `keep`: see [`Client::put_blobs`].
    pub async fn put_many(&self, blobs: &[&[u8]], keep: bool) -> Result<u32, LinkError> {
        let refs: Vec<InputRef> = blobs
            .iter()
            .map(|b| InputRef { digest: Digest::of(b), size: b.len() as u64 })
            .collect();
        let mut backoff = Backoff::new();
        loop {
            let mut up = self.put_blobs(&refs, keep).await?;
            let mut failed = None;
            for b in blobs {
                if let Err(e) = up.write(b).await {
                    failed = Some(e);
                    break;
                }
            }
            let answer = match failed {
                None => up.finish().await,
                Some(e) => up.refused(e).await,
            };
            match answer {
                Err(e) if e.code() == Some(ErrorCode::RateLimited) && backoff.wait().await => {}
                other => return other,
            }
        }
    }

    /// Starts uploading `blobs` in one request: write their bytes, in order, to the
    /// returned [`Upload`], then [`Upload::finish`] it. `keep`: the queue keeps them until
    /// removed explicitly (planners only).
    pub async fn put_blobs(&self, blobs: &[InputRef], keep: bool) -> Result<Upload, LinkError> {
        let req = Request::PutBlobs { blobs: blobs.to_vec(), keep };
        let (mut send, recv) =
            self.conn.open_bi().await.map_err(|e| LinkError::Connection(e.to_string()))?;
        write_frame(&mut send, &req).await?;
        Ok(Upload { send, recv, left: blobs.iter().map(|b| b.size).sum() })
    }

    /// Downloads the blob with `digest` (at most `max` bytes), checking it.
    pub async fn get_blob(&self, digest: Digest, max: u64) -> Result<Vec<u8>, LinkError> {
        let mut backoff = Backoff::new();
        loop {
            match self.get_blob_once(digest, max).await {
                Err(e) if e.code() == Some(ErrorCode::RateLimited) && backoff.wait().await => {}
                other => return other,
            }
        }
    }

    async fn get_blob_once(&self, digest: Digest, max: u64) -> Result<Vec<u8>, LinkError> {
        let (mut send, mut recv) =
            self.conn.open_bi().await.map_err(|e| LinkError::Connection(e.to_string()))?;
        write_frame(&mut send, &Request::GetBlob { digest }).await?;
        send.finish().map_err(|e| LinkError::Connection(e.to_string()))?;
        let size = match check("get_blob", read_frame(&mut recv).await?)? {
            Response::Blob { size, .. } if size <= max => size,
            Response::Blob { size, .. } => {
                return Err(LinkError::Remote {
                    request: "get_blob",
                    code: ErrorCode::TooLarge,
                    message: format!("blob {digest} is {size} bytes, over the limit of {max}"),
                });
            }
            other => {
                return Err(LinkError::Unexpected {
                    request: "get_blob",
                    answer: format!("{other:?}"),
                });
            }
        };
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 26));
        let mut h = Hasher::new();
        let mut chunk = vec![0u8; 64 << 10];
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
            let n = AsyncReadExt::read(&mut recv, &mut chunk[..want])
                .await
                .map_err(|e| LinkError::Connection(e.to_string()))?;
            if n == 0 {
                return Err(LinkError::Connection("blob ended early".into()));
            }
            h.update(&chunk[..n]);
            bytes.extend_from_slice(&chunk[..n]);
            left -= n as u64;
        }
        let found = h.finish();
        if found != digest {
            return Err(LinkError::BlobMismatch { expected: digest, found });
        }
        Ok(bytes)
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }

    /// Closes the connection and waits (briefly) until the queue has been told, so it frees
    /// the connection at once instead of after the idle timeout. Call before a process exits.
    pub async fn shutdown(&self) {
        self.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self._endpoint.wait_idle()).await;
    }
}

/// How long a client keeps sending a request the queue throttles before giving up.
pub const THROTTLE_PATIENCE: Duration = Duration::from_secs(60);

/// Waits between attempts of a throttled request: 50 ms doubling to 2 s, until
/// [`THROTTLE_PATIENCE`] has passed.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    spent: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: Duration::from_millis(50), spent: Duration::ZERO }
    }

    /// Sleeps before the next attempt; false once patience is spent.
    async fn wait(&mut self) -> bool {
        if self.spent >= THROTTLE_PATIENCE {
            return false;
        }
        let d = self.next;
        tokio::time::sleep(d).await;
        self.spent += d;
        self.next = (self.next * 2).min(Duration::from_secs(2));
        true
    }
}

/// An upload under way: the bytes of the blobs announced, in order, then [`Upload::finish`].
#[derive(Debug)]
pub struct Upload {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    left: u64,
}

impl Upload {
    /// Sends the next bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        if bytes.len() as u64 > self.left {
            return Err(LinkError::Connection(format!(
                "{} bytes more than the blobs announced",
                bytes.len() as u64 - self.left
            )));
        }
        self.send.write_all(bytes).await.map_err(|e| LinkError::Connection(e.to_string()))?;
        self.left -= bytes.len() as u64;
        Ok(())
    }

    /// Ends the upload and returns how many of the blobs the queue already had.
    pub async fn finish(mut self) -> Result<u32, LinkError> {
        if self.left > 0 {
            return Err(LinkError::Connection(format!(
                "upload ended {} bytes short of the blobs announced",
                self.left
            )));
        }
        let sent = self.send.finish().map_err(|e| LinkError::Connection(e.to_string()));
        self.answer(sent.err()).await
    }

    /// After [`Upload::write`] failed with `e`: the queue may have refused the upload and
    /// stopped reading, and its answer says why; else `e`.
    pub async fn refused(mut self, e: LinkError) -> Result<u32, LinkError> {
        self.answer(Some(e)).await
    }

    async fn answer(&mut self, failed: Option<LinkError>) -> Result<u32, LinkError> {
        // The queue may refuse on the header and stop reading: its answer still says why.
        match read_frame::<Response>(&mut self.recv).await {
            Ok(resp) => match check("put_blobs", resp)? {
                Response::BlobsStored { existed } => Ok(existed),
                other => Err(LinkError::Unexpected {
                    request: "put_blobs",
                    answer: format!("{other:?}"),
                }),
            },
            Err(e) => Err(failed.unwrap_or_else(|| e.into())),
        }
    }
}

fn check(request: &'static str, resp: Response) -> Result<Response, LinkError> {
    match resp {
        Response::Error { code, message } => Err(LinkError::Remote { request, code, message }),
        other => Ok(other),
    }
}
