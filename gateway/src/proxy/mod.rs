//! The Pingora `ProxyHttp` implementation: a thin sequence of calls into [`crate::route`],
//! [`crate::balance`], the filters and [`crate::metrics`]. Each request reads the live
//! runtime once and keeps that `Arc` to its end, so a config swap never changes a request
//! half-way and in-flight requests finish on the runtime they started with.

mod answer;
mod authorize;
mod backend_h1;
pub(crate) mod client_h1;
pub(crate) mod deadline;
mod exchange;
mod h1;
mod headers;
mod limit;
mod log;
pub mod mirror;
mod peer;
mod pool;
mod respond;
pub(crate) mod tcp;
mod upstream;
mod wire;

pub use upstream::BackendTimeouts;

use crate::accesslog::{AccessLog, RateLimitDecision};
use crate::balance::tries::Tries;
use crate::metrics::{Metrics, RequestLabels};
use crate::ratelimit::Limiter;
use crate::ratelimit::headers::{Fields, Refused};
use crate::route::filters::{HeaderOps, RedirectInput, redirect_location};
use crate::route::matcher::RequestView;
use crate::route::{self, Found, MeshQuery};
use crate::route::{Choice, RuleRt, Target, authority_port, normalize_host};
use crate::runtime::Runtime;
use crate::tls::ConnTls;
use crate::trace::Tracer;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use mirror::{BodyFeed, Mirror};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Cloned for Pingora's `HttpProxy` (HTTP/2, upgrades) and Weir's own HTTP/1 loop: the
/// clones share every part.
#[derive(Clone)]
pub struct WeirProxy {
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    mirror: Arc<Mirror>,
    limiter: Arc<Limiter>,
    backend_timeouts: BackendTimeouts,
    /// TLS and HTTP/2 backends on Weir's own HTTP/1 path (plain HTTP/1 ones use `pool`).
    connector: Arc<pingora::connectors::http::Connector>,
    access_log: Option<Arc<AccessLog>>,
    tracer: Option<Arc<Tracer>>,
}

impl std::fmt::Debug for WeirProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeirProxy").finish_non_exhaustive()
    }
}

impl WeirProxy {
    pub fn new(
        runtime: Arc<ArcSwap<Runtime>>,
        metrics: Arc<Metrics>,
        limiter: Arc<Limiter>,
        backend_timeouts: BackendTimeouts,
    ) -> Self {
        Self {
            runtime,
            metrics,
            mirror: Arc::new(Mirror::new()),
            limiter,
            backend_timeouts,
            connector: Arc::new(pingora::connectors::http::Connector::new(None)),
            access_log: None,
            tracer: None,
        }
    }

    /// Every request is also a span, exported by `tracer`.
    pub fn with_tracer(mut self, tracer: Option<Arc<Tracer>>) -> Self {
        self.tracer = tracer;
        self
    }

    /// Every request's end also writes a line to `log`.
    pub fn with_access_log(mut self, log: Option<Arc<AccessLog>>) -> Self {
        self.access_log = log;
        self
    }
}

/// Per-request state.
#[derive(Debug)]
pub struct Ctx {
    rt: Arc<Runtime>,
    start: Instant,
    listener: Option<(u16, usize)>,
    rule: Option<usize>,
    choice: Option<usize>,
    backend: Option<usize>,
    /// The PathPrefix the request matched, when a URLRewrite needs it.
    prefix: Option<Arc<str>>,
    grpc: bool,
    deadline: Option<Instant>,
    /// The request's tries at its backend, and their endpoints (`balance` decides).
    tries: Tries,
    /// When the current try must have finished (`timeouts.backendRequest`).
    try_deadline: Option<Instant>,
    mirrors: Vec<BodyFeed>,
    /// The `RateLimit` fields for the response, when a policy with headers admitted it.
    rate_limit_fields: Option<Fields>,
    /// The caller's verified SPIFFE ID, on mesh listeners only: elsewhere a client
    /// certificate proves nothing the fleet should vouch for.
    caller: Option<http::HeaderValue>,
    /// The Service port a mesh listener routed to, `namespace/name:port`.
    destination: Option<Arc<str>>,
    /// The port the caller addressed, for authorization: the Service port on a mesh
    /// listener, else the listener's.
    addressed_port: u16,
    /// Authorization's decision, when a policy applied.
    authz: Option<crate::authz::Verdict>,
    /// Whether the listener or the rule has AuthorizationPolicies.
    authz_applies: bool,
    /// The trace id of a `traceparent` the gateway started (one the client sent is read
    /// from its head), for the access log.
    trace: crate::trace::TraceSlot,
    /// When the current try began, kept only for the access log.
    try_started: Option<Instant>,
    rate_limit: Option<RateLimitDecision>,
}

/// What `request_filter` decided, computed while the request is borrowed.
enum Decision {
    Respond {
        status: u16,
        location: Option<String>,
        /// A rate limit's refusal, with its 429 fields.
        refused: Option<Refused>,
    },
    Proxy,
}

impl Ctx {
    fn rule(&self) -> Option<&RuleRt> {
        self.rule.map(|r| &self.rt.rules[r])
    }

    fn choice(&self) -> Option<&Choice> {
        Some(&self.rule()?.choices[self.choice?])
    }

    /// Response header modifiers in application order: the rule's, then the backend's.
    fn response_ops(&self) -> impl Iterator<Item = &HeaderOps> {
        let rule = self
            .rule()
            .and_then(|r| r.filters.response_headers.as_ref());
        let choice = self
            .choice()
            .and_then(|c| c.filters.response_headers.as_ref());
        rule.into_iter().chain(choice)
    }

    /// Whether a filter needs its own copy of the request head on its way to the backend:
    /// a URL rewrite on the rule or its backend, or a header filter that touches the body's
    /// framing. Other header filters are edits over the head as it came.
    fn edits_request(&self) -> bool {
        let filters = match (self.rule(), self.choice()) {
            (Some(rule), Some(choice)) => {
                route::filters::edits_request([&rule.filters, &choice.filters])
            }
            _ => false,
        };
        filters || self.strips_token()
    }

    /// The request header filters of the rule and its backend, in order.
    fn request_header_ops(&self) -> impl Iterator<Item = &route::filters::HeaderOps> {
        let sets = match (self.rule(), self.choice()) {
            (Some(rule), Some(choice)) => Some([&rule.filters, &choice.filters]),
            _ => None,
        };
        sets.into_iter()
            .flat_map(route::filters::request_header_ops)
    }

    /// Whether anything edits the backend's response head on its way to the client: a
    /// response filter, the rate-limit fields, or a session cookie the rule may set.
    fn edits_response(&self) -> bool {
        self.response_ops().next().is_some()
            || self.rate_limit_fields.is_some()
            || self.rule().is_some_and(|r| r.persistence.is_some())
    }

    /// Counts the request and its time, through its backend's cached series when it has one.
    fn observe(&self, metrics: &Metrics, code: u16) {
        let seconds = self.start.elapsed().as_secs_f64();
        match self.choice() {
            Some(c) => metrics.observe_cached(&c.series, &self.labels(), code, seconds),
            None => metrics.observe(&self.labels(), code, seconds),
        }
    }

    fn labels(&self) -> RequestLabels<'_> {
        let gateway = self
            .listener
            .and_then(|(port, l)| self.rt.ports.get(&port).map(|p| &*p.listeners[l].gateway))
            .unwrap_or("");
        let (route, rule) = self
            .rule()
            .map_or(("", ""), |r| (&*r.route, &*r.rule_index));
        let backend = self.backend.map_or("", |b| &*self.rt.backends[b].label);
        RequestLabels {
            gateway,
            route,
            rule,
            backend,
            source: self
                .caller
                .as_ref()
                .and_then(|c| c.to_str().ok())
                .unwrap_or(""),
            destination: self.destination.as_deref().unwrap_or(""),
        }
    }
}

/// Whether the request can be sent again after something reached the backend (Pingora's
/// rule): an idempotent method whose body is still in the retry buffer.
fn replayable(session: &Session) -> bool {
    session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated()
}

/// What routing and the filters need of the client's side, read alike from Pingora's
/// session (HTTP/2, upgrades) and from Weir's own HTTP/1 loop.
pub(crate) struct Down<'a> {
    pub req: &'a RequestHeader,
    /// The listener port the request came in on.
    pub port: u16,
    pub client_ip: Option<IpAddr>,
    pub tls: Option<&'a ConnTls>,
    pub http2: bool,
}

impl<'a> Down<'a> {
    fn of(session: &'a Session) -> Self {
        Self::from_parts(
            session.req_header(),
            session.server_addr(),
            session.client_addr(),
            session.digest(),
            session.is_http2(),
        )
    }

    pub(crate) fn from_parts(
        req: &'a RequestHeader,
        server: Option<&pingora::protocols::l4::socket::SocketAddr>,
        client: Option<&pingora::protocols::l4::socket::SocketAddr>,
        digest: Option<&'a pingora::protocols::Digest>,
        http2: bool,
    ) -> Self {
        Down {
            req,
            port: server.and_then(|a| a.as_inet()).map_or(0, |a| a.port()),
            client_ip: client.and_then(|a| a.as_inet()).map(|a| a.ip()),
            tls: digest
                .and_then(|d| d.ssl_digest.as_ref())
                .and_then(|d| d.extension.get::<ConnTls>()),
            http2,
        }
    }
}

fn request_host(req: &RequestHeader) -> &str {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(header::HOST).and_then(|v| v.to_str().ok()))
        .unwrap_or("")
}

/// What a redirect filter needs of a routed request.
fn redirect_input<'a>(down: &Down<'a>, ctx: &'a Ctx, host: &'a str) -> RedirectInput<'a> {
    let listener = ctx
        .listener
        .and_then(|(p, l)| ctx.rt.ports.get(&p).map(|p| &p.listeners[l]));
    RedirectInput {
        scheme: listener.map_or(weir_model::Scheme::Http, |l| l.scheme),
        listener_port: listener.map_or(down.port, |l| l.port),
        host,
        path: down.req.uri.path_and_query().map_or("/", |p| p.as_str()),
        matched_prefix: ctx.prefix.as_deref(),
    }
}

fn respond_with(status: u16) -> Decision {
    Decision::Respond {
        status,
        location: None,
        refused: None,
    }
}

impl WeirProxy {
    /// The request path up to its backend, in DESIGN.md's order, for both the HTTP/1 loop
    /// and Pingora's `HttpProxy`: route, rate limit, backend choice.
    async fn decide(&self, down: &Down<'_>, ctx: &mut Ctx) -> Decision {
        if let Some(tracer) = &self.tracer {
            // The tracer validates it: an invalid one is no parent.
            let sent = down.req.headers.get("traceparent").map(|v| v.as_bytes());
            ctx.trace.begin(tracer.start(sent));
        }
        let decision = self.route(down, ctx);
        if let Some(status) = self.authorize(down, ctx) {
            return respond_with(status);
        }
        // Every routed request is counted, redirects included; a refused one gets no backend.
        if let Some(refused) = self.rate_limit(down, ctx).await {
            return Decision::Respond {
                status: 429,
                location: None,
                refused: Some(refused),
            };
        }
        match decision {
            Decision::Proxy => self.choose_backend(down, ctx),
            local => local,
        }
    }

    /// Finds the request's listener and rule, or decides the local answer. The backend is
    /// chosen later ([`Self::choose_backend`]), after the rate limit: a refused request must
    /// not take a weighted-schedule slot.
    fn route(&self, down: &Down<'_>, ctx: &mut Ctx) -> Decision {
        let rt = &*ctx.rt;
        let req = down.req;
        ctx.grpc = req
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let raw_host = request_host(req);
        let host = normalize_host(raw_host);
        let tls = down.tls;
        let Some(port) = rt.ports.get(&down.port) else {
            return respond_with(404);
        };
        // HTTP/2 clients reuse a connection for every host its certificate covers; a host
        // served by another listener than the one the handshake chose must be refused so the
        // client opens a proper connection (RFC 9110 421).
        if down.http2
            && let Some(sni) = tls.and_then(|t| t.sni.as_deref())
            && port.listener_for(sni) != port.listener_for(&host)
        {
            return respond_with(421);
        }
        let path_and_query = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let view = RequestView::new(path_and_query, &req.method, &req.headers);
        let query = MeshQuery {
            port: authority_port(raw_host),
            caller_namespace: tls.and_then(ConnTls::peer_namespace),
        };
        let (listener, entry) = match route::find(port, &rt.mesh, &host, query, &view) {
            Found::NoListener => return respond_with(404),
            Found::NoService { listener, miss } => {
                ctx.listener = Some((down.port, listener));
                tracing::debug!(host = %host, ?miss, "mesh listener: no Service for this name");
                return respond_with(404);
            }
            Found::NoRoute {
                listener,
                destination,
            } => {
                ctx.listener = Some((down.port, listener));
                ctx.destination = destination.map(|d| d.label.clone());
                return respond_with(404);
            }
            Found::Route {
                listener,
                entry,
                destination,
            } => {
                ctx.destination = destination.map(|d| d.label.clone());
                ctx.addressed_port = destination.map_or(down.port, |d| d.port);
                (listener, entry)
            }
        };
        if port.listeners[listener].mesh.is_some() {
            ctx.caller = tls.and_then(|t| t.peer_id.clone());
        }
        ctx.listener = Some((down.port, listener));
        ctx.rule = Some(entry.rule);
        let rule = &rt.rules[entry.rule];
        // Found here, where the listener is at hand: most requests meet no policy, and
        // `authorize` then costs one test.
        ctx.authz_applies = !rule.authz.is_empty() || !port.listeners[listener].authz.is_empty();
        ctx.deadline = rule.request_timeout.map(|t| ctx.start + t);
        if rule.needs_matched_prefix() {
            ctx.prefix = entry.matcher.prefix().map(Arc::from);
        }
        if let Some(r) = &rule.filters.redirect {
            return Decision::Respond {
                status: r.status_code,
                location: Some(redirect_location(r, &redirect_input(down, ctx, &host))),
                refused: None,
            };
        }
        Decision::Proxy
    }

    /// Picks the rule's backend for a routed, admitted request, or decides the local answer.
    fn choose_backend(&self, down: &Down<'_>, ctx: &mut Ctx) -> Decision {
        let rt = &*ctx.rt;
        let Some(rule) = ctx.rule.map(|r| &rt.rules[r]) else {
            return respond_with(404);
        };
        let Some(choice_index) = ctx.tries.choose(rule, &down.req.headers) else {
            // Every weight is zero: nothing may take the request.
            return respond_with(500);
        };
        ctx.choice = Some(choice_index);
        let choice = &rule.choices[choice_index];
        if let Some(r) = &choice.filters.redirect {
            let host = normalize_host(request_host(down.req));
            return Decision::Respond {
                status: r.status_code,
                location: Some(redirect_location(r, &redirect_input(down, ctx, &host))),
                refused: None,
            };
        }
        let backend = match choice.target {
            Target::Error(status) => return respond_with(status),
            Target::Backend(b) => b,
        };
        ctx.backend = Some(backend);
        if !rt.backends[backend].has_endpoints() {
            return respond_with(503);
        }
        Decision::Proxy
    }

    /// Starts the copies of the rule's and the backend's RequestMirror filters. `has_body`
    /// is asked only when a copy goes out.
    fn start_mirrors(
        &self,
        req: &RequestHeader,
        has_body: &mut dyn FnMut() -> bool,
        ctx: &mut Ctx,
    ) {
        let rt = &*ctx.rt;
        let (Some(rule), Some(choice)) = (ctx.rule.map(|r| &rt.rules[r]), ctx.choice) else {
            return;
        };
        let choice = &rule.choices[choice];
        let mut body = None;
        for m in rule.filters.mirrors.iter().chain(&choice.filters.mirrors) {
            if fastrand::u32(0..m.denominator) >= m.numerator {
                continue;
            }
            let backend = &rt.backends[m.backend];
            // Mirrors speak plain HTTP: a copy must not reach a backend whose policy asks
            // for TLS in cleartext.
            if backend.tls.is_some() {
                continue;
            }
            let pool = &backend.pool;
            let Some(target) = pool.pick(&[]).map(|i| pool.addr(i)) else {
                continue;
            };
            let has_body = *body.get_or_insert_with(&mut *has_body);
            if let Some(feed) = self.mirror.start(target, req, has_body) {
                ctx.mirrors.push(feed);
            }
        }
    }
}

impl WeirProxy {
    /// A request's end, on either path: its last try's endpoint released, its zone traffic
    /// and its series counted. `bytes`: body bytes read from the client and sent to it;
    /// `written`: the status the client got, if a response head went out.
    fn finished(
        &self,
        ctx: &mut Ctx,
        req: &RequestHeader,
        bytes: (usize, usize),
        written: Option<u16>,
        e: Option<&Error>,
    ) {
        let ended = ctx.release_endpoint();
        self.count_zone_traffic(bytes, ctx, ended);
        let code = written.or_else(|| e.map(status_for)).unwrap_or(0);
        ctx.observe(&self.metrics, code);
        let traced = ctx.trace.span().is_some_and(|s| s.sampled);
        if self.access_log.is_some() || traced {
            self.log_request(ctx, req, bytes, written);
        }
    }

    /// Turns the client's request head into the backend's: hop-by-hop fields out, the
    /// `Forwarded` fields in, then the route's and backend's filters, and the caller's
    /// verified identity last, so that no filter can name a caller either.
    /// `copied`: the head is a [`headers::backend_copy`], which has no hop-by-hop fields and
    /// no caller identity to remove, and got its `Forwarded` fields while being copied.
    fn upstream_request(
        &self,
        down: &Down<'_>,
        upgrade: bool,
        copied: bool,
        upstream: &mut RequestHeader,
        ctx: &Ctx,
    ) -> Result<()> {
        if !copied {
            headers::strip_request_hop_by_hop(upstream, upgrade);
            headers::forwarded(upstream, down.client_ip, ctx.scheme(), down.req, &ctx.trace);
        }
        if let (Some(rule), Some(choice)) = (ctx.rule(), ctx.choice()) {
            route::filters::apply_request(
                [&rule.filters, &choice.filters],
                ctx.prefix.as_deref(),
                upstream,
            )
            .map_err(|why| Error::explain(ErrorType::InternalError, why))?;
        }
        // The caller's identity is the gateway's to set: a copy made without the client's
        // still needs clearing if a header filter may have set one.
        let filtered = ctx.request_header_ops().next().is_some();
        headers::caller_identity(upstream, self.caller_for_backend(ctx), copied && !filtered);
        Self::strip_tokens(ctx, upstream);
        Ok(())
    }

    /// The caller's verified identity, for a backend inside the cluster: egress backends get
    /// no internal identity.
    fn caller_for_backend<'c>(&self, ctx: &'c Ctx) -> Option<&'c http::HeaderValue> {
        let internal = ctx
            .backend
            .is_some_and(|b| ctx.rt.backends[b].external.is_none());
        ctx.caller.as_ref().filter(|_| internal)
    }

    /// The response head's edits, in order: hop-by-hop fields out, the session cookie, the
    /// route's and backend's filters, then the `RateLimit` fields.
    /// `copied`: the head is a [`headers::client_copy`], without hop-by-hop fields.
    fn downstream_response(&self, resp: &mut ResponseHeader, ctx: &Ctx, copied: bool) {
        if !copied {
            headers::strip_response_hop_by_hop(resp);
        }
        self.session_header(resp, ctx);
        for ops in ctx.response_ops() {
            ops.apply(resp);
        }
        if let Some(f) = &ctx.rate_limit_fields {
            f.apply(resp);
        }
    }
}

#[async_trait]
impl ProxyHttp for WeirProxy {
    type CTX = Ctx;

    /// No downstream modules: Pingora's default adds a (disabled) compression module whose
    /// per-request context and filter calls cost time on every request for nothing.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            rt: self.runtime.load_full(),
            start: Instant::now(),
            listener: None,
            rule: None,
            choice: None,
            backend: None,
            prefix: None,
            grpc: false,
            deadline: None,
            tries: Tries::default(),
            try_deadline: None,
            mirrors: Vec::new(),
            rate_limit_fields: None,
            caller: None,
            destination: None,
            addressed_port: 0,
            authz: None,
            authz_applies: false,
            trace: Default::default(),
            try_started: None,
            rate_limit: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        headers::drop_h2c_upgrade(session.req_header_mut());
        let decision = self.decide(&Down::of(session), ctx).await;
        match decision {
            Decision::Proxy => {
                let has_body = !session.as_downstream_mut().is_body_empty();
                self.start_mirrors(session.req_header(), &mut || has_body, ctx);
                Ok(false)
            }
            Decision::Respond {
                status,
                location,
                refused,
            } => {
                let extra = refused.as_ref().map(Refused::fields).unwrap_or_default();
                respond::respond(
                    session,
                    status,
                    ctx.grpc,
                    location.as_deref(),
                    &extra,
                    ctx.response_ops(),
                )
                .await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        for feed in &mut ctx.mirrors {
            if let Some(chunk) = body {
                feed.feed(chunk);
            }
            if end_of_stream {
                feed.finish();
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        self.pick_peer(ctx).await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let down = Down::of(session);
        self.upstream_request(&down, session.is_upgrade_req(), false, upstream, ctx)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.on_response(ctx, upstream.status.as_u16(), replayable(session))
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        Self::check_deadlines(ctx)?;
        Ok(None)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.downstream_response(upstream, ctx, false);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.metrics.connect_error(&ctx.labels());
        self.on_tls_connect_failure(ctx, &e);
        self.on_connect_failure(ctx, &mut e);
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.check_upstream_names(ctx, peer, digest).await
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let replayable = replayable(session);
        self.on_try_error(ctx, &mut e, replayable);
        if replayable {
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = status_for(e);
        if code > 0
            && session.response_written().is_none()
            && let Err(err) =
                respond::respond(session, code, ctx.grpc, None, &[], ctx.response_ops()).await
        {
            tracing::debug!(error = %err, "could not write the error response");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let bytes = (session.body_bytes_read(), session.body_bytes_sent());
        let written = session.response_written().map(|r| r.status.as_u16());
        self.finished(ctx, session.req_header(), bytes, written, e);
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        // Clients going away are not the gateway's errors.
        matches!(error.esource(), ErrorSource::Downstream)
    }
}

/// The status a failed proxy attempt answers with.
fn status_for(e: &Error) -> u16 {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(code) => *code,
        ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeTimedout
        | HandshakeError | SocketError | BindError => 503,
        // The backend answered but could not be trusted (BackendTLSPolicy): a bad gateway.
        TLSHandshakeFailure | InvalidCert => 502,
        ReadTimedout | WriteTimedout if matches!(e.esource(), ErrorSource::Upstream) => 504,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => 0,
                // The client stopped sending its body (`--client-body-timeout`).
                ReadTimedout => 408,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}
