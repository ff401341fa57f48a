//! The image encoder: a preprocessed slice to its embedding.

use std::path::Path;

use ndarray::{Array4, Ix4};
use ort::value::TensorRef;

use super::cancel::CancelToken;
use super::engine::{Backend, Engine, Wait};
use super::provider::Provider;
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
    provider: Provider,
    notice: Option<String>,
}

/// The graph's input and output names.
const INPUTS: [&str; 1] = ["image"];
const OUTPUTS: [&str; 1] = ["image_embeddings"];

impl ImageEncoder {
    /// Loads `encoder.onnx` (input `image`, output `image_embeddings`) on the CPU provider.
    ///
    /// # Errors
    /// [`ModelError::Session`] or [`ModelError::Signature`].
    pub fn load(
        runtime: &Runtime,
        path: &Path,
        threads: usize,
    ) -> Result<ImageEncoder, ModelError> {
        Self::load_on(runtime, path, threads, Provider::Cpu, None)
    }

    /// Loads the encoder on `provider`, OpenVINO caching its compiled model in
    /// `openvino_cache`. With [`Provider::Auto`], a runtime without OpenVINO or a model
    /// OpenVINO refuses gives the CPU provider and a notice ([`ImageEncoder::notice`]).
    ///
    /// # Errors
    /// [`ModelError::Session`] or [`ModelError::Signature`]; with [`Provider::OpenVino`],
    /// [`ModelError::OpenVinoUnavailable`] when the runtime has no OpenVINO provider.
    pub fn load_on(
        runtime: &Runtime,
        path: &Path,
        threads: usize,
        provider: Provider,
        openvino_cache: Option<&Path>,
    ) -> Result<ImageEncoder, ModelError> {
        let load = |backend| {
            Engine::load(
                runtime,
                "encoder",
                path,
                threads,
                backend,
                Wait::Spin,
                &INPUTS,
                &OUTPUTS,
            )
        };
        let openvino = Backend::OpenVino {
            cache: openvino_cache,
        };
        let cpu = |notice: Option<String>| {
            Ok(ImageEncoder {
                engine: load(Backend::Cpu)?,
                provider: Provider::Cpu,
                notice,
            })
        };
        match provider {
            Provider::Cpu => cpu(None),
            Provider::OpenVino if !runtime.has_openvino() => Err(ModelError::OpenVinoUnavailable {
                library: runtime.library().to_path_buf(),
            }),
            Provider::OpenVino => Ok(ImageEncoder {
                engine: load(openvino)?,
                provider: Provider::OpenVino,
                notice: None,
            }),
            _ if !runtime.has_openvino() => cpu(Some(runtime.notice().map_or_else(
                || {
                    format!(
                        "the encoder runs on ONNX Runtime's CPU provider: no OpenVINO provider \
                         beside {} (scripts/fetch-onnxruntime fetches it on x86_64 Linux)",
                        runtime.library().display()
                    )
                },
                str::to_string,
            ))),
            _ => match load(openvino) {
                Ok(engine) => Ok(ImageEncoder {
                    engine,
                    provider: Provider::OpenVino,
                    notice: None,
                }),
                Err(ModelError::Session { reason, .. }) => cpu(Some(format!(
                    "the encoder runs on ONNX Runtime's CPU provider: OpenVINO refused it ({})",
                    reason.lines().next().unwrap_or_default()
                ))),
                Err(e) => Err(e),
            },
        }
    }

    /// The provider that runs the encoder: [`Provider::OpenVino`] or [`Provider::Cpu`].
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Why [`Provider::Auto`] fell back to the CPU provider, if it did.
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    pub(crate) fn with_notice(mut self, notice: Option<String>) -> Self {
        self.notice = notice;
        self
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
