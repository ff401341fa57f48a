//! Training sets for the CoSAM heads (`models/train`): a case's slice embeddings and its
//! reference structures in the 256x256 model frame, written as NumPy `.npy` files.
//!
//! The Rust side writes them so that training sees exactly what inference sees: the same
//! readers, label alignment, intensity mapping, resize and encoder (and the same embedding
//! cache, so a benchmark that was evaluated once exports in seconds).

use std::path::{Path, PathBuf};

use ndarray::{s, Array2, ArrayView2};

use super::{load_in_frame, Case, FramedCase};
use crate::io::{write_bytes, Limits};
use crate::pipeline::{EmbeddingCache, Segmenter};
use crate::preprocess::{resize, Kernel, MODEL_SIZE};

/// What [`export_case`] wrote for one case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainingCase {
    /// Case id.
    pub case: String,
    /// Task.
    pub task: String,
    /// Domain.
    pub domain: String,
    /// Generated domain shift.
    pub synthetic: bool,
    /// Structure names; the label value of `structures[i]` in `labels.npy` is `i + 1`.
    pub structures: Vec<String>,
    /// The structures this case's reference covers: those it marks and those it calls
    /// absent (the manifest's `absent_labels`). Others are unknown, not absent.
    pub labelled: Vec<String>,
    /// The model frame of the slices ([`crate::io::FRAME_VERSION`]).
    pub model_frame: u32,
    /// Model-frame slice index of each exported slice.
    pub slices: Vec<usize>,
    /// Rows and columns of each slice's content inside the model frame (the rest is padding).
    pub scaled: Vec<[usize; 2]>,
}

/// Writes `dir/embeddings.npy` (`[S, 256, 64, 64]` f32), `dir/labels.npy` (`[S, 256, 256]`
/// u8, 0 background, `i + 1` for `structures[i]`) and `dir/meta.json` for every slice of
/// `case` that is not constant after intensity mapping. Each reference mask is resampled to
/// the model frame as the image is (area or bilinear, then >= 0.5).
///
/// # Errors
/// A message naming the file when the case cannot be read, aligned, embedded or written.
pub fn export_case(
    segmenter: &Segmenter,
    case: &Case,
    structures: &[String],
    cache: Option<&dyn EmbeddingCache>,
    limits: &Limits,
    dir: &Path,
) -> Result<TrainingCase, String> {
    let FramedCase { volume, label } = load_in_frame(case, limits)?;
    let map = segmenter
        .intensity_map(&volume)
        .map_err(|e| e.to_string())?;
    let labelled: Vec<String> = structures
        .iter()
        .filter(|s| case.labels.contains_key(*s) || case.absent_labels.contains(*s))
        .cloned()
        .collect();
    let mut embeddings: Vec<f32> = Vec::new();
    let mut labels: Vec<u8> = Vec::new();
    let mut meta = TrainingCase {
        case: case.id.clone(),
        task: case.task.clone(),
        domain: case.domain.clone(),
        synthetic: case.synthetic,
        structures: structures.to_vec(),
        labelled,
        model_frame: crate::io::FRAME_VERSION,
        slices: Vec::new(),
        scaled: Vec::new(),
    };
    // the last slice visited: an error comes from embedding the next one
    let mut visited: Option<usize> = None;
    let walked = segmenter.visit_slices(&volume, None, &map, cache, |z, embedded| {
        visited = Some(z);
        let Some(embedding) = embedded.embedding() else {
            return Ok(());
        };
        let t = *embedded.transform();
        let mut frame = Array2::<u8>::zeros((MODEL_SIZE, MODEL_SIZE));
        for (i, name) in structures.iter().enumerate() {
            let Some(&value) = case.labels.get(name) else {
                continue;
            };
            let binary = label
                .slice(s![z, .., ..])
                .mapv(|v| if v == value { 1.0f32 } else { 0.0 });
            let scaled = to_model_frame(binary.view(), t.scaled_rows, t.scaled_cols);
            frame
                .slice_mut(s![..t.scaled_rows, ..t.scaled_cols])
                .zip_mut_with(&scaled, |f, &v| {
                    if v >= 0.5 {
                        *f = (i + 1) as u8;
                    }
                });
        }
        embeddings.extend(embedding.0.iter());
        labels.extend(frame.iter());
        meta.slices.push(z);
        meta.scaled.push([t.scaled_rows, t.scaled_cols]);
        Ok(())
    });
    walked.map_err(|e| {
        let z = visited.map_or(0, |z| z + 1);
        format!("{}: slice {z}: {e}", case.image.display())
    })?;
    let n = meta.slices.len();
    let [c, h, w] = crate::model::EMBEDDING_SHAPE;
    let write = |name: &str, bytes: Vec<u8>| -> Result<(), String> {
        write_bytes(&dir.join(name), &bytes).map_err(|e| e.to_string())
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    write(
        "embeddings.npy",
        npy("<f4", &[n, c, h, w], bytemuck::cast_slice(&embeddings)),
    )?;
    write(
        "labels.npy",
        npy("|u1", &[n, MODEL_SIZE, MODEL_SIZE], &labels),
    )?;
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?;
    write("meta.json", json)?;
    Ok(meta)
}

fn to_model_frame(mask: ArrayView2<f32>, rows: usize, cols: usize) -> Array2<f32> {
    let (r, c) = mask.dim();
    resize(
        mask,
        rows,
        cols,
        Kernel::for_scale(r, rows),
        Kernel::for_scale(c, cols),
    )
}

/// A NumPy format 1.0 file: magic, header dict padded to 64 bytes, raw C-order data.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Where [`export_case`] puts a case under `root`: one folder per domain.
pub fn case_dir(root: &Path, case: &Case) -> PathBuf {
    root.join(case.domain.replace(['/', '\\'], "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_readable() {
        let bytes = npy("|u1", &[2, 3], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&bytes[..6], b"\x93NUMPY");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.contains("'shape': (2, 3)"), "{header}");
        assert!(header.ends_with('\n'));
        assert_eq!(&bytes[10 + header_len..], &[1, 2, 3, 4, 5, 6]);
    }
}
