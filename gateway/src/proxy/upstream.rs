//! The upstream side of a request as the proxy sees it: each try's endpoint and time
//! limits, and the try's end reported to [`crate::balance::tries`], which decides on
//! retries and feeds outlier detection. Pingora's error retry flags are set from those
//! decisions for its `HttpProxy` path.

use super::{Ctx, WeirProxy};
use crate::balance::BackendRt;
use crate::balance::tries::Broke;
use crate::route::RuleRt;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::{Error, ErrorSource, ErrorType};
use std::time::{Duration, Instant};
use weir_model::{RouteKind, Scheme};

/// Time to establish a connection to one endpoint before trying another.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle upstream connection stays in the pool.
pub(super) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Concurrent streams on one HTTP/2 upstream connection.
const H2_STREAMS: usize = 100;

/// How long a backend connection may stall, per read and per write, when the route sets no
/// shorter timeout: a backend that stops answering, or stops reading a request body, must
/// not hold a request (and its client) forever.
#[derive(Debug, Clone, Copy)]
pub struct BackendTimeouts {
    pub read: Duration,
    pub write: Duration,
}

impl Default for BackendTimeouts {
    fn default() -> Self {
        Self {
            read: Duration::from_secs(300),
            write: Duration::from_secs(60),
        }
    }
}

/// One try's endpoint and limits.
#[derive(Debug)]
pub(super) struct Attempt {
    pub addr: std::net::SocketAddr,
    /// The backend speaks HTTP/2 (h2c, gRPC, or ALPN over TLS).
    pub h2: bool,
    /// The backend's policy asks for TLS.
    pub tls: bool,
    pub connect: Duration,
    pub read: Option<Duration>,
    pub write: Option<Duration>,
}

impl Attempt {
    /// Plain-text HTTP/1: Weir's own pool and connection, not Pingora's connector.
    pub(super) fn plain(&self) -> bool {
        !self.tls && !self.h2
    }
}

impl Ctx {
    pub(super) fn https(&self) -> bool {
        self.listener
            .and_then(|(p, l)| self.rt.ports.get(&p).map(|p| p.listeners[l].scheme))
            == Some(Scheme::Https)
    }

    /// The scheme the client used, for `X-Forwarded-Proto`.
    pub(super) fn scheme(&self) -> &'static str {
        if self.https() { "https" } else { "http" }
    }

    fn time_left(&self) -> bool {
        self.deadline.is_none_or(|d| d > Instant::now())
    }

    fn upstream(&self) -> Option<(&RuleRt, &BackendRt)> {
        Some((self.rule()?, &self.rt.backends[self.backend?]))
    }

    /// Ends the current try's in-flight count.
    pub(super) fn release_endpoint(&mut self) -> Option<u32> {
        let b = self.backend?;
        self.tries.release(&self.rt.backends[b].pool)
    }
}

impl WeirProxy {
    /// Picks the endpoint of the request's next try (after the retry backoff, when the
    /// last try's answer is being retried) and the try's time limits.
    pub(super) async fn next_attempt(&self, ctx: &mut Ctx) -> Result<Attempt> {
        let (Some(rule), Some(backend)) = (ctx.rule, ctx.backend) else {
            return Err(Error::new(ErrorType::HTTPStatus(500)));
        };
        ctx.release_endpoint();
        let rt = ctx.rt.clone();
        let (rule, b) = (&rt.rules[rule], &rt.backends[backend]);
        if let Some(wait) = ctx.tries.backoff(rule) {
            let wait = match ctx.deadline {
                Some(d) => wait.min(d.saturating_duration_since(Instant::now())),
                None => wait,
            };
            tokio::time::sleep(wait).await;
        }
        let remaining = ctx
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        if remaining == Some(Duration::ZERO) {
            return Err(Error::new(ErrorType::HTTPStatus(504)));
        }
        ctx.tries.open(rule, &b.pool);
        let addr = match &b.external {
            Some(ext) => {
                let limit = remaining.map_or(CONNECT_TIMEOUT, |r| r.min(CONNECT_TIMEOUT));
                Self::external_addr(ext, ctx, limit).await?
            }
            None => {
                let i = ctx
                    .tries
                    .start(&b.pool)
                    .ok_or_else(|| Error::new(ErrorType::HTTPStatus(503)))?;
                b.pool.addr(i)
            }
        };
        ctx.try_deadline = rule.backend_timeout.map(|t| Instant::now() + t);
        if self.access_log.is_some() {
            ctx.try_started = Some(Instant::now());
        }
        let min = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Each read must come within the try's and the request's time; the body loop
        // checks both deadlines between reads, so a slow trickle cannot outlast them.
        let read = min(rule.backend_timeout, remaining);
        Ok(Attempt {
            addr,
            // gRPC and h2c backends get HTTP/2 with prior knowledge; over TLS, by ALPN.
            h2: b.h2c || b.tls.as_ref().is_some_and(|t| t.h2) || rule.kind == RouteKind::Grpc,
            tls: b.tls.is_some(),
            connect: min(Some(CONNECT_TIMEOUT), remaining).unwrap_or(CONNECT_TIMEOUT),
            read: min(read, Some(self.backend_timeouts.read)),
            write: min(remaining, Some(self.backend_timeouts.write)),
        })
    }

    /// Pingora's peer for an attempt: its connector makes TLS and HTTP/2 connections.
    pub(super) fn attempt_peer(&self, ctx: &Ctx, a: &Attempt) -> Result<Box<HttpPeer>> {
        let Some(b) = ctx.backend.map(|i| &ctx.rt.backends[i]) else {
            return Err(Error::new(ErrorType::HTTPStatus(500)));
        };
        let mut peer = self.peer_for(ctx, b, a.addr)?;
        if a.h2 {
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = H2_STREAMS;
        }
        peer.options.connection_timeout = Some(a.connect);
        peer.options.read_timeout = a.read;
        peer.options.write_timeout = a.write;
        peer.options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        Ok(Box::new(peer))
    }

    pub(super) async fn pick_peer(&self, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let a = self.next_attempt(ctx).await?;
        self.attempt_peer(ctx, &a)
    }

    /// Pins a new session, moves a session whose endpoint changed, or slides an idle
    /// timeout: the response carries the token the next request should bring.
    pub(super) fn session_header(&self, resp: &mut ResponseHeader, ctx: &Ctx) {
        let (Some((rule, b)), Some(choice)) = (ctx.upstream(), ctx.choice()) else {
            return;
        };
        if let Some((name, value)) = ctx.tries.session_field(rule, b, choice.token, ctx.https()) {
            // Appended: the backend's own cookies stay.
            let _ = resp.append_header(name, value);
        }
    }

    /// In-zone and cross-zone requests and bytes, per Service, for backends with zones;
    /// `ended` is the endpoint of the request's last try, `bytes`
    /// the request's body bytes read and the response's sent.
    pub(super) fn count_zone_traffic(&self, bytes: (usize, usize), ctx: &Ctx, ended: Option<u32>) {
        let (Some(i), Some((_, b))) = (ended, ctx.upstream()) else {
            return;
        };
        let Some(local) = b.pool.is_local(i) else {
            return;
        };
        let counters = b
            .zone_counters
            .get_or_init(|| self.metrics.balance.zone_counters(&b.label));
        let c = &counters[usize::from(!local)];
        c.requests.inc();
        c.request_bytes.inc_by(bytes.0 as u64);
        c.response_bytes.inc_by(bytes.1 as u64);
    }

    pub(super) fn on_connect_failure(&self, ctx: &mut Ctx, e: &mut Error) {
        let time_left = ctx.time_left();
        let (Some(r), Some(bi)) = (ctx.rule, ctx.backend) else {
            return;
        };
        let (rule, b) = (&ctx.rt.rules[r], &ctx.rt.backends[bi]);
        if ctx
            .tries
            .connect_failed(rule, b, &self.metrics.balance, time_left)
        {
            e.set_retry(true);
        }
    }

    /// Called with the response head of each try: turns a retriable status into a retry
    /// (an error with its retry flag set) when `balance` says so. `replayable`: the
    /// request can be sent again (an idempotent method whose body is still buffered).
    pub(super) fn on_response(&self, ctx: &mut Ctx, status: u16, replayable: bool) -> Result<()> {
        let time_left = ctx.time_left();
        let (Some(r), Some(bi)) = (ctx.rule, ctx.backend) else {
            return Ok(());
        };
        let (rule, b) = (&ctx.rt.rules[r], &ctx.rt.backends[bi]);
        let m = &self.metrics.balance;
        if ctx
            .tries
            .answered(rule, b, m, status, replayable, time_left)
        {
            let mut e = Error::explain(ErrorType::HTTPStatus(status), "retrying on status");
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    /// An error while a try was in progress, reported to `balance`, which decides whether
    /// the request goes again.
    pub(super) fn on_try_error(&self, ctx: &mut Ctx, e: &mut Error, replayable: bool) {
        if matches!(e.etype(), ErrorType::HTTPStatus(_)) {
            return; // our own retry of a status: counted already
        }
        if e.esource() != &ErrorSource::Upstream {
            return;
        }
        let how = match e.etype() {
            ErrorType::ReadTimedout => Broke::TimedOut,
            _ => Broke::Reset,
        };
        let time_left = ctx.time_left();
        let (Some(r), Some(bi)) = (ctx.rule, ctx.backend) else {
            return;
        };
        let (rule, b) = (&ctx.rt.rules[r], &ctx.rt.backends[bi]);
        let m = &self.metrics.balance;
        if ctx.tries.broke(rule, b, m, how, replayable, time_left) {
            e.set_retry(true);
        }
    }

    /// Ends a response body early when the try or the whole request ran out of time.
    pub(super) fn check_deadlines(ctx: &Ctx) -> Result<()> {
        if ctx.try_deadline.is_none() && ctx.deadline.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        if ctx.try_deadline.is_some_and(|d| now >= d) || ctx.deadline.is_some_and(|d| now >= d) {
            return Err(
                Error::explain(ErrorType::ReadTimedout, "backend request timed out").into_up(),
            );
        }
        Ok(())
    }
}
