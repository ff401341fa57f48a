//! `models/manifest.json`: which ONNX files make up a model, with their sha256 digests.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ModelError;

/// The parsed manifest (written by `models/export/export.py`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Manifest {
    /// Model family, e.g. "LiteMedSAM".
    pub model: String,
    /// Side of the square model input, pixels.
    pub image_size: usize,
    /// One entry per ONNX file.
    pub models: Vec<ModelEntry>,
    /// Shipped CoSAM head sets, one per task.
    #[serde(default)]
    pub tasks: Vec<TaskEntry>,
    #[serde(skip)]
    dir: PathBuf,
}

/// One ONNX file of the manifest.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ModelEntry {
    /// Role name ("encoder", "decoder").
    pub name: String,
    /// File name, relative to the manifest.
    pub file: String,
    /// Expected sha256, lowercase hex.
    pub sha256: String,
    /// Expected size, bytes.
    pub size_bytes: u64,
}

/// A task's head set in the manifest.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TaskEntry {
    /// Task name, as `--task` takes it.
    pub name: String,
    /// Folder holding `heads.json`, relative to the manifest.
    pub dir: String,
    /// sha256 of that `heads.json` (which in turn holds the heads' digests).
    pub heads_sha256: String,
}

impl Manifest {
    /// Names of the shipped tasks.
    pub fn task_names(&self) -> Vec<String> {
        self.tasks.iter().map(|t| t.name.clone()).collect()
    }

    /// The head folder of task `name`, after checking its `heads.json` digest.
    ///
    /// # Errors
    /// [`ModelError::UnknownTask`] listing the shipped tasks, [`ModelError::Checksum`]
    /// when `heads.json` differs from the manifest.
    pub fn task_dir(&self, name: &str) -> Result<PathBuf, ModelError> {
        let entry =
            self.tasks
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| ModelError::UnknownTask {
                    task: name.to_string(),
                    available: self.task_names(),
                })?;
        let dir = self.dir.join(&entry.dir);
        verify_file(&dir.join("heads.json"), &entry.heads_sha256)?;
        Ok(dir)
    }

    /// Reads `dir/manifest.json`.
    ///
    /// # Errors
    /// [`ModelError::Manifest`] when the file is missing or malformed.
    pub fn load(dir: &Path) -> Result<Manifest, ModelError> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Manifest {
            path: path.clone(),
            reason: format!("cannot read the model manifest: {e}"),
        })?;
        let mut manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| ModelError::Manifest {
                path: path.clone(),
                reason: format!("malformed model manifest: {e}"),
            })?;
        manifest.dir = dir.to_path_buf();
        Ok(manifest)
    }

    /// The path of the entry named `name`, after checking its size and sha256.
    ///
    /// # Errors
    /// [`ModelError::Manifest`] for an unknown name or unreadable file,
    /// [`ModelError::Checksum`] when the file's digest differs.
    pub fn verified_path(&self, name: &str) -> Result<PathBuf, ModelError> {
        let entry =
            self.models
                .iter()
                .find(|m| m.name == name)
                .ok_or_else(|| ModelError::Manifest {
                    path: self.dir.join("manifest.json"),
                    reason: format!("no model named '{name}' in the manifest"),
                })?;
        let path = self.dir.join(&entry.file);
        verify_file(&path, &entry.sha256)?;
        Ok(path)
    }
}

/// Checks that `path`'s sha256 is `expected`.
///
/// # Errors
/// [`ModelError::Manifest`] when the file cannot be read, [`ModelError::Checksum`] when its
/// digest differs.
pub(crate) fn verify_file(path: &Path, expected: &str) -> Result<(), ModelError> {
    check_regular_file(path, MAX_MODEL_FILE_BYTES)?;
    let found = sha256_file(path).map_err(|e| ModelError::Manifest {
        path: path.to_path_buf(),
        reason: format!("cannot read model file: {e}"),
    })?;
    if found.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(ModelError::Checksum {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            found,
        })
    }
}

/// Largest model or head file hashed and loaded, bytes (the shipped encoder is ~40 MB).
pub(crate) const MAX_MODEL_FILE_BYTES: u64 = 2 << 30;

/// Checks, without opening it, that `path` is a regular file (not a device, FIFO or
/// folder, which could block or never end) of at most `max_bytes`.
///
/// # Errors
/// [`ModelError::Manifest`] naming the file and what it is.
pub(crate) fn check_regular_file(path: &Path, max_bytes: u64) -> Result<(), ModelError> {
    let error = |reason: String| ModelError::Manifest {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| error(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(error(
            "not a regular file (a device, FIFO or folder); refusing to read it".into(),
        ));
    }
    if meta.len() > max_bytes {
        return Err(error(format!(
            "{} bytes, more than the {max_bytes} allowed",
            meta.len()
        )));
    }
    Ok(())
}

/// Lowercase hex sha256 of a file.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
