//! Traces: with `--otlp-endpoint`, every request is a span of its trace, exported over
//! OTLP/HTTP. The span's life (sampling, ids, export) is `weir_model::trace`'s, shared with
//! the sidecar; here is what is the gateway's: the slot a request keeps its trace in, and
//! what its span says (the facts its access log line has).

use crate::accesslog::{Entry, RateLimitDecision};
use prometheus::IntCounter;
use std::sync::OnceLock;
use weir_model::trace::{self as model, Attribute, Kind, SpanStart};

/// The gateway's tracer: the shared one, and the count of spans it handed over.
#[derive(Debug)]
pub struct Tracer {
    inner: model::Tracer,
    spans: IntCounter,
}

impl Tracer {
    pub fn new(endpoint: &str, ratio: f64, spans: IntCounter) -> anyhow::Result<Self> {
        let inner =
            model::Tracer::new(endpoint, ratio, "weir-gateway").map_err(anyhow::Error::msg)?;
        Ok(Self { inner, spans })
    }

    /// The span of a request whose client sent `traceparent`.
    pub fn start(&self, traceparent: Option<&[u8]>) -> SpanStart {
        self.inner.start(traceparent)
    }

    /// Ends the request's span with what `entry` says of it, if it was sampled.
    pub fn end(&self, start: &SpanStart, entry: &Entry<'_>) {
        // `{method} {route}`, as OpenTelemetry names HTTP server spans.
        let name = match entry.route {
            "" => entry.method.to_string(),
            route => format!("{} {route}", entry.method),
        };
        if self.inner.end(
            start,
            Kind::Server,
            name,
            entry.duration,
            entry.status,
            attributes(entry),
        ) {
            self.spans.inc();
        }
    }

    /// Exports what is queued; at shutdown.
    pub fn flush(&self) {
        if let Err(e) = self.inner.flush() {
            tracing::warn!(error = %e, "spans not exported at shutdown");
        }
    }
}

/// A request's trace id, and its span when the gateway traces. Without tracing only the id
/// is kept (the client's, or one started for the backend), for the access log.
/// The span is boxed: without tracing it costs the request context a pointer, not the
/// 80 bytes every request's context would otherwise carry and copy.
#[derive(Debug, Default)]
pub struct TraceSlot {
    id: OnceLock<[u8; 32]>,
    span: Option<Box<SpanStart>>,
}

impl TraceSlot {
    pub fn begin(&mut self, span: SpanStart) {
        let _ = self.id.set(span.hex);
        self.span = Some(Box::new(span));
    }

    pub fn span(&self) -> Option<&SpanStart> {
        self.span.as_deref()
    }

    /// The trace id in hex, set once: by [`Self::begin`], or by the first try's head.
    pub fn id(&self) -> &OnceLock<[u8; 32]> {
        &self.id
    }
}

/// The span's attributes: OpenTelemetry's HTTP names where there is one, `weir.*` for the
/// rest. Empty values are left out.
fn attributes(e: &Entry<'_>) -> Vec<Attribute> {
    let mut out = Vec::with_capacity(16);
    let mut text = |key: &'static str, value: &str| {
        if !value.is_empty() {
            out.push(Attribute::new(key, value.to_string()));
        }
    };
    text("http.request.method", e.method);
    text("url.path", e.path);
    text("server.address", e.authority);
    text("http.route", e.route);
    text("weir.gateway", e.gateway);
    text("weir.rule", e.rule);
    text("weir.backend", e.backend);
    text("weir.zone", e.zone.unwrap_or(""));
    text("weir.caller", e.caller);
    text(
        "weir.rate_limit",
        match e.rate_limit {
            Some(RateLimitDecision::Allowed) => "allowed",
            Some(RateLimitDecision::Limited) => "limited",
            None => "",
        },
    );
    text("weir.authz", e.authz);
    text("weir.authz_policy", e.authz_policy);
    if let Some(ep) = e.endpoint {
        out.push(Attribute::new("weir.endpoint", ep.to_string()));
    }
    if let Some(code) = e.status {
        out.push(Attribute::new("http.response.status_code", i64::from(code)));
    }
    out.push(Attribute::new("weir.retries", i64::from(e.retries)));
    out
}
