//! A closed-loop load: `concurrency` workers, each sending its next request as soon as the
//! last one answered, over pooled keep-alive connections. Every response is kept with the
//! pod that served it (the `x-echo-pod` header), so shares are counted, not estimated.
//!
//! Closed loop rather than fixed rate: these runs measure where requests go and whether any
//! fail, not latency, and a closed loop cannot overload the machine the gateway shares.

use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// A request that did not get a whole response within this counts as failed (status 0).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The pod index of a response without a known `x-echo-pod` (a gateway error, say).
pub const NO_POD: u8 = u8::MAX;

/// One request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Sent and answered, from the run's epoch.
    pub sent: Duration,
    pub done: Duration,
    /// 0 when the request failed without a response.
    pub status: u16,
    /// Index into the pods the load was built with, or [`NO_POD`].
    pub pod: u8,
}

impl Sample {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Requests to one gateway listener for one hostname.
#[derive(Debug, Clone)]
pub struct Load {
    client: HttpClient,
    uri: Uri,
    host: HeaderValue,
    pods: Arc<[String]>,
    epoch: Instant,
    concurrency: usize,
}

/// How many requests a set of workers may still send.
#[derive(Debug, Clone)]
enum Budget {
    Exactly(Arc<AtomicUsize>, usize),
    UntilStopped(Arc<AtomicBool>),
}

impl Budget {
    fn take(&self) -> bool {
        match self {
            Budget::Exactly(sent, n) => sent.fetch_add(1, Ordering::Relaxed) < *n,
            Budget::UntilStopped(stop) => !stop.load(Ordering::Relaxed),
        }
    }
}

impl Load {
    pub fn new(
        target: SocketAddr,
        host: &str,
        pods: &[String],
        epoch: Instant,
        concurrency: usize,
    ) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(concurrency)
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        Self {
            client,
            uri: format!("http://{target}/").parse().expect("a valid URI"),
            host: HeaderValue::from_str(host).expect("a valid host"),
            pods: pods.into(),
            epoch,
            concurrency: concurrency.max(1),
        }
    }

    /// Sends exactly `n` requests and returns them in completion order per worker.
    pub async fn exactly(&self, n: usize) -> Vec<Sample> {
        let budget = Budget::Exactly(Arc::new(AtomicUsize::new(0)), n);
        let done = Arc::new(AtomicUsize::new(0));
        let mut workers = self.spawn(&budget, &done);
        let mut out = Vec::with_capacity(n);
        while let Some(samples) = workers.join_next().await {
            out.extend(samples.expect("a load worker panicked"));
        }
        out
    }

    /// Starts sending until [`Running::stop`].
    pub fn start(&self) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let workers = self.spawn(&Budget::UntilStopped(stop.clone()), &done);
        Running {
            stop,
            done,
            workers,
        }
    }

    fn spawn(&self, budget: &Budget, done: &Arc<AtomicUsize>) -> JoinSet<Vec<Sample>> {
        let mut workers = JoinSet::new();
        for _ in 0..self.concurrency {
            let (load, budget, done) = (self.clone(), budget.clone(), done.clone());
            workers.spawn(async move {
                let mut samples = Vec::new();
                while budget.take() {
                    samples.push(load.one().await);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                samples
            });
        }
        workers
    }

    async fn one(&self) -> Sample {
        let request = Request::get(self.uri.clone())
            .header(http::header::HOST, self.host.clone())
            .body(Empty::new())
            .expect("a valid request");
        let sent = self.epoch.elapsed();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let response = self.client.request(request).await.ok()?;
            let status = response.status().as_u16();
            let pod = response
                .headers()
                .get("x-echo-pod")
                .and_then(|v| self.pods.iter().position(|p| p.as_bytes() == v.as_bytes()))
                .map_or(NO_POD, |i| i as u8);
            // The whole body, so a reset mid-response counts as a failure.
            response.into_body().collect().await.ok()?;
            Some((status, pod))
        })
        .await
        .ok()
        .flatten();
        let (status, pod) = answer.unwrap_or((0, NO_POD));
        Sample {
            sent,
            done: self.epoch.elapsed(),
            status,
            pod,
        }
    }
}

/// A load in the background.
#[derive(Debug)]
pub struct Running {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    workers: JoinSet<Vec<Sample>>,
}

impl Running {
    /// Requests answered (or failed) so far.
    pub fn completed(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until `n` requests have completed, for at most `timeout`; whether they did.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.completed() < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops the workers after their current request; every sample, sorted by send time.
    pub async fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        while let Some(samples) = self.workers.join_next().await {
            out.extend(samples.expect("a load worker panicked"));
        }
        out.sort_by_key(|s| s.sent);
        out
    }
}

/// Counts over a set of samples.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub total: usize,
    pub failed: usize,
    /// Successful responses per pod index.
    pub by_pod: Vec<usize>,
}

impl Tally {
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>, pods: usize) -> Tally {
        let mut t = Tally {
            by_pod: vec![0; pods],
            ..Tally::default()
        };
        for s in samples {
            t.total += 1;
            if !s.ok() {
                t.failed += 1;
            } else if let Some(n) = t.by_pod.get_mut(usize::from(s.pod)) {
                *n += 1;
            }
        }
        t
    }

    /// Successful responses from pods matching `pick` (by index), over every request.
    pub fn share(&self, pick: impl Fn(usize) -> bool) -> f64 {
        let n: usize = (0..self.by_pod.len())
            .filter(|i| pick(*i))
            .map(|i| self.by_pod[i])
            .sum();
        n as f64 / self.total.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(status: u16, pod: u8) -> Sample {
        Sample {
            sent: Duration::ZERO,
            done: Duration::ZERO,
            status,
            pod,
        }
    }

    #[test]
    fn failures_count_against_every_share() {
        let s = [
            at(200, 0),
            at(200, 0),
            at(200, 1),
            at(503, 1),
            at(0, NO_POD),
        ];
        let t = Tally::of(&s, 2);
        assert_eq!((t.total, t.failed), (5, 2));
        assert_eq!(t.by_pod, [2, 1]);
        assert!((t.share(|i| i == 0) - 0.4).abs() < 1e-9);
        assert!((t.share(|_| true) - 0.6).abs() < 1e-9);
    }
}
