//! The TLS settings both servers take, into a `ward_net::tls::Acceptor`.

use std::path::PathBuf;

use ward_net::tls::{Acceptor, ServerTls};

/// `--tls-cert`, `--tls-key`, `--insecure-loopback` (each also from the
/// environment and the configuration file, see [`crate::layered`]).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM certificate chain (leaf first) for TLS 1.3; re-read on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate; re-read on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain ws:// without TLS: refused unless the listen address is loopback.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub insecure_loopback: bool,
}

impl TlsArgs {
    /// The acceptor, with SIGHUP reloading installed for a certificate.
    /// Needs a tokio runtime.
    pub fn acceptor(&self) -> Result<Acceptor, String> {
        match (&self.tls_cert, &self.tls_key, self.insecure_loopback) {
            (Some(cert), Some(key), _) => {
                let tls = ServerTls::from_pem_files(cert, key).map_err(|e| e.to_string())?;
                ward_net::tls::reload_on_sighup(tls.clone())
                    .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
                Ok(Acceptor::Tls(tls))
            }
            (None, None, true) => Ok(Acceptor::InsecureLoopback),
            _ => Err(
                "TLS is required: give --tls-cert and --tls-key (PEM files), or \
                      --insecure-loopback for a plain listener on a loopback address"
                    .into(),
            ),
        }
    }
}
