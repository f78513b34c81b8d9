//! The naive limiter: a proxy that makes one Redis round trip per limited request (`INCR`
//! and `PEXPIRE` on the fixed window's key, pipelined) and forwards admitted requests. On a
//! Redis error it admits, as envoyproxy/ratelimit does by default (`failure_mode_deny`
//! off). Requests for the host `free` skip the limiter, for the latency comparison.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

/// What the naive proxy limits: `limit` requests per `window_ms` per host.
#[derive(Debug, Clone)]
pub struct NaiveConfig {
    pub listen: SocketAddr,
    pub redis: String,
    pub backend: SocketAddr,
    /// Per host, the limit per window; hosts not listed are not limited.
    pub limits: Vec<(String, u64)>,
    pub window_ms: u64,
}

struct State {
    config: NaiveConfig,
    redis: ConnectionManager,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// Serves until the process is killed; `bound` learns the address once the socket is bound.
pub async fn serve(config: NaiveConfig, bound: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    let client = redis::Client::open(config.redis.as_str())?;
    let redis = ConnectionManager::new_lazy_with_config(
        client,
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(100)))
            .set_response_timeout(Some(Duration::from_millis(100)))
            .set_number_of_retries(1),
    )?;
    let listener = TcpListener::bind(config.listen).await?;
    bound(listener.local_addr()?);
    let state = Arc::new(State {
        client: Client::builder(TokioExecutor::new()).build_http(),
        config,
        redis,
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> anyhow::Result<Response<Full<Bytes>>> {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .split(':')
        .next()
        .unwrap_or("")
        .to_string();
    if let Some((_, limit)) = state.config.limits.iter().find(|(h, _)| *h == host)
        && !admit(&state, &host, *limit).await
    {
        return Ok(Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .body(Full::new(Bytes::from_static(b"rate limited\n")))?);
    }
    let uri = format!("http://{}{}", state.config.backend, req.uri().path());
    let upstream = Request::builder()
        .uri(uri)
        .header(hyper::header::HOST, host)
        .body(Empty::new())?;
    let resp = state.client.request(upstream).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Response::builder().status(status).body(Full::new(body))?)
}

/// One round trip: the fixed window's counter, incremented. Errors admit.
async fn admit(state: &State, host: &str, limit: u64) -> bool {
    let w = state.config.window_ms;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let key = format!("naive:{host}:{}", now / w);
    let mut conn = state.redis.clone();
    let reply: redis::RedisResult<(u64, i64)> = redis::pipe()
        .incr(&key, 1)
        .pexpire(&key, (2 * w) as i64)
        .query_async(&mut conn)
        .await;
    reply.map_or(true, |(count, _)| count <= limit)
}
