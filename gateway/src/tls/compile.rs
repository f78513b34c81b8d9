//! The TLS a config asks for, compiled: each HTTPS port's certificates by SNI and its client
//! certificate validation, and each Gateway's client certificate for TLS backends.
//!
//! A listener is not programmed when none of its certificates compiles or when the client
//! validation it asks for does not compile (serving without it would let unverified clients
//! in), as Envoy Gateway does with a listener it cannot program; the port's other listeners
//! keep serving. A listener is checked before anything of it is kept, so a port that only
//! it would open is not opened. [`TlsTable::programmed`] tells the routing tables which
//! listeners to leave out.

use super::upstream;
use super::{ClientAuth, PortCerts, ServedCert};
use crate::problems::{
    CERTIFICATE_SKIPPED, LISTENER_NOT_PROGRAMMED, NO_CLIENT_CERTIFICATE, Problems,
};
use pingora::utils::tls::CertKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use weir_model::{Config, ListenerTls, ObjectName, Protocol};

#[derive(Debug, Default)]
pub struct TlsTable {
    /// The certificates and client validation of each HTTPS port.
    pub ports: BTreeMap<u16, PortCerts>,
    /// Per listener of the config, in its order: whether it may be programmed.
    pub programmed: Vec<bool>,
    /// Each Gateway's `tls.backend.clientCertificateRef`, when it compiled.
    pub client_certs: HashMap<ObjectName, Option<Arc<CertKey>>>,
}

pub fn compile(config: &Config, problems: &mut Problems) -> TlsTable {
    let mut table = TlsTable {
        client_certs: client_certificates(config, problems),
        ..TlsTable::default()
    };
    // The protocol of each port, as its first programmed listener set it.
    let mut protocols: BTreeMap<u16, Protocol> = BTreeMap::new();
    for l in &config.listeners {
        let what = format!("Gateway {} listener {}", l.gateway, l.name);
        if protocols.get(&l.port).is_some_and(|p| *p != l.protocol) {
            // The translation resolves protocol conflicts; a mismatch here is a bug there.
            let message = format!("port {} has both HTTP and HTTPS listeners", l.port);
            problems.add(what, message, LISTENER_NOT_PROGRAMMED);
            table.programmed.push(false);
            continue;
        }
        let mut tls = None;
        if let (Protocol::Https, Some(t)) = (l.protocol, &l.tls) {
            let decided = table
                .ports
                .get(&l.port)
                .is_some_and(|c| c.client_auth.is_some());
            match listener_tls(t, decided, &what, problems) {
                Some(compiled) => tls = Some(compiled),
                None => {
                    table.programmed.push(false);
                    continue;
                }
            }
        }
        protocols.insert(l.port, l.protocol);
        table.programmed.push(true);
        if l.protocol == Protocol::Https {
            let store = table.ports.entry(l.port).or_default();
            if let Some((certs, client_auth)) = tls {
                store.add_listener(l.hostname.as_deref(), certs);
                if client_auth.is_some() {
                    store.client_auth = client_auth;
                }
            }
        }
    }
    table
}

/// Each Gateway's `tls.backend.clientCertificateRef`, compiled once. One that does not
/// compile leaves the Gateway's listeners without a client certificate, as an invalid
/// reference does in the translation; the Gateway keeps serving.
fn client_certificates(
    config: &Config,
    problems: &mut Problems,
) -> HashMap<ObjectName, Option<Arc<CertKey>>> {
    let mut certs = HashMap::new();
    for l in &config.listeners {
        let Some(cert) = &l.backend_client_certificate else {
            continue;
        };
        certs.entry(l.gateway.clone()).or_insert_with(|| {
            upstream::client_cert_key(cert)
                .map_err(|e| {
                    let object = format!("Gateway {}", l.gateway);
                    let message = format!("tls.backend.clientCertificateRef: {e}");
                    problems.add(object, message, NO_CLIENT_CERTIFICATE);
                })
                .ok()
        });
    }
    certs
}

/// An HTTPS listener's certificates, and its client validation when it is the first on its
/// port to ask for one (`decided` says an earlier listener did: validation is per port, and
/// the oldest Gateway's decides). `None` when the listener must not be programmed.
fn listener_tls(
    tls: &ListenerTls,
    decided: bool,
    what: &str,
    problems: &mut Problems,
) -> Option<(Vec<ServedCert>, Option<ClientAuth>)> {
    let client_auth = match (&tls.client_validation, decided) {
        (Some(v), false) => match ClientAuth::compile(v) {
            Ok(auth) => Some(auth),
            Err(e) => {
                problems.add(what.to_owned(), e, LISTENER_NOT_PROGRAMMED);
                return None;
            }
        },
        _ => None,
    };
    let mut certs = Vec::with_capacity(tls.certificates.len());
    let mut refused = Vec::new();
    for c in &tls.certificates {
        match ServedCert::compile(c) {
            Ok(cert) => certs.push(cert),
            Err(e) => refused.push(format!("certificate {e}")),
        }
    }
    let unserved = certs.is_empty() && !refused.is_empty();
    let effect = if unserved {
        LISTENER_NOT_PROGRAMMED
    } else {
        CERTIFICATE_SKIPPED
    };
    for message in refused {
        problems.add(what.to_owned(), message, effect);
    }
    if unserved {
        return None;
    }
    Some((certs, client_auth))
}
