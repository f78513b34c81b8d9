//! The subjectAltName check of a BackendTLSPolicy, which Pingora's connector cannot make.
//!
//! Pingora verifies the chain of every upstream connection (with hostname checks off for
//! these backends) and keeps the SHA-256 of the leaf certificate in the connection's
//! digest, but not the certificate. So Weir checks certificates by that hash: a leaf it has
//! not judged yet is fetched once with a handshake of its own to the same address, whose
//! verifier checks the chain and the names and records the verdict under the leaf's hash.
//! Every request then checks its connection's hash against the verdicts before anything is
//! sent: one map lookup, and one extra handshake per new certificate (rotation), not per
//! connection.

use parking_lot::RwLock;
use pingora::tls::hash_certificate;
use pingora::utils::tls::CertKey;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use weir_model::SubjectAltName;
use x509_parser::extensions::GeneralName;

/// Verdicts kept per policy; more distinct certificates than this means something churns,
/// and the map starts over rather than grow.
const MAX_VERDICTS: usize = 1024;
/// Time for the checking handshake, connect included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

type Verdict = Result<(), Arc<str>>;

#[derive(Debug)]
pub struct SanCheck {
    sni: ServerName<'static>,
    judge: Arc<Judge>,
    probe: Arc<ClientConfig>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl SanCheck {
    pub fn new(
        sni: &str,
        names: Vec<SubjectAltName>,
        roots: Arc<RootCertStore>,
    ) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("certificate verifier: {e}"))?;
        let judge = Arc::new(Judge {
            webpki,
            names,
            verdicts: RwLock::new(HashMap::new()),
        });
        let probe = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(judge.clone())
            .with_no_client_auth();
        Ok(Self {
            sni: ServerName::try_from(sni.to_string()).map_err(|e| format!("SNI {sni:?}: {e}"))?,
            judge,
            probe: Arc::new(probe),
            provider,
        })
    }

    /// The checking handshake's config: it presents `client` as the data connections do,
    /// so that a backend requiring client certificates (a STRICT sidecar) sees its usual
    /// peer, not a refusal. Health checks of the backend use it too.
    pub fn client_config(&self, client: Option<&CertKey>) -> Arc<ClientConfig> {
        let with_client = client
            .and_then(super::probe::identity)
            .and_then(|(chain, key)| {
                ClientConfig::builder_with_provider(self.provider.clone())
                    .with_safe_default_protocol_versions()
                    .ok()?
                    .dangerous()
                    .with_custom_certificate_verifier(self.judge.clone())
                    .with_client_auth_cert(chain, key)
                    .ok()
            });
        with_client.map_or_else(|| self.probe.clone(), Arc::new)
    }

    /// Whether the leaf certificate whose SHA-256 is `leaf` (from the connection's digest)
    /// carries one of the names. A certificate not judged yet is fetched from `addr`.
    pub async fn verify(&self, addr: SocketAddr, leaf: &[u8], client: Option<&CertKey>) -> Verdict {
        if let Some(v) = self.judge.verdict(leaf) {
            return v;
        }
        let config = self.client_config(client);
        // The outcome of this handshake does not matter: the verifier records its verdict
        // either way, before any client certificate is asked for.
        let probe = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let connector = pingora::tls::TlsConnector::from(config);
            connector.connect(self.sni.clone(), tcp).await.map(drop)
        };
        let _ = tokio::time::timeout(PROBE_TIMEOUT, probe).await;
        self.judge.verdict(leaf).unwrap_or_else(|| {
            Err("could not fetch the certificate again to check its names".into())
        })
    }
}

/// Verifies like the connection did, then the names; remembers each verdict.
#[derive(Debug)]
struct Judge {
    webpki: Arc<WebPkiServerVerifier>,
    names: Vec<SubjectAltName>,
    /// Read on every request over a checked connection, written once per new certificate:
    /// readers must not queue behind one another.
    verdicts: RwLock<HashMap<Vec<u8>, Verdict>>,
}

impl Judge {
    fn verdict(&self, leaf: &[u8]) -> Option<Verdict> {
        self.verdicts.read().get(leaf).cloned()
    }

    fn judge(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Verdict {
        let chain = |name: &ServerName<'_>| {
            self.webpki
                .verify_server_cert(leaf, intermediates, name, &[], now)
        };
        // The chain first, with a name nothing matches: only a name mismatch may fail.
        let nobody = ServerName::try_from("weir.invalid").map_err(|e| e.to_string())?;
        match chain(&nobody) {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e.to_string().into()),
        }
        let carried = carried_names(leaf);
        let matched = self.names.iter().any(|n| match n {
            // rustls's own matching, wildcards included.
            SubjectAltName::Hostname(h) => {
                ServerName::try_from(h.as_str()).is_ok_and(|name| chain(&name).is_ok())
            }
            SubjectAltName::Uri(u) => carried
                .iter()
                .any(|c| c.strip_prefix("URI:") == Some(u.as_str())),
        });
        if matched {
            return Ok(());
        }
        Err(format!(
            "the certificate matches none of the subjectAltNames {:?}; it carries {:?}",
            self.names, carried
        )
        .into())
    }
}

/// The leaf's SANs as `DNS:name` and `URI:uri`, for matching and messages.
fn carried_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
            GeneralName::URI(u) => Some(format!("URI:{u}")),
            _ => None,
        })
        .collect()
}

impl ServerCertVerifier for Judge {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.judge(end_entity, intermediates, now);
        {
            let mut verdicts = self.verdicts.write();
            if verdicts.len() >= MAX_VERDICTS {
                verdicts.clear();
            }
            verdicts.insert(hash_certificate(end_entity), verdict.clone());
        }
        verdict
            .map(|()| ServerCertVerified::assertion())
            .map_err(|e| rustls::Error::General(e.to_string()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
