//! Rate limiting on the request path: after routing, the request's RateLimitPolicy (its
//! rule's, else its listener's Gateway-level one) is checked; a refusal is answered here
//! with 429, and an admitted request carries the `RateLimit` fields on its response.

use super::{Ctx, WeirProxy, client_ip, respond};
use crate::ratelimit::{RequestInfo, Verdict, headers};
use crate::route::matcher::RequestView;
use pingora::prelude::*;
use pingora::proxy::Session;

impl WeirProxy {
    /// Checks the request's rate limits. Returns true when it was refused (and answered).
    pub(super) async fn rate_limit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Most requests meet no policy: find that out before anything else.
        let Some(rule_index) = ctx.rule else {
            return Ok(false);
        };
        let listener_policy = || {
            let (port, l) = ctx.listener?;
            ctx.rt.ports.get(&port)?.listeners[l].rate_limit
        };
        let Some(policy_index) = ctx.rt.rules[rule_index].rate_limit.or_else(listener_policy)
        else {
            return Ok(false);
        };
        // The policy outlives the borrow of `ctx`, which the 429 needs.
        let rt = ctx.rt.clone();
        let caller = ctx.caller.clone();
        let rule = &rt.rules[rule_index];
        let policy = &rt.policies[policy_index];
        let req = session.req_header();
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let info = RequestInfo {
            view: RequestView::new(path, &req.method, &req.headers),
            headers: &req.headers,
            // The TCP peer, not X-Forwarded-For: a client must not pick its own key.
            client_ip: client_ip(session),
            // Verified in the handshake (frontend validation), so a caller cannot pick it.
            peer_identity: caller.as_ref().and_then(|c| c.to_str().ok()),
            rule: &rule.key_id,
        };
        let started = std::time::Instant::now();
        let verdict = self.limiter.check(policy, &info).await;
        self.metrics
            .rl_check_seconds
            .observe(started.elapsed().as_secs_f64());
        match verdict {
            Verdict::Allow { headers } => {
                ctx.rate_limit_fields = headers;
                Ok(false)
            }
            Verdict::Deny {
                retry_after_s,
                headers,
                ..
            } => {
                let fields = headers::refusal(retry_after_s, headers.as_ref());
                let extra: Vec<(&str, &str)> =
                    fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
                respond::respond(session, 429, ctx.grpc, None, &extra, ctx.response_ops()).await?;
                Ok(true)
            }
        }
    }
}
