//! `gmq`: GMQ's command line. Online commands talk to a server through
//! `gmq-client`; offline commands work on a data directory through the
//! engine's own readers, verifier and repair. See `gmq --help` and
//! `docs/operations.md`.

mod args;
mod offline;
mod online;
mod out;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use args::{Cli, Command};
use out::Fail;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The engine reports what recovery finds as warnings; they go to stderr.
    let filter = tracing_subscriber::EnvFilter::try_from_env("GMQ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    match run(&cli) {
        Ok(()) | Err(Fail::BrokenPipe) => ExitCode::SUCCESS,
        Err(f) => {
            if !matches!(f, Fail::Damage(_)) || !f.to_string().is_empty() {
                eprintln!("gmq: {f}");
            }
            ExitCode::from(f.exit_code())
        }
    }
}

fn run(cli: &Cli) -> Result<(), Fail> {
    let Some(cmd) = &cli.command else {
        return match (&cli.queue, &cli.action) {
            (Some(q), Some(a)) => online::legacy(cli, q, a, cli.message.as_deref()),
            _ => {
                let _ = Cli::command().print_help();
                Err(Fail::Usage("give a command (or GMQ's -q QUEUE -a P|S|L)".into()))
            }
        };
    };
    if cli.queue.is_some() || cli.action.is_some() || cli.message.is_some() {
        return Err(Fail::Usage("-q, -a and -m are GMQ's one-line usage; they do not go with a command".into()));
    }
    match cmd {
        Command::Completions { shell } => {
            let mut out = std::io::stdout();
            clap_complete::generate(*shell, &mut Cli::command(), "gmq", &mut out);
            Ok(())
        }
        Command::Inspect(_)
        | Command::Verify(_)
        | Command::Repair(_)
        | Command::Compact(_)
        | Command::Export(_)
        | Command::Import(_) => offline::run(cli, cmd),
        _ => online::run(cli, cmd),
    }
}
