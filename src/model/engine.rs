//! One ONNX Runtime session, its graph signature checked when it loads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, TryLockError};
use std::time::Duration;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputs, SessionOutputs};

use super::cancel::CancelToken;
use super::provider::openvino_ep;
use super::runtime::Runtime;
use super::ModelError;

/// The execution provider a session is built for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Backend<'a> {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// OpenVINO's CPU plugin, caching compiled models in `cache` when given. Registration
    /// fails instead of silently falling back, so the caller knows what runs.
    OpenVino { cache: Option<&'a Path> },
}

/// Runs that completed in this process, per model name: work counted, not timed, for
/// benchmarks on machines whose speed swings.
static CALLS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// The model runs this process has completed so far, per model (`encoder`, `decoder`,
/// `task decoder`, `error decoder`). Take it before and after a piece of work to count
/// the calls the work made.
pub fn calls() -> BTreeMap<&'static str, u64> {
    CALLS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// What a session's worker threads do between the parallel parts of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Spin: best for a long run (the encoder) with the cores to itself.
    Spin,
    /// Sleep: for short, latency-bound runs (a click's decoder call) on cores shared with
    /// the host and other processes, where a spinning worker takes the core that the
    /// thread it waits for needs (docs/performance.md, "Click latency").
    Sleep,
}

/// How often a cancellable run waiting for its session looks at its token.
const CANCEL_POLL: Duration = Duration::from_millis(2);

/// A session plus what is needed to name it in errors. `Session::run` needs `&mut`, so the
/// session sits behind a mutex and an `Engine` can be shared between threads.
pub(crate) struct Engine {
    name: &'static str,
    session: Mutex<Session>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("name", &self.name).finish()
    }
}

/// Takes an exclusive advisory lock on `cosam.lock` in an OpenVINO cache folder, held
/// until the returned file is dropped (or the process dies). `None` (no lock, the load goes
/// ahead) when the folder cannot be made or the file system has no locks.
fn lock_cache(dir: &Path) -> Option<std::fs::File> {
    std::fs::create_dir_all(dir).ok()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("cosam.lock"))
        .ok()?;
    file.lock().ok()?;
    Some(file)
}

impl Engine {
    /// Creates a session for `path` on `backend`, its workers waiting as `wait` says, and
    /// checks that the graph has exactly the named inputs and at least the named outputs.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn load(
        runtime: &Runtime,
        name: &'static str,
        path: &Path,
        threads: usize,
        backend: Backend<'_>,
        wait: Wait,
        inputs: &[&str],
        outputs: &[&str],
    ) -> Result<Engine, ModelError> {
        let session_error = |reason: String| ModelError::Session {
            path: path.to_path_buf(),
            reason,
        };
        let build = |backend: Backend<'_>| -> ort::Result<Session> {
            let builder = Session::builder(&runtime.environment)?;
            let builder = match backend {
                Backend::Cpu => builder,
                Backend::OpenVino { cache } => {
                    builder.with_execution_providers([openvino_ep(threads, cache)])?
                }
            };
            builder
                .with_optimization_level(GraphOptimizationLevel::Level3)?
                .with_intra_threads(threads.max(1))?
                .with_inter_threads(1)?
                // Each session has its own pool and sessions run one after another (encoder,
                // then decoder, then heads): a pool still spinning after its run takes a core
                // from the next session. Within a run, workers spin or sleep as `wait` says.
                .with_config_entry("session.force_spinning_stop", "1")?
                .with_intra_op_spinning(wait == Wait::Spin)?
                .commit_from_file(path)
        };
        let session = match backend {
            Backend::OpenVino { cache: Some(dir) } => {
                // OpenVINO writes a compiled blob in place, and a second process that opens
                // it half-written fails to load the model (issue 19: shards started together
                // on a cold cache fell back to the CPU provider and wrote other masks). One
                // process at a time compiles or reads the cache; a cache that still fails
                // (unwritable, corrupt) costs a compile, not the provider.
                let _lock = lock_cache(dir);
                build(backend).or_else(|_| build(Backend::OpenVino { cache: None }))
            }
            _ => build(backend),
        }
        .map_err(|e| session_error(e.to_string()))?;
        let found_in: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        let found_out: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let mut sorted_in = found_in.clone();
        sorted_in.sort_unstable();
        let mut expected_in = inputs.to_vec();
        expected_in.sort_unstable();
        if sorted_in != expected_in || !outputs.iter().all(|o| found_out.contains(o)) {
            return Err(ModelError::Signature {
                path: PathBuf::from(path),
                expected: format!("inputs {inputs:?} -> outputs {outputs:?}"),
                found: format!("inputs {found_in:?} -> outputs {found_out:?}"),
            });
        }
        Ok(Engine {
            name,
            session: Mutex::new(session),
        })
    }

    /// Runs the graph and hands its outputs to `read`, which copies out what it needs.
    pub(crate) fn run<'i, 'v: 'i, const N: usize, T>(
        &self,
        inputs: impl Into<SessionInputs<'i, 'v, N>>,
        read: impl FnOnce(&SessionOutputs<'_>) -> Result<T, String>,
    ) -> Result<T, ModelError> {
        self.run_cancellable(inputs, None, read)
    }

    /// As [`Engine::run`], stopped early by `cancel`. Only this session's lock is held, so
    /// runs of other sessions (the decoder while the encoder runs) proceed meanwhile.
    pub(crate) fn run_cancellable<'i, 'v: 'i, const N: usize, T>(
        &self,
        inputs: impl Into<SessionInputs<'i, 'v, N>>,
        cancel: Option<&CancelToken>,
        read: impl FnOnce(&SessionOutputs<'_>) -> Result<T, String>,
    ) -> Result<T, ModelError> {
        let cancelled = || ModelError::Cancelled {
            model: self.name.to_string(),
        };
        let mut session = match cancel {
            None => self
                .session
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            // While another run holds the session, keep watching the token: a job cancelled
            // while it waits returns at once instead of after the run ahead of it.
            Some(token) => loop {
                if token.is_cancelled() {
                    return Err(cancelled());
                }
                match self.session.try_lock() {
                    Ok(session) => break session,
                    Err(TryLockError::Poisoned(poisoned)) => break poisoned.into_inner(),
                    Err(TryLockError::WouldBlock) => std::thread::sleep(CANCEL_POLL),
                }
            },
        };
        let outputs = match cancel {
            Some(token) => session.run_with_options(inputs, token.run_options()),
            None => session.run(inputs),
        };
        let outputs = outputs.map_err(|e| match cancel {
            Some(token) if token.is_cancelled() => cancelled(),
            _ => self.error(e.to_string()),
        })?;
        // ONNX Runtime checks the token between nodes; OpenVINO runs the whole graph as
        // one node, so a run cancelled meanwhile completes: it still reports Cancelled.
        if cancel.is_some_and(CancelToken::is_cancelled) {
            return Err(cancelled());
        }
        *CALLS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(self.name)
            .or_default() += 1;
        read(&outputs).map_err(|reason| self.error(reason))
    }

    pub(crate) fn error(&self, reason: String) -> ModelError {
        ModelError::Inference {
            model: self.name.to_string(),
            reason,
        }
    }
}
