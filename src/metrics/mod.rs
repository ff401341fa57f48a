//! Per-case segmentation metrics between binary masks, in physical units: Dice, IoU,
//! Hausdorff distance (HD), HD95, average symmetric surface distance (ASSD) and normalised
//! surface Dice (NSD), plus the exact Euclidean distance transform they rest on.
//! Depends on nothing else in the crate (only ndarray, rayon and thiserror).
//!
//! Masks are `u8` arrays, non-zero = foreground; prediction and reference have the same
//! shape. Surface metrics take 2-D or 3-D masks and the voxel spacing in mm, one value per
//! array axis in array axis order (for a `(slice, row, column)` volume:
//! `[slice_thickness, row_spacing, column_spacing]`). Distances are in mm.
//!
//! # Which convention
//!
//! HD95 has three incompatible definitions in use; [`Hd95Convention`] names them:
//!
//! | convention | surface points | HD95 | used by |
//! |---|---|---|---|
//! | [`MedpyPooled`](Hd95Convention::MedpyPooled) | voxel surfaces | 95th percentile of both directions' distances pooled | medpy `hd95` |
//! | [`MonaiMaxDirection`](Hd95Convention::MonaiMaxDirection) | voxel surfaces | larger of the two per-direction 95th percentiles | MONAI `compute_hausdorff_distance` |
//! | [`SurfaceWeighted`](Hd95Convention::SurfaceWeighted) (default) | dual-grid surfels weighted by contour length / area | per direction the smallest distance whose cumulative surfel weight reaches 95 %, then the larger | DeepMind surface-distance `compute_robust_hausdorff` |
//!
//! *Voxel surfaces*: the foreground minus its erosion by the face-connected (cross)
//! structuring element, outside the array counted as background; each surface voxel counts
//! once ([`VoxelSurfaceDistances`]). Percentiles interpolate linearly (numpy's default).
//! *Surfels*: one per 2x2 (2-D) or 2x2x2 (3-D) voxel neighbourhood that is neither all
//! background nor all foreground, located on the dual grid and weighted by the length
//! (2-D, marching squares) or area (3-D, marching-cubes-style) of the boundary inside it
//! ([`SurfelDistances`]).
//!
//! The other surface metrics are fixed:
//!
//! * HD is the largest distance in either direction, on the surface points of the chosen
//!   convention (voxel surfaces for medpy and MONAI, which agree; surfels for
//!   `SurfaceWeighted`).
//! * ASSD is medpy 0.5.2's: the mean of all voxel-surface distances of both directions
//!   pooled (MONAI's symmetric average surface distance is the same), whatever the HD95
//!   convention. Directed means and DeepMind's weighted means are on
//!   [`VoxelSurfaceDistances`] and [`SurfelDistances`].
//! * NSD is DeepMind's surfel-weighted surface Dice at a tolerance in mm: the weight of the
//!   surfels of each mask within the tolerance of the other surface over the total weight
//!   of both. The MedSAM challenge reports it at 2 mm ([`MetricsOptions`] default).
//!
//! # Empty masks
//!
//! No metric silently turns an empty mask into 0. `None` means *undefined*; `+inf` means
//! *a surface exists on one side and nothing to reach on the other*:
//!
//! | prediction / reference | Dice, IoU | HD, HD95 (all conventions), ASSD | NSD | directed mean or distances X -> Y |
//! |---|---|---|---|---|
//! | both non-empty | value | value | value | value |
//! | empty / non-empty | `Some(0.0)` | `Some(+inf)` | `Some(0.0)` | X empty: `None`; Y empty: `Some(+inf)` |
//! | non-empty / empty | `Some(0.0)` | `Some(+inf)` | `Some(0.0)` | as above |
//! | both empty | `None` | `None` | `None` | `None` |
//!
//! For comparison, the reference libraries: medpy raises on any empty mask; MONAI returns
//! `inf` (HD) or `nan` (HD95) when one mask is empty and `nan` when both are; DeepMind
//! returns `inf` HD/HD95 for one or both empty, `nan` NSD for both empty, `nan` Dice for
//! both empty. An evaluation that aggregates cases must decide how to count `None` and
//! `+inf`; these functions only report them.
//!
//! # Example
//!
//! ```
//! use cosam::metrics::{evaluate_case, Hd95Convention, MetricsOptions};
//! use ndarray::Array2;
//!
//! # fn main() -> Result<(), cosam::metrics::MetricsError> {
//! let mut reference = Array2::<u8>::zeros((32, 32));
//! reference.slice_mut(ndarray::s![5..15, 5..15]).fill(1);
//! let mut prediction = Array2::<u8>::zeros((32, 32));
//! prediction.slice_mut(ndarray::s![5..15, 7..17]).fill(1);
//!
//! let options = MetricsOptions::default().with_hd95_convention(Hd95Convention::MedpyPooled);
//! let m = evaluate_case(&prediction, &reference, &[1.0, 1.0], &options)?;
//! assert_eq!(m.dice, Some(0.8));
//! assert_eq!(m.hd95_mm, Some(2.0));
//! assert_eq!(m.nsd, Some(1.0)); // every surfel within 2 mm
//!
//! let empty = Array2::<u8>::zeros((32, 32));
//! let m = evaluate_case(&empty, &reference, &[1.0, 1.0], &options)?;
//! assert_eq!(m.hd95_mm, Some(f64::INFINITY));
//! let m = evaluate_case(&empty, &empty, &[1.0, 1.0], &options)?;
//! assert_eq!((m.dice, m.hd95_mm, m.nsd), (None, None, None));
//! # Ok(())
//! # }
//! ```

use ndarray::{Array, ArrayBase, Data, Dimension, Zip};

mod edt;
mod surface;
mod surfel;

pub use surface::{SurfelDistances, VoxelSurfaceDistances};

/// Errors of the metrics: invalid arguments, never the mask contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Prediction and reference differ in shape.
    #[error("mask shapes differ: prediction {prediction:?}, reference {reference:?}")]
    ShapeMismatch {
        /// Shape of the prediction.
        prediction: Vec<usize>,
        /// Shape of the reference.
        reference: Vec<usize>,
    },
    /// Surface metrics need 2-D or 3-D masks.
    #[error("surface metrics need 2-d or 3-d masks, found {ndim}-d")]
    UnsupportedDimension {
        /// Number of axes found.
        ndim: usize,
    },
    /// The spacing does not have one value per array axis.
    #[error("spacing has {found} values for a {ndim}-d array")]
    SpacingLength {
        /// Number of array axes.
        ndim: usize,
        /// Number of spacing values given.
        found: usize,
    },
    /// A spacing value is not a positive finite number of mm.
    #[error("spacing of axis {axis} is {spacing_mm} mm, expected a positive finite value")]
    InvalidSpacing {
        /// The axis.
        axis: usize,
        /// The value given.
        spacing_mm: f64,
    },
    /// The NSD tolerance is negative or NaN.
    #[error("nsd tolerance is {tolerance_mm} mm, expected a non-negative value")]
    InvalidTolerance {
        /// The value given.
        tolerance_mm: f64,
    },
    /// A percentile outside 0..=100.
    #[error("percentile {percent} is outside 0..=100")]
    InvalidPercentile {
        /// The value given.
        percent: f64,
    },
    /// The distance map could not be laid out in the input's shape.
    #[error("distance map of shape {shape:?} could not be assembled")]
    Layout {
        /// Shape of the input.
        shape: Vec<usize>,
        /// The cause.
        #[source]
        source: ndarray::ShapeError,
    },
}

/// Checks that `spacing_mm` has `ndim` positive finite values.
fn check_spacing(spacing_mm: &[f64], ndim: usize) -> Result<(), MetricsError> {
    if spacing_mm.len() != ndim {
        return Err(MetricsError::SpacingLength {
            ndim,
            found: spacing_mm.len(),
        });
    }
    match spacing_mm.iter().position(|&s| !(s.is_finite() && s > 0.0)) {
        Some(axis) => Err(MetricsError::InvalidSpacing {
            axis,
            spacing_mm: spacing_mm[axis],
        }),
        None => Ok(()),
    }
}

/// Foreground counts of a pair of masks.
fn counts<S1, S2, D>(a: &ArrayBase<S1, D>, b: &ArrayBase<S2, D>) -> (usize, usize, usize)
where
    S1: Data<Elem = u8>,
    S2: Data<Elem = u8>,
    D: Dimension,
{
    let (mut both, mut only_a, mut only_b) = (0, 0, 0);
    Zip::from(a)
        .and(b)
        .for_each(|&x, &y| match (x != 0, y != 0) {
            (true, true) => both += 1,
            (true, false) => only_a += 1,
            (false, true) => only_b += 1,
            _ => {}
        });
    (both, only_a, only_b)
}

fn dice_from_counts(both: usize, only_a: usize, only_b: usize) -> Option<f64> {
    let denom = 2 * both + only_a + only_b;
    (denom > 0).then(|| 2.0 * both as f64 / denom as f64)
}

fn iou_from_counts(both: usize, only_a: usize, only_b: usize) -> Option<f64> {
    let union = both + only_a + only_b;
    (union > 0).then(|| both as f64 / union as f64)
}

/// Dice similarity coefficient, `2|A∩B| / (|A| + |B|)`; `None` when both are empty.
///
/// # Panics
/// When the shapes differ.
pub fn dice<S1, S2, D>(a: &ArrayBase<S1, D>, b: &ArrayBase<S2, D>) -> Option<f64>
where
    S1: Data<Elem = u8>,
    S2: Data<Elem = u8>,
    D: Dimension,
{
    let (both, only_a, only_b) = counts(a, b);
    dice_from_counts(both, only_a, only_b)
}

/// Intersection over union, `|A∩B| / |A∪B|`; `None` when both are empty.
///
/// # Panics
/// When the shapes differ.
pub fn iou<S1, S2, D>(a: &ArrayBase<S1, D>, b: &ArrayBase<S2, D>) -> Option<f64>
where
    S1: Data<Elem = u8>,
    S2: Data<Elem = u8>,
    D: Dimension,
{
    let (both, only_a, only_b) = counts(a, b);
    iou_from_counts(both, only_a, only_b)
}

/// Which HD95 definition to use; see the [module documentation](self) for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Hd95Convention {
    /// medpy `hd95`: voxel surfaces, 95th percentile (linear interpolation) of the
    /// distances of both directions pooled.
    MedpyPooled,
    /// MONAI `compute_hausdorff_distance(percentile=95)`: voxel surfaces, the larger of the
    /// two per-direction 95th percentiles.
    MonaiMaxDirection,
    /// DeepMind surface-distance `compute_robust_hausdorff(.., 95)`: surfels weighted by
    /// contour length (2-D) or area (3-D); per direction the smallest distance whose
    /// cumulative weight fraction reaches 0.95, then the larger.
    #[default]
    SurfaceWeighted,
}

/// Options of [`evaluate_case`].
///
/// Built from `Default` (surface-weighted HD95, NSD at 2 mm as the MedSAM challenge
/// reports it) and the `with_*` setters; the options are independent of each other.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct MetricsOptions {
    /// HD95 definition; also picks the surface points of HD.
    pub hd95_convention: Hd95Convention,
    /// NSD tolerance in mm, non-negative.
    pub nsd_tolerance_mm: f64,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        Self {
            hd95_convention: Hd95Convention::SurfaceWeighted,
            nsd_tolerance_mm: 2.0,
        }
    }
}

impl MetricsOptions {
    /// Sets the HD95 convention.
    pub fn with_hd95_convention(mut self, convention: Hd95Convention) -> Self {
        self.hd95_convention = convention;
        self
    }

    /// Sets the NSD tolerance in mm (checked by [`evaluate_case`]).
    pub fn with_nsd_tolerance_mm(mut self, tolerance_mm: f64) -> Self {
        self.nsd_tolerance_mm = tolerance_mm;
        self
    }
}

/// The metrics of one case. `None` and `+inf` follow the empty-mask table of the
/// [module documentation](self).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CaseMetrics {
    /// Dice similarity coefficient.
    pub dice: Option<f64>,
    /// Intersection over union.
    pub iou: Option<f64>,
    /// Hausdorff distance in mm, on the surface points of `hd95_convention`.
    pub hd_mm: Option<f64>,
    /// HD95 in mm under `hd95_convention`.
    pub hd95_mm: Option<f64>,
    /// Average symmetric surface distance in mm (medpy 0.5.2: voxel surfaces, both
    /// directions pooled).
    pub assd_mm: Option<f64>,
    /// Normalised surface Dice at `nsd_tolerance_mm` (DeepMind, surfel-weighted), 0..=1.
    pub nsd: Option<f64>,
    /// The HD95 convention used.
    pub hd95_convention: Hd95Convention,
    /// The NSD tolerance used, in mm.
    pub nsd_tolerance_mm: f64,
    /// Foreground voxels of the prediction.
    pub prediction_voxels: usize,
    /// Foreground voxels of the reference.
    pub reference_voxels: usize,
}

/// All metrics of one case: Dice, IoU, HD, HD95, ASSD and NSD.
///
/// `spacing_mm` gives the voxel spacing of each array axis in array axis order.
///
/// # Errors
/// [`MetricsError`] when the shapes differ, the masks are not 2-D or 3-D, the spacing is
/// not one positive finite value per axis, or the NSD tolerance is negative or NaN.
///
/// # Example
/// ```
/// use cosam::metrics::{evaluate_case, MetricsOptions};
/// use ndarray::Array3;
///
/// # fn main() -> Result<(), cosam::metrics::MetricsError> {
/// let mut reference = Array3::<u8>::zeros((16, 16, 16));
/// reference.slice_mut(ndarray::s![4..12, 4..12, 4..12]).fill(1);
/// let mut prediction = Array3::<u8>::zeros((16, 16, 16));
/// prediction.slice_mut(ndarray::s![5..13, 4..12, 4..12]).fill(1);
/// let m = evaluate_case(&prediction, &reference, &[2.5, 1.0, 1.0], &MetricsOptions::default())?;
/// assert_eq!(m.dice, Some(0.875));
/// assert_eq!(m.hd_mm, Some(2.5));
/// # Ok(())
/// # }
/// ```
pub fn evaluate_case<S1, S2, D>(
    prediction: &ArrayBase<S1, D>,
    reference: &ArrayBase<S2, D>,
    spacing_mm: &[f64],
    options: &MetricsOptions,
) -> Result<CaseMetrics, MetricsError>
where
    S1: Data<Elem = u8>,
    S2: Data<Elem = u8>,
    D: Dimension,
{
    let tolerance_mm = options.nsd_tolerance_mm;
    if tolerance_mm.is_nan() || tolerance_mm < 0.0 {
        return Err(MetricsError::InvalidTolerance { tolerance_mm });
    }
    let pair = surface::MaskPair::new(prediction, reference, spacing_mm)?;
    let both = pair.both_voxels;
    let (only_p, only_r) = (pair.prediction_voxels - both, pair.reference_voxels - both);
    let voxel = pair.voxel_surface_distances();
    let surfels = pair.surfel_distances();
    let (hd_mm, hd95_mm) = match options.hd95_convention {
        Hd95Convention::MedpyPooled => (voxel.hd_mm(), voxel.hd95_pooled_mm()),
        Hd95Convention::MonaiMaxDirection => (voxel.hd_mm(), voxel.hd95_max_direction_mm()),
        Hd95Convention::SurfaceWeighted => (surfels.hd_mm(), surfels.hd95_mm()),
    };
    Ok(CaseMetrics {
        dice: dice_from_counts(both, only_p, only_r),
        iou: iou_from_counts(both, only_p, only_r),
        hd_mm,
        hd95_mm,
        assd_mm: voxel.assd_mm(),
        nsd: surfels.nsd(tolerance_mm)?,
        hd95_convention: options.hd95_convention,
        nsd_tolerance_mm: tolerance_mm,
        prediction_voxels: pair.prediction_voxels,
        reference_voxels: pair.reference_voxels,
    })
}

/// Distances between the voxel surfaces of two masks (medpy, MONAI).
///
/// # Errors
/// [`MetricsError`] when the shapes differ, the masks are not 2-D or 3-D, or the spacing
/// is not one positive finite value per axis.
///
/// # Example
/// ```
/// use cosam::metrics::voxel_surface_distances;
/// use ndarray::Array2;
///
/// # fn main() -> Result<(), cosam::metrics::MetricsError> {
/// let mut prediction = Array2::<u8>::zeros((16, 16));
/// let mut reference = Array2::<u8>::zeros((16, 16));
/// prediction[[8, 4]] = 1;
/// reference[[8, 7]] = 1;
/// let d = voxel_surface_distances(&prediction, &reference, &[1.0, 0.5])?;
/// assert_eq!(d.prediction_to_reference_mm(), &[1.5]);
/// assert_eq!(d.hd_mm(), Some(1.5));
/// # Ok(())
/// # }
/// ```
pub fn voxel_surface_distances<S1, S2, D>(
    prediction: &ArrayBase<S1, D>,
    reference: &ArrayBase<S2, D>,
    spacing_mm: &[f64],
) -> Result<VoxelSurfaceDistances, MetricsError>
where
    S1: Data<Elem = u8>,
    S2: Data<Elem = u8>,
    D: Dimension,
{
    Ok(surface::MaskPair::new(prediction, reference, spacing_mm)?.voxel_surface_distances())
}

/// Distances between the weighted surface elements of two masks (DeepMind).
///
/// # Errors
/// [`MetricsError`] when the shapes differ, the masks are not 2-D or 3-D, or the spacing
/// is not one positive finite value per axis.
///
/// # Example
/// ```
/// use cosam::metrics::surfel_distances;
/// use ndarray::Array2;
///
/// # fn main() -> Result<(), cosam::metrics::MetricsError> {
/// let mut prediction = Array2::<u8>::zeros((16, 16));
/// let mut reference = Array2::<u8>::zeros((16, 16));
/// prediction[[8, 4]] = 1;
/// reference[[8, 7]] = 1;
/// let d = surfel_distances(&prediction, &reference, &[1.0, 1.0])?;
/// // Four corner surfels per pixel, at 2 and 3 mm from the other pixel's.
/// let mean = d.mean_prediction_to_reference_mm().unwrap_or(f64::NAN);
/// assert!((mean - 2.5).abs() < 1e-12);
/// assert_eq!(d.nsd(2.0)?, Some(0.5));
/// # Ok(())
/// # }
/// ```
pub fn surfel_distances<S1, S2, D>(
    prediction: &ArrayBase<S1, D>,
    reference: &ArrayBase<S2, D>,
    spacing_mm: &[f64],
) -> Result<SurfelDistances, MetricsError>
where
    S1: Data<Elem = u8>,
    S2: Data<Elem = u8>,
    D: Dimension,
{
    Ok(surface::MaskPair::new(prediction, reference, spacing_mm)?.surfel_distances())
}

/// HD95 in mm under `convention`; `None` when both masks are empty, `+inf` when one is.
///
/// # Errors
/// [`MetricsError`] when the shapes differ, the masks are not 2-D or 3-D, or the spacing
/// is not one positive finite value per axis.
///
/// # Example
/// ```
/// use cosam::metrics::{hd95, Hd95Convention};
/// use ndarray::Array2;
///
/// # fn main() -> Result<(), cosam::metrics::MetricsError> {
/// let mut reference = Array2::<u8>::zeros((20, 20));
/// reference.slice_mut(ndarray::s![0..6, 0..6]).fill(1);
/// let mut prediction = Array2::<u8>::zeros((20, 20));
/// prediction.slice_mut(ndarray::s![0..8, 0..6]).fill(1);
/// let spacing = [1.0, 1.0];
/// assert_eq!(hd95(&prediction, &reference, &spacing, Hd95Convention::MedpyPooled)?, Some(2.0));
/// # Ok(())
/// # }
/// ```
pub fn hd95<S1, S2, D>(
    prediction: &ArrayBase<S1, D>,
    reference: &ArrayBase<S2, D>,
    spacing_mm: &[f64],
    convention: Hd95Convention,
) -> Result<Option<f64>, MetricsError>
where
    S1: Data<Elem = u8>,
    S2: Data<Elem = u8>,
    D: Dimension,
{
    let pair = surface::MaskPair::new(prediction, reference, spacing_mm)?;
    Ok(match convention {
        Hd95Convention::MedpyPooled => pair.voxel_surface_distances().hd95_pooled_mm(),
        Hd95Convention::MonaiMaxDirection => pair.voxel_surface_distances().hd95_max_direction_mm(),
        Hd95Convention::SurfaceWeighted => pair.surfel_distances().hd95_mm(),
    })
}

/// Hausdorff distance in mm between the voxel surfaces (medpy `hd`, MONAI); `None` when
/// both masks are empty, `+inf` when one is.
///
/// # Errors
/// [`MetricsError`] when the shapes differ, the masks are not 2-D or 3-D, or the spacing
/// is not one positive finite value per axis.
///
/// # Example
/// ```
/// use ndarray::Array2;
///
/// # fn main() -> Result<(), cosam::metrics::MetricsError> {
/// let mut prediction = Array2::<u8>::zeros((8, 8));
/// let mut reference = Array2::<u8>::zeros((8, 8));
/// prediction[[1, 1]] = 1;
/// reference[[4, 5]] = 1;
/// assert_eq!(cosam::metrics::hd(&prediction, &reference, &[1.0, 1.0])?, Some(5.0));
/// # Ok(())
/// # }
/// ```
pub fn hd<S1, S2, D>(
    prediction: &ArrayBase<S1, D>,
    reference: &ArrayBase<S2, D>,
    spacing_mm: &[f64],
) -> Result<Option<f64>, MetricsError>
where
    S1: Data<Elem = u8>,
    S2: Data<Elem = u8>,
    D: Dimension,
{
    Ok(voxel_surface_distances(prediction, reference, spacing_mm)?.hd_mm())
}

/// Average symmetric surface distance in mm (medpy 0.5.2 `assd`: voxel surfaces, the
/// distances of both directions pooled); `None` when both masks are empty, `+inf` when one
/// is.
///
/// # Errors
/// [`MetricsError`] when the shapes differ, the masks are not 2-D or 3-D, or the spacing
/// is not one positive finite value per axis.
///
/// # Example
/// ```
/// use ndarray::Array2;
///
/// # fn main() -> Result<(), cosam::metrics::MetricsError> {
/// let mut reference = Array2::<u8>::zeros((20, 20));
/// reference.slice_mut(ndarray::s![0..6, 0..6]).fill(1);
/// let mut prediction = Array2::<u8>::zeros((20, 20));
/// prediction.slice_mut(ndarray::s![0..8, 0..6]).fill(1);
/// // 24 prediction surface voxels summing 14 mm, 20 reference ones summing 6 mm.
/// let assd = cosam::metrics::assd(&prediction, &reference, &[1.0, 1.0])?;
/// assert_eq!(assd, Some(20.0 / 44.0));
/// # Ok(())
/// # }
/// ```
pub fn assd<S1, S2, D>(
    prediction: &ArrayBase<S1, D>,
    reference: &ArrayBase<S2, D>,
    spacing_mm: &[f64],
) -> Result<Option<f64>, MetricsError>
where
    S1: Data<Elem = u8>,
    S2: Data<Elem = u8>,
    D: Dimension,
{
    Ok(voxel_surface_distances(prediction, reference, spacing_mm)?.assd_mm())
}

/// Normalised surface Dice at `tolerance_mm` (DeepMind, surfel-weighted), in 0..=1;
/// `None` when both masks are empty, `0.0` when one is.
///
/// # Errors
/// [`MetricsError`] when the shapes differ, the masks are not 2-D or 3-D, the spacing is
/// not one positive finite value per axis, or the tolerance is negative or NaN.
///
/// # Example
/// ```
/// use ndarray::Array2;
///
/// # fn main() -> Result<(), cosam::metrics::MetricsError> {
/// let mut reference = Array2::<u8>::zeros((32, 32));
/// reference.slice_mut(ndarray::s![5..15, 5..15]).fill(1);
/// let nsd = cosam::metrics::nsd(&reference, &reference, &[0.8, 0.8], 2.0)?;
/// assert_eq!(nsd, Some(1.0));
/// # Ok(())
/// # }
/// ```
pub fn nsd<S1, S2, D>(
    prediction: &ArrayBase<S1, D>,
    reference: &ArrayBase<S2, D>,
    spacing_mm: &[f64],
    tolerance_mm: f64,
) -> Result<Option<f64>, MetricsError>
where
    S1: Data<Elem = u8>,
    S2: Data<Elem = u8>,
    D: Dimension,
{
    surfel_distances(prediction, reference, spacing_mm)?.nsd(tolerance_mm)
}

/// Exact squared Euclidean distance transform in mm²: for every element, the squared
/// distance to the nearest non-zero element of `features`, with `spacing_mm` per array
/// axis; `+inf` everywhere when there is no feature. Any number of axes.
///
/// Separable Felzenszwalb–Huttenlocher lower-envelope algorithm, O(n) per line, lines in
/// parallel. The squared distance is summed in axis order, as scipy's
/// `distance_transform_edt(~features, sampling=spacing_mm) ** 2` does.
///
/// # Errors
/// [`MetricsError::SpacingLength`] or [`MetricsError::InvalidSpacing`] unless the spacing
/// is one positive finite value per axis.
///
/// # Example
/// ```
/// use ndarray::Array2;
///
/// # fn main() -> Result<(), cosam::metrics::MetricsError> {
/// let mut features = Array2::<u8>::zeros((3, 4));
/// features[[0, 0]] = 1;
/// let d2 = cosam::metrics::squared_distance_transform_mm2(&features, &[2.0, 1.0])?;
/// assert_eq!(d2[[2, 3]], 4.0 * 4.0 + 3.0 * 3.0);
/// # Ok(())
/// # }
/// ```
pub fn squared_distance_transform_mm2<S, D>(
    features: &ArrayBase<S, D>,
    spacing_mm: &[f64],
) -> Result<Array<f64, D>, MetricsError>
where
    S: Data<Elem = u8>,
    D: Dimension,
{
    check_spacing(spacing_mm, features.ndim())?;
    let mut buf: Vec<f64> = features
        .iter()
        .map(|&f| if f != 0 { 0.0 } else { f64::INFINITY })
        .collect();
    edt::squared_edt_in_place(&mut buf, features.shape(), spacing_mm);
    Array::from_shape_vec(features.raw_dim(), buf).map_err(|source| MetricsError::Layout {
        shape: features.shape().to_vec(),
        source,
    })
}

/// Exact Euclidean distance transform in mm: the square root of
/// [`squared_distance_transform_mm2`].
///
/// # Errors
/// As [`squared_distance_transform_mm2`].
///
/// # Example
/// ```
/// use ndarray::Array3;
///
/// # fn main() -> Result<(), cosam::metrics::MetricsError> {
/// let mut features = Array3::<u8>::zeros((4, 4, 4));
/// features[[0, 0, 0]] = 1;
/// let d = cosam::metrics::distance_transform_mm(&features, &[3.0, 4.0, 1.0])?;
/// assert_eq!(d[[1, 1, 0]], 5.0);
/// # Ok(())
/// # }
/// ```
pub fn distance_transform_mm<S, D>(
    features: &ArrayBase<S, D>,
    spacing_mm: &[f64],
) -> Result<Array<f64, D>, MetricsError>
where
    S: Data<Elem = u8>,
    D: Dimension,
{
    let mut d = squared_distance_transform_mm2(features, spacing_mm)?;
    d.mapv_inplace(f64::sqrt);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr2, s, Array2, Array3};

    #[test]
    fn dice_of_identical_masks_is_one() {
        let a = arr2(&[[0u8, 1], [1, 1]]);
        assert_eq!(dice(&a, &a), Some(1.0));
    }

    #[test]
    fn dice_and_iou_by_hand() {
        // |A| = 3, |B| = 2, |A∩B| = 1: Dice 2/5, IoU 1/4
        let a = arr2(&[[1u8, 1], [1, 0]]);
        let b = arr2(&[[1u8, 0], [0, 1]]);
        assert_eq!(dice(&a, &b), Some(0.4));
        assert_eq!(iou(&a, &b), Some(0.25));
    }

    #[test]
    fn two_empty_masks_have_no_dice() {
        let a = arr2(&[[0u8, 0]]);
        assert_eq!(dice(&a, &a), None);
        assert_eq!(iou(&a, &a), None);
    }

    fn square(n: usize, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> Array2<u8> {
        let mut m = Array2::zeros((n, n));
        m.slice_mut(s![rows, cols]).fill(1);
        m
    }

    #[test]
    fn empty_prediction_is_infinitely_far_and_scores_zero() {
        let empty = Array2::<u8>::zeros((8, 8));
        let reference = square(8, 2..5, 2..5);
        for convention in [
            Hd95Convention::MedpyPooled,
            Hd95Convention::MonaiMaxDirection,
            Hd95Convention::SurfaceWeighted,
        ] {
            let options = MetricsOptions::default().with_hd95_convention(convention);
            for (p, r) in [(&empty, &reference), (&reference, &empty)] {
                let m = evaluate_case(p, r, &[1.0, 1.0], &options).unwrap();
                assert_eq!(m.dice, Some(0.0));
                assert_eq!(m.iou, Some(0.0));
                assert_eq!(m.hd_mm, Some(f64::INFINITY));
                assert_eq!(m.hd95_mm, Some(f64::INFINITY));
                assert_eq!(m.assd_mm, Some(f64::INFINITY));
                assert_eq!(m.nsd, Some(0.0));
            }
        }
    }

    #[test]
    fn two_empty_masks_have_no_surface_metrics() {
        let empty = Array3::<u8>::zeros((3, 4, 5));
        let m =
            evaluate_case(&empty, &empty, &[1.0, 2.0, 3.0], &MetricsOptions::default()).unwrap();
        assert_eq!(
            (m.dice, m.iou, m.hd_mm, m.hd95_mm, m.assd_mm, m.nsd),
            (None, None, None, None, None, None)
        );
    }

    #[test]
    fn directed_means_follow_the_empty_rules() {
        let empty = Array2::<u8>::zeros((8, 8));
        let reference = square(8, 2..5, 2..5);
        let v = voxel_surface_distances(&empty, &reference, &[1.0, 1.0]).unwrap();
        assert_eq!(v.mean_prediction_to_reference_mm(), None);
        assert_eq!(v.mean_reference_to_prediction_mm(), Some(f64::INFINITY));
        let s = surfel_distances(&empty, &reference, &[1.0, 1.0]).unwrap();
        assert_eq!(s.mean_prediction_to_reference_mm(), None);
        assert_eq!(s.mean_reference_to_prediction_mm(), Some(f64::INFINITY));
        assert_eq!(s.robust_hd_mm(95.0).unwrap(), Some(f64::INFINITY));
    }

    #[test]
    fn identical_masks_are_zero_apart() {
        let a = square(12, 3..9, 2..7);
        for spacing in [[1.0, 1.0], [0.3, 2.2]] {
            let m = evaluate_case(&a, &a, &spacing, &MetricsOptions::default()).unwrap();
            assert_eq!(
                (m.hd_mm, m.hd95_mm, m.assd_mm, m.nsd),
                (Some(0.0), Some(0.0), Some(0.0), Some(1.0))
            );
        }
    }

    #[test]
    fn metrics_do_not_depend_on_where_the_masks_sit() {
        // Cropping to the union's bounding box must not change anything.
        let (a, b) = (square(40, 10..20, 12..25), square(40, 14..22, 9..21));
        let mut a2 = Array2::<u8>::zeros((60, 70));
        let mut b2 = Array2::<u8>::zeros((60, 70));
        a2.slice_mut(s![5..45, 20..60]).assign(&a);
        b2.slice_mut(s![5..45, 20..60]).assign(&b);
        for convention in [
            Hd95Convention::MedpyPooled,
            Hd95Convention::MonaiMaxDirection,
            Hd95Convention::SurfaceWeighted,
        ] {
            let options = MetricsOptions::default().with_hd95_convention(convention);
            let m1 = evaluate_case(&a, &b, &[0.7, 1.3], &options).unwrap();
            let m2 = evaluate_case(&a2, &b2, &[0.7, 1.3], &options).unwrap();
            assert_eq!(m1, m2);
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let a = Array2::<u8>::zeros((4, 4));
        let b = Array2::<u8>::zeros((4, 5));
        let o = MetricsOptions::default();
        assert!(matches!(
            evaluate_case(&a, &b, &[1.0, 1.0], &o),
            Err(MetricsError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            evaluate_case(&a, &a, &[1.0], &o),
            Err(MetricsError::SpacingLength { .. })
        ));
        assert!(matches!(
            evaluate_case(&a, &a, &[1.0, 0.0], &o),
            Err(MetricsError::InvalidSpacing { axis: 1, .. })
        ));
        assert!(matches!(
            evaluate_case(&a, &a, &[f64::NAN, 1.0], &o),
            Err(MetricsError::InvalidSpacing { axis: 0, .. })
        ));
        assert!(matches!(
            evaluate_case(&a, &a, &[1.0, 1.0], &o.with_nsd_tolerance_mm(-1.0)),
            Err(MetricsError::InvalidTolerance { .. })
        ));
        let one_d = ndarray::Array1::<u8>::zeros(4);
        assert!(matches!(
            evaluate_case(&one_d, &one_d, &[1.0], &o),
            Err(MetricsError::UnsupportedDimension { ndim: 1 })
        ));
        let s = surfel_distances(&a, &a, &[1.0, 1.0]).unwrap();
        assert!(matches!(
            s.robust_hd_mm(101.0),
            Err(MetricsError::InvalidPercentile { .. })
        ));
        assert!(matches!(
            distance_transform_mm(&a, &[1.0]),
            Err(MetricsError::SpacingLength { .. })
        ));
    }

    #[test]
    fn distance_transform_keeps_the_input_shape_and_order() {
        // A transposed (non-standard layout) view must give the transposed map.
        let mut f = Array2::<u8>::zeros((5, 7));
        f[[4, 1]] = 1;
        let d = distance_transform_mm(&f, &[1.0, 2.0]).unwrap();
        let dt = distance_transform_mm(&f.t(), &[2.0, 1.0]).unwrap();
        assert_eq!(d.t(), dt);
        assert_eq!(d[[0, 1]], 4.0);
        assert_eq!(d[[4, 6]], 10.0);
    }
}
