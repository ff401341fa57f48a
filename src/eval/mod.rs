//! Domain-shift evaluation: run methods over the cases of a dataset and score each case
//! (per volume, never pooled over slices) in physical units.
//!
//! Nothing in the crate depends on `eval`; it uses `io`, `pipeline` and `metrics`.

mod cache;
mod dataset;
mod folds;
mod methods;
mod report;
mod training;

use std::path::PathBuf;
use std::time::Instant;

use ndarray::{Array3, Axis};

pub use cache::DiskCache;
pub use dataset::{Case, Dataset, MANIFEST_FORMAT};
pub use folds::{plan_folds, Fold, FoldRequest};
pub use methods::{Method, COSAM_DEFAULT_ROUNDS, METHOD_NAMES};
pub use report::{
    aggregate, bootstrap_ci, markdown, markdown_table, review_flag, write_reports, ReviewSummary,
    Summary, REVIEW_DICE, REVIEW_THRESHOLD,
};
pub use training::{case_dir, export_case, TrainingCase};

use crate::io::{Affine, Limits, Volume};
use crate::metrics::{self, MetricsOptions};
use crate::model::TaskHeads;
use crate::pipeline::{EmbeddingCache, Segmenter};
use crate::post::Cleanup;

/// Failure to set up an evaluation: the dataset, the folds or the heads asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The manifest or folder cannot be used.
    #[error("{path}: {reason}")]
    Dataset {
        /// The manifest or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A domain asked for is not one of the task's.
    #[error("domain '{domain}' is not in the task; its domains: {}", domains.join(", "))]
    UnknownDomain {
        /// The domain asked for.
        domain: String,
        /// The task's domains.
        domains: Vec<String>,
    },
    /// Leave-one-domain-out heads were given, but none holds this domain out.
    #[error("no heads hold out domain '{domain}'")]
    NoHeadsForDomain {
        /// The test domain.
        domain: String,
    },
    /// A prompt-free method was asked for without CoSAM heads: a usage error, not a
    /// broken manifest.
    #[error(
        "the prompt-free methods (coarse, corrected, cosam) need CoSAM heads: pass --heads \
         DIR or evaluate a task with shipped heads"
    )]
    NoHeads,
}

/// Options of [`evaluate_case`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EvalOptions {
    /// Methods to run, in order.
    pub methods: Vec<Method>,
    /// HD95 convention and NSD tolerance.
    pub metrics: MetricsOptions,
    /// Size caps for reading images.
    pub limits: Limits,
    /// The loop of the prompt-free methods; its error threshold is replaced by each head
    /// set's calibrated one unless `error_threshold` is given.
    pub correct: crate::correct::CorrectOptions,
    /// Error probability threshold of the prompt-free methods (`None`: the heads').
    pub error_threshold: Option<f32>,
    /// Clean-up of every method's predicted volume before it is scored; volumetric steps
    /// are allowed here, since the whole volume is at hand.
    pub cleanup: Cleanup,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            methods: vec![
                Method::FullBox,
                Method::GtBox { jitter_px: 0 },
                Method::GtBox3d,
            ],
            metrics: MetricsOptions::default(),
            limits: Limits::default(),
            correct: crate::correct::CorrectOptions::default(),
            error_threshold: None,
            cleanup: Cleanup::default(),
        }
    }
}

impl EvalOptions {
    /// Options running `methods`.
    pub fn with_methods(mut self, methods: Vec<Method>) -> Self {
        self.methods = methods;
        self
    }

    /// Options with metric conventions.
    pub fn with_metrics(mut self, metrics: MetricsOptions) -> Self {
        self.metrics = metrics;
        self
    }

    /// Options with the prompt-free methods' loop and error threshold (`None`: each head
    /// set's calibrated one).
    pub fn with_loop(
        mut self,
        correct: crate::correct::CorrectOptions,
        error_threshold: Option<f32>,
    ) -> Self {
        self.correct = correct;
        self.error_threshold = error_threshold;
        self
    }

    /// Options with a clean-up of every predicted volume.
    pub fn with_cleanup(mut self, cleanup: Cleanup) -> Self {
        self.cleanup = cleanup;
        self
    }

    /// Options with reading limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// One (case, structure, method) result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    /// Case id.
    pub case: String,
    /// Task.
    pub task: String,
    /// Domain.
    pub domain: String,
    /// Generated domain shift.
    pub synthetic: bool,
    /// Where the reference comes from.
    pub label_kind: String,
    /// Structure name.
    pub structure: String,
    /// Method name.
    pub method: String,
    /// `ok` or `failed`.
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Dice; `None` only when prediction and reference are both empty.
    pub dice: Option<f64>,
    /// IoU; as Dice.
    pub iou: Option<f64>,
    /// Hausdorff distance, mm (+inf when the prediction is empty).
    pub hd_mm: Option<f64>,
    /// HD95 under the run's convention, mm (+inf when the prediction is empty).
    pub hd95_mm: Option<f64>,
    /// Average symmetric surface distance, mm (+inf when the prediction is empty).
    pub assd_mm: Option<f64>,
    /// Normalised surface Dice at the run's tolerance (0 when the prediction is empty).
    pub nsd: Option<f64>,
    /// Predicted voxels.
    pub pred_voxels: usize,
    /// Reference voxels.
    pub ref_voxels: usize,
    /// Wall time of the method on this case and structure, seconds (the prompt-free
    /// methods share one run of the loop: the first of them carries its time).
    pub seconds: f64,
    /// The prompt-free methods' quality score of the volume's mask (see
    /// [`crate::correct::Quality`]); `None` for the others and for `corrected`.
    pub quality: Option<f64>,
}

impl Row {
    fn new(case: &Case, structure: &str, method: &str) -> Row {
        Row {
            case: case.id.clone(),
            task: case.task.clone(),
            domain: case.domain.clone(),
            synthetic: case.synthetic,
            label_kind: case.label_kind.clone(),
            structure: structure.to_string(),
            method: method.to_string(),
            status: "failed".into(),
            error: None,
            dice: None,
            iou: None,
            hd_mm: None,
            hd95_mm: None,
            assd_mm: None,
            nsd: None,
            pred_voxels: 0,
            ref_voxels: 0,
            seconds: 0.0,
            quality: None,
        }
    }

    fn failed(mut self, error: String) -> Row {
        self.error = Some(error);
        self
    }
}

/// A stable seed for one case and structure (FNV-1a of their names).
fn seed_of(case: &str, structure: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in case.bytes().chain([0]).chain(structure.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A case's image and label map in the model frame (axial slices, [`crate::io::reorient`]).
#[derive(Debug)]
pub struct FramedCase {
    /// The image, in the model frame.
    pub volume: Volume,
    /// The label values on the same grid, `[slice, row, column]`.
    pub label: Array3<u32>,
}

/// Reads `case`'s image and label, aligns the label to the image grid and puts both in
/// the model frame. `cosam eval` and `cosam export-training` both read cases here, so
/// heads are trained on exactly the slices they are scored on, and `cosam segment` uses
/// the same frame.
///
/// # Errors
/// A message naming the file when the image or label cannot be read or aligned.
pub fn load_in_frame(case: &Case, limits: &crate::io::Limits) -> Result<FramedCase, String> {
    let volume =
        crate::io::read_with_limits(&case.image, limits).map_err(|e| format!("image: {e}"))?;
    let label =
        crate::io::read_with_limits(&case.label, limits).map_err(|e| format!("label: {e}"))?;
    let label =
        align_label(&label, &volume).map_err(|e| format!("{}: {e}", case.label.display()))?;
    let framed = crate::io::reorient(&volume, crate::io::AnatomicalAxis::Axial)
        .map_err(|e| format!("image: {e}"))?;
    let label = framed.map.storage_to_reoriented(&label);
    Ok(FramedCase {
        volume: framed.volume.into_owned(),
        label,
    })
}

/// Evaluates every method on every structure of one case. A broken case gives rows with
/// status `failed` and the reason, never an error that stops the run.
pub fn evaluate_case(
    segmenter: &Segmenter,
    case: &Case,
    options: &EvalOptions,
    cache: Option<&dyn EmbeddingCache>,
    heads: Option<&TaskHeads>,
) -> Vec<Row> {
    let all_failed = |reason: String| -> Vec<Row> {
        case.labels
            .keys()
            .flat_map(|s| options.methods.iter().map(move |m| (s, m)))
            .map(|(s, m)| Row::new(case, s, &m.name()).failed(reason.clone()))
            .collect()
    };
    let FramedCase { volume, label } = match load_in_frame(case, &options.limits) {
        Ok(c) => c,
        Err(e) => return all_failed(e),
    };
    let map = match segmenter.intensity_map(&volume) {
        Ok(m) => m,
        Err(e) => return all_failed(e.to_string()),
    };
    let sp = volume.spacing();
    let spacing_mm = [sp.slice_mm, sp.row_mm, sp.column_mm];
    let mut rows = Vec::new();
    let mut reference_free: Vec<(Method, Array3<u8>, f64)> = Vec::new();
    for (structure, &value) in &case.labels {
        let reference = label.mapv(|v| u8::from(v == value));
        let ref_voxels = reference.iter().filter(|&&v| v != 0).count();
        let structure_heads = heads.and_then(|h| h.structure_index(structure).map(|i| (h, i)));
        let ctx = methods::Context {
            segmenter,
            volume: &volume,
            map: &map,
            cache,
            seed: seed_of(&case.id, structure),
            heads: structure_heads,
            loop_options: structure_heads.map(|(h, _)| {
                options
                    .correct
                    .with_error_threshold(options.error_threshold.unwrap_or(h.info.error_threshold))
            }),
            rounds: std::cell::OnceCell::new(),
        };
        for method in &options.methods {
            let mut row = Row::new(case, structure, &method.name());
            if ref_voxels == 0 {
                rows.push(row.failed(format!(
                    "label value {value} ({structure}) does not occur in {}",
                    case.label.display()
                )));
                continue;
            }
            if method.is_prompt_free() {
                if let (Some(h), None) = (heads, structure_heads) {
                    rows.push(row.failed(format!(
                        "the heads in {} have no structure '{structure}'",
                        h.dir().display()
                    )));
                    continue;
                }
            }
            let started = Instant::now();
            let reused = reference_free.iter().find(|(m, _, _)| m == method);
            let result = match reused {
                Some((_, pred, secs)) => Ok((pred.clone(), None, *secs)),
                None => methods::run(*method, &ctx, &reference).and_then(|(p, q)| {
                    let p = if options.cleanup.is_none() {
                        p
                    } else {
                        segmenter.mask_ops().clean(p, &options.cleanup)?
                    };
                    Ok((p, q, started.elapsed().as_secs_f64()))
                }),
            };
            match result {
                Ok((pred, quality, seconds)) => {
                    row.seconds = seconds;
                    row.quality = quality.map(|q| q.score);
                    match metrics::evaluate_case(&pred, &reference, &spacing_mm, &options.metrics) {
                        Ok(m) => {
                            row.status = "ok".into();
                            row.dice = m.dice;
                            row.iou = m.iou;
                            row.hd_mm = m.hd_mm;
                            row.hd95_mm = m.hd95_mm;
                            row.assd_mm = m.assd_mm;
                            row.nsd = m.nsd;
                            row.pred_voxels = m.prediction_voxels;
                            row.ref_voxels = m.reference_voxels;
                            rows.push(row);
                        }
                        Err(e) => rows.push(row.failed(format!("metrics: {e}"))),
                    }
                    if method.is_reference_free() && reused.is_none() {
                        reference_free.push((*method, pred, seconds));
                    }
                }
                Err(e) => rows.push(row.failed(e.to_string())),
            }
        }
    }
    rows
}

/// The label map on the image's voxel grid `[slice, row, col]`. A label with the image's
/// shape and affine is taken as it is; otherwise its grid must be the image grid with axes
/// permuted or flipped (as a LAS label map of a DICOM series is: same shape, rows
/// reversed), checked voxel by voxel through both affines.
pub fn align_label(label: &Volume, image: &Volume) -> Result<Array3<u32>, String> {
    let lv = label
        .voxels()
        .index_axis(Axis(3), 0)
        .mapv(|v| v.round().max(0.0) as u32);
    let (n, rows, cols) = (image.slices(), image.slice_size().0, image.slice_size().1);
    let same_grid = label
        .affine()
        .0
        .iter()
        .flatten()
        .zip(image.affine().0.iter().flatten())
        .all(|(a, b)| (a - b).abs() < 1e-3);
    if lv.dim() == (n, rows, cols) && same_grid {
        return Ok(lv);
    }
    let inverse = invert(label.affine()).ok_or("label affine is singular")?;
    let (ln, lr, lc) = lv.dim();
    let to_label = |i: [f64; 3]| inverse.apply(image.affine().apply(i));
    let mismatch = || {
        format!(
            "label grid {}x{}x{} (slices x rows x cols) does not match the image grid {n}x{rows}x{cols}",
            ln, lr, lc
        )
    };
    // the grid must map integer voxels to integer voxels inside the label volume
    for corner in [
        [0.0, 0.0, 0.0],
        [(cols - 1) as f64, (rows - 1) as f64, (n - 1) as f64],
    ] {
        let p = to_label(corner);
        let inside = p.iter().zip([lc, lr, ln]).all(|(v, len)| {
            (v.round() - v).abs() < 1e-2 && v.round() >= 0.0 && v.round() < len as f64
        });
        if !inside {
            return Err(mismatch());
        }
    }
    let mut out = Array3::<u32>::zeros((n, rows, cols));
    for ((z, r, c), o) in out.indexed_iter_mut() {
        let p = to_label([c as f64, r as f64, z as f64]);
        let [i, j, k] = p.map(|v| v.round());
        if i < 0.0 || j < 0.0 || k < 0.0 || i as usize >= lc || j as usize >= lr || k as usize >= ln
        {
            return Err(mismatch());
        }
        *o = lv[[k as usize, j as usize, i as usize]];
    }
    Ok(out)
}

/// Inverse of an affine (3x3 linear part plus translation), if it is invertible.
fn invert(a: &Affine) -> Option<Affine> {
    let m = a.0;
    let det = a.determinant();
    if det.abs() < 1e-12 {
        return None;
    }
    // inverse of the 3x3 part from cofactors (cyclic indices give the signs)
    let cofactor = |r: usize, c: usize| {
        let (r1, r2) = ((c + 1) % 3, (c + 2) % 3);
        let (c1, c2) = ((r + 1) % 3, (r + 2) % 3);
        (m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]) / det
    };
    let mut inv = [[0.0; 4]; 4];
    for (r, row) in inv.iter_mut().enumerate().take(3) {
        for (c, v) in row.iter_mut().enumerate().take(3) {
            *v = cofactor(r, c);
        }
        row[3] = -(0..3).map(|c| row[c] * m[c][3]).sum::<f64>();
    }
    inv[3][3] = 1.0;
    Some(Affine(inv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_inverse_round_trips() {
        let a = Affine([
            [-0.98, 0.0, 0.0, 249.5],
            [0.0, -0.98, 0.0, 437.5],
            [0.0, 0.0, 2.0, -766.5],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        let inv = invert(&a).unwrap();
        let p = a.apply([12.0, 300.0, 7.0]);
        let back = inv.apply(p);
        for (x, y) in back.iter().zip([12.0, 300.0, 7.0]) {
            assert!((x - y).abs() < 1e-9);
        }
        let singular = Affine([
            [1.0, 0.0, 0.0, 0.0],
            [2.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        assert!(invert(&singular).is_none());
    }

    fn volume(values: ndarray::Array3<f32>, affine: Affine) -> Volume {
        let (n, r, c) = values.dim();
        let spacing = crate::io::Spacing {
            column_mm: 1.0,
            row_mm: 1.0,
            slice_mm: 1.0,
        };
        Volume::new(
            values.into_shape_with_order((n, r, c, 1)).unwrap(),
            spacing,
            affine,
            crate::io::Modality::Mr,
            "v".into(),
        )
        .unwrap()
    }

    #[test]
    fn label_with_same_shape_but_flipped_rows_is_realigned() {
        // image rows run towards -y (as a DICOM series' rows do in RAS); the label's j axis
        // runs towards +y over the same 4 rows
        let image_affine = Affine([
            [1.0, 0.0, 0.0, 0.0],
            [0.0, -1.0, 0.0, 3.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        let label_affine = Affine::from_spacing(crate::io::Spacing {
            column_mm: 1.0,
            row_mm: 1.0,
            slice_mm: 1.0,
        });
        let image = volume(ndarray::Array3::zeros((2, 4, 3)), image_affine);
        let mut lab = ndarray::Array3::<f32>::zeros((2, 4, 3));
        lab[[1, 0, 2]] = 5.0; // label row 0 is image row 3
        let aligned = align_label(&volume(lab.clone(), label_affine), &image).unwrap();
        assert_eq!(aligned[[1, 3, 2]], 5);
        assert_eq!(aligned.iter().filter(|&&v| v != 0).count(), 1);
        // same affine: taken as it is
        let same = align_label(&volume(lab, image_affine), &image).unwrap();
        assert_eq!(same[[1, 0, 2]], 5);
    }

    #[test]
    fn seeds_differ_by_case_and_structure() {
        assert_ne!(seed_of("a", "liver"), seed_of("a", "spleen"));
        assert_eq!(seed_of("a", "liver"), seed_of("a", "liver"));
    }
}
