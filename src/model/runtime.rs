//! Finding and loading the ONNX Runtime shared library.
//!
//! cosam never lets `ort` guess: a missing library would make it panic. The library is
//! looked up, in order, at:
//! 1. the path given by the caller (`--ort-lib`), a file or a folder holding it;
//! 2. `ORT_DYLIB_PATH`;
//! 3. the folder of the running executable;
//! 4. `third_party/onnxruntime/` under the current folder, then under the source checkout
//!    this binary was built from (where `scripts/fetch-onnxruntime` puts it).
//!
//! The library is loaded once per process; later calls return the loaded runtime.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::ModelError;

/// The library's file name on this platform.
#[cfg(target_os = "macos")]
const LIBRARY_NAME: &str = "libonnxruntime.dylib";
#[cfg(target_os = "windows")]
const LIBRARY_NAME: &str = "onnxruntime.dll";
#[cfg(not(any(target_os = "macos", target_os = "windows")))]
const LIBRARY_NAME: &str = "libonnxruntime.so";

/// Where `scripts/fetch-onnxruntime` puts the library, relative to a checkout.
const PROJECT_LOCAL_DIR: &str = "third_party/onnxruntime";

/// A loaded ONNX Runtime: the library path and the environment sessions are built in.
#[derive(Debug)]
pub struct Runtime {
    pub(crate) environment: ort::environment::Environment,
    library: PathBuf,
}

impl Runtime {
    /// The library that was loaded.
    pub fn library(&self) -> &Path {
        &self.library
    }
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// The places searched for the library, in order, given an explicit path.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut push = |p: PathBuf| {
        out.push(if p.is_dir() { p.join(LIBRARY_NAME) } else { p });
    };
    if let Some(p) = explicit {
        push(p.to_path_buf());
        return out;
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        push(dir.join(LIBRARY_NAME));
    }
    if let Ok(cwd) = std::env::current_dir() {
        push(cwd.join(PROJECT_LOCAL_DIR).join(LIBRARY_NAME));
    }
    push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(PROJECT_LOCAL_DIR)
            .join(LIBRARY_NAME),
    );
    out.dedup();
    out
}

/// True once [`init`] has loaded the library: `ort` calls made before would load a library
/// of its own choosing, or panic.
pub(crate) fn is_loaded() -> bool {
    RUNTIME.get().is_some()
}

/// Loads ONNX Runtime from the first existing candidate (see the module docs).
///
/// # Errors
/// [`ModelError::RuntimeNotFound`] listing every place searched, or
/// [`ModelError::RuntimeLoad`] when the file exists but is not a usable library.
pub fn init(explicit: Option<&Path>) -> Result<&'static Runtime, ModelError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let tried = candidates(explicit);
    let library =
        tried
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or_else(|| ModelError::RuntimeNotFound {
                tried: tried.clone(),
            })?;
    let load_error = |reason: String| ModelError::RuntimeLoad {
        path: library.clone(),
        reason,
    };
    let environment = ort::init_from(&library)
        .map_err(|e| load_error(e.to_string()))?
        .with_name("cosam")
        .build()
        .map_err(|e| load_error(e.to_string()))?;
    Ok(RUNTIME.get_or_init(|| Runtime {
        environment,
        library,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_is_the_only_candidate() {
        let c = candidates(Some(Path::new("/nowhere/libonnxruntime.so.1")));
        assert_eq!(c, vec![PathBuf::from("/nowhere/libonnxruntime.so.1")]);
    }

    #[test]
    fn default_search_ends_in_the_project_folder() {
        let c = candidates(None);
        let last = c.last().unwrap();
        assert!(
            last.ends_with("third_party/onnxruntime/libonnxruntime.so"),
            "{last:?}"
        );
    }
}
