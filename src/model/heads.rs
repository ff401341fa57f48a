//! CoSAM heads of one task (`models/heads/TASK/`, written by `models/train/train.py`): a
//! task decoder (prompt-free and promptable, one learned prompt per structure) and an error
//! decoder that predicts where a mask is wrong.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, Array4, ArrayView2, Ix2};
use ort::value::TensorRef;

use super::engine::{Backend, Engine, Wait};
use super::image_encoder::ImageEmbedding;
use super::manifest::{check_regular_file, verify_file};
use super::mask_decoder::MaskDecoder;
use super::runtime::Runtime;
use super::ModelError;
use crate::preprocess::MODEL_SIZE;

/// The `format` of `heads.json` this version reads.
pub const HEADS_FORMAT: &str = "cosam-heads/1";

/// `heads.json`: what a head set segments and what it was trained on.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct HeadsInfo {
    /// Must be [`HEADS_FORMAT`].
    pub format: String,
    /// Task name (`brain`, `abdomen`).
    pub task: String,
    /// Structures, in the order of the decoders' `structure` input.
    pub structures: Vec<String>,
    /// Domains the heads were trained on.
    pub train_domains: Vec<String>,
    /// Domains left out of training (leave-one-domain-out heads).
    #[serde(default)]
    pub held_out_domains: Vec<String>,
    /// Error probability above which a pixel counts as wrong, chosen on the training
    /// domains (CoSAM's 0.5 when the file does not say).
    #[serde(default = "default_error_threshold")]
    pub error_threshold: f32,
    /// How the loop labels its point prompts, as the heads were trained: a point is the
    /// opposite of the current mask where its error probability passes this value (the
    /// paper's 0.5). Absent in the first heads, which were trained with points labelled
    /// by the corrected mask, and are run that way.
    #[serde(default)]
    pub point_label_threshold: Option<f32>,
    /// The model frame the training slices were in ([`crate::io::FRAME_VERSION`]); 0,
    /// the default, is each file's storage order, as before the frame existed.
    #[serde(default)]
    pub model_frame: u32,
    files: Vec<HeadFile>,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct HeadFile {
    name: String,
    file: String,
    sha256: String,
}

fn default_error_threshold() -> f32 {
    0.5
}

/// The error decoder session: image embedding + binary mask to error logits.
#[derive(Debug)]
pub struct ErrorDecoder {
    engine: Engine,
}

impl ErrorDecoder {
    /// Error logits over the 256x256 model frame for `mask` (0/1) on `embedding`: > 0
    /// where the mask is predicted wrong.
    ///
    /// # Errors
    /// [`ModelError::Inference`] for a wrong mask shape or a failed run.
    pub fn predict(
        &self,
        embedding: &ImageEmbedding,
        mask: ArrayView2<f32>,
        structure: usize,
    ) -> Result<Array2<f32>, ModelError> {
        if mask.dim() != (MODEL_SIZE, MODEL_SIZE) {
            return Err(self.engine.error(format!(
                "mask is {:?}, expected {MODEL_SIZE}x{MODEL_SIZE}",
                mask.dim()
            )));
        }
        let mut input = Array4::<f32>::zeros((1, 1, MODEL_SIZE, MODEL_SIZE));
        input.slice_mut(ndarray::s![0, 0, .., ..]).assign(&mask);
        let structure = Array1::from_elem(1, structure as i64);
        let err = |e: ort::Error| self.engine.error(e.to_string());
        let emb = embedding.0.as_standard_layout();
        let inputs = ort::inputs![
            "image_embeddings" => TensorRef::from_array_view(emb.view()).map_err(err)?,
            "mask" => TensorRef::from_array_view(input.view()).map_err(err)?,
            "structure" => TensorRef::from_array_view(structure.view()).map_err(err)?,
        ];
        self.engine.run(inputs, |out| {
            let logits = out["error_logits"]
                .try_extract_array::<f32>()
                .map_err(|e| e.to_string())?;
            if logits.shape() != [1, 1, MODEL_SIZE, MODEL_SIZE] {
                return Err(format!("error_logits has shape {:?}", logits.shape()));
            }
            logits
                .to_owned()
                .into_shape_with_order((MODEL_SIZE, MODEL_SIZE))
                .map_err(|e| e.to_string())?
                .into_dimensionality::<Ix2>()
                .map_err(|e| e.to_string())
        })
    }
}

/// A task's trained heads, loaded and checked.
#[derive(Debug)]
pub struct TaskHeads {
    /// What the heads are.
    pub info: HeadsInfo,
    /// The task decoder: prompt-free coarse masks and promptable refinement.
    pub decoder: MaskDecoder,
    /// The error decoder.
    pub error: ErrorDecoder,
    dir: PathBuf,
}

impl TaskHeads {
    /// Loads `dir/heads.json`, checks every file's sha256 and opens both sessions.
    ///
    /// # Errors
    /// [`ModelError::Manifest`] for a missing or malformed `heads.json`,
    /// [`ModelError::Checksum`] when a file does not match it, session or signature errors.
    pub fn load(runtime: &Runtime, dir: &Path, threads: usize) -> Result<TaskHeads, ModelError> {
        let path = dir.join("heads.json");
        let manifest_error = |reason: String| ModelError::Manifest {
            path: path.clone(),
            reason,
        };
        check_regular_file(&path, MAX_HEADS_JSON_BYTES)?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| manifest_error(format!("cannot read the heads manifest: {e}")))?;
        let info: HeadsInfo = serde_json::from_str(&text)
            .map_err(|e| manifest_error(format!("malformed heads manifest: {e}")))?;
        if info.format != HEADS_FORMAT {
            return Err(manifest_error(format!(
                "format '{}' is not {HEADS_FORMAT}",
                info.format
            )));
        }
        if info.structures.is_empty() {
            return Err(manifest_error("no structures".into()));
        }
        check_values(&info).map_err(manifest_error)?;
        if info.model_frame != crate::io::FRAME_VERSION {
            return Err(ModelError::FrameMismatch {
                path,
                expected: crate::io::FRAME_VERSION,
                found: info.model_frame,
            });
        }
        let verified = |name: &str| -> Result<PathBuf, ModelError> {
            let entry = info
                .files
                .iter()
                .find(|f| f.name == name)
                .ok_or_else(|| manifest_error(format!("no file named '{name}'")))?;
            let file = confined(dir, &entry.file).map_err(&manifest_error)?;
            verify_file(&file, &entry.sha256)?;
            Ok(file)
        };
        let decoder = MaskDecoder::load_task(runtime, &verified("decoder")?, threads)?;
        let error = ErrorDecoder {
            engine: Engine::load(
                runtime,
                "error decoder",
                &verified("error")?,
                threads,
                Backend::Cpu,
                Wait::Spin,
                &["image_embeddings", "mask", "structure"],
                &["error_logits"],
            )?,
        };
        Ok(TaskHeads {
            info,
            decoder,
            error,
            dir: dir.to_path_buf(),
        })
    }

    /// The folder the heads were loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The index of structure `name`.
    pub fn structure_index(&self, name: &str) -> Option<usize> {
        self.info.structures.iter().position(|s| s == name)
    }

    /// The index of structure `name`, or an error that lists the task's structures.
    ///
    /// # Errors
    /// [`ModelError::UnknownStructure`].
    pub fn structure_named(&self, name: &str) -> Result<usize, ModelError> {
        self.structure_index(name)
            .ok_or_else(|| ModelError::UnknownStructure {
                task: self.info.task.clone(),
                structure: name.to_string(),
                available: self.info.structures.clone(),
            })
    }
}

/// Largest `heads.json` read, bytes.
const MAX_HEADS_JSON_BYTES: u64 = 1 << 20;

/// Range checks of `heads.json`'s values: thresholds are probabilities, structure names
/// are plain, distinct names (they name output files).
fn check_values(info: &HeadsInfo) -> Result<(), String> {
    let probability = |what: &str, v: f32| {
        if v.is_finite() && (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(format!("{what} {v} is not a probability between 0 and 1"))
        }
    };
    probability("error_threshold", info.error_threshold)?;
    if let Some(t) = info.point_label_threshold {
        probability("point_label_threshold", t)?;
    }
    for (i, name) in info.structures.iter().enumerate() {
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && !name
                .chars()
                .any(|c| c == '/' || c == '\\' || c.is_control());
        if !plain {
            return Err(format!(
                "structure name '{name}' is not a plain name (it names output files)"
            ));
        }
        if info.structures[..i].contains(name) {
            return Err(format!("structure '{name}' is listed twice"));
        }
    }
    Ok(())
}

/// `file` from `heads.json` as a path inside `dir`: relative, without `..`, and (links
/// resolved) still inside `dir`.
fn confined(dir: &Path, file: &str) -> Result<PathBuf, String> {
    use std::path::Component;
    let rel = Path::new(file);
    if file.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!(
            "file '{file}' is not a relative path inside the heads folder"
        ));
    }
    let path = dir.join(rel);
    let (Ok(root), Ok(real)) = (dir.canonicalize(), path.canonicalize()) else {
        return Err(format!("file '{file}' does not exist in the heads folder"));
    };
    if !real.starts_with(&root) {
        return Err(format!(
            "file '{file}' leads outside the heads folder (to {})",
            real.display()
        ));
    }
    Ok(path)
}
