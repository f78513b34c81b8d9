//! TLS for the active health checks of a backend with a BackendTLSPolicy: the probe
//! verifies the backend as the data connections do (the chain, then the hostname or the
//! policy's subjectAltNames) and presents the same client certificate.
//!
//! Without it a probe spoke plaintext to a TLS port, failed, and marked every endpoint of
//! such a backend unhealthy; in the mesh, where every backend is a callee's sidecar, that
//! left zone affinity no way to learn which zones were healthy.

use super::BackendTlsRt;
use pingora::utils::tls::CertKey;
use rustls::client::WebPkiServerVerifier;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// How a health probe reaches one TLS backend.
#[derive(Debug, Clone)]
pub struct ProbeTls {
    /// The handshake's config, or why the policy cannot be used (every probe then fails,
    /// as every request does).
    pub config: Result<Arc<ClientConfig>, Arc<str>>,
    pub sni: ServerName<'static>,
    /// Changes when the trust or the client certificate does, so that a config swap
    /// restarts the probes that must change and leaves the others running.
    pub key: u64,
}

impl PartialEq for ProbeTls {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

/// A client certificate as rustls presents it.
pub fn identity(
    client: &CertKey,
) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let mut chain = vec![CertificateDer::from(
        client.leaf().borrow_raw_cert().clone(),
    )];
    chain.extend(
        client
            .intermediates()
            .into_iter()
            .map(|c| CertificateDer::from(c.borrow_raw_cert().clone())),
    );
    let key = PrivateKeyDer::try_from(client.key().clone()).ok()?;
    Some((chain, key))
}

impl BackendTlsRt {
    /// The probe's TLS, presenting `client` (the backend client certificate of the
    /// Gateways). `system_roots` is called only for a hostname check on platform roots.
    pub fn probe(
        &self,
        client: Option<&CertKey>,
        system_roots: &mut dyn FnMut() -> Arc<RootCertStore>,
    ) -> ProbeTls {
        let mut key = std::collections::hash_map::DefaultHasher::new();
        self.group_key.hash(&mut key);
        client.map(|c| c.leaf().borrow_raw_cert()).hash(&mut key);
        let sni = ServerName::try_from(self.sni.clone())
            .unwrap_or_else(|_| ServerName::try_from("invalid.invalid").expect("a DNS name"));
        let config = match (&self.invalid, &self.san) {
            (Some(why), _) => Err(why.clone()),
            // The names are checked by the same verifier as the data connections' check.
            (None, Some(san)) => Ok(san.client_config(client)),
            (None, None) => {
                let roots = self.roots.clone().unwrap_or_else(system_roots);
                hostname_checked(roots, client).map_err(Arc::from)
            }
        };
        ProbeTls {
            config,
            sni,
            key: key.finish(),
        }
    }
}

/// A config that checks the chain against `roots` and the SNI as the hostname, as Pingora
/// does for the data connections.
fn hostname_checked(
    roots: Arc<RootCertStore>,
    client: Option<&CertKey>,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| format!("certificate verifier: {e}"))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_webpki_verifier(verifier);
    let config = match client.and_then(identity) {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
