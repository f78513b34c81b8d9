//! The control runtime: one thread, `weir-control`, with a single-threaded tokio runtime
//! for everything that is not a request: the config source (a watched directory or the
//! Kubernetes API), the reload follower (compiles run on its blocking pool), ExternalName
//! DNS refresh, active health checks, the Redis sync of rate limits and the admin
//! listener. ztunnel splits its admin and XDS work from its data plane the same way.
//!
//! Proxy threads then run requests only: a slow API server, a large compile or a `/metrics`
//! scrape never takes a proxy thread's turn, and a burst of requests never delays a health
//! probe, a lease or a readiness answer.

use anyhow::{Context, Result};
use tokio::runtime::Handle;

#[derive(Debug)]
pub struct Control {
    handle: Handle,
}

impl Control {
    /// Starts the thread. It runs until the process exits.
    pub fn start() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("weir-control-blocking")
            .build()
            .context("starting the control runtime")?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("weir-control".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .context("starting the control thread")?;
        Ok(Self { handle })
    }

    /// Where control work is spawned. [`Handle::block_on`] runs set-up on it from another
    /// thread: tasks spawned inside land on the control thread.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}
