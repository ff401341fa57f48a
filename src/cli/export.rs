//! `cosam export-training`: a task's training set for models/train.

use anyhow::{bail, Context};
use cosam::eval::{case_dir, export_case, Dataset};
use cosam::io::Limits;
use cosam::model::EncoderPrecision;
use cosam::pipeline::EmbeddingCache;
use cosam::{PreprocessOptions, Segmenter};

use super::args::{EncoderArg, ExportTrainingArgs};
use super::open_cache;

/// Cache cap when exporting: large enough for every benchmark slice.
const CACHE_BYTES: u64 = 8 << 30;

pub fn run(args: &ExportTrainingArgs) -> anyhow::Result<bool> {
    let dataset = Dataset::load(&args.dataset)?;
    let cases = dataset.select(&args.task, None);
    if cases.is_empty() {
        bail!(
            "task '{}' is not in {}; available tasks: {}",
            args.task,
            args.dataset.display(),
            dataset.tasks().join(", ")
        );
    }
    let mut structures: Vec<String> = cases
        .iter()
        .flat_map(|c| c.labels.keys().cloned())
        .collect();
    structures.sort();
    structures.dedup();
    let options = args
        .model
        .segmenter_options_or(EncoderArg::Fixed(EncoderPrecision::Fp32))
        .with_preprocess(PreprocessOptions::default().with_gamma(args.gamma));
    let segmenter = Segmenter::new(options).context("cannot load the model")?;
    let cache = open_cache(args.cache.as_deref(), args.no_cache, CACHE_BYTES)?;
    let mut written = Vec::new();
    let mut all_ok = true;
    for case in cases {
        let dir = case_dir(&args.output, case);
        let mut case = case.clone();
        if !args.absent_labels {
            case.absent_labels.clear();
        }
        match export_case(
            &segmenter,
            &case,
            &structures,
            cache.as_ref().map(|c| c as &dyn EmbeddingCache),
            &Limits::default(),
            &dir,
        ) {
            Ok(meta) => {
                eprintln!(
                    "{}: {} slices -> {}",
                    case.id,
                    meta.slices.len(),
                    dir.display()
                );
                written.push(meta);
            }
            Err(e) => {
                eprintln!("cosam: {}: {e}", case.id);
                all_ok = false;
            }
        }
    }
    let index = serde_json::json!({ "task": args.task, "structures": structures,
        "model_frame": cosam::io::FRAME_VERSION, "gamma": args.gamma, "cases": written });
    cosam::io::write_bytes(
        &args.output.join("index.json"),
        &serde_json::to_vec_pretty(&index)?,
    )?;
    Ok(all_ok)
}
