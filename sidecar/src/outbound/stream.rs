//! The two halves of one HTTP/2 stream to the upstream, driven with the `h2` crate: the
//! app's request body pumped into it under HTTP/2 flow control, and the response read out
//! of it as an [`http_body::Body`] for the app's connection.
//!
//! hyper's HTTP/2 client does the same, but spawns a task per request and hands every
//! request and response through a channel to the connection's task: about a tenth of the
//! outbound sidecar's instructions per request (callgrind). Here the request's own task
//! sends the stream and awaits the response; a task is spawned only for a request body.

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use http::HeaderMap;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// The upstream's response body: DATA frames, then trailers if the upstream sent any.
#[derive(Debug)]
pub struct UpstreamBody {
    recv: RecvStream,
    /// The DATA frames have ended; trailers (or nothing) come next.
    data_done: bool,
    /// Bytes still to come when the response declared a `content-length`.
    remaining: Option<u64>,
}

impl UpstreamBody {
    pub fn new(recv: RecvStream, headers: &HeaderMap) -> Self {
        // A declared length lets the app's HTTP/1.1 connection send it as such rather
        // than chunked.
        let remaining = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        Self {
            recv,
            data_done: false,
            remaining,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Read is consumed: let the upstream send that much more.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut self.remaining {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // An ended stream first: a response to HEAD declares a length it never sends.
        match self.remaining {
            _ if self.recv.is_end_stream() => SizeHint::with_exact(0),
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

/// Sends the app's request body on `stream`, frame by frame as the app sends it, never
/// more than the upstream's flow-control window allows. An app that fails mid-body gets
/// the stream reset, so the upstream does not take a truncated body for a whole one.
pub(super) async fn pump(mut body: Incoming, mut stream: SendStream<Bytes>) {
    loop {
        let frame = match body.frame().await {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "app request body failed; resetting the stream");
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                if send_data(&mut stream, data).await.is_err() {
                    return;
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            let _ = stream.send_trailers(trailers);
            return;
        }
    }
}

/// Sends `data` in pieces as the upstream grants capacity. An error means the stream is
/// gone (reset by the upstream, or the connection closed): the rest has nowhere to go.
async fn send_data(stream: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), ()> {
    while data.has_remaining() {
        stream.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(_)) | None => return Err(()),
        };
        if granted == 0 {
            continue;
        }
        let piece = data.split_to(granted.min(data.len()));
        stream.send_data(piece, false).map_err(|_| ())?;
    }
    Ok(())
}
