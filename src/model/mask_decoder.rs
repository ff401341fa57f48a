//! SAM's prompt encoder and mask decoder, one graph: embedding + prompts to logits.

use std::path::Path;

use ndarray::{Array1, Array2, Array3, Array4, ArrayView2, Ix2};
use ort::value::TensorRef;

use super::engine::{Backend, Engine, Wait};
use super::image_encoder::ImageEmbedding;
use super::prompt::ModelPrompts;
use super::runtime::Runtime;
use super::ModelError;
use crate::preprocess::MODEL_SIZE;

/// What the decoder returns for one call.
#[derive(Debug, Clone)]
pub struct DecoderOutput {
    /// Mask logits over the 256x256 model frame (> 0 is foreground).
    pub logits: Array2<f32>,
    /// The IoU head's estimate of the mask's quality, about 0..1.
    pub iou: f32,
}

/// The promptable mask decoder session: LiteMedSAM's own, or a task decoder of the CoSAM
/// heads, which takes one more input, the index of the structure to segment.
#[derive(Debug)]
pub struct MaskDecoder {
    engine: Engine,
    conditioned: bool,
}

const INPUTS: [&str; 5] = [
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
];

impl MaskDecoder {
    /// Loads `decoder.onnx`.
    ///
    /// # Errors
    /// [`ModelError::Session`] or [`ModelError::Signature`].
    pub fn load(runtime: &Runtime, path: &Path, threads: usize) -> Result<MaskDecoder, ModelError> {
        Ok(MaskDecoder {
            engine: Engine::load(
                runtime,
                "decoder",
                path,
                threads,
                Backend::Cpu,
                // A click is one decoder call, about 40 ms of work, on cores the viewer
                // shares: a worker spinning there takes the core that the thread it waits
                // for needs (on the loaded 2-core VM a click took 1.7-2.7x as long).
                Wait::Sleep,
                &INPUTS,
                &["low_res_masks", "iou_predictions"],
            )?,
            conditioned: false,
        })
    }

    /// Loads a task decoder (`heads/TASK/decoder.onnx`): the inputs of `decoder.onnx` plus
    /// `structure` (int64 `[1]`).
    ///
    /// # Errors
    /// [`ModelError::Session`] or [`ModelError::Signature`].
    pub(crate) fn load_task(
        runtime: &Runtime,
        path: &Path,
        threads: usize,
    ) -> Result<MaskDecoder, ModelError> {
        let mut inputs = INPUTS.to_vec();
        inputs.push("structure");
        Ok(MaskDecoder {
            engine: Engine::load(
                runtime,
                "task decoder",
                path,
                threads,
                Backend::Cpu,
                Wait::Spin,
                &inputs,
                &["low_res_masks", "iou_predictions"],
            )?,
            conditioned: true,
        })
    }

    /// True for a task decoder, whose calls name a structure.
    pub fn is_task_decoder(&self) -> bool {
        self.conditioned
    }

    /// Decodes one mask. `mask_input`, when given, is a 256x256 mask prompt in the model
    /// frame (logits of an earlier call, or a binary mask as 0.0/1.0).
    ///
    /// # Errors
    /// [`ModelError::Inference`] for a wrong mask shape or a failed run.
    pub fn predict(
        &self,
        embedding: &ImageEmbedding,
        prompts: &ModelPrompts,
        mask_input: Option<ArrayView2<f32>>,
    ) -> Result<DecoderOutput, ModelError> {
        self.predict_structure(embedding, prompts, mask_input, 0)
    }

    /// As [`MaskDecoder::predict`], for structure `structure` of a task decoder (ignored by
    /// LiteMedSAM's decoder). A task decoder accepts no prompt at all: the prompt-free call.
    ///
    /// # Errors
    /// [`ModelError::Inference`] for a wrong mask shape or a failed run.
    pub fn predict_structure(
        &self,
        embedding: &ImageEmbedding,
        prompts: &ModelPrompts,
        mask_input: Option<ArrayView2<f32>>,
        structure: usize,
    ) -> Result<DecoderOutput, ModelError> {
        let n = prompts.coords.len();
        let coords = Array3::from_shape_fn((1, n, 2), |(_, i, k)| prompts.coords[i][k]);
        let labels = Array2::from_shape_fn((1, n), |(_, i)| prompts.labels[i]);
        let mut mask = Array4::<f32>::zeros((1, 1, MODEL_SIZE, MODEL_SIZE));
        let has_mask: f32 = match mask_input {
            Some(m) if m.dim() == (MODEL_SIZE, MODEL_SIZE) => {
                mask.slice_mut(ndarray::s![0, 0, .., ..]).assign(&m);
                1.0
            }
            Some(m) => {
                return Err(self.engine.error(format!(
                    "mask prompt is {:?}, expected {MODEL_SIZE}x{MODEL_SIZE}",
                    m.dim()
                )))
            }
            None => 0.0,
        };
        let has_mask = Array1::from_elem(1, has_mask);
        let err = |e: ort::Error| self.engine.error(e.to_string());
        let emb = embedding.0.as_standard_layout();
        let structure = Array1::from_elem(1, structure as i64);
        let mut inputs = ort::inputs![
            "image_embeddings" => TensorRef::from_array_view(emb.view()).map_err(err)?,
            "point_coords" => TensorRef::from_array_view(coords.view()).map_err(err)?,
            "point_labels" => TensorRef::from_array_view(labels.view()).map_err(err)?,
            "mask_input" => TensorRef::from_array_view(mask.view()).map_err(err)?,
            "has_mask_input" => TensorRef::from_array_view(has_mask.view()).map_err(err)?,
        ];
        if self.conditioned {
            inputs.push((
                "structure".into(),
                TensorRef::from_array_view(structure.view())
                    .map_err(err)?
                    .into(),
            ));
        }
        self.engine.run(inputs, |out| {
            let logits = out["low_res_masks"]
                .try_extract_array::<f32>()
                .map_err(|e| e.to_string())?;
            if logits.shape() != [1, 1, MODEL_SIZE, MODEL_SIZE] {
                return Err(format!("low_res_masks has shape {:?}", logits.shape()));
            }
            let logits = logits
                .to_owned()
                .into_shape_with_order((MODEL_SIZE, MODEL_SIZE))
                .map_err(|e| e.to_string())?
                .into_dimensionality::<Ix2>()
                .map_err(|e| e.to_string())?;
            let iou = out["iou_predictions"]
                .try_extract_array::<f32>()
                .map_err(|e| e.to_string())?
                .iter()
                .next()
                .copied()
                .ok_or("iou_predictions is empty")?;
            Ok(DecoderOutput { logits, iou })
        })
    }
}
