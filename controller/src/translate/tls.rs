//! Gateway references to TLS Secrets → PEM certificates (listener `certificateRefs`, and
//! `tls.backend.clientCertificateRef`), with the Gateway API's reasons for each way a
//! reference can fail.

use super::index::{GATEWAY_GROUP, Index, RefEnd};
use super::status::{Outcome, reason};
use gateway_api::experimental::gateways::GatewayListenersTlsCertificateRefs;
use k8s_openapi::api::core::v1::Secret;
use rustls::crypto::ring::default_provider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use weir_model::{Certificate, ObjectName};

const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Resolves every reference. Valid certificates are returned even when others fail, so that
/// one bad Secret does not take down the hostnames the good ones serve.
pub(crate) fn resolve_certificates(
    idx: &Index<'_>,
    gateway_ns: &str,
    refs: &[GatewayListenersTlsCertificateRefs],
) -> (Vec<Certificate>, Vec<Outcome>) {
    let mut certs = Vec::new();
    let mut problems = Vec::new();
    for r in refs {
        let r = SecretRef {
            field: "certificateRef",
            group: r.group.as_deref(),
            kind: r.kind.as_deref(),
            name: &r.name,
            namespace: r.namespace.as_deref(),
            invalid: reason::INVALID_CERTIFICATE_REF,
        };
        match resolve_secret(idx, gateway_ns, &r) {
            Ok(c) => certs.push(c),
            Err(p) => problems.push(p),
        }
    }
    (certs, problems)
}

/// A Gateway's reference to a `kubernetes.io/tls` Secret: a listener certificate, or the
/// client certificate it presents to backends.
pub(crate) struct SecretRef<'a> {
    /// The field, for messages.
    pub field: &'static str,
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    /// The reason for a reference that resolves to nothing usable.
    pub invalid: &'static str,
}

pub(crate) fn resolve_secret(
    idx: &Index<'_>,
    gateway_ns: &str,
    r: &SecretRef<'_>,
) -> Result<Certificate, Outcome> {
    let group = r.group.unwrap_or("");
    let kind = r.kind.unwrap_or("Secret");
    let ns = r.namespace.unwrap_or(gateway_ns);
    let what = format!("{} {ns}/{}", r.field, r.name);
    // A refused cross-namespace reference is reported as such whether or not the target
    // exists, so that a Gateway cannot probe other namespaces.
    let from = RefEnd {
        group: GATEWAY_GROUP,
        kind: "Gateway",
        namespace: gateway_ns,
    };
    let to = RefEnd {
        group,
        kind,
        namespace: ns,
    };
    if !idx.ref_permitted(from, to, r.name) {
        return Err(Outcome::new(
            reason::REF_NOT_PERMITTED,
            format!(
                "{what}: no ReferenceGrant in namespace {ns} allows Gateways from {gateway_ns} to use it"
            ),
        ));
    }
    if !(group.is_empty() || group == "core") || kind != "Secret" {
        return Err(Outcome::new(
            r.invalid,
            format!(
                "{what}: unsupported kind {kind:?} in group {group:?}; only core Secrets are supported"
            ),
        ));
    }
    let invalid = |m: String| Outcome::new(r.invalid, format!("{what}: {m}"));
    let secret = idx
        .secret(ns, r.name)
        .ok_or_else(|| invalid("Secret not found".into()))?;
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    if type_ != TLS_SECRET_TYPE {
        return Err(invalid(format!(
            "Secret has type {type_:?}, not {TLS_SECRET_TYPE:?}"
        )));
    }
    let cert =
        secret_field(secret, "tls.crt").ok_or_else(|| invalid("Secret has no tls.crt".into()))?;
    let key =
        secret_field(secret, "tls.key").ok_or_else(|| invalid("Secret has no tls.key".into()))?;
    validate_pair(&cert, &key).map_err(invalid)?;
    Ok(Certificate {
        secret: ObjectName::new(ns, r.name),
        cert_pem: String::from_utf8(cert)
            .map_err(|_| invalid("tls.crt is not UTF-8 PEM".into()))?,
        key_pem: String::from_utf8(key).map_err(|_| invalid("tls.key is not UTF-8 PEM".into()))?,
    })
}

/// A Secret's key. `stringData` wins over `data`, as the API server merges them on write.
pub(crate) fn secret_field(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|s| s.as_bytes().to_vec())
        .or_else(|| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| b.0.clone())
        })
}

/// Checks that the PEM parses, the key is usable, and the key belongs to the leaf
/// certificate: what rustls would refuse at load time is refused here, with a reason.
fn validate_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no CERTIFICATE block".into());
    }
    for der in &chain {
        x509(der).map_err(|e| format!("tls.crt {e}"))?;
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("tls.key holds no usable private key: {e}"))?;
    CertifiedKey::from_der(chain, key, &default_provider())
        .map_err(|e| format!("certificate and key are not a valid pair: {e}"))?;
    Ok(())
}

/// Parses a certificate as the gateway does before handing it to Pingora (whose parser
/// panics on what it cannot read), which is stricter than webpki: a certificate only
/// webpki accepts would pass here and fail in every gateway.
fn x509(der: &CertificateDer<'_>) -> Result<(), String> {
    x509_parser::parse_x509_certificate(der)
        .map(|_| ())
        .map_err(|e| format!("holds a certificate that does not parse: {e}"))
}

/// The bundle as text, once every certificate in it parses as a trust anchor.
pub(crate) fn check_bundle(bytes: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "ca.crt is not UTF-8 PEM".to_string())?;
    let mut store = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(bytes) {
        let der = der.map_err(|e| format!("ca.crt is not valid PEM: {e}"))?;
        x509(&der).map_err(|e| format!("ca.crt {e}"))?;
        store
            .add(der)
            .map_err(|e| format!("ca.crt holds a certificate that is not a usable CA: {e}"))?;
    }
    if store.is_empty() {
        return Err("ca.crt holds no CERTIFICATE block".into());
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::{CertificateDer, PemObject, check_bundle, validate_pair, x509};

    /// A fresh self-signed pair (no key is committed anywhere): `CERTIFICATE` or
    /// `PRIVATE KEY`, made once per test run.
    fn pem_block(kind: &str) -> String {
        static PAIR: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
        let (cert, key) = PAIR.get_or_init(|| {
            crate::cli::certs::self_signed(&["example.com".into(), "*.example.com".into()], 1)
                .unwrap()
        });
        match kind {
            "CERTIFICATE" => cert.trim().to_string(),
            _ => key.trim().to_string(),
        }
    }

    #[test]
    fn a_matching_pair_passes_and_broken_ones_say_why() {
        let cert = pem_block("CERTIFICATE");
        let key = pem_block("PRIVATE KEY");
        assert_eq!(validate_pair(cert.as_bytes(), key.as_bytes()), Ok(()));
        let e = validate_pair(b"", key.as_bytes()).unwrap_err();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        let e = validate_pair(cert.as_bytes(), b"nope").unwrap_err();
        assert!(e.contains("tls.key"), "{e}");
        // A key the certificate was not issued for.
        let other_key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgND4qKtYr1WBqFyob\nMLh/qCSZm51XPTJ9F9Nb+o623bqhRANCAAQN4AxtT4NI9PGi56rTZXtJS1HtPeTn\nNKI3S6InLHuuf+bPl7P7U7D5HMU5GTvX/gnvaI6Vse0+cekt8Z1mKJTe\n-----END PRIVATE KEY-----\n";
        let e = validate_pair(cert.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(e.contains("not a valid pair"), "{e}");
    }

    /// Found by the `manifests` fuzz target: a CA certificate whose validity dates do not
    /// parse passed translation (webpki reads no dates of a trust anchor), and then every
    /// gateway refused the bundle, failing the backend's requests with 502.
    #[test]
    fn a_certificate_the_gateway_cannot_parse_is_refused() {
        let fixture = include_str!("../../tests/fixtures/backend-tls-policy.yaml");
        let from = fixture.find("name: api-ca").unwrap();
        let start = from + fixture[from..].find("-----BEGIN CERTIFICATE-----").unwrap();
        let end = start + fixture[start..].find("-----END CERTIFICATE-----").unwrap() + 25;
        let pem: String = fixture[start..end]
            .lines()
            .map(|l| format!("{}\n", l.trim()))
            .collect();
        assert!(check_bundle(pem.as_bytes()).is_ok());
        let mut der = CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec();
        // The bytes the fuzzer changed: the notBefore time.
        der[79..85].copy_from_slice(&[0x3d, 0x84, 0x4c, 0xcc, 0x8c, 0x22]);
        let der = CertificateDer::from(der);
        assert!(
            rustls::RootCertStore::empty().add(der.clone()).is_ok(),
            "webpki alone accepts it"
        );
        let e = x509(&der).unwrap_err();
        assert!(e.contains("does not parse"), "{e}");
    }
}
