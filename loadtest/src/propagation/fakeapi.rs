//! An in-process stand-in for the API server, for kube's own `Client`: it answers the
//! watchers' list requests from fixed objects and streams HTTPRoute watch events that the
//! benchmark pushes. No API server runs on this machine; this keeps the measured path the
//! real one from the HTTP body onwards (kube's decoding, the watcher, the reflector).

use bytes::Bytes;
use futures::StreamExt;
use futures::channel::mpsc;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The objects each kind lists, by the resource's plural name.
#[derive(Debug, Default)]
pub struct Objects {
    pub by_plural: Vec<(&'static str, Vec<Value>)>,
}

/// The fake API. HTTPRoute watch events sent with [`FakeApi::send`] reach the watcher.
pub struct FakeApi {
    pub client: kube::Client,
    events: mpsc::UnboundedSender<Bytes>,
}

impl FakeApi {
    pub fn start(objects: Objects) -> Self {
        let (tx, rx) = mpsc::unbounded::<Bytes>();
        let route_watch = Arc::new(Mutex::new(Some(rx)));
        let objects = Arc::new(objects);
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let objects = objects.clone();
            let route_watch = route_watch.clone();
            async move { Ok::<_, Infallible>(answer(&req, &objects, &route_watch)) }
        });
        Self {
            client: kube::Client::new(svc, "default"),
            events: tx,
        }
    }

    /// Streams `{"type": type_, "object": object}` on the HTTPRoute watch.
    pub fn send(&self, type_: &str, object: &Value) {
        let mut line =
            serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap_or_default();
        line.push(b'\n');
        let _ = self.events.unbounded_send(Bytes::from(line));
    }
}

impl std::fmt::Debug for FakeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApi").finish_non_exhaustive()
    }
}

type RouteWatch = Arc<Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>>;

fn answer(
    req: &Request<kube::client::Body>,
    objects: &Objects,
    route_watch: &RouteWatch,
) -> Response<Body> {
    let path = req.uri().path();
    let watching = req.uri().query().is_some_and(|q| q.contains("watch=true"));
    let plural = path.rsplit('/').next().unwrap_or_default();
    if watching {
        let body: Body = match route_watch
            .lock()
            .ok()
            .and_then(|mut w| (plural == "httproutes").then(|| w.take()).flatten())
        {
            Some(rx) => {
                StreamBody::new(rx.map(|b| Ok::<_, Infallible>(Frame::data(b)))).boxed_unsync()
            }
            // Every other kind's watch stays open and quiet.
            None => StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, Infallible>>())
                .boxed_unsync(),
        };
        return Response::new(body);
    }
    let items = objects
        .by_plural
        .iter()
        .find(|(p, _)| *p == plural)
        .map(|(_, items)| items.clone())
        .unwrap_or_default();
    let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items});
    let bytes = Bytes::from(serde_json::to_vec(&list).unwrap_or_default());
    Response::new(http_body_util::Full::new(bytes).boxed_unsync())
}
