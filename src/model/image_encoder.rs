//! The image encoder: a preprocessed slice to its embedding.

use std::path::Path;

use ndarray::{Array4, Ix4};
use ort::value::TensorRef;

use super::cancel::CancelToken;
use super::engine::Engine;
use super::runtime::Runtime;
use super::ModelError;
use crate::preprocess::MODEL_SIZE;

/// Channels, rows and columns of LiteMedSAM's image embedding.
pub const EMBEDDING_SHAPE: [usize; 3] = [256, 64, 64];

/// The encoder's output for one slice, `[1, 256, 64, 64]`. Computed once per slice and
/// reused by every decoder call (4 MiB as f32).
#[derive(Debug, Clone)]
pub struct ImageEmbedding(pub(crate) Array4<f32>);

impl ImageEmbedding {
    /// Wraps a tensor (for example one read back from a cache).
    ///
    /// # Errors
    /// [`ModelError::Inference`] unless the shape is `[1, 256, 64, 64]`.
    pub fn from_tensor(tensor: Array4<f32>) -> Result<ImageEmbedding, ModelError> {
        let [c, h, w] = EMBEDDING_SHAPE;
        if tensor.dim() != (1, c, h, w) {
            return Err(ModelError::Inference {
                model: "encoder".into(),
                reason: format!("embedding of shape {:?}", tensor.shape()),
            });
        }
        Ok(ImageEmbedding(tensor))
    }

    /// The raw tensor, `[1, 256, 64, 64]`.
    pub fn tensor(&self) -> &Array4<f32> {
        &self.0
    }
}

/// The TinyViT image encoder session.
#[derive(Debug)]
pub struct ImageEncoder {
    engine: Engine,
}

impl ImageEncoder {
    /// Loads `encoder.onnx` (input `image`, output `image_embeddings`).
    ///
    /// # Errors
    /// [`ModelError::Session`] or [`ModelError::Signature`].
    pub fn load(
        runtime: &Runtime,
        path: &Path,
        threads: usize,
    ) -> Result<ImageEncoder, ModelError> {
        Ok(ImageEncoder {
            engine: Engine::load(
                runtime,
                "encoder",
                path,
                threads,
                &["image"],
                &["image_embeddings"],
            )?,
        })
    }

    /// Embeds a `[1, 3, 256, 256]` tensor with values in [0, 1].
    ///
    /// # Errors
    /// [`ModelError::Inference`] when the input has the wrong shape or the run fails.
    pub fn embed(&self, image: &Array4<f32>) -> Result<ImageEmbedding, ModelError> {
        self.embed_cancellable(image, None)
    }

    /// As [`ImageEncoder::embed`], stopped early when `cancel` is cancelled.
    ///
    /// # Errors
    /// [`ModelError::Cancelled`] once `cancel` was cancelled; otherwise as
    /// [`ImageEncoder::embed`].
    pub fn embed_cancellable(
        &self,
        image: &Array4<f32>,
        cancel: Option<&CancelToken>,
    ) -> Result<ImageEmbedding, ModelError> {
        if image.dim() != (1, 3, MODEL_SIZE, MODEL_SIZE) {
            return Err(self.engine.error(format!(
                "input shape {:?}, expected [1, 3, {MODEL_SIZE}, {MODEL_SIZE}]",
                image.shape()
            )));
        }
        let standard = image.as_standard_layout();
        let tensor = TensorRef::from_array_view(standard.view())
            .map_err(|e| self.engine.error(e.to_string()))?;
        self.engine
            .run_cancellable(ort::inputs!["image" => tensor], cancel, |out| {
                let array = out["image_embeddings"]
                    .try_extract_array::<f32>()
                    .map_err(|e| e.to_string())?;
                let [c, h, w] = EMBEDDING_SHAPE;
                if array.shape() != [1, c, h, w] {
                    return Err(format!("image_embeddings has shape {:?}", array.shape()));
                }
                array
                    .to_owned()
                    .into_dimensionality::<Ix4>()
                    .map(ImageEmbedding)
                    .map_err(|e| e.to_string())
            })
    }
}
