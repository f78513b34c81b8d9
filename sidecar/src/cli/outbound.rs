//! The outbound flags: `--outbound`, `--upstream`, `--upstream-id`, and their rules.
//!
//! Outbound is on only with an `--upstream`: without one there is nowhere to send the
//! app's requests, and a default listener on 127.0.0.1:15001 would then only turn the
//! app's calls into 502s (and collide with other sidecars on a shared host in tests).

use super::Cli;
use std::net::SocketAddr;
use std::str::FromStr;

/// Where the outbound listener listens when `--upstream` is set and `--outbound` is not.
pub const DEFAULT_OUTBOUND: &str = "127.0.0.1:15001";

/// `--outbound ADDR` or `--outbound none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundAddr {
    Listen(SocketAddr),
    Disabled,
}

impl FromStr for OutboundAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "none" {
            return Ok(Self::Disabled);
        }
        text.parse().map(Self::Listen).map_err(|_| {
            format!("{text:?} is neither an address (IP:PORT, e.g. {DEFAULT_OUTBOUND}) nor none")
        })
    }
}

/// `HOST:PORT`, where HOST is a DNS name, an IPv4 address or a bracketed IPv6 address.
pub fn parse_host_port(text: &str) -> Result<String, String> {
    const FORMAT: &str = "expected HOST:PORT, e.g. weir-gateway-internal.weir-system:15443";
    let (host, port) = text.rsplit_once(':').ok_or(format!("{text:?}: {FORMAT}"))?;
    match port.parse::<u16>() {
        Ok(1..) => {}
        _ => return Err(format!("{text:?}: port {port:?} is not 1-65535; {FORMAT}")),
    }
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
    };
    if !host_ok {
        return Err(format!(
            "{text:?}: host {host:?} is not a DNS name or IP; {FORMAT}"
        ));
    }
    Ok(text.into())
}

impl Cli {
    /// The outbound listener's address, if outbound is on.
    pub fn outbound_addr(&self) -> Option<SocketAddr> {
        self.upstream.as_ref()?;
        match self.outbound {
            Some(OutboundAddr::Disabled) => None,
            Some(OutboundAddr::Listen(addr)) => Some(addr),
            None => Some(DEFAULT_OUTBOUND.parse().expect("valid default")),
        }
    }

    pub(super) fn check_outbound(&self) -> Result<(), String> {
        if self.upstream.is_none() {
            if let Some(OutboundAddr::Listen(addr)) = self.outbound {
                return Err(format!(
                    "--outbound {addr} needs --upstream: the mesh listener to send requests to"
                ));
            }
            if !self.upstream_id.is_empty() {
                return Err("--upstream-id is only meaningful with --upstream".into());
            }
            return Ok(());
        }
        let Some(addr) = self.outbound_addr() else {
            return Ok(());
        };
        if self.upstream_id.is_empty() {
            return Err(
                "--upstream-id is required with --upstream: without the SPIFFE IDs \
                        the upstream may present, any peer with an SVID could read the \
                        app's requests"
                    .into(),
            );
        }
        if addr == self.admin {
            return Err(format!("--outbound {addr} is the --admin address"));
        }
        if self.inbound.iter().any(|s| s.port == addr.port()) {
            return Err(format!(
                "--outbound port {} is an --inbound port",
                addr.port()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_values_parse_strictly() {
        assert_eq!("none".parse(), Ok(OutboundAddr::Disabled));
        assert!(matches!(
            "127.0.0.1:15001".parse(),
            Ok(OutboundAddr::Listen(_))
        ));
        assert!("localhost:15001".parse::<OutboundAddr>().is_err());
        for ok in [
            "weir-gateway-internal.weir-system:15443",
            "10.0.0.1:1",
            "[::1]:8",
        ] {
            assert_eq!(parse_host_port(ok).as_deref(), Ok(ok));
        }
        for bad in ["gw", "gw:0", "gw:x", ":80", "g w:80", "[nope]:80", "::1:80"] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }
}
