//! The config's RateLimitPolicies, compiled. A policy that does not compile is not
//! enforced, and is reported; so is a rule or listener naming a policy the config lacks.

use super::PolicyRt;
use crate::problems::{POLICY_NOT_ENFORCED, Problems};
use crate::route::rules::label;
use std::collections::HashMap;
use weir_model::Config;

/// The compiled policies, and each one's index by `namespace/name`.
pub fn compile<'c>(
    config: &'c Config,
    problems: &mut Problems,
) -> (Vec<PolicyRt>, HashMap<&'c str, usize>) {
    let mut index = HashMap::new();
    let mut policies = Vec::with_capacity(config.rate_limits.len());
    for (id, p) in &config.rate_limits {
        match PolicyRt::compile(p) {
            Ok(rt) => {
                index.insert(id.as_str(), policies.len());
                policies.push(rt);
            }
            Err(m) => {
                let object = format!("RateLimitPolicy {id}");
                problems.add(object, m, POLICY_NOT_ENFORCED);
            }
        }
    }
    unknown_policies(config, problems);
    (policies, index)
}

/// Rules and listeners naming a RateLimitPolicy the config does not hold: a bug in the
/// translation, reported rather than failing the whole config.
fn unknown_policies(config: &Config, problems: &mut Problems) {
    let named = config
        .rules
        .iter()
        .map(|(id, r)| (label(id, config), &r.rate_limit))
        .chain(config.listeners.iter().map(|l| {
            let what = format!("Gateway {} listener {}", l.gateway, l.name);
            (what, &l.rate_limit)
        }));
    for (object, id) in named {
        if let Some(id) = id
            && !config.rate_limits.contains_key(id)
        {
            let message = format!("names RateLimitPolicy {id}, which is not in the config");
            problems.add(object, message, POLICY_NOT_ENFORCED);
        }
    }
}
