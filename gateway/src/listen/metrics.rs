//! The metrics of client connections the gateway ended or refused on its own: answers to
//! "why was my connection closed" and "is someone probing the edge".

use prometheus::{IntCounterVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct ListenMetrics {
    /// Requests refused before routing, by reason: `bad_framing` (400), `uri_too_long`
    /// (414), `header_too_large` and `too_many_headers` (431).
    pub refused: IntCounterVec,
    /// Connections the gateway closed, by reason: `header_timeout`, `idle_timeout`,
    /// `handshake_timeout` (TLS or HTTP/2 preface), `shutdown`, `h2_abuse` (GOAWAY for
    /// too many resets, refused or malformed streams).
    pub closed: IntCounterVec,
}

impl ListenMetrics {
    pub fn register(registry: &Registry) -> Self {
        let refused = IntCounterVec::new(
            Opts::new(
                "downstream_refused_total",
                "Requests refused before routing, by reason: bad_framing (400), uri_too_long (414), header_too_large and too_many_headers (431).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let closed = IntCounterVec::new(
            Opts::new(
                "downstream_closed_total",
                "Client connections the gateway closed on its own, by reason: header_timeout, idle_timeout, handshake_timeout, shutdown, h2_abuse.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for c in [&refused, &closed] {
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
        }
        Self { refused, closed }
    }

    pub fn refused(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }

    pub fn closed(&self, reason: &str) {
        self.closed.with_label_values(&[reason]).inc();
    }
}
