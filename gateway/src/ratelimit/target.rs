//! Where Redis is and how to reach it: one node (`redis://`, `rediss://` for TLS) or a
//! cluster (`redis+cluster://`, `rediss+cluster://`), a password (in the URL, or read from
//! `--redis-password-file` so that it can come from a mounted Secret rather than the pod
//! spec), and for TLS the roots to trust (the system's, or `--redis-ca-file`).
//!
//! A target prints without its password: it is logged at start and shown in errors.

use redis::{IntoConnectionInfo, RedisResult, TlsCertificates};
use std::path::Path;
use std::time::Duration;

#[derive(Clone)]
pub struct Target {
    pub(super) nodes: Nodes,
    password: Option<String>,
    ca_pem: Option<Vec<u8>>,
}

/// The node URLs, each `redis://` or `rediss://`.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Nodes {
    Single(String),
    Cluster(Vec<String>),
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let cluster = |rest: &str, scheme: &str| -> Result<Nodes, String> {
            let nodes: Vec<String> = rest
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|n| format!("{scheme}://{n}"))
                .collect();
            match nodes.is_empty() {
                true => Err(format!("{}: name at least one cluster node", redact(url))),
                false => Ok(Nodes::Cluster(nodes)),
            }
        };
        let nodes = if let Some(rest) = url.strip_prefix("redis+cluster://") {
            cluster(rest, "redis")?
        } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            cluster(rest, "rediss")?
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            Nodes::Single(url.to_string())
        } else {
            return Err(format!(
                "{}: expected redis://HOST:PORT, rediss://HOST:PORT (TLS) or redis+cluster://HOST:PORT,HOST:PORT",
                redact(url)
            ));
        };
        // Checked now, so that a malformed URL stops the start rather than every sync.
        let first = match &nodes {
            Nodes::Single(u) => u,
            Nodes::Cluster(n) => &n[0],
        };
        first
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("{}: {e}", redact(url)))?;
        Ok(Target {
            nodes,
            password: None,
            ca_pem: None,
        })
    }
}

impl Target {
    /// The password in `path` (one line; surrounding whitespace is not part of it), over
    /// any in the URL.
    pub fn with_password_file(mut self, path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--redis-password-file {}: {e}", path.display()))?;
        let password = text.trim();
        if password.is_empty() {
            return Err(format!("--redis-password-file {}: empty", path.display()));
        }
        self.password = Some(password.to_string());
        Ok(self)
    }

    /// Trust the CA certificates in `path` (PEM) for `rediss://`, instead of the system's.
    pub fn with_ca_file(mut self, path: &Path) -> Result<Self, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("--redis-ca-file {}: {e}", path.display()))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "--redis-ca-file {}: no PEM certificate in it",
                path.display()
            ));
        }
        if !self.tls() {
            return Err("--redis-ca-file needs a rediss:// URL".into());
        }
        self.ca_pem = Some(pem);
        Ok(self)
    }

    fn tls(&self) -> bool {
        match &self.nodes {
            Nodes::Single(u) => u.starts_with("rediss://"),
            Nodes::Cluster(n) => n.iter().all(|u| u.starts_with("rediss://")),
        }
    }

    fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: None,
            root_cert: self.ca_pem.clone(),
        }
    }

    /// The client of a single node, with the password and TLS roots applied.
    pub(super) fn client(&self, url: &str) -> RedisResult<redis::Client> {
        let mut info = url.into_connection_info()?;
        if let Some(p) = &self.password {
            let settings = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(settings);
        }
        if self.tls() {
            // rustls in the redis crate uses the process's provider: the workspace's ring.
            let _ = rustls::crypto::ring::default_provider().install_default();
            redis::Client::build_with_tls(info, self.certificates())
        } else {
            redis::Client::open(info)
        }
    }

    /// The client of a cluster, with the password and TLS roots applied.
    pub(super) fn cluster_client(
        &self,
        nodes: &[String],
        timeout: Duration,
    ) -> RedisResult<redis::cluster::ClusterClient> {
        let mut b = redis::cluster::ClusterClient::builder(nodes.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(0);
        if let Some(p) = &self.password {
            b = b.password(p);
        }
        if self.tls() {
            let _ = rustls::crypto::ring::default_provider().install_default();
            b = b.certs(self.certificates());
        }
        b.build()
    }
}

/// `url` with any password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The userinfo ends at the last `@` before the path (a password may hold `@`).
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.nodes {
            Nodes::Single(u) => f.write_str(&redact(u))?,
            Nodes::Cluster(n) => {
                let n: Vec<String> = n.iter().map(|u| redact(u)).collect();
                write!(f, "cluster {}", n.join(","))?;
            }
        }
        if self.password.is_some() {
            f.write_str(" (password from file)")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_prints_without_its_password() {
        let t: Target = "redis://:s3cr@t@redis.weir-system:6379/0".parse().unwrap();
        let shown = format!("{t} {t:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(
            shown.contains("redis://:***@redis.weir-system:6379/0"),
            "{shown}"
        );
        let t: Target = "rediss+cluster://u:pw@a:1,b:2".parse().unwrap();
        assert_eq!(
            t.nodes,
            Nodes::Cluster(vec!["rediss://u:pw@a:1".into(), "rediss://b:2".into()])
        );
        assert!(!format!("{t:?}").contains("pw"), "{t:?}");
        let bad = "http://user:hunter2@x".parse::<Target>().unwrap_err();
        assert!(!bad.contains("hunter2"), "{bad}");
    }

    #[test]
    fn the_password_file_and_the_ca_file_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let t: Target = "redis://r:6379".parse().unwrap();
        assert!(
            t.clone()
                .with_password_file(&empty)
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            t.clone()
                .with_password_file(&dir.path().join("none"))
                .is_err()
        );
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "  hunter2\n").unwrap();
        let t = t.with_password_file(&pw).unwrap();
        assert_eq!(t.password.as_deref(), Some("hunter2"));
        assert!(!format!("{t:?}").contains("hunter2"));
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(t.with_ca_file(&ca).unwrap_err().contains("rediss://"));
        let tls: Target = "rediss://r:6379".parse().unwrap();
        assert!(
            tls.clone()
                .with_ca_file(&empty)
                .unwrap_err()
                .contains("no PEM")
        );
        assert!(tls.with_ca_file(&ca).is_ok());
    }
}
