//! Rate limiting on the request path: after routing, the request's RateLimitPolicy (its
//! rule's, else its listener's Gateway-level one) is checked. A refusal comes back with its
//! 429 header fields for the caller to answer; an admitted request carries the `RateLimit`
//! fields on its response.

use super::{Ctx, Down, WeirProxy};
use crate::accesslog::RateLimitDecision;
use crate::ratelimit::headers::{self, Refused};
use crate::ratelimit::{RequestInfo, Verdict};
use crate::route::matcher::RequestView;

impl WeirProxy {
    /// Checks the request's rate limits: `Some` when it is refused.
    pub(super) async fn rate_limit(&self, down: &Down<'_>, ctx: &mut Ctx) -> Option<Refused> {
        // Most requests meet no policy: find that out before anything else.
        let rule_index = ctx.rule?;
        let listener_policy = || {
            let (port, l) = ctx.listener?;
            ctx.rt.ports.get(&port)?.listeners[l].rate_limit
        };
        let policy_index = ctx.rt.rules[rule_index]
            .rate_limit
            .or_else(listener_policy)?;
        let rt = &ctx.rt;
        let rule = &rt.rules[rule_index];
        let policy = &rt.policies[policy_index];
        let req = down.req;
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let info = RequestInfo {
            view: RequestView::new(path, &req.method, &req.headers),
            headers: &req.headers,
            // The TCP peer, not X-Forwarded-For: a client must not pick its own key.
            client_ip: down.client_ip,
            // Verified in the handshake (frontend validation), so a caller cannot pick it.
            peer_identity: ctx.caller.as_ref().and_then(|c| c.to_str().ok()),
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
                ctx.rate_limit = Some(RateLimitDecision::Allowed);
                None
            }
            Verdict::Deny {
                retry_after_s,
                headers,
                ..
            } => {
                ctx.rate_limit = Some(RateLimitDecision::Limited);
                Some(headers::refusal(retry_after_s, headers.as_ref()))
            }
        }
    }
}
