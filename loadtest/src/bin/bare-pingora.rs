//! `bare-pingora`: Pingora as it comes, a `ProxyHttp` that sends every request to one fixed
//! upstream and does nothing else, run by Pingora's own `Server` and listeners. It is the
//! baseline of `shared/BENCHMARKS.md`, measured beside weir-gateway so that the cost of
//! Weir's own accept path and features can be read off directly.

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;

#[derive(Parser, Debug)]
#[command(
    name = "bare-pingora",
    version,
    about = "A bare Pingora proxy with one fixed upstream"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// The one upstream, plain HTTP/1.1 with keep-alive.
    #[arg(long, value_name = "ADDR")]
    upstream: SocketAddr,
    /// Worker threads.
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
}

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let cli = Cli::parse();
    let conf = ServerConf {
        threads: cli.threads,
        ..ServerConf::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service(
        &server.configuration,
        Bare {
            upstream: cli.upstream,
        },
    );
    service.add_tcp(&cli.listen.to_string());
    server.add_service(service);
    server.run_forever();
}
