//! Evaluation methods, by name. Each turns a volume (and, for the oracle methods, the
//! reference mask of one structure) into a predicted mask.
//!
//! - `full-box`: LiteMedSAM with a whole-slice box on every slice, the naive prompt-free
//!   baseline (it cannot tell structures apart, nor say "nothing here").
//! - `gt-box[:J]`: the reference's bounding box on every slice that holds the structure,
//!   each side moved by a seeded uniform integer in [-J, J] pixels (default J = 0);
//!   slices without it predict nothing. The upper bound a clinician's box gives.
//! - `gt-box-3d`: one 3-D box from the reference, as LiteMedSAM's 3-D inference: the middle
//!   slice of the box's z-range is segmented with its 2-D box, then each neighbouring slice
//!   uses the bounding box of the previous slice's prediction (the 3-D box's 2-D extent when
//!   that prediction is empty), up to the box's z-range.
//! - `coarse`: CoSAM's prompt-free mask (task decoder, no prompt), no correction.
//! - `corrected`: the coarse mask XOR the error decoder's prediction, no re-prompting.
//! - `cosam:T` (`cosam` = `cosam:4`): the self-correcting loop with at most T rounds and
//!   the early stop rule (what `cosam segment` returns by default).
//! - `cosam-fixed:T`: the loop's mask after exactly T rounds, no stop rule
//!   (`cosam segment --fixed-rounds`).
//! - `cosam-silent:T`: the stop rule, except that a slice whose coarse mask gets no
//!   predicted error runs rounds while the error head stays silent
//!   ([`crate::correct::CorrectOptions::silent_rounds`]).
//!
//! The prompt-free methods need CoSAM heads; all of them are read off one run of the loop
//! per slice (every round kept, no early stop), which gives exactly what each would
//! compute on its own (see [`crate::correct::chosen_round`]).

use std::str::FromStr;

use ndarray::{s, Array2, Array3, ArrayView2, Axis};

use std::cell::OnceCell;

use crate::correct::{chosen_round, correct_slice, CorrectOptions, Quality, SliceCorrection};
use crate::io::Volume;
use crate::model::{BoxXyxy, Prompts, TaskHeads};
use crate::pipeline::{EmbeddingCache, Segmenter};
use crate::post::{bounds, BACKGROUND_LOGIT};
use crate::preprocess::{IntensityMap, Transform, MODEL_SIZE};
use crate::Result;

/// A method of `cosam eval`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub enum Method {
    /// Whole-slice box on every slice.
    FullBox,
    /// Reference box per slice, with jitter in pixels.
    GtBox {
        /// Largest shift of each side, pixels.
        jitter_px: u32,
    },
    /// One reference 3-D box, propagated slice to slice.
    GtBox3d,
    /// CoSAM's prompt-free coarse mask.
    Coarse,
    /// The coarse mask corrected once by the error decoder, without re-prompting.
    Corrected,
    /// The self-correcting loop: `cosam:T` with the stop rule, `cosam-fixed:T` without.
    Cosam {
        /// Most rounds (exactly this many without the stop rule).
        rounds: u32,
        /// Whether the stop rule picks the round ([`chosen_round`]).
        stop_early: bool,
        /// Whether the stop rule runs rounds while the error head is silent.
        silent_rounds: bool,
    },
}

/// Rounds of `cosam` without `:T` (CoSAM's default).
pub const COSAM_DEFAULT_ROUNDS: u32 = 4;

impl Method {
    /// The method's name as written on the command line.
    pub fn name(&self) -> String {
        match self {
            Method::FullBox => "full-box".into(),
            Method::GtBox { jitter_px: 0 } => "gt-box".into(),
            Method::GtBox { jitter_px } => format!("gt-box:{jitter_px}"),
            Method::GtBox3d => "gt-box-3d".into(),
            Method::Coarse => "coarse".into(),
            Method::Corrected => "corrected".into(),
            Method::Cosam {
                rounds,
                stop_early: true,
                silent_rounds: false,
            } => format!("cosam:{rounds}"),
            Method::Cosam {
                rounds,
                stop_early: true,
                silent_rounds: true,
            } => format!("cosam-silent:{rounds}"),
            Method::Cosam {
                rounds,
                stop_early: false,
                ..
            } => format!("cosam-fixed:{rounds}"),
        }
    }

    /// True for the methods that need CoSAM heads.
    pub fn is_prompt_free(&self) -> bool {
        matches!(
            self,
            Method::Coarse | Method::Corrected | Method::Cosam { .. }
        )
    }

    /// True when the prediction does not depend on the reference (so one run serves
    /// every structure of a case).
    pub fn is_reference_free(&self) -> bool {
        matches!(self, Method::FullBox)
    }
}

/// The methods `cosam eval` knows.
pub const METHOD_NAMES: &[&str] = &[
    "full-box",
    "gt-box",
    "gt-box:J",
    "gt-box-3d",
    "coarse",
    "corrected",
    "cosam:T",
    "cosam-fixed:T",
    "cosam-silent:T",
];

/// The T of `cosam:T`, `cosam-fixed:T` and `cosam-silent:T` (`name` is the whole method,
/// for the message).
fn parse_rounds(name: &str, t: &str) -> std::result::Result<u32, String> {
    match t.parse::<u32>() {
        Ok(rounds @ 1..=16) => Ok(rounds),
        _ => Err(format!("'{name}': T must be 1 to 16")),
    }
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "full-box" => Ok(Method::FullBox),
            "gt-box" => Ok(Method::GtBox { jitter_px: 0 }),
            "gt-box-3d" => Ok(Method::GtBox3d),
            "coarse" => Ok(Method::Coarse),
            "corrected" => Ok(Method::Corrected),
            "cosam" => Ok(Method::Cosam {
                rounds: COSAM_DEFAULT_ROUNDS,
                stop_early: true,
                silent_rounds: false,
            }),
            other => {
                let unknown = || {
                    format!(
                        "unknown method '{other}'; available: {}",
                        METHOD_NAMES.join(", ")
                    )
                };
                if let Some(j) = other.strip_prefix("gt-box:") {
                    j.parse::<u32>()
                        .map(|jitter_px| Method::GtBox { jitter_px })
                        .map_err(|_| unknown())
                } else if let Some(t) = other.strip_prefix("cosam:") {
                    parse_rounds(other, t).map(|rounds| Method::Cosam {
                        rounds,
                        stop_early: true,
                        silent_rounds: false,
                    })
                } else if let Some(t) = other.strip_prefix("cosam-fixed:") {
                    parse_rounds(other, t).map(|rounds| Method::Cosam {
                        rounds,
                        stop_early: false,
                        silent_rounds: false,
                    })
                } else if let Some(t) = other.strip_prefix("cosam-silent:") {
                    parse_rounds(other, t).map(|rounds| Method::Cosam {
                        rounds,
                        stop_early: true,
                        silent_rounds: true,
                    })
                } else {
                    Err(unknown())
                }
            }
        }
    }
}

/// Bounding box `[x0, y0, x1, y1]` (inclusive pixels) of a 2-D mask, from [`bounds`].
fn bounding_box(mask: ArrayView2<u8>) -> Option<[usize; 4]> {
    bounds(mask.insert_axis(Axis(0)))
        .first()
        .copied()
        .flatten()
        .map(|b| [b.column_min, b.row_min, b.column_max, b.row_max])
}

/// splitmix64: a tiny seeded generator so jitter is identical on every run.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn jittered(b: [usize; 4], jitter: u32, seed: u64, rows: usize, cols: usize) -> [f64; 4] {
    let mut out = b.map(|v| v as f64);
    if jitter > 0 {
        let span = 2 * u64::from(jitter) + 1;
        for (i, v) in out.iter_mut().enumerate() {
            let shift = (splitmix(seed.wrapping_add(i as u64)) % span) as f64 - f64::from(jitter);
            *v += shift;
        }
    }
    let (w, h) = ((cols - 1) as f64, (rows - 1) as f64);
    let [x0, y0, x1, y1] = out;
    let (x0, x1) = (x0.clamp(0.0, w), x1.clamp(0.0, w));
    let (y0, y1) = (y0.clamp(0.0, h), y1.clamp(0.0, h));
    [x0.min(x1), y0.min(y1), x0.max(x1), y0.max(y1)]
}

fn box_prompt(b: [f64; 4]) -> Result<Prompts> {
    Ok(Prompts::from_box(BoxXyxy::new(b[0], b[1], b[2], b[3])?))
}

/// Everything a method needs to run on one case.
pub struct Context<'a> {
    /// The loaded model.
    pub segmenter: &'a Segmenter,
    /// The case's image.
    pub volume: &'a Volume,
    /// Its intensity mapping, computed once.
    pub map: &'a IntensityMap,
    /// Embedding cache, if any.
    pub cache: Option<&'a dyn EmbeddingCache>,
    /// Seed for jitter (derived from the case and structure).
    pub seed: u64,
    /// CoSAM heads and the structure's index in them, for the prompt-free methods.
    pub heads: Option<(&'a TaskHeads, usize)>,
    /// The loop's top-K and threshold (rounds and stopping are set per method).
    pub loop_options: Option<CorrectOptions>,
    /// The loop's run on every slice, made by the first prompt-free method.
    pub rounds: OnceCell<Vec<Option<SliceCorrection>>>,
}

impl Context<'_> {
    fn predict_slice(&self, z: usize, b: [f64; 4]) -> Result<Array2<u8>> {
        let embedded = self
            .segmenter
            .embed_slice_cached(self.volume, z, self.map, self.cache)?;
        Ok(self
            .segmenter
            .predict(&embedded, &box_prompt(b)?, None)?
            .mask
            .0)
    }

    /// Every round of the loop on every slice (`None` for a constant slice), computed once.
    fn loop_rounds(&self) -> Result<&Vec<Option<SliceCorrection>>> {
        if let Some(r) = self.rounds.get() {
            return Ok(r);
        }
        let Some((heads, structure)) = self.heads else {
            return Err(super::EvalError::NoHeads.into());
        };
        let options = self
            .loop_options
            .unwrap_or_default()
            .with_max_rounds(MAX_EVAL_ROUNDS)
            .with_keep_rounds(true)
            .with_stop_early(false);
        let mut out = Vec::with_capacity(self.volume.slices());
        self.segmenter
            .visit_slices(self.volume, None, self.map, self.cache, |_, embedded| {
                out.push(match embedded.embedding() {
                    Some(e) => Some(correct_slice(
                        &self.segmenter.loop_models(heads),
                        e,
                        embedded.transform(),
                        structure,
                        &options,
                    )?),
                    None => None,
                });
                Ok(())
            })?;
        Ok(self.rounds.get_or_init(|| out))
    }
}

/// Slices turned from logits to masks in one call (16 MiB of logits).
const MASK_CHUNK_SLICES: usize = 64;

/// Rounds the evaluation runs once per slice; `cosam:T` above this reuses the last.
const MAX_EVAL_ROUNDS: usize = 4;

/// The model-frame map a prompt-free method returns for one slice, with the index of its
/// round in the trace (`None` for the corrected mask, which is no round).
fn prompt_free_map(method: Method, c: &SliceCorrection) -> Option<(Option<usize>, Array2<f32>)> {
    let counts: Vec<usize> = c
        .trace
        .iter()
        .map(|r| r.error_px.unwrap_or(usize::MAX))
        .collect();
    let round = |r: usize| c.maps.get(r).map(|m| (Some(r), m.clone()));
    match method {
        Method::Coarse => round(0),
        Method::Corrected => match &c.corrected {
            Some(m) => Some((None, m.mapv(|v| if v != 0 { 1.0 } else { -1.0 }))),
            None => round(0),
        },
        Method::Cosam {
            rounds,
            stop_early,
            silent_rounds,
        } => round(chosen_round(
            &counts,
            rounds as usize,
            stop_early,
            silent_rounds,
        )),
        _ => None,
    }
}

/// Runs `method` on a volume; `reference` is the structure's binary mask `[slice, row, col]`.
/// Returns the prediction and, for the prompt-free methods that score their masks, the
/// volume's quality.
///
/// # Errors
/// Inference failures.
pub fn run(
    method: Method,
    ctx: &Context<'_>,
    reference: &Array3<u8>,
) -> Result<(Array3<u8>, Option<Quality>)> {
    let (n, rows, cols) = reference.dim();
    let mut pred = Array3::<u8>::zeros((n, rows, cols));
    let mut quality = None;
    match method {
        Method::FullBox => {
            let full = [0.0, 0.0, (cols - 1) as f64, (rows - 1) as f64];
            for z in 0..n {
                pred.slice_mut(s![z, .., ..])
                    .assign(&ctx.predict_slice(z, full)?);
            }
        }
        Method::GtBox { jitter_px } => {
            for z in 0..n {
                if let Some(b) = bounding_box(reference.slice(s![z, .., ..])) {
                    let seed = splitmix(ctx.seed ^ (z as u64).wrapping_mul(0x1000_0001));
                    let bx = jittered(b, jitter_px, seed, rows, cols);
                    pred.slice_mut(s![z, .., ..])
                        .assign(&ctx.predict_slice(z, bx)?);
                }
            }
        }
        Method::Coarse | Method::Corrected | Method::Cosam { .. } => {
            let mut maps: Vec<Option<Array2<f32>>> = Vec::with_capacity(n);
            let mut returned = Vec::new();
            for c in ctx.loop_rounds()? {
                let map = c.as_ref().and_then(|c| {
                    let (round, map) = prompt_free_map(method, c)?;
                    returned.extend(round.and_then(|r| c.trace.get(r)));
                    Some(map)
                });
                maps.push(map);
            }
            // to masks through the segmenter's one path, a bounded batch at a time
            let transform = Transform::new(rows, cols);
            for (i, chunk) in maps.chunks(MASK_CHUNK_SLICES).enumerate() {
                let mut logits = Array3::<f32>::from_elem(
                    (chunk.len(), MODEL_SIZE, MODEL_SIZE),
                    BACKGROUND_LOGIT,
                );
                for (j, map) in chunk.iter().enumerate() {
                    if let Some(map) = map {
                        logits.slice_mut(s![j, .., ..]).assign(map);
                    }
                }
                let z0 = i * MASK_CHUNK_SLICES;
                pred.slice_mut(s![z0..z0 + chunk.len(), .., ..])
                    .assign(&ctx.segmenter.logits_to_masks(logits.view(), &transform)?);
            }
            if method != Method::Corrected {
                quality = Some(Quality::from_rounds(returned));
            }
        }
        Method::GtBox3d => {
            let slices: Vec<usize> = (0..n)
                .filter(|&z| reference.slice(s![z, .., ..]).iter().any(|&v| v != 0))
                .collect();
            let (Some(&z0), Some(&z1)) = (slices.first(), slices.last()) else {
                return Ok((pred, None));
            };
            let Some(b2d) = bounding_box(reference.max_projection().view()) else {
                return Ok((pred, None));
            };
            let box3 = b2d.map(|v| v as f64);
            let mid = (z0 + z1) / 2;
            let first = ctx.predict_slice(mid, box3)?;
            pred.slice_mut(s![mid, .., ..]).assign(&first);
            for range in [
                (mid + 1..=z1).collect::<Vec<_>>(),
                (z0..mid).rev().collect(),
            ] {
                let mut prev = first.clone();
                for z in range {
                    let b = bounding_box(prev.view()).map_or(box3, |b| b.map(|v| v as f64));
                    let m = ctx.predict_slice(z, b)?;
                    pred.slice_mut(s![z, .., ..]).assign(&m);
                    prev = m;
                }
            }
        }
    }
    Ok((pred, quality))
}

/// Maximum over slices of a `[slice, row, col]` mask.
trait MaxProjection {
    fn max_projection(&self) -> Array2<u8>;
}

impl MaxProjection for Array3<u8> {
    fn max_projection(&self) -> Array2<u8> {
        let (_, rows, cols) = self.dim();
        let mut out = Array2::<u8>::zeros((rows, cols));
        for slice in self.outer_iter() {
            out.zip_mut_with(&slice, |o, &v| *o = (*o).max(u8::from(v != 0)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_round_trip() {
        for name in [
            "full-box",
            "gt-box",
            "gt-box:5",
            "gt-box-3d",
            "coarse",
            "corrected",
            "cosam:2",
            "cosam-fixed:3",
            "cosam-silent:4",
        ] {
            assert_eq!(name.parse::<Method>().unwrap().name(), name);
        }
        assert!("magic"
            .parse::<Method>()
            .unwrap_err()
            .contains("available: full-box"));
        assert_eq!("cosam".parse::<Method>().unwrap().name(), "cosam:4");
        assert!("cosam:0".parse::<Method>().is_err());
        assert_eq!(
            "cosam-fixed:3".parse::<Method>().unwrap(),
            Method::Cosam {
                rounds: 3,
                stop_early: false,
                silent_rounds: false,
            }
        );
        assert!("cosam-fixed:17".parse::<Method>().is_err());
    }

    #[test]
    fn bounding_box_is_inclusive() {
        let mut m = Array2::<u8>::zeros((10, 8));
        m[[2, 3]] = 1;
        m[[6, 5]] = 1;
        assert_eq!(bounding_box(m.view()), Some([3, 2, 5, 6]));
        assert_eq!(bounding_box(Array2::<u8>::zeros((3, 3)).view()), None);
    }

    #[test]
    fn jitter_is_seeded_bounded_and_clamped() {
        let a = jittered([10, 10, 20, 20], 3, 42, 64, 64);
        assert_eq!(a, jittered([10, 10, 20, 20], 3, 42, 64, 64));
        assert!(a
            .iter()
            .zip([10.0, 10.0, 20.0, 20.0])
            .all(|(x, y)| (x - y).abs() <= 3.0));
        let edge = jittered([0, 0, 63, 63], 5, 7, 64, 64);
        assert!(edge.iter().all(|v| (0.0..=63.0).contains(v)));
        assert_eq!(jittered([1, 2, 3, 4], 0, 9, 64, 64), [1.0, 2.0, 3.0, 4.0]);
    }
}
