//! The self-correcting loop of CoSAM on one embedded slice, in the 256x256 model frame.
//!
//! ```text
//! coarse = task decoder(embedding, no prompt)
//! repeat up to T rounds:
//!     error     = error decoder(embedding, mask)            (logit > 0: predicted wrong)
//!     with the stop rule: stop when the predicted error count did not decrease
//!     corrected = mask XOR error
//!     prompts   = top-K error pixels, each labelled the opposite of `mask` where its
//!                 error probability passes 0.5 (the paper's rule, whatever the flip
//!                 threshold; the first heads label by `corrected`, as trained), the box
//!                 of the largest 8-connected component of `corrected`, `corrected` as
//!                 mask prompt
//!     mask      = task decoder(embedding, prompts)
//! ```
//! The encoder runs once per slice (the caller's embedding); each round costs one error
//! decoder and one decoder call. By default the stop rule (`CorrectOptions::stop_early`)
//! ends the loop when a round does not lower the predicted error count and returns the
//! mask with the fewest predicted error pixels; without it, the mask after T rounds.

use std::time::Instant;

use ndarray::{s, Array2, ArrayView2, Axis};

use crate::model::{ImageEmbedding, MaskDecoder, ModelError, ModelPrompts, TaskHeads};
use crate::post::{bounds, Connectivity, MaskOps, PostError, BACKGROUND_LOGIT, THRESHOLD_LOGIT};
use crate::preprocess::Transform;

/// Failure inside the loop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CorrectError {
    /// A model call failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A mask operation failed.
    #[error(transparent)]
    Post(#[from] PostError),
    /// The structure index is not one of the heads' structures.
    #[error("structure {index} is out of range: the heads segment {count} structures")]
    Structure {
        /// Index asked for.
        index: usize,
        /// Structures the heads know.
        count: usize,
    },
}

/// Which decoder makes each round's mask from the corrected mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refine {
    /// CoSAM: the task decoder with the top-K error points, the box of the corrected
    /// mask's largest component and the corrected mask as mask prompt.
    #[default]
    Task,
    /// The task decoder with the error points and the box, without the mask prompt (which
    /// it tends to copy).
    TaskPoints,
    /// LiteMedSAM's own decoder with only that box: the prompt it was trained on, which
    /// carries across domains best (see the README's results).
    BaseBox,
}

/// The models one run of the loop needs.
#[derive(Clone, Copy)]
pub struct LoopModels<'a> {
    /// The task's heads.
    pub heads: &'a TaskHeads,
    /// LiteMedSAM's promptable decoder (for [`Refine::BaseBox`]).
    pub base: &'a MaskDecoder,
    /// Mask operations for prompt generation.
    pub ops: &'a dyn MaskOps,
}

impl std::fmt::Debug for LoopModels<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopModels")
            .field("task", &self.heads.info.task)
            .finish()
    }
}

/// Options of the loop; the defaults are CoSAM's (K = 64, T = 4, threshold 0.5).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct CorrectOptions {
    /// Error points per round (the top-K pixels by error probability).
    pub top_k: usize,
    /// Most correction rounds after the coarse mask; 0 returns the coarse mask.
    pub max_rounds: usize,
    /// Error probability above which a pixel is predicted wrong.
    pub error_threshold: f32,
    /// Stop when a round does not lower the predicted error count and return the mask with
    /// the fewest predicted errors (the default); when false, run `max_rounds` rounds and
    /// return the last mask (CoSAM's fixed T). On the leave-one-domain-out folds no case
    /// lost more than 0.05 Dice to the stop rule, while the fixed T lost up to 0.089 on
    /// three abdominal cases for a mean gain within 0.006 of the rule's
    /// (docs/results.md, "A loop that does not make a mask worse").
    pub stop_early: bool,
    /// With the stop rule: a slice whose coarse mask gets no predicted error (a silent
    /// error head: its count cannot fall, so the rule alone would keep the coarse mask)
    /// runs rounds while the head stays silent and returns the last such mask, as CoSAM's
    /// fixed T would; a round the head finds errors in ends the loop and is not taken.
    pub silent_rounds: bool,
    /// Return the corrected mask of round 1 (coarse XOR error) without re-prompting: the
    /// `corrected` ablation.
    pub correction_only: bool,
    /// Which decoder refines.
    pub refine: Refine,
    /// Keep every round's map and the first correction in the result (for `--trace` and
    /// for evaluating every round from one run).
    pub keep_rounds: bool,
    /// A coarse mask smaller than this (pixels of the 256x256 model frame) is taken as
    /// "structure absent" and returned without correction (0, the default: always
    /// correct). Off by default because on unseen domains the loop's gain comes largely
    /// from structures the coarse pass nearly missed (README, Results with CoSAM).
    pub min_coarse_px: usize,
    /// A slice whose coarse mask is empty and whose largest coarse logit is below this is
    /// taken as "structure absent": its empty mask is returned with no rounds and no error
    /// check. `None`: every slice gets rounds. The default, [`DEFAULT_ABSENT_LOGIT`], was
    /// chosen on the leave-one-domain-out folds to keep every slice that holds the
    /// structure (docs/performance.md, "Prompt-free volumes: less work per slice").
    pub absent_logit: Option<f32>,
    /// Run the rounds after a mask came back unchanged instead of copying its result. The
    /// masks, IoUs and error counts are the same either way (a round depends on the binary
    /// mask alone); on for timing every round as the paper runs them, or to check that.
    pub run_converged_rounds: bool,
    /// With the fixed T (no `stop_early`): a round that changes at most this fraction of
    /// its mask's pixels ends the loop too, and its mask stands for the rounds left. 0
    /// stops only on an unchanged mask, which changes nothing; the default,
    /// [`DEFAULT_CONVERGED_FRACTION`], left the benchmark's Dice unchanged within its
    /// 95% CI (docs/performance.md, "Prompt-free volumes: less work per slice").
    pub converged_fraction: f32,
}

impl Default for CorrectOptions {
    fn default() -> Self {
        CorrectOptions {
            top_k: 64,
            max_rounds: 4,
            error_threshold: 0.5,
            stop_early: true,
            silent_rounds: false,
            correction_only: false,
            refine: Refine::Task,
            keep_rounds: false,
            min_coarse_px: 0,
            absent_logit: Some(DEFAULT_ABSENT_LOGIT),
            run_converged_rounds: false,
            converged_fraction: DEFAULT_CONVERGED_FRACTION,
        }
    }
}

impl CorrectOptions {
    /// At most `rounds` rounds.
    pub fn with_max_rounds(mut self, rounds: usize) -> Self {
        self.max_rounds = rounds;
        self
    }

    /// Top-K error points per round.
    pub fn with_top_k(mut self, k: usize) -> Self {
        self.top_k = k;
        self
    }

    /// Error probability threshold, clamped to (0, 1).
    pub fn with_error_threshold(mut self, p: f32) -> Self {
        self.error_threshold = p.clamp(1e-4, 1.0 - 1e-4);
        self
    }

    /// Whether to stop when the predicted error count stops decreasing.
    pub fn with_stop_early(mut self, stop: bool) -> Self {
        self.stop_early = stop;
        self
    }

    /// Whether the stop rule runs rounds on slices whose coarse mask has no predicted error.
    pub fn with_silent_rounds(mut self, run: bool) -> Self {
        self.silent_rounds = run;
        self
    }

    /// Whether to stop after the first correction, without re-prompting.
    pub fn with_correction_only(mut self, only: bool) -> Self {
        self.correction_only = only;
        self
    }

    /// Whether to keep every round's map.
    pub fn with_keep_rounds(mut self, keep: bool) -> Self {
        self.keep_rounds = keep;
        self
    }

    /// Which decoder refines.
    pub fn with_refine(mut self, refine: Refine) -> Self {
        self.refine = refine;
        self
    }

    /// Smallest coarse mask, in model-frame pixels, that the loop corrects.
    pub fn with_min_coarse_px(mut self, px: usize) -> Self {
        self.min_coarse_px = px;
        self
    }

    /// Skip the rounds on slices whose coarse logits all stay below `logit` (`None`: never).
    pub fn with_absent_logit(mut self, logit: Option<f32>) -> Self {
        self.absent_logit = logit;
        self
    }

    /// Run (`true`) or copy (`false`, the default) the rounds after a mask came back
    /// unchanged.
    pub fn with_run_converged_rounds(mut self, run: bool) -> Self {
        self.run_converged_rounds = run;
        self
    }

    /// End the fixed-T loop once a round changes at most `fraction` of its mask's pixels.
    pub fn with_converged_fraction(mut self, fraction: f32) -> Self {
        self.converged_fraction = fraction;
        self
    }

    fn error_logit(&self) -> f32 {
        logit(self.error_threshold)
    }
}

/// The logit of probability `p`, kept finite.
fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-4, 1.0 - 1e-4);
    (p / (1.0 - p)).ln()
}

/// One mask of the loop: round 0 is the coarse mask.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Round {
    /// 0 for the coarse mask, then 1, 2, ...
    pub round: usize,
    /// Foreground pixels in the model frame.
    pub area_px: usize,
    /// Pixels the error decoder predicts wrong in this mask (model frame); `None` when the
    /// loop ended before checking it.
    pub error_px: Option<usize>,
    /// The IoU head's score of this mask (`None` for the `corrected` mask, which no
    /// decoder call scored).
    pub iou: Option<f32>,
    /// Time of the calls that made and checked this mask, seconds.
    pub seconds: f64,
}

/// The loop's result on one slice.
#[derive(Debug, Clone)]
pub struct SliceCorrection {
    /// Model-frame map of the returned mask: decoder logits, or +-1 for a corrected mask
    /// (> 0 is foreground either way; the padding outside the slice is negative).
    pub logits: Array2<f32>,
    /// Every mask the loop made, in order.
    pub trace: Vec<Round>,
    /// Index into `trace` of the returned mask.
    pub chosen: usize,
    /// Model-frame map of every round, as `logits` (only when asked for: `--trace`,
    /// evaluation of every round).
    pub maps: Vec<Array2<f32>>,
    /// The first correction, coarse XOR predicted error (only when asked for).
    pub corrected: Option<Array2<u8>>,
}

impl SliceCorrection {
    /// The returned round.
    pub fn final_round(&self) -> &Round {
        &self.trace[self.chosen]
    }
}

/// Largest coarse logit under which an empty coarse mask skips the loop
/// ([`CorrectOptions::absent_logit`]).
pub const DEFAULT_ABSENT_LOGIT: f32 = -2.0;

/// Share of a mask's pixels under which a round's change ends the fixed-T loop
/// ([`CorrectOptions::converged_fraction`]).
pub const DEFAULT_CONVERGED_FRACTION: f32 = 0.01;

/// Quality score below which a mask is flagged for review (`--review-threshold`).
pub const DEFAULT_REVIEW_THRESHOLD: f64 = 0.5;

/// How much to trust a prompt-free mask, from the rounds the loop returned (one per
/// slice): the error decoder's predicted error fraction and the IoU head.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Quality {
    /// Predicted error pixels over (mask + predicted error) pixels, model frame, 0..1.
    pub predicted_error_fraction: f64,
    /// The IoU head's score, weighted by mask area; `None` when every mask is empty.
    pub iou_head: Option<f64>,
    /// `(1 - predicted_error_fraction) * iou_head` (without the IoU factor for an empty
    /// mask), 0..1: higher is better.
    pub score: f64,
}

impl Quality {
    /// The quality of the masks of `rounds` taken together (a volume's slices).
    pub fn from_rounds<'a>(rounds: impl IntoIterator<Item = &'a Round>) -> Quality {
        let (mut area, mut wrong, mut iou_area) = (0.0f64, 0.0f64, 0.0f64);
        for r in rounds {
            let a = r.area_px as f64;
            area += a;
            wrong += r.error_px.unwrap_or(0) as f64;
            iou_area += f64::from(r.iou.unwrap_or(0.0).clamp(0.0, 1.0)) * a;
        }
        let predicted_error_fraction = if area + wrong > 0.0 {
            wrong / (area + wrong)
        } else {
            0.0
        };
        let iou_head = (area > 0.0).then(|| iou_area / area);
        Quality {
            predicted_error_fraction,
            iou_head,
            score: (1.0 - predicted_error_fraction) * iou_head.unwrap_or(1.0),
        }
    }

    /// Whether a person should check the mask: `score` below `threshold`.
    pub fn needs_review(&self, threshold: f64) -> bool {
        self.score < threshold
    }
}

/// Runs the loop for structure `structure` of `heads` on one slice. `transform` gives the
/// slice's place in the model frame: prompts and error counts stay inside it.
///
/// # Errors
/// [`CorrectError`] when a model call or mask operation fails, or the structure is unknown.
pub fn correct_slice(
    models: &LoopModels<'_>,
    embedding: &ImageEmbedding,
    transform: &Transform,
    structure: usize,
    options: &CorrectOptions,
) -> Result<SliceCorrection, CorrectError> {
    let keep_rounds = options.keep_rounds;
    let LoopModels { heads, base, ops } = *models;
    let count = heads.info.structures.len();
    if structure >= count {
        return Err(CorrectError::Structure {
            index: structure,
            count,
        });
    }
    let (rows, cols) = (transform.scaled_rows, transform.scaled_cols);
    let threshold = options.error_logit();
    let label_logit = heads.info.point_label_threshold.map(logit);
    // errors predicted inside the slice for `mask`, with the time it took
    let check = |mask: &Array2<u8>| -> Result<(Array2<f32>, Array2<u8>, f64), CorrectError> {
        let started = Instant::now();
        let error = heads
            .error
            .predict(embedding, mask.mapv(f32::from).view(), structure)?;
        let wrong = outside_set(error.mapv(|v| u8::from(v > threshold)), rows, cols, 0);
        Ok((error, wrong, started.elapsed().as_secs_f64()))
    };
    let started = Instant::now();
    let coarse =
        heads
            .decoder
            .predict_structure(embedding, &ModelPrompts::default(), None, structure)?;
    let mut maps = vec![inside(coarse.logits, rows, cols)];
    let mut mask = binary(maps[0].view());
    let mut trace = vec![Round {
        round: 0,
        area_px: count_on(mask.view()),
        error_px: None,
        iou: Some(coarse.iou),
        seconds: started.elapsed().as_secs_f64(),
    }];
    let mut first_correction = None;
    let absent = trace[0].area_px == 0
        && options
            .absent_logit
            .is_some_and(|below| maps[0].iter().all(|&v| v < below));
    let rounds = if absent || trace[0].area_px < options.min_coarse_px {
        0
    } else {
        options.max_rounds
    };
    let mut pending_check = !absent;
    for round in 1..=rounds {
        let (error, wrong, seconds) = check(&mask)?;
        let last = trace.len() - 1;
        let error_px = count_on(wrong.view());
        trace[last].error_px = Some(error_px);
        trace[last].seconds += seconds;
        pending_check = false;
        if options.stop_early && last > 0 {
            let silent = options.silent_rounds && trace[0].error_px == Some(0);
            let no_gain = trace[last - 1]
                .error_px
                .is_some_and(|before| error_px >= before);
            if (silent && error_px > 0) || (!silent && no_gain) {
                break;
            }
        }
        let started = Instant::now();
        let corrected = &mask ^ &wrong;
        if options.correction_only {
            trace.push(Round {
                round,
                area_px: count_on(corrected.view()),
                error_px: None,
                iou: None,
                seconds: started.elapsed().as_secs_f64(),
            });
            maps.push(corrected.mapv(|v| if v != 0 { 1.0 } else { -1.0 }));
            let chosen = trace.len() - 1;
            let (logits, maps) = take_chosen(maps, chosen, keep_rounds);
            return Ok(SliceCorrection {
                logits,
                trace,
                chosen,
                maps,
                corrected: keep_rounds.then_some(corrected),
            });
        }
        if round == 1 && keep_rounds {
            first_correction = Some(corrected.clone());
        }
        let labels = PointLabels {
            mask: &mask,
            corrected: &corrected,
            claim_logit: label_logit,
        };
        let out = match options.refine {
            Refine::Task | Refine::TaskPoints => {
                let prompts = correction_prompts(ops, &error, labels, rows, cols, options.top_k)?;
                let mask_prompt = corrected.mapv(f32::from);
                heads.decoder.predict_structure(
                    embedding,
                    &prompts,
                    (options.refine == Refine::Task).then(|| mask_prompt.view()),
                    structure,
                )?
            }
            Refine::BaseBox => {
                let prompts = correction_prompts(ops, &error, labels, rows, cols, 0)?;
                base.predict(embedding, &prompts, None)?
            }
        };
        maps.push(inside(out.logits, rows, cols));
        let previous = std::mem::replace(&mut mask, binary(maps[maps.len() - 1].view()));
        trace.push(Round {
            round,
            area_px: count_on(mask.view()),
            error_px: None,
            iou: Some(out.iou),
            seconds: started.elapsed().as_secs_f64(),
        });
        pending_check = true;
        let changed = if options.run_converged_rounds {
            usize::MAX
        } else {
            mask.iter().zip(&previous).filter(|(a, b)| a != b).count()
        };
        let tolerated = if options.stop_early {
            0.0
        } else {
            f64::from(options.converged_fraction) * trace[trace.len() - 1].area_px as f64
        };
        if changed == 0 || changed as f64 <= tolerated {
            let last = trace.len() - 1;
            if changed == 0 {
                // A round is a function of the binary mask alone (error map, points, box
                // and mask prompt all come from it), so a mask that came back unchanged
                // comes back unchanged from every later round, with the same logits, IoU
                // and error count. The rounds left are copies, not model calls (issue 18).
                trace[last].error_px = trace[last - 1].error_px;
            } else {
                let (_, wrong, seconds) = check(&mask)?;
                trace[last].error_px = Some(count_on(wrong.view()));
                trace[last].seconds += seconds;
            }
            pending_check = false;
            if !options.stop_early {
                let (repeat, map) = (trace[last], maps[last].clone());
                for later in round + 1..=rounds {
                    trace.push(Round {
                        round: later,
                        seconds: 0.0,
                        ..repeat
                    });
                    maps.push(map.clone());
                }
            }
            break;
        }
    }
    if pending_check {
        // the last mask is checked too, so the trace and the quality score have its count
        let (_, wrong, seconds) = check(&mask)?;
        let last = trace.len() - 1;
        trace[last].error_px = Some(count_on(wrong.view()));
        trace[last].seconds += seconds;
    }
    let counts: Vec<usize> = trace
        .iter()
        .map(|r| r.error_px.unwrap_or(usize::MAX))
        .collect();
    let chosen = chosen_round(
        &counts,
        options.max_rounds,
        options.stop_early,
        options.silent_rounds,
    );
    let (logits, maps) = take_chosen(maps, chosen, keep_rounds);
    Ok(SliceCorrection {
        logits,
        trace,
        chosen,
        maps,
        corrected: first_correction,
    })
}

/// The chosen round's map, and every map when they are kept (a copy only then).
fn take_chosen(
    mut maps: Vec<Array2<f32>>,
    chosen: usize,
    keep: bool,
) -> (Array2<f32>, Vec<Array2<f32>>) {
    if keep {
        (maps[chosen].clone(), maps)
    } else {
        (maps.swap_remove(chosen), Vec::new())
    }
}

/// The round the loop returns, from the predicted error count of each mask made
/// (`error_px[0]` is the coarse mask's). With `stop_early`, rounds run until one does not
/// lower the count (that round is still checked); then, among the rounds run and at most
/// `max_rounds`, the one with the fewest predicted errors, the earliest on ties (the stop
/// rule keeps the mask before a round that did not help). Without it, the last round
/// made, at most `max_rounds`. With `silent_rounds` and a coarse count of 0, the stop
/// rule takes the last round of the leading run of masks with no predicted error instead
/// ([`CorrectOptions::silent_rounds`]).
pub fn chosen_round(
    error_px: &[usize],
    max_rounds: usize,
    stop_early: bool,
    silent_rounds: bool,
) -> usize {
    let mut last = error_px.len().min(max_rounds + 1).saturating_sub(1);
    if !stop_early {
        return last;
    }
    if silent_rounds && error_px.first() == Some(&0) {
        return (1..=last)
            .take_while(|&t| error_px[t] == 0)
            .last()
            .unwrap_or(0);
    }
    if let Some(t) = (1..=last).find(|&t| error_px[t] >= error_px[t - 1]) {
        last = t;
    }
    (0..=last).min_by_key(|&i| error_px[i]).unwrap_or(0)
}

/// The masks a round's point prompts are labelled from.
struct PointLabels<'a> {
    mask: &'a Array2<u8>,
    corrected: &'a Array2<u8>,
    /// Heads trained with the paper's rule (`point_label_threshold`): a point is the
    /// opposite of `mask` where its error logit passes this. `None`: the label is
    /// `corrected` there, as the first heads were trained. The paper's rule matters when
    /// `corrected` flips at a higher threshold: labelling by `corrected` gives the points
    /// between the two thresholds the mask's own label, the very error they point at.
    claim_logit: Option<f32>,
}

impl PointLabels<'_> {
    fn label(&self, row: usize, column: usize, error_logit: f32) -> f32 {
        let positive = match self.claim_logit {
            Some(claim) => (self.mask[[row, column]] != 0) != (error_logit > claim),
            None => self.corrected[[row, column]] != 0,
        };
        f32::from(positive)
    }
}

/// CoSAM's prompts from one correction: the `k` pixels of highest error probability
/// inside the slice, labelled as [`PointLabels`] says, then the box of the largest
/// 8-connected component of the corrected mask (the slice when it is empty).
fn correction_prompts(
    ops: &dyn MaskOps,
    error_logits: &Array2<f32>,
    labels: PointLabels<'_>,
    rows: usize,
    cols: usize,
    k: usize,
) -> Result<ModelPrompts, PostError> {
    let mut prompts = ModelPrompts::default();
    let peaks = if k == 0 {
        Vec::new()
    } else {
        let region = error_logits.slice(s![..rows, ..cols]);
        ops.top_k(region.insert_axis(Axis(0)), k)?
    };
    for p in peaks {
        prompts.coords.push([p.column as f32, p.row as f32]);
        prompts
            .labels
            .push(labels.label(p.row, p.column, error_logits[[p.row, p.column]]));
    }
    let inside = labels.corrected.slice(s![..rows, ..cols]);
    let largest = ops.keep_largest(inside.insert_axis(Axis(0)), Connectivity::Planar)?;
    let (x0, y0, x1, y1) = match bounds(largest.view()).first().copied().flatten() {
        Some(b) => (b.column_min, b.row_min, b.column_max, b.row_max),
        None => (0, 0, cols - 1, rows - 1),
    };
    prompts.coords.push([x0 as f32, y0 as f32]);
    prompts.coords.push([x1 as f32, y1 as f32]);
    prompts.labels.extend([2.0, 3.0]);
    Ok(prompts)
}

/// `map` with the padding outside the slice's `rows x cols` set to `background`.
fn outside_set<T: Clone>(mut map: Array2<T>, rows: usize, cols: usize, background: T) -> Array2<T> {
    map.slice_mut(s![rows.., ..]).fill(background.clone());
    map.slice_mut(s![..rows, cols..]).fill(background);
    map
}

/// Logits with the padding outside the slice forced to background.
fn inside(logits: Array2<f32>, rows: usize, cols: usize) -> Array2<f32> {
    outside_set(logits, rows, cols, BACKGROUND_LOGIT)
}

fn binary(logits: ArrayView2<f32>) -> Array2<u8> {
    logits.mapv(|v| u8::from(v > THRESHOLD_LOGIT))
}

fn count_on(mask: ArrayView2<u8>) -> usize {
    mask.iter().filter(|&&v| v != 0).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_threshold_maps_to_logit() {
        let o = CorrectOptions::default();
        assert!(o.error_logit().abs() < 1e-6);
        let o = o.with_error_threshold(0.8);
        assert!((o.error_logit() - 4.0f32.ln()).abs() < 1e-5);
    }

    #[test]
    fn quality_combines_error_fraction_and_iou() {
        let round = |area_px, error_px, iou| Round {
            round: 1,
            area_px,
            error_px: Some(error_px),
            iou: Some(iou),
            seconds: 0.0,
        };
        let q = Quality::from_rounds(&[round(900, 100, 0.8), round(0, 0, 0.1)]);
        assert!((q.predicted_error_fraction - 0.1).abs() < 1e-9);
        assert!((q.iou_head.unwrap() - 0.8).abs() < 1e-6);
        assert!((q.score - 0.72).abs() < 1e-6);
        assert!(q.needs_review(0.8) && !q.needs_review(0.7));
        // nothing found and nothing predicted wrong: an absent structure, trusted
        let empty = Quality::from_rounds(&[round(0, 0, 0.2)]);
        assert_eq!(empty.score, 1.0);
        assert_eq!(empty.iou_head, None);
        // nothing found but errors predicted: something was missed
        assert_eq!(Quality::from_rounds(&[round(0, 50, 0.2)]).score, 0.0);
    }

    #[test]
    fn stop_rule_keeps_the_mask_before_a_round_that_did_not_help() {
        // 100 -> 60 -> 70: stop at round 2, keep round 1
        assert_eq!(chosen_round(&[100, 60, 70, 10], 4, true, false), 1);
        // without early stopping the last round made is returned, whatever its count
        assert_eq!(chosen_round(&[100, 60, 70, 10], 4, false, false), 3);
        assert_eq!(chosen_round(&[100, 60, 70, 80], 4, false, false), 3);
        assert_eq!(chosen_round(&[100, 60, 70, 80], 2, false, false), 2);
        // T limits the rounds considered
        assert_eq!(chosen_round(&[100, 60, 50, 10], 2, true, false), 2);
        assert_eq!(chosen_round(&[100, 60, 50, 10], 0, true, false), 0);
        // ties keep the earlier mask
        assert_eq!(chosen_round(&[100, 100], 4, true, false), 0);
        assert_eq!(chosen_round(&[100], 4, true, false), 0);
    }

    #[test]
    fn silent_rounds_follow_the_head_while_it_predicts_nothing() {
        // silent on the coarse mask and rounds 1-2, speaks on round 3: keep round 2
        assert_eq!(chosen_round(&[0, 0, 0, 5, 0], 4, true, true), 2);
        assert_eq!(chosen_round(&[0, 0, 0, 5, 0], 4, true, false), 0);
        // silent throughout: the last round within T, as the fixed T
        assert_eq!(chosen_round(&[0, 0, 0, 0, 0], 4, true, true), 4);
        assert_eq!(chosen_round(&[0, 0, 0, 0, 0], 2, true, true), 2);
        // speaks on round 1: the coarse mask
        assert_eq!(chosen_round(&[0, 7], 4, true, true), 0);
        // a head that speaks on the coarse mask gets the stop rule
        assert_eq!(chosen_round(&[100, 60, 70, 10], 4, true, true), 1);
        assert_eq!(chosen_round(&[100, 0, 0], 4, true, true), 1);
        // slices with no rounds (no count) keep the coarse mask
        assert_eq!(chosen_round(&[usize::MAX], 4, true, true), 0);
    }

    #[test]
    fn points_are_labelled_as_the_heads_were_trained() {
        // mask on at (0,0); flip threshold 0.9 left it on, but the error decoder says
        // p = 0.7 that it is wrong there
        let mask = Array2::from_shape_vec((1, 2), vec![1u8, 0]).unwrap();
        let corrected = mask.clone();
        let claim_wrong = logit(0.7);
        let paper = PointLabels {
            mask: &mask,
            corrected: &corrected,
            claim_logit: Some(logit(0.5)),
        };
        assert_eq!(paper.label(0, 0, claim_wrong), 0.0);
        assert_eq!(paper.label(0, 1, claim_wrong), 1.0);
        assert_eq!(paper.label(0, 0, logit(0.3)), 1.0);
        let first_heads = PointLabels {
            claim_logit: None,
            ..paper
        };
        assert_eq!(first_heads.label(0, 0, claim_wrong), 1.0);
        assert_eq!(first_heads.label(0, 1, claim_wrong), 0.0);
    }

    #[test]
    fn padding_is_forced_to_background() {
        let l = inside(Array2::from_elem((4, 4), 3.0), 2, 3);
        assert_eq!(l.iter().filter(|&&v| v > 0.0).count(), 6);
        assert!(l[[3, 0]] < 0.0 && l[[0, 3]] < 0.0);
    }
}
