//! Chooses what one request gets and builds the response.
//!
//! Order matters: control endpoints first (they are not counted), then the failure draw
//! (`--fail-ratio`), then malformed knobs (a 400 before any side effect), then the upgrade,
//! gRPC and plain echo paths.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::debug;

use super::body::EchoBody;
use super::fail::{self, Failer, Failure};
use super::stats::Stats;
use super::{Identity, delay, directives, document, grpc, upgrade};

const X_ECHO_SERVICE: HeaderName = HeaderName::from_static("x-echo-service");
const X_ECHO_POD: HeaderName = HeaderName::from_static("x-echo-pod");
const X_ECHO_CONNECTION: HeaderName = HeaderName::from_static("x-echo-connection");
/// The caller identity the request carried (every value, joined by `, `), reported on every
/// response, 101s included: a test can then see what a gateway forwarded even when there is
/// no echo document (upgrades, failures on purpose).
const X_WEIR_CALLER_IDENTITY: HeaderName = HeaderName::from_static("x-weir-caller-identity");
const X_ECHO_CALLER_IDENTITY: HeaderName = HeaderName::from_static("x-echo-caller-identity");
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

const CONTROL_PREFIX: &str = "/__echo/";
const STATS_PATH: &str = "/__echo/stats";
const RESET_PATH: &str = "/__echo/reset";
const FAIL_PATH: &str = "/__echo/fail";

/// Everything a request handler needs, shared by all connections.
#[derive(Debug)]
pub(crate) struct Shared {
    identity: Identity,
    // Converted once at start-up so a bad name fails there, not on every request.
    service_header: HeaderValue,
    pod_header: HeaderValue,
    stats: Stats,
    failer: Failer,
}

impl Shared {
    /// Counts a new connection and returns the header value naming it.
    pub(crate) fn new_connection(&self) -> HeaderValue {
        HeaderValue::from(self.stats.record_connection())
    }

    pub(crate) fn new(identity: Identity, failure: Failure) -> anyhow::Result<Self> {
        let header = |what: &str, value: &str| {
            HeaderValue::from_str(value).map_err(|_| {
                anyhow::anyhow!("{what} {value:?} cannot be sent as an HTTP header value")
            })
        };
        Ok(Self {
            service_header: header("service", &identity.service)?,
            pod_header: header("pod", &identity.pod)?,
            identity,
            stats: Stats::default(),
            failer: Failer::new(failure),
        })
    }
}

/// Handles one request that arrived on connection number `connection`.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    connection: HeaderValue,
    request: Request<Incoming>,
) -> Result<Response<EchoBody>, Infallible> {
    let caller = caller_identity(request.headers());
    if caller.is_some() {
        shared.stats.record_caller_identity();
    }
    let mut response = if request.uri().path().starts_with(CONTROL_PREFIX) {
        control(&shared, &request)
    } else {
        shared.stats.record_request();
        match shared.failer.draw() {
            Some(status) => fail_request(&shared, status, request).await,
            None => serve_request(&shared, request).await,
        }
    };
    // Every response, errors and 101s included, names its backend so tests can tell
    // instances apart without parsing the body.
    let headers = response.headers_mut();
    headers.insert(X_ECHO_SERVICE, shared.service_header.clone());
    headers.insert(X_ECHO_POD, shared.pod_header.clone());
    // Which connection carried it, so a test can see a proxy reuse upstream connections.
    headers.insert(X_ECHO_CONNECTION, connection);
    if let Some(caller) = caller {
        headers.insert(X_ECHO_CALLER_IDENTITY, caller);
    }
    Ok(response)
}

/// Every `x-weir-caller-identity` value of a request, joined, or `None` without one.
fn caller_identity(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(X_WEIR_CALLER_IDENTITY).iter();
    let first = values.next()?;
    let mut joined = first.as_bytes().to_vec();
    for v in values {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// The purposeful failure. The body is read first, as for an echo, so the connection stays
/// reusable and a failed request costs the gateway what a served one does.
async fn fail_request(
    shared: &Shared,
    status: StatusCode,
    request: Request<Incoming>,
) -> Response<EchoBody> {
    shared.stats.record_failure();
    if let Err(err) = count_body(request.into_body()).await {
        debug!(error = %err, "request body could not be read");
    }
    error(status, "failed on purpose (--fail-ratio)")
}

async fn serve_request(shared: &Shared, mut request: Request<Incoming>) -> Response<EchoBody> {
    let knobs = delay::from_query(request.uri().query())
        .and_then(|delay| Ok((delay, directives::headers_to_set(request.headers())?)));
    let (delay, set_headers) = match knobs {
        Ok(knobs) => knobs,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };

    let mut response = if let Some(protocol) = upgrade::requested_protocol(&request) {
        sleep(delay).await;
        upgrade::switch(&mut request, protocol)
    } else {
        echo(shared, request, delay).await
    };
    let headers = response.headers_mut();
    for (name, value) in set_headers {
        headers.append(name, value);
    }
    response
}

/// The echo document as plain JSON, or as one gRPC message for gRPC requests.
async fn echo(
    shared: &Shared,
    request: Request<Incoming>,
    delay: Option<Duration>,
) -> Response<EchoBody> {
    let status = match directives::status_from_path(request.uri().path()) {
        Ok(status) => status.unwrap_or(StatusCode::OK),
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let (parts, body) = request.into_parts();
    // The body is read to the end (counted, not kept) before answering, so a gateway
    // streaming a request body is exercised all the way through.
    let body_bytes = match count_body(body).await {
        Ok(count) => {
            shared.stats.record_body(Ok(count));
            count
        }
        Err(err) => {
            shared.stats.record_body(Err(()));
            debug!(error = %err, "request body could not be read");
            return error(StatusCode::BAD_REQUEST, "request body could not be read");
        }
    };
    sleep(delay).await;

    let document = match document::render(&parts, body_bytes, &shared.identity) {
        Ok(document) => document,
        Err(err) => return error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    };
    if !grpc::is_grpc(&parts.headers) {
        return json(status, document);
    }
    let framed = match grpc::frame(&document) {
        Ok(framed) => framed,
        Err(err) => return error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    };
    // gRPC carries its own status in the trailers; the HTTP status is 200 regardless.
    let mut response = Response::new(EchoBody::with_trailers(framed, grpc::ok_trailers()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, grpc::CONTENT_TYPE_GRPC);
    response
}

async fn count_body(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut count = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            count += data.len() as u64;
        }
    }
    Ok(count)
}

async fn sleep(delay: Option<Duration>) {
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
}

/// `GET /__echo/stats`, `POST /__echo/reset` and `POST /__echo/fail?ratio=R`. They are not
/// counted (nor failed), so polling the stats does not disturb what it measures.
fn control(shared: &Shared, request: &Request<Incoming>) -> Response<EchoBody> {
    let method = request.method();
    match request.uri().path() {
        STATS_PATH if method == Method::GET => {
            let (complete_bodies, body_bytes, broken_bodies) = shared.stats.bodies();
            let body = serde_json::json!({
                "requests": shared.stats.requests(),
                "complete_bodies": complete_bodies,
                "body_bytes": body_bytes,
                "broken_bodies": broken_bodies,
                "connections": shared.stats.connections(),
                "failures": shared.stats.failures(),
                "with_caller_identity": shared.stats.with_caller_identity(),
                "fail_ratio": shared.failer.ratio(),
                "fail_status": shared.failer.status().as_u16(),
            });
            json(StatusCode::OK, body.to_string())
        }
        FAIL_PATH if method == Method::POST => {
            match fail::ratio_from_query(request.uri().query()) {
                Ok(ratio) => {
                    let previous = shared.failer.set_ratio(ratio);
                    let body = serde_json::json!({ "ratio": ratio, "previous": previous });
                    json(StatusCode::OK, body.to_string())
                }
                Err(message) => error(StatusCode::BAD_REQUEST, &message),
            }
        }
        // Reset also reports the count it discarded, which helps when debugging a test.
        RESET_PATH if method == Method::POST => {
            let body = serde_json::json!({ "requests": 0, "previous": shared.stats.reset() });
            json(StatusCode::OK, body.to_string())
        }
        STATS_PATH => method_not_allowed("GET"),
        RESET_PATH | FAIL_PATH => method_not_allowed("POST"),
        _ => error(StatusCode::NOT_FOUND, "unknown control endpoint"),
    }
}

fn method_not_allowed(allowed: &'static str) -> Response<EchoBody> {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allowed));
    response
}

fn error(status: StatusCode, message: &str) -> Response<EchoBody> {
    json(status, serde_json::json!({ "error": message }).to_string())
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<EchoBody> {
    let mut response = Response::new(EchoBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, APPLICATION_JSON);
    response
}
