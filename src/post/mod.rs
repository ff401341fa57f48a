//! Mask post-processing: from 256x256 logits in the model frame to binary masks on the
//! source grid, what the correction loop takes from masks (the largest component of the
//! corrected mask, for its box; the top-K of an error map, for its points), and the
//! optional [`Cleanup`] of final masks (components, hole filling, opening and closing,
//! the last two through the distance transform). Must not import `pipeline`, `correct`,
//! `eval` or the CLI.
//!
//! Every operation exists twice, behind the object-safe [`MaskOps`] trait: [`CpuMaskOps`]
//! (rayon over slices, the reference) and [`GpuMaskOps`] (WGSL compute kernels in
//! `shaders/`, one kernel per file, run through wgpu on Vulkan or GL). [`mask_ops`] picks one
//! for a [`Device`] and never fails: without an adapter it returns the CPU path and says why.
//! A GPU failure at run time (lost device, shader or buffer error, a volume too large for
//! the adapter's limits) falls back to the CPU for that call and later ones, with a warning.
//!
//! Volumes are `[slice, row, column]` arrays; a single slice is a volume of one slice.
//! Masks hold 0 (background) and non-zero (foreground) bytes; outputs hold 0 and 1.
//!
//! The two paths agree exactly on every binary and integer output (masks, labels,
//! top-K indices, distances with unit spacing). Float outputs agree within
//! [`FLOAT_TOLERANCE`] (relative), since GPU compilers may fuse multiply-adds; a
//! thresholded upsampling can therefore differ only at pixels whose interpolated logit
//! lies within that tolerance of the threshold.
//!
//! Upsampling follows upstream LiteMedSAM: crop the padded logits to the resized slice,
//! resize bilinearly (half-pixel centres, no antialiasing) to the source size, threshold.

mod cleanup;
mod cpu;
mod fallback;
mod gpu;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3};

use crate::io::{Mask, Spacing};
use crate::preprocess::{resize, Kernel, Transform, MODEL_SIZE};

pub use cleanup::{Cleanup, MAX_CLEANUP_RADIUS_PX};
pub use cpu::CpuMaskOps;
use fallback::{error_chain, WithFallback};
pub use gpu::GpuMaskOps;

/// Logit above which a pixel is foreground (probability 0.5).
pub const THRESHOLD_LOGIT: f32 = 0.0;

/// Logit of a pixel known to be background: a constant slice, the padding outside a slice
/// in the model frame. Finite, so bilinear interpolation next to it stays exact.
pub const BACKGROUND_LOGIT: f32 = -1e4;

/// Largest relative difference allowed between the CPU and GPU paths on float outputs
/// (upsampled logits, distances with non-unit spacing): `|gpu - cpu| <= FLOAT_TOLERANCE *
/// max(1, |cpu|)`. GPU compilers may contract `a * b + c` into one fused multiply-add, which
/// changes the last bit or two of an f32.
pub const FLOAT_TOLERANCE: f32 = 1e-5;

/// Whether a GPU float output agrees with the CPU path's under [`FLOAT_TOLERANCE`]: equal
/// (infinities only to themselves), or `|gpu - cpu| <= FLOAT_TOLERANCE * max(1, |cpu|)`.
pub fn floats_agree(cpu: f32, gpu: f32) -> bool {
    cpu == gpu
        || (cpu.is_finite()
            && gpu.is_finite()
            && (gpu - cpu).abs() <= FLOAT_TOLERANCE * cpu.abs().max(1.0))
}

/// Crops `logits` (256x256, model frame) to the slice, resizes them to the source grid
/// and thresholds at `threshold_logit`.
///
/// # Panics
/// When `logits` is not 256x256 (the decoder checks its output shape).
pub fn logits_to_mask(
    logits: ArrayView2<f32>,
    transform: &Transform,
    threshold_logit: f32,
) -> Mask {
    let source = logits_to_source(logits, transform);
    Mask(source.mapv(|v| u8::from(v > threshold_logit)))
}

/// Crops and resizes logits onto the source grid, without thresholding.
///
/// # Panics
/// When `logits` is not 256x256 (the decoder checks its output shape).
pub fn logits_to_source(logits: ArrayView2<f32>, transform: &Transform) -> Array2<f32> {
    assert_eq!(
        logits.dim(),
        (MODEL_SIZE, MODEL_SIZE),
        "decoder logits are 256x256"
    );
    let cropped = logits.slice(s![..transform.scaled_rows, ..transform.scaled_cols]);
    resize(
        cropped,
        transform.source_rows,
        transform.source_cols,
        Kernel::Bilinear,
        Kernel::Bilinear,
    )
}

/// Where post-processing runs (`--device auto|gpu|cpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// A hardware wgpu adapter (Vulkan or GL) when one exists, the CPU otherwise (a
    /// software adapter such as Mesa's lavapipe is slower than the CPU path).
    #[default]
    Auto,
    /// A wgpu adapter; the CPU, with a notice, when none can be opened.
    Gpu,
    /// The CPU (rayon).
    Cpu,
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Device, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::Auto),
            "gpu" => Ok(Device::Gpu),
            "cpu" => Ok(Device::Cpu),
            other => Err(format!(
                "unknown device {other:?}: expected auto, gpu or cpu"
            )),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Auto => "auto",
            Device::Gpu => "gpu",
            Device::Cpu => "cpu",
        })
    }
}

/// Failure of the GPU path. The CPU path never returns it; [`mask_ops`] turns it into a
/// fallback to the CPU.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// No wgpu adapter (no Vulkan or GL driver, or none that can compute).
    #[error("no GPU adapter found")]
    NoAdapter {
        /// The cause reported by wgpu.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The adapter exists but would not open a device with the limits post-processing needs.
    #[error("cannot open a device on {adapter}")]
    RequestDevice {
        /// Adapter name and backend.
        adapter: String,
        /// The cause reported by wgpu.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A kernel failed to compile or its pipeline to build.
    #[error("kernel {kernel} failed to build: {message}")]
    Shader {
        /// Kernel (shader file) name.
        kernel: &'static str,
        /// wgpu's validation message.
        message: String,
    },
    /// wgpu reported an error while running a kernel (validation, out of memory, lost
    /// device).
    #[error("{operation} failed on the GPU: {message}")]
    Run {
        /// The operation.
        operation: &'static str,
        /// wgpu's message.
        message: String,
    },
    /// Reading a result back failed.
    #[error("reading back the result of {operation} failed")]
    Readback {
        /// The operation.
        operation: &'static str,
        /// The cause reported by wgpu.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The input needs a buffer larger than the adapter allows.
    #[error("{operation} needs a {bytes}-byte buffer; the adapter allows {limit}")]
    TooLarge {
        /// The operation.
        operation: &'static str,
        /// Bytes needed.
        bytes: u64,
        /// The adapter's limit.
        limit: u64,
    },
    /// The adapter's answers on the known-answer check run at open differ from the CPU
    /// path's: its driver miscompiles a kernel, so its masks cannot be trusted.
    #[error("{adapter} gives wrong results for {operation} on a known-answer check; use the CPU path or another driver (WGPU_BACKEND=vulkan)")]
    WrongResults {
        /// Adapter name and backend.
        adapter: String,
        /// The first operation that differed.
        operation: &'static str,
    },
    /// An earlier failure made the GPU context unusable.
    #[error("the GPU context is unusable after an earlier failure: {message}")]
    Unusable {
        /// The first failure.
        message: String,
    },
}

/// Failure of a post-processing operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostError {
    /// An input does not have the shape the operation needs.
    #[error("{what}: expected {expected}, found {found}")]
    Shape {
        /// Which input.
        what: &'static str,
        /// What was expected.
        expected: String,
        /// What was given.
        found: String,
    },
    /// The GPU path failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// A clean-up the caller asked for cannot run where it was asked.
    #[error("clean-up: {reason}")]
    Cleanup {
        /// What is wrong.
        reason: String,
    },
}

/// Which neighbours make a connected component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Connectivity {
    /// Within each slice, 8-connected; slices are independent.
    #[default]
    Planar,
    /// Across slices, 26-connected.
    Volumetric,
}

/// What lies outside a slice, for the distance transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Border {
    /// A ring of background around the slice: distances never exceed the distance to the
    /// slice's edge (use for prompt placement, so points keep off the edge).
    #[default]
    Background,
    /// Nothing: only background pixels inside the slice count.
    Ignore,
}

/// One selected pixel with its value: `slice`, `row`, `column` index the input array.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    /// Slice index.
    pub slice: usize,
    /// Row, source pixels.
    pub row: usize,
    /// Column, source pixels.
    pub column: usize,
    /// The value there (a probability, or a distance in mm).
    pub value: f32,
}

/// Inclusive bounding box of a slice's foreground, source pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// First foreground row.
    pub row_min: usize,
    /// First foreground column.
    pub column_min: usize,
    /// Last foreground row.
    pub row_max: usize,
    /// Last foreground column.
    pub column_max: usize,
}

/// Which backend an implementation of [`MaskOps`] runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// rayon on the CPU.
    Cpu,
    /// A wgpu adapter, described (name and graphics API).
    Gpu(String),
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Cpu => f.write_str("CPU"),
            Backend::Gpu(name) => write!(f, "GPU ({name})"),
        }
    }
}

/// Post-processing operations, on the CPU ([`CpuMaskOps`]) or the GPU ([`GpuMaskOps`]).
///
/// Volumes are `[slice, row, column]`. All operations on [`Connectivity::Planar`] work
/// slice by slice; outputs are new arrays of the input's shape.
pub trait MaskOps: Send + Sync + fmt::Debug {
    /// Where the operations run.
    fn backend(&self) -> Backend;

    /// Crops each slice of `logits` (`[n, 256, 256]`, model frame) to the resized slice,
    /// upsamples bilinearly to the source size of `transform` and keeps logits above
    /// `threshold_logit`: a `[n, rows, cols]` mask of 0 and 1.
    ///
    /// # Errors
    /// [`PostError::Shape`] when the slices are not 256x256; [`PostError::Gpu`] on the
    /// GPU path.
    fn upsample_threshold(
        &self,
        logits: ArrayView3<f32>,
        transform: &Transform,
        threshold_logit: f32,
    ) -> Result<Array3<u8>, PostError>;

    /// As [`MaskOps::upsample_threshold`] without the threshold: logits on the source grid.
    ///
    /// # Errors
    /// As [`MaskOps::upsample_threshold`].
    fn upsample(
        &self,
        logits: ArrayView3<f32>,
        transform: &Transform,
    ) -> Result<Array3<f32>, PostError>;

    /// [`MaskOps::upsample_threshold`] followed by the steps of `cleanup`, in its order.
    /// The GPU path keeps the volume on the device between steps (one upload of the
    /// logits, one readback of the mask per chunk of slices).
    ///
    /// # Errors
    /// As [`MaskOps::upsample_threshold`].
    fn postprocess(
        &self,
        logits: ArrayView3<f32>,
        transform: &Transform,
        threshold_logit: f32,
        cleanup: &Cleanup,
    ) -> Result<Array3<u8>, PostError> {
        let mask = self.upsample_threshold(logits, transform, threshold_logit)?;
        self.clean(mask, cleanup)
    }

    /// The steps of `cleanup`, in its order, on a mask of 0 and 1.
    ///
    /// # Errors
    /// [`PostError::Gpu`] on the GPU path.
    fn clean(&self, mut mask: Array3<u8>, cleanup: &Cleanup) -> Result<Array3<u8>, PostError> {
        if let Some(c) = cleanup.keep_largest {
            mask = self.keep_largest(mask.view(), c)?;
        }
        if let Some((c, min)) = cleanup.remove_small {
            mask = self.remove_small(mask.view(), c, min)?;
        }
        if cleanup.fill_holes {
            mask = self.fill_holes(mask.view())?;
        }
        if cleanup.open_px > 0 {
            mask = self.open(mask.view(), cleanup.open_px)?;
        }
        if cleanup.close_px > 0 {
            mask = self.close(mask.view(), cleanup.close_px)?;
        }
        Ok(mask)
    }

    /// Labels connected components of the foreground: 0 on background, and on each
    /// component one more than the smallest linear index (`(slice * rows + row) * cols +
    /// col`) among its pixels, so labels are canonical whichever algorithm ran.
    ///
    /// # Errors
    /// [`PostError::Gpu`] on the GPU path.
    fn label(
        &self,
        mask: ArrayView3<u8>,
        connectivity: Connectivity,
    ) -> Result<Array3<u32>, PostError>;

    /// Keeps the largest component (per slice with [`Connectivity::Planar`], of the volume
    /// with [`Connectivity::Volumetric`]); ties go to the component with the smallest label.
    ///
    /// # Errors
    /// [`PostError::Gpu`] on the GPU path.
    fn keep_largest(
        &self,
        mask: ArrayView3<u8>,
        connectivity: Connectivity,
    ) -> Result<Array3<u8>, PostError>;

    /// Removes components of fewer than `min_pixels` pixels.
    ///
    /// # Errors
    /// [`PostError::Gpu`] on the GPU path.
    fn remove_small(
        &self,
        mask: ArrayView3<u8>,
        connectivity: Connectivity,
        min_pixels: usize,
    ) -> Result<Array3<u8>, PostError>;

    /// Fills holes in each slice: background regions (4-connected) that do not touch the
    /// slice's edge become foreground.
    ///
    /// # Errors
    /// [`PostError::Gpu`] on the GPU path.
    fn fill_holes(&self, mask: ArrayView3<u8>) -> Result<Array3<u8>, PostError>;

    /// Binary opening of each slice (erosion, then dilation) by a disk of `radius_px`
    /// pixels (the pixels within Euclidean distance `radius_px`). Outside the slice counts
    /// as foreground for the erosion and background for the dilation, as in scikit-image.
    ///
    /// # Errors
    /// [`PostError::Gpu`] on the GPU path.
    fn open(&self, mask: ArrayView3<u8>, radius_px: u32) -> Result<Array3<u8>, PostError>;

    /// Binary closing of each slice (dilation, then erosion) by a disk of `radius_px`
    /// pixels; borders as in [`MaskOps::open`].
    ///
    /// # Errors
    /// [`PostError::Gpu`] on the GPU path.
    fn close(&self, mask: ArrayView3<u8>, radius_px: u32) -> Result<Array3<u8>, PostError>;

    /// Exact Euclidean distance, mm, from each foreground pixel to the nearest background
    /// pixel of the same slice, with the row and column spacing of `spacing` (0 on
    /// background). With [`Border::Background`] the outside of the slice is background;
    /// with [`Border::Ignore`] a slice without background gives `f32::INFINITY`.
    ///
    /// # Errors
    /// [`PostError::Gpu`] on the GPU path.
    fn distance(
        &self,
        mask: ArrayView3<u8>,
        spacing: Spacing,
        border: Border,
    ) -> Result<Array3<f32>, PostError>;

    /// The `k` largest values of `values`, largest first; equal values in order of linear
    /// index; NaN counts as smaller than everything. Fewer than `k` when the input is
    /// smaller.
    ///
    /// # Errors
    /// [`PostError::Gpu`] on the GPU path.
    fn top_k(&self, values: ArrayView3<f32>, k: usize) -> Result<Vec<Peak>, PostError>;
}

/// Bounding box of each slice's foreground (`None` for an empty slice).
pub fn bounds(mask: ArrayView3<u8>) -> Vec<Option<Bounds>> {
    cpu::bounds(mask)
}

/// Opens the post-processing backend for `device`. Never fails: when the GPU cannot be
/// used the CPU path is returned. The note says which backend runs and, after a fallback,
/// why; callers log it once.
///
/// ```
/// use cosam::post::{mask_ops, Connectivity, Device};
/// use ndarray::Array3;
///
/// # fn main() -> Result<(), cosam::post::PostError> {
/// let (ops, note) = mask_ops(Device::Cpu);
/// eprintln!("{note}");
/// // two blobs in one 5x6 slice: keep the larger, then fill its hole
/// let mut mask = Array3::<u8>::zeros((1, 5, 6));
/// for (r, c) in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2), (4, 5)] {
///     mask[[0, r, c]] = 1;
/// }
/// let largest = ops.keep_largest(mask.view(), Connectivity::Planar)?;
/// let filled = ops.fill_holes(largest.view())?;
/// assert_eq!(filled.iter().filter(|&&v| v == 1).count(), 9);
/// assert_eq!(filled[[0, 4, 5]], 0);
/// # Ok(())
/// # }
/// ```
pub fn mask_ops(device: Device) -> (Box<dyn MaskOps>, String) {
    match device {
        Device::Cpu => (
            Box::new(CpuMaskOps::new()),
            "post-processing on the CPU".to_string(),
        ),
        Device::Auto | Device::Gpu => match GpuMaskOps::new() {
            // A software adapter computes the same masks 15-100x slower than the CPU path
            // (benches/post.rs on lavapipe): auto takes the CPU, gpu takes what it asked for.
            Ok(gpu) if device == Device::Auto && gpu.is_software() => (
                Box::new(CpuMaskOps::new()),
                format!(
                    "post-processing on the CPU: the only adapter is a software one ({}); \
                     --device gpu would use it",
                    gpu.backend()
                ),
            ),
            Ok(gpu) => {
                let note = format!("post-processing on the {}", gpu.backend());
                (Box::new(WithFallback::new(gpu)), note)
            }
            Err(e) => (
                Box::new(CpuMaskOps::new()),
                format!(
                    "post-processing on the CPU: {}",
                    error_chain(&e as &dyn std::error::Error)
                ),
            ),
        },
    }
}

/// Checks that `logits` are `[n, 256, 256]`.
fn check_logits(logits: &ArrayView3<f32>) -> Result<(), PostError> {
    let (_, r, c) = logits.dim();
    if (r, c) != (MODEL_SIZE, MODEL_SIZE) {
        return Err(PostError::Shape {
            what: "decoder logits",
            expected: format!("[n, {MODEL_SIZE}, {MODEL_SIZE}]"),
            found: format!("{:?}", logits.shape()),
        });
    }
    Ok(())
}

/// One output sample of the bilinear resize: two source indices and weights. A single
/// tap is stored as `(i, i, 1, 0)`. Shared by both paths so the weights are bit-identical.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub(crate) struct Tap {
    pub(crate) i0: u32,
    pub(crate) i1: u32,
    pub(crate) w0: f32,
    pub(crate) w1: f32,
}

/// Bilinear taps from `src` to `dst` samples, half-pixel centres, exactly as
/// `preprocess::resize` computes them.
pub(crate) fn bilinear_taps(src: usize, dst: usize) -> Vec<Tap> {
    let ratio = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let x = ((d as f64 + 0.5) * ratio - 0.5).max(0.0);
            let i0 = (x.floor() as usize).min(src.saturating_sub(1));
            let i1 = (i0 + 1).min(src.saturating_sub(1));
            let f = (x - i0 as f64) as f32;
            if i1 == i0 {
                Tap {
                    i0: i0 as u32,
                    i1: i0 as u32,
                    w0: 1.0,
                    w1: 0.0,
                }
            } else {
                Tap {
                    i0: i0 as u32,
                    i1: i1 as u32,
                    w0: 1.0 - f,
                    w1: f,
                }
            }
        })
        .collect()
}

/// Order-preserving key of an f32 for top-K: larger values give larger keys, NaN gives 0.
#[inline]
pub(crate) fn order_key(v: f32) -> u32 {
    if v.is_nan() {
        return 0;
    }
    let bits = v.to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn padding_is_cropped_before_resizing() {
        // a 512x256 slice fills the left half of the model frame; logits positive there
        // and strongly negative in the padding must give an all-foreground mask
        let t = Transform::new(512, 256);
        let logits = Array2::from_shape_fn((256, 256), |(_, c)| if c < 128 { 5.0 } else { -50.0 });
        let mask = logits_to_mask(logits.view(), &t, THRESHOLD_LOGIT);
        assert_eq!(mask.dim(), (512, 256));
        assert_eq!(mask.area(), 512 * 256);
    }

    #[test]
    fn square_box_of_logits_maps_to_the_same_region_of_the_source() {
        let t = Transform::new(512, 512);
        let logits = Array2::from_shape_fn((256, 256), |(r, c)| {
            if (64..128).contains(&r) && (32..96).contains(&c) {
                10.0
            } else {
                -10.0
            }
        });
        let mask = logits_to_mask(logits.view(), &t, THRESHOLD_LOGIT);
        assert_eq!(mask.area(), 128 * 128);
        assert_eq!(mask.0[[128, 64]], 1);
        assert_eq!(mask.0[[127, 64]], 0);
    }

    #[test]
    fn device_parses_the_flag_values() {
        assert_eq!("auto".parse::<Device>(), Ok(Device::Auto));
        assert_eq!("GPU".parse::<Device>(), Ok(Device::Gpu));
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert!("cuda".parse::<Device>().is_err());
        assert_eq!(Device::Gpu.to_string(), "gpu");
    }

    #[test]
    fn cpu_device_gives_the_cpu_path() {
        let (ops, note) = mask_ops(Device::Cpu);
        assert_eq!(ops.backend(), Backend::Cpu);
        assert!(note.contains("CPU"), "{note}");
    }

    #[test]
    fn a_failing_gpu_call_falls_back_to_the_cpu_and_stays_there() {
        let gpu = match GpuMaskOps::new() {
            Ok(g) => g,
            Err(e) if std::env::var("COSAM_TEST_GPU").is_ok_and(|v| v == "1") => {
                panic!("COSAM_TEST_GPU=1 but no GPU: {e}")
            }
            Err(_) => return,
        };
        // a 4 KiB buffer cap cannot hold this volume for 26-connected labelling
        let ops = WithFallback::new(gpu.with_max_buffer_bytes(4096));
        assert!(matches!(ops.backend(), Backend::Gpu(_)));
        let mask = Array3::from_shape_fn((4, 32, 32), |(z, r, c)| u8::from((z + r * c) % 3 == 0));
        let labels = ops.label(mask.view(), Connectivity::Volumetric).unwrap();
        let cpu = CpuMaskOps::new();
        assert_eq!(
            labels,
            cpu.label(mask.view(), Connectivity::Volumetric).unwrap()
        );
        assert_eq!(
            ops.backend(),
            Backend::Cpu,
            "later calls go straight to the CPU"
        );
        // input errors are the caller's, never a reason to fall back
        let bad = Array3::<f32>::zeros((1, 10, 10));
        let t = Transform::new(10, 10);
        assert!(matches!(
            CpuMaskOps::new().upsample_threshold(bad.view(), &t, 0.0),
            Err(PostError::Shape { .. })
        ));
    }

    #[test]
    fn order_key_sorts_like_floats_and_puts_nan_last() {
        let values = [
            f32::NEG_INFINITY,
            -2.5,
            -0.0,
            0.0,
            1e-30,
            0.5,
            3.0,
            f32::INFINITY,
        ];
        for pair in values.windows(2) {
            assert!(order_key(pair[0]) < order_key(pair[1]), "{pair:?}");
        }
        assert!(order_key(f32::NAN) < order_key(f32::NEG_INFINITY));
    }

    #[test]
    fn taps_match_torch_linear_upsampling() {
        // torch interpolate([0, 1], size=4, linear, align_corners=False) = [0, .25, .75, 1]
        let taps = bilinear_taps(2, 4);
        let v = [0.0f32, 1.0];
        let out: Vec<f32> = taps
            .iter()
            .map(|t| t.w0 * v[t.i0 as usize] + t.w1 * v[t.i1 as usize])
            .collect();
        assert_eq!(out, vec![0.0, 0.25, 0.75, 1.0]);
    }
}
