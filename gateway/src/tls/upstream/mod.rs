//! TLS to backends (BackendTLSPolicy), compiled once per config: the SNI, the trust anchors
//! in the form Pingora's peer options take, the subjectAltName check, the client
//! certificate of the listener's Gateway, and the ALPN.
//!
//! Pingora's rustls connector verifies the chain and a DNS name (the SNI), and nothing
//! else. When a policy lists subjectAltNames the certificate must match one of those
//! instead, URIs (SPIFFE IDs) included, so Pingora is told to check the chain only and
//! [`check::SanCheck`] checks the names before a request is sent on the connection.

pub mod check;
pub mod probe;

use check::SanCheck;
use pingora::prelude::HttpPeer;
use pingora::protocols::Digest;
use pingora::protocols::tls::CaType;
use pingora::utils::tls::{CertKey, WrappedX509, parse_x509};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use weir_model::{BackendTls, Certificate, Trust};

/// `appProtocol` values that ask for HTTP/2: over TLS it is negotiated by ALPN.
const H2_APP_PROTOCOLS: [&str; 4] = ["kubernetes.io/h2c", "h2c", "h2", "grpc"];

#[derive(Debug)]
pub struct BackendTlsRt {
    /// `namespace/name` of the policy, for logs.
    pub policy: Arc<str>,
    pub sni: String,
    /// The policy's CA certificates; `None` for the platform roots, which Pingora's
    /// connector loads once at start.
    ca: Option<Arc<CaType>>,
    /// The policy's CA certificates as rustls takes them (health checks); `None` for the
    /// platform roots.
    roots: Option<Arc<RootCertStore>>,
    /// Set when the certificate must carry one of the policy's subjectAltNames.
    pub san: Option<Arc<SanCheck>>,
    /// Why the policy cannot be used: its requests fail (502) without connecting.
    pub invalid: Option<Arc<str>>,
    /// Offer only `h2` by ALPN (else `http/1.1`).
    pub h2: bool,
    /// Pingora pools connections by address, SNI and client certificate, not by CA: this
    /// keeps connections made under different trust apart.
    group_key: u64,
}

impl BackendTlsRt {
    /// `system_roots` is called at most once, for SAN checks against the platform roots.
    pub fn compile(
        tls: &BackendTls,
        app_protocol: Option<&str>,
        system_roots: &mut dyn FnMut() -> Arc<RootCertStore>,
    ) -> Result<Self, String> {
        let (ca, roots, invalid) = match &tls.trust {
            Trust::System => (None, None, None),
            Trust::Pem(pem) => {
                let ders = certificates(pem)?;
                let mut store = RootCertStore::empty();
                for d in &ders {
                    store
                        .add(d.clone())
                        .map_err(|e| format!("CA certificate: {e}"))?;
                }
                let wrapped: Vec<WrappedX509> = ders
                    .iter()
                    .map(|d| WrappedX509::new(d.to_vec(), parse_x509))
                    .collect();
                (Some(Arc::from(wrapped)), Some(Arc::new(store)), None)
            }
            Trust::Invalid(why) => (None, None, Some(Arc::from(why.as_str()))),
        };
        let san = if tls.subject_alt_names.is_empty() || invalid.is_some() {
            None
        } else {
            let roots = roots.clone().unwrap_or_else(&mut *system_roots);
            Some(Arc::new(SanCheck::new(
                &tls.hostname,
                tls.subject_alt_names.clone(),
                roots,
            )?))
        };
        Ok(Self::assemble(tls, app_protocol, ca, roots, san, invalid))
    }

    /// A policy the gateway cannot use (its CA bundle or names did not compile): requests
    /// fail (502) without connecting, as for a policy the translation found invalid.
    /// Falling back to cleartext or to unverified TLS would expose the backend's traffic.
    pub fn unusable(tls: &BackendTls, app_protocol: Option<&str>, why: &str) -> Self {
        Self::assemble(tls, app_protocol, None, None, None, Some(Arc::from(why)))
    }

    fn assemble(
        tls: &BackendTls,
        app_protocol: Option<&str>,
        ca: Option<Arc<CaType>>,
        roots: Option<Arc<RootCertStore>>,
        san: Option<Arc<SanCheck>>,
        invalid: Option<Arc<str>>,
    ) -> Self {
        let mut group = std::collections::hash_map::DefaultHasher::new();
        tls.hash(&mut group);
        Self {
            policy: tls.policy.to_string().into(),
            sni: tls.hostname.clone(),
            ca,
            roots,
            san,
            invalid,
            h2: app_protocol.is_some_and(|p| H2_APP_PROTOCOLS.contains(&p)),
            group_key: group.finish(),
        }
    }

    /// The peer for one connection attempt to `addr`, or why the policy cannot be used.
    pub fn try_peer(
        &self,
        addr: SocketAddr,
        client: Option<&Arc<CertKey>>,
    ) -> Result<HttpPeer, Arc<str>> {
        match &self.invalid {
            Some(why) => Err(why.clone()),
            None => Ok(self.peer(addr, client)),
        }
    }

    /// Before a request goes out on a TLS connection whose policy lists subjectAltNames:
    /// the certificate, identified by the connection's digest, must carry one (Pingora
    /// checked its chain). `None` when the policy lists none. Checked on reused connections
    /// too, which costs one map lookup and keeps a connection that failed once from ever
    /// carrying a request.
    pub async fn verify_names(
        &self,
        peer: &HttpPeer,
        digest: Option<&Digest>,
        client: Option<&CertKey>,
    ) -> Option<Result<(), String>> {
        let check = self.san.as_ref()?;
        let leaf = digest
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|s| s.cert_digest.as_slice())
            .filter(|h| !h.is_empty());
        Some(match (leaf, peer._address.as_inet()) {
            (Some(leaf), Some(addr)) => check
                .verify(*addr, leaf, client)
                .await
                .map_err(|why| why.to_string()),
            _ => Err("the connection shows no certificate".into()),
        })
    }

    /// The peer for one connection attempt to `addr`.
    pub fn peer(&self, addr: SocketAddr, client: Option<&Arc<CertKey>>) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, self.sni.clone());
        peer.options.verify_cert = true;
        // With subjectAltNames the SNI is not the name to check ("MUST NOT be used for
        // authentication", says the spec): the chain is Pingora's, the names ours.
        peer.options.verify_hostname = self.san.is_none();
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = client.cloned();
        peer.group_key = self.group_key;
        // HTTP/2 (`h2`) is set by the caller with the stream limits of every h2 upstream.
        peer
    }
}

fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    for d in &ders {
        // Pingora's parser panics on what it cannot read: refuse it here instead.
        x509_parser::parse_x509_certificate(d).map_err(|e| format!("not a certificate: {e}"))?;
    }
    if ders.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    Ok(ders)
}

/// A Gateway's client certificate as Pingora presents it: DER chain and DER key.
pub fn client_cert_key(cert: &Certificate) -> Result<Arc<CertKey>, String> {
    let chain = certificates(&cert.cert_pem)
        .map_err(|e| format!("client certificate {}: {e}", cert.secret))?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| format!("client certificate {}: key: {e}", cert.secret))?;
    // Pingora turns the bytes back into a key with `try_into().unwrap()` per connection;
    // only DER that round-trips may reach it.
    let der = key.secret_der().to_vec();
    PrivateKeyDer::try_from(der.clone())
        .map_err(|e| format!("client certificate {}: key: {e}", cert.secret))?;
    Ok(Arc::new(CertKey::new(
        chain.iter().map(|c| c.to_vec()).collect(),
        der,
    )))
}

/// The platform's root certificates, as Pingora's connector loads them.
pub fn system_roots() -> Arc<RootCertStore> {
    let mut store = RootCertStore::empty();
    if let Err(e) = pingora::tls::load_platform_certs_incl_env_into_store(&mut store) {
        tracing::warn!(error = %e, "loading the platform's root certificates");
    }
    Arc::new(store)
}
