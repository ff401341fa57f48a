//! cosam segments medical images with LiteMedSAM, a Segment-Anything model for medical
//! images, run on ONNX Runtime.
//!
//! The data path, one module per stage:
//!
//! 1. [`io`] reads PNG/JPEG/TIFF images, NIfTI volumes and DICOM files or series into a
//!    [`Volume`] (voxels, spacing, affine to world millimetres) and writes masks.
//!    [`io::reorient`] puts a volume in the model frame, one in-plane convention for every
//!    storage order (axial: anterior at the top, the patient's right on the image's left),
//!    which is the frame the CoSAM heads were trained in; `cosam segment`, `cosam eval`
//!    and `cosam export-training` all slice volumes through it. Library callers segmenting
//!    a NIfTI or DICOM volume prompt-free should do the same, and map masks back with
//!    [`io::Reorientation::mask_to_storage`].
//! 2. [`preprocess`] maps intensities to the model's 0..255 range (CT windows, MR
//!    percentile clipping), resizes the longest side to 256 and pads, and records the
//!    [`Transform`] that maps model outputs back onto the source pixel grid.
//! 3. [`model`] holds the ONNX Runtime sessions: the image encoder embeds a slice once; the
//!    promptable mask decoder turns an embedding plus point, box and mask prompts into
//!    logits.
//! 4. [`correct`] is CoSAM's self-correcting loop: with a task's trained heads
//!    ([`model::TaskHeads`]), a prompt-free coarse mask, an error decoder that predicts
//!    where it is wrong, and re-prompting from the corrected mask until the predicted
//!    error stops shrinking; it reports a [`correct::Quality`] score for review.
//! 5. [`post`] upsamples logits to the source grid and thresholds them, gives the loop its
//!    largest component and top-K error points, and cleans masks up on request
//!    ([`post::Cleanup`]: components, hole filling, opening and closing), in WGSL on wgpu
//!    or on the CPU with identical results.
//! 6. [`pipeline`] ties the stages together for slices and volumes; [`output`] maps its
//!    masks back to the file's storage order and writes them (PNG, NIfTI, DICOM SEG,
//!    overlays, the loop's trace); [`metrics`] scores
//!    masks against references in millimetres (Dice, HD95 under a named convention, ASSD,
//!    NSD), and [`eval`] runs methods over multi-domain datasets.
//!
//! A viewer embeds cosam by loading the models once, embedding the slice on display, and
//! calling the decoder for every click; each click then costs one decoder call:
//!
//! ```
//! use cosam::{BoxXyxy, Point, PointLabel, Prompts, Segmenter, SegmenterOptions};
//!
//! # fn main() -> cosam::Result<()> {
//! let segmenter = Segmenter::new(SegmenterOptions::default())?;
//! let volume = cosam::io::read(std::path::Path::new("data/demo/mr_abdomen.png"))?;
//! let slice = segmenter.embed_slice(&volume, 0)?;
//! let prompts = Prompts::from_box(BoxXyxy::new(10.0, 15.0, 62.0, 74.0)?);
//! let prediction = segmenter.predict(&slice, &prompts, None)?;
//! println!("{} mask pixels, predicted IoU {:.2}", prediction.mask.area(), prediction.iou);
//! assert!(prediction.mask.area() > 1000 && prediction.iou > 0.5);
//!
//! // The next click refines that mask: its 256x256 logits go back as the mask prompt.
//! let mut click = prompts.clone();
//! click.points.push(Point { x: 30.0, y: 40.0, label: PointLabel::Positive });
//! let refined = segmenter.predict(&slice, &click, Some(prediction.logits.view()))?;
//! assert_eq!(refined.logits.dim(), (256, 256));
//! # Ok(())
//! # }
//! ```
//!
//! Without any prompt, with the shipped CoSAM heads of a task (the encoder still runs once
//! per slice; each round adds one error-decoder and one decoder call):
//!
//! ```
//! use cosam::correct::{correct_slice, CorrectOptions, Quality};
//! use cosam::model::HeadsSource;
//! use cosam::{Segmenter, SegmenterOptions};
//!
//! # fn main() -> cosam::Result<()> {
//! let segmenter = Segmenter::new(SegmenterOptions::default())?;
//! let heads = segmenter.load_heads(&HeadsSource::Task("abdomen".into()))?;
//! let volume = cosam::io::read(std::path::Path::new("data/demo/ct_abdomen_slice.dcm"))?;
//! let slice = segmenter.embed_slice(&volume, 0)?;
//! let liver = heads.structure_index("liver").expect("the abdomen heads segment the liver");
//! if let Some(embedding) = slice.embedding() {
//!     let options = CorrectOptions::default().with_error_threshold(heads.info.error_threshold);
//!     let run = correct_slice(&segmenter.loop_models(&heads), embedding, slice.transform(),
//!                             liver, &options)?;
//!     for round in &run.trace {
//!         println!("round {}: {} px, {:?} px predicted wrong", round.round, round.area_px,
//!                  round.error_px);
//!     }
//!     let quality = Quality::from_rounds([run.final_round()]);
//!     assert!((0.0..=1.0).contains(&quality.score));
//! }
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod correct;
mod error;
pub mod eval;
pub mod io;
pub mod metrics;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod post;
pub mod preprocess;

pub use error::{Error, Result};
pub use io::{Mask, Modality, Spacing, Volume, WindowLevel};
pub use model::{BoxXyxy, ModelConfig, Point, PointLabel, Prompts};
pub use pipeline::{
    EmbeddedSlice, PromptFreePrediction, Segmenter, SegmenterOptions, SlicePrediction,
    VolumeSegmentation,
};
pub use preprocess::{IntensityMode, PreprocessOptions, Transform};
