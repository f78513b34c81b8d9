//! AuthorizationPolicy at the sidecar, for traffic that does not cross the fleet: direct
//! calls from other pods' sidecars, and plaintext on permissive ports. Requests relayed by
//! an identity setter (the fleet) were decided there, by the same policies, and are not
//! decided twice.
//!
//! The policies come from a file the controller writes for the pod's namespace
//! (`--authz-file`, the ConfigMap `weir-authz` mounted into the pod): the sidecar keeps
//! those of the Services whose selector matches its pod's labels (`--workload-labels`),
//! and those of its namespace. The file is polled as the identity is, and a file that
//! does not parse keeps the last good policies. Evaluation is [`weir_model::authz`]'s, as at
//! the fleet:
//! - at the handshake, a peer that no request of its could pass is refused outright (rules
//!   on `from` alone decide that);
//! - each request is then decided with its method, path, port, headers and end-user token,
//!   and a refusal gets 403 (gRPC: PERMISSION_DENIED), or 401 for a token that does not
//!   verify (`weir_authz_invalid_tokens_total`). Issuers that do not forward their token
//!   have it removed before the app.

use crate::identity::Identity;
use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use weir_model::authz::{self, AuthzPolicy, Decision, Peer, Policies, Request, Verifier};

/// How often the policy file is read.
pub const POLL: Duration = Duration::from_secs(1);

/// One policy of the workload, with its metric series resolved on first use.
#[derive(Debug)]
struct PolicyRt {
    policy: AuthzPolicy,
    verifier: Option<Verifier>,
    counters: [OnceLock<IntCounter>; Decision::ALL.len()],
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its end-user token did not verify: 401.
    Unauthenticated,
    /// The policies do not allow it: 403.
    Forbidden,
}

/// The policies that apply to this workload, and the ports a caller may be said to have
/// addressed on each inbound port (the port itself and the Service ports leading to it).
#[derive(Debug, Default)]
struct Workload {
    policies: Vec<PolicyRt>,
    ports: HashMap<u16, Vec<u16>>,
}

/// The live policies and their metrics. Cheap to share: one `Arc` per inbound port.
#[derive(Debug)]
pub struct Authz {
    live: ArcSwap<Workload>,
    decisions: IntCounterVec,
    invalid_tokens: IntCounter,
    reloads: IntCounterVec,
    loaded: IntGauge,
}

impl Authz {
    pub fn new(registry: &Registry) -> Self {
        let decisions = IntCounterVec::new(
            prometheus::Opts::new(
                "weir_authz_decisions_total",
                "AuthorizationPolicy decisions by policy, action and decision, for requests \
                 that did not cross the fleet.",
            ),
            &["policy", "action", "decision"],
        )
        .expect("valid metric");
        let invalid_tokens = IntCounter::new(
            "weir_authz_invalid_tokens_total",
            "Requests refused with 401 because their end-user token did not verify.",
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            prometheus::Opts::new(
                "weir_sidecar_authz_reloads_total",
                "Loads of the --authz-file by result (ok or error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let loaded = IntGauge::new(
            "weir_sidecar_authz_policies",
            "AuthorizationPolicies that apply to this workload.",
        )
        .expect("valid metric");
        for c in [
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(invalid_tokens.clone()),
            Box::new(reloads.clone()),
            Box::new(loaded.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Self {
            live: ArcSwap::from_pointee(Workload::default()),
            decisions,
            invalid_tokens,
            reloads,
            loaded,
        }
    }

    fn count(&self, p: &PolicyRt, d: Decision) {
        let slot = Decision::ALL.iter().position(|x| *x == d).unwrap_or(0);
        p.counters[slot]
            .get_or_init(|| {
                self.decisions.with_label_values(&[
                    p.policy.id.as_str(),
                    p.policy.action.as_str(),
                    d.as_str(),
                ])
            })
            .inc();
    }

    /// At the handshake: whether any request of this peer could be allowed.
    pub fn admit(&self, principal: Option<&str>, ip: IpAddr) -> bool {
        let w = self.live.load();
        if w.policies.is_empty() {
            return true;
        }
        let peer = Peer {
            principal,
            ip: Some(ip),
        };
        let admitted = authz::admit_peer(
            0..w.policies.len(),
            |i| &w.policies[i].policy,
            &peer,
            |i, d| self.count(&w.policies[i], d),
        );
        if !admitted {
            tracing::debug!(target: "weir::authz", peer = principal, %ip, "connection refused by policy");
        }
        admitted
    }

    /// One request on `port` from `principal` at `ip`: whether it may reach the app. An
    /// allowed request loses the tokens its issuers do not forward.
    pub fn check<B>(
        &self,
        port: u16,
        principal: Option<&str>,
        ip: IpAddr,
        req: &mut http::Request<B>,
    ) -> Result<(), Refusal> {
        let w = self.live.load();
        if w.policies.is_empty() {
            return Ok(());
        }
        let ids = 0..w.policies.len();
        let auth = match authz::authenticate(
            ids.clone(),
            |i| w.policies[i].verifier.as_ref(),
            req.headers(),
        ) {
            Ok(auth) => auth,
            Err(e) => {
                self.invalid_tokens.inc();
                tracing::debug!(target: "weir::authz", error = %e, caller = principal, "token refused");
                return Err(Refusal::Unauthenticated);
            }
        };
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let path = authz::normalize_path(target);
        let own = [port];
        let request = Request {
            principal,
            ip: Some(ip),
            method: req.method().as_str(),
            path: &path,
            ports: w.ports.get(&port).map_or(&own[..], Vec::as_slice),
            headers: req.headers(),
            auth: auth.as_ref(),
        };
        let allowed = authz::evaluate(
            0..w.policies.len(),
            |i| &w.policies[i].policy,
            &request,
            |i, d| {
                let p = &w.policies[i];
                self.count(p, d);
                match d {
                    Decision::Denied => tracing::debug!(
                        target: "weir::authz", policy = %p.policy.id, caller = principal,
                        method = %req.method(), path = %path, "denied"
                    ),
                    Decision::Audited | Decision::ShadowDenied => tracing::info!(
                        target: "weir::authz", policy = %p.policy.id, decision = d.as_str(),
                        caller = principal, method = %req.method(), path = %path, "authorization"
                    ),
                    Decision::Allowed | Decision::ShadowAllowed => {}
                }
            },
        );
        if !allowed {
            return Err(Refusal::Forbidden);
        }
        let strip: Vec<http::HeaderName> = w
            .policies
            .iter()
            .filter_map(|p| p.verifier.as_ref())
            .flat_map(Verifier::stripped)
            .cloned()
            .collect();
        for name in strip {
            req.headers_mut().remove(name);
        }
        Ok(())
    }
}

/// Polls `--authz-file` and swaps the workload's policies when the file, or the
/// namespace of the sidecar's identity, changes.
#[derive(Debug)]
pub struct AuthzReloader {
    file: PathBuf,
    labels: BTreeMap<String, String>,
    inbound: Vec<u16>,
    identity: Arc<ArcSwapOption<Identity>>,
    authz: Arc<Authz>,
    /// The contents and namespace last applied (or last rejected).
    last: Option<(Option<Vec<u8>>, Option<String>)>,
}

impl AuthzReloader {
    pub fn new(
        file: PathBuf,
        labels: BTreeMap<String, String>,
        inbound: Vec<u16>,
        identity: Arc<ArcSwapOption<Identity>>,
        authz: Arc<Authz>,
    ) -> Self {
        Self {
            file,
            labels,
            inbound,
            identity,
            authz,
            last: None,
        }
    }

    /// Polls forever, every `every`.
    pub fn run(mut self, every: Duration) {
        loop {
            self.poll();
            std::thread::sleep(every);
        }
    }

    /// One poll. A missing file is no policy (the ConfigMap is optional: a namespace
    /// without policies has none); a file that does not parse keeps what was loaded.
    pub fn poll(&mut self) {
        let contents = match std::fs::read(&self.file) {
            Ok(c) => Some(c),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(file = %self.file.display(), error = %e, "cannot read the authorization policies");
                return;
            }
        };
        let namespace = self
            .identity
            .load()
            .as_ref()
            .and_then(|i| weir_model::spiffe::namespace_of(&i.spiffe_id).map(str::to_owned));
        let seen = (contents, namespace);
        if self.last.as_ref() == Some(&seen) {
            return;
        }
        let parsed: Result<Policies, String> = match &seen.0 {
            None => Ok(Policies::default()),
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(all) => {
                let w = self.workload(&all, seen.1.as_deref());
                tracing::info!(
                    file = %self.file.display(),
                    policies = w.policies.len(),
                    "authorization policies loaded"
                );
                self.authz.loaded.set(w.policies.len() as i64);
                self.authz.live.store(Arc::new(w));
                self.authz.reloads.with_label_values(&["ok"]).inc();
            }
            Err(e) => {
                tracing::error!(
                    file = %self.file.display(),
                    error = %e,
                    "authorization policies do not parse; the last good ones stay"
                );
                self.authz.reloads.with_label_values(&["error"]).inc();
            }
        }
        self.last = Some(seen);
    }

    fn workload(&self, all: &Policies, namespace: Option<&str>) -> Workload {
        let policies = all
            .workload_policies(namespace, &self.labels)
            .into_iter()
            .map(|p| match Verifier::new(&p.jwt) {
                Ok(v) => PolicyRt {
                    policy: p.clone(),
                    verifier: (!v.is_empty()).then_some(v),
                    counters: Default::default(),
                },
                // The controller checked the keys; if they still do not decode, the policy
                // fails closed rather than letting tokens through unverified.
                Err(e) => {
                    tracing::error!(policy = %p.id, error = %e, "policy keys do not decode: it denies every request");
                    PolicyRt {
                        policy: AuthzPolicy {
                            id: p.id.clone(),
                            action: authz::AuthzAction::Allow,
                            shadow: false,
                            rules: Vec::new(),
                            jwt: Vec::new(),
                        },
                        verifier: None,
                        counters: Default::default(),
                    }
                }
            })
            .collect();
        let ports = self
            .inbound
            .iter()
            .map(|p| (*p, all.addressed_ports(namespace, &self.labels, *p)))
            .collect();
        Workload { policies, ports }
    }
}
