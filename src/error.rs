//! The crate-wide error, shaped by blame so a caller can tell the user what to do.

use crate::{correct, io, model, post, preprocess};

/// Any error from cosam. Each variant wraps the error of the stage that failed, which
/// carries the file, slice or tensor it was working on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input could not be read (missing, corrupt, unsupported format).
    #[error(transparent)]
    Read(#[from] io::ReadError),
    /// An output could not be written.
    #[error(transparent)]
    Write(#[from] io::WriteError),
    /// The image cannot be prepared for the model (for example, it is constant).
    #[error(transparent)]
    Preprocess(#[from] preprocess::PreprocessError),
    /// A prompt does not fit the image it is applied to.
    #[error(transparent)]
    Prompt(#[from] model::PromptError),
    /// ONNX Runtime or a model file failed to load or run.
    #[error(transparent)]
    Model(#[from] model::ModelError),
    /// Mask post-processing failed (the GPU path falls back to the CPU before this).
    #[error(transparent)]
    Post(#[from] post::PostError),
    /// The self-correcting loop failed.
    #[error(transparent)]
    Correct(#[from] correct::CorrectError),
    /// A metric could not be computed (shape or spacing mismatch).
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// An evaluation cannot run as asked (dataset, folds, heads).
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
}

impl Error {
    /// True when the fault lies with the environment (runtime library, model files) rather
    /// than with one input: a batch cannot go on after it.
    pub fn is_setup(&self) -> bool {
        matches!(self, Error::Model(e) | Error::Correct(correct::CorrectError::Model(e)) if e.is_setup())
    }
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
