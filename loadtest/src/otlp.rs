//! A real OTLP/HTTP receiver, for the tests of span export: it takes `POST /v1/traces`
//! (protobuf), decodes each export with the protocol's own messages (opentelemetry-proto)
//! and keeps the spans, with the service that sent them.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One span as received, ids in lower-case hex (empty for none).
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    /// OTLP's SpanKind: 2 is SERVER, 3 CLIENT.
    pub kind: i32,
    /// Attribute values as text (integers in decimal).
    pub attributes: BTreeMap<String, String>,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

#[derive(Debug)]
pub struct Receiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// The spans of one export request.
pub fn decode(body: &[u8]) -> Result<Vec<Span>, prost::DecodeError> {
    let req = ExportTraceServiceRequest::decode(body)?;
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(|a| text(a.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Span {
                    service: service.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name,
                    kind: s.kind,
                    attributes: s
                        .attributes
                        .iter()
                        .map(|a| {
                            (
                                a.key.clone(),
                                text(a.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                    status: s.status.map_or(0, |st| st.code),
                    start_unix_nano: s.start_time_unix_nano,
                    end_unix_nano: s.end_time_unix_nano,
                });
            }
        }
    }
    Ok(out)
}

impl Receiver {
    /// Listens on a free loopback port; its URL is [`Receiver::url`].
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let kept = kept.clone();
                            async move {
                                let ok = req.uri().path() == "/v1/traces"
                                    && req
                                        .headers()
                                        .get("content-type")
                                        .is_some_and(|v| v == "application/x-protobuf");
                                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                                let status = match (ok, body.as_deref().map(decode)) {
                                    (true, Ok(Ok(spans))) => {
                                        kept.lock().unwrap().extend(spans);
                                        StatusCode::OK
                                    }
                                    _ => StatusCode::BAD_REQUEST,
                                };
                                // An empty ExportTraceServiceResponse: all accepted.
                                let mut resp = Response::new(Full::new(Bytes::new()));
                                *resp.status_mut() = status;
                                resp.headers_mut().insert(
                                    "content-type",
                                    "application/x-protobuf".parse().unwrap(),
                                );
                                Ok::<_, Infallible>(resp)
                            }
                        });
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Receiver { addr, spans, task }
    }

    /// The collector URL to give an exporter.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// The first span for which `found` holds, waiting up to `within` for it to arrive.
    pub async fn wait(&self, what: &str, within: Duration, found: impl Fn(&Span) -> bool) -> Span {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.spans().into_iter().find(|s| found(s)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no span {what} within {within:?}; got {:#?}",
                self.spans()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
