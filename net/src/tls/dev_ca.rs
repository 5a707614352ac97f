//! A local development CA (rcgen): what `ward up` mints under its data
//! folder so that the walkthrough runs over `wss://`, and what tests use.
//! Not for production: a real deployment gets its certificate from its own
//! PKI or a public CA.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use zeroize::Zeroizing;

use super::TlsError;

/// A CA certificate and one server certificate it signed, in PEM.
pub struct DevPki {
    /// The CA certificate: what clients pin.
    pub ca_pem: String,
    /// The server's certificate chain (leaf, then the CA).
    pub cert_pem: String,
    /// The server's private key (PKCS#8).
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for DevPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPki").finish_non_exhaustive()
    }
}

fn err(e: rcgen::Error) -> TlsError {
    TlsError::Config(format!("certificate generation: {e}"))
}

/// The names the dev certificate is valid for: this machine only.
pub const LOOPBACK_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

impl DevPki {
    /// A fresh CA named `ca_name`, and a server certificate for `names`
    /// (DNS names or IP addresses).
    pub fn mint(ca_name: &str, names: &[&str]) -> Result<Self, TlsError> {
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().map_err(err)?;
        let mut leaf =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .map_err(err)?;
        leaf.distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("ward"));
        leaf.is_ca = IsCa::ExplicitNoCa;
        let cert = leaf.signed_by(&key, &issuer).map_err(err)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            cert_pem: format!("{}{}", cert.pem(), ca_cert.pem()),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }

    /// The server side of this PKI.
    pub fn server(&self) -> Result<super::ServerTls, TlsError> {
        super::ServerTls::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
    }

    /// A client that trusts this CA only.
    pub fn client(&self) -> Result<super::ClientTls, TlsError> {
        super::ClientTls::pinned_ca_pem(self.ca_pem.as_bytes())
    }
}

/// Where `ward up` keeps its dev PKI, under `<data>/tls/`.
#[derive(Debug, Clone)]
pub struct DevPkiFiles {
    /// `ca.pem`: the CA certificate clients pin.
    pub ca: PathBuf,
    /// `server.pem`: the servers' certificate chain.
    pub cert: PathBuf,
    /// `server.key`: its key (0600).
    pub key: PathBuf,
}

impl DevPkiFiles {
    /// The files under `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }

    /// Whether all three exist.
    pub fn exist(&self) -> bool {
        self.ca.exists() && self.cert.exists() && self.key.exists()
    }

    /// Reuses the files if all three exist, else mints a new CA and server
    /// certificate for this machine's names and writes them (the key and
    /// the directory readable by the owner only). Returns whether it minted.
    pub fn load_or_create(&self) -> Result<bool, TlsError> {
        if self.exist() {
            return Ok(false);
        }
        let pki = DevPki::mint("Ward dev CA (this machine only)", LOOPBACK_NAMES)?;
        let write = |path: &Path, data: &str, secret: bool| -> Result<(), TlsError> {
            let io = |e: std::io::Error| TlsError::Read {
                path: path.to_owned(),
                reason: e.to_string(),
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            if secret {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            #[cfg(not(unix))]
            let _ = secret;
            use std::io::Write;
            opts.open(path)
                .and_then(|mut f| f.write_all(data.as_bytes()))
                .map_err(io)
        };
        // Key first: a crash between writes leaves `exist()` false, so the
        // next run mints afresh rather than pairing mismatched files.
        write(&self.key, &pki.key_pem, true)?;
        write(&self.cert, &pki.cert_pem, false)?;
        write(&self.ca, &pki.ca_pem, false)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_pki_loads_on_both_sides_and_refuses_a_foreign_key() {
        let pki = DevPki::mint("test CA", LOOPBACK_NAMES).unwrap();
        pki.server().unwrap();
        assert!(pki.client().unwrap().is_pinned());
        let other = DevPki::mint("other", LOOPBACK_NAMES).unwrap();
        let mismatched =
            super::super::ServerTls::from_pem(pki.cert_pem.as_bytes(), other.key_pem.as_bytes());
        assert!(matches!(mismatched, Err(TlsError::Config(_))));
    }
}
