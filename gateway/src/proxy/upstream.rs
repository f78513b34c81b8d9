//! The upstream side of a request: which backend of the rule (session pin, hash cohort or
//! weight), which endpoint, and what happens after each try (outlier detection, retries
//! on status codes, connect failures and per-try timeouts, all within the retry budget).
//!
//! A retry stays on the backend the request was given: a backend with weight 0 therefore
//! gets nothing, retries included, and the backend's filters stay the ones applied.

use super::{Ctx, WeirProxy};
use crate::balance::BackendRt;
use crate::balance::session::cohort;
use crate::balance::{Outcome, Pool};
use crate::route::{RuleRt, Target};
use http::HeaderMap;
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
/// Connection attempts per request when a rule sets no more retries: the first endpoint and
/// two others. Nothing was sent, so these are safe for every method.
const CONNECT_RETRIES: u32 = 2;
/// Retries of a try that broke before any answer, when the rule sets no more: two, so that
/// a request caught by a whole zone going down (its retry may meet the zone's other dead
/// endpoint through a pooled connection) still reaches a live one.
const RESET_RETRIES: u32 = 2;
/// The backoff doubles per retry up to this multiple of the rule's `backoff`.
const MAX_BACKOFF_FACTOR: u32 = 8;

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

/// The endpoints a request has tried, kept inline: no allocation on the hot path.
#[derive(Debug, Default)]
pub(super) struct Tried {
    list: [u32; 8],
    len: u8,
}

impl Tried {
    pub(super) fn push(&mut self, i: u32) {
        if (self.len as usize) < self.list.len() {
            self.list[self.len as usize] = i;
            self.len += 1;
        }
    }

    pub(super) fn as_slice(&self) -> &[u32] {
        &self.list[..self.len as usize]
    }
}

/// The rule's choice for this request: its pinned session's backend while that backend is
/// still in the rule (whatever its weight now), else its cohort's, else the next by weight.
pub(super) fn choose(rule: &RuleRt, headers: &HeaderMap, ctx: &mut Ctx) -> Option<usize> {
    let schedule = rule.schedule.as_ref()?;
    if let Some(token) = rule.persistence.as_ref().and_then(|p| p.read(headers)) {
        ctx.session = Some(token);
        if let Some(i) = rule
            .choices
            .iter()
            .position(|c| c.token == token.backend && matches!(c.target, Target::Backend(_)))
        {
            ctx.pinned = Some(token.endpoint);
            return Some(i);
        }
    }
    if let Some(hash) = rule.split_key.as_ref().and_then(|k| cohort(k, headers)) {
        return Some(schedule.pick_hashed(hash));
    }
    Some(schedule.pick())
}

impl Ctx {
    pub(super) fn https(&self) -> bool {
        self.listener
            .and_then(|(p, l)| self.rt.ports.get(&p).map(|p| p.listeners[l].scheme))
            == Some(Scheme::Https)
    }

    fn time_left(&self) -> bool {
        self.deadline.is_none_or(|d| d > Instant::now())
    }

    fn upstream(&self) -> Option<(&RuleRt, &BackendRt)> {
        Some((self.rule()?, &self.rt.backends[self.backend?]))
    }

    /// Ends the current try's in-flight count.
    pub(super) fn release_endpoint(&mut self) -> Option<u32> {
        let i = self.endpoint.take()?;
        self.rt.backends[self.backend?].pool.finish(i);
        Some(i)
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
        if ctx.retry_wait {
            ctx.retry_wait = false;
            if let Some(wait) = backoff(rule, ctx.retries) {
                let wait = match ctx.deadline {
                    Some(d) => wait.min(d.saturating_duration_since(Instant::now())),
                    None => wait,
                };
                tokio::time::sleep(wait).await;
            }
        }
        let remaining = ctx
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        if remaining == Some(Duration::ZERO) {
            return Err(Error::new(ErrorType::HTTPStatus(504)));
        }
        if ctx.attempts == 0
            && let Some(r) = &rule.retry
        {
            b.pool.state.budget().deposit(r.budget_percent);
        }
        let addr = match &b.external {
            Some(ext) => {
                let limit = remaining.map_or(CONNECT_TIMEOUT, |r| r.min(CONNECT_TIMEOUT));
                Self::external_addr(ext, ctx, limit).await?
            }
            None => {
                let i = pinned(&b.pool, ctx)
                    .or_else(|| b.pool.pick(ctx.tried.as_slice()))
                    .ok_or_else(|| Error::new(ErrorType::HTTPStatus(503)))?;
                b.pool.start(i);
                ctx.endpoint = Some(i);
                ctx.tried.push(i);
                b.pool.addr(i)
            }
        };
        ctx.responded = false;
        ctx.attempts += 1;
        let now = Instant::now();
        ctx.try_deadline = rule.backend_timeout.map(|t| now + t);
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
        let (Some((rule, b)), Some(i), Some(choice)) = (ctx.upstream(), ctx.endpoint, ctx.choice())
        else {
            return;
        };
        let Some(p) = &rule.persistence else {
            return;
        };
        let hash = b.pool.member(i).hash;
        // No pin, a pin to an endpoint that could not serve, or a sliding idle timeout.
        if ctx.pinned != Some(hash) || p.refreshes() {
            let (name, value) = p.issue(choice.token, hash, ctx.session, ctx.https());
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

    /// Feeds one try's result to outlier detection, counting an ejection it causes.
    fn record(&self, ctx: &Ctx, outcome: Outcome) {
        let (Some((_, b)), Some(i)) = (ctx.upstream(), ctx.endpoint) else {
            return;
        };
        if b.pool.state.record(&b.pool.member(i).state, outcome) {
            self.metrics
                .balance
                .ejections
                .with_label_values(&[&*b.label])
                .inc();
        }
    }

    /// Takes a retry from the budget, counting it by `reason`, or counts the refusal.
    fn take_retry(&self, b: &BackendRt, reason: &str) -> bool {
        let m = &self.metrics.balance;
        if b.pool.state.budget().withdraw() {
            m.retries.with_label_values(&[&*b.label, reason]).inc();
            true
        } else {
            m.budget_exhausted.with_label_values(&[&*b.label]).inc();
            false
        }
    }

    pub(super) fn on_connect_failure(&self, ctx: &mut Ctx, e: &mut Error) {
        self.record(ctx, Outcome::Unreachable);
        let Some((rule, b)) = ctx.upstream() else {
            return;
        };
        let allowed = rule
            .retry
            .as_ref()
            .map_or(0, |r| r.attempts)
            .max(CONNECT_RETRIES);
        if ctx.attempts <= allowed && ctx.time_left() {
            // Nothing reached the backend, so no budget: a dead endpoint costs nobody load.
            self.metrics
                .balance
                .retries
                .with_label_values(&[&*b.label, "connect"])
                .inc();
            e.set_retry(true);
        }
    }

    /// Called with the response head of each try: counts it for outlier detection and
    /// turns a retriable status into a retry while attempts and budget last.
    /// `replayable`: the request can be sent again (an idempotent method whose body is
    /// still buffered), as Pingora requires for a retry after something was sent.
    pub(super) fn on_response(&self, ctx: &mut Ctx, status: u16, replayable: bool) -> Result<()> {
        ctx.responded = true;
        self.record(
            ctx,
            if status >= 500 {
                Outcome::Failure
            } else {
                Outcome::Success
            },
        );
        let Some((rule, b)) = ctx.upstream() else {
            return Ok(());
        };
        let Some(r) = &rule.retry else {
            return Ok(());
        };
        if replayable
            && r.codes.contains(&status)
            && ctx.retries < r.attempts
            && ctx.time_left()
            && self.take_retry(b, "status")
        {
            ctx.retries += 1;
            ctx.retry_wait = true;
            let mut e = Error::explain(ErrorType::HTTPStatus(status), "retrying on status");
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    /// An error while a try was in progress: a broken or timed-out response counts as a
    /// failure of the endpoint. A try that broke before any answer (an endpoint dying with
    /// the request in flight) is retried on other endpoints even without a `retry` field,
    /// so losing a pod, or a zone, fails no request; a per-try timeout is retried when the rule
    /// retries 504s. Neither for a request that cannot be replayed.
    pub(super) fn on_try_error(&self, ctx: &mut Ctx, e: &mut Error, replayable: bool) {
        if matches!(e.etype(), ErrorType::HTTPStatus(_)) {
            return; // our own retry of a status: counted already
        }
        if e.esource() != &ErrorSource::Upstream {
            return;
        }
        self.record(ctx, Outcome::Failure);
        let timed_out = matches!(e.etype(), ErrorType::ReadTimedout);
        let Some((rule, b)) = ctx.upstream().filter(|_| replayable) else {
            return;
        };
        let (reason, allowed) = match &rule.retry {
            Some(r) if timed_out && r.codes.contains(&504) => ("timeout", r.attempts),
            Some(r) if !timed_out && !ctx.responded => ("reset", r.attempts.max(RESET_RETRIES)),
            None if !timed_out && !ctx.responded => ("reset", RESET_RETRIES),
            _ => return,
        };
        if ctx.retries < allowed && ctx.time_left() && self.take_retry(b, reason) {
            ctx.retries += 1;
            ctx.retry_wait = reason == "timeout";
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

/// The pinned session's endpoint, when this is the request's first try and it is usable.
fn pinned(pool: &Pool, ctx: &Ctx) -> Option<u32> {
    if ctx.attempts > 0 {
        return None;
    }
    let i = pool.find(ctx.pinned?)?;
    pool.usable_now(i).then_some(i)
}

/// The wait before retry number `n` (1-based): the rule's backoff, doubling per retry,
/// with up to a quarter of jitter so that retries of many clients do not arrive together.
fn backoff(rule: &RuleRt, n: u32) -> Option<Duration> {
    let base = Duration::from_millis(rule.retry.as_ref()?.backoff_ms?);
    let factor = 2u32
        .saturating_pow(n.saturating_sub(1))
        .min(MAX_BACKOFF_FACTOR);
    let wait = base * factor;
    Some(wait + wait.mul_f64(fastrand::f64() * 0.25))
}
