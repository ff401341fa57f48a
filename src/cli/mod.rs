//! The command line: parse, call the library, report. Exit codes: 0 every input written,
//! 1 the run finished but some input failed (see report.json), 2 usage or setup error;
//! `report merge` exits 3 while shards or inputs are missing.

mod args;
mod bench;
mod eval;
mod export;
mod prompt_free;
mod report;
mod resume;
mod segment;
mod shard;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

/// Exit status when some inputs failed but the run finished.
const EXIT_SOME_FAILED: u8 = 1;
/// Exit status for usage and setup errors.
const EXIT_USAGE: u8 = 2;

pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Segment(args) => segment::run(&args),
        Command::Bench(args) => bench::run(&args).map(|()| true),
        Command::Eval(args) => eval::run(&args),
        Command::ExportTraining(args) => export::run(&args),
        Command::Report(args) => return report::run(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_SOME_FAILED),
        Err(e) => {
            eprintln!("cosam: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
