//! Identity hot reload: poll the identity directory, and when its contents change, check
//! the new SVID and swap every port's server config to it.
//!
//! Polling rather than inotify: csi-driver-spiffe (like any Kubernetes volume) updates
//! files by swapping a `..data` symlink, which file watchers report unreliably, while
//! reading three small files once a second is cheap and always right. Contents, not
//! mtimes, are compared, so a rewrite within the same second is not missed.
//!
//! A bad update never replaces a good identity. Writers replace the files one at a time,
//! so a poll can land between the new key and the new certificate: such a set is retried
//! on the next poll and only reported if it is still there, i.e. really broken.

use crate::identity::{Files, Identity, IdentityError};
use crate::metrics::Metrics;
use crate::outbound::upstream::UpstreamTls;
use crate::tls::PortTls;
use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often the identity directory is read.
pub const POLL: Duration = Duration::from_secs(1);

/// What one poll did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// A new identity is in use.
    Loaded,
    /// Same contents as last time.
    Unchanged,
    /// The files are missing or invalid; the last good identity (if any) stays.
    Failed,
}

/// Owns the polling state; run it on a thread of its own with [`Reloader::run`].
#[derive(Debug)]
pub struct Reloader {
    dir: PathBuf,
    identity: Arc<ArcSwapOption<Identity>>,
    ports: Vec<Arc<PortTls>>,
    /// The outbound client config, swapped with the ports' (same identity, same moment).
    upstream: Option<Arc<UpstreamTls>>,
    metrics: Metrics,
    provider: Arc<CryptoProvider>,
    /// The contents last parsed, good or bad.
    last: Option<Files>,
    /// Why `last` failed, until it is reported.
    unreported: Option<IdentityError>,
    /// The last read error reported, so that a missing file is logged once, not per poll.
    read_error: Option<String>,
}

impl Reloader {
    pub fn new(
        dir: PathBuf,
        identity: Arc<ArcSwapOption<Identity>>,
        ports: Vec<Arc<PortTls>>,
        metrics: Metrics,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            dir,
            identity,
            ports,
            upstream: None,
            metrics,
            provider,
            last: None,
            unreported: None,
            read_error: None,
        }
    }

    /// Also keeps the outbound client config on the current identity.
    pub fn with_upstream(mut self, upstream: Arc<UpstreamTls>) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// Polls forever.
    pub fn run(mut self, every: Duration) {
        loop {
            std::thread::sleep(every);
            self.poll();
        }
    }

    pub fn poll(&mut self) -> Polled {
        let files = match Files::read(&self.dir) {
            Ok(files) => files,
            Err(e) => {
                let why = e.to_string();
                if self.read_error.as_ref() != Some(&why) {
                    self.fail(&e);
                    self.read_error = Some(why);
                }
                return Polled::Failed;
            }
        };
        self.read_error = None;
        if self.last.as_ref() == Some(&files) {
            return match self.unreported.take() {
                Some(e) => {
                    self.fail(&e);
                    Polled::Failed
                }
                None => Polled::Unchanged,
            };
        }
        let result = self.install(&files);
        self.last = Some(files);
        match result {
            Ok(()) => {
                self.unreported = None;
                Polled::Loaded
            }
            Err(e) => {
                tracing::debug!(error = %e, "identity files invalid; retrying on the next poll");
                self.unreported = Some(e);
                Polled::Failed
            }
        }
    }

    /// Checks `files` and builds every port's config (and the outbound one) before storing
    /// any: a failure leaves everything on the previous identity.
    fn install(&self, files: &Files) -> Result<(), IdentityError> {
        let identity = Identity::parse(files, &self.provider)?;
        let configs = self
            .ports
            .iter()
            .map(|p| p.build(&identity, &self.provider).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let client = match &self.upstream {
            Some(u) => Some((u, Arc::new(u.build(&identity, &self.provider)?))),
            None => None,
        };
        for (port, config) in self.ports.iter().zip(configs) {
            port.install(config);
        }
        if let Some((upstream, config)) = client {
            upstream.install(config, &identity.serial);
        }
        tracing::info!(
            spiffe_id = %identity.spiffe_id,
            serial = %identity.serial,
            not_after = identity.not_after,
            "identity loaded"
        );
        self.metrics.reload(true);
        self.metrics.set_identity(&identity);
        self.identity.store(Some(Arc::new(identity)));
        Ok(())
    }

    fn fail(&self, error: &IdentityError) {
        self.metrics.reload(false);
        match self.identity.load().as_deref() {
            Some(current) => tracing::warn!(
                dir = %self.dir.display(),
                %error,
                keeping = %current.serial,
                "identity update refused; keeping the last good identity"
            ),
            None => tracing::warn!(
                dir = %self.dir.display(),
                %error,
                "no identity yet; inbound mTLS is refused until one loads"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_controller::cli::ca::Ca;
    use weir_model::spiffe::Allow;

    fn reloader(dir: &std::path::Path) -> (Reloader, Arc<ArcSwapOption<Identity>>, Arc<PortTls>) {
        let metrics = Metrics::new();
        let port = Arc::new(PortTls::new(1, Allow::new(["spiffe://*"]), &metrics));
        let identity = Arc::new(ArcSwapOption::empty());
        let r = Reloader::new(
            dir.into(),
            identity.clone(),
            vec![port.clone()],
            metrics,
            crate::crypto_provider(),
        );
        (r, identity, port)
    }

    #[test]
    fn rotations_load_and_broken_updates_keep_the_last_good_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, identity, port) = reloader(dir.path());
        assert_eq!(r.poll(), Polled::Failed, "empty directory");
        assert!(port.current().is_none());

        let ca = Ca::init("weir.test", 1).unwrap();
        let first = ca.issue("shop", "web", 1).unwrap();
        first.write(dir.path(), &ca).unwrap();
        assert_eq!(r.poll(), Polled::Loaded);
        assert_eq!(r.poll(), Polled::Unchanged);
        let serial = identity.load().as_ref().unwrap().serial.clone();
        let config = port.current().unwrap();

        // A new key without its certificate: refused (twice: retried, then reported).
        let second = ca.issue("shop", "web", 1).unwrap();
        std::fs::write(dir.path().join("tls.key"), &second.key_pem).unwrap();
        assert_eq!(r.poll(), Polled::Failed);
        assert_eq!(r.poll(), Polled::Failed);
        assert_eq!(r.poll(), Polled::Unchanged);
        assert_eq!(identity.load().as_ref().unwrap().serial, serial);
        assert!(Arc::ptr_eq(&config, &port.current().unwrap()));

        // The certificate follows: the new identity is in use.
        std::fs::write(dir.path().join("tls.crt"), &second.cert_pem).unwrap();
        assert_eq!(r.poll(), Polled::Loaded);
        assert_ne!(identity.load().as_ref().unwrap().serial, serial);
        assert!(!Arc::ptr_eq(&config, &port.current().unwrap()));

        // Garbage, or a certificate without a SPIFFE ID, is refused too.
        std::fs::write(dir.path().join("tls.crt"), "not PEM").unwrap();
        assert_eq!(r.poll(), Polled::Failed);
        std::fs::write(dir.path().join("tls.crt"), &ca.cert_pem).unwrap();
        assert_eq!(r.poll(), Polled::Failed);
        assert_eq!(
            identity.load().as_ref().unwrap().spiffe_id,
            second.spiffe_id
        );
    }
}
