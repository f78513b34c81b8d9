//! `weir-controller`: Weir's control-plane binary. In a cluster it writes status (`run`);
//! without one it validates manifests (`check`) and shows the config they compile to
//! (`render`).

// A CLI's output is its product.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use weir_controller::cli::ca::{Ca, Svid};
use weir_controller::{cli::check, source::files, translate};

#[derive(Parser)]
#[command(name = "weir-controller", version, about = "Weir's control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate Gateway API manifests without a cluster and print the status every object
    /// would get. Exits 1 when a GatewayClass, Gateway or route is not Accepted, 2 when the
    /// manifests cannot be read.
    Check {
        /// A YAML file or a directory of them (read recursively).
        path: PathBuf,
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Print the configuration the manifests compile to (private keys redacted): a summary,
    /// or the full IR as JSON.
    Render {
        /// A YAML file or a directory of them (read recursively).
        path: PathBuf,
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Watch the cluster and, while holding the leader Lease, write the status of Weir's
    /// GatewayClasses, Gateways, routes and RateLimitPolicies (server-side apply, field
    /// manager `weir-controller`, only when it changed). Runs until SIGTERM.
    Run {
        /// Namespace of the leader-election Lease.
        #[arg(long, env = "POD_NAMESPACE")]
        lease_namespace: String,
        /// Name of the Lease.
        #[arg(long, default_value = "weir-controller")]
        lease_name: String,
        /// This replica's name in the Lease (defaults to the pod name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// The fleet's edge Service, NAMESPACE/NAME, whose address every Gateway reports
        /// (default: weir-gateway in the Lease namespace).
        #[arg(long, value_name = "NS/NAME")]
        gateway_service: Option<String>,
        /// The gateways' ServiceAccount, NAMESPACE/NAME (default: weir-gateway in the Lease
        /// namespace). It gets a RoleBinding to the ClusterRole weir-gateway-secrets in each
        /// namespace its Gateways take certificates from, and no Secret access elsewhere.
        #[arg(long, value_name = "NS/NAME")]
        gateway_service_account: Option<String>,
    },
    /// A trust-domain CA and SPIFFE SVIDs for local runs and tests (cert-manager's
    /// csi-driver-spiffe issues them in a cluster).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Add the weir-sidecar to the Deployments in YAML (a file, or - for stdin) and print
    /// it: the sidecar takes over each named container port (Services targeting the name
    /// reach its mTLS listener), mounts the csi-driver-spiffe identity and the namespace's
    /// `weir-authz` policies, and a NetworkPolicy per Deployment admits only the sidecar's
    /// ports from other pods.
    Inject {
        #[arg(default_value = "-")]
        path: PathBuf,
        #[arg(long, default_value = "ghcr.io/weir-dev/weir:0.1.0")]
        image: String,
        /// strict (mTLS only) or permissive (plaintext accepted too).
        #[arg(long, default_value = "strict")]
        mode: String,
        /// A SPIFFE ID, or a prefix ending in *, allowed to call the workload (repeat).
        #[arg(long, required = true)]
        allow: Vec<String>,
        /// The peers trusted to pass the original caller's identity on (the gateway fleet).
        #[arg(
            long,
            default_value = "spiffe://cluster.local/ns/weir-system/sa/weir-gateway"
        )]
        identity_setter: String,
        /// Also point the app containers' HTTP_PROXY at the sidecar's outbound listener.
        #[arg(long)]
        http_proxy: bool,
        /// The fleet's mesh listener that the sidecar carries outbound calls to over mTLS
        /// (it must present the --identity-setter ID); `none` for an inbound-only sidecar.
        #[arg(long, default_value = "weir-gateway-internal.weir-system:15443")]
        fleet: String,
        /// The OTLP/HTTP collector the sidecar exports a span per request to
        /// (http://otel-collector.observability:4318), as the fleet does.
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
        /// Do not emit the NetworkPolicy that closes the app's own ports to other pods
        /// (for clusters whose CNI enforces none, or that manage their own).
        #[arg(long)]
        no_network_policy: bool,
    },
    /// Serve the live service graph: a page at / and its JSON at /api/graph?window=5m,
    /// from a Prometheus server or from the gateways' and sidecars' /metrics directly.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["prometheus", "scrape"])))]
    Graph {
        #[arg(long, default_value = "127.0.0.1:9900", env = "WEIR_GRAPH_LISTEN")]
        listen: std::net::SocketAddr,
        /// A Prometheus server that scrapes the fleet and the sidecars (http://prometheus:9090).
        #[arg(long, value_name = "URL")]
        prometheus: Option<String>,
        /// Metrics URLs to read directly instead (http://127.0.0.1:9901/metrics,…).
        #[arg(long, value_name = "URL,…", value_delimiter = ',')]
        scrape: Vec<String>,
        /// How often --scrape targets are read.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// How much --scrape history is kept: the longest window it can answer.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        retention: std::time::Duration,
        /// How often the page asks for fresh data.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        refresh: std::time::Duration,
    },
    /// Print the AuthorizationPolicies the sidecars of a namespace enforce: the JSON that
    /// `weir-sidecar --authz-file` reads, or with --configmap the `weir-authz` ConfigMap
    /// that `weir-controller run` keeps in each namespace.
    SidecarPolicies {
        /// A YAML file or a directory of them (read recursively).
        path: PathBuf,
        #[arg(long, short)]
        namespace: String,
        #[arg(long)]
        configmap: bool,
    },
    /// Print the CustomResourceDefinitions of the weir.dev API group (the YAML in crds/).
    Crds,
    /// Print a `kubernetes.io/tls` Secret with a fresh self-signed certificate, for demos
    /// and local runs (use cert-manager in a cluster).
    TlsSecret {
        /// Secret name.
        #[arg(long)]
        name: String,
        /// Secret namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// A DNS name the certificate is for (repeat for more; wildcards allowed).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a CA for a trust domain: DIR/ca.crt and DIR/ca.key.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The trust domain, as in spiffe://TRUST-DOMAIN/ns/N/sa/S.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Print the SVID of ServiceAccount NS/SA as a kubernetes.io/tls Secret, with the CA's
    /// trust bundle as a ConfigMap (key ca.crt), for `kubectl apply -f -`.
    Manifests {
        #[command(flatten)]
        svid: SvidArgs,
        /// The Secret's name.
        #[arg(long)]
        secret: String,
        /// The trust bundle ConfigMap's name.
        #[arg(long, default_value = "weir-mesh-ca")]
        ca_configmap: String,
    },
    /// Issue the SVID of ServiceAccount NS/SA into OUT (tls.crt, tls.key, ca.crt).
    Issue {
        #[command(flatten)]
        svid: SvidArgs,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Which SVID `ca issue` and `ca manifests` make, and from which CA.
#[derive(clap::Args)]
struct SvidArgs {
    /// The directory `ca init` wrote.
    #[arg(long)]
    ca_dir: PathBuf,
    #[arg(long)]
    ns: String,
    #[arg(long)]
    sa: String,
    /// Validity, in hours.
    #[arg(long, default_value_t = 24)]
    hours: u32,
}

impl SvidArgs {
    fn issue(&self) -> Result<(Ca, Svid)> {
        let ca = Ca::load(&self.ca_dir)?;
        let svid = ca.issue(&self.ns, &self.sa, self.hours)?;
        Ok((ca, svid))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run {
            lease_namespace,
            lease_name,
            identity,
            gateway_service,
            gateway_service_account,
        } => {
            let object = |flag: &str, value: Option<String>| match value {
                None => Ok((lease_namespace.clone(), "weir-gateway".to_string())),
                Some(s) => match s.split_once('/') {
                    Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                        Ok((ns.to_string(), name.to_string()))
                    }
                    _ => Err(anyhow::anyhow!(
                        "{flag}: expected NAMESPACE/NAME, got {s:?}"
                    )),
                },
            };
            let gateway_service = object("--gateway-service", gateway_service)?;
            let gateway_account = object("--gateway-service-account", gateway_service_account)?;
            let identity =
                identity.unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(controller(
                    lease_namespace,
                    lease_name,
                    identity,
                    gateway_service,
                    gateway_account,
                ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { path, output } => {
            let loaded = files::load(&path)?;
            if !loaded.ignored_kinds.is_empty() {
                let kinds: Vec<String> = loaded
                    .ignored_kinds
                    .iter()
                    .map(|(k, n)| format!("{k} ({n})"))
                    .collect();
                eprintln!(
                    "note: ignoring kinds Weir does not read: {}",
                    kinds.join(", ")
                );
            }
            let (_, mut report) = translate(&loaded.snapshot);
            report.stamp(jiff::Timestamp::now());
            match output {
                Output::Text => print!("{}", check::text(&report)),
                Output::Json => {
                    println!("{}", serde_json::to_string_pretty(&check::rows(&report))?);
                    for ((kind, id), why) in &report.unattached_routes {
                        eprintln!("warning: {kind} {id} is not attached: {why}");
                    }
                }
            }
            Ok(if check::all_accepted(&report) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Ca { command } => {
            match command {
                CaCommand::Init {
                    dir,
                    trust_domain,
                    days,
                } => {
                    if dir.join("ca.key").exists() {
                        anyhow::bail!("{} already holds a CA; not replacing it", dir.display());
                    }
                    std::fs::create_dir_all(&dir)?;
                    let ca = Ca::init(&trust_domain, days)?;
                    ca.write(&dir)?;
                    println!(
                        "CA for spiffe://{trust_domain} written to {}",
                        dir.display()
                    );
                }
                CaCommand::Manifests {
                    svid,
                    secret,
                    ca_configmap,
                } => {
                    let (ca, issued) = svid.issue()?;
                    print!(
                        "{}",
                        issued.manifests(&ca, &svid.ns, &secret, &ca_configmap)
                    );
                }
                CaCommand::Issue { svid, out } => {
                    let (ca, issued) = svid.issue()?;
                    issued.write(&out, &ca)?;
                    println!("{} written to {}", issued.spiffe_id, out.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inject {
            path,
            image,
            mode,
            allow,
            identity_setter,
            http_proxy,
            fleet,
            otlp_endpoint,
            no_network_policy,
        } => {
            let input = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            };
            let opts = weir_controller::cli::inject::Options {
                image,
                mode,
                allow,
                identity_setter,
                http_proxy,
                fleet: (fleet != "none").then_some(fleet),
                otlp_endpoint,
                network_policy: !no_network_policy,
            };
            let (yaml, warnings) = weir_controller::cli::inject::inject(&input, &opts)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            print!("{yaml}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Graph {
            listen,
            prometheus,
            scrape,
            interval,
            retention,
            refresh,
        } => {
            use weir_controller::graph::{
                self, Options, Source, prom::Prometheus, scrape::Scraper,
            };
            anyhow::ensure!(
                interval >= std::time::Duration::from_millis(100),
                "--interval: at least 100ms"
            );
            let timeout = interval.max(std::time::Duration::from_secs(2));
            let source = match prometheus {
                Some(url) => {
                    Source::Prometheus(Prometheus::new(&url, std::time::Duration::from_secs(10))?)
                }
                None => Source::Scrape(std::sync::Arc::new(Scraper::new(
                    &scrape, timeout, retention,
                )?)),
            };
            let opts = Options {
                listen,
                source,
                interval,
                refresh,
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(async {
                    use tokio::signal::unix::{SignalKind, signal};
                    let mut term = signal(SignalKind::terminate())?;
                    tokio::select! {
                        r = graph::serve(opts, |addr| {
                            println!("listening on {addr}");
                            eprintln!("service graph: http://{addr}/");
                        }) => r,
                        _ = tokio::signal::ctrl_c() => Ok(()),
                        _ = term.recv() => Ok(()),
                    }
                })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crds => {
            print!("{}", weir_controller::crd::all_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::TlsSecret {
            name,
            namespace,
            hosts,
            days,
        } => {
            let (cert, key) = weir_controller::cli::certs::self_signed(&hosts, days)?;
            print!(
                "{}",
                weir_controller::cli::certs::secret_yaml(&name, &namespace, &cert, &key)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::SidecarPolicies {
            path,
            namespace,
            configmap,
        } => {
            use weir_controller::status::sidecars;
            let loaded = files::load(&path)?;
            let (config, _) = translate(&loaded.snapshot);
            let policies = config.authz.for_namespace(&namespace);
            let text = serde_json::to_string_pretty(&policies)?;
            if configmap {
                print!(
                    "{}",
                    serde_yaml::to_string(&sidecars::body(&namespace, &text))?
                );
            } else {
                println!("{text}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Render { path, output } => {
            let loaded = files::load(&path)?;
            let (config, _) = translate(&loaded.snapshot);
            match output {
                Output::Text => print!("{}", config.summary()),
                Output::Json => println!("{}", serde_json::to_string_pretty(&config.redacted())?),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "weir-controller".into())
}

/// Leader election and the status writer, until SIGTERM or SIGINT.
async fn controller(
    lease_namespace: String,
    lease_name: String,
    identity: String,
    gateway_service: (String, String),
    gateway_account: (String, String),
) -> Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{SignalKind, signal};
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?;
    let (leader, lease_task) = weir_controller::status::lease::elect(
        client.clone(),
        &lease_namespace,
        &lease_name,
        &identity,
        Default::default(),
    )
    .await
    .with_context(|| format!("setting up the Lease {lease_namespace}/{lease_name}"))?;
    tracing::info!(identity, lease = %format!("{lease_namespace}/{lease_name}"), "waiting for leadership");

    let source = weir_controller::source::kube::watch(
        client.clone(),
        weir_controller::source::kube::Options {
            keep_status: true,
            ..Default::default()
        },
    );
    let writer = tokio::spawn(weir_controller::status::run::run(
        client,
        source.subscribe(),
        leader,
        weir_controller::status::run::Options {
            gateway_service: Some(gateway_service),
            gateway_account: Some(gateway_account),
            ..Default::default()
        },
    ));
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    // Dropping the writer drops the last leadership receiver: the lease manager then
    // releases the Lease, so the next leader need not wait for it to expire.
    writer.abort();
    let _ = writer.await;
    drop(source);
    match tokio::time::timeout(std::time::Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => tracing::info!("lease released"),
        other => tracing::warn!(?other, "lease not released cleanly; it expires on its own"),
    }
    Ok(())
}
