//! `weir-controller graph`: the live service graph, a page at `/` and its data at
//! `/api/graph?window=5m`.
//!
//! - [`series`] names the metrics read and how: the one interface between the sources and
//!   the graph;
//! - [`prom`] reads them from a Prometheus server, [`scrape`] from the gateways' and
//!   sidecars' `/metrics` directly (for local runs without Prometheus);
//! - [`build`] turns one window of them into nodes and edges, purely;
//! - [`http`] serves the page (HTML, its script and Cytoscape.js, all inside the binary)
//!   and the JSON.

pub mod build;
mod http;
pub mod prom;
pub mod scrape;
pub mod series;

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Where the series come from.
#[derive(Debug)]
pub enum Source {
    Prometheus(prom::Prometheus),
    Scrape(Arc<scrape::Scraper>),
}

#[derive(Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub source: Source,
    /// How often `--scrape` targets are read.
    pub interval: Duration,
    /// How often the page asks for fresh data.
    pub refresh: Duration,
}

/// The shortest and longest windows a query may ask for: under two scrape intervals there
/// is no rate, and beyond a day a graph of "now" says little.
const MIN_WINDOW: Duration = Duration::from_secs(2);
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Why there is no graph: the asker's window, or the source.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("window {0}")]
    Window(String),
    #[error("{0:#}")]
    Source(#[from] anyhow::Error),
}

impl Source {
    /// The graph of the last `window` (`5m`, `30s`).
    pub async fn graph(&self, window: &str) -> Result<build::Graph, GraphError> {
        let span = humantime::parse_duration(window)
            .map_err(|e| GraphError::Window(format!("{window:?}: {e} (try 5m or 30s)")))?;
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&span) {
            return Err(GraphError::Window(format!(
                "{window:?}: between 2s and 24h, please"
            )));
        }
        match self {
            Source::Prometheus(p) => {
                let w = p.window(span.as_secs().max(1)).await?;
                Ok(build::build(window, &w))
            }
            Source::Scrape(s) => {
                let w = s.window(span.min(s.retention()));
                let mut g = build::build(window, &w);
                g.problems = s.failures();
                Ok(g)
            }
        }
    }
}

/// The HTTP client both sources read with. reqwest is built without a crypto provider of
/// its own; the workspace's (ring) is installed if nothing installed one yet, so an
/// `https://` Prometheus works too.
fn client(timeout: Duration) -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .context("HTTP client")
}

/// Serves until the process ends; `bound` is told the address once listening.
pub async fn serve(opts: Options, bound: impl FnOnce(SocketAddr)) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("--listen {}", opts.listen))?;
    bound(listener.local_addr()?);
    if let Source::Scrape(scraper) = &opts.source {
        let scraper = scraper.clone();
        let interval = opts.interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                scraper.round().await;
            }
        });
    }
    http::serve(listener, Arc::new(opts)).await
}

#[cfg(test)]
mod tests;
