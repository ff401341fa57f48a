//! `cosam segment --resume`: which inputs are already done.
//!
//! After an input's outputs are written, a sidecar `reports/done/ID.json` is written last
//! and atomically. It names the input's key, the digests of the models and of the options
//! that made the outputs, and each output file's size and sha256. `--resume` skips an
//! input only when its sidecar parses, every digest matches this run, and every output
//! file still has the recorded size and sha256; anything else is recomputed. A process
//! killed mid-input therefore leaves either no sidecar or one whose outputs no longer
//! match, and outputs themselves are only ever renamed into place whole.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cosam::io;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use cosam::model::HeadsSource;
use cosam::Segmenter;

use super::{hex, path_key, Job};
use crate::cli::args::SegmentArgs;

const SIDECAR_FORMAT: &str = "cosam-done/1";

/// What must match for a finished input to be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fingerprint {
    /// sha256 over the model files' digests, the encoder and the heads.
    pub models_sha256: String,
    /// sha256 over the options that change an input's outputs (prompts, slices, axis,
    /// formats, intensity, task settings).
    pub options_sha256: String,
}

#[derive(Serialize, Deserialize)]
struct Sidecar {
    format: String,
    key: String,
    id: String,
    cosam_version: String,
    models_sha256: String,
    options_sha256: String,
    outputs: Vec<OutputFile>,
    /// The input's report.json entry.
    case: Value,
}

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
struct OutputFile {
    /// Relative to the output folder, `/` separated.
    path: String,
    bytes: u64,
    sha256: String,
}

/// sha256 of text, lowercase hex.
pub(super) fn sha256_text(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// The models' fingerprint: every model file's sha256 from the manifest, the encoder that
/// runs (and its provider when OpenVINO), and with `--task`/`--heads` the digest of the heads' `heads.json` (which holds
/// the heads' own digests).
///
/// # Errors
/// When `--heads DIR/heads.json` cannot be read.
pub(super) fn models_sha256(segmenter: &Segmenter, args: &SegmentArgs) -> anyhow::Result<String> {
    let model = segmenter.model();
    let manifest = model.manifest();
    let mut text = format!(
        "model {}\nencoder {}\n",
        manifest.model,
        model.encoder_precision()
    );
    // OpenVINO's embeddings differ from the CPU provider's in the 6th digit; CPU-provider
    // fingerprints stay those written before the provider existed
    if model.provider() == cosam::model::Provider::OpenVino {
        text.push_str("provider openvino\n");
    }
    let mut entries: Vec<String> = manifest
        .models
        .iter()
        .map(|m| format!("file {} {} {}\n", m.name, m.file, m.sha256))
        .collect();
    entries.sort();
    text.extend(entries);
    match args.heads_source() {
        Some(HeadsSource::Task(name)) => {
            let entry = manifest.tasks.iter().find(|t| t.name == name);
            text.push_str(&format!(
                "heads task {name} {}\n",
                entry.map_or("", |t| t.heads_sha256.as_str())
            ));
        }
        Some(HeadsSource::Dir(dir)) => {
            let path = dir.join("heads.json");
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            text.push_str(&format!("heads dir {}\n", hex(&Sha256::digest(&bytes))));
        }
        None => {}
    }
    Ok(sha256_text(&text))
}

/// The options' fingerprint for one input: everything that changes what is written for
/// it (not threads, device or paths).
pub(super) fn options_sha256(args: &SegmentArgs, job: &Job) -> String {
    let mut text = format!(
        "prompts {:?}\nslices {:?}\nlabel {:?}\naxis {:?}\nformat {:?}\nwindow {:?}\n\
         modality {:?}\ntask {:?}\nheads {:?}\nstructures {:?}\nrounds {}\ntop_k {}\n\
         error_threshold {:?}\nrefine {:?}\nmin_coarse_px {}\nabsent_logit {:?}\nconverged_fraction {}\nstop_early {}\ntrace {}\n\
         review_threshold {}\n",
        job.prompts,
        job.slices,
        job.label,
        args.axis,
        args.format,
        args.window,
        args.modality,
        args.task,
        args.heads,
        args.structures,
        args.rounds,
        args.loop_flags.top_k,
        args.loop_flags.error_threshold,
        args.loop_flags.refine,
        args.loop_flags.min_coarse_px,
        args.loop_flags.absent_logit,
        args.loop_flags.converged_fraction,
        !args.fixed_rounds,
        args.trace,
        args.review_threshold,
    );
    // only when given, so that the sidecars of runs without it stay valid
    if !args.cleanup.is_none() {
        text.push_str(&format!("cleanup {:?}\n", args.cleanup));
    }
    sha256_text(&text)
}

fn sidecar_path(out: &Path, id: &str) -> PathBuf {
    out.join("reports").join("done").join(format!("{id}.json"))
}

/// The report entry of a finished input when everything about it still matches.
pub(super) fn load_done(out: &Path, key: &str, id: &str, fp: &Fingerprint) -> Option<Value> {
    let text = std::fs::read(sidecar_path(out, id)).ok()?;
    let sidecar: Sidecar = serde_json::from_slice(&text).ok()?;
    let same = sidecar.format == SIDECAR_FORMAT
        && sidecar.key == key
        && sidecar.id == id
        && sidecar.cosam_version == env!("CARGO_PKG_VERSION")
        && sidecar.models_sha256 == fp.models_sha256
        && sidecar.options_sha256 == fp.options_sha256
        && !sidecar.outputs.is_empty();
    if !same {
        return None;
    }
    for recorded in &sidecar.outputs {
        let found = hash_file(out, &recorded.path).ok()?;
        if &found != recorded {
            return None;
        }
    }
    Some(sidecar.case)
}

/// Removes the sidecar of an input about to be recomputed, so that a run killed while
/// writing its outputs never leaves a sidecar beside half-replaced outputs.
pub(super) fn forget(out: &Path, id: &str) {
    let _ = std::fs::remove_file(sidecar_path(out, id));
}

/// Records a finished input: hashes every output named in `case` and writes the sidecar
/// atomically.
pub(super) fn write_done(
    out: &Path,
    key: &str,
    id: &str,
    fp: &Fingerprint,
    case: &Value,
) -> anyhow::Result<()> {
    let mut files = Vec::new();
    collect_outputs(case, &mut files);
    let mut outputs = Vec::new();
    for file in files {
        let rel = file.strip_prefix(out).unwrap_or(&file);
        for path in files_below(out, rel)? {
            outputs.push(hash_file(out, &path)?);
        }
    }
    outputs.sort_by(|a, b| a.path.cmp(&b.path));
    outputs.dedup();
    let sidecar = Sidecar {
        format: SIDECAR_FORMAT.into(),
        key: key.into(),
        id: id.into(),
        cosam_version: env!("CARGO_PKG_VERSION").into(),
        models_sha256: fp.models_sha256.clone(),
        options_sha256: fp.options_sha256.clone(),
        outputs,
        case: case.clone(),
    };
    let path = sidecar_path(out, id);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let json = serde_json::to_vec_pretty(&sidecar).context("cannot encode a sidecar")?;
    io::write_bytes(&path, &json)?;
    Ok(())
}

/// Every string in an `outputs` array anywhere in `value`.
fn collect_outputs(value: &Value, out: &mut Vec<PathBuf>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("outputs", Value::Array(items)) => {
                        out.extend(items.iter().filter_map(Value::as_str).map(PathBuf::from))
                    }
                    _ => collect_outputs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_outputs(v, out)),
        _ => {}
    }
}

/// `rel` itself, or the files below it when it is a folder (per-slice PNGs), as
/// `/`-separated paths relative to `out`.
fn files_below(out: &Path, rel: &Path) -> anyhow::Result<Vec<String>> {
    let full = out.join(rel);
    let key = path_key(rel);
    if !full.is_dir() {
        return Ok(vec![key]);
    }
    let mut names: Vec<String> = std::fs::read_dir(&full)
        .with_context(|| format!("cannot list {}", full.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut files = Vec::new();
    for n in names {
        files.extend(files_below(out, &rel.join(n))?);
    }
    Ok(files)
}

fn hash_file(out: &Path, rel: &str) -> anyhow::Result<OutputFile> {
    let path = out.join(rel);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(OutputFile {
        path: rel.to_string(),
        bytes: bytes.len() as u64,
        sha256: hex(&Sha256::digest(&bytes)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(options: &str) -> Fingerprint {
        Fingerprint {
            models_sha256: "m".into(),
            options_sha256: options.into(),
        }
    }

    #[test]
    fn a_finished_input_is_reused_only_while_everything_matches() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path();
        std::fs::write(out.join("a_mask.png"), b"mask").unwrap();
        std::fs::create_dir(out.join("a_mask_png")).unwrap();
        std::fs::write(out.join("a_mask_png/slice_0000.png"), b"s0").unwrap();
        let case = serde_json::json!({
            "id": "a",
            "outputs": [out.join("a_mask.png"), out.join("a_mask_png")],
            "structures": [{"outputs": ["a_mask.png"]}],
        });
        assert!(load_done(out, "a.png", "a", &fp("o")).is_none());
        write_done(out, "a.png", "a", &fp("o"), &case).unwrap();
        assert_eq!(load_done(out, "a.png", "a", &fp("o")), Some(case.clone()));
        // other options, another key: recompute
        assert!(load_done(out, "a.png", "a", &fp("other")).is_none());
        assert!(load_done(out, "b.png", "a", &fp("o")).is_none());
        // an output changed (same size) or lost: recompute
        std::fs::write(out.join("a_mask_png/slice_0000.png"), b"s1").unwrap();
        assert!(load_done(out, "a.png", "a", &fp("o")).is_none());
        std::fs::write(out.join("a_mask_png/slice_0000.png"), b"s0").unwrap();
        assert!(load_done(out, "a.png", "a", &fp("o")).is_some());
        std::fs::remove_file(out.join("a_mask.png")).unwrap();
        assert!(load_done(out, "a.png", "a", &fp("o")).is_none());
        // a truncated sidecar is not trusted
        std::fs::write(out.join("a_mask.png"), b"mask").unwrap();
        let side = sidecar_path(out, "a");
        let text = std::fs::read(&side).unwrap();
        std::fs::write(&side, &text[..text.len() / 2]).unwrap();
        assert!(load_done(out, "a.png", "a", &fp("o")).is_none());
        forget(out, "a");
        assert!(!side.exists());
    }
}
