//! Authorization on the request path: after routing, the policies of the request's
//! listener and rule decide ([`crate::authz`]); a refusal is answered with 403 (gRPC:
//! PERMISSION_DENIED) and a body that names no policy.

use super::{Ctx, Down, WeirProxy};
use crate::authz::PolicyRt;
use crate::authz::{self, Input};

impl WeirProxy {
    /// The status that refuses the routed request (401: its token did not verify; 403: the
    /// policies do not allow it), or `None` when it may go on. Requests that matched no
    /// rule are not decided here: they get their 404.
    pub(super) fn authorize(&self, down: &Down<'_>, ctx: &mut Ctx) -> Option<u16> {
        let (true, Some(rule), Some((port, l))) = (ctx.authz_applies, ctx.rule, ctx.listener)
        else {
            return None;
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
        match verdict {
            Some(v) if v.unauthenticated => Some(401),
            Some(v) if !v.allowed => Some(403),
            _ => None,
        }
    }

    /// Removes the end-user token from the backend's request head when its issuer does not
    /// forward it.
    pub(super) fn strip_tokens(ctx: &Ctx, upstream: &mut pingora::http::RequestHeader) {
        for name in ctx.stripped_tokens() {
            upstream.remove_header(name);
        }
    }
}

impl Ctx {
    /// The token headers the backend must not get (see [`authz::stripped`]).
    fn stripped_tokens(&self) -> impl Iterator<Item = &http::HeaderName> {
        let parts = match (self.authz, self.rule, self.listener) {
            (Some(_), Some(rule), Some((port, l))) => {
                let rt = &self.rt;
                let listener = rt
                    .ports
                    .get(&port)
                    .map_or(&[][..], |p| &*p.listeners[l].authz);
                Some((&rt.authz[..], listener, &*rt.rules[rule].authz))
            }
            _ => None,
        };
        parts
            .into_iter()
            .flat_map(|(p, l, r): (&[PolicyRt], &[usize], &[usize])| authz::stripped(p, l, r))
    }

    /// Whether the backend's head must leave out a token the client sent.
    pub(super) fn strips_token(&self) -> bool {
        self.authz.is_some() && self.stripped_tokens().next().is_some()
    }
}
