//! ONNX Runtime sessions for LiteMedSAM, split as in SAM: [`ImageEncoder`] embeds a slice
//! once; [`MaskDecoder`] (SAM's prompt encoder and mask decoder in one graph) turns an
//! embedding and prompts into mask logits.
//!
//! [`TaskHeads`] are CoSAM's trained heads of one task: a task decoder that segments
//! without prompts (and refines with them) and an error decoder.
//!
//! Owns the runtime library discovery ([`runtime`]), the model manifest and its checksums,
//! and the prompt types. Must not import `pipeline`, `post` or the CLI.

mod cancel;
mod engine;
mod heads;
mod image_encoder;
mod manifest;
mod mask_decoder;
mod prompt;
mod provider;
pub mod runtime;
mod sam;

use std::path::PathBuf;

pub use cancel::CancelToken;
pub use engine::calls;
pub use heads::{ErrorDecoder, HeadsInfo, TaskHeads, HEADS_FORMAT};
pub use image_encoder::{ImageEmbedding, ImageEncoder, EMBEDDING_SHAPE};
pub use manifest::{Manifest, ModelEntry, TaskEntry};
pub use mask_decoder::{DecoderOutput, MaskDecoder};
pub use prompt::{BoxXyxy, ModelPrompts, Point, PointLabel, PromptError, Prompts};
pub use provider::{default_openvino_cache, Provider, OPENVINO_CACHE_ENV};
pub use sam::{EncoderPrecision, HeadsSource, LiteMedSam, ModelConfig};

/// Failure to load or run a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// No ONNX Runtime library was found in any searched place.
    #[error(
        "ONNX Runtime library not found; looked in: {}\n  hint: run scripts/fetch-onnxruntime, \
         or pass --ort-lib PATH / set ORT_DYLIB_PATH to libonnxruntime.so",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    RuntimeNotFound {
        /// Every path that was tried, in order.
        tried: Vec<PathBuf>,
    },
    /// `--provider openvino` and no OpenVINO build of ONNX Runtime in any searched place.
    #[error(
        "OpenVINO execution provider not found; looked for {}\n  hint: run scripts/fetch-onnxruntime \
         (x86_64 Linux; it unpacks the onnxruntime-openvino wheel into third_party/onnxruntime-openvino/), \
         or use --provider cpu",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    OpenVinoNotFound {
        /// Every provider library path that was looked for, in order.
        tried: Vec<PathBuf>,
    },
    /// `--provider openvino`, but the loaded ONNX Runtime has no OpenVINO provider beside it
    /// (an explicit `--ort-lib`/`ORT_DYLIB_PATH`, or a runtime loaded earlier in the process).
    #[error(
        "the ONNX Runtime at {library} has no OpenVINO execution provider ({} missing beside it)\n  \
         hint: point --ort-lib at third_party/onnxruntime-openvino/ (scripts/fetch-onnxruntime), or use --provider cpu",
        provider::OPENVINO_PROVIDER_LIBRARY
    )]
    OpenVinoUnavailable {
        /// The loaded runtime library.
        library: PathBuf,
    },
    /// The runtime library exists but could not be loaded.
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    RuntimeLoad {
        /// The library.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
    /// The model folder or manifest is missing or unreadable.
    #[error("{path}: {reason}")]
    Manifest {
        /// The manifest or model folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A model file's checksum does not match the manifest.
    #[error("{path}: sha256 {found} does not match the manifest's {expected}; re-export or restore the file")]
    Checksum {
        /// The model file.
        path: PathBuf,
        /// Digest from the manifest.
        expected: String,
        /// Digest of the file.
        found: String,
    },
    /// A session could not be created from a model file.
    #[error("{path}: cannot create an ONNX Runtime session: {reason}")]
    Session {
        /// The model file.
        path: PathBuf,
        /// ONNX Runtime's message.
        reason: String,
    },
    /// The graph's inputs or outputs are not what cosam expects.
    #[error("{path}: graph signature mismatch: expected {expected}, found {found}")]
    Signature {
        /// The model file.
        path: PathBuf,
        /// What cosam needs.
        expected: String,
        /// What the graph declares.
        found: String,
    },
    /// The heads were trained with slices in another model frame (see
    /// [`crate::io::FRAME_VERSION`]), so they would see images unlike their training data.
    #[error("{path}: heads trained in model frame {found}, this cosam uses frame {expected}; retrain them (models/train/README.md)")]
    FrameMismatch {
        /// The heads manifest.
        path: PathBuf,
        /// The frame of this build.
        expected: u32,
        /// The frame the heads declare (0 when they declare none: storage order).
        found: u32,
    },
    /// `--task` names a task without shipped heads.
    #[error("no heads for task '{task}'; available tasks: {}", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    UnknownTask {
        /// The task asked for.
        task: String,
        /// The tasks the manifest lists.
        available: Vec<String>,
    },
    /// A run was stopped through its [`CancelToken`].
    #[error("{model}: cancelled")]
    Cancelled {
        /// The graph's name (encoder, decoder).
        model: String,
    },
    /// Bytes given to [`crate::EmbeddedSlice::from_bytes`] are not a serialised embedding.
    #[error("not a cosam embedding: {reason}")]
    EmbeddingBytes {
        /// What is wrong with them.
        reason: String,
    },
    /// An embedding made by another image encoder than the loaded one.
    #[error("embedding was made by the encoder with sha256 {found}, but the loaded encoder is {expected}; embed the slice again")]
    EncoderMismatch {
        /// The loaded encoder's sha256.
        expected: String,
        /// The sha256 recorded in the embedding.
        found: String,
    },
    /// A structure name the task's heads do not segment.
    #[error("task '{task}' has no structure '{structure}'; its structures: {}", available.join(", "))]
    UnknownStructure {
        /// The heads' task.
        task: String,
        /// The name asked for.
        structure: String,
        /// The structures the heads segment.
        available: Vec<String>,
    },
    /// Running a graph failed, or it returned an unexpected tensor.
    #[error("{model}: inference failed: {reason}")]
    Inference {
        /// The graph's name (encoder, decoder).
        model: String,
        /// What happened.
        reason: String,
    },
}

impl ModelError {
    /// True for failures of the environment (library, files) rather than of one input.
    pub fn is_setup(&self) -> bool {
        !matches!(
            self,
            ModelError::Inference { .. }
                | ModelError::Cancelled { .. }
                | ModelError::EmbeddingBytes { .. }
                | ModelError::EncoderMismatch { .. }
                | ModelError::UnknownStructure { .. }
        )
    }
}
