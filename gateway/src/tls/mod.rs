//! TLS, both ways.
//!
//! - Termination (here and [`client_auth`]): certificates chosen by SNI across every HTTPS
//!   listener on a port, and client certificate validation, read from the live runtime at
//!   each handshake so that a certificate change needs no rebind.
//! - [`upstream`]: TLS to backends (BackendTLSPolicy), health probes included.
//! - [`compile`]: what a config asks for of both, compiled.

mod client_auth;
mod compile;
pub mod upstream;

pub use client_auth::{ClientAuth, PortClientVerifier};
pub use compile::{TlsTable, compile};

use crate::route::HostTable;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::any::Any;
use std::sync::Arc;
use weir_model::Certificate;

/// A certificate ready to serve, with the DNS names it is valid for.
#[derive(Debug)]
pub struct ServedCert {
    pub key: Arc<CertifiedKey>,
    names: Vec<String>,
}

impl ServedCert {
    pub fn compile(c: &Certificate) -> Result<Self, String> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", c.secret))?;
        let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
            .map_err(|e| format!("{}: {e}", c.secret))?;
        let names = chain
            .first()
            .map(|leaf| dns_names(leaf))
            .unwrap_or_default();
        let key = CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
            .map_err(|e| format!("{}: {e}", c.secret))?;
        Ok(Self {
            key: Arc::new(key),
            names,
        })
    }

    fn covers(&self, sni: &str) -> bool {
        self.names.iter().any(|n| match n.strip_prefix('*') {
            Some(suffix) => sni.ends_with(suffix) && !sni[..sni.len() - suffix.len()].contains('.'),
            None => n == sni,
        })
    }
}

fn dns_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(leaf.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::DNSName(n) => Some(n.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        // Legacy certificates carry the name only in the subject CN.
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    names
}

/// The certificates of one port: per listener, in certificateRefs order.
#[derive(Debug, Default)]
pub struct PortCerts {
    /// Listener index by listener hostname (`*` for none).
    by_host: HostTable<usize>,
    certs: Vec<Vec<ServedCert>>,
    /// Client certificate validation for the whole port (Gateway `spec.tls.frontend`).
    pub client_auth: Option<ClientAuth>,
}

impl PortCerts {
    pub fn add_listener(&mut self, hostname: Option<&str>, certs: Vec<ServedCert>) {
        self.by_host
            .insert(hostname.unwrap_or("*"), self.certs.len());
        self.certs.push(certs);
    }

    /// The listener the SNI belongs to, and the certificate for it: the first of that
    /// listener's certificates valid for the name, else its first. Without SNI, the
    /// listener without hostname serves, else the first listener.
    pub fn select(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let listener = match sni {
            Some(name) => *self.by_host.get(name)?,
            None => self.by_host.get("").copied().unwrap_or(0),
        };
        let certs = self.certs.get(listener)?;
        let cert = sni
            .and_then(|name| certs.iter().find(|c| c.covers(name)))
            .or_else(|| certs.first())?;
        Some(cert.key.clone())
    }
}

/// Resolves certificates for one port from whatever runtime is live.
#[derive(Debug)]
pub struct SniResolver {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub port: u16,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.runtime
            .load()
            .tls
            .ports
            .get(&self.port)?
            .select(hello.server_name())
    }
}

/// What the HTTP layer learns about a TLS connection.
#[derive(Debug, Clone)]
pub struct ConnTls {
    /// The SNI, lower-cased.
    pub sni: Option<String>,
    /// The SPIFFE ID of a client certificate, as a header value (it is passed on in
    /// `x-weir-caller-identity`, and made once per connection rather than per request).
    /// Only listeners that validate client certificates (`spec.tls.frontend`) ask for one,
    /// so a present ID was verified.
    pub peer_id: Option<http::HeaderValue>,
}

impl ConnTls {
    /// The namespace in the peer's SPIFFE ID (`spiffe://td/ns/<ns>/sa/<sa>`).
    pub fn peer_namespace(&self) -> Option<&str> {
        weir_model::spiffe::namespace_of(self.peer_id.as_ref()?.to_str().ok()?)
    }
}

/// Stores the SNI and the peer's identity in the connection's digest, where the proxy
/// finds them per request.
#[derive(Debug)]
pub struct RecordSni;

#[async_trait]
impl TlsAccept for RecordSni {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let peer_id = tls
            .peer_certificate_der()
            .and_then(|der| weir_model::spiffe::id_of(&CertificateDer::from(der)))
            .and_then(|id| http::HeaderValue::from_str(&id).ok());
        Some(Arc::new(ConnTls {
            sni: tls.server_name().map(str::to_ascii_lowercase),
            peer_id,
        }))
    }
}
