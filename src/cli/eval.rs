//! `cosam eval`: methods x cases of a multi-domain dataset, with reports.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use cosam::eval::{
    aggregate, evaluate_case, write_reports, Dataset, DiskCache, EvalOptions, Method,
};
use cosam::io::Limits;
use cosam::metrics::MetricsOptions;
use cosam::model::{HeadsSource, TaskHeads};
use cosam::pipeline::EmbeddingCache;
use cosam::Segmenter;
use indicatif::{ProgressBar, ProgressStyle};

use super::args::EvalArgs;

/// The embedding cache in `dir` (default: the user's cache folder), unless disabled.
pub(super) fn open_cache(
    dir: Option<&Path>,
    disabled: bool,
    max_bytes: u64,
) -> anyhow::Result<Option<DiskCache>> {
    if disabled {
        return Ok(None);
    }
    let dir = dir.map_or_else(default_cache_dir, Path::to_path_buf);
    Ok(Some(DiskCache::new(&dir, max_bytes).with_context(
        || format!("cannot create cache folder {}", dir.display()),
    )?))
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("cosam").join("embeddings")
}

pub fn run(args: &EvalArgs) -> anyhow::Result<bool> {
    let dataset = Dataset::load(&args.dataset)?;
    let tasks = dataset.tasks();
    if !tasks.contains(&args.task) {
        bail!(
            "task '{}' is not in {}; available tasks: {}",
            args.task,
            args.dataset.display(),
            tasks.join(", ")
        );
    }
    let methods: Vec<Method> = args
        .methods
        .iter()
        .map(|m| m.parse::<Method>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let domains = dataset.domains(&args.task);
    for d in args.test_domains.iter().chain(&args.train_domains) {
        if !domains.contains(d) {
            bail!(
                "domain '{d}' is not in task '{}'; its domains: {}",
                args.task,
                domains.join(", ")
            );
        }
    }
    // (held-out domains, training domains) per round
    let rounds: Vec<(Vec<String>, Vec<String>)> = if args.leave_one_domain_out {
        domains
            .iter()
            .map(|d| {
                (
                    vec![d.clone()],
                    domains.iter().filter(|x| *x != d).cloned().collect(),
                )
            })
            .collect()
    } else {
        let test = if args.test_domains.is_empty() {
            domains.clone()
        } else {
            args.test_domains.clone()
        };
        vec![(test, args.train_domains.clone())]
    };
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create output folder {}", args.output.display()))?;
    let segmenter =
        Segmenter::new(args.model.segmenter_options()).context("cannot load the model")?;
    let bytes = (args.cache_max_gb.max(0.0) * 1024.0 * 1024.0 * 1024.0) as u64;
    let cache = open_cache(args.cache.as_deref(), args.no_cache, bytes)?;
    let head_sets = if methods.iter().any(Method::is_prompt_free) {
        load_head_sets(&segmenter, args)?
    } else {
        Vec::new()
    };
    // With leave-one-domain-out heads (several sets, or --leave-one-domain-out), each test
    // domain is evaluated on its own with the set that never saw it, and that set's
    // training domains are what the report records. One set (shipped heads) serves all.
    let rounds: Vec<(Vec<String>, Vec<String>, Option<usize>)> = if head_sets.is_empty() {
        rounds.into_iter().map(|(t, tr)| (t, tr, None)).collect()
    } else {
        let per_domain = args.leave_one_domain_out || head_sets.len() > 1;
        let mut out = Vec::new();
        for (test, _) in rounds {
            if !per_domain {
                out.push((test, head_sets[0].info.train_domains.clone(), Some(0)));
                continue;
            }
            for d in test {
                let Some(i) = head_sets
                    .iter()
                    .position(|h| h.info.held_out_domains.contains(&d))
                else {
                    bail!(
                        "no heads under {} hold out domain '{d}'; train them with \
                         models/train/train_all (leave-one-domain-out heads go to models/lodo/{})",
                        args.heads
                            .as_deref()
                            .unwrap_or(Path::new("models"))
                            .display(),
                        args.task
                    );
                };
                out.push((vec![d], head_sets[i].info.train_domains.clone(), Some(i)));
            }
        }
        out
    };
    let metrics = MetricsOptions::default()
        .with_hd95_convention(args.hd95.convention())
        .with_nsd_tolerance_mm(args.nsd_tolerance_mm);
    let options = EvalOptions::default()
        .with_methods(methods.clone())
        .with_metrics(metrics)
        .with_limits(Limits::default().with_max_voxels(args.max_voxels))
        .with_loop(args.correct_options(), args.error_threshold);

    let started = Instant::now();
    let total: usize = rounds
        .iter()
        .map(|(test, _, _)| dataset.select(&args.task, Some(test)).len())
        .sum();
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    for (test, _train, heads) in &rounds {
        for case in dataset.select(&args.task, Some(test)) {
            bar.set_message(case.id.clone());
            let case_rows = evaluate_case(
                &segmenter,
                case,
                &options,
                cache.as_ref().map(|c| c as &dyn EmbeddingCache),
                heads.map(|i| &head_sets[i]),
            );
            for r in case_rows.iter().filter(|r| r.status != "ok") {
                bar.suspend(|| {
                    eprintln!(
                        "cosam: {} {} {}: {}",
                        r.case,
                        r.structure,
                        r.method,
                        r.error.as_deref().unwrap_or("")
                    )
                });
            }
            rows.extend(case_rows);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let summaries = aggregate(&rows);
    let label_kinds: Vec<String> = {
        let mut k: Vec<String> = dataset
            .select(&args.task, None)
            .iter()
            .map(|c| c.label_kind.clone())
            .collect();
        k.sort();
        k.dedup();
        k
    };
    let command: Vec<String> = std::env::args().collect();
    let header = format!(
        "# cosam eval: task {}\n\n- command: `{}`\n- dataset: {}\n- methods: {}\n- image encoder: {} on the {} provider\n- rounds: {}\n- metrics per case \
         and structure (per volume, never pooled over slices), in mm from the image spacing; HD95 convention: {:?}; \
         NSD at {} mm (DeepMind, surfel-weighted); an empty prediction against a non-empty reference scores Dice 0, \
         NSD 0, HD95 +inf (counted in 'empty pred', ranked above every finite value in the median)\n\
         - references: {}\n- time: {:.0} s, cosam {}",
        args.task,
        command.join(" "),
        args.dataset.display(),
        methods.iter().map(Method::name).collect::<Vec<_>>().join(", "),
        segmenter.model().encoder_precision(),
        segmenter.model().provider(),
        rounds
            .iter()
            .map(|(t, tr, h)| {
                let heads = h.map_or(String::new(), |i| {
                    format!(" heads {}", head_sets[i].dir().display())
                });
                format!("test [{}] train [{}]{heads}", t.join(", "), tr.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; "),
        args.hd95.convention(),
        args.nsd_tolerance_mm,
        label_kinds.join("; "),
        seconds,
        env!("CARGO_PKG_VERSION"),
    );
    let files = write_reports(&args.output, &header, &rows, &summaries)?;
    print!("{}", cosam::eval::markdown_table(&summaries));
    let failed = rows.iter().filter(|r| r.status != "ok").count();
    eprintln!(
        "cosam: {} rows ({} failed) in {seconds:.0} s; reports: {}",
        rows.len(),
        failed,
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(failed == 0)
}

/// The CoSAM head sets to evaluate with: `--heads DIR` (one `heads.json` there, or one
/// per subfolder, e.g. models/lodo/TASK), else the task's shipped heads.
fn load_head_sets(segmenter: &Segmenter, args: &EvalArgs) -> anyhow::Result<Vec<TaskHeads>> {
    let sources: Vec<HeadsSource> = match &args.heads {
        None => vec![HeadsSource::Task(args.task.clone())],
        Some(dir) if dir.join("heads.json").is_file() => vec![HeadsSource::Dir(dir.clone())],
        Some(dir) => {
            let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("cannot read heads folder {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("heads.json").is_file())
                .collect();
            subdirs.sort();
            if subdirs.is_empty() {
                bail!(
                    "{}: no heads.json there or in its subfolders",
                    dir.display()
                );
            }
            subdirs.into_iter().map(HeadsSource::Dir).collect()
        }
    };
    let mut sets = Vec::new();
    for source in &sources {
        let heads = segmenter
            .load_heads(source)
            .context("cannot load the CoSAM heads")?;
        if heads.info.task != args.task {
            bail!(
                "{}: heads for task '{}', not '{}'",
                heads.dir().display(),
                heads.info.task,
                args.task
            );
        }
        sets.push(heads);
    }
    Ok(sets)
}
