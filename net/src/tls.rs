//! TLS for every Ward connection (SECURITY.md §9.1): rustls with the ring
//! provider, TLS 1.3 only.
//!
//! * Servers: [`ServerTls`] holds the PEM certificate chain and key, serves
//!   every new handshake with the current pair, and [`ServerTls::reload`]
//!   swaps in a new pair (SIGHUP: [`reload_on_sighup`]) without touching
//!   open connections. [`Acceptor`] turns an accepted socket into a
//!   [`ServerStream`]; a peer that speaks plain HTTP to a TLS listener gets
//!   an HTTP 400 that names the problem, not a silent reset.
//! * Clients: [`ClientTls`] is the trust anchor set, the platform's web
//!   roots (webpki-roots) or a pinned CA for a private deployment;
//!   [`connect`] dials `wss://` (or `ws://`, loopback only) and maps every
//!   TLS failure to a typed [`TlsError`] at once.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::{Connector, MaybeTlsStream};

use crate::{Conn, Limits, NetError};

/// The response header a Ward TLS listener sets when a peer spoke plain
/// HTTP to it, so that a client can name the problem.
pub const TLS_REQUIRED_HEADER: &str = "x-ward-error";
const TLS_REQUIRED_VALUE: &str = "tls-required";

/// Why TLS could not be set up or completed. Every variant is final for the
/// attempt: retrying the same URL with the same trust will fail the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A PEM input held no certificate, or no usable private key.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the configuration (e.g. a key that does not match).
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The server's certificate does not chain to the trusted roots (a
    /// private deployment needs its CA pinned: `--ca-file`).
    #[error(
        "the server's certificate is not trusted ({0}); for a private deployment, pin its CA \
         (--ca-file / WARD_CA_FILE)"
    )]
    UntrustedCertificate(String),
    /// The certificate is valid but not for the host in the URL.
    #[error("the server's certificate is not valid for {0}")]
    WrongHost(String),
    /// The server did not answer in TLS: a plain `ws://` server behind a
    /// `wss://` URL.
    #[error("the server at {0} does not speak TLS (a plain ws:// server?)")]
    NotTls(String),
    /// The server speaks TLS and refused a plain-text request: use `wss://`.
    #[error("the server at {0} requires TLS: use a wss:// URL")]
    ServerRequiresTls(String),
    /// A plain `ws://` URL to a host that is not loopback: refused, since
    /// the network would see and could alter the traffic.
    #[error("plain ws:// is allowed to loopback only; use wss:// for {0}")]
    PlainTextRefused(String),
    /// The TLS handshake failed for another reason (protocol version, alert).
    #[error("TLS handshake with {host} failed: {reason}")]
    Handshake {
        /// The host.
        host: String,
        /// rustls' reason.
        reason: String,
    },
    /// The URL is not a `ws://` or `wss://` URL with a host.
    #[error("not a ws:// or wss:// URL: {0}")]
    BadUrl(String),
}

fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(format!("{what}: no PEM certificate found")));
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs_from_pem(cert_pem, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Pem(format!("private key: {e}")))?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Config(format!("private key: {e}")))?;
    let ck = CertifiedKey::new(chain, signer);
    // Refuses a key that does not belong to the certificate, at load time
    // rather than at the first handshake.
    ck.keys_match()
        .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
    Ok(Arc::new(ck))
}

/// The current certificate, swapped whole on reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A server's TLS identity: certificate chain and key, reloadable.
#[derive(Clone)]
pub struct ServerTls {
    current: Arc<Current>,
    config: Arc<rustls::ServerConfig>,
    files: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From PEM bytes: the certificate chain (leaf first) and its private key
    /// (PKCS#8, SEC1 or PKCS#1).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let current = Arc::new(Current(RwLock::new(certified_key(cert_pem, key_pem)?)));
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(TLS13)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        Ok(Self {
            current,
            config: Arc::new(config),
            files: None,
        })
    }

    /// From PEM files; [`Self::reload`] reads them again.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let mut tls = Self::from_pem(&read(cert)?, &read(key)?)?;
        tls.files = Some((cert.to_owned(), key.to_owned()));
        Ok(tls)
    }

    /// Re-reads the PEM files (if built from files) and serves every new
    /// handshake with them. Open connections keep their session. On error
    /// the previous pair stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let Some((cert, key)) = &self.files else {
            return Ok(());
        };
        self.replace(&read(cert)?, &read(key)?)
    }

    /// Serves new handshakes with this pair.
    pub fn replace(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        let ck = certified_key(cert_pem, key_pem)?;
        *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = ck;
        Ok(())
    }
}

/// Reloads `tls` on every SIGHUP, for the life of the process (a no-op
/// task off Unix). A failed reload is logged and the old pair kept.
pub fn reload_on_sighup(tls: ServerTls) -> io::Result<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        Ok(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => tracing::info!("TLS certificate reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "TLS reload failed; keeping the old certificate")
                    }
                }
            }
        }))
    }
    #[cfg(not(unix))]
    {
        drop(tls);
        Ok(tokio::spawn(async {}))
    }
}

/// How a server's listener treats accepted sockets.
#[derive(Clone, Debug)]
pub enum Acceptor {
    /// TLS 1.3 with this identity.
    Tls(ServerTls),
    /// Plain TCP: allowed on loopback listeners only (see [`Acceptor::check`]).
    InsecureLoopback,
}

/// Why a listener may not run as configured.
#[derive(Debug, thiserror::Error)]
#[error(
    "plain (non-TLS) listening is allowed on loopback addresses only, not {0}: configure a TLS certificate and key"
)]
pub struct PlainOnPublicAddress(pub std::net::SocketAddr);

impl Acceptor {
    /// Refuses plain TCP on an address other hosts can reach.
    pub fn check(&self, addr: std::net::SocketAddr) -> Result<(), PlainOnPublicAddress> {
        match self {
            Self::InsecureLoopback if !addr.ip().is_loopback() => Err(PlainOnPublicAddress(addr)),
            _ => Ok(()),
        }
    }

    /// Whether connections are encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// The TLS handshake (bounded by the caller's timeout). A peer whose
    /// first byte is not a TLS handshake record gets an HTTP 400 naming the
    /// problem, then the error [`AcceptError::PlainText`].
    pub async fn accept(&self, tcp: TcpStream) -> Result<ServerStream, AcceptError> {
        let tls = match self {
            Self::InsecureLoopback => return Ok(ServerStream::Plain(tcp)),
            Self::Tls(t) => t,
        };
        let mut first = [0u8; 1];
        let n = tcp.peek(&mut first).await.map_err(AcceptError::Io)?;
        if n == 0 {
            return Err(AcceptError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        // 0x16: a TLS handshake record (the ClientHello).
        if first[0] != 0x16 {
            refuse_plain(tcp).await;
            return Err(AcceptError::PlainText);
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
        let stream = acceptor.accept(tcp).await.map_err(AcceptError::Io)?;
        Ok(ServerStream::Tls(Box::new(stream)))
    }
}

impl Acceptor {
    /// [`Self::accept`] within `limit` (the handshake timeout), logging a
    /// failure at debug level: `None` means the socket is dropped.
    pub async fn accept_within(
        &self,
        tcp: TcpStream,
        limit: std::time::Duration,
    ) -> Option<ServerStream> {
        let peer = tcp.peer_addr().ok();
        match tokio::time::timeout(limit, self.accept(tcp)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(?peer, error = %e, "TLS accept failed");
                None
            }
            Err(_) => {
                tracing::debug!(?peer, "TLS accept timed out");
                None
            }
        }
    }
}

/// Why an accepted socket did not become a connection.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The peer spoke plain text to a TLS listener (it was told so).
    #[error("plain-text client on a TLS listener (told to use wss://)")]
    PlainText,
    /// The TLS handshake failed.
    #[error("TLS handshake: {0}")]
    Io(io::Error),
}

async fn refuse_plain(mut tcp: TcpStream) {
    let body = "This Ward server accepts TLS only: use a wss:// URL.\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\n{TLS_REQUIRED_HEADER}: {TLS_REQUIRED_VALUE}\r\n\
         content-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let _ = tcp.write_all(response.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// An accepted connection, encrypted or (loopback only) not.
#[derive(Debug)]
pub enum ServerStream {
    /// Plain TCP (`--insecure-loopback`).
    Plain(TcpStream),
    /// TLS 1.3.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Whom a client trusts for `wss://` servers.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    pinned: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("pinned_ca", &self.pinned)
            .finish()
    }
}

impl Default for ClientTls {
    fn default() -> Self {
        Self::web_roots()
    }
}

fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(TLS13)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl ClientTls {
    /// The public web PKI's roots (Mozilla's list, as webpki-roots ships it):
    /// for servers with a certificate from a public CA.
    pub fn web_roots() -> Self {
        static WEB: OnceLock<ClientTls> = OnceLock::new();
        WEB.get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            match client_config(roots) {
                Ok(c) => Self {
                    config: Arc::new(c),
                    pinned: false,
                },
                // Cannot happen with the ring provider and TLS 1.3; an empty
                // store would refuse every server rather than accept any.
                Err(_) => Self {
                    config: Arc::new(empty_config()),
                    pinned: false,
                },
            }
        })
        .clone()
    }

    /// Only the CA(s) in this PEM: a private deployment's own CA (or `ward
    /// up`'s dev CA). Public CAs are then not trusted.
    pub fn pinned_ca_pem(pem: &[u8]) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs_from_pem(pem, "CA")? {
            roots
                .add(cert)
                .map_err(|e| TlsError::Pem(format!("CA certificate: {e}")))?;
        }
        Ok(Self {
            config: Arc::new(client_config(roots)?),
            pinned: true,
        })
    }

    /// [`Self::pinned_ca_pem`] from a file.
    pub fn pinned_ca_file(path: &Path) -> Result<Self, TlsError> {
        Self::pinned_ca_pem(&read(path)?)
    }

    /// Whether a pinned CA replaces the web roots.
    pub fn is_pinned(&self) -> bool {
        self.pinned
    }

    /// TLS 1.3 over the connected `tcp`, verified for `host` (a DNS name
    /// or an IP address) exactly as a `wss://` connection is: for the few
    /// clients that speak another protocol than WebSocket (the relay's push
    /// webhook, SECURITY.md §9.2).
    pub async fn connect_stream(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
        let name = rustls_pki_types::ServerName::try_from(host.to_owned())
            .map_err(|_| TlsError::BadUrl(host.to_owned()))?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(
                |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(r) => rustls_error(r, host),
                    None if e.kind() == io::ErrorKind::UnexpectedEof => {
                        TlsError::NotTls(host.to_owned())
                    }
                    None => TlsError::Handshake {
                        host: host.to_owned(),
                        reason: e.to_string(),
                    },
                },
            )
    }
}

fn empty_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
}

/// The host of a `ws://` / `wss://` URL and whether it is TLS.
fn parse_url(url: &str) -> Result<(bool, String), TlsError> {
    let bad = || TlsError::BadUrl(url.to_owned());
    let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((tls, host.to_owned()))
}

/// Whether `host` names this machine only.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Connects to `url` as a Ward client: `wss://` verified against `tls`, or
/// `ws://` to a loopback host only. TLS failures are [`NetError::Tls`].
pub async fn connect(
    url: &str,
    limits: &Limits,
    tls: &ClientTls,
) -> Result<Conn<MaybeTlsStream<TcpStream>>, NetError> {
    let (is_tls, host) = parse_url(url)?;
    if !is_tls && !is_loopback_host(&host) {
        return Err(TlsError::PlainTextRefused(host).into());
    }
    let connector = if is_tls {
        Connector::Rustls(tls.config.clone())
    } else {
        Connector::Plain
    };
    let result = tokio_tungstenite::connect_async_tls_with_config(
        url,
        Some(crate::conn::ws_config(limits)),
        true,
        Some(connector),
    )
    .await;
    match result {
        Ok((ws, _response)) => Ok(Conn::from_ws(ws, limits)),
        Err(e) => Err(classify(e, is_tls, &host)),
    }
}

/// Names a connection failure: the TLS ones become [`TlsError`].
fn classify(e: tungstenite::Error, is_tls: bool, host: &str) -> NetError {
    match &e {
        tungstenite::Error::Http(resp)
            if resp
                .headers()
                .get(TLS_REQUIRED_HEADER)
                .is_some_and(|v| v.as_bytes() == TLS_REQUIRED_VALUE.as_bytes()) =>
        {
            return TlsError::ServerRequiresTls(host.to_owned()).into();
        }
        tungstenite::Error::Tls(t) => {
            return TlsError::Handshake {
                host: host.to_owned(),
                reason: t.to_string(),
            }
            .into();
        }
        tungstenite::Error::Io(io) if is_tls => {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return rustls_error(r, host).into();
            }
            // The peer hung up on our ClientHello: what a plain WebSocket
            // server does when it cannot parse it as HTTP.
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                return TlsError::NotTls(host.to_owned()).into();
            }
        }
        // The TLS handshake succeeded, and what followed was not HTTP: not
        // a TLS question. A plain server answering a ClientHello with
        // garbage shows up as a rustls error above.
        _ => {}
    }
    NetError::WebSocket(e)
}

fn rustls_error(e: &rustls::Error, host: &str) -> TlsError {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::NotValidForName)
        | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => {
            TlsError::WrongHost(host.to_owned())
        }
        rustls::Error::InvalidCertificate(c) => TlsError::UntrustedCertificate(format!("{c:?}")),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            TlsError::NotTls(host.to_owned())
        }
        other => TlsError::Handshake {
            host: host.to_owned(),
            reason: other.to_string(),
        },
    }
}

#[cfg(feature = "dev-ca")]
pub mod dev_ca;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_loopback_is_recognised() {
        assert_eq!(
            parse_url("wss://relay.example:443/x").unwrap(),
            (true, "relay.example".into())
        );
        assert_eq!(parse_url("ws://[::1]:7070").unwrap(), (false, "::1".into()));
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("wss://:443").is_err());
        assert!(is_loopback_host("localhost") && is_loopback_host("127.0.0.2"));
        assert!(is_loopback_host("::1") && !is_loopback_host("10.0.0.1"));
    }

    #[tokio::test]
    async fn plain_ws_to_another_host_is_refused_before_any_packet() {
        let err = connect(
            "ws://192.0.2.1:7070",
            &Limits::default(),
            &ClientTls::default(),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(err, NetError::Tls(TlsError::PlainTextRefused(h)) if h == "192.0.2.1"));
    }
}
