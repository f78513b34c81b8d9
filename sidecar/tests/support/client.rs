//! Test clients: one connection each (mTLS with an SVID, or plaintext), over which requests
//! are sent one at a time, so a test controls exactly which handshake a request rides on.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use weir_model::spiffe::{Allow, ServerVerifier};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One open connection to the sidecar.
pub struct Conn {
    sender: Sender,
    /// The certificate the sidecar presented (mTLS only).
    pub server_cert: Option<CertificateDer<'static>>,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
    /// The body as it came, before the lossy text of `body`.
    pub bytes: Bytes,
    /// The trailers, when the response had any (gRPC's status travels there).
    pub trailers: Option<http::HeaderMap>,
}

impl Reply {
    /// The weir-echo JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Every value of request header `name` as the app saw it.
    pub fn seen(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A client presenting the SVID in `svid` and requiring the sidecar to be `server_id`.
fn tls_config(svid: &Path, server_id: &str, proto: Proto) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&svid.join("ca.crt")) {
        roots.add(c).unwrap();
    }
    let verifier = ServerVerifier::new(Arc::new(roots), Allow::new([server_id])).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(
            certs(&svid.join("tls.crt")),
            PrivateKeyDer::from_pem_file(svid.join("tls.key")).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = match proto {
        Proto::H1 => vec![b"http/1.1".to_vec()],
        Proto::H2 => vec![b"h2".to_vec()],
    };
    // Each connection must be a full handshake, so that it shows the current certificate.
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg
}

async fn http<S>(io: S, proto: Proto) -> Result<Sender, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    Ok(match proto {
        Proto::H1 => {
            let (sender, conn) = http1::handshake(io).await.map_err(err)?;
            tokio::spawn(conn);
            Sender::H1(sender)
        }
        Proto::H2 => {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(err)?;
            tokio::spawn(conn);
            Sender::H2(sender)
        }
    })
}

/// Opens an mTLS connection to 127.0.0.1:`port` as the SVID in `svid`.
pub async fn mtls(port: u16, svid: &Path, server_id: &str, proto: Proto) -> Result<Conn, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(svid, server_id, proto)));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(err)?;
    let name = ServerName::try_from("sidecar.invalid").unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(err)?
        .map_err(err)?;
    let server_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c[0].clone().into_owned());
    Ok(Conn {
        sender: http(tls, proto).await?,
        server_cert,
    })
}

/// Opens a plaintext HTTP/1.1 connection to 127.0.0.1:`port`.
pub async fn plain(port: u16) -> Result<Conn, String> {
    plain_with(port, Proto::H1).await
}

/// Opens a plaintext connection to 127.0.0.1:`port`: HTTP/1.1, or HTTP/2 with prior
/// knowledge (h2c, as gRPC clients speak it).
pub async fn plain_with(port: u16, proto: Proto) -> Result<Conn, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(err)?;
    Ok(Conn {
        sender: http(tcp, proto).await?,
        server_cert: None,
    })
}

impl Conn {
    /// GET `path` with extra headers; an error if the connection fails.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        let mut req = http::Request::get(format!("http://app.test{path}"));
        if matches!(self.sender, Sender::H1(_)) {
            req = req.uri(path).header("host", "app.test");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Full::new(Bytes::new())).unwrap()).await
    }

    /// GET an absolute `uri`: absolute-form on HTTP/1.1, as `HTTP_PROXY` clients send it.
    pub async fn get_uri(&mut self, uri: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        let mut req = http::Request::get(uri);
        let authority = uri
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().cloned());
        if let (Sender::H1(_), Some(a)) = (&self.sender, authority) {
            req = req.header("host", a.as_str());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Full::new(Bytes::new())).unwrap()).await
    }

    /// A unary gRPC call to `authority` and `path` (`/package.Service/Method`) carrying
    /// `message`: a POST
    /// with gRPC's content type, `te: trailers` and one length-prefixed message. The reply's
    /// body is the answer's message, without its five-byte prefix.
    pub async fn grpc(
        &mut self,
        authority: &str,
        path: &str,
        message: &[u8],
    ) -> Result<Reply, String> {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(message);
        let req = http::Request::post(format!("http://{authority}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(framed)))
            .unwrap();
        let mut reply = self.send(req).await?;
        // The prefix's length bytes need not be text: cut them off before decoding.
        reply.body = String::from_utf8_lossy(reply.bytes.get(5..).unwrap_or_default()).into_owned();
        Ok(reply)
    }

    async fn send(&mut self, req: http::Request<Full<Bytes>>) -> Result<Reply, String> {
        let send = async {
            // Wait until the connection takes a request: an HTTP/1 one is ready again only
            // once its task has finished the previous exchange, and on a multi-threaded
            // runtime this task can get there first, when `send_request` fails at once
            // with "operation was canceled" (connection was not ready).
            let resp = match &mut self.sender {
                Sender::H1(s) => match s.ready().await {
                    Ok(()) => s.send_request(req).await,
                    Err(e) => Err(e),
                },
                Sender::H2(s) => match s.ready().await {
                    Ok(()) => s.send_request(req).await,
                    Err(e) => Err(e),
                },
            }
            .map_err(err)?;
            let (parts, body) = resp.into_parts();
            let collected = body.collect().await.map_err(err)?;
            let trailers = collected.trailers().cloned();
            let body = collected.to_bytes();
            Ok(Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
                bytes: body,
                trailers,
            })
        };
        tokio::time::timeout(Duration::from_secs(10), send)
            .await
            .map_err(err)?
    }
}

/// Connects over mTLS and sends one GET: the whole exchange, for tests that only care
/// whether it works.
pub async fn mtls_get(
    port: u16,
    svid: &Path,
    server_id: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    mtls(port, svid, server_id, Proto::H1)
        .await?
        .get("/", headers)
        .await
}
