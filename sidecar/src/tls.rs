//! Inbound TLS: one rustls server config per inbound port, rebuilt from each new identity
//! and swapped in atomically, and the client verifier that enforces the allow-list.
//!
//! The allow-list is checked inside the handshake, by a [`ClientCertVerifier`] wrapped
//! around webpki's: a peer whose SPIFFE ID is not admitted never completes a handshake, so
//! it never reaches HTTP, and the refusal is logged with the ID it presented. Each port has
//! its own verifier so that the refusal is counted under that port's label.

use crate::identity::{Identity, IdentityError};
use crate::metrics::{Metrics, Refusal};
use arc_swap::ArcSwapOption;
use prometheus::IntCounter;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ServerConfig;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::SingleCertAndKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use std::sync::Arc;
use weir_model::spiffe::{Allow, PeerCheck, Refused};

/// The error a refused identity fails the handshake with. webpki never returns it, so
/// the accept loop can tell an allow-list refusal (already counted here) from others.
pub const REFUSED: Error =
    Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure);

/// The TLS side of one inbound port.
#[derive(Debug)]
pub struct PortTls {
    port: u16,
    allow: Allow,
    refused: IntCounter,
    current: ArcSwapOption<ServerConfig>,
}

impl PortTls {
    pub fn new(port: u16, allow: Allow, metrics: &Metrics) -> Self {
        Self {
            port,
            allow,
            refused: metrics.refused(port, Refusal::Identity),
            current: ArcSwapOption::empty(),
        }
    }

    /// The config for new handshakes, or `None` before the first identity is loaded.
    /// One atomic load: handshakes in progress keep the config they started with.
    pub fn current(&self) -> Option<Arc<ServerConfig>> {
        self.current.load_full()
    }

    pub fn install(&self, config: Arc<ServerConfig>) {
        self.current.store(Some(config));
    }

    /// A server config presenting `identity` and requiring an admitted client SVID.
    pub fn build(
        &self,
        identity: &Identity,
        provider: &Arc<CryptoProvider>,
    ) -> Result<ServerConfig, IdentityError> {
        let tls = |e: &dyn std::fmt::Display| IdentityError::Tls(e.to_string());
        let check = PeerCheck::new(identity.roots.clone(), self.allow.clone(), provider.clone())
            .map_err(|e| tls(&e))?;
        let verifier = AllowVerifier {
            check,
            port: self.port,
            refused: self.refused.clone(),
        };
        // TLS 1.3 only: every mesh peer is rustls, and 1.3 encrypts the client certificate,
        // so on-path observers cannot read who calls whom.
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls(&e))?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.key.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The mesh's [`PeerCheck`], with refusals logged and counted under this port.
#[derive(Debug)]
struct AllowVerifier {
    check: PeerCheck,
    port: u16,
    refused: IntCounter,
}

impl ClientCertVerifier for AllowVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.check.chain().root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match self.check.verify(end_entity, intermediates, now) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(Refused::Chain(e)) => Err(e),
            Err(Refused::Identity(id)) => {
                // The ID is the one presented; possession of its key is proven later in the
                // handshake, so a log line here names a claim, which is what an operator
                // needs to find the caller to allow or to chase.
                let peer = id.as_deref().unwrap_or("<no SPIFFE ID>");
                tracing::warn!(port = self.port, peer, "refused mTLS peer: not in --allow");
                self.refused.inc();
                Err(REFUSED)
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
}

/// Whether a failed handshake was an allow-list refusal (see [`REFUSED`]).
pub fn is_refusal(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<Error>())
        .is_some_and(|e| *e == REFUSED)
}
