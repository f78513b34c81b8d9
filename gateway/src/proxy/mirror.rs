//! RequestMirror: a copy of the request goes to another backend and its response is thrown
//! away. Mirroring is strictly fire-and-forget: the copy runs in its own task, its body is
//! fed without ever waiting (a slow mirror loses its copy, never delays the original), and a
//! bound on copies in flight keeps a dead mirror from piling up work.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pingora::http::RequestHeader;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// Copies in flight at most; beyond this, copies are skipped.
const MAX_IN_FLIGHT: usize = 512;
/// Body chunks buffered per copy before it is given up.
const BODY_BUFFER: usize = 16;
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Mirror {
    client: Client<HttpConnector, ChannelBody>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("available", &self.permits.available_permits())
            .finish()
    }
}

impl Default for Mirror {
    fn default() -> Self {
        Self::new()
    }
}

impl Mirror {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Starts a copy of `req` to `target`. When the request has a body, the returned sender
    /// takes its chunks; dropping it ends the copy's body.
    pub fn start(
        &self,
        target: SocketAddr,
        req: &RequestHeader,
        has_body: bool,
    ) -> Option<BodyFeed> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut builder = http::Request::builder()
            .method(req.method.clone())
            .uri(format!("http://{target}{path}"));
        for (name, value) in req.headers.iter() {
            if !matches!(
                name.as_str(),
                "connection"
                    | "keep-alive"
                    | "upgrade"
                    | "te"
                    | "proxy-connection"
                    // A copy carries no caller identity, whatever the client sent.
                    | "x-weir-caller-identity"
            ) {
                builder = builder.header(name, value);
            }
        }
        if req.headers.get(http::header::HOST).is_none()
            && let Some(authority) = req.uri.authority()
        {
            builder = builder.header(http::header::HOST, authority.as_str());
        }
        let (tx, rx) = mpsc::channel(BODY_BUFFER);
        let request = builder
            .body(ChannelBody {
                rx,
                empty: !has_body,
            })
            .ok()?;
        let client = self.client.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let copy = async {
                let resp = client.request(request).await?;
                // Read the response to the end so the connection can be pooled.
                let _ = resp.into_body().collect().await;
                Ok::<_, hyper_util::client::legacy::Error>(())
            };
            if let Ok(Err(e)) = tokio::time::timeout(MIRROR_TIMEOUT, copy).await {
                tracing::debug!(%target, error = %e, "mirror copy failed");
            }
        });
        has_body.then_some(BodyFeed { tx: Some(tx) })
    }
}

/// Feeds a copy's body without waiting.
#[derive(Debug)]
pub struct BodyFeed {
    tx: Option<mpsc::Sender<Bytes>>,
}

impl BodyFeed {
    pub fn feed(&mut self, chunk: &Bytes) {
        if let Some(tx) = &self.tx
            && tx.try_send(chunk.clone()).is_err()
        {
            // The mirror is slower than the client: give the copy up rather than wait.
            self.tx = None;
        }
    }

    pub fn finish(&mut self) {
        self.tx = None;
    }
}

/// A request body fed from a channel.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    /// Known empty, so that hyper frames the copy without a body, like the original.
    empty: bool,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.empty {
            return Poll::Ready(None);
        }
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.empty
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        if self.empty {
            hyper::body::SizeHint::with_exact(0)
        } else {
            hyper::body::SizeHint::default()
        }
    }
}
