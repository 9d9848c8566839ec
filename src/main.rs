//! kforge: the binary. Parses arguments, runs the pipeline in kforge-core, prints.
//!
//! Exit codes: 0 success, 1 failure, 2 invalid cluster file (nothing was touched).
//! Results go to stdout; diagnostics, progress and notices to stderr; secrets to
//! neither (except `kubeconfig` without `--out`, which exists to print one).

mod certs;
mod cli;
mod commands;
mod lint;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Armed only in a build with the `failpoints` feature (the fault matrix's).
    let _failpoints = kforge_ssh::faults::setup();
    match commands::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(commands::CliError::Findings(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
