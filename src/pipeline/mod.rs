//! The segmentation pipeline for slices and volumes: preprocess, embed once, decode per
//! prompt, post-process.
//!
//! Volumes are processed one slice at a time and each slice's embedding is dropped after
//! its decoder call, so memory holds the volume, its mask and one embedding (4 MiB),
//! whatever the number of slices.

use std::ops::RangeInclusive;
use std::time::Instant;

use ndarray::{s, Array2, Array3, ArrayView2};

use crate::correct::{correct_slice, CorrectError, CorrectOptions, LoopModels, Quality, Round};

use crate::io::{Mask, Modality, Volume, WindowLevel};
use crate::model::{
    CancelToken, HeadsSource, ImageEmbedding, LiteMedSam, ModelConfig, ModelError, PromptError,
    Prompts, Provider, TaskHeads,
};
use crate::post::{
    mask_ops, Cleanup, Device, MaskOps, PostError, BACKGROUND_LOGIT, THRESHOLD_LOGIT,
};
use crate::preprocess::{
    prepare_slice, IntensityMap, Prepared, PreprocessOptions, Transform, MODEL_SIZE,
};

/// Slices whose logits are post-processed in one call (16 MiB of logits).
const POST_CHUNK_SLICES: usize = 64;

use crate::Result;

mod embedded;

pub use embedded::EmbeddedSlice;

/// Options of a [`Segmenter`].
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct SegmenterOptions {
    /// Where the models and ONNX Runtime are, and how many threads they use.
    pub model: ModelConfig,
    /// Intensity mapping.
    pub preprocess: PreprocessOptions,
    /// Where mask post-processing runs.
    pub device: Device,
    /// Clean-up of every mask after thresholding (per slice; none by default).
    pub cleanup: Cleanup,
}

impl SegmenterOptions {
    /// Options with a model configuration.
    pub fn with_model(mut self, model: ModelConfig) -> Self {
        self.model = model;
        self
    }

    /// Options with a post-processing device.
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Options with preprocessing options.
    pub fn with_preprocess(mut self, preprocess: PreprocessOptions) -> Self {
        self.preprocess = preprocess;
        self
    }

    /// Options with a clean-up of every mask the segmenter returns, on the source grid
    /// after thresholding: [`Segmenter::predict`], the volume paths, the evaluation and
    /// the loop's trace all apply it. The loop itself works on the raw decoder output.
    /// Steps must be per slice ([`crate::post::Connectivity::Planar`]): masks are
    /// post-processed in chunks of slices.
    pub fn with_cleanup(mut self, cleanup: Cleanup) -> Self {
        self.cleanup = cleanup;
        self
    }
}

/// A mask predicted on one slice.
#[derive(Debug, Clone)]
pub struct SlicePrediction {
    /// Binary mask on the source grid.
    pub mask: Mask,
    /// The IoU head's quality estimate (0 for a constant slice).
    pub iou: f32,
    /// The decoder's 256x256 logits in the model frame (> 0 is foreground), before
    /// upsampling: pass them back as the next call's mask prompt to refine this mask.
    pub logits: Array2<f32>,
}

/// A prompt-free mask of one slice ([`Segmenter::predict_prompt_free`]).
#[derive(Debug, Clone)]
pub struct PromptFreePrediction {
    /// The loop's final mask, its IoU estimate and model-frame map (decoder logits, or
    /// +-1 for a corrected mask); the map can seed a prompted refinement.
    pub prediction: SlicePrediction,
    /// How much to trust the mask.
    pub quality: Quality,
    /// Every round of the loop (empty for a constant slice).
    pub trace: Vec<Round>,
}

/// Per-slice outcome of [`Segmenter::segment_volume`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SliceResult {
    /// Slice index.
    pub slice: usize,
    /// The IoU head's estimate; `None` for a constant slice that was not run.
    pub iou: Option<f32>,
    /// Foreground pixels.
    pub area_px: usize,
    /// Encoder + decoder + post-processing time, seconds.
    pub seconds: f64,
}

/// The result of segmenting a volume.
#[derive(Debug, Clone)]
pub struct VolumeSegmentation {
    /// `[slice, row, column]`, 0 or 1; slices not asked for are 0.
    pub mask: Array3<u8>,
    /// One entry per segmented slice, in order.
    pub slices: Vec<SliceResult>,
    /// The intensity mapping used (for display of the same slices).
    pub intensity: IntensityMap,
}

impl VolumeSegmentation {
    /// Foreground voxels.
    pub fn voxel_count(&self) -> usize {
        self.slices.iter().map(|s| s.area_px).sum()
    }

    /// Mean IoU estimate over slices that were run, if any.
    pub fn mean_iou(&self) -> Option<f32> {
        let ious: Vec<f32> = self.slices.iter().filter_map(|s| s.iou).collect();
        (!ious.is_empty()).then(|| ious.iter().sum::<f32>() / ious.len() as f32)
    }

    /// The slice a quick look shows: the segmented slice with the largest mask (the first
    /// of equals), `None` when no slice was segmented.
    pub fn quick_look_slice(&self) -> Option<usize> {
        self.slices
            .iter()
            .max_by_key(|s| (s.area_px, std::cmp::Reverse(s.slice)))
            .map(|s| s.slice)
    }
}

/// The loop's record of one slice of a prompt-free segmentation.
#[derive(Debug, Clone)]
pub struct SliceTrace {
    /// Slice index.
    pub slice: usize,
    /// Every mask the loop made (round 0 is the coarse mask).
    pub trace: Vec<Round>,
    /// Index into `trace` of the mask returned.
    pub chosen: usize,
    /// Model-frame map of each round (> 0 foreground), when asked for.
    pub maps: Vec<Array2<f32>>,
}

/// The result of [`Segmenter::segment_volume_prompt_free`].
#[derive(Debug, Clone)]
pub struct PromptFreeSegmentation {
    /// The final mask and per-slice results.
    pub segmentation: VolumeSegmentation,
    /// The loop's trace per slice that had content.
    pub traces: Vec<SliceTrace>,
    /// How much to trust the mask.
    pub quality: Quality,
}

/// A store of encoder outputs, so re-running methods over the same slices costs decoder
/// time only. Keys are hex digests of the model input tensor and the encoder file, so a
/// change of image, preprocessing or model never hits a stale entry.
pub trait EmbeddingCache: Sync {
    /// The embedding stored under `key`, if any (a corrupt entry is a miss).
    fn get(&self, key: &str) -> Option<ImageEmbedding>;
    /// Stores an embedding; failures are the cache's to log, never the caller's.
    fn put(&self, key: &str, embedding: &ImageEmbedding);
}

/// LiteMedSAM with its preprocessing and post-processing: the library's entry point.
#[derive(Debug)]
pub struct Segmenter {
    sam: LiteMedSam,
    options: SegmenterOptions,
    post: Box<dyn MaskOps>,
    post_note: String,
}

impl Segmenter {
    /// Loads the models.
    ///
    /// # Errors
    /// Setup errors of [`LiteMedSam::load`].
    pub fn new(options: SegmenterOptions) -> Result<Segmenter> {
        if options.cleanup.is_volumetric() {
            return Err(PostError::Cleanup {
                reason: "steps across slices (volumetric connectivity) cannot run on chunks \
                         of slices; use planar connectivity"
                    .into(),
            }
            .into());
        }
        let sam = LiteMedSam::load(&options.model)?;
        let (post, post_note) = mask_ops(options.device);
        Ok(Segmenter {
            sam,
            options,
            post,
            post_note,
        })
    }

    /// Where post-processing runs, and why (for example a GPU that was not found).
    pub fn post_processing(&self) -> &str {
        &self.post_note
    }

    /// Model-frame logits (`[n, 256, 256]`) of slices of one size to their masks on the
    /// source grid of `t`: cropped, upsampled and thresholded at [`THRESHOLD_LOGIT`] where
    /// post-processing runs, then cleaned up as [`SegmenterOptions::cleanup`] says. The
    /// one path from logits to masks: the decoder calls, the slice loop, the evaluation
    /// and the loop's trace all go through it.
    ///
    /// # Errors
    /// [`crate::post::PostError`] for logits that are not 256x256, or a GPU failure.
    pub fn logits_to_masks(
        &self,
        logits: ndarray::ArrayView3<f32>,
        t: &Transform,
    ) -> Result<Array3<u8>> {
        let cleanup = &self.options.cleanup;
        Ok(if cleanup.is_none() {
            self.post.upsample_threshold(logits, t, THRESHOLD_LOGIT)?
        } else {
            self.post.postprocess(logits, t, THRESHOLD_LOGIT, cleanup)?
        })
    }

    /// As [`Segmenter::logits_to_masks`] for one slice's `[256, 256]` logits.
    ///
    /// # Errors
    /// As [`Segmenter::logits_to_masks`].
    pub fn logits_to_mask(&self, logits: ArrayView2<f32>, t: &Transform) -> Result<Mask> {
        let masks = self.logits_to_masks(logits.insert_axis(ndarray::Axis(0)), t)?;
        Ok(Mask(masks.index_axis_move(ndarray::Axis(0), 0)))
    }

    /// Loads the CoSAM heads of a task or folder (see [`LiteMedSam::load_heads`]).
    ///
    /// # Errors
    /// An unknown task (the message lists the shipped ones), checksum or session errors.
    pub fn load_heads(&self, source: &HeadsSource) -> Result<TaskHeads> {
        Ok(self.sam.load_heads(source)?)
    }

    /// What [`correct_slice`] needs to run with `heads`.
    pub fn loop_models<'a>(&'a self, heads: &'a TaskHeads) -> LoopModels<'a> {
        LoopModels {
            heads,
            base: &self.sam.decoder,
            ops: self.post.as_ref(),
        }
    }

    /// The post-processing operations in use.
    pub fn mask_ops(&self) -> &dyn MaskOps {
        self.post.as_ref()
    }

    /// The loaded models.
    pub fn model(&self) -> &LiteMedSam {
        &self.sam
    }

    /// Resolves the intensity mapping of `volume` once, for many slices.
    ///
    /// # Errors
    /// [`crate::preprocess::PreprocessError::ConstantImage`] for a constant volume.
    pub fn intensity_map(&self, volume: &Volume) -> Result<IntensityMap> {
        let preprocess = self.options.preprocess;
        Ok(IntensityMap::for_volume(volume, preprocess.intensity)?.with_gamma(preprocess.gamma))
    }

    /// Runs the encoder on one slice. For many slices of one volume, compute
    /// [`Segmenter::intensity_map`] once and use [`Segmenter::embed_slice_with`].
    ///
    /// # Errors
    /// A slice index out of range, a constant volume, or an inference failure.
    pub fn embed_slice(&self, volume: &Volume, slice: usize) -> Result<EmbeddedSlice> {
        let map = self.intensity_map(volume)?;
        self.embed_slice_with(volume, slice, &map)
    }

    /// Runs the encoder on one slice with a precomputed intensity mapping.
    ///
    /// # Errors
    /// A slice index out of range or an inference failure.
    pub fn embed_slice_with(
        &self,
        volume: &Volume,
        slice: usize,
        map: &IntensityMap,
    ) -> Result<EmbeddedSlice> {
        self.embed_slice_cached(volume, slice, map, None)
    }

    /// As [`Segmenter::embed_slice_with`], looking the embedding up in `cache` first.
    ///
    /// # Errors
    /// A slice index out of range or an inference failure.
    pub fn embed_slice_cached(
        &self,
        volume: &Volume,
        slice: usize,
        map: &IntensityMap,
        cache: Option<&dyn EmbeddingCache>,
    ) -> Result<EmbeddedSlice> {
        self.embed(volume, slice, map, cache, None)
    }

    /// As [`Segmenter::embed_slice_with`], stopped early when `cancel` is cancelled from
    /// another thread. Only the encoder's session is held meanwhile: [`Segmenter::predict`]
    /// on another slice runs at the same time.
    ///
    /// # Errors
    /// [`ModelError::Cancelled`] once `cancel` was cancelled; otherwise as
    /// [`Segmenter::embed_slice_with`].
    pub fn embed_slice_cancellable(
        &self,
        volume: &Volume,
        slice: usize,
        map: &IntensityMap,
        cancel: &CancelToken,
    ) -> Result<EmbeddedSlice> {
        self.embed(volume, slice, map, None, Some(cancel))
    }

    fn embed(
        &self,
        volume: &Volume,
        slice: usize,
        map: &IntensityMap,
        cache: Option<&dyn EmbeddingCache>,
        cancel: Option<&CancelToken>,
    ) -> Result<EmbeddedSlice> {
        if slice >= volume.slices() {
            return Err(PromptError::SliceOutOfRange {
                slice,
                slices: volume.slices(),
            }
            .into());
        }
        let encoder_sha256 = self.encoder_sha256().to_string();
        Ok(match prepare_slice(volume, slice, map) {
            Prepared::Input(input) => {
                let run = || self.sam.encoder.embed_cancellable(&input.tensor, cancel);
                let embedding = match cache {
                    None => run()?,
                    Some(cache) => {
                        let key = self.cache_key(&input.tensor);
                        match cache.get(&key) {
                            Some(e) => e,
                            None => {
                                let e = run()?;
                                cache.put(&key, &e);
                                e
                            }
                        }
                    }
                };
                EmbeddedSlice {
                    embedding: Some(embedding),
                    transform: input.transform,
                    encoder_sha256,
                }
            }
            Prepared::Constant(transform) => EmbeddedSlice {
                embedding: None,
                transform,
                encoder_sha256,
            },
        })
    }

    /// Embeds one slice held in memory, `[rows, columns]` in its source units (see
    /// [`Volume::from_pixels`] for `modality` and `window`), for hosts such as viewers that
    /// hold pixels rather than files. The intensity mapping follows the modality as for a
    /// file (MR percentiles are those of this slice); `cancel` stops the encoder early.
    ///
    /// # Errors
    /// Pixels that are empty, not finite or constant; [`ModelError::Cancelled`]; an
    /// inference failure.
    pub fn embed_pixels(
        &self,
        pixels: ArrayView2<f32>,
        modality: Option<Modality>,
        window: Option<WindowLevel>,
        cancel: Option<&CancelToken>,
    ) -> Result<EmbeddedSlice> {
        let volume = Volume::from_pixels(pixels, modality, window)?;
        let map = IntensityMap::for_volume(&volume, crate::IntensityMode::Auto)?;
        self.embed(&volume, 0, &map, None, cancel)
    }

    /// sha256 (hex) of the loaded image encoder, as the manifest records it.
    pub fn encoder_sha256(&self) -> &str {
        self.sam
            .manifest()
            .models
            .iter()
            .find(|m| m.name == self.sam.encoder_precision().manifest_name())
            .map_or("", |m| m.sha256.as_str())
    }

    fn cache_key(&self, tensor: &ndarray::Array4<f32>) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        // One update over the whole buffer: hashing value by value cost ~200k calls per
        // slice on the evaluation's hot path. The key only has to be stable on one machine.
        match tensor.as_slice() {
            Some(values) => h.update(bytemuck::cast_slice::<f32, u8>(values)),
            None => tensor.iter().for_each(|v| h.update(v.to_ne_bytes())),
        }
        h.update(self.encoder_sha256().as_bytes());
        // OpenVINO's embeddings differ from the CPU provider's in the fifth digit: a cache
        // shared by runs on both must not hand one's to the other. The CPU provider's keys
        // stay as they were, so existing caches keep their entries.
        if self.sam.provider() != Provider::Cpu {
            h.update(self.sam.provider().name().as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Decodes a mask for `prompts` on an embedded slice: one decoder call. `mask_input`,
    /// when given, is a mask prompt in the model frame: the [`SlicePrediction::logits`] of
    /// an earlier call on the same slice, so that a new click refines that mask (SAM's
    /// `mask_input`). The result carries the new logits for the next click.
    ///
    /// # Errors
    /// [`PromptError`] when there is no prompt, one lies outside the slice, or the mask
    /// prompt is not 256x256 finite values; [`ModelError::EncoderMismatch`] for an
    /// embedding of another encoder (read back from bytes); an inference failure.
    pub fn predict(
        &self,
        slice: &EmbeddedSlice,
        prompts: &Prompts,
        mask_input: Option<ArrayView2<f32>>,
    ) -> Result<SlicePrediction> {
        let t = slice.transform;
        if prompts.is_empty() {
            return Err(PromptError::NoPrompt.into());
        }
        prompts.check_inside(t.source_rows, t.source_cols)?;
        if let Some(m) = &mask_input {
            if m.dim() != (MODEL_SIZE, MODEL_SIZE) {
                return Err(PromptError::InvalidMaskInput {
                    reason: format!("is {}x{}", m.nrows(), m.ncols()),
                }
                .into());
            }
            if !m.iter().all(|v| v.is_finite()) {
                return Err(PromptError::InvalidMaskInput {
                    reason: "has values that are not finite".into(),
                }
                .into());
            }
        }
        if slice.encoder_sha256 != self.encoder_sha256() {
            return Err(ModelError::EncoderMismatch {
                expected: self.encoder_sha256().to_string(),
                found: slice.encoder_sha256.clone(),
            }
            .into());
        }
        let Some(embedding) = &slice.embedding else {
            return Ok(SlicePrediction {
                mask: Mask(Array2::zeros((t.source_rows, t.source_cols))),
                iou: 0.0,
                logits: Array2::from_elem((MODEL_SIZE, MODEL_SIZE), BACKGROUND_LOGIT),
            });
        };
        let out = self
            .sam
            .decoder
            .predict(embedding, &prompts.to_model(&t), mask_input)?;
        Ok(SlicePrediction {
            mask: self.logits_to_mask(out.logits.view(), &t)?,
            iou: out.iou,
            logits: out.logits,
        })
    }

    /// Segments structure `structure` of `heads` on an embedded slice without prompts:
    /// CoSAM's coarse mask and self-correcting loop (as [`Segmenter::segment_volume_prompt_free`]
    /// does on every slice), with the slice's quality. `options` defaults to the loop's
    /// defaults with the heads' error threshold.
    ///
    /// # Errors
    /// A structure index out of range, [`ModelError::EncoderMismatch`], or a model failure.
    pub fn predict_prompt_free(
        &self,
        slice: &EmbeddedSlice,
        heads: &TaskHeads,
        structure: usize,
        options: Option<&CorrectOptions>,
    ) -> Result<PromptFreePrediction> {
        if slice.encoder_sha256 != self.encoder_sha256() {
            return Err(ModelError::EncoderMismatch {
                expected: self.encoder_sha256().to_string(),
                found: slice.encoder_sha256.clone(),
            }
            .into());
        }
        let t = slice.transform;
        let Some(embedding) = &slice.embedding else {
            return Ok(PromptFreePrediction {
                prediction: SlicePrediction {
                    mask: Mask(Array2::zeros((t.source_rows, t.source_cols))),
                    iou: 0.0,
                    logits: Array2::from_elem((MODEL_SIZE, MODEL_SIZE), BACKGROUND_LOGIT),
                },
                quality: Quality::from_rounds([]),
                trace: Vec::new(),
            });
        };
        let defaults = CorrectOptions::default().with_error_threshold(heads.info.error_threshold);
        let c = correct_slice(
            &self.loop_models(heads),
            embedding,
            &t,
            structure,
            options.unwrap_or(&defaults),
        )?;
        let quality = Quality::from_rounds([c.final_round()]);
        let iou = c.final_round().iou.unwrap_or(0.0);
        Ok(PromptFreePrediction {
            prediction: SlicePrediction {
                mask: self.logits_to_mask(c.logits.view(), &t)?,
                iou,
                logits: c.logits,
            },
            quality,
            trace: c.trace,
        })
    }

    /// Segments `slices` of `volume` (all when `None`) with the same prompts on each,
    /// calling `progress` after every slice.
    ///
    /// # Errors
    /// A constant volume, a slice range past the end, prompts outside the slice, or an
    /// inference failure.
    pub fn segment_volume(
        &self,
        volume: &Volume,
        prompts: &Prompts,
        slices: Option<RangeInclusive<usize>>,
        progress: impl FnMut(usize),
    ) -> Result<VolumeSegmentation> {
        let (rows, cols) = volume.slice_size();
        if prompts.is_empty() {
            return Err(PromptError::NoPrompt.into());
        }
        prompts.check_inside(rows, cols)?;
        let model_prompts = prompts.to_model(&Transform::new(rows, cols));
        let mut volume_out = [VolumeAssembler::new(volume)];
        let map = self.segment_slices(
            volume,
            slices,
            &mut volume_out,
            |_, embedding, _, _| {
                let out = self.sam.decoder.predict(embedding, &model_prompts, None)?;
                Ok((out.logits, out.iou))
            },
            progress,
        )?;
        let [assembler] = volume_out;
        assembler.finish(self, map)
    }

    /// Segments structure `structure` of `heads` on `slices` of `volume` (all when `None`)
    /// without prompts: CoSAM's coarse mask and self-correcting loop on every slice, with
    /// each slice's trace (and every round's map with `options.keep_rounds`) and a quality
    /// score for the volume. For several structures of one volume use
    /// [`Segmenter::segment_volume_structures`], which embeds each slice once for all.
    ///
    /// # Errors
    /// A constant volume, a slice range past the end, or a model failure.
    pub fn segment_volume_prompt_free(
        &self,
        volume: &Volume,
        heads: &TaskHeads,
        structure: usize,
        options: &CorrectOptions,
        slices: Option<RangeInclusive<usize>>,
        progress: impl FnMut(usize),
    ) -> Result<PromptFreeSegmentation> {
        let mut one = self.segment_volume_structures(
            volume,
            heads,
            std::slice::from_ref(&structure),
            options,
            slices,
            progress,
        )?;
        // one structure in, one result out; the error only names the impossible case
        one.pop().ok_or_else(|| {
            CorrectError::Structure {
                index: structure,
                count: heads.info.structures.len(),
            }
            .into()
        })
    }

    /// Segments every structure in `structures` (indices into `heads`) on `slices` of
    /// `volume` (all when `None`) without prompts, as
    /// [`Segmenter::segment_volume_prompt_free`] does for one, in one walk over the
    /// slices: each slice is embedded once and the loop runs for every structure on that
    /// embedding. The encoder is most of a slice's time, so this is what makes several
    /// structures cost little more than one. Results are in the order of `structures`.
    ///
    /// # Errors
    /// A constant volume, a slice range past the end, a structure index out of range, or
    /// a model failure.
    pub fn segment_volume_structures(
        &self,
        volume: &Volume,
        heads: &TaskHeads,
        structures: &[usize],
        options: &CorrectOptions,
        slices: Option<RangeInclusive<usize>>,
        progress: impl FnMut(usize),
    ) -> Result<Vec<PromptFreeSegmentation>> {
        let models = self.loop_models(heads);
        let mut volume_out: Vec<VolumeAssembler> = structures
            .iter()
            .map(|_| VolumeAssembler::new(volume))
            .collect();
        let mut traces: Vec<Vec<SliceTrace>> = vec![Vec::new(); structures.len()];
        let map = self.segment_slices(
            volume,
            slices,
            &mut volume_out,
            |z, embedding, transform, k| {
                prompt_free_slice(
                    &models,
                    embedding,
                    transform,
                    structures[k],
                    options,
                    z,
                    &mut traces[k],
                )
            },
            progress,
        )?;
        volume_out
            .into_iter()
            .zip(traces)
            .map(|(assembler, traces)| {
                Ok(PromptFreeSegmentation::new(
                    assembler.finish(self, map)?,
                    traces,
                ))
            })
            .collect()
    }

    /// The one slice loop: checks `slices` (all of `volume` when `None`) against the
    /// volume, embeds each slice once, through `cache` when given, and hands it to `visit`
    /// with its index, in order. The prompted and prompt-free volume paths and the
    /// evaluation's methods all walk slices through it.
    ///
    /// # Errors
    /// A slice range past the end or reversed, an encoder failure, or what `visit` returns.
    pub fn visit_slices(
        &self,
        volume: &Volume,
        slices: Option<RangeInclusive<usize>>,
        map: &IntensityMap,
        cache: Option<&dyn EmbeddingCache>,
        mut visit: impl FnMut(usize, &EmbeddedSlice) -> Result<()>,
    ) -> Result<()> {
        let n = volume.slices();
        let range = slices.unwrap_or(0..=n.saturating_sub(1));
        if *range.end() >= n || range.start() > range.end() {
            return Err(PromptError::SliceOutOfRange {
                slice: *range.end(),
                slices: n,
            }
            .into());
        }
        // The encoder embeds the next slice on a thread of its own while `visit` decodes
        // this one: where cores allow, a slice costs the longer of the two, not their sum.
        // The channel holds one embedding, so at most three exist at once (issue 18).
        std::thread::scope(|scope| {
            let (next, embedded) = std::sync::mpsc::sync_channel(1);
            scope.spawn(move || {
                for z in range {
                    let slice = self.embed(volume, z, map, cache, None);
                    let failed = slice.is_err();
                    // a send fails once `visit` has failed and the receiver is gone
                    if next.send((z, slice)).is_err() || failed {
                        break;
                    }
                }
            });
            for (z, slice) in embedded {
                visit(z, &slice?)?;
            }
            Ok(())
        })
    }

    /// [`Segmenter::visit_slices`] for the volume paths: `decode` turns each slice's
    /// embedding (with its index, place in the model frame and output number) into
    /// model-frame logits for every output volume in `assemblers`, which turn them into
    /// masks in chunks. The wait for each embedding is shared among the outputs. Returns the
    /// intensity mapping the slices were embedded with.
    fn segment_slices(
        &self,
        volume: &Volume,
        slices: Option<RangeInclusive<usize>>,
        assemblers: &mut [VolumeAssembler],
        mut decode: impl FnMut(usize, &ImageEmbedding, &Transform, usize) -> Result<(Array2<f32>, f32)>,
        mut progress: impl FnMut(usize),
    ) -> Result<IntensityMap> {
        let map = self.intensity_map(volume)?;
        let outputs = assemblers.len();
        let mut embedded_at = Instant::now();
        self.visit_slices(volume, slices, &map, None, |z, embedded| {
            // the time spent waiting for this slice's embedding (the encoder's time not
            // hidden behind the previous slice's decoding), shared among the outputs
            let encoder_share = embedded_at.elapsed().as_secs_f64() / outputs.max(1) as f64;
            for (k, assembler) in assemblers.iter_mut().enumerate() {
                let started = Instant::now();
                let decoded = match &embedded.embedding {
                    Some(embedding) => Some(decode(z, embedding, &embedded.transform, k)?),
                    None => None,
                };
                let seconds = encoder_share + started.elapsed().as_secs_f64();
                assembler.push(self, z, decoded, seconds)?;
            }
            progress(z);
            embedded_at = Instant::now();
            Ok(())
        })?;
        Ok(map)
    }
}

/// One output volume of [`Segmenter::segment_slices`] as it fills: logits wait in a chunk
/// and are upsampled one post-processing call per chunk (a GPU batch), so memory stays
/// bounded whatever the number of slices.
struct VolumeAssembler {
    transform: Transform,
    mask: Array3<u8>,
    results: Vec<SliceResult>,
    logits: Array3<f32>,
    /// Slice, IoU estimate (`None` for a constant slice) and seconds of each chunk entry.
    pending: Vec<(usize, Option<f32>, f64)>,
}

impl VolumeAssembler {
    fn new(volume: &Volume) -> Self {
        let (n, (rows, cols)) = (volume.slices(), volume.slice_size());
        VolumeAssembler {
            transform: Transform::new(rows, cols),
            mask: Array3::zeros((n, rows, cols)),
            results: Vec::new(),
            logits: Array3::zeros((POST_CHUNK_SLICES, MODEL_SIZE, MODEL_SIZE)),
            pending: Vec::with_capacity(POST_CHUNK_SLICES),
        }
    }

    /// Adds slice `z`'s logits and IoU estimate (`None`: a constant slice, left empty).
    fn push(
        &mut self,
        segmenter: &Segmenter,
        z: usize,
        decoded: Option<(Array2<f32>, f32)>,
        seconds: f64,
    ) -> Result<()> {
        let i = self.pending.len();
        let iou = match decoded {
            Some((logits, iou)) => {
                self.logits.slice_mut(s![i, .., ..]).assign(&logits);
                Some(iou)
            }
            None => {
                self.logits.slice_mut(s![i, .., ..]).fill(BACKGROUND_LOGIT);
                None
            }
        };
        self.pending.push((z, iou, seconds));
        if self.pending.len() == POST_CHUNK_SLICES {
            self.flush(segmenter)?;
        }
        Ok(())
    }

    fn flush(&mut self, segmenter: &Segmenter) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let masks = segmenter.logits_to_masks(
            self.logits.slice(s![..self.pending.len(), .., ..]),
            &self.transform,
        )?;
        let post_share = started.elapsed().as_secs_f64() / self.pending.len() as f64;
        for (i, (z, iou, seconds)) in self.pending.drain(..).enumerate() {
            let m = masks.index_axis(ndarray::Axis(0), i);
            self.mask.slice_mut(s![z, .., ..]).assign(&m);
            self.results.push(SliceResult {
                slice: z,
                iou,
                area_px: m.iter().filter(|&&v| v != 0).count(),
                seconds: seconds + post_share,
            });
        }
        Ok(())
    }

    fn finish(
        mut self,
        segmenter: &Segmenter,
        intensity: IntensityMap,
    ) -> Result<VolumeSegmentation> {
        self.flush(segmenter)?;
        Ok(VolumeSegmentation {
            mask: self.mask,
            slices: self.results,
            intensity,
        })
    }
}

/// One slice of one structure without prompts: the loop, its trace kept in `traces`.
fn prompt_free_slice(
    models: &LoopModels<'_>,
    embedding: &ImageEmbedding,
    transform: &Transform,
    structure: usize,
    options: &CorrectOptions,
    z: usize,
    traces: &mut Vec<SliceTrace>,
) -> Result<(Array2<f32>, f32)> {
    let c = correct_slice(models, embedding, transform, structure, options)?;
    let iou = c.final_round().iou.unwrap_or(0.0);
    traces.push(SliceTrace {
        slice: z,
        trace: c.trace,
        chosen: c.chosen,
        maps: c.maps,
    });
    Ok((c.logits, iou))
}

impl PromptFreeSegmentation {
    fn new(segmentation: VolumeSegmentation, traces: Vec<SliceTrace>) -> Self {
        PromptFreeSegmentation {
            quality: Quality::from_rounds(traces.iter().map(|t| &t.trace[t.chosen])),
            segmentation,
            traces,
        }
    }
}
