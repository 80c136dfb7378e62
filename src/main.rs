//! The `rshard` binary: command-line dispatch only. Each subcommand parses its
//! arguments here and hands off to the library crate that does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rshard_common::certs::{self, CertKind, CertsDir};

mod admin;
mod bench;
mod demo;
mod kv;
mod serve;
mod shell;

/// Command line of `rshard`. Subcommands (`serve`, `shell`, `admin`, `demo`,
/// `bench`) are added here as the crates behind them land.
#[derive(Debug, Parser)]
#[command(name = "rshard", version, about, long_about = None, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make and inspect the certificates a cluster needs (one CA, a certificate per node and
    /// per client user).
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
    /// Run a node: bootstrap a new cluster, or join one with --join.
    Serve(Box<serve::ServeArgs>),
    /// Read and write keys (for scripts).
    Kv {
        #[command(flatten)]
        client: kv::ClientArgs,
        #[command(subcommand)]
        action: kv::KvAction,
    },
    /// Load generator: N concurrent clients for a duration; ops/s and latency percentiles.
    Bench(bench::BenchArgs),
    /// Ask placement for operations (split a shard) and list shards and operations.
    Admin {
        #[command(flatten)]
        client: kv::ClientArgs,
        #[command(subcommand)]
        action: admin::AdminAction,
    },
    /// The SQL shell: interactive on a terminal; or statements from -e, -f or stdin.
    Shell(shell::ShellArgs),
    /// A 3-node cluster on this machine with a sample table, and a shell on it.
    Demo(demo::DemoArgs),
    /// List the cluster's nodes and shards, or show one node's status.
    Node {
        #[command(flatten)]
        client: kv::ClientArgs,
        #[command(subcommand)]
        action: kv::NodeAction,
    },
}

#[derive(Debug, clap::Args)]
struct CertPlace {
    /// Directory holding ca.crt, node.crt/key and client.<name>.crt/key.
    #[arg(long, env = "RSHARD_CERTS_DIR", default_value = "certs")]
    certs_dir: PathBuf,
    /// The CA's private key (default: <certs-dir>/ca.key; keep it off the nodes in production).
    #[arg(long)]
    ca_key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct CertOptions {
    #[command(flatten)]
    place: CertPlace,
    /// Days the certificate is valid.
    #[arg(long)]
    lifetime_days: Option<u32>,
    /// Replace existing files instead of refusing.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Debug, Subcommand)]
enum CertAction {
    /// A new cluster CA: ca.crt and its key.
    CreateCa(CertOptions),
    /// node.crt and node.key for this node, valid for every HOST (DNS names or IP addresses).
    CreateNode {
        #[arg(required = true)]
        hosts: Vec<String>,
        #[command(flatten)]
        options: CertOptions,
    },
    /// client.NAME.crt and client.NAME.key for client user NAME.
    CreateClient {
        name: String,
        #[command(flatten)]
        options: CertOptions,
    },
    /// Every certificate in the directory, and whether the cluster CA signed it.
    List {
        #[command(flatten)]
        place: CertPlace,
    },
}

fn certs_dir(place: &CertPlace) -> CertsDir {
    CertsDir::new(&place.certs_dir, place.ca_key.as_deref())
}

fn run_cert(action: CertAction) -> Result<(), certs::CertError> {
    let leaf_days = |options: &CertOptions| {
        options
            .lifetime_days
            .unwrap_or(certs::DEFAULT_CERT_LIFETIME_DAYS)
    };
    let written = match action {
        CertAction::CreateCa(options) => {
            let days = options
                .lifetime_days
                .unwrap_or(certs::DEFAULT_CA_LIFETIME_DAYS);
            certs::create_ca(&certs_dir(&options.place), days, options.overwrite)?
        }
        CertAction::CreateNode { hosts, options } => {
            let place = certs_dir(&options.place);
            certs::create_node(&place, &hosts, leaf_days(&options), options.overwrite)?
        }
        CertAction::CreateClient { name, options } => {
            let place = certs_dir(&options.place);
            certs::create_client(&place, &name, leaf_days(&options), options.overwrite)?
        }
        CertAction::List { place } => {
            let listed = certs::list(&certs_dir(&place))?;
            println!(
                "{:<28} {:<7} {:<14} {:<10} {:<6} HOSTS",
                "FILE", "KIND", "NAME", "EXPIRES", "CA"
            );
            for cert in listed {
                let file = cert
                    .file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let kind = match cert.kind {
                    CertKind::Ca => "ca",
                    CertKind::Node => "node",
                    CertKind::Client => "client",
                    CertKind::Unknown => "?",
                };
                let signed = if cert.signed_by_ca { "yes" } else { "NO" };
                println!(
                    "{file:<28} {kind:<7} {:<14} {:<10} {signed:<6} {}",
                    cert.common_name,
                    cert.expires(),
                    cert.hosts.join(",")
                );
            }
            return Ok(());
        }
    };
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RSHARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Cert { action } => run_cert(action).map(|()| 0).map_err(anyhow::Error::from),
        Command::Serve(args) => {
            let exit_with_stdin = args.exit_with_stdin;
            serve::serve_config(*args).and_then(|config| {
                runtime()?
                    .block_on(serve::run(config, exit_with_stdin))
                    .map(|()| 0)
            })
        }
        Command::Shell(args) => shell::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Kv { client, action } => {
            runtime().and_then(|rt| rt.block_on(kv::run_kv(&client, action)))
        }
        Command::Bench(args) => {
            bench_runtime(args.threads).and_then(|rt| rt.block_on(bench::run(args)))
        }
        Command::Admin { client, action } => {
            runtime().and_then(|rt| rt.block_on(admin::run(&client, action)))
        }
        Command::Node { client, action } => {
            runtime().and_then(|rt| rt.block_on(kv::run_node(&client, action)))
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The load generator's runtime: `threads` of 1 is a single-threaded runtime.
fn bench_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        0 => anyhow::bail!("--threads must be at least 1"),
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
    };
    Ok(builder.enable_all().build()?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
