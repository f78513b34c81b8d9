//! An open-loop load generator: requests are sent on a fixed schedule whatever the answers
//! take, spread round-robin over the targets, and every response is recorded with the time
//! it was scheduled. Latency counts from the scheduled time, so a stalled proxy shows up in
//! the figures instead of slowing the load down (no coordinated omission).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One phase of constant rate.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub rate: f64,
    pub secs: f64,
}

/// One response (or failure, status 0).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Scheduled send time, seconds from the start of the run.
    pub t: f64,
    pub latency: Duration,
    /// From the moment the request was actually sent: without the generator's own lag
    /// behind its schedule (up to a timer tick, about 1 ms), which hides differences of
    /// a tenth of a millisecond between targets.
    pub service: Duration,
    pub status: u16,
    /// Index into the hosts the run alternates between.
    pub host: u8,
    /// Index into the targets the run alternates between.
    pub target: u8,
}

/// Sends `phases` of load to `targets` (round-robin), alternating over `hosts`, and returns
/// every sample once the last response arrived.
pub async fn run(targets: &[SocketAddr], hosts: &[&str], phases: &[Phase]) -> Vec<Sample> {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent: u64 = 0;
    let mut phase_start = 0.0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for phase in phases {
        let phase_sent_before = sent;
        let phase_end = phase_start + phase.secs;
        loop {
            tick.tick().await;
            let now = start.elapsed().as_secs_f64();
            let elapsed = now.min(phase_end) - phase_start;
            let due = phase_sent_before + (elapsed * phase.rate) as u64;
            while sent < due {
                let i = sent - phase_sent_before;
                let t = phase_start + i as f64 / phase.rate;
                let target_index = (sent % targets.len() as u64) as u8;
                let target = targets[usize::from(target_index)];
                let host = (sent / targets.len() as u64 % hosts.len() as u64) as u8;
                let req = Request::builder()
                    .uri(format!("http://{target}/"))
                    .header(hyper::header::HOST, hosts[host as usize])
                    .body(Empty::new())
                    .expect("valid request");
                let (client, samples) = (client.clone(), samples.clone());
                let scheduled = start + Duration::from_secs_f64(t);
                tasks.spawn(async move {
                    let began = Instant::now();
                    let status = match client.request(req).await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            match resp.into_body().collect().await {
                                Ok(_) => status,
                                Err(_) => 0,
                            }
                        }
                        Err(_) => 0,
                    };
                    let latency = scheduled.elapsed();
                    samples.lock().expect("not poisoned").push(Sample {
                        t,
                        latency,
                        service: began.elapsed(),
                        status,
                        host,
                        target: target_index,
                    });
                });
                sent += 1;
            }
            // Reap finished tasks so the set does not grow with the run.
            while tasks.try_join_next().is_some() {}
            if now >= phase_end {
                break;
            }
        }
        phase_start = phase_end;
    }
    while tasks.join_next().await.is_some() {}
    let mut out = std::mem::take(&mut *samples.lock().expect("not poisoned"));
    out.sort_by(|a, b| a.t.total_cmp(&b.t));
    out
}

/// Most admitted (2xx) requests in any `window` seconds between `from` and `to`, by a
/// sliding window stepped over the sorted samples.
pub fn max_admitted_in_window(samples: &[Sample], window: f64, from: f64, to: f64) -> usize {
    let admitted: Vec<f64> = samples
        .iter()
        .filter(|s| (200..300).contains(&s.status) && s.t >= from && s.t < to)
        .map(|s| s.t)
        .collect();
    let (mut best, mut lo) = (0, 0);
    for hi in 0..admitted.len() {
        while admitted[hi] - admitted[lo] >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// The `q` quantile of the latencies of `samples`.
pub fn quantile(samples: &[&Sample], q: f64) -> Duration {
    quantile_of(samples.iter().map(|s| s.latency).collect(), q)
}

/// The `q` quantile of `l`.
pub fn quantile_of(mut l: Vec<Duration>, q: f64) -> Duration {
    if l.is_empty() {
        return Duration::ZERO;
    }
    l.sort();
    l[((l.len() - 1) as f64 * q).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: f64, status: u16) -> Sample {
        Sample {
            t,
            latency: Duration::from_millis(1),
            service: Duration::from_millis(1),
            status,
            host: 0,
            target: 0,
        }
    }

    #[test]
    fn the_sliding_maximum_counts_only_admits_inside_one_window() {
        let s = [
            at(0.0, 200),
            at(0.5, 200),
            at(0.9, 429),
            at(0.99, 200),
            at(1.2, 200),
            at(1.4, 200),
        ];
        assert_eq!(
            max_admitted_in_window(&s, 1.0, 0.0, 10.0),
            4,
            "0.5, 0.99, 1.2 and 1.4"
        );
        assert_eq!(max_admitted_in_window(&s, 1.0, 0.0, 1.0), 3);
        assert_eq!(max_admitted_in_window(&[], 1.0, 0.0, 1.0), 0);
    }
}
