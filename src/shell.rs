//! `rshard shell`: the SQL shell on a cluster. Interactive (rustyline) when stdin is a
//! terminal and no statements are given; otherwise it runs `-e` statements, a `-f` file,
//! or stdin, and exits 0, 3 (a statement failed) or 2 (the cluster cannot be reached).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use rshard_shell::render::Format;
use rshard_shell::runner::{self, EXIT_CONNECTION_FAILED, EXIT_STATEMENT_FAILED};
use rshard_shell::session::Session;
use rshard_shell::store::Store;

use crate::kv::ClientArgs;

#[derive(Debug, clap::Args)]
pub struct ShellArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Output format: table, csv, tsv or json.
    #[arg(long, default_value = "table")]
    pub format: Format,
    /// Run these statements (repeatable) and exit.
    #[arg(short = 'e', long = "execute")]
    pub execute: Vec<String>,
    /// Run the statements in this file and exit.
    #[arg(short = 'f', long = "file", conflicts_with = "execute")]
    pub file: Option<PathBuf>,
    /// Go on after a failed statement (the exit code still says one failed).
    #[arg(long)]
    pub continue_on_error: bool,
    /// Print each statement before its result.
    #[arg(long)]
    pub echo: bool,
}

pub fn run(args: ShellArgs) -> anyhow::Result<u8> {
    let runtime = crate::runtime()?;
    // The client's endpoint needs the runtime's context.
    let _context = runtime.enter();
    let client = match args.client.client() {
        Ok(client) => client,
        Err(error) => {
            eprintln!("ERROR: {error:#}");
            return Ok(EXIT_CONNECTION_FAILED);
        }
    };
    // One request up front, so that an unreachable cluster is said at once, not at the
    // first statement.
    if let Err(error) = runtime.block_on(client.cluster()) {
        eprintln!(
            "ERROR: cannot reach the cluster at {}: {error}",
            args.client
                .host
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        return Ok(EXIT_CONNECTION_FAILED);
    }
    let mut session = Session::new(Store::Cluster(Arc::new(client)), args.format);
    session.echo = args.echo;
    Ok(run_session(&mut session, &runtime, &args, ""))
}

/// Runs the shell on `session` as `args` ask: the REPL (with `banner`) or a script.
pub fn run_session(
    session: &mut Session,
    runtime: &tokio::runtime::Runtime,
    args: &ShellArgs,
    banner: &str,
) -> u8 {
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let (mut out, mut err) = (stdout.lock(), stderr.lock());
    if !args.execute.is_empty() {
        let mut text = String::new();
        for statement in &args.execute {
            text.push_str(statement);
            text.push_str(";\n");
        }
        let input = std::io::Cursor::new(text);
        runner::run(
            session,
            runtime,
            input,
            &mut out,
            &mut err,
            args.continue_on_error,
        )
    } else if let Some(path) = &args.file {
        match std::fs::File::open(path) {
            Ok(file) => runner::run(
                session,
                runtime,
                std::io::BufReader::new(file),
                &mut out,
                &mut err,
                args.continue_on_error,
            ),
            Err(error) => {
                eprintln!("ERROR: cannot read {}: {error}", path.display());
                EXIT_STATEMENT_FAILED
            }
        }
    } else if std::io::stdin().is_terminal() {
        drop((out, err));
        let session =
            std::mem::replace(session, Session::new(session.store.clone(), session.format));
        rshard_shell::repl::run(session, runtime, banner)
    } else {
        let stdin = std::io::stdin();
        runner::run(
            session,
            runtime,
            stdin.lock(),
            &mut out,
            &mut err,
            args.continue_on_error,
        )
    }
}
