//! Per-shard reports (`reports/shard-K-of-N.json`) and `cosam report merge`, which joins
//! them into one report.json with every input once.
//!
//! Merge exit codes, for retry policies: 0 every input of every shard is there and ok;
//! 1 complete, but some inputs failed (retrying will not help: they are listed);
//! 3 incomplete: shards or inputs are missing (run or resume them, then merge again);
//! 2 usage error, or reports from different batches (other key lists or shard counts).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use cosam::io;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::args::{ReportArgs, ReportCommand};
use super::ShardInfo;

/// Exit status of `report merge` while shards or inputs are missing.
pub(super) const EXIT_INCOMPLETE: u8 = 3;

#[derive(Deserialize)]
struct ShardReport {
    shard: ShardInfo,
    #[serde(default)]
    started_unix_s: u64,
    #[serde(default)]
    seconds: f64,
    #[serde(default)]
    ok: usize,
    #[serde(default)]
    failed: usize,
    inputs: Vec<Value>,
}

#[derive(Serialize)]
struct ShardSummary {
    index: usize,
    file: PathBuf,
    source: String,
    engine_job_id: Option<String>,
    host: Option<String>,
    started_unix_s: u64,
    seconds: f64,
    assigned: usize,
    ok: usize,
    failed: usize,
    resumed: usize,
}

#[derive(Serialize)]
struct FailedInput {
    key: String,
    id: Option<String>,
    error: Option<String>,
}

#[derive(Serialize)]
struct MergedReport {
    format: &'static str,
    cosam_version: &'static str,
    /// True when every shard reported and every input is in the report.
    complete: bool,
    shards: usize,
    missing_shards: Vec<usize>,
    keys_sha256: String,
    inputs_total: usize,
    ok: usize,
    failed: usize,
    missing: usize,
    /// Keys of inputs no shard reported.
    missing_inputs: Vec<String>,
    failed_inputs: Vec<FailedInput>,
    shard_runs: Vec<ShardSummary>,
    /// One entry per input, in key order.
    inputs: Vec<Value>,
}

pub fn run(args: &ReportArgs) -> ExitCode {
    let result = match &args.command {
        ReportCommand::Merge(m) => merge(&m.dir, m.expect_shards.map(|n| n as usize)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cosam: {e:#}");
            ExitCode::from(super::EXIT_USAGE)
        }
    }
}

/// Reads `dir/reports/shard-*-of-*.json`, writes `dir/report.json`, returns the exit code.
fn merge(dir: &Path, expect_shards: Option<usize>) -> anyhow::Result<u8> {
    let reports_dir = dir.join("reports");
    let entries = std::fs::read_dir(&reports_dir).with_context(|| {
        format!(
            "no shard reports: cannot list {} (did any shard run with --shard?)",
            reports_dir.display()
        )
    })?;
    let mut found: BTreeMap<usize, (PathBuf, ShardReport)> = BTreeMap::new();
    let mut counts = BTreeSet::new();
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| parse_name(p).is_some())
        .collect();
    names.sort();
    for path in names {
        let Some((index, count)) = parse_name(&path) else {
            continue;
        };
        if expect_shards.is_some_and(|n| n != count) {
            continue;
        }
        let text =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let report: ShardReport = serde_json::from_slice(&text)
            .with_context(|| format!("{}: not a cosam shard report", path.display()))?;
        if (report.shard.index, report.shard.count) != (index, count) {
            bail!(
                "{}: says shard {}/{}, its name says {index}/{count}",
                path.display(),
                report.shard.index,
                report.shard.count
            );
        }
        counts.insert(count);
        found.insert(index, (path, report));
    }
    let count = match (expect_shards, counts.len()) {
        (Some(n), _) => n,
        (None, 1) => counts.into_iter().next().unwrap_or(0),
        (None, 0) => bail!(
            "no shard reports in {} (reports/shard-K-of-N.json)",
            reports_dir.display()
        ),
        (None, _) => bail!(
            "{} holds reports of runs with different shard counts ({}); give --expect-shards N",
            reports_dir.display(),
            counts
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if count == 0 {
        bail!("--expect-shards must be at least 1");
    }
    // every shard must have split the same list
    let mut reference: Option<(&Path, &ShardInfo)> = None;
    for (path, report) in found.values() {
        match reference {
            None => reference = Some((path, &report.shard)),
            Some((first, info)) if info.keys_sha256 != report.shard.keys_sha256 => bail!(
                "{} and {} split different input lists (keys sha256 {} vs {}): the shards \
                 were not given the same inputs",
                first.display(),
                path.display(),
                info.keys_sha256,
                report.shard.keys_sha256
            ),
            Some(_) => {}
        }
    }
    let (keys, keys_sha256) = match reference {
        Some((_, info)) => (info.keys.clone(), info.keys_sha256.clone()),
        None => {
            eprintln!(
                "cosam: no report of a {count}-shard run in {}",
                reports_dir.display()
            );
            (Vec::new(), String::new())
        }
    };
    let missing_shards: Vec<usize> = (0..count).filter(|i| !found.contains_key(i)).collect();

    let mut by_key: BTreeMap<String, Value> = BTreeMap::new();
    for (_, report) in found.values() {
        for entry in &report.inputs {
            if let Some(key) = entry.get("key").and_then(Value::as_str) {
                by_key
                    .entry(key.to_string())
                    .or_insert_with(|| entry.clone());
            }
        }
    }
    let missing_inputs: Vec<String> = keys
        .iter()
        .filter(|k| !by_key.contains_key(k.as_str()))
        .cloned()
        .collect();
    let failed_inputs: Vec<FailedInput> = by_key
        .iter()
        .filter(|(_, e)| e.get("status").and_then(Value::as_str) != Some("ok"))
        .map(|(k, e)| FailedInput {
            key: k.clone(),
            id: e.get("id").and_then(Value::as_str).map(str::to_string),
            error: e.get("error").and_then(Value::as_str).map(str::to_string),
        })
        .collect();
    let inputs: Vec<Value> = keys.iter().filter_map(|k| by_key.get(k).cloned()).collect();
    let failed = failed_inputs.len();
    let complete = count > 0 && missing_shards.is_empty() && missing_inputs.is_empty();
    let merged = MergedReport {
        format: "cosam-merged-report/1",
        cosam_version: env!("CARGO_PKG_VERSION"),
        complete,
        shards: count,
        missing_shards: missing_shards.clone(),
        keys_sha256,
        inputs_total: keys.len(),
        ok: inputs.len() - failed,
        failed,
        missing: missing_inputs.len(),
        missing_inputs,
        failed_inputs,
        shard_runs: found
            .iter()
            .map(|(&index, (file, r))| ShardSummary {
                index,
                file: file.clone(),
                source: r.shard.source.clone(),
                engine_job_id: r.shard.engine_job_id.clone(),
                host: r.shard.host.clone(),
                started_unix_s: r.started_unix_s,
                seconds: r.seconds,
                assigned: r.shard.assigned,
                ok: r.ok,
                failed: r.failed,
                resumed: r.shard.resumed,
            })
            .collect(),
        inputs,
    };
    let path = dir.join("report.json");
    let json = serde_json::to_vec_pretty(&merged).context("cannot encode report.json")?;
    io::write_bytes(&path, &json)?;
    for m in &merged.missing_shards {
        eprintln!("cosam: shard {m}/{count} has not reported");
    }
    for k in &merged.missing_inputs {
        eprintln!("cosam: missing input: {k}");
    }
    for f in &merged.failed_inputs {
        eprintln!(
            "cosam: failed input: {}: {}",
            f.key,
            f.error.as_deref().unwrap_or("failed")
        );
    }
    eprintln!(
        "cosam: merged {} of {} shards: {} ok, {} failed, {} missing of {} inputs; report: {}",
        count - merged.missing_shards.len(),
        count,
        merged.ok,
        merged.failed,
        merged.missing,
        merged.inputs_total,
        path.display()
    );
    Ok(if !complete {
        EXIT_INCOMPLETE
    } else if failed > 0 {
        super::EXIT_SOME_FAILED
    } else {
        0
    })
}

/// `shard-K-of-N.json` -> (K, N).
fn parse_name(path: &Path) -> Option<(usize, usize)> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("shard-")?.strip_suffix(".json")?;
    let (k, n) = rest.split_once("-of-")?;
    let (k, n) = (k.parse().ok()?, n.parse().ok()?);
    (k < n).then_some((k, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::shard_report_path;

    #[test]
    fn shard_report_names_round_trip() {
        let p = shard_report_path(Path::new("out"), 2, 5);
        assert_eq!(parse_name(&p), Some((2, 5)));
        assert_eq!(parse_name(Path::new("shard-5-of-5.json")), None);
        assert_eq!(parse_name(Path::new("shard-a-of-5.json")), None);
        assert_eq!(parse_name(Path::new(".partial-x-shard-1-of-5.json")), None);
    }
}
