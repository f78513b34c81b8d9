//! Client certificate validation (Gateway `spec.tls.frontend`), read from the live runtime
//! at each handshake like the server certificates, so a CA change needs no rebind.
//!
//! Pingora builds a port's acceptor once; the verifier it gets defers every decision to the
//! port's compiled [`ClientAuth`] in whatever runtime is live. Validation is per port, as
//! the Gateway API defines it: rustls asks for a client certificate before it knows which
//! listener's hostname the client will use.

use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use std::sync::Arc;
use weir_model::ClientValidation;

/// A port's compiled client certificate validation.
#[derive(Debug)]
pub struct ClientAuth {
    verifier: Arc<dyn ClientCertVerifier>,
    optional: bool,
}

impl ClientAuth {
    pub fn compile(v: &ClientValidation) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(v.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("client validation CA: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("client validation CA: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if v.optional {
            builder = builder.allow_unauthenticated();
        }
        let verifier = builder
            .build()
            .map_err(|e| format!("client validation CA: {e}"))?;
        Ok(Self {
            verifier,
            optional: v.optional,
        })
    }
}

/// The verifier a port's acceptor holds for its whole life.
#[derive(Debug)]
pub struct PortClientVerifier {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub port: u16,
    /// For the signature checks, which do not depend on the CA.
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PortClientVerifier {
    pub fn new(runtime: Arc<ArcSwap<Runtime>>, port: u16) -> Self {
        Self {
            runtime,
            port,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }

    fn with_auth<T>(&self, f: impl FnOnce(Option<&ClientAuth>) -> T) -> T {
        let rt = self.runtime.load();
        let auth = rt
            .tls
            .ports
            .get(&self.port)
            .and_then(|c| c.client_auth.as_ref());
        f(auth)
    }
}

impl ClientCertVerifier for PortClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.with_auth(|a| a.is_some())
    }

    fn client_auth_mandatory(&self) -> bool {
        self.with_auth(|a| a.is_some_and(|a| !a.optional))
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would have to outlive the runtime they came from; clients with one
        // certificate (every sidecar) do not need them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.with_auth(|a| match a {
            Some(a) => a
                .verifier
                .verify_client_cert(end_entity, intermediates, now),
            None => Err(Error::General(
                "this port no longer validates client certificates".into(),
            )),
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
