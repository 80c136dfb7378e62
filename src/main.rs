//! The `rshard` binary: command-line dispatch only. Each subcommand parses its
//! arguments here and hands off to the library crate that does the work.

use clap::Parser;

/// Command line of `rshard`. Subcommands (`serve`, `shell`, `admin`, `demo`,
/// `bench`) are added here as the crates behind them land.
#[derive(Debug, Parser)]
#[command(name = "rshard", version, about, long_about = None, arg_required_else_help = true)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
