//! The command line: parse, call the library, report. Exit codes: 0 every input written,
//! 1 the run finished but some input failed (see report.json), 2 usage or setup error;
//! `report merge` exits 3 while shards or inputs are missing.

//!
//! Each command's file imports only this module (what several commands share: the shard
//! report format, the embedding cache) and `args`; the commands never import each other.

mod args;
mod bench;
mod eval;
mod export;
mod report;
mod segment;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use cosam::eval::DiskCache;
use serde::{Deserialize, Serialize};

use args::{Cli, Command};

/// Exit status when some inputs failed but the run finished.
const EXIT_SOME_FAILED: u8 = 1;
/// Exit status for usage and setup errors.
const EXIT_USAGE: u8 = 2;

pub fn run() -> ExitCode {
    StderrLogger::install();
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

/// The `shard` object of a shard report.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct ShardInfo {
    pub index: usize,
    pub count: usize,
    /// Where K/N came from (`--shard 1/3`, `Slurm: ...`, `Kubernetes: ...`).
    pub source: String,
    /// Slurm `ARRAYJOB_TASK`, or the Kubernetes pod name.
    pub engine_job_id: Option<String>,
    pub host: Option<String>,
    /// Inputs of the whole batch, and the sha256 of their sorted keys (one per line).
    pub keys_total: usize,
    pub keys_sha256: String,
    /// Every key of the batch, sorted, so that a merge can name the inputs of a shard
    /// that never reported.
    pub keys: Vec<String>,
    /// Inputs given to this shard.
    pub assigned: usize,
    /// Of those, skipped by --resume because they were already done.
    pub resumed: usize,
}

/// The path of shard K of N's report.
pub(crate) fn shard_report_path(out: &Path, index: usize, count: usize) -> PathBuf {
    out.join("reports")
        .join(format!("shard-{index}-of-{count}.json"))
}

/// The embedding cache in `dir` (default: the user's cache folder), unless disabled.
pub(crate) fn open_cache(
    dir: Option<&Path>,
    disabled: bool,
    max_bytes: u64,
) -> anyhow::Result<Option<DiskCache>> {
    if disabled {
        return Ok(None);
    }
    let dir = dir.map_or_else(DiskCache::default_dir, Path::to_path_buf);
    Ok(Some(DiskCache::new(&dir, max_bytes).with_context(
        || format!("cannot create cache folder {}", dir.display()),
    )?))
}

/// The library's log records on stderr, as the CLI's own messages look (`cosam: warning:
/// ...`). Only cosam's records are shown (wgpu and ONNX Runtime log their own internals
/// through the same facade); `COSAM_LOG=off|error|warn|info|debug` sets the level
/// (default `info`).
struct StderrLogger {
    level: log::LevelFilter,
}

impl StderrLogger {
    fn install() {
        let level = std::env::var("COSAM_LOG")
            .ok()
            .and_then(|v| v.trim().parse::<log::LevelFilter>().ok())
            .unwrap_or(log::LevelFilter::Info);
        let logger = Box::leak(Box::new(StderrLogger { level }));
        // a second install (never in the binary) keeps the first logger
        if log::set_logger(logger).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level && metadata.target().starts_with("cosam")
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let kind = match record.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            _ => "",
        };
        eprintln!("cosam: {kind}{}", record.args());
    }

    fn flush(&self) {}
}
