//! The load-balancing harness behind `weir-balance-bench`: real `weir-echo` endpoints in
//! three zones behind real `weir-gateway`s, with requests counted by the pod that served
//! them (`x-echo-pod`). It measures zone affinity (balanced, one endpoint lost, a whole
//! zone lost and recovered), weighted splits (90/10, weight 0) and failure handling (retries,
//! passive ejection).
//!
//! - [`run`]: options, the shared echo fleet, a fresh gateway per scenario;
//! - [`manifests`]: the Gateway API and Service/EndpointSlice YAML a gateway serves;
//! - [`fleet`]: the processes (echoes that can be killed and restarted, gateways);
//! - [`load`]: a closed-loop keep-alive load recording who served each request;
//! - [`zones`], [`splits`]: the scenarios; [`report`]: rows and the goals table.

pub mod fleet;
pub mod load;
pub mod manifests;
pub mod report;
pub mod run;
pub mod splits;
pub mod zones;
