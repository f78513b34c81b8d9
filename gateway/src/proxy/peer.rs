//! How a try reaches its backend beyond the endpoint choice: the address of an ExternalName
//! (from DNS), and the calls into `tls::upstream` for TLS per BackendTLSPolicy (the peer, the
//! subjectAltName check before a request goes out), with TLS failures counted and logged.

use super::{Ctx, WeirProxy};
use crate::balance::BackendRt;
use crate::egress::External;
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::{Error, ErrorType};
use std::net::SocketAddr;
use std::time::Duration;

impl Ctx {
    /// The client certificate of the Gateway whose listener took the request.
    fn backend_client_cert(&self) -> Option<&std::sync::Arc<pingora::utils::tls::CertKey>> {
        let (port, l) = self.listener?;
        self.rt.ports.get(&port)?.listeners[l]
            .backend_client_cert
            .as_ref()
    }
}

impl WeirProxy {
    /// An ExternalName's next address, waiting (at most `limit`) for the name's first lookup.
    pub(super) async fn external_addr(
        ext: &External,
        ctx: &mut Ctx,
        limit: Duration,
    ) -> Result<SocketAddr> {
        if !ext.is_settled() {
            ext.settled(limit).await;
        }
        let (i, addr) = ext.pick(ctx.tries.tried()).ok_or_else(|| {
            Error::explain(
                ErrorType::HTTPStatus(503),
                format!("{} resolves to no address", ext.resolved.name),
            )
        })?;
        ctx.tries.start_external(i);
        Ok(addr)
    }

    /// The peer for one try: plain, or TLS as the backend's policy says.
    pub(super) fn peer_for(&self, ctx: &Ctx, b: &BackendRt, addr: SocketAddr) -> Result<HttpPeer> {
        let Some(tls) = &b.tls else {
            return Ok(HttpPeer::new(addr, false, String::new()));
        };
        tls.try_peer(addr, ctx.backend_client_cert())
            .map_err(|why| {
                self.count_tls_failure(b, "policy", &why);
                Error::explain(
                    ErrorType::InvalidCert,
                    format!("BackendTLSPolicy {} is unusable: {why}", tls.policy),
                )
                .into_up()
            })
    }

    /// The subjectAltName check of the backend's policy, before a request goes out.
    pub(super) async fn check_upstream_names(
        &self,
        ctx: &Ctx,
        peer: &HttpPeer,
        digest: Option<&Digest>,
    ) -> Result<()> {
        let rt = &*ctx.rt;
        let Some(b) = ctx.backend.map(|i| &rt.backends[i]) else {
            return Ok(());
        };
        let Some(tls) = &b.tls else {
            return Ok(());
        };
        let client = ctx.backend_client_cert().map(|c| &**c);
        match tls.verify_names(peer, digest, client).await {
            None | Some(Ok(())) => Ok(()),
            Some(Err(why)) => {
                self.count_tls_failure(b, "subject_alt_names", &why);
                Err(Error::explain(ErrorType::InvalidCert, why).into_up())
            }
        }
    }

    /// A failed TLS handshake with a backend (trust, hostname, client certificate).
    pub(super) fn on_tls_connect_failure(&self, ctx: &Ctx, e: &Error) {
        let tls_error = matches!(
            e.etype(),
            ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError
        );
        if let Some(b) = ctx.backend.map(|i| &ctx.rt.backends[i])
            && b.tls.is_some()
            && tls_error
        {
            self.count_tls_failure(b, "handshake", &e.to_string());
        }
    }

    fn count_tls_failure(&self, b: &BackendRt, reason: &str, why: &str) {
        self.metrics
            .egress
            .tls_failures
            .with_label_values(&[&*b.label, reason])
            .inc();
        tracing::warn!(backend = %b.label, reason, error = why, "upstream TLS failed");
    }
}
