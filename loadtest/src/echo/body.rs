//! The response body used for every response: at most one data frame, then optional
//! trailers.
//!
//! A concrete type rather than a boxed `dyn Body` saves an allocation per request, and
//! one type covers both plain responses (exact length, so HTTP/1.1 sends
//! `content-length`) and gRPC (trailers, so the length is left open and HTTP/1.1 would
//! fall back to chunked encoding).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

#[derive(Debug, Default)]
pub(crate) struct EchoBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl EchoBody {
    pub(crate) fn empty() -> Self {
        Self::default()
    }

    pub(crate) fn full(data: impl Into<Bytes>) -> Self {
        Self {
            data: Some(data.into()),
            trailers: None,
        }
    }

    pub(crate) fn with_trailers(data: impl Into<Bytes>, trailers: HeaderMap) -> Self {
        Self {
            data: Some(data.into()),
            trailers: Some(trailers),
        }
    }

    fn data_len(&self) -> u64 {
        self.data.as_ref().map_or(0, |data| data.len() as u64)
    }
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        // An empty data frame would be a wasted write, so skip straight to the trailers.
        if let Some(data) = this.data.take().filter(|data| !data.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(
            this.trailers
                .take()
                .map(|trailers| Ok(Frame::trailers(trailers))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.data_len() == 0 && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.trailers.is_none() {
            SizeHint::with_exact(self.data_len())
        } else {
            let mut hint = SizeHint::new();
            hint.set_lower(self.data_len());
            hint
        }
    }
}
