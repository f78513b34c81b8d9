//! Self-signed certificates for demos and local runs, as `kubernetes.io/tls` Secrets.
//! Production certificates come from cert-manager or a real CA; this exists so that the
//! quickstart works offline with nothing but Weir's binaries.

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
use std::fmt::Write;

#[derive(Debug, thiserror::Error)]
#[error("cannot make a certificate: {0}")]
pub struct CertError(#[from] rcgen::Error);

/// A self-signed end-entity certificate for `hosts`, valid `days` from now, as
/// (certificate PEM, private key PEM).
pub fn self_signed(hosts: &[String], days: u32) -> Result<(String, String), CertError> {
    let mut params = CertificateParams::new(hosts.to_vec())?;
    if let Some(first) = hosts.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let start = time::OffsetDateTime::now_utc();
    params.not_before = start;
    params.not_after = start + time::Duration::days(i64::from(days));
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A `kubernetes.io/tls` Secret manifest holding `cert` and `key`.
pub fn secret_yaml(name: &str, namespace: &str, cert: &str, key: &str) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n"
    );
    for l in cert.lines() {
        let _ = writeln!(out, "    {l}");
    }
    out.push_str("  tls.key: |\n");
    for l in key.lines() {
        let _ = writeln!(out, "    {l}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_secret_is_a_valid_listener_certificate() {
        let (cert, key) = self_signed(&["app.localhost".into(), "*.localhost".into()], 30).unwrap();
        let yaml = secret_yaml("demo", "quickstart", &cert, &key);
        let loaded =
            crate::source::files::parse_str(std::path::Path::new("secret.yaml"), &yaml).unwrap();
        let secret = &loaded.snapshot.secrets[0];
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let data = secret.string_data.as_ref().unwrap();
        assert_eq!(data["tls.crt"].trim(), cert.trim());
        assert_eq!(data["tls.key"].trim(), key.trim());
    }
}
