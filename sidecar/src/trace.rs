//! A request's span in the sidecar (`--otlp-endpoint`): outbound it is a CLIENT span, the
//! app's call on its way to the fleet; inbound a SERVER span, the fleet's call on its way
//! to the app. Either way the next hop's `traceparent` names it as the parent, so one
//! trace shows app → sidecar → fleet → sidecar → app. Sampling and export are
//! `weir_model::trace`'s, as for the gateway.

use http::header::{HOST, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use std::sync::Arc;
use std::time::Instant;
use weir_model::trace::{Attribute, Kind, SpanStart, Tracer};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A request being traced, from its arrival to its response head.
#[derive(Debug)]
pub struct Traced {
    tracer: Arc<Tracer>,
    span: SpanStart,
    began: Instant,
    method: Method,
    path: String,
    authority: String,
    direction: &'static str,
}

impl Traced {
    /// Starts `req`'s span (`direction`: `inbound` or `outbound`) and points its
    /// `traceparent` at it; `None` without a tracer.
    pub fn start<B>(
        tracer: Option<&Arc<Tracer>>,
        req: &mut Request<B>,
        direction: &'static str,
    ) -> Option<Traced> {
        let tracer = tracer?;
        let span = tracer.start(req.headers().get(TRACEPARENT).map(|v| v.as_bytes()));
        if let Ok(v) = HeaderValue::from_bytes(&span.traceparent()) {
            req.headers_mut().insert(TRACEPARENT, v);
        }
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| Some(req.headers().get(HOST)?.to_str().ok()?.to_string()))
            .unwrap_or_default();
        Some(Traced {
            tracer: tracer.clone(),
            span,
            began: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            authority,
            direction,
        })
    }

    /// Ends the span with the status the caller got and `extra` attributes.
    pub fn end(self, status: StatusCode, kind: Kind, extra: &[(&'static str, String)]) {
        let mut attributes = vec![
            Attribute::new("http.request.method", self.method.to_string()),
            Attribute::new("url.path", self.path),
            Attribute::new("http.response.status_code", i64::from(status.as_u16())),
            Attribute::new("weir.direction", self.direction),
        ];
        if !self.authority.is_empty() {
            attributes.push(Attribute::new("server.address", self.authority));
        }
        attributes.extend(
            extra
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| Attribute::new(*k, v.clone())),
        );
        let name = format!("{} {}", self.method, self.direction);
        self.tracer.end(
            &self.span,
            kind,
            name,
            self.began.elapsed(),
            Some(status.as_u16()),
            attributes,
        );
    }
}
