//! What a request did, gathered once from what its steps left in its context, for its
//! access log line and its span. The line's format and writer are `accesslog`'s, the
//! span's `trace`'s.

use super::{Ctx, WeirProxy, headers};
use crate::accesslog::Entry;
use http::header;
use pingora::http::RequestHeader;
use std::time::SystemTime;

impl WeirProxy {
    pub(super) fn log_request(
        &self,
        ctx: &Ctx,
        req: &RequestHeader,
        bytes: (usize, usize),
        written: Option<u16>,
    ) {
        let labels = ctx.labels();
        // The last try's endpoint; an ExternalName's addresses are not pool members.
        let endpoint = ctx
            .backend
            .map(|b| &ctx.rt.backends[b])
            .filter(|b| b.external.is_none())
            .and_then(|b| Some((b, *ctx.tries.tried().last()?)));
        let authority = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        // The trace the backend got (the client's, or one the gateway started); for a
        // request answered here, the client's if it sent a valid one.
        let trace = ctx.trace.id().get().copied().or_else(|| {
            req.headers
                .get("traceparent")
                .and_then(|v| headers::trace_id(v.as_bytes()))
        });
        let trace = trace.as_ref().map_or("", |t| {
            std::str::from_utf8(t).expect("a trace id is hex digits")
        });
        let authz = ctx
            .authz
            .and_then(|v| v.by)
            .map(|(i, d)| (ctx.rt.authz[i].policy.id.as_str(), d.as_str()));
        let elapsed = ctx.start.elapsed();
        let entry = Entry {
            time: SystemTime::now().checked_sub(elapsed),
            gateway: labels.gateway,
            route: labels.route,
            rule: labels.rule,
            backend: labels.backend,
            endpoint: endpoint.map(|(b, i)| b.pool.addr(i)),
            zone: endpoint.and_then(|(b, i)| b.pool.zone_of(i)),
            method: req.method.as_str(),
            authority,
            path: req.uri.path_and_query().map_or("", |p| p.as_str()),
            status: written,
            bytes_in: bytes.0 as u64,
            bytes_out: bytes.1 as u64,
            duration: elapsed,
            upstream_duration: ctx.try_started.map(|t| t.elapsed()),
            retries: u32::try_from(ctx.tries.tried().len().saturating_sub(1)).unwrap_or(u32::MAX),
            rate_limit: ctx.rate_limit,
            authz: authz.map_or("", |(_, d)| d),
            authz_policy: authz.map_or("", |(p, _)| p),
            caller: labels.source,
            trace_id: trace,
        };
        if let Some(log) = &self.access_log {
            log.write(&entry);
        }
        if let (Some(tracer), Some(span)) = (&self.tracer, ctx.trace.span()) {
            tracer.end(span, &entry);
        }
    }
}
