//! What a client connection may take from the gateway: how long it may wait, how much it
//! may send before a request is complete, and how many HTTP/2 streams it may hold. The
//! edge faces the internet, so every wait here ends and every buffer has a ceiling.

use std::time::Duration;

/// The limits of one listener manager, set by `weir-gateway`'s flags.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// A request header must be complete this long after the connection is accepted (first
    /// request, TLS handshake included) or after the first byte of a later request arrives.
    /// HTTP/2: the first HEADERS must arrive this long after the connection is accepted.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long
    /// (HTTP/2: GOAWAY, then close).
    pub idle_timeout: Duration,
    /// Each read of a request body must come within this time.
    pub client_body_timeout: Duration,
    /// Each write to a client must make progress within this time.
    pub client_write_timeout: Duration,
    /// Bytes of a request head: request line plus header fields. Over it: 431, or 414 when
    /// the request line alone does not fit.
    pub max_header_bytes: usize,
    /// Header fields in one request. Over it: 431.
    pub max_headers: usize,
    /// Concurrent streams an HTTP/2 client may open; more are refused, and a client that
    /// keeps opening them gets GOAWAY.
    pub max_concurrent_streams: u32,
}

/// Pingora's parser holds at most this many header fields, so a higher limit could not be
/// honoured.
pub const MAX_HEADERS_CEILING: usize = 256;

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            client_write_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_concurrent_streams: 100,
        }
    }
}

impl ConnLimits {
    /// Refuses limits that cannot work, with a message naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, d) in [
            ("--header-timeout", self.header_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--client-body-timeout", self.client_body_timeout),
            ("--client-write-timeout", self.client_write_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{flag} must be more than 0"));
            }
        }
        if self.max_headers == 0 || self.max_headers > MAX_HEADERS_CEILING {
            return Err(format!(
                "--max-headers must be between 1 and {MAX_HEADERS_CEILING}, got {}",
                self.max_headers
            ));
        }
        // A request line plus a Host header must fit, and h2's header list size is a u32.
        if self.max_header_bytes < 1024 || self.max_header_bytes > 1024 * 1024 {
            return Err(format!(
                "--max-header-bytes must be between 1 KiB and 1 MiB, got {}",
                self.max_header_bytes
            ));
        }
        if self.max_concurrent_streams == 0 {
            return Err("--max-concurrent-streams must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_nonsense_is_named() {
        assert!(ConnLimits::default().validate().is_ok());
        let zero = ConnLimits {
            idle_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert!(zero.validate().unwrap_err().contains("--idle-timeout"));
        let many = ConnLimits {
            max_headers: 1000,
            ..Default::default()
        };
        assert!(many.validate().unwrap_err().contains("--max-headers"));
        let tiny = ConnLimits {
            max_header_bytes: 10,
            ..Default::default()
        };
        assert!(tiny.validate().unwrap_err().contains("--max-header-bytes"));
    }
}
