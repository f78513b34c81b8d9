//! What did not compile, and what serves instead: every module's `compile` reports here.
//!
//! The translation validates what it can, but an object can still pass it and fail here (a
//! certificate chain rustls reads only the leaf of, say). Compiling is therefore local to
//! each object: the one that fails is left out or made to fail closed on its own, and it is
//! listed in `/config` and the log, so that it cannot hold back every later change.

use std::fmt;

/// A listener left out of the runtime: no route, and no certificate for its hostname.
pub const LISTENER_NOT_PROGRAMMED: &str = "the listener is not programmed";
/// Some of a listener's certificates compiled, this one did not.
pub const CERTIFICATE_SKIPPED: &str = "the listener serves its other certificates";
pub const NO_CLIENT_CERTIFICATE: &str =
    "its listeners present no client certificate to TLS backends";
pub const BACKEND_TLS_REFUSED: &str = "requests to the backend fail with 502 without connecting";
/// Gateway API: a rule whose filters cannot be applied must not be skipped; it answers an
/// error instead.
pub const RULE_ANSWERS_500: &str = "the rule answers 500";
pub const MATCH_NOT_PROGRAMMED: &str = "this match is not programmed";
pub const POLICY_NOT_ENFORCED: &str = "the policy is not enforced";
/// What an AuthorizationPolicy that cannot be enforced as written does instead.
pub const POLICY_DENIES_ALL: &str = "its targets deny every request";

/// One object, or part of one, that did not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileProblem {
    /// `Kind namespace/name`, then the part when there is one (`listener https`, `rule 0`).
    pub object: String,
    pub message: String,
    /// What the gateway does instead.
    pub effect: &'static str,
}

impl fmt::Display for CompileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.object, self.message, self.effect)
    }
}

/// The problems of one compile, each once: a route attached to several listeners has its
/// entries compiled once per listener, and would otherwise be listed as often.
#[derive(Debug, Default)]
pub struct Problems(Vec<CompileProblem>);

impl Problems {
    pub fn add(&mut self, object: String, message: String, effect: &'static str) {
        let p = CompileProblem {
            object,
            message,
            effect,
        };
        if !self.0.contains(&p) {
            self.0.push(p);
        }
    }

    pub fn into_vec(self) -> Vec<CompileProblem> {
        self.0
    }
}
