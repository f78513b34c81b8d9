//! Request spans exported over OTLP/HTTP (protobuf) with the opentelemetry crates, shared
//! by the gateway and the sidecar (feature `otlp`; the controller does not build it).
//!
//! A span is decided when its request starts ([`Tracer::start`]): its trace and parent
//! come from the caller's `traceparent` when it sent a valid one, else the trace starts
//! here; whether it is sampled is the SDK's parent-based sampler's answer (the parent's
//! flag, or the ratio of new traces, by trace id). The next hop gets a `traceparent` naming
//! this span as its parent, with the decision in its flags, so that the hops below sample
//! alike. When the request ends, a sampled span goes to the SDK's batch processor: a
//! bounded queue drained by a thread of its own, so a request never waits on the
//! collector (a full queue drops the span).
//!
//! Spans are built as `SpanData` rather than through the SDK's tracer: the span's id must
//! be the one already sent to the next hop, and a proxy has its facts only at the end.

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SamplingDecision, ShouldSample, SpanData,
    SpanEvents, SpanLinks, SpanProcessor,
};
use std::borrow::Cow;
use std::time::{Duration, SystemTime};

pub use opentelemetry::KeyValue as Attribute;
pub use opentelemetry::trace::SpanKind as Kind;

/// Spans waiting for export at most; beyond it new ones are dropped, not waited for.
const QUEUE: usize = 8192;

pub struct Tracer {
    processor: BatchSpanProcessor,
    sampler: Sampler,
    scope: InstrumentationScope,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").finish_non_exhaustive()
    }
}

/// `URL`, or `URL/v1/traces` when `URL` is a collector's base address (as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is).
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let url = endpoint.trim_end_matches('/');
    let bad = || {
        format!(
            "--otlp-endpoint {endpoint:?}: an http:// or https:// URL, such as http://otel-collector:4318"
        )
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(bad)?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(match url.ends_with("/v1/traces") {
        true => url.to_string(),
        false => format!("{url}/v1/traces"),
    })
}

impl Tracer {
    /// A tracer exporting to `endpoint`, sampling `ratio` of the traces that start here;
    /// `service` names the process in its spans (`service.name`).
    pub fn new(endpoint: &str, ratio: f64, service: &str) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(format!("--trace-sampling {ratio}: a ratio between 0 and 1"));
        }
        let url = traces_url(endpoint)?;
        // The exporter's HTTP client (reqwest) has no crypto provider of its own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("the OTLP exporter for {endpoint}: {e}"))?;
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE)
            .with_scheduled_delay(Duration::from_millis(500))
            .build();
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(config)
            .build();
        processor.set_resource(
            &Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        );
        Ok(Self {
            processor,
            sampler: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))),
            scope: InstrumentationScope::builder("weir")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }

    /// The span of a request whose caller sent `traceparent`, or none. An invalid one is
    /// no parent: the trace starts here.
    pub fn start(&self, traceparent: Option<&[u8]>) -> SpanStart {
        let parent = traceparent.and_then(parse);
        let trace = parent.map_or_else(new_trace_id, |p| p.0);
        let context = parent.map(|(trace, span, flags)| {
            Context::new().with_remote_span_context(SpanContext::new(
                trace,
                span,
                flags,
                true,
                TraceState::default(),
            ))
        });
        let decision = self
            .sampler
            .should_sample(context.as_ref(), trace, "", &SpanKind::Server, &[], &[])
            .decision;
        SpanStart::new(
            trace,
            parent.map_or(SpanId::INVALID, |p| p.1),
            decision == SamplingDecision::RecordAndSample,
        )
    }

    /// Ends `start`'s span, if it was sampled: `took` long, `status` the HTTP status the
    /// caller got (`None`: no response).
    pub fn end(
        &self,
        start: &SpanStart,
        kind: SpanKind,
        name: String,
        took: Duration,
        status: Option<u16>,
        attributes: Vec<KeyValue>,
    ) -> bool {
        if !start.sampled {
            return false;
        }
        let end_time = SystemTime::now();
        let status = match status {
            Some(code) if code < 500 => Status::Unset,
            Some(code) => Status::error(format!("HTTP {code}")),
            None => Status::error("no response"),
        };
        self.processor.on_end(SpanData {
            span_context: SpanContext::new(
                start.trace,
                start.span,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: start.parent,
            parent_span_is_remote: start.parent != SpanId::INVALID,
            span_kind: kind,
            name: Cow::Owned(name),
            start_time: end_time.checked_sub(took).unwrap_or(end_time),
            end_time,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        });
        true
    }

    /// Exports what is queued; at shutdown.
    pub fn flush(&self) -> Result<(), String> {
        self.processor.force_flush().map_err(|e| e.to_string())
    }
}

/// The span a request is, decided at its start.
#[derive(Debug, Clone, Copy)]
pub struct SpanStart {
    pub trace: TraceId,
    pub span: SpanId,
    /// The caller's span, or [`SpanId::INVALID`] when the trace starts here.
    pub parent: SpanId,
    pub sampled: bool,
    /// `trace` in hex, as logs and `traceparent` write it.
    pub hex: [u8; 32],
}

impl SpanStart {
    fn new(trace: TraceId, parent: SpanId, sampled: bool) -> Self {
        let mut hex = [0u8; 32];
        write_hex(&mut hex, &trace.to_bytes());
        Self {
            trace,
            span: SpanId::from(random_nonzero_u64()),
            parent,
            sampled,
            hex,
        }
    }

    /// The `traceparent` the next hop gets: this span as its parent, and the sampling
    /// decision in the flags. Written on the stack: it is made for every traced request,
    /// sampled or not, and `format!` cost an allocation and a tenth of an unsampled
    /// request's tracing work.
    pub fn traceparent(&self) -> [u8; 55] {
        let mut v = [0u8; 55];
        v[..3].copy_from_slice(b"00-");
        v[3..35].copy_from_slice(&self.hex);
        v[35] = b'-';
        write_hex(&mut v[36..52], &self.span.to_bytes());
        v[52..].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        v
    }
}

/// `bytes` as lower-case hex into `out` (twice as long).
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
}

/// Whether `v` is a valid `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex
/// flags>`, ids not all zero, later versions with more fields (W3C). The gateway checks
/// every request's with it, tracing or not.
#[inline]
pub fn valid_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let zero = |s: &[u8]| s.iter().all(|b| *b == b'0');
    v.len() >= 55
        && v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[..2])
        && &v[..2] != b"ff"
        && hex(&v[3..35])
        && !zero(&v[3..35])
        && hex(&v[36..52])
        && !zero(&v[36..52])
        && hex(&v[53..55])
        && (v.len() == 55 || (v[..2] != *b"00" && v[55] == b'-'))
}

/// The trace, parent span and flags of a valid version-00 (or later) `traceparent`.
pub fn parse(v: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    if !valid_traceparent(v) {
        return None;
    }
    let text = std::str::from_utf8(v).ok()?;
    let trace = TraceId::from_hex(text.get(3..35)?).ok()?;
    let span = SpanId::from_hex(text.get(36..52)?).ok()?;
    let flags = u8::from_str_radix(text.get(53..55)?, 16).ok()?;
    // valid_traceparent has ruled out the all-zero ids.
    Some((trace, span, TraceFlags::new(flags)))
}

/// A random trace id, never the invalid all-zero one.
fn new_trace_id() -> TraceId {
    TraceId::from(fastrand::u128(1..))
}

/// A random span id, never the invalid zero.
fn random_nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_names_this_span_and_the_decision() {
        let trace = TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128);
        let parent = SpanId::from(0xb7ad6b7169203331_u64);
        let s = SpanStart::new(trace, parent, true);
        let tp = String::from_utf8(s.traceparent().to_vec()).unwrap();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert!(tp.ends_with("-01"));
        assert_eq!(tp[36..52], format!("{:016x}", s.span));
        let (t, span, flags) = parse(tp.as_bytes()).unwrap();
        assert_eq!((t, span), (trace, s.span));
        assert!(flags.is_sampled());
        assert_ne!(s.span, parent, "a span of its own");
        assert_eq!(&s.hex, b"0af7651916cd43dd8448eb211c80319c");
        let unsampled = SpanStart::new(trace, parent, false).traceparent();
        assert!(unsampled.ends_with(b"-00"));
    }

    #[test]
    fn only_valid_traceparents_are_parents() {
        let (t, s, f) = parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert_eq!(format!("{t:032x}"), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(format!("{s:016x}"), "00f067aa0ba902b7");
        assert!(!f.is_sampled());
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"not a trace",
        ] {
            assert!(parse(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        // A later version may carry more fields.
        assert!(parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
    }

    #[test]
    fn ids_differ_and_are_never_zero() {
        let ids: std::collections::HashSet<u64> =
            (0..10_000).map(|_| random_nonzero_u64()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&0));
        assert_ne!(new_trace_id(), new_trace_id());
    }

    #[test]
    fn collector_urls_get_the_traces_path_once() {
        assert_eq!(
            traces_url("http://c:4318").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c/v1/traces").unwrap(),
            "https://c/v1/traces"
        );
        assert!(traces_url("ftp://c:4318").is_err());
        assert!(traces_url("http://").is_err());
        assert!(traces_url("c:4318").is_err());
    }
}
