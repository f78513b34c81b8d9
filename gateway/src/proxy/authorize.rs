//! Authorization on the request path: after routing, the policies of the request's
//! listener and rule decide ([`crate::authz`]); a refusal is answered with 403 (gRPC:
//! PERMISSION_DENIED) and a body that names no policy.

use super::{Ctx, Down, WeirProxy};
use crate::authz::{self, Input};

impl WeirProxy {
    /// Whether the routed request may go on. Requests that matched no rule are not
    /// decided here: they get their 404.
    pub(super) fn authorize(&self, down: &Down<'_>, ctx: &mut Ctx) -> bool {
        let (Some(rule), Some((port, l))) = (ctx.rule, ctx.listener) else {
            return true;
        };
        let rt = &ctx.rt;
        let listener = rt
            .ports
            .get(&port)
            .map_or(&[][..], |p| &p.listeners[l].authz);
        let rule = &rt.rules[rule].authz;
        let req = down.req;
        let input = Input {
            // Verified in the handshake; a client's x-weir-caller-identity is never read.
            principal: down
                .tls
                .and_then(|t| t.peer_id.as_ref())
                .and_then(|v| v.to_str().ok()),
            client_ip: down.client_ip,
            method: req.method.as_str(),
            target: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            port: ctx.addressed_port,
            headers: &req.headers,
        };
        let verdict = authz::check(&rt.authz, listener, rule, &input, &self.metrics);
        ctx.authz = verdict;
        verdict.is_none_or(|v| v.allowed)
    }
}
