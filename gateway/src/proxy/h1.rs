//! Weir's own HTTP/1 request loop: one request, start to end, as a sequence of calls in
//! `DESIGN.md`'s order, on pingora-core's HTTP/1 sessions. Pingora's `HttpProxy` spends
//! most of a small request's time in its generic machinery (two channels and two joined
//! loops per request, a cache and module context, a boxed future per hook, a pool that
//! spawns a task per release); this path has none of it. HTTP/2 clients and upgrades keep
//! `HttpProxy` (the `ProxyHttp` impl in `mod.rs`), which calls the same steps.
//!
//! Per request: route → rate limit → backend → endpoint and try ([`super::upstream`]) →
//! the upstream exchange ([`super::exchange`]) → metrics. Bodies stream both ways, one
//! chunk at a time, so a slow reader on either side holds back the other (back-pressure)
//! and no body is buffered whole; an idempotent request's first 64 KiB are kept to replay
//! on a retry, as Pingora does.

use super::client_h1::Session as ServerV1;
use super::exchange::{Outgoing, Upstream};
use super::headers::Added;
use super::respond;
use super::{Ctx, Decision, Down, WeirProxy, headers, status_for};
use crate::ratelimit::headers::Refused;
use pingora::ErrorSource;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::ProxyHttp;

/// Room for the fields the gateway adds to a head (forwarding, trace, identity, filters).
pub(super) const EXTRA_FIELDS: usize = 8;

impl WeirProxy {
    /// Serves the request whose head `s` has read. Returns whether the connection may
    /// carry another request (the response went out whole, and neither side said close).
    pub(crate) async fn serve_h1(&self, s: &mut ServerV1) -> bool {
        let mut ctx = self.new_ctx();
        let result = self.h1_request(s, &mut ctx).await;
        let error = result.err();
        if let Some(e) = &error {
            let code = status_for(e);
            if code > 0
                && s.response_written().is_none()
                && let Err(err) = self.write_local(s, &ctx, code, None, None).await
            {
                tracing::debug!(error = %err, "could not write the error response");
            }
            if !matches!(e.esource(), ErrorSource::Downstream) {
                tracing::warn!(error = %e, "request failed");
            }
        }
        let bytes = (s.body_bytes_read(), s.body_bytes_sent());
        let written = s.response_written();
        self.finished(&mut ctx, s.req_header(), bytes, written, error.as_deref());
        error.is_none()
    }

    async fn h1_request(&self, s: &mut ServerV1, ctx: &mut Ctx) -> Result<()> {
        // No h2c upgrade to drop: a head with `Upgrade` is left to Pingora's path.
        let decision = self.decide(&down(s), ctx).await;
        if let Decision::Respond {
            status,
            location,
            refused,
        } = decision
        {
            return self
                .write_local(s, ctx, status, location.as_deref(), refused.as_ref())
                .await;
        }
        let wants_body = !s.is_body_empty();
        self.start_mirrors(s.req_header(), &mut || wants_body, ctx);
        if s.expects_continue() {
            // Answered here, as nginx does: the backend gets the body without being asked.
            s.write_continue_response()
                .await
                .map_err(|e| e.into_down())?;
        }
        s.enable_retry_buffering();
        self.tries(s, ctx).await
    }

    /// Tries endpoints until one answers, the request's retries run out, or an answer has
    /// begun to reach the client.
    async fn tries(&self, s: &mut ServerV1, ctx: &mut Ctx) -> Result<()> {
        loop {
            let attempt = self.next_attempt(ctx).await?;
            let mut up = match Upstream::connect(self, ctx, &attempt).await {
                Ok(up) => up,
                Err(mut e) => {
                    e.retry.decide_reuse(false);
                    self.metrics.connect_error(&ctx.labels());
                    self.on_tls_connect_failure(ctx, &e);
                    self.on_connect_failure(ctx, &mut e);
                    if e.retry() {
                        continue;
                    }
                    return Err(e);
                }
            };
            let mut e = match self.exchange_on(s, ctx, &mut up).await {
                Ok(()) => {
                    up.release(self).await;
                    return Ok(());
                }
                Err(e) => e,
            };
            let replayable = replayable(s);
            let mut reused = up.reused();
            if up.stale_retry(&e, ctx, replayable) {
                // The backend had closed the pooled connection: the same endpoint, afresh,
                // costs no retry.
                reused = false;
                e = match Upstream::connect_fresh(self, ctx, &attempt).await {
                    Ok(mut fresh) => match self.exchange_on(s, ctx, &mut fresh).await {
                        Ok(()) => {
                            fresh.release(self).await;
                            return Ok(());
                        }
                        Err(again) => again,
                    },
                    Err(again) => again,
                };
            }
            // Pingora's errors may leave the retry to whether the connection was reused.
            e.retry.decide_reuse(reused);
            if s.response_written().is_some() {
                return Err(e);
            }
            self.on_try_error(ctx, &mut e, replayable);
            if !replayable || !e.retry() {
                return Err(e);
            }
        }
    }

    /// One exchange on `up` with a request head of its own (the last one went with the try
    /// before).
    async fn exchange_on(&self, s: &mut ServerV1, ctx: &mut Ctx, up: &mut Upstream) -> Result<()> {
        let request = if up.is_own() && !ctx.edits_request() {
            // Nothing rewrites the head: it goes as it came, with no copy made, and the
            // gateway's fields and the route's header filters as a list of edits.
            let d = down(s);
            Outgoing::AsSent(Added::for_request(
                d.req,
                d.client_ip,
                ctx.scheme(),
                self.caller_for_backend(ctx),
                ctx.request_header_ops(),
                &ctx.trace,
            ))
        } else {
            Outgoing::Copy(self.upstream_head(s, ctx)?)
        };
        up.exchange(self, s, ctx, request).await
    }

    /// The backend's request head: the client's, with the path's edits.
    fn upstream_head(&self, s: &ServerV1, ctx: &Ctx) -> Result<RequestHeader> {
        let d = down(s);
        let mut up = headers::backend_copy(d.req, EXTRA_FIELDS, |fields| {
            headers::forwarded(fields, d.client_ip, ctx.scheme(), d.req, &ctx.trace);
        });
        self.upstream_request(&d, false, true, &mut up, ctx)?;
        Ok(up)
    }

    /// Writes one of Weir's own answers.
    async fn write_local(
        &self,
        s: &mut ServerV1,
        ctx: &Ctx,
        status: u16,
        location: Option<&str>,
        refused: Option<&Refused>,
    ) -> Result<()> {
        let extra = refused.map(Refused::fields).unwrap_or_default();
        let (head, body) = respond::local(status, ctx.grpc, location, &extra, ctx.response_ops())?;
        s.write_response_header(&head)
            .await
            .map_err(|e| e.into_down())?;
        if !body.is_empty() {
            s.write_body(body.as_bytes())
                .await
                .map_err(|e| e.into_down())?;
        }
        s.finish_body().await.map_err(|e| e.into_down())?;
        Ok(())
    }
}

fn down(s: &ServerV1) -> Down<'_> {
    let info = s.info();
    Down {
        req: s.req_header(),
        port: info.port,
        client_ip: info.client_ip,
        tls: info.tls(),
        http2: false,
    }
}

/// Whether the request can be sent again after something reached the backend (Pingora's
/// rule): an idempotent method whose body is still in the retry buffer.
pub(super) fn replayable(s: &ServerV1) -> bool {
    s.req_header().method.is_idempotent() && !s.retry_buffer_truncated()
}
