//! A trust-domain CA and SPIFFE X.509 SVIDs, for local runs and tests: `weir-controller ca
//! init` and `ca issue`. In a cluster, cert-manager's csi-driver-spiffe issues SVIDs; the
//! files written here use its layout (`tls.crt`, `tls.key`, `ca.crt`), so a sidecar reads
//! both alike.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a Weir trust-domain CA (no spiffe:// URI SAN)")]
    NotACa(String),
    #[error("cannot make a certificate: {0}")]
    Cert(#[from] rcgen::Error),
}

/// A trust domain's CA: its certificate and key (PEM), and the trust domain.
#[derive(Debug, Clone)]
pub struct Ca {
    pub trust_domain: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// An SVID: the certificate and key (PEM) of one workload identity.
#[derive(Debug, Clone)]
pub struct Svid {
    pub spiffe_id: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// SPIFFE trust domains: lowercase letters, digits, `.`, `-` and `_`.
fn check_trust_domain(td: &str) -> Result<(), CaError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    ok.then_some(()).ok_or(CaError::Invalid {
        what: "trust domain",
        value: td.into(),
        why: "use lowercase letters, digits, '.', '-' and '_'",
    })
}

/// Namespaces and ServiceAccounts are DNS labels or subdomains.
fn check_name(what: &'static str, name: &str) -> Result<(), CaError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-".contains(&b))
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    ok.then_some(()).ok_or(CaError::Invalid {
        what,
        value: name.into(),
        why: "not a Kubernetes name (lowercase letters, digits, '-' and '.')",
    })
}

/// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`, the identity Kubernetes workloads get.
pub fn spiffe_id(trust_domain: &str, ns: &str, sa: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}")
}

fn validity(params: &mut CertificateParams, hours: i64) {
    // A little back-dating absorbs clock skew between the issuer and its peers.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::hours(hours);
}

impl Ca {
    /// A new CA for `trust_domain`, valid `days`.
    pub fn init(trust_domain: &str, days: u32) -> Result<Self, CaError> {
        check_trust_domain(trust_domain)?;
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("weir {trust_domain} CA"));
        let uri = format!("spiffe://{trust_domain}");
        params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, i64::from(days) * 24);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            trust_domain: trust_domain.into(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Reads `ca.crt` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_pem = read(&dir.join("ca.crt"))?;
        let key_pem = read(&dir.join("ca.key"))?;
        let trust_domain = trust_domain_of(&cert_pem)
            .ok_or_else(|| CaError::NotACa(dir.join("ca.crt").display().to_string()))?;
        Ok(Self {
            trust_domain,
            cert_pem,
            key_pem,
        })
    }

    /// Writes `ca.crt` and `ca.key` (owner-only) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), CaError> {
        write(&dir.join("ca.crt"), &self.cert_pem, false)?;
        write(&dir.join("ca.key"), &self.key_pem, true)
    }

    /// An SVID for ServiceAccount `ns/sa`, valid `hours`: a client and server certificate
    /// whose only name is its SPIFFE ID, as the SPIFFE X.509-SVID spec asks.
    pub fn issue(&self, ns: &str, sa: &str, hours: u32) -> Result<Svid, CaError> {
        check_name("namespace", ns)?;
        check_name("service account", sa)?;
        let id = spiffe_id(&self.trust_domain, ns, sa);
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.clone().try_into()?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, i64::from(hours));
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, KeyPair::from_pem(&self.key_pem)?)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Svid {
            spiffe_id: id,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Svid {
    /// The SVID as a `kubernetes.io/tls` Secret `secret`, and the trust bundle as a
    /// ConfigMap `bundle` (key `ca.crt`), both in `namespace`: what a Gateway's
    /// `certificateRefs`, `clientCertificateRef` and CA references name. Printed at install
    /// time, so that no private key is ever committed.
    pub fn manifests(&self, ca: &Ca, namespace: &str, secret: &str, bundle: &str) -> String {
        let mut out = format!(
            "# {} (made by `weir-controller ca manifests`; do not commit)\n",
            self.spiffe_id
        );
        out += &crate::cli::certs::secret_yaml(secret, namespace, &self.cert_pem, &self.key_pem);
        out += &format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {bundle}\n  namespace: {namespace}\ndata:\n  ca.crt: |\n"
        );
        for l in ca.cert_pem.lines() {
            out += &format!("    {l}\n");
        }
        out
    }

    /// Writes the csi-driver-spiffe layout into `dir`: `tls.crt`, `tls.key` (owner-only) and
    /// the trust bundle `ca.crt`. Each file is replaced by a rename, so that a watching
    /// sidecar never reads half a file.
    pub fn write(&self, dir: &Path, ca: &Ca) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
        write(&dir.join("ca.crt"), &ca.cert_pem, false)?;
        write(&dir.join("tls.key"), &self.key_pem, true)?;
        write(&dir.join("tls.crt"), &self.cert_pem, false)
    }
}

/// The trust domain named by a CA certificate's `spiffe://` URI SAN.
pub fn trust_domain_of(cert_pem: &str) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => u
            .strip_prefix("spiffe://")
            .map(|td| td.trim_end_matches('/').to_string()),
        _ => None,
    })
}

fn io(path: &Path, source: std::io::Error) -> CaError {
    CaError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|e| io(path, e))
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    f.write_all(text.as_bytes()).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}
