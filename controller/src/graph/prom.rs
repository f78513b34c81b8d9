//! `--prometheus URL`: the graph's series from a Prometheus server's query API, one instant
//! query per metric, aggregated by Prometheus to the labels the graph reads (so the answer
//! stays small however many replicas and pods there are).

use super::series::{Labels, Reading, Series, WANTED, Window};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug)]
pub struct Prometheus {
    client: reqwest::Client,
    query_url: reqwest::Url,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    metric: Labels,
    /// `[unix time, "value"]`.
    value: (f64, String),
}

impl Prometheus {
    pub fn new(url: &str, timeout: Duration) -> Result<Self> {
        let base = reqwest::Url::parse(url).with_context(|| format!("--prometheus {url:?}"))?;
        let query_url = base
            .join("api/v1/query")
            .with_context(|| format!("--prometheus {url:?}"))?;
        let client = super::client(timeout)?;
        Ok(Self { client, query_url })
    }

    /// The PromQL for one wanted metric over `seconds`.
    pub fn query(name: &str, reading: Reading, labels: &[&str], seconds: u64) -> String {
        let by = labels.join(",");
        match reading {
            Reading::Rate => format!("sum by ({by}) (rate({name}[{seconds}s]))"),
            // Info gauges: `max` drops labels that change on their own (a rotated serial).
            Reading::Latest => format!("max by ({by}) ({name})"),
        }
    }

    pub async fn window(&self, seconds: u64) -> Result<Window> {
        let queries = WANTED.iter().map(|(name, reading, labels)| {
            let query = Self::query(name, *reading, labels, seconds);
            async move {
                let samples = self
                    .instant(&query)
                    .await
                    .with_context(|| format!("Prometheus query {query}"))?;
                anyhow::Ok(samples.into_iter().filter_map(move |s| {
                    let value = s.value.1.parse::<f64>().ok().filter(|v| v.is_finite())?;
                    Some(Series {
                        name: name.to_string(),
                        labels: s.metric,
                        value,
                    })
                }))
            }
        });
        let mut out = Window {
            seconds: seconds as f64,
            series: Vec::new(),
        };
        for answer in futures::future::join_all(queries).await {
            out.series.extend(answer?);
        }
        Ok(out)
    }

    async fn instant(&self, query: &str) -> Result<Vec<Sample>> {
        let mut url = self.query_url.clone();
        url.query_pairs_mut().append_pair("query", query);
        let resp = self.client.get(url).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        let answer: Answer = serde_json::from_slice(&body).with_context(|| {
            format!(
                "HTTP {status}: not a Prometheus API answer: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )
        })?;
        if answer.status != "success" {
            bail!("{}", answer.error.unwrap_or_else(|| answer.status.clone()));
        }
        let data = answer.data.context("no data in the answer")?;
        if data.result_type != "vector" {
            bail!("expected a vector, got {}", data.result_type);
        }
        Ok(data.result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_summed_to_the_labels_the_graph_reads() {
        assert_eq!(
            Prometheus::query("weir_x_total", Reading::Rate, &["a", "b"], 300),
            "sum by (a,b) (rate(weir_x_total[300s]))"
        );
        assert_eq!(
            Prometheus::query("weir_i", Reading::Latest, &["instance"], 300),
            "max by (instance) (weir_i)"
        );
    }
}
