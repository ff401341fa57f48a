//! `cosam eval`: methods x cases of a multi-domain dataset, with reports.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use cosam::correct::CorrectOptions;
use cosam::eval::{
    aggregate, evaluate_case, plan_folds, write_reports, Dataset, EvalError, EvalOptions,
    FoldRequest, Method,
};
use cosam::io::Limits;
use cosam::metrics::MetricsOptions;
use cosam::model::{HeadsSource, TaskHeads};
use cosam::pipeline::EmbeddingCache;
use cosam::Segmenter;
use indicatif::{ProgressBar, ProgressStyle};

use super::args::EvalArgs;
use super::open_cache;

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
    let request = FoldRequest::default()
        .with_leave_one_domain_out(args.leave_one_domain_out)
        .with_test_domains(args.test_domains.clone())
        .with_train_domains(args.train_domains.clone());
    // the domains asked for are checked before the model loads
    plan_folds(&domains, &request, &[])
        .map_err(|e| anyhow::anyhow!("{e} (task '{}')", args.task))?;
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
    let folds = plan_folds(&domains, &request, &head_sets).map_err(|e| {
        let hint = match e {
            EvalError::NoHeadsForDomain { .. } => format!(
                " under {}; train them with models/train/train_all (leave-one-domain-out \
                 heads go to models/lodo/{})",
                args.heads
                    .as_deref()
                    .unwrap_or(Path::new("models"))
                    .display(),
                args.task
            ),
            _ => format!(" (task '{}')", args.task),
        };
        anyhow::anyhow!("{e}{hint}")
    })?;
    let metrics = MetricsOptions::default()
        .with_hd95_convention(args.hd95.convention())
        .with_nsd_tolerance_mm(args.nsd_tolerance_mm);
    let options = EvalOptions::default()
        .with_methods(methods.clone())
        .with_metrics(metrics)
        .with_limits(Limits::default().with_max_voxels(args.max_voxels))
        // the error threshold is each head set's unless --error-threshold names one
        .with_loop(
            args.loop_flags
                .correct_options(CorrectOptions::default().error_threshold),
            args.loop_flags.error_threshold,
        )
        .with_cleanup(args.cleanup);

    let started = Instant::now();
    let total: usize = folds
        .iter()
        .map(|f| dataset.select(&args.task, Some(&f.test)).len())
        .sum();
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    for fold in &folds {
        for case in dataset.select(&args.task, Some(&fold.test)) {
            bar.set_message(case.id.clone());
            let case_rows = evaluate_case(
                &segmenter,
                case,
                &options,
                cache.as_ref().map(|c| c as &dyn EmbeddingCache),
                fold.heads.and_then(|i| head_sets.get(i)),
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
        folds
            .iter()
            .map(|f| {
                let heads = f
                    .heads
                    .and_then(|i| head_sets.get(i))
                    .map_or(String::new(), |h| format!(" heads {}", h.dir().display()));
                format!(
                    "test [{}] train [{}]{heads}",
                    f.test.join(", "),
                    f.train.join(", ")
                )
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
