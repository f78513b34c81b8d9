//! Responses Weir writes itself: errors, redirects and 421s. A gRPC client gets a gRPC
//! status instead of an HTTP error, since gRPC clients read `grpc-status`, not the HTTP code.

use crate::route::filters::HeaderOps;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

/// Writes a complete local response. `location` makes it a redirect; `extra` are fields
/// such as `Retry-After`.
pub(super) async fn respond(
    session: &mut Session,
    status: u16,
    grpc: bool,
    location: Option<&str>,
    extra: &[(&'static str, &str)],
    response_headers: impl Iterator<Item = &HeaderOps>,
) -> Result<()> {
    let (resp, body) = local(status, grpc, location, extra, response_headers)?;
    session.write_response_header(resp, body.is_empty()).await?;
    if !body.is_empty() {
        session
            .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
            .await?;
    }
    Ok(())
}

/// The head and body of a local response.
pub(super) fn local<'a>(
    status: u16,
    grpc: bool,
    location: Option<&str>,
    extra: &[(&'static str, &str)],
    response_headers: impl Iterator<Item = &'a HeaderOps>,
) -> Result<(Box<ResponseHeader>, &'static str)> {
    let (code, body): (u16, &'static str) = if grpc {
        (200, "")
    } else {
        (status, message(status))
    };
    let mut resp = ResponseHeader::build(code, Some(6))?;
    if grpc {
        resp.insert_header("content-type", "application/grpc")?;
        resp.insert_header("grpc-status", grpc_status(status))?;
        resp.insert_header("grpc-message", message(status).trim_end())?;
    } else if !body.is_empty() {
        resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    }
    if let Some(l) = location {
        resp.insert_header("location", l)?;
    }
    if status == 401 && !grpc {
        // RFC 6750: the token the request carried is what was refused.
        resp.insert_header(
            "www-authenticate",
            r#"Bearer realm="weir", error="invalid_token""#,
        )?;
    }
    resp.insert_header("content-length", body.len().to_string())?;
    for (name, value) in extra {
        resp.insert_header(*name, *value)?;
    }
    for ops in response_headers {
        ops.apply(&mut resp);
    }
    Ok((Box::new(resp), body))
}

fn message(status: u16) -> &'static str {
    match status {
        301 | 302 | 303 | 307 | 308 => "",
        404 => "no route\n",
        421 => "misdirected request: this connection cannot serve that host\n",
        401 => "unauthorized\n",
        403 => "forbidden\n",
        429 => "rate limited\n",
        500 => "no valid backend for this route\n",
        502 => "upstream error\n",
        503 => "no healthy upstream\n",
        504 => "upstream request timeout\n",
        _ => "",
    }
}

/// The gRPC status for an HTTP status Weir would have answered (the gRPC spec's mapping).
fn grpc_status(status: u16) -> &'static str {
    match status {
        400 => "13",
        401 => "16",
        403 => "7",
        404 => "12",
        // A gateway's rate limit is a quota, not an outage: clients must not retry at once.
        429 => "8",
        504 => "4",
        _ => "14",
    }
}

#[cfg(test)]
mod tests {
    use super::grpc_status;

    #[test]
    fn grpc_statuses() {
        assert_eq!(grpc_status(404), "12", "UNIMPLEMENTED");
        assert_eq!(grpc_status(503), "14", "UNAVAILABLE");
        assert_eq!(
            grpc_status(500),
            "14",
            "UNAVAILABLE for the invalid-backend share"
        );
        assert_eq!(grpc_status(504), "4", "DEADLINE_EXCEEDED");
        assert_eq!(grpc_status(429), "8", "RESOURCE_EXHAUSTED");
    }
}
