//! One try's exchange with a backend on Weir's own HTTP/1 path: the connection (a pooled
//! or new plain HTTP/1 one from [`super::pool`]; TLS and HTTP/2 from Pingora's connector,
//! which keeps their pools), the request head and body out, the response head and body
//! back to the client, and the connection kept for reuse when the exchange ended cleanly.

use super::answer::Answer;
use super::backend_h1;
use super::client_h1::Session as ServerV1;
use super::h1::{EXTRA_FIELDS, replayable};
use super::headers::{self, client_copy};
use super::pool;
use super::upstream::{Attempt, POOL_IDLE_TIMEOUT};
use super::{Ctx, WeirProxy};
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::Stream;
use pingora::protocols::http::client::HttpSession as ClientSession;
use pingora::protocols::http::v1::client::HttpSession as ClientV1;
use pingora::protocols::http::v2::client::Http2Session;
use pingora::{Error, ErrorSource, ErrorType};
use std::net::SocketAddr;

/// A try's connection to its backend.
pub(super) struct Upstream {
    conn: Conn,
    /// Taken from a pool rather than opened for this try.
    reused: bool,
    /// The request head went out whole.
    sent: bool,
}

enum Conn {
    /// Plain HTTP/1, from this thread's pool; boxed, so that the pool and each try move a
    /// pointer rather than the connection's buffers and timer.
    Own(Box<backend_h1::Conn>, SocketAddr),
    /// TLS or HTTP/2 through Pingora's connector, given back to it with its peer.
    Pingora(Box<ClientSession>, Box<HttpPeer>),
}

impl Upstream {
    /// A connection for the attempt: a pooled one when there is one.
    pub(super) async fn connect(proxy: &WeirProxy, ctx: &Ctx, a: &Attempt) -> Result<Self> {
        if a.plain()
            && let Some(conn) = pool::take(a.addr, POOL_IDLE_TIMEOUT)
        {
            return Ok(Self::own(conn, a, true));
        }
        Self::connect_fresh(proxy, ctx, a).await
    }

    /// A new connection for the attempt.
    pub(super) async fn connect_fresh(proxy: &WeirProxy, ctx: &Ctx, a: &Attempt) -> Result<Self> {
        if a.plain() {
            let conn = Box::new(backend_h1::Conn::new(connect_plain(a).await?));
            return Ok(Self::own(conn, a, false));
        }
        let peer = proxy.attempt_peer(ctx, a)?;
        let (session, reused) = proxy.connector.get_http_session(&*peer).await?;
        proxy
            .check_upstream_names(ctx, &peer, session.digest())
            .await?;
        Ok(Self {
            conn: Conn::Pingora(Box::new(session), peer),
            reused,
            sent: false,
        })
    }

    /// Whether this is Weir's own plain HTTP/1 connection, which can send the client's head
    /// as it came ([`Outgoing::AsSent`]).
    pub(super) fn is_own(&self) -> bool {
        matches!(self.conn, Conn::Own(..))
    }

    pub(super) fn reused(&self) -> bool {
        self.reused
    }

    fn own(mut conn: Box<backend_h1::Conn>, a: &Attempt, reused: bool) -> Self {
        conn.set_timeouts(a.read, a.write);
        Self {
            conn: Conn::Own(conn, a.addr),
            reused,
            sent: false,
        }
    }

    /// Whether a failed try met a pooled connection the backend had already closed, and
    /// may go again on a fresh one to the same endpoint: nothing came back, and the request
    /// either never went out or can be sent again.
    pub(super) fn stale_retry(&self, e: &Error, ctx: &Ctx, replayable: bool) -> bool {
        self.reused
            && !ctx.tries.responded()
            && e.esource() == &ErrorSource::Upstream
            && !matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::HTTPStatus(_)
            )
            && (!self.sent || replayable)
    }

    /// Gives a connection whose exchange ended cleanly back to its pool.
    pub(super) async fn release(self, proxy: &WeirProxy) {
        match self.conn {
            Conn::Own(conn, addr) => {
                if conn.reusable() {
                    pool::put(addr, conn, POOL_IDLE_TIMEOUT);
                }
            }
            Conn::Pingora(session, peer) => {
                proxy
                    .connector
                    .release_http_session(*session, &*peer, Some(POOL_IDLE_TIMEOUT))
                    .await;
            }
        }
    }

    /// Sends the request and relays the response.
    pub(super) async fn exchange(
        &mut self,
        proxy: &WeirProxy,
        s: &mut ServerV1,
        ctx: &mut Ctx,
        request: Outgoing,
    ) -> Result<()> {
        let request = match (request, &mut self.conn) {
            (Outgoing::AsSent(added), Conn::Own(c, _)) => {
                c.send_client_head(s.req_header(), s.fields(), &added)
                    .await
                    .map_err(up)?;
                None
            }
            (Outgoing::AsSent(_), Conn::Pingora(..)) => {
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "a request head sent as it came on Pingora's connection",
                ));
            }
            (Outgoing::Copy(request), Conn::Own(c, _)) => {
                c.send_head(&request).await.map_err(up)?;
                headers::recycle(http::request::Parts::from(request).headers);
                None
            }
            (Outgoing::Copy(request), Conn::Pingora(..)) => Some(request),
        };
        match &mut self.conn {
            Conn::Own(c, _) => {
                let c = &mut **c;
                self.sent = true;
                let head_request = s.req_header().method == http::Method::HEAD;
                send_body(s, ctx, c).await?;
                c.finish_body().await.map_err(up)?;
                let answer = c.read_answer(head_request).await.map_err(up)?;
                let answered = answer_plain(proxy, s, ctx, &answer).await;
                c.reclaim(answer);
                answered?;
                relay_body(s, ctx, c).await?;
            }
            Conn::Pingora(session, peer) => match &mut **session {
                ClientSession::H1(h1) => {
                    let mut request = Box::new(copied(request)?);
                    // HTTP/1.1 to backends whatever the client spoke, as the connection is kept.
                    request.set_version(http::Version::HTTP_11);
                    h1.write_request_header(request).await.map_err(up)?;
                    self.sent = true;
                    send_body(s, ctx, h1).await?;
                    h1.finish_body().await.map_err(up)?;
                    loop {
                        h1.read_response().await.map_err(up)?;
                        let status = h1.get_status().map_or(0, |c| c.as_u16());
                        // Interim answers (100 Continue was the gateway's to give) are dropped.
                        if !(100..200).contains(&status) || status == 101 {
                            break;
                        }
                    }
                    // Keep-alive as the backend's answer allows; `reuse` reads it.
                    h1.respect_keepalive();
                    answer(proxy, s, ctx, h1.resp_header()).await?;
                    relay_body(s, ctx, h1).await?;
                }
                ClientSession::H2(h2) => {
                    let mut request = Box::new(copied(request)?);
                    h2_target(&mut request, peer.is_tls())?;
                    let empty =
                        s.is_body_done() && s.get_retry_buffer().is_none_or(|b| b.is_empty());
                    h2.write_request_header(request, empty).map_err(up)?;
                    self.sent = true;
                    if !empty {
                        send_body(s, ctx, h2).await?;
                        h2.finish_request_body().map_err(up)?;
                    }
                    h2.read_response_header().await.map_err(up)?;
                    answer(proxy, s, ctx, h2.response_header()).await?;
                    relay_body(s, ctx, h2).await?;
                }
                _ => {
                    return Err(Error::explain(
                        ErrorType::InternalError,
                        "an unsupported upstream protocol",
                    ));
                }
            },
        }
        s.finish_body().await.map_err(down)?;
        Ok(())
    }
}

/// The backend's response head, reported to `balance` (which may retry its status), then
/// edited for the client and sent.
async fn answer(
    proxy: &WeirProxy,
    s: &mut ServerV1,
    ctx: &mut Ctx,
    head: Option<&ResponseHeader>,
) -> Result<()> {
    let head = head.ok_or_else(|| Error::new(ErrorType::InvalidHTTPHeader).into_up())?;
    answer_copied(proxy, s, ctx, client_copy(head, EXTRA_FIELDS)).await
}

/// [`answer`] for a plain backend's head: written as it came, less its hop-by-hop fields,
/// when nothing edits it.
async fn answer_plain(
    proxy: &WeirProxy,
    s: &mut ServerV1,
    ctx: &mut Ctx,
    a: &Answer,
) -> Result<()> {
    if ctx.edits_response() {
        let head = a.to_header(EXTRA_FIELDS).map_err(up)?;
        return answer_copied(proxy, s, ctx, head).await;
    }
    proxy.on_response(ctx, a.status.as_u16(), replayable(s))?;
    s.write_fields(a.status, a.fields(), a.framing_fields())
        .await
        .map_err(down)
}

/// [`answer`] for a head already copied for the client.
async fn answer_copied(
    proxy: &WeirProxy,
    s: &mut ServerV1,
    ctx: &mut Ctx,
    mut resp: ResponseHeader,
) -> Result<()> {
    proxy.on_response(ctx, resp.status.as_u16(), replayable(s))?;
    proxy.downstream_response(&mut resp, ctx, true);
    s.write_response_header(&resp).await.map_err(down)?;
    headers::recycle(http::response::Parts::from(resp).headers);
    Ok(())
}

/// The backend's request head, as a try sends it.
pub(super) enum Outgoing {
    /// A copy of the client's, edited.
    Copy(RequestHeader),
    /// The client's own, with the gateway's fields (Weir's own connections only).
    AsSent(headers::Added),
}

fn copied(request: Option<RequestHeader>) -> Result<RequestHeader> {
    request
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "no request head for the backend"))
}

fn up(e: Box<Error>) -> Box<Error> {
    e.into_up()
}

fn down(e: Box<Error>) -> Box<Error> {
    e.into_down()
}

/// A new plain-text connection to the attempt's endpoint, within its connect timeout.
async fn connect_plain(a: &Attempt) -> Result<Stream> {
    let connect = tokio::net::TcpStream::connect(a.addr);
    let failed = |kind, cause: Option<std::io::Error>| {
        let what = format!("connecting to {}", a.addr);
        match cause {
            Some(c) => Error::because(kind, what, c),
            None => Error::explain(kind, what),
        }
        .into_up()
    };
    let tcp = match tokio::time::timeout(a.connect, connect).await {
        Err(_) => return Err(failed(ErrorType::ConnectTimedout, None)),
        Ok(Err(e)) => {
            let kind = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
                std::io::ErrorKind::TimedOut => ErrorType::ConnectTimedout,
                _ => ErrorType::ConnectError,
            };
            return Err(failed(kind, Some(e)));
        }
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    Ok(Box::new(super::tcp::TcpConn::new(tcp)))
}

/// An HTTP/2 request carries its scheme and authority in the URI (from `Host`).
fn h2_target(req: &mut RequestHeader, tls: bool) -> Result<()> {
    let host = req
        .headers
        .get(http::header::HOST)
        .map(|h| h.as_bytes().to_vec())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes().to_vec()))
        .unwrap_or_default();
    let authority = http::uri::Authority::try_from(host.as_slice())
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "invalid Host"))?;
    let path = req
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let uri = http::Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "invalid request target"))?;
    req.set_uri(uri);
    // Connection-specific fields have no place in HTTP/2 (RFC 9113 §8.2.2).
    req.remove_header(&http::header::TRANSFER_ENCODING);
    Ok(())
}

/// A try's backend session as the bodies see it: Weir's own HTTP/1 connection, or
/// Pingora's HTTP/1 or HTTP/2 session.
trait Bodies {
    /// Sends a piece of the request body.
    async fn put(&mut self, data: Bytes) -> Result<()>;
    /// Relays the next piece of the response body to the client; false at its end.
    async fn relay_piece(&mut self, s: &mut ServerV1) -> Result<bool>;
}

impl Bodies for backend_h1::Conn {
    async fn put(&mut self, data: Bytes) -> Result<()> {
        self.send_body(&data).await
    }
    async fn relay_piece(&mut self, s: &mut ServerV1) -> Result<bool> {
        if !self.has_buffered() {
            // Nothing of the body has come yet: the client gets the head now, not with it.
            s.flush_held().await.map_err(down)?;
        }
        let Some(n) = self.body_ready().await.map_err(up)? else {
            return Ok(false);
        };
        s.write_body(self.body(n)).await.map_err(down)?;
        self.consume(n);
        Ok(true)
    }
}

impl Bodies for ClientV1 {
    async fn put(&mut self, data: Bytes) -> Result<()> {
        self.write_body(&data).await.map(|_| ())
    }
    async fn relay_piece(&mut self, s: &mut ServerV1) -> Result<bool> {
        s.flush_held().await.map_err(down)?;
        let Some(piece) = self.read_body_ref().await.map_err(up)? else {
            return Ok(false);
        };
        s.write_body(piece).await.map_err(down)?;
        Ok(true)
    }
}

impl Bodies for Http2Session {
    async fn put(&mut self, data: Bytes) -> Result<()> {
        self.write_request_body(data, false).await
    }
    async fn relay_piece(&mut self, s: &mut ServerV1) -> Result<bool> {
        s.flush_held().await.map_err(down)?;
        let Some(piece) = self.read_response_body().await.map_err(up)? else {
            return Ok(false);
        };
        s.write_body(&piece).await.map_err(down)?;
        Ok(true)
    }
}

/// Streams the client's body to the backend: first what an earlier try read (the retry
/// buffer), then the rest as it comes, each chunk fed to the mirrors too.
async fn send_body(s: &mut ServerV1, ctx: &mut Ctx, to: &mut impl Bodies) -> Result<()> {
    if let Some(replay) = s.get_retry_buffer()
        && !replay.is_empty()
    {
        to.put(replay).await.map_err(up)?;
    }
    while let Some(chunk) = next_chunk(s, ctx).await? {
        to.put(chunk).await.map_err(up)?;
    }
    Ok(())
}

/// Streams the backend's response body to the client, within the request's deadlines.
async fn relay_body(s: &mut ServerV1, ctx: &mut Ctx, from: &mut impl Bodies) -> Result<()> {
    loop {
        WeirProxy::check_deadlines(ctx)?;
        if !from.relay_piece(s).await? {
            return Ok(());
        }
    }
}

/// The client's next body chunk, fed to the request's mirrors.
async fn next_chunk(s: &mut ServerV1, ctx: &mut Ctx) -> Result<Option<Bytes>> {
    if s.is_body_done() {
        return Ok(None);
    }
    let chunk = s.read_body_bytes().await.map_err(down)?;
    for feed in &mut ctx.mirrors {
        match &chunk {
            Some(c) => feed.feed(c),
            None => feed.finish(),
        }
    }
    if s.is_body_done() {
        for feed in &mut ctx.mirrors {
            feed.finish();
        }
    }
    Ok(chunk)
}
