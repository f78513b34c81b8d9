//! `--scrape URL,…`: the graph without a Prometheus server. Each target's `/metrics` is read
//! every interval and kept for the retention; a window's rates are the difference between
//! the newest reading and the oldest one inside the window, per target, with counter resets
//! (a restarted gateway) counted from zero as `rate()` does.

use super::series::{self, Labels, Reading, Series, Window};
use anyhow::{Context, Result};
use openmetrics_parser::{PrometheusValue, prometheus::parse_prometheus};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// One scrape target: its URL and the `instance` label its series get, as Prometheus
/// would give them (`host:port`).
#[derive(Debug, Clone)]
struct Target {
    url: String,
    instance: String,
}

/// The readings of one round, over every target.
#[derive(Debug)]
struct Snapshot {
    at: Instant,
    /// The targets that answered this round.
    up: BTreeSet<String>,
    values: BTreeMap<(String, Labels), f64>,
}

#[derive(Debug)]
pub struct Scraper {
    client: reqwest::Client,
    targets: Vec<Target>,
    retention: Duration,
    history: Mutex<VecDeque<Snapshot>>,
    /// The last round's failures, by target URL, for the page to show.
    failures: Mutex<BTreeMap<String, String>>,
}

impl Scraper {
    pub fn new(urls: &[String], timeout: Duration, retention: Duration) -> Result<Self> {
        let targets = urls
            .iter()
            .map(|u| {
                let url = reqwest::Url::parse(u).with_context(|| format!("--scrape {u:?}"))?;
                let host = url.host_str().context("--scrape: a URL with a host")?;
                let port = url.port_or_known_default().unwrap_or(80);
                Ok(Target {
                    url: u.clone(),
                    instance: format!("{host}:{port}"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        anyhow::ensure!(!targets.is_empty(), "--scrape needs at least one URL");
        let client = super::client(timeout)?;
        Ok(Self {
            client,
            targets,
            retention,
            history: Mutex::new(VecDeque::new()),
            failures: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Reads every target once and keeps the round.
    pub async fn round(&self) {
        let reads = self.targets.iter().map(|t| async move {
            let text = async {
                let resp = self.client.get(&t.url).send().await?.error_for_status()?;
                anyhow::Ok(resp.text().await?)
            }
            .await;
            (t, text.and_then(|text| parse(&text, &t.instance)))
        });
        let mut snapshot = Snapshot {
            at: Instant::now(),
            up: BTreeSet::new(),
            values: BTreeMap::new(),
        };
        let mut failures = BTreeMap::new();
        for (target, read) in futures::future::join_all(reads).await {
            match read {
                Ok(series) => {
                    snapshot.up.insert(target.instance.clone());
                    for s in series {
                        snapshot.values.insert((s.name, s.labels), s.value);
                    }
                }
                Err(e) => {
                    tracing::warn!(target = %target.url, error = %format!("{e:#}"), "scrape failed");
                    failures.insert(target.url.clone(), format!("{e:#}"));
                }
            }
        }
        *self.failures.lock() = failures;
        let mut history = self.history.lock();
        history.push_back(snapshot);
        while history
            .front()
            .is_some_and(|s| s.at.elapsed() > self.retention + Duration::from_secs(1))
        {
            history.pop_front();
        }
    }

    /// Targets that failed in the last round, as `URL: error`.
    pub fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .iter()
            .map(|(u, e)| format!("{u}: {e}"))
            .collect()
    }

    /// The rates over (at most) the last `span`, per target from its oldest reading in it.
    pub fn window(&self, span: Duration) -> Window {
        let history = self.history.lock();
        let Some(newest) = history.back() else {
            return Window::default();
        };
        let mut out = Window::default();
        for instance in &newest.up {
            let oldest = history.iter().find(|s| {
                newest.at.duration_since(s.at) <= span
                    && s.at < newest.at
                    && s.up.contains(instance)
            });
            let mine = newest
                .values
                .iter()
                .filter(|((_, labels), _)| labels.get("instance") == Some(instance));
            for ((name, labels), &now) in mine {
                let value = match (series::reading(name), oldest) {
                    (Some(Reading::Latest), _) => now,
                    (Some(Reading::Rate), Some(old)) => {
                        let seconds = newest.at.duration_since(old.at).as_secs_f64();
                        out.seconds = out.seconds.max(seconds);
                        let before = old.values.get(&(name.clone(), labels.clone()));
                        // A series absent before started at zero; one lower now was reset.
                        let increase = match before {
                            Some(&b) if now >= b => now - b,
                            _ => now,
                        };
                        increase / seconds
                    }
                    _ => continue,
                };
                out.series.push(Series {
                    name: name.clone(),
                    labels: labels.clone(),
                    value,
                });
            }
        }
        out
    }
}

/// The series the graph reads from one target's exposition, each with its `instance`.
pub fn parse(text: &str, instance: &str) -> Result<Vec<Series>> {
    let exposition = parse_prometheus(text)
        .map_err(|e| anyhow::anyhow!("not the Prometheus text format: {e:?}"))?;
    let mut out = Vec::new();
    for (name, family) in &exposition.families {
        let bucket_name = format!("{name}_bucket");
        let wanted_as = [name.as_str(), bucket_name.as_str()]
            .into_iter()
            .find(|n| series::reading(n).is_some());
        let Some(wanted_as) = wanted_as else { continue };
        for sample in family.iter_samples() {
            let mut labels: Labels = sample
                .get_labelset()
                .map_err(|e| anyhow::anyhow!("{name}: {e:?}"))?
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.insert("instance".into(), instance.into());
            let mut push = |labels: Labels, value: f64| {
                out.push(Series {
                    name: wanted_as.to_string(),
                    labels,
                    value,
                })
            };
            match &sample.value {
                PrometheusValue::Counter(c) => push(labels, c.value.as_f64()),
                PrometheusValue::Gauge(v) | PrometheusValue::Unknown(v) => push(labels, v.as_f64()),
                PrometheusValue::Histogram(h) => {
                    let mut inf = false;
                    for b in &h.buckets {
                        inf |= b.upper_bound.is_infinite();
                        let mut l = labels.clone();
                        l.insert("le".into(), le(b.upper_bound));
                        push(l, b.count.as_f64());
                    }
                    if let (false, Some(count)) = (inf, h.count) {
                        let mut l = labels.clone();
                        l.insert("le".into(), "+Inf".into());
                        push(l, count as f64);
                    }
                }
                PrometheusValue::Summary(_) => {}
            }
        }
    }
    Ok(out)
}

fn le(bound: f64) -> String {
    if bound.is_infinite() {
        "+Inf".into()
    } else {
        bound.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP weir_requests_total Requests answered.
# TYPE weir_requests_total counter
weir_requests_total{backend="shop/store:80",code="200",destination="",gateway="edge/web",route="shop/store",rule="0",source="spiffe://td/ns/a,b/sa/q\"x"} 7
# HELP weir_request_duration_seconds Time.
# TYPE weir_request_duration_seconds histogram
weir_request_duration_seconds_bucket{backend="shop/store:80",code="200",destination="",gateway="edge/web",route="shop/store",rule="0",source="",le="0.005"} 3
weir_request_duration_seconds_bucket{backend="shop/store:80",code="200",destination="",gateway="edge/web",route="shop/store",rule="0",source="",le="0.01"} 5
weir_request_duration_seconds_bucket{backend="shop/store:80",code="200",destination="",gateway="edge/web",route="shop/store",rule="0",source="",le="+Inf"} 7
weir_request_duration_seconds_sum{backend="shop/store:80",code="200",destination="",gateway="edge/web",route="shop/store",rule="0",source=""} 0.04
weir_request_duration_seconds_count{backend="shop/store:80",code="200",destination="",gateway="edge/web",route="shop/store",rule="0",source=""} 7
# HELP weir_downstream_connections Open.
# TYPE weir_downstream_connections gauge
weir_downstream_connections 3
"#;

    #[test]
    fn the_text_format_is_read_with_its_escapes_and_histograms() {
        let series = parse(TEXT, "10.0.0.1:9901").unwrap();
        let requests: Vec<_> = series
            .iter()
            .filter(|s| s.name == series::REQUESTS)
            .collect();
        assert_eq!(requests.len(), 1, "{series:?}");
        // A comma and an escaped quote inside a value stay in it.
        assert_eq!(requests[0].label("source"), "spiffe://td/ns/a,b/sa/q\"x");
        assert_eq!(requests[0].label("instance"), "10.0.0.1:9901");
        assert_eq!(requests[0].value, 7.0);
        let mut buckets: Vec<(String, f64)> = series
            .iter()
            .filter(|s| s.name == series::DURATION_BUCKET)
            .map(|s| (s.label("le").to_string(), s.value))
            .collect();
        buckets.sort_by(|a, b| a.1.total_cmp(&b.1));
        assert_eq!(
            buckets,
            [
                ("0.005".into(), 3.0),
                ("0.01".into(), 5.0),
                ("+Inf".into(), 7.0)
            ]
        );
        // What the graph does not read is not kept.
        assert!(
            series
                .iter()
                .all(|s| s.name != "weir_downstream_connections")
        );
    }

    #[test]
    fn a_malformed_exposition_is_an_error_not_an_empty_graph() {
        let bad = "weir_requests_total{code=\"200\" 7\n";
        assert!(parse(bad, "x:1").is_err());
    }
}
