//! An on-disk embedding cache with a size cap.
//!
//! One file per embedding (`<key>.f32`, 4 MiB of little-endian f32), written under a
//! temporary name and renamed, so an interrupted run leaves no corrupt entry; a file of
//! the wrong length is treated as a miss and removed. When the folder grows past the cap,
//! the least recently written entries go first.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ndarray::Array4;

use crate::model::{ImageEmbedding, EMBEDDING_SHAPE};
use crate::pipeline::EmbeddingCache;

/// Bytes of one cached embedding.
const ENTRY_BYTES: u64 = (EMBEDDING_SHAPE[0] * EMBEDDING_SHAPE[1] * EMBEDDING_SHAPE[2] * 4) as u64;

/// Embeddings on disk under one folder.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Serialises eviction scans.
    evicting: Mutex<()>,
    /// Set once a write failed and was logged.
    warned: std::sync::atomic::AtomicBool,
}

impl DiskCache {
    /// A cache in `dir` (created when missing) holding at most `max_bytes`.
    ///
    /// # Errors
    /// When the folder cannot be created.
    pub fn new(dir: &Path, max_bytes: u64) -> std::io::Result<DiskCache> {
        std::fs::create_dir_all(dir)?;
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            max_bytes,
            evicting: Mutex::new(()),
            warned: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The user's cache folder for embeddings: `$XDG_CACHE_HOME/cosam/embeddings`, else
    /// `~/.cache/cosam/embeddings`, else one under the temporary folder.
    pub fn default_dir() -> PathBuf {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("cosam").join("embeddings")
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.f32"))
    }

    fn evict(&self) {
        let _guard = self.evicting.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "f32"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        if total <= self.max_bytes {
            return;
        }
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(len);
            }
        }
    }
}

impl EmbeddingCache for DiskCache {
    fn get(&self, key: &str) -> Option<ImageEmbedding> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        if bytes.len() as u64 != ENTRY_BYTES {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let [c, h, w] = EMBEDDING_SHAPE;
        let tensor = Array4::from_shape_vec((1, c, h, w), values).ok()?;
        ImageEmbedding::from_tensor(tensor).ok()
    }

    fn put(&self, key: &str, embedding: &ImageEmbedding) {
        if ENTRY_BYTES > self.max_bytes {
            return;
        }
        let mut bytes = Vec::with_capacity(ENTRY_BYTES as usize);
        for v in embedding.tensor().iter() {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        match crate::io::write_bytes(&self.path(key), &bytes) {
            Ok(()) => self.evict(),
            // a cache that cannot write costs time, never results: say so once
            Err(e) => {
                if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    log::warn!("embedding cache: {e}; embeddings are not cached");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedding(v: f32) -> ImageEmbedding {
        let [c, h, w] = EMBEDDING_SHAPE;
        ImageEmbedding::from_tensor(Array4::from_elem((1, c, h, w), v)).unwrap()
    }

    #[test]
    fn round_trip_and_corrupt_entries_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path(), 1 << 30).unwrap();
        assert!(cache.get("k").is_none());
        cache.put("k", &embedding(0.25));
        assert_eq!(cache.get("k").unwrap().tensor()[[0, 3, 4, 5]], 0.25);
        std::fs::write(dir.path().join("bad.f32"), b"short").unwrap();
        assert!(cache.get("bad").is_none());
        assert!(
            !dir.path().join("bad.f32").exists(),
            "corrupt entry removed"
        );
    }

    #[test]
    fn cap_evicts_oldest_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path(), 2 * ENTRY_BYTES).unwrap();
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            cache.put(key, &embedding(i as f32));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(cache.get("a").is_none(), "oldest evicted");
        assert!(cache.get("b").is_some() && cache.get("c").is_some());
    }
}
