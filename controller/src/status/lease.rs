//! Leader election on a `coordination.k8s.io` Lease, with kube-lease-manager.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Timing of the Lease.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A holder that stops renewing loses the Lease after this long.
    pub duration_s: u64,
    /// The holder renews this long before the Lease would expire.
    pub grace_s: u64,
}

impl Default for Timing {
    /// client-go's controller defaults: a crashed leader is replaced within about 15 s.
    fn default() -> Self {
        Self {
            duration_s: 15,
            grace_s: 5,
        }
    }
}

/// Joins the election for Lease `namespace/name` as `identity`. The receiver says whether
/// this replica leads; dropping every receiver releases the Lease, so that a replica that
/// stops cleanly hands over at once instead of after `duration_s`.
///
/// Each replica applies the Lease as a field manager of its own (the crate's default,
/// derived from the identity): server-side apply then refuses a second replica's claim on
/// a Lease another holds. One shared field manager would let both claims through.
pub async fn elect(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
    timing: Timing,
) -> Result<
    (
        watch::Receiver<bool>,
        JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    ),
    kube_lease_manager::LeaseManagerError,
> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(timing.duration_s)
        .with_grace(timing.grace_s)
        .build()
        .await?;
    Ok(manager.watch().await)
}
