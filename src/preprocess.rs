//! Turning a slice into the model's input, and recording how to map outputs back.
//!
//! Order of operations, as in upstream LiteMedSAM inference:
//! 1. intensities to 0..255: CT through a window (W/L), MR and other modalities clipped at
//!    the 0.5 and 99.5 percentiles of the volume's non-zero voxels (zeros stay zero),
//!    display images unchanged;
//! 2. grey replicated to 3 channels;
//! 3. the longest side resized to 256 (`new = round_half_up(old * 256 / max(H, W))`) with an
//!    area filter when shrinking and bilinear interpolation when enlarging;
//! 4. min-max scaling of the resized slice to [0, 1] (no mean/std normalization);
//! 5. zero padding at the bottom and right to 256x256.
//!
//! [`Transform`] records steps 3 and 5 so that `post` can crop and resize logits back onto
//! the source grid. Must not import `model`, `pipeline` or `post`.

use std::path::PathBuf;

use ndarray::{s, Array2, Array4, ArrayView2};

use crate::io::{Modality, Volume, WindowLevel};

/// Side of the square model input, pixels (LiteMedSAM's TinyViT takes 256x256).
pub const MODEL_SIZE: usize = 256;

/// Percentiles of non-zero voxels that bound MR intensities (upstream LiteMedSAM).
const MR_PERCENTILES: (f64, f64) = (0.5, 99.5);

/// Range below which a slice counts as constant after mapping to 0..255.
const CONSTANT_RANGE: f32 = 1e-3;

/// Failure to prepare an image for the model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PreprocessError {
    /// Every voxel of the input has the same value: there is nothing to segment.
    #[error("{path}: image is constant (every pixel is {value}); nothing to segment")]
    ConstantImage {
        /// The input.
        path: PathBuf,
        /// The one value.
        value: f32,
    },
}

/// How intensities become the model's 0..255 range.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum IntensityMode {
    /// By modality: CT through the file's window or else [`WindowLevel::SOFT_TISSUE`], MR and
    /// others by percentile clipping, display images unchanged.
    #[default]
    Auto,
    /// CT window.
    Window(WindowLevel),
    /// Clip at the 0.5/99.5 percentiles of non-zero voxels (MR).
    Percentile,
    /// Only the final min-max scaling (for images already in display range).
    MinMax,
}

/// Options of [`prepare_slice`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct PreprocessOptions {
    /// Intensity mapping (step 1).
    pub intensity: IntensityMode,
    /// A gamma curve after step 1 (`255 * (v / 255)^gamma`); 1, the default, leaves the
    /// intensities as mapped. For test-time augmentation: how much a mask changes when
    /// the contrast does is a signal that needs no reference (issue 14).
    pub gamma: f32,
}

impl Default for PreprocessOptions {
    fn default() -> Self {
        PreprocessOptions {
            intensity: IntensityMode::Auto,
            gamma: 1.0,
        }
    }
}

impl PreprocessOptions {
    /// Options with an intensity mapping.
    pub fn with_intensity(mut self, intensity: IntensityMode) -> Self {
        self.intensity = intensity;
        self
    }

    /// Options with a gamma curve after the intensity mapping ([`Self::gamma`]).
    pub fn with_gamma(mut self, gamma: f32) -> Self {
        self.gamma = gamma;
        self
    }
}

/// Step 1 resolved for one volume: a function from voxel values to 0..255.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntensityMap {
    low: f32,
    high: f32,
    keep_zero: bool,
    identity: bool,
    gamma: f32,
}

impl IntensityMap {
    /// Resolves `mode` for `volume` (computes percentiles when needed).
    ///
    /// # Errors
    /// [`PreprocessError::ConstantImage`] when every voxel has one value.
    pub fn for_volume(volume: &Volume, mode: IntensityMode) -> Result<Self, PreprocessError> {
        let voxels = volume.voxels();
        let (min, max) = voxels
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        if max - min <= 0.0 {
            return Err(PreprocessError::ConstantImage {
                path: volume.source().to_path_buf(),
                value: min,
            });
        }
        let mode = match mode {
            IntensityMode::Auto => match volume.modality() {
                Modality::Ct => {
                    IntensityMode::Window(volume.window().unwrap_or(WindowLevel::SOFT_TISSUE))
                }
                Modality::Display => IntensityMode::MinMax,
                _ => IntensityMode::Percentile,
            },
            other => other,
        };
        Ok(match mode {
            IntensityMode::Window(w) => {
                let (low, high) = w.bounds();
                IntensityMap {
                    low,
                    high,
                    keep_zero: false,
                    identity: false,
                    gamma: 1.0,
                }
            }
            IntensityMode::Percentile => {
                let mut nonzero: Vec<f32> = voxels.iter().copied().filter(|&v| v != 0.0).collect();
                let (low, high) = if nonzero.is_empty() {
                    (min, max)
                } else {
                    (
                        percentile(&mut nonzero, MR_PERCENTILES.0),
                        percentile(&mut nonzero, MR_PERCENTILES.1),
                    )
                };
                IntensityMap {
                    low,
                    high: if high > low { high } else { max },
                    keep_zero: true,
                    identity: false,
                    gamma: 1.0,
                }
            }
            IntensityMode::MinMax | IntensityMode::Auto => IntensityMap {
                low: min,
                high: max,
                keep_zero: false,
                identity: true,
                gamma: 1.0,
            },
        })
    }

    /// The same mapping followed by a gamma curve, `255 * (v / 255)^gamma`
    /// ([`PreprocessOptions::gamma`]).
    pub fn with_gamma(mut self, gamma: f32) -> Self {
        self.gamma = gamma;
        self
    }

    /// Maps one voxel value to 0..255.
    #[inline]
    pub fn apply(&self, v: f32) -> f32 {
        let mapped = if self.identity {
            v
        } else if self.keep_zero && v == 0.0 {
            0.0
        } else {
            (v.clamp(self.low, self.high) - self.low) / (self.high - self.low) * 255.0
        };
        if self.gamma == 1.0 {
            mapped
        } else {
            255.0 * (mapped / 255.0).clamp(0.0, 1.0).powf(self.gamma)
        }
    }
}

/// Linear-interpolated percentile (numpy's default), `q` in 0..100, in linear time.
/// Reorders `values`, which must not be empty.
fn percentile(values: &mut [f32], q: f64) -> f32 {
    let pos = q / 100.0 * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let frac = (pos - lo as f64) as f32;
    let (_, &mut low, above) = values.select_nth_unstable_by(lo, f32::total_cmp);
    let high = above.iter().copied().min_by(f32::total_cmp).unwrap_or(low);
    low + (high - low) * frac
}

/// Geometry of steps 3 and 5: how a source slice sits inside the 256x256 model input.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Transform {
    /// Source slice rows.
    pub source_rows: usize,
    /// Source slice columns.
    pub source_cols: usize,
    /// Rows of the resized slice inside the model input (the rest is padding).
    pub scaled_rows: usize,
    /// Columns of the resized slice inside the model input.
    pub scaled_cols: usize,
    /// Model pixels per source pixel, `256 / max(rows, cols)`.
    pub scale: f64,
}

impl Transform {
    /// The transform of a `rows x cols` slice.
    pub fn new(rows: usize, cols: usize) -> Transform {
        let longest = rows.max(cols).max(1);
        let scale = MODEL_SIZE as f64 / longest as f64;
        let scaled = |n: usize| (((n as f64) * scale + 0.5) as usize).clamp(1, MODEL_SIZE);
        Transform {
            source_rows: rows,
            source_cols: cols,
            scaled_rows: scaled(rows),
            scaled_cols: scaled(cols),
            scale,
        }
    }

    /// A point in source pixels `(x = column, y = row)` to the model frame.
    pub fn to_model(&self, x: f64, y: f64) -> (f64, f64) {
        (x * self.scale, y * self.scale)
    }

    /// A point in the model frame back to source pixels.
    pub fn to_source(&self, x: f64, y: f64) -> (f64, f64) {
        (x / self.scale, y / self.scale)
    }
}

/// A slice ready for the image encoder.
#[derive(Debug, Clone)]
pub struct ModelInput {
    /// `[1, 3, 256, 256]`, values in [0, 1].
    pub tensor: Array4<f32>,
    /// Where the slice sits in the tensor.
    pub transform: Transform,
}

/// Whether a slice can be segmented, with its model input when it can.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// The slice has content.
    Input(ModelInput),
    /// The slice is constant after intensity mapping (for example all air under a soft
    /// tissue window): its mask is empty without running the model.
    Constant(Transform),
}

/// Steps 2-5 for slice `slice` of `volume`, with step 1 given by `map`.
///
/// # Panics
/// When `slice` is out of range (a caller's bug).
pub fn prepare_slice(volume: &Volume, slice: usize, map: &IntensityMap) -> Prepared {
    let (rows, cols) = volume.slice_size();
    let transform = Transform::new(rows, cols);
    let channels = volume.channels();
    let mut resized = Vec::with_capacity(3);
    for c in 0..channels {
        let mapped = volume.slice_channel(slice, c).mapv(|v| map.apply(v));
        resized.push(resize(
            mapped.view(),
            transform.scaled_rows,
            transform.scaled_cols,
            Kernel::for_scale(rows, transform.scaled_rows),
            Kernel::for_scale(cols, transform.scaled_cols),
        ));
    }
    let (min, max) = resized
        .iter()
        .flat_map(|a| a.iter())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if max - min < CONSTANT_RANGE {
        return Prepared::Constant(transform);
    }
    let range = max - min;
    let mut tensor = Array4::<f32>::zeros((1, 3, MODEL_SIZE, MODEL_SIZE));
    for c in 0..3 {
        let src = &resized[c.min(channels - 1)];
        tensor
            .slice_mut(s![0, c, ..transform.scaled_rows, ..transform.scaled_cols])
            .zip_mut_with(src, |t, &v| *t = (v - min) / range);
    }
    Prepared::Input(ModelInput { tensor, transform })
}

/// Slice `slice` of `volume` as 8-bit grey for display, through step 1 (colour channels
/// averaged).
///
/// # Panics
/// When `slice` is out of range (a caller's bug).
pub fn display_slice(volume: &Volume, slice: usize, map: &IntensityMap) -> Array2<u8> {
    let (rows, cols) = volume.slice_size();
    let channels = volume.channels();
    let mut sum = Array2::<f32>::zeros((rows, cols));
    for c in 0..channels {
        sum.zip_mut_with(&volume.slice_channel(slice, c), |s, &v| *s += map.apply(v));
    }
    sum.mapv(|v| (v / channels as f32).round().clamp(0.0, 255.0) as u8)
}

/// 1-D resampling kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Average over the covered source interval (OpenCV's INTER_AREA when shrinking).
    Area,
    /// Linear interpolation between the two nearest samples, half-pixel centres
    /// (PyTorch's `bilinear`, `align_corners=False`, no antialiasing).
    Bilinear,
}

impl Kernel {
    /// Area when shrinking, bilinear otherwise (step 3).
    pub fn for_scale(src: usize, dst: usize) -> Kernel {
        if dst < src {
            Kernel::Area
        } else {
            Kernel::Bilinear
        }
    }
}

/// Taps of one output sample: first source index and weights.
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

fn taps(src: usize, dst: usize, kernel: Kernel) -> Vec<Taps> {
    let ratio = src as f64 / dst as f64;
    (0..dst)
        .map(|d| match kernel {
            Kernel::Bilinear => {
                let x = ((d as f64 + 0.5) * ratio - 0.5).max(0.0);
                let i0 = (x.floor() as usize).min(src - 1);
                let i1 = (i0 + 1).min(src - 1);
                let f = (x - i0 as f64) as f32;
                if i1 == i0 {
                    Taps {
                        start: i0,
                        weights: vec![1.0],
                    }
                } else {
                    Taps {
                        start: i0,
                        weights: vec![1.0 - f, f],
                    }
                }
            }
            Kernel::Area => {
                let (a, b) = (d as f64 * ratio, (d as f64 + 1.0) * ratio);
                let start = a.floor() as usize;
                let end = (b.ceil() as usize).min(src);
                let weights = (start..end)
                    .map(|i| {
                        let overlap = (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0);
                        (overlap / ratio) as f32
                    })
                    .collect();
                Taps { start, weights }
            }
        })
        .collect()
}

/// Separable resampling of `input` to `rows x cols`, rows first.
pub fn resize(
    input: ArrayView2<f32>,
    rows: usize,
    cols: usize,
    row_kernel: Kernel,
    col_kernel: Kernel,
) -> Array2<f32> {
    let (src_rows, src_cols) = input.dim();
    let row_taps = taps(src_rows, rows, row_kernel);
    let col_taps = taps(src_cols, cols, col_kernel);
    let mut tmp = Array2::<f32>::zeros((rows, src_cols));
    for (r, t) in row_taps.iter().enumerate() {
        let mut out = tmp.row_mut(r);
        for (k, &w) in t.weights.iter().enumerate() {
            out.scaled_add(w, &input.row(t.start + k));
        }
    }
    let mut result = Array2::<f32>::zeros((rows, cols));
    for (r, src_row) in tmp.rows().into_iter().enumerate() {
        let src = src_row.as_slice();
        for (c, t) in col_taps.iter().enumerate() {
            let acc: f32 = match src {
                Some(src) => t
                    .weights
                    .iter()
                    .zip(&src[t.start..])
                    .map(|(w, v)| w * v)
                    .sum(),
                None => t
                    .weights
                    .iter()
                    .enumerate()
                    .map(|(k, w)| w * src_row[t.start + k])
                    .sum(),
            };
            result[[r, c]] = acc;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{Affine, Spacing};
    use ndarray::Array2;

    fn volume(values: Array2<f32>, modality: Modality) -> Volume {
        let (r, c) = values.dim();
        let spacing = Spacing {
            column_mm: 1.0,
            row_mm: 1.0,
            slice_mm: 1.0,
        };
        Volume::new(
            values.into_shape_with_order((1, r, c, 1)).unwrap(),
            spacing,
            Affine::from_spacing(spacing),
            modality,
            "test".into(),
        )
        .unwrap()
    }

    #[test]
    fn transform_rounds_like_upstream() {
        let t = Transform::new(512, 400);
        assert_eq!((t.scaled_rows, t.scaled_cols), (256, 200));
        let t = Transform::new(217, 181);
        // 181 * 256 / 217 = 213.5 -> 214 (round half up, as int(x + 0.5))
        assert_eq!((t.scaled_rows, t.scaled_cols), (256, 214));
    }

    #[test]
    fn transform_maps_points_both_ways() {
        let t = Transform::new(512, 512);
        assert_eq!(t.to_model(100.0, 50.0), (50.0, 25.0));
        assert_eq!(t.to_source(50.0, 25.0), (100.0, 50.0));
    }

    #[test]
    fn area_halving_averages_pairs() {
        let a = Array2::from_shape_fn((2, 4), |(r, c)| (r * 4 + c) as f32);
        let out = resize(a.view(), 1, 2, Kernel::Area, Kernel::Area);
        assert_eq!(out, ndarray::arr2(&[[2.5, 4.5]]));
    }

    #[test]
    fn area_with_fractional_ratio_preserves_mean() {
        let a = Array2::from_shape_fn((7, 5), |(r, c)| ((r * 31 + c * 17) % 11) as f32);
        let out = resize(a.view(), 3, 2, Kernel::Area, Kernel::Area);
        let mean_in = a.mean().unwrap();
        let mean_out = out.mean().unwrap();
        assert!((mean_in - mean_out).abs() < 1e-4, "{mean_in} vs {mean_out}");
    }

    #[test]
    fn bilinear_matches_torch_upsampling() {
        // torch.nn.functional.interpolate(tensor([[0., 1.]]), size=4, mode='linear',
        // align_corners=False) = [0.0, 0.25, 0.75, 1.0]
        let a = ndarray::arr2(&[[0.0f32, 1.0]]);
        let out = resize(a.view(), 1, 4, Kernel::Bilinear, Kernel::Bilinear);
        assert_eq!(out, ndarray::arr2(&[[0.0, 0.25, 0.75, 1.0]]));
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        // numpy.percentile([1, 2, 3, 4], 50) = 2.5; [..., 99.5] of 0..=200 = 199.0
        assert_eq!(percentile(&mut [4.0, 1.0, 3.0, 2.0], 50.0), 2.5);
        let mut v: Vec<f32> = (0..=200).rev().map(|x| x as f32).collect();
        assert_eq!(percentile(&mut v, 99.5), 199.0);
    }

    #[test]
    fn window_maps_to_0_255_and_clips() {
        let v = volume(
            ndarray::arr2(&[[-1000.0, -160.0, 40.0, 240.0, 3000.0]]),
            Modality::Ct,
        );
        let m = IntensityMap::for_volume(&v, IntensityMode::Auto).unwrap();
        let out: Vec<f32> = v.voxels().iter().map(|&x| m.apply(x)).collect();
        assert_eq!(out, vec![0.0, 0.0, 127.5, 255.0, 255.0]);
    }

    #[test]
    fn gamma_bends_the_mapped_range_and_keeps_its_ends() {
        let v = volume(
            ndarray::arr2(&[[-1000.0, -160.0, 40.0, 240.0, 3000.0]]),
            Modality::Ct,
        );
        let plain = IntensityMap::for_volume(&v, IntensityMode::Auto).unwrap();
        let bent = plain.with_gamma(2.0);
        let out: Vec<f32> = v.voxels().iter().map(|&x| bent.apply(x)).collect();
        // mid-window 127.5 -> 255 * 0.5^2
        assert_eq!(out, vec![0.0, 0.0, 63.75, 255.0, 255.0]);
        assert_eq!(plain.with_gamma(1.0), plain);
    }

    #[test]
    fn percentile_mapping_keeps_background_zero() {
        let vals = Array2::from_shape_fn(
            (10, 20),
            |(r, c)| if c < 5 { 0.0 } else { (r * 20 + c) as f32 },
        );
        let v = volume(vals, Modality::Mr);
        let m = IntensityMap::for_volume(&v, IntensityMode::Auto).unwrap();
        assert_eq!(m.apply(0.0), 0.0);
        assert_eq!(m.apply(1e9), 255.0);
    }

    #[test]
    fn constant_image_is_an_error() {
        let v = volume(Array2::from_elem((4, 4), 7.0), Modality::Display);
        assert!(matches!(
            IntensityMap::for_volume(&v, IntensityMode::Auto),
            Err(PreprocessError::ConstantImage { .. })
        ));
    }

    #[test]
    fn prepared_slice_is_padded_and_scaled() {
        let vals = Array2::from_shape_fn((128, 64), |(r, c)| (r + c) as f32);
        let v = volume(vals, Modality::Display);
        let m = IntensityMap::for_volume(&v, IntensityMode::Auto).unwrap();
        let Prepared::Input(input) = prepare_slice(&v, 0, &m) else {
            panic!("slice has content")
        };
        assert_eq!(
            (input.transform.scaled_rows, input.transform.scaled_cols),
            (256, 128)
        );
        let t = &input.tensor;
        assert_eq!(t[[0, 0, 0, 200]], 0.0, "padding is zero");
        let max = t.iter().copied().fold(0.0, f32::max);
        assert!((max - 1.0).abs() < 1e-6);
        assert_eq!(t[[0, 0, 10, 10]], t[[0, 2, 10, 10]], "grey replicated");
    }
}
