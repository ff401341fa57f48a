//! `cosam segment --task`: prompt-free segmentation with the CoSAM heads, per structure,
//! with a quality score and review flag in report.json and, with `--trace`, every round.

use std::path::PathBuf;

use anyhow::{bail, Context};
use cosam::correct::{CorrectOptions, Quality, Round};
use cosam::io::{self, OutputFormat, Reoriented};
use cosam::model::{HeadsSource, TaskHeads};
use cosam::pipeline::{PromptFreeSegmentation, VolumeSegmentation};
use cosam::post::logits_to_mask;
use cosam::preprocess::{display_slice, Transform};
use cosam::{Mask, Segmenter, Volume};
use indicatif::ProgressBar;
use ndarray::{s, Array3};
use serde::Serialize;

use super::args::SegmentArgs;
use super::segment::{write_outputs, CaseReport, Job};

/// The heads and loop settings of one run.
pub(super) struct TaskRun {
    heads: TaskHeads,
    /// (index in the heads, name) of each structure to segment.
    structures: Vec<(usize, String)>,
    options: CorrectOptions,
    review_threshold: f64,
    trace: bool,
    output: PathBuf,
}

/// One structure of a prompt-free case in report.json.
#[derive(Serialize)]
pub(super) struct StructureReport {
    name: String,
    /// Its value in the combined label map (`ID_labels.nii.gz`).
    label_value: usize,
    voxels: usize,
    volume_mm3: Option<f64>,
    area_mm2: Option<f64>,
    quality: Quality,
    needs_review: bool,
    /// Mean rounds run per slice with content (the coarse mask is round 0).
    mean_rounds: f64,
    #[serde(serialize_with = "super::segment::lossy_paths")]
    outputs: Vec<PathBuf>,
}

#[derive(Serialize)]
struct TraceFile<'a> {
    structure: &'a str,
    options: &'a CorrectOptions,
    slices: Vec<TraceSlice<'a>>,
}

#[derive(Serialize)]
struct TraceSlice<'a> {
    slice: usize,
    chosen_round: usize,
    rounds: &'a [Round],
}

impl TaskRun {
    pub(super) fn load(
        segmenter: &Segmenter,
        source: &HeadsSource,
        args: &SegmentArgs,
    ) -> anyhow::Result<TaskRun> {
        let heads = segmenter
            .load_heads(source)
            .context("cannot load the CoSAM heads")?;
        let names = &heads.info.structures;
        let structures = if args.structures.is_empty() {
            names.iter().cloned().enumerate().collect()
        } else {
            let mut chosen: Vec<(usize, String)> = Vec::new();
            for s in &args.structures {
                if chosen.iter().any(|(_, c)| c == s) {
                    bail!("--structures names '{s}' twice");
                }
                match heads.structure_index(s) {
                    Some(i) => chosen.push((i, s.clone())),
                    None => bail!(
                        "task '{}' has no structure '{s}'; its structures: {}",
                        heads.info.task,
                        names.join(", ")
                    ),
                }
            }
            chosen
        };
        let options = args.correct_options(heads.info.error_threshold);
        Ok(TaskRun {
            heads,
            structures,
            options,
            review_threshold: f64::from(args.review_threshold),
            trace: args.trace,
            output: args.output.clone(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_volume(
        &self,
        segmenter: &Segmenter,
        job: &Job,
        id: &str,
        volume: &Volume,
        reoriented: &Reoriented<'_>,
        formats: &[OutputFormat],
        bar: &ProgressBar,
    ) -> anyhow::Result<CaseReport> {
        let work: &Volume = &reoriented.volume;
        let n = work.slices();
        let spacing = volume.spacing();
        let single = volume.slices() == 1;
        let mut labels = Array3::<u8>::zeros((n, work.slice_size().0, work.slice_size().1));
        let mut structures = Vec::new();
        let mut outputs = Vec::new();
        for (index, name) in &self.structures {
            let result = segmenter.segment_volume_prompt_free(
                work,
                &self.heads,
                *index,
                &self.options.with_keep_rounds(self.trace),
                job.slices.map(|(a, b)| a..=b),
                |z| bar.set_message(format!("{id} {name} slice {}/{n}", z + 1)),
            )?;
            let mask = &result.segmentation.mask;
            // a voxel claimed by two structures keeps the first one's label
            labels.zip_mut_with(mask, |l, &m| {
                if *l == 0 && m != 0 {
                    *l = (*index + 1) as u8;
                }
            });
            let storage = reoriented.map.mask_to_storage(mask);
            let structure_id = format!("{id}_{name}");
            let mut written = write_outputs(
                &self.output,
                &structure_id,
                formats,
                volume,
                work,
                &storage,
                &result.segmentation,
                name,
            )?;
            if self.trace {
                written.extend(self.write_trace(
                    &structure_id,
                    name,
                    volume,
                    reoriented,
                    &result,
                )?);
            }
            let voxels = result.segmentation.voxel_count();
            let with_content = result.traces.len().max(1) as f64;
            structures.push(StructureReport {
                name: name.clone(),
                label_value: index + 1,
                voxels,
                volume_mm3: (!single).then(|| voxels as f64 * spacing.voxel_volume_mm3()),
                area_mm2: single.then(|| voxels as f64 * spacing.pixel_area_mm2()),
                quality: result.quality,
                needs_review: result.quality.needs_review(self.review_threshold),
                mean_rounds: result
                    .traces
                    .iter()
                    .map(|t| t.trace.len() - 1)
                    .sum::<usize>() as f64
                    / with_content,
                outputs: written.clone(),
            });
            outputs.extend(written);
        }
        if self.structures.len() > 1 && formats.contains(&OutputFormat::Nifti) {
            let path = self.output.join(format!("{id}_labels.nii.gz"));
            io::write_mask_nifti(&path, &reoriented.map.mask_to_storage(&labels), volume)?;
            outputs.push(path);
        }
        let voxels = structures.iter().map(|s| s.voxels).sum();
        Ok(CaseReport {
            slices_segmented: job.slices.map_or(n, |(a, b)| b + 1 - a),
            mask_pixels: voxels,
            needs_review: Some(structures.iter().any(|s| s.needs_review)),
            task: Some(self.heads.info.task.clone()),
            structures,
            outputs,
            ..CaseReport::ok(job, id, volume)
        })
    }

    /// `ID_STRUCTURE_trace/`: each round's mask (a slice whose loop stopped earlier keeps
    /// its last mask), an overlay of the slice with the largest final mask, trace.json.
    fn write_trace(
        &self,
        structure_id: &str,
        name: &str,
        volume: &Volume,
        reoriented: &Reoriented<'_>,
        result: &PromptFreeSegmentation,
    ) -> anyhow::Result<Vec<PathBuf>> {
        let work: &Volume = &reoriented.volume;
        let dir = self.output.join(format!("{structure_id}_trace"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let (rows, cols) = work.slice_size();
        let transform = Transform::new(rows, cols);
        let rounds = result
            .traces
            .iter()
            .map(|t| t.maps.len())
            .max()
            .unwrap_or(0);
        let quick_look = quick_look_slice(&result.segmentation);
        let mut written = Vec::new();
        for round in 0..rounds {
            let mut mask = Array3::<u8>::zeros((work.slices(), rows, cols));
            for t in &result.traces {
                if let Some(map) = t.maps.get(round).or_else(|| t.maps.last()) {
                    let source = logits_to_mask(map.view(), &transform, 0.0);
                    mask.slice_mut(s![t.slice, .., ..]).assign(&source.0);
                }
            }
            let storage = reoriented.map.mask_to_storage(&mask);
            let path = if volume.is_2d() {
                let p = dir.join(format!("round_{round}_mask.png"));
                io::write_mask_png(
                    &p,
                    &Mask(storage.index_axis(ndarray::Axis(0), 0).to_owned()),
                )?;
                p
            } else {
                let p = dir.join(format!("round_{round}_mask.nii.gz"));
                io::write_mask_nifti(&p, &storage, volume)?;
                p
            };
            written.push(path);
            if let Some(z) = quick_look {
                let p = dir.join(format!("round_{round}_overlay.png"));
                let display = display_slice(work, z, &result.segmentation.intensity);
                let m = Mask(mask.index_axis(ndarray::Axis(0), z).to_owned());
                io::write_overlay_png(&p, display.view(), &m)?;
                written.push(p);
            }
        }
        let file = TraceFile {
            structure: name,
            options: &self.options,
            slices: result
                .traces
                .iter()
                .map(|t| TraceSlice {
                    slice: t.slice,
                    chosen_round: t.chosen,
                    rounds: &t.trace,
                })
                .collect(),
        };
        let path = dir.join("trace.json");
        io::write_bytes(&path, &serde_json::to_vec_pretty(&file)?)?;
        written.push(path);
        Ok(written)
    }
}

fn quick_look_slice(result: &VolumeSegmentation) -> Option<usize> {
    result
        .slices
        .iter()
        .max_by_key(|s| (s.area_px, std::cmp::Reverse(s.slice)))
        .map(|s| s.slice)
}
