//! Cancelling a model run from another thread (a viewer dropping a slice it no longer shows).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ort::session::RunOptions;

use super::ModelError;

/// A handle that stops the model runs it is passed to. Clones share one flag: keep a clone
/// on the thread that may cancel, pass the other to [`crate::Segmenter::embed_slice_cancellable`]
/// (or [`super::ImageEncoder::embed_cancellable`]).
///
/// Cancelling is sticky: once [`CancelToken::cancel`] is called, every run given this token,
/// including runs that start later, ends with [`ModelError::Cancelled`]. Use a fresh token
/// per job; a run that finished before the call keeps its result. ONNX Runtime checks the flag between graph nodes, so a run stops within one
/// node's time (milliseconds for the encoder), not instantly.
#[derive(Debug, Clone)]
pub struct CancelToken(Arc<Inner>);

struct Inner {
    options: RunOptions,
    cancelled: AtomicBool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.cancelled.load(Ordering::SeqCst))
            .finish()
    }
}

impl CancelToken {
    /// A token that has not been cancelled.
    ///
    /// # Errors
    /// [`ModelError::Inference`] when ONNX Runtime is not loaded yet (load the models
    /// first) or cannot create run options.
    pub fn new() -> Result<CancelToken, ModelError> {
        if !super::runtime::is_loaded() {
            return Err(ModelError::Inference {
                model: "run options".into(),
                reason:
                    "ONNX Runtime is not loaded yet; load the models before creating a cancel token"
                        .into(),
            });
        }
        let options = RunOptions::new().map_err(|e| ModelError::Inference {
            model: "run options".into(),
            reason: e.to_string(),
        })?;
        Ok(CancelToken(Arc::new(Inner {
            options,
            cancelled: AtomicBool::new(false),
        })))
    }

    /// Asks every run given this token to stop; returns at once. Safe from any thread.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        // Setting a flag on live run options cannot fail in ONNX Runtime; if it ever did,
        // the run would simply finish, and the flag above still marks its result cancelled.
        let _ = self.0.options.terminate();
    }

    /// True once [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    pub(crate) fn run_options(&self) -> &RunOptions {
        &self.0.options
    }
}
