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
//! With the OpenVINO provider asked for ([`Provider::OpenVino`], or [`Provider::Auto`], the
//! default), steps 3 and 4 look first for the OpenVINO build of ONNX Runtime:
//! `onnxruntime-openvino/` beside the executable, then `third_party/onnxruntime-openvino/`
//! under the current folder and the checkout. `auto` goes on to the plain library when
//! none is there; `openvino` fails with [`ModelError::OpenVinoNotFound`].
//!
//! The library is loaded once per process; later calls return the loaded runtime, whatever
//! provider they ask for (the CPU provider is in every build; OpenVINO only in its own).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::provider::{Provider, OPENVINO_PROVIDER_LIBRARY};
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

/// Where it puts the OpenVINO build, relative to a checkout.
const PROJECT_LOCAL_OPENVINO_DIR: &str = "third_party/onnxruntime-openvino";

/// The OpenVINO build's folder beside an installed executable.
const OPENVINO_DIR: &str = "onnxruntime-openvino";

/// A loaded ONNX Runtime: the library path and the environment sessions are built in.
#[derive(Debug)]
pub struct Runtime {
    pub(crate) environment: ort::environment::Environment,
    library: PathBuf,
    notice: Option<String>,
}

impl Runtime {
    /// The library that was loaded.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// Why `auto` loaded the plain library though an OpenVINO build exists, if it did.
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    /// True when the OpenVINO provider's library lies beside the loaded runtime (whether it
    /// accepts a model is known only when a session is built).
    pub fn has_openvino(&self) -> bool {
        self.library
            .parent()
            .is_some_and(|d| d.join(OPENVINO_PROVIDER_LIBRARY).is_file())
    }
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// The places searched for the plain library, in order, given an explicit path.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    candidates_for(explicit, Provider::Cpu)
}

/// The places searched for the library that `provider` needs, in order (module docs).
pub fn candidates_for(explicit: Option<&Path>, provider: Provider) -> Vec<PathBuf> {
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
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    let cwd = std::env::current_dir().ok();
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
    if provider != Provider::Cpu {
        if let Some(dir) = &exe_dir {
            push(dir.join(OPENVINO_DIR).join(LIBRARY_NAME));
        }
        if let Some(cwd) = &cwd {
            push(cwd.join(PROJECT_LOCAL_OPENVINO_DIR).join(LIBRARY_NAME));
        }
        push(checkout.join(PROJECT_LOCAL_OPENVINO_DIR).join(LIBRARY_NAME));
    }
    if provider != Provider::OpenVino {
        if let Some(dir) = &exe_dir {
            push(dir.join(LIBRARY_NAME));
        }
        if let Some(cwd) = &cwd {
            push(cwd.join(PROJECT_LOCAL_DIR).join(LIBRARY_NAME));
        }
        push(checkout.join(PROJECT_LOCAL_DIR).join(LIBRARY_NAME));
    }
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
    init_for(explicit, Provider::Cpu)
}

/// Loads ONNX Runtime for `provider` (see the module docs), or returns the runtime loaded
/// earlier in this process.
///
/// # Errors
/// As [`init`]; with [`Provider::OpenVino`] and no explicit library,
/// [`ModelError::OpenVinoNotFound`] when no OpenVINO build exists in the searched places.
pub fn init_for(
    explicit: Option<&Path>,
    provider: Provider,
) -> Result<&'static Runtime, ModelError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let tried = candidates_for(explicit, provider);
    let mut existing = tried.iter().filter(|p| p.is_file()).peekable();
    if existing.peek().is_none() {
        return Err(match provider {
            Provider::OpenVino => ModelError::OpenVinoNotFound {
                tried: tried
                    .into_iter()
                    .map(|p| p.with_file_name(OPENVINO_PROVIDER_LIBRARY))
                    .collect(),
            },
            _ => ModelError::RuntimeNotFound { tried },
        });
    }
    // With `auto`, an OpenVINO build that does not load (an older glibc than its
    // manylinux_2_28) gives way to the next candidate, the plain library, with a notice.
    let mut notice = None;
    let (library, builder) = loop {
        let Some(library) = existing.next() else {
            // unreachable: the loop returns on the last candidate's failure
            return Err(ModelError::RuntimeNotFound { tried });
        };
        match ort::init_from(library) {
            Ok(builder) => break (library.clone(), builder),
            Err(e) if provider == Provider::Auto && existing.peek().is_some() => {
                notice = Some(format!(
                    "the encoder runs on ONNX Runtime's CPU provider: the OpenVINO runtime at {} \
                     does not load ({e})",
                    library.display()
                ));
            }
            Err(e) => {
                return Err(ModelError::RuntimeLoad {
                    path: library.clone(),
                    reason: e.to_string(),
                })
            }
        }
    };
    let environment = builder
        .with_name("cosam")
        .build()
        .map_err(|e| ModelError::RuntimeLoad {
            path: library.clone(),
            reason: e.to_string(),
        })?;
    Ok(RUNTIME.get_or_init(|| Runtime {
        environment,
        library,
        notice,
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
    fn openvino_is_searched_before_the_plain_library_unless_cpu_is_asked_for() {
        let auto = candidates_for(None, Provider::Auto);
        let cpu = candidates_for(None, Provider::Cpu);
        let openvino = candidates_for(None, Provider::OpenVino);
        let ov_last = openvino.last().unwrap();
        assert!(
            ov_last.ends_with("third_party/onnxruntime-openvino/libonnxruntime.so"),
            "{ov_last:?}"
        );
        assert!(!cpu.iter().any(|p| p.to_string_lossy().contains("openvino")));
        let first_plain = auto.iter().position(|p| cpu.contains(p)).unwrap();
        assert!(auto[..first_plain].iter().all(|p| openvino.contains(p)));
        assert_eq!(auto.last(), cpu.last());
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
