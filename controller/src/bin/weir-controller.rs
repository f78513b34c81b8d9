//! `weir-controller`: Weir's control-plane binary. Without a cluster it validates manifests
//! (`check`) and shows the config they compile to (`render`).

// A CLI's output is its product.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use weir_controller::{check, source::files, translate};

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
            let (cert, key) = weir_controller::certs::self_signed(&hosts, days)?;
            print!(
                "{}",
                weir_controller::certs::secret_yaml(&name, &namespace, &cert, &key)
            );
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
