//! SPIFFE identities on TLS connections: reading a peer's SPIFFE ID, and verifying a server
//! by its SPIFFE ID rather than a DNS name (SVIDs carry no DNS names).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use std::sync::Arc;

/// The SPIFFE ID in a certificate's URI SAN, if it has exactly one (the X.509-SVID rule).
pub fn id_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
        _ => None,
    });
    let id = ids.next()?;
    ids.next().is_none().then(|| id.to_string())
}

/// The namespace a Kubernetes workload's SPIFFE ID names: `spiffe://TD/ns/NS/...` → `NS`.
pub fn namespace_of(id: &str) -> Option<&str> {
    let mut parts = id.strip_prefix("spiffe://")?.split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

/// The namespace and service account of a Kubernetes workload's SPIFFE ID, exactly
/// `spiffe://TD/ns/NS/sa/SA`.
pub fn workload_of(id: &str) -> Option<(&str, &str)> {
    let mut parts = id.strip_prefix("spiffe://")?.split('/').skip(1);
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa), None) if !ns.is_empty() && !sa.is_empty() => {
            Some((ns, sa))
        }
        _ => None,
    }
}

/// Which SPIFFE IDs are accepted: exact IDs, or prefixes written with a trailing `*`
/// (`spiffe://cluster.local/ns/payments/*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    patterns: Vec<String>,
}

impl Allow {
    pub fn new(patterns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            patterns: patterns.into_iter().map(Into::into).collect(),
        }
    }

    pub fn permits(&self, id: &str) -> bool {
        self.patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => id.starts_with(prefix),
            None => id == p,
        })
    }
}

/// The one rule for admitting a mesh peer, client or server: its chain to the trust bundle
/// first (an ID is only worth reading from a certificate the CA signed), then exactly one
/// SPIFFE ID, then the allow-list. DNS names play no part: SVIDs carry none.
///
/// The chain check is webpki's client-certificate verification: SVIDs are issued for both
/// client and server use, and it checks the chain, validity and key usage without names.
#[derive(Debug, Clone)]
pub struct PeerCheck {
    chain: Arc<dyn ClientCertVerifier>,
    allow: Allow,
}

/// Why a peer was not admitted.
#[derive(Debug)]
pub enum Refused {
    /// The chain does not verify against the bundle.
    Chain(Error),
    /// The chain is good but the SPIFFE ID (if any) is not allowed.
    Identity(Option<String>),
}

impl PeerCheck {
    pub fn new(
        roots: Arc<rustls::RootCertStore>,
        allow: Allow,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let chain =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
        Ok(Self { chain, allow })
    }

    /// The admitted peer's SPIFFE ID.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<String, Refused> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(Refused::Chain)?;
        match id_of(end_entity) {
            Some(id) if self.allow.permits(&id) => Ok(id),
            id => Err(Refused::Identity(id)),
        }
    }

    /// webpki's verifier, for the handshake-signature checks every verifier delegates.
    pub fn chain(&self) -> &dyn ClientCertVerifier {
        &*self.chain
    }
}

/// Verifies a server by [`PeerCheck`], ignoring the DNS name the client dialled.
#[derive(Debug)]
pub struct ServerVerifier {
    check: PeerCheck,
}

impl ServerVerifier {
    pub fn new(
        roots: Arc<rustls::RootCertStore>,
        allow: Allow,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(Self {
            check: PeerCheck::new(roots, allow, provider)?,
        })
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.check.verify(end_entity, intermediates, now) {
            Ok(_) => Ok(ServerCertVerified::assertion()),
            Err(Refused::Chain(e)) => Err(e),
            Err(Refused::Identity(Some(id))) => {
                Err(Error::General(format!("peer {id} is not allowed")))
            }
            Err(Refused::Identity(None)) => {
                Err(Error::General("peer certificate has no SPIFFE ID".into()))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.check
            .chain()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.check
            .chain()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.check.chain().supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        None
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn workload_ids_name_their_namespace_and_service_account() {
        let id = "spiffe://cluster.local/ns/shop/sa/front";
        assert_eq!(namespace_of(id), Some("shop"));
        assert_eq!(workload_of(id), Some(("shop", "front")));
        assert_eq!(namespace_of("spiffe://td/ns/shop/other"), Some("shop"));
        assert_eq!(workload_of("spiffe://td/ns/shop/other"), None);
        assert_eq!(workload_of("spiffe://td/ns/shop/sa/a/b"), None);
        assert_eq!(workload_of("spiffe://td/ns/shop/sa/"), None);
        assert_eq!(namespace_of("spiffe://td/ns//sa/x"), None);
        assert_eq!(namespace_of("https://td/ns/shop"), None);
    }

    use super::*;

    #[test]
    fn allow_lists_match_exactly_or_by_prefix() {
        let allow = Allow::new(["spiffe://td/ns/a/sa/x", "spiffe://td/ns/b/*"]);
        assert!(allow.permits("spiffe://td/ns/a/sa/x"));
        assert!(!allow.permits("spiffe://td/ns/a/sa/xy"));
        assert!(allow.permits("spiffe://td/ns/b/sa/anything"));
        assert!(!allow.permits("spiffe://other/ns/b/sa/y"));
        assert!(!Allow::default().permits("spiffe://td/ns/a/sa/x"));
    }
}
