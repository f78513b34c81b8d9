//! The pod's identity: its X.509 SVID and trust bundle, read from the csi-driver-spiffe
//! layout (`tls.crt`, `tls.key`, `ca.crt`) and checked before anything uses it.
//!
//! Reading ([`Files::read`]) is separate from checking ([`Identity::parse`]) so that the
//! reloader can compare raw contents cheaply and only parse what changed.

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const BUNDLE_FILE: &str = "ca.crt";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {why}")]
    Pem { file: &'static str, why: String },
    #[error("{file} holds no {what}")]
    Empty {
        file: &'static str,
        what: &'static str,
    },
    #[error("tls.key does not fit tls.crt ({0}); the files may be mid-rotation")]
    Key(rustls::Error),
    #[error("tls.crt is not an X.509 SVID: it has no single spiffe:// URI SAN")]
    NoSpiffeId,
    #[error("tls.crt cannot be parsed: {0}")]
    Cert(String),
    #[error("cannot build the TLS config: {0}")]
    Tls(String),
}

/// The raw contents of the three files.
#[derive(Clone, PartialEq, Eq)]
pub struct Files {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub bundle: Vec<u8>,
}

// Hand-written so that the private key never reaches a log through `{:?}`.
impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("cert", &self.cert.len())
            .field("key", &"<redacted>")
            .field("bundle", &self.bundle.len())
            .finish()
    }
}

impl Files {
    pub fn read(dir: &Path) -> Result<Self, IdentityError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| IdentityError::Read { path, source })
        };
        Ok(Self {
            cert: read(CERT_FILE)?,
            key: read(KEY_FILE)?,
            bundle: read(BUNDLE_FILE)?,
        })
    }
}

/// A checked identity: a certificate chain with its matching key, its SPIFFE ID, and the
/// trust bundle peers are verified against.
#[derive(Debug)]
pub struct Identity {
    pub spiffe_id: String,
    pub key: Arc<CertifiedKey>,
    pub roots: Arc<RootCertStore>,
    /// The leaf certificate's serial number (hex), to tell rotations apart in logs.
    pub serial: String,
    /// The leaf certificate's expiry, in Unix seconds.
    pub not_after: i64,
}

fn certs(file: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem {
            file,
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Empty {
            file,
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

impl Identity {
    /// Checks the files: PEM that parses, a key that matches the leaf certificate (a
    /// half-written rotation fails here), a SPIFFE ID, and a non-empty trust bundle.
    pub fn parse(files: &Files, provider: &CryptoProvider) -> Result<Self, IdentityError> {
        let chain = certs(CERT_FILE, &files.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| IdentityError::Pem {
            file: KEY_FILE,
            why: e.to_string(),
        })?;
        let leaf = chain[0].clone();
        let key = CertifiedKey::from_der(chain, key, provider).map_err(IdentityError::Key)?;
        let spiffe_id = weir_model::spiffe::id_of(&leaf).ok_or(IdentityError::NoSpiffeId)?;
        let (_, x509) = x509_parser::parse_x509_certificate(&leaf)
            .map_err(|e| IdentityError::Cert(e.to_string()))?;
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(certs(BUNDLE_FILE, &files.bundle)?);
        if added == 0 {
            return Err(IdentityError::Empty {
                file: BUNDLE_FILE,
                what: "usable CA certificate",
            });
        }
        Ok(Self {
            spiffe_id,
            key: Arc::new(key),
            roots: Arc::new(roots),
            serial: x509.raw_serial_as_string(),
            not_after: x509.validity().not_after.timestamp(),
        })
    }
}
