//! One accepted client connection, from the accept to its close: the TLS handshake, the
//! choice of HTTP/1 or HTTP/2 (ALPN, or the h2c preface on cleartext ports), and the
//! header deadline that runs from the accept over both.

use super::head::{self, First, Wait};
use super::limits::ConnLimits;
use super::stop::Stop;
use super::{h1, h2};
use crate::metrics::Metrics;
use crate::proxy::WeirProxy;
use crate::proxy::deadline::Deadline;
use crate::proxy::tcp::TcpConn;
use bytes::BytesMut;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::{ALPN, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

/// A first read's room: most request heads fit.
const HEAD_BUFFER: usize = 4096;

/// What every connection of one listener shares.
#[derive(Clone)]
pub(super) struct Conn {
    pub proxy: Arc<HttpProxy<WeirProxy>>,
    pub weir: Arc<WeirProxy>,
    pub acceptor: Option<Arc<Acceptor>>,
    pub shutdown: ShutdownWatch,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<ConnLimits>,
}

/// Counts the connection open until it is dropped, whichever way it ends.
struct Open(Arc<Metrics>);

impl Open {
    fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.downstream_connections.inc();
        Self(metrics.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.downstream_connections.dec();
    }
}

impl Conn {
    pub(super) async fn serve(self, tcp: TcpStream) {
        let deadline = Instant::now() + self.limits.header_timeout;
        let _ = tcp.set_nodelay(true);
        let _open = Open::new(&self.metrics);
        let mut stop = Stop::new(&self.shutdown);
        let mut tcp = TcpConn::new(tcp);
        let Some(acceptor) = self.acceptor.clone() else {
            // Cleartext: HTTP/1, or h2c when the first bytes are the HTTP/2 preface.
            let mut timer = Deadline::new();
            let (buf, first) = self
                .first_head(&mut tcp, &mut timer, deadline, true, &mut stop)
                .await;
            return match first {
                Ok(First::Http1) => h1::serve(&self, &mut stop, Box::new(tcp), buf, timer).await,
                Ok(First::H2c) => {
                    tcp.unread(&buf);
                    h2::serve(&self, &mut stop, Box::new(tcp), deadline).await
                }
                Err(end) => self.ended(&mut tcp, end, true).await,
            };
        };
        let mut stream: Stream =
            match tokio::time::timeout_at(deadline, acceptor.tls_handshake(tcp)).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => {
                    debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    self.metrics.listen.closed("handshake_timeout");
                    return;
                }
            };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return h2::serve(&self, &mut stop, stream, deadline).await;
        }
        let mut timer = Deadline::new();
        let (buf, first) = self
            .first_head(&mut stream, &mut timer, deadline, false, &mut stop)
            .await;
        match first {
            Ok(_) => h1::serve(&self, &mut stop, stream, buf, timer).await,
            Err(end) => self.ended(&mut stream, end, true).await,
        }
    }

    /// Reads the connection's first request head (or, with `sniff_h2c`, the h2c preface)
    /// within the header deadline that runs from the accept.
    async fn first_head<S: tokio::io::AsyncRead + Unpin>(
        &self,
        io: &mut S,
        timer: &mut Deadline,
        deadline: Instant,
        sniff_h2c: bool,
        stop: &mut Stop,
    ) -> (BytesMut, Result<First, head::End>) {
        let mut buf = BytesMut::with_capacity(HEAD_BUFFER);
        let first = head::read(
            io,
            &mut buf,
            timer,
            Wait::First(deadline),
            sniff_h2c,
            &self.limits,
            stop,
        )
        .await;
        (buf, first)
    }
}
