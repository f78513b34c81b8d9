//! Test origins for upstream TLS and egress: an HTTPS server (tokio-rustls + hyper) with a
//! certificate of the test's choosing, optionally requiring a client certificate, that
//! names itself, the SNI, HTTP version and client certificate it saw in response headers; and
//! a tiny authoritative DNS server whose one A record the test can change or stop.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

/// A running HTTPS origin; stopped when dropped.
pub struct Origin {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    /// Serves on `addr` with `chain_pem`/`key_pem`; with `client_ca`, only clients holding a
    /// certificate it issued complete the handshake.
    pub async fn start(
        addr: SocketAddr,
        name: &str,
        chain_pem: &str,
        key_pem: &str,
        client_ca: Option<CertificateDer<'static>>,
    ) -> Origin {
        super::install_crypto();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name: Arc<str> = name.into();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, name) = (acceptor.clone(), name.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, conn) = tls.get_ref();
                    let sni = conn.server_name().unwrap_or("").to_string();
                    let client = conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| subject_cn(c))
                        .unwrap_or_else(|| "none".into());
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let resp = Response::builder()
                            .header("x-origin", &*name)
                            .header("x-version", format!("{:?}", req.version()))
                            .header("x-sni", sni.as_str())
                            .header("x-client-cert", client.as_str())
                            .body(Full::new(Bytes::from(format!("origin {name}"))))
                            .unwrap();
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Origin { addr, task }
    }
}

fn subject_cn(der: &CertificateDer<'_>) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("?")
        .to_string()
}

/// An authoritative DNS server over UDP on loopback answering A queries for one name with
/// one address and a TTL; every other query gets NXDOMAIN. Stopped when dropped.
pub struct Dns {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Ipv4Addr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dns {
    pub async fn start(name: &str, ttl: u32, ip: Ipv4Addr) -> Dns {
        use hickory_proto::op::{Message, ResponseCode};
        use hickory_proto::rr::{Name, RData, Record, RecordType, rdata::A};
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(ip));
        let current = answer.clone();
        let zone = Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).unwrap();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
                reply.metadata.authoritative = true;
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                let mut found = false;
                for q in &query.queries {
                    reply.add_query(q.clone());
                    if q.name().to_ascii().eq_ignore_ascii_case(&zone.to_ascii()) {
                        found = true;
                        if q.query_type() == RecordType::A {
                            let ip = *current.lock().unwrap();
                            reply.add_answer(Record::from_rdata(
                                zone.clone(),
                                ttl,
                                RData::A(A(ip)),
                            ));
                        }
                    }
                }
                if !found {
                    reply.metadata.response_code = ResponseCode::NXDomain;
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        Dns { addr, answer, task }
    }

    /// Answers with `ip` from now on.
    pub fn set(&self, ip: Ipv4Addr) {
        *self.answer.lock().unwrap() = ip;
    }
}
