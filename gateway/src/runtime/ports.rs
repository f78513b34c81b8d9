//! Listeners → ports: each port's listeners by hostname, its certificates by SNI and its
//! client certificate validation.
//!
//! A listener is not programmed when none of its certificates compiles or when the client
//! validation it asks for does not compile (serving without it would let unverified clients
//! in), as Envoy Gateway does with a listener it cannot program; the port's other listeners
//! keep serving. A listener is checked before anything of it is inserted, so a port that
//! only it would open is not opened.

use super::problems::{CERTIFICATE_SKIPPED, LISTENER_NOT_PROGRAMMED, Problems};
use super::{Entry, HostTable, ListenerRt, Port};
use crate::tls::{ClientAuth, PortCerts, ServedCert};
use pingora::utils::tls::CertKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use weir_model::{Listener, ListenerTls, ObjectName, Protocol, RouteEntry, Scheme};

/// What a listener needs from the rest of the compile.
pub(super) struct Shared<'a, E, P> {
    /// Compiles a virtual host's route entries.
    pub(super) entries: E,
    /// The index of a RateLimitPolicy, when it compiled.
    pub(super) policy: P,
    /// Each Gateway's compiled backend client certificate.
    pub(super) client_certs: &'a HashMap<&'a ObjectName, Option<Arc<CertKey>>>,
}

pub(super) fn compile<E, P>(
    listeners: &[Listener],
    mut shared: Shared<'_, E, P>,
    problems: &mut Problems,
) -> BTreeMap<u16, Port>
where
    E: FnMut(&[RouteEntry], &mut Problems) -> Vec<Entry>,
    P: FnMut(Option<&str>) -> Option<usize>,
{
    let mut ports: BTreeMap<u16, Port> = BTreeMap::new();
    for l in listeners {
        let what = format!("Gateway {} listener {}", l.gateway, l.name);
        if let Some(port) = ports.get(&l.port)
            && port.protocol != l.protocol
        {
            // The translation resolves protocol conflicts; a mismatch here is a bug there.
            let message = format!("port {} has both HTTP and HTTPS listeners", l.port);
            problems.add(what, message, LISTENER_NOT_PROGRAMMED);
            continue;
        }
        let mut tls = None;
        if let (Protocol::Https, Some(t)) = (l.protocol, &l.tls) {
            let decided = ports
                .get(&l.port)
                .and_then(|p| p.certs.as_ref())
                .is_some_and(|c| c.client_auth.is_some());
            match listener_tls(t, decided, &what, problems) {
                Some(compiled) => tls = Some(compiled),
                None => continue,
            }
        }
        let port = ports.entry(l.port).or_insert_with(|| Port {
            port: l.port,
            protocol: l.protocol,
            listeners: Vec::new(),
            by_host: HostTable::default(),
            certs: (l.protocol == Protocol::Https).then(PortCerts::default),
        });
        if let (Some(store), Some((certs, client_auth))) = (port.certs.as_mut(), tls) {
            store.add_listener(l.hostname.as_deref(), certs);
            if client_auth.is_some() {
                store.client_auth = client_auth;
            }
        }
        let mut hosts = HostTable::default();
        let mut vhosts = Vec::with_capacity(l.hosts.len());
        for vh in &l.hosts {
            hosts.insert(&vh.hostname, vhosts.len());
            vhosts.push((shared.entries)(&vh.routes, problems));
        }
        port.by_host
            .insert(l.hostname.as_deref().unwrap_or("*"), port.listeners.len());
        port.listeners.push(ListenerRt {
            gateway: l.gateway.to_string().into(),
            name: l.name.as_str().into(),
            scheme: match l.protocol {
                Protocol::Http => Scheme::Http,
                Protocol::Https => Scheme::Https,
            },
            port: l.port,
            rate_limit: (shared.policy)(l.rate_limit.as_deref()),
            mesh: l.mesh.clone(),
            backend_client_cert: shared.client_certs.get(&l.gateway).cloned().flatten(),
            hosts,
            vhosts,
        });
    }
    ports
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
