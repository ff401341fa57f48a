//! `cosam segment --shard K/N`: which inputs this process segments when a batch is split
//! over the tasks of a Slurm job array or a Kubernetes Indexed Job.
//!
//! Every input gets a stable key: its path relative to the root given on the command line
//! (or to the cases file's folder), with `/` separators; each series found in a DICOM
//! folder is keyed by its SeriesInstanceUID. The keys are sorted and key `i` goes to
//! shard `i mod N`, so every shard computes the same list without talking to the others.
//! Output names (ids) are assigned over the whole batch before the split, so a shard
//! writes exactly the files one process would.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Context};
use cosam::io::{self, dicom, Limits, ReadError, Volume};
use sha2::{Digest, Sha256};

use super::{unique_id, Job};
use crate::cli::args::ShardArg;

/// This process's shard and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
    /// E.g. `--shard 1/3` or `Slurm: SLURM_ARRAY_TASK_ID=5 ...`.
    pub source: String,
    /// The engine's id for this task: `ARRAYJOB_TASK` on Slurm, the pod name on
    /// Kubernetes.
    pub engine_job_id: Option<String>,
}

impl ShardArg {
    /// The shard, reading the engine's variables through `env` for `auto`.
    ///
    /// # Errors
    /// When `auto` finds neither engine, or the variables are missing, malformed or
    /// describe an array with gaps.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Shard> {
        match *self {
            ShardArg::Fixed { index, count } => Ok(Shard {
                index,
                count,
                source: format!("--shard {index}/{count}"),
                engine_job_id: slurm_job_id(env),
            }),
            ShardArg::Auto if env("SLURM_ARRAY_TASK_ID").is_some() => from_slurm(env),
            ShardArg::Auto if env("JOB_COMPLETION_INDEX").is_some() => from_kubernetes(env),
            ShardArg::Auto => bail!(
                "--shard auto found neither a Slurm job array (SLURM_ARRAY_TASK_ID) nor a \
                 Kubernetes Indexed Job (JOB_COMPLETION_INDEX); give --shard K/N"
            ),
        }
    }
}

fn number(env: &dyn Fn(&str) -> Option<String>, name: &str) -> anyhow::Result<u64> {
    let value = env(name).with_context(|| format!("{name} is not set"))?;
    value
        .trim()
        .parse()
        .with_context(|| format!("{name}={value} is not a non-negative integer"))
}

fn slurm_job_id(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    match (env("SLURM_ARRAY_JOB_ID"), env("SLURM_ARRAY_TASK_ID")) {
        (Some(job), Some(task)) => Some(format!("{job}_{task}")),
        _ => env("SLURM_JOB_ID"),
    }
}

/// K = (TASK_ID - TASK_MIN) / TASK_STEP, N = TASK_COUNT; the array must be a range with
/// a constant step (`--array=0-9` or `0-18:2`), so that the indices are 0..N.
fn from_slurm(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Shard> {
    let id = number(env, "SLURM_ARRAY_TASK_ID")?;
    let min = number(env, "SLURM_ARRAY_TASK_MIN")?;
    let max = number(env, "SLURM_ARRAY_TASK_MAX")?;
    let count = number(env, "SLURM_ARRAY_TASK_COUNT")?;
    let step = match env("SLURM_ARRAY_TASK_STEP") {
        Some(_) => number(env, "SLURM_ARRAY_TASK_STEP")?,
        None => 1,
    };
    let regular = step > 0
        && count > 0
        && max >= min
        && (max - min) % step == 0
        && (max - min) / step + 1 == count
        && id >= min
        && id <= max
        && (id - min) % step == 0;
    if !regular {
        bail!(
            "--shard auto: the Slurm array is not a range with a constant step \
             (SLURM_ARRAY_TASK_ID={id} MIN={min} MAX={max} STEP={step} COUNT={count}); a \
             list with gaps cannot be split evenly: submit --array=0-{} or give --shard K/N",
            count.saturating_sub(1)
        );
    }
    let index = usize::try_from((id - min) / step)?;
    let count = usize::try_from(count)?;
    Ok(Shard {
        index,
        count,
        source: format!("Slurm: SLURM_ARRAY_TASK_ID={id} MIN={min} STEP={step} COUNT={count}"),
        engine_job_id: slurm_job_id(env),
    })
}

/// K = JOB_COMPLETION_INDEX, N = COSAM_SHARD_COUNT (Kubernetes does not export the
/// completion count, so the Job sets it to `spec.completions`).
fn from_kubernetes(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Shard> {
    let index = number(env, "JOB_COMPLETION_INDEX")?;
    if env("COSAM_SHARD_COUNT").is_none() {
        bail!(
            "--shard auto on Kubernetes needs COSAM_SHARD_COUNT (set it to the Job's \
             completions) beside JOB_COMPLETION_INDEX={index}"
        );
    }
    let count = number(env, "COSAM_SHARD_COUNT")?;
    if count == 0 || index >= count {
        bail!("JOB_COMPLETION_INDEX={index} is not below COSAM_SHARD_COUNT={count}");
    }
    Ok(Shard {
        index: usize::try_from(index)?,
        count: usize::try_from(count)?,
        source: format!("Kubernetes: JOB_COMPLETION_INDEX={index} COSAM_SHARD_COUNT={count}"),
        engine_job_id: env("HOSTNAME"),
    })
}

/// Where a unit's volume comes from.
pub(super) enum Source {
    /// Read the job's input (a file, or a folder that turns out to hold no series).
    Input,
    /// One series of a scanned DICOM folder.
    Series(dicom::FolderEntry),
    /// The folder could not be scanned.
    Failed(ReadError),
}

/// One input of the batch: a file, or one series of a DICOM folder.
pub(super) struct Unit<'a> {
    pub job: &'a Job,
    pub key: String,
    /// The output name, unique over the whole batch.
    pub id: String,
    pub source: Source,
}

impl Unit<'_> {
    /// Reads the unit's volume.
    pub fn read(self, limits: &Limits) -> Result<Volume, ReadError> {
        match self.source {
            Source::Series(entry) => dicom::read_entry(&self.job.input, entry, limits),
            Source::Failed(e) => Err(e),
            Source::Input => match io::read_inputs(&self.job.input, limits).pop() {
                Some(read) => read,
                None => Err(ReadError::EmptyFolder {
                    path: self.job.input.clone(),
                }),
            },
        }
    }
}

/// The whole batch, in command-line order, with keys and ids.
pub(super) struct Plan<'a> {
    pub units: Vec<Unit<'a>>,
    /// Every key, sorted.
    pub sorted_keys: Vec<String>,
}

impl<'a> Plan<'a> {
    /// Lists the units of `jobs`: DICOM folders are scanned (headers only) so that each
    /// series is its own unit.
    pub fn new(jobs: &'a [Job], limits: &Limits) -> Plan<'a> {
        let mut units = Vec::new();
        let mut used_ids = HashSet::new();
        let mut used_keys = HashSet::new();
        for job in jobs {
            let entries = match (&job.prompts, io::detect_format(&job.input)) {
                (Ok(_), Ok(io::ImageFormat::DicomSeries)) => {
                    match dicom::scan_folder(&job.input, limits) {
                        Ok(entries) => entries
                            .into_iter()
                            .map(|e| {
                                let key = match (e.series_uid(), e.first_file()) {
                                    (Some(uid), _) => uid.to_string(),
                                    (None, Some(file)) => relative_key(&job.key, &job.input, &file),
                                    (None, None) => job.key.clone(),
                                };
                                (key, Source::Series(e))
                            })
                            .collect(),
                        Err(e) => vec![(job.key.clone(), Source::Failed(e))],
                    }
                }
                _ => vec![(job.key.clone(), Source::Input)],
            };
            let several = entries.len() > 1;
            for (k, (key, source)) in entries.into_iter().enumerate() {
                let base = if several {
                    format!("{}-series{}", job.id, k + 1)
                } else {
                    job.id.clone()
                };
                units.push(Unit {
                    job,
                    key: unique_key(&key, &mut used_keys),
                    id: unique_id(&base, &mut used_ids),
                    source,
                });
            }
        }
        let mut sorted_keys: Vec<String> = units.iter().map(|u| u.key.clone()).collect();
        sorted_keys.sort();
        Plan { units, sorted_keys }
    }

    /// The units of `shard` (all of them without one), in command-line order.
    pub fn take(self, shard: Option<&Shard>) -> Vec<Unit<'a>> {
        let Some(shard) = shard else {
            return self.units;
        };
        let mine: HashSet<&str> = self
            .sorted_keys
            .iter()
            .enumerate()
            .filter(|(i, _)| i % shard.count == shard.index)
            .map(|(_, k)| k.as_str())
            .collect();
        let keep: Vec<bool> = self
            .units
            .iter()
            .map(|u| mine.contains(u.key.as_str()))
            .collect();
        self.units
            .into_iter()
            .zip(keep)
            .filter_map(|(u, keep)| keep.then_some(u))
            .collect()
    }
}

/// sha256 of the sorted keys, one per line: equal on every shard of one batch.
pub(super) fn keys_digest(sorted_keys: &[String]) -> String {
    let mut h = Sha256::new();
    for k in sorted_keys {
        h.update(k.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize())
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key as a path with `/` separators.
pub(super) fn path_key(path: &Path) -> String {
    path.components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            std::path::Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The key of `file` below a job's folder: the folder's key, then the file's path in it.
fn relative_key(folder_key: &str, folder: &Path, file: &Path) -> String {
    match file.strip_prefix(folder) {
        Ok(rel) if folder_key.is_empty() => path_key(rel),
        Ok(rel) => format!("{folder_key}/{}", path_key(rel)),
        Err(_) => path_key(file),
    }
}

/// Makes `key` unique (two roots holding the same file name): `key#2`, `key#3`, ...
fn unique_key(key: &str, used: &mut HashSet<String>) -> String {
    let mut candidate = key.to_string();
    let mut n = 2;
    while !used.insert(candidate.clone()) {
        candidate = format!("{key}#{n}");
        n += 1;
    }
    candidate
}

/// The key of `input` found by expanding the command-line root `root`.
pub(super) fn input_key(root: &Path, input: &Path) -> String {
    match input.strip_prefix(root) {
        Ok(rel) if !rel.as_os_str().is_empty() => path_key(rel),
        // the root itself: its own name
        _ => input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path_key(input)),
    }
}

/// The host name, for the shard report.
pub(super) fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Shards a list of keys: which shard each key goes to (for tests and the docs).
#[cfg(test)]
fn owners(keys: &[&str], count: usize) -> Vec<(String, usize)> {
    let mut sorted: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    sorted.sort();
    sorted
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k, i % count))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn slurm_array_with_offset_and_step_gives_0_based_shards() {
        let env = env_of(&[
            ("SLURM_ARRAY_JOB_ID", "77"),
            ("SLURM_ARRAY_TASK_ID", "14"),
            ("SLURM_ARRAY_TASK_MIN", "10"),
            ("SLURM_ARRAY_TASK_MAX", "16"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        let s = ShardArg::Auto.resolve(&env).unwrap();
        assert_eq!((s.index, s.count), (2, 4));
        assert!(s.source.starts_with("Slurm:"), "{}", s.source);
        assert_eq!(s.engine_job_id.as_deref(), Some("77_14"));
    }

    #[test]
    fn slurm_array_given_as_a_list_with_gaps_is_refused() {
        // --array=0,2,5: three tasks between 0 and 5, step 1
        let env = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "5"),
            ("SLURM_ARRAY_TASK_STEP", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        let e = ShardArg::Auto.resolve(&env).unwrap_err().to_string();
        assert!(e.contains("gaps"), "{e}");
    }

    #[test]
    fn kubernetes_needs_the_shard_count() {
        let env = env_of(&[("JOB_COMPLETION_INDEX", "2"), ("HOSTNAME", "seg-2-abcde")]);
        let e = ShardArg::Auto.resolve(&env).unwrap_err().to_string();
        assert!(e.contains("COSAM_SHARD_COUNT"), "{e}");
        let env = env_of(&[
            ("JOB_COMPLETION_INDEX", "2"),
            ("COSAM_SHARD_COUNT", "3"),
            ("HOSTNAME", "seg-2-abcde"),
        ]);
        let s = ShardArg::Auto.resolve(&env).unwrap();
        assert_eq!((s.index, s.count), (2, 3));
        assert!(s.source.starts_with("Kubernetes:"));
        let env = env_of(&[("JOB_COMPLETION_INDEX", "3"), ("COSAM_SHARD_COUNT", "3")]);
        assert!(ShardArg::Auto.resolve(&env).is_err());
    }

    #[test]
    fn auto_without_an_engine_is_an_error() {
        assert!(ShardArg::Auto.resolve(&env_of(&[])).is_err());
    }

    #[test]
    fn sorted_keys_are_dealt_round_robin() {
        let o = owners(&["c.png", "a.png", "b/x.png", "1.2.840.1"], 3);
        assert_eq!(
            o,
            vec![
                ("1.2.840.1".to_string(), 0),
                ("a.png".to_string(), 1),
                ("b/x.png".to_string(), 2),
                ("c.png".to_string(), 0),
            ]
        );
    }

    #[test]
    fn keys_are_relative_paths_with_slashes_and_unique() {
        assert_eq!(
            input_key(Path::new("/data/in"), Path::new("/data/in/a/b.png")),
            "a/b.png"
        );
        assert_eq!(
            input_key(Path::new("/data/x.png"), Path::new("/data/x.png")),
            "x.png"
        );
        let mut used = HashSet::new();
        assert_eq!(unique_key("x.png", &mut used), "x.png");
        assert_eq!(unique_key("x.png", &mut used), "x.png#2");
        assert_eq!(
            keys_digest(&["a".into(), "b".into()]),
            keys_digest(&["a".into(), "b".into()])
        );
        assert_ne!(
            keys_digest(&["a".into(), "b".into()]),
            keys_digest(&["ab".into()])
        );
    }
}
