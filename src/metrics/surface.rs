//! Surface distances between a prediction and a reference mask, on voxel surfaces (medpy,
//! MONAI) and on weighted dual-grid surface elements (DeepMind surface-distance).
//!
//! Both masks are first cropped to the bounding box of their union: every surface point
//! of either mask lies inside it, and the exact distance transform of a box restricted to
//! the box is exact, so cropping changes no distance while making organ-sized masks in
//! large volumes cheap.

use ndarray::{s, ArrayBase, ArrayView3, Axis, Data, Dimension, Ix3};

use super::edt::squared_edt_in_place;
use super::{surfel, MetricsError};

/// A validated pair of masks, cropped to the bounding box of their union.
pub(crate) struct MaskPair {
    /// Foreground voxels of the prediction.
    pub(crate) prediction_voxels: usize,
    /// Foreground voxels of the reference.
    pub(crate) reference_voxels: usize,
    /// Voxels foreground in both.
    pub(crate) both_voxels: usize,
    /// Crop extent per axis (2 or 3 axes); empty when both masks are empty.
    dims: Vec<usize>,
    spacing_mm: Vec<f64>,
    /// Crops in C order, 1 = foreground.
    prediction: Vec<u8>,
    reference: Vec<u8>,
}

/// Checks shapes and spacing; returns the masks as 3-D views (a 2-D mask gets a leading
/// axis of length 1).
fn views<'a, S1, S2, D>(
    prediction: &'a ArrayBase<S1, D>,
    reference: &'a ArrayBase<S2, D>,
    spacing_mm: &[f64],
) -> Result<(ArrayView3<'a, u8>, ArrayView3<'a, u8>), MetricsError>
where
    S1: Data<Elem = u8>,
    S2: Data<Elem = u8>,
    D: Dimension,
{
    if prediction.shape() != reference.shape() {
        return Err(MetricsError::ShapeMismatch {
            prediction: prediction.shape().to_vec(),
            reference: reference.shape().to_vec(),
        });
    }
    let ndim = prediction.ndim();
    if ndim != 2 && ndim != 3 {
        return Err(MetricsError::UnsupportedDimension { ndim });
    }
    super::check_spacing(spacing_mm, ndim)?;
    let as_3d = |v: ndarray::ArrayViewD<'a, u8>| {
        let v = if ndim == 2 { v.insert_axis(Axis(0)) } else { v };
        v.into_dimensionality::<Ix3>()
            .map_err(|_| MetricsError::UnsupportedDimension { ndim })
    };
    Ok((
        as_3d(prediction.view().into_dyn())?,
        as_3d(reference.view().into_dyn())?,
    ))
}

impl MaskPair {
    pub(crate) fn new<S1, S2, D>(
        prediction: &ArrayBase<S1, D>,
        reference: &ArrayBase<S2, D>,
        spacing_mm: &[f64],
    ) -> Result<Self, MetricsError>
    where
        S1: Data<Elem = u8>,
        S2: Data<Elem = u8>,
        D: Dimension,
    {
        let (p, r) = views(prediction, reference, spacing_mm)?;
        let ndim = prediction.ndim();
        let (n0, n1, _) = p.dim();
        let mut lo = [usize::MAX; 3];
        let mut hi = [0usize; 3];
        for i0 in 0..n0 {
            for i1 in 0..n1 {
                for m in [&p, &r] {
                    let mut first = None;
                    let mut last = 0;
                    for (i2, &x) in m.slice(s![i0, i1, ..]).iter().enumerate() {
                        if x != 0 {
                            first.get_or_insert(i2);
                            last = i2;
                        }
                    }
                    if let Some(first) = first {
                        for (k, (a, b)) in
                            [(i0, i0), (i1, i1), (first, last)].into_iter().enumerate()
                        {
                            lo[k] = lo[k].min(a);
                            hi[k] = hi[k].max(b + 1);
                        }
                    }
                }
            }
        }
        if lo[0] == usize::MAX {
            return Ok(Self {
                prediction_voxels: 0,
                reference_voxels: 0,
                both_voxels: 0,
                dims: Vec::new(),
                spacing_mm: spacing_mm.to_vec(),
                prediction: Vec::new(),
                reference: Vec::new(),
            });
        }
        let crop = |m: &ArrayView3<u8>| -> Vec<u8> {
            m.slice(s![lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2]])
                .iter()
                .map(|&x| u8::from(x != 0))
                .collect()
        };
        let (prediction, reference) = (crop(&p), crop(&r));
        let count = |m: &[u8]| m.iter().filter(|&&x| x != 0).count();
        let both_voxels = prediction
            .iter()
            .zip(&reference)
            .filter(|(&a, &b)| a & b != 0)
            .count();
        let extent: Vec<usize> = (0..3).map(|k| hi[k] - lo[k]).collect();
        Ok(Self {
            prediction_voxels: count(&prediction),
            reference_voxels: count(&reference),
            both_voxels,
            dims: extent[3 - ndim..].to_vec(),
            spacing_mm: spacing_mm.to_vec(),
            prediction,
            reference,
        })
    }

    /// Distances between the voxel surfaces (medpy, MONAI).
    pub(crate) fn voxel_surface_distances(&self) -> VoxelSurfaceDistances {
        let mut out = VoxelSurfaceDistances {
            prediction_empty: self.prediction_voxels == 0,
            reference_empty: self.reference_voxels == 0,
            prediction_to_reference: Vec::new(),
            reference_to_prediction: Vec::new(),
        };
        if out.prediction_empty || out.reference_empty {
            return out;
        }
        let ps = voxel_surface(&self.prediction, &self.dims);
        let rs = voxel_surface(&self.reference, &self.dims);
        // One distance map alive at a time keeps the peak memory down on large crops.
        let to_ref = squared_distances_to(&rs, &self.dims, &self.spacing_mm);
        out.prediction_to_reference = select(&ps, &to_ref).map(|(_, d)| d.sqrt()).collect();
        drop(to_ref);
        let to_pred = squared_distances_to(&ps, &self.dims, &self.spacing_mm);
        out.reference_to_prediction = select(&rs, &to_pred).map(|(_, d)| d.sqrt()).collect();
        out
    }

    /// Distances between the weighted dual-grid surface elements (DeepMind).
    pub(crate) fn surfel_distances(&self) -> SurfelDistances {
        let mut out = SurfelDistances {
            prediction_empty: self.prediction_voxels == 0,
            reference_empty: self.reference_voxels == 0,
            prediction_to_reference: Vec::new(),
            reference_to_prediction: Vec::new(),
        };
        if out.prediction_empty && out.reference_empty {
            return out;
        }
        let (pw, rw) = (
            self.surfels(&self.prediction),
            self.surfels(&self.reference),
        );
        let dual: Vec<usize> = self.dims.iter().map(|n| n + 1).collect();
        let is_p: Vec<bool> = pw.iter().map(|&w| w > 0.0).collect();
        let is_r: Vec<bool> = rw.iter().map(|&w| w > 0.0).collect();
        let pair = |from: &[bool], weights: &[f64], to: &[bool], to_empty: bool| {
            let mut v: Vec<(f64, f64)> = if to_empty {
                from.iter()
                    .zip(weights)
                    .filter(|(&f, _)| f)
                    .map(|(_, &w)| (f64::INFINITY, w))
                    .collect()
            } else {
                let d2 = squared_distances_to(to, &dual, &self.spacing_mm);
                select(from, &d2)
                    .map(|(i, d)| (d.sqrt(), weights[i]))
                    .collect()
            };
            v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
            v
        };
        out.prediction_to_reference = pair(&is_p, &pw, &is_r, out.reference_empty);
        out.reference_to_prediction = pair(&is_r, &rw, &is_p, out.prediction_empty);
        out
    }

    /// Surface-element size (mm in 2-D, mm² in 3-D) at every dual-grid position of the crop,
    /// 0 where the neighbourhood code is all background or all foreground.
    fn surfels(&self, mask: &[u8]) -> Vec<f64> {
        // Zero-padded copy: voxel v sits at padded v + 1, so the dual cell p spans padded
        // p .. p + 1 on every axis.
        match *self.dims.as_slice() {
            [n0, n1] => {
                let table = surfel::contour_length_table([self.spacing_mm[0], self.spacing_mm[1]]);
                let w = n1 + 2;
                let mut pad = vec![0u8; (n0 + 2) * w];
                for (i, row) in mask.chunks(n1).enumerate() {
                    pad[(i + 1) * w + 1..(i + 1) * w + 1 + n1].copy_from_slice(row);
                }
                let mut out = Vec::with_capacity((n0 + 1) * (n1 + 1));
                for p0 in 0..=n0 {
                    for p1 in 0..=n1 {
                        let at = |o0: usize, o1: usize| usize::from(pad[(p0 + o0) * w + p1 + o1]);
                        let code = at(0, 0) | at(0, 1) << 1 | at(1, 0) << 2 | at(1, 1) << 3;
                        out.push(table[code]);
                    }
                }
                out
            }
            [n0, n1, n2] => {
                let table = surfel::surface_area_table([
                    self.spacing_mm[0],
                    self.spacing_mm[1],
                    self.spacing_mm[2],
                ]);
                let (w1, w2) = (n1 + 2, n2 + 2);
                let mut pad = vec![0u8; (n0 + 2) * w1 * w2];
                for (r, row) in mask.chunks(n2).enumerate() {
                    let (i0, i1) = (r / n1, r % n1);
                    let start = ((i0 + 1) * w1 + i1 + 1) * w2 + 1;
                    pad[start..start + n2].copy_from_slice(row);
                }
                let mut out = Vec::with_capacity((n0 + 1) * (n1 + 1) * (n2 + 1));
                for p0 in 0..=n0 {
                    for p1 in 0..=n1 {
                        for p2 in 0..=n2 {
                            let mut code = 0;
                            for bit in 0..8 {
                                let (o0, o1, o2) = (bit >> 2 & 1, bit >> 1 & 1, bit & 1);
                                let v = pad[((p0 + o0) * w1 + p1 + o1) * w2 + p2 + o2];
                                code |= usize::from(v) << bit;
                            }
                            out.push(table[code]);
                        }
                    }
                }
                out
            }
            _ => Vec::new(),
        }
    }
}

/// medpy's surface: foreground voxels with a face neighbour that is background or outside
/// the array (binary erosion with the cross structuring element, border value 0).
fn voxel_surface(mask: &[u8], dims: &[usize]) -> Vec<bool> {
    let mut surface = vec![false; mask.len()];
    let mut stride = 1;
    for &n in dims.iter().rev() {
        for (i, s) in surface.iter_mut().enumerate() {
            if mask[i] == 0 || *s {
                continue;
            }
            let c = (i / stride) % n;
            *s = c == 0 || c + 1 == n || mask[i - stride] == 0 || mask[i + stride] == 0;
        }
        stride *= n;
    }
    surface
}

/// Squared distance (mm²) from every grid point to the nearest `features` point.
fn squared_distances_to(features: &[bool], dims: &[usize], spacing_mm: &[f64]) -> Vec<f64> {
    let mut buf: Vec<f64> = features
        .iter()
        .map(|&f| if f { 0.0 } else { f64::INFINITY })
        .collect();
    squared_edt_in_place(&mut buf, dims, spacing_mm);
    buf
}

/// `(index, value)` of `values` where `mask` is set, in C order.
fn select<'a>(mask: &'a [bool], values: &'a [f64]) -> impl Iterator<Item = (usize, f64)> + 'a {
    mask.iter()
        .zip(values)
        .enumerate()
        .filter(|(_, (&m, _))| m)
        .map(|(i, (_, &v))| (i, v))
}

/// Sum with numpy's pairwise summation (the algorithm of `numpy.sum` on a contiguous
/// float64 array), so weighted fractions round as in the reference implementations.
pub(crate) fn pairwise_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |acc, &x| acc + x)
    } else if n <= BLOCK {
        let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
        let body = n - n % 8;
        for chunk in a[8..body].chunks_exact(8) {
            for (acc, &x) in r.iter_mut().zip(chunk) {
                *acc += x;
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[body..] {
            res += x;
        }
        res
    } else {
        let mut half = n / 2;
        half -= half % 8;
        pairwise_sum(&a[..half]) + pairwise_sum(&a[half..])
    }
}

/// `numpy.percentile(values, percent)` with the default linear method, on sorted values.
fn percentile_linear(sorted: &[f64], percent: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let virtual_index = last as f64 * (percent / 100.0);
    let below = virtual_index.floor();
    let gamma = virtual_index - below;
    let i = (below.max(0.0) as usize).min(last);
    let j = (i + 1).min(last);
    let (a, b) = (sorted[i], sorted[j]);
    let diff = b - a;
    Some(if gamma >= 0.5 {
        b - diff * (1.0 - gamma)
    } else {
        a + diff * gamma
    })
}

/// Value of a directed quantity from surface X to surface Y under the empty-mask rules:
/// X empty gives `None`, Y empty (X not) gives `+inf`.
fn directed(from_empty: bool, to_empty: bool, value: impl FnOnce() -> f64) -> Option<f64> {
    if from_empty {
        None
    } else if to_empty {
        Some(f64::INFINITY)
    } else {
        Some(value())
    }
}

/// Value of a symmetric distance under the empty-mask rules: both empty gives `None`, one
/// empty gives `+inf`.
fn symmetric(a_empty: bool, b_empty: bool, value: impl FnOnce() -> f64) -> Option<f64> {
    match (a_empty, b_empty) {
        (true, true) => None,
        (false, false) => Some(value()),
        _ => Some(f64::INFINITY),
    }
}

/// Distances in mm from each voxel-surface point of one mask to the nearest voxel-surface
/// point of the other, as medpy and MONAI compute them.
///
/// The surface of a mask is the mask minus its erosion by the face-connected (cross)
/// structuring element, with everything outside the array counted as background.
/// Distances are exact Euclidean distances with the voxel spacing. See the
/// [module documentation](super) for the empty-mask values of every method.
#[derive(Debug, Clone, PartialEq)]
pub struct VoxelSurfaceDistances {
    prediction_empty: bool,
    reference_empty: bool,
    prediction_to_reference: Vec<f64>,
    reference_to_prediction: Vec<f64>,
}

impl VoxelSurfaceDistances {
    /// Distance (mm) from each prediction surface voxel to the reference surface, in C
    /// order of the voxels; empty when either mask is empty.
    pub fn prediction_to_reference_mm(&self) -> &[f64] {
        &self.prediction_to_reference
    }

    /// Distance (mm) from each reference surface voxel to the prediction surface, in C
    /// order of the voxels; empty when either mask is empty.
    pub fn reference_to_prediction_mm(&self) -> &[f64] {
        &self.reference_to_prediction
    }

    fn pooled_sorted(&self) -> Vec<f64> {
        let mut all = [
            self.prediction_to_reference.as_slice(),
            &self.reference_to_prediction,
        ]
        .concat();
        all.sort_by(f64::total_cmp);
        all
    }

    /// Hausdorff distance (mm): the largest distance in either direction (medpy `hd`,
    /// MONAI `compute_hausdorff_distance`).
    pub fn hd_mm(&self) -> Option<f64> {
        symmetric(self.prediction_empty, self.reference_empty, || {
            self.prediction_to_reference
                .iter()
                .chain(&self.reference_to_prediction)
                .fold(0.0, |m, &d| f64::max(m, d))
        })
    }

    /// 95th percentile (mm) of the distances of both directions pooled, numpy's linear
    /// interpolation (medpy `hd95`).
    pub fn hd95_pooled_mm(&self) -> Option<f64> {
        symmetric(self.prediction_empty, self.reference_empty, || {
            percentile_linear(&self.pooled_sorted(), 95.0).unwrap_or(f64::NAN)
        })
    }

    /// Larger of the two per-direction 95th percentiles (mm), numpy's linear interpolation
    /// (MONAI `compute_hausdorff_distance(percentile=95)`).
    pub fn hd95_max_direction_mm(&self) -> Option<f64> {
        symmetric(self.prediction_empty, self.reference_empty, || {
            let p95 = |v: &[f64]| {
                let mut v = v.to_vec();
                v.sort_by(f64::total_cmp);
                percentile_linear(&v, 95.0).unwrap_or(f64::NAN)
            };
            p95(&self.prediction_to_reference).max(p95(&self.reference_to_prediction))
        })
    }

    /// Average symmetric surface distance (mm): the mean of all distances of both
    /// directions pooled, so a surface with more voxels weighs more (medpy 0.5.2 `assd`,
    /// MONAI `compute_average_surface_distance(symmetric=True)`).
    pub fn assd_mm(&self) -> Option<f64> {
        symmetric(self.prediction_empty, self.reference_empty, || {
            let all = [
                self.prediction_to_reference.as_slice(),
                &self.reference_to_prediction,
            ]
            .concat();
            pairwise_sum(&all) / all.len() as f64
        })
    }

    /// Mean distance (mm) from the prediction surface to the reference surface (medpy
    /// `asd(prediction, reference)`).
    pub fn mean_prediction_to_reference_mm(&self) -> Option<f64> {
        directed(self.prediction_empty, self.reference_empty, || {
            let d = &self.prediction_to_reference;
            pairwise_sum(d) / d.len() as f64
        })
    }

    /// Mean distance (mm) from the reference surface to the prediction surface (medpy
    /// `asd(reference, prediction)`).
    pub fn mean_reference_to_prediction_mm(&self) -> Option<f64> {
        directed(self.reference_empty, self.prediction_empty, || {
            let d = &self.reference_to_prediction;
            pairwise_sum(d) / d.len() as f64
        })
    }
}

/// Distances in mm between the weighted surface elements (surfels) of two masks, as
/// DeepMind's surface-distance library computes them.
///
/// Surfels live on the dual grid (one per 2x2 or 2x2x2 voxel neighbourhood that is neither
/// all background nor all foreground); each carries its contour length in mm (2-D) or
/// surface area in mm² (3-D) from marching squares / marching cubes. Distances run between
/// dual-grid positions, exact Euclidean with the voxel spacing. See the
/// [module documentation](super) for the empty-mask values of every method.
#[derive(Debug, Clone, PartialEq)]
pub struct SurfelDistances {
    prediction_empty: bool,
    reference_empty: bool,
    /// (distance mm, surfel size), sorted by distance then size.
    prediction_to_reference: Vec<(f64, f64)>,
    reference_to_prediction: Vec<(f64, f64)>,
}

/// Per-direction robust Hausdorff distance: the smallest distance whose cumulative
/// surfel-size fraction reaches `fraction`; `+inf` for an empty direction.
fn robust_directed(sorted: &[(f64, f64)], fraction: f64) -> f64 {
    let Some(last) = sorted.last() else {
        return f64::INFINITY;
    };
    let weights: Vec<f64> = sorted.iter().map(|p| p.1).collect();
    let total = pairwise_sum(&weights);
    let mut cumulative = 0.0;
    for &(d, w) in sorted {
        cumulative += w;
        if cumulative / total >= fraction {
            return d;
        }
    }
    last.0
}

fn weighted_mean(sorted: &[(f64, f64)]) -> f64 {
    let products: Vec<f64> = sorted.iter().map(|&(d, w)| d * w).collect();
    let weights: Vec<f64> = sorted.iter().map(|p| p.1).collect();
    pairwise_sum(&products) / pairwise_sum(&weights)
}

impl SurfelDistances {
    /// `(distance mm, surfel size)` of each prediction surfel to the reference surfels,
    /// sorted by distance; size is mm (2-D) or mm² (3-D); distances are `+inf` when the
    /// reference is empty.
    pub fn prediction_to_reference(&self) -> &[(f64, f64)] {
        &self.prediction_to_reference
    }

    /// `(distance mm, surfel size)` of each reference surfel to the prediction surfels,
    /// sorted by distance; distances are `+inf` when the prediction is empty.
    pub fn reference_to_prediction(&self) -> &[(f64, f64)] {
        &self.reference_to_prediction
    }

    /// Total contour length (mm, 2-D) or surface area (mm², 3-D) of the prediction.
    pub fn prediction_surface_size(&self) -> f64 {
        self.prediction_to_reference.iter().map(|p| p.1).sum()
    }

    /// Total contour length (mm, 2-D) or surface area (mm², 3-D) of the reference.
    pub fn reference_surface_size(&self) -> f64 {
        self.reference_to_prediction.iter().map(|p| p.1).sum()
    }

    /// Robust Hausdorff distance (mm) at `percent`: per direction the smallest distance
    /// whose cumulative surfel-size fraction reaches `percent / 100`, then the larger of
    /// the two (DeepMind `compute_robust_hausdorff`).
    ///
    /// # Errors
    /// [`MetricsError::InvalidPercentile`] unless `0 <= percent <= 100`.
    pub fn robust_hd_mm(&self, percent: f64) -> Result<Option<f64>, MetricsError> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(MetricsError::InvalidPercentile { percent });
        }
        let fraction = percent / 100.0;
        Ok(symmetric(
            self.prediction_empty,
            self.reference_empty,
            || {
                robust_directed(&self.prediction_to_reference, fraction)
                    .max(robust_directed(&self.reference_to_prediction, fraction))
            },
        ))
    }

    /// Surface-weighted HD95 (mm): [`robust_hd_mm`](Self::robust_hd_mm) at 95 %.
    pub fn hd95_mm(&self) -> Option<f64> {
        symmetric(self.prediction_empty, self.reference_empty, || {
            robust_directed(&self.prediction_to_reference, 0.95)
                .max(robust_directed(&self.reference_to_prediction, 0.95))
        })
    }

    /// Hausdorff distance (mm) between the surfel sets: the largest distance in either
    /// direction.
    pub fn hd_mm(&self) -> Option<f64> {
        symmetric(self.prediction_empty, self.reference_empty, || {
            self.prediction_to_reference
                .iter()
                .chain(&self.reference_to_prediction)
                .fold(0.0, |m, p| f64::max(m, p.0))
        })
    }

    /// Surfel-size-weighted mean distance (mm) from the prediction to the reference
    /// (DeepMind `compute_average_surface_distance`, second value).
    pub fn mean_prediction_to_reference_mm(&self) -> Option<f64> {
        directed(self.prediction_empty, self.reference_empty, || {
            weighted_mean(&self.prediction_to_reference)
        })
    }

    /// Surfel-size-weighted mean distance (mm) from the reference to the prediction
    /// (DeepMind `compute_average_surface_distance`, first value).
    pub fn mean_reference_to_prediction_mm(&self) -> Option<f64> {
        directed(self.reference_empty, self.prediction_empty, || {
            weighted_mean(&self.reference_to_prediction)
        })
    }

    /// Normalised surface Dice at `tolerance_mm`: the size of the surfels of each mask that
    /// lie within the tolerance of the other surface, over the total surface size of both
    /// (DeepMind `compute_surface_dice_at_tolerance`).
    ///
    /// # Errors
    /// [`MetricsError::InvalidTolerance`] when `tolerance_mm` is negative or NaN.
    pub fn nsd(&self, tolerance_mm: f64) -> Result<Option<f64>, MetricsError> {
        if tolerance_mm.is_nan() || tolerance_mm < 0.0 {
            return Err(MetricsError::InvalidTolerance { tolerance_mm });
        }
        if self.prediction_empty && self.reference_empty {
            return Ok(None);
        }
        let within = |v: &[(f64, f64)]| {
            let w: Vec<f64> = v
                .iter()
                .filter(|p| p.0 <= tolerance_mm)
                .map(|p| p.1)
                .collect();
            pairwise_sum(&w)
        };
        let total = |v: &[(f64, f64)]| {
            let w: Vec<f64> = v.iter().map(|p| p.1).collect();
            pairwise_sum(&w)
        };
        let overlap = within(&self.reference_to_prediction) + within(&self.prediction_to_reference);
        let size = total(&self.reference_to_prediction) + total(&self.prediction_to_reference);
        Ok(Some(overlap / size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    /// Random blobs: a few boxes of random size, plus noise, in a random-shaped array.
    fn random_mask(shape: &[usize], rng: &mut u64) -> ArrayD<u8> {
        let mut next = |n: usize| {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            (*rng % n.max(1) as u64) as usize
        };
        let mut m = ArrayD::<u8>::zeros(IxDyn(shape));
        for _ in 0..3 {
            let lo: Vec<usize> = shape.iter().map(|&n| next(n)).collect();
            let hi: Vec<usize> = lo
                .iter()
                .zip(shape)
                .map(|(&l, &n)| (l + 1 + next(n / 2)).min(n))
                .collect();
            for (idx, v) in m.indexed_iter_mut() {
                if (0..shape.len()).all(|k| idx[k] >= lo[k] && idx[k] < hi[k]) {
                    *v = 1;
                }
            }
        }
        for v in m.iter_mut() {
            if next(40) == 0 {
                *v ^= 1;
            }
        }
        m
    }

    fn brute_directed(from: &[Vec<i64>], to: &[Vec<i64>], spacing: &[f64]) -> Vec<f64> {
        from.iter()
            .map(|p| {
                to.iter()
                    .map(|q| {
                        p.iter()
                            .zip(q)
                            .zip(spacing)
                            .map(|((&a, &b), &s)| ((a - b) as f64 * s).powi(2))
                            .sum::<f64>()
                    })
                    .fold(f64::INFINITY, f64::min)
                    .sqrt()
            })
            .collect()
    }

    /// Surface voxels by the definition, on the full array.
    fn brute_voxel_surface(m: &ArrayD<u8>) -> Vec<Vec<i64>> {
        let shape: Vec<i64> = m.shape().iter().map(|&n| n as i64).collect();
        let get = |c: &[i64]| {
            if c.iter().zip(&shape).all(|(&x, &n)| x >= 0 && x < n) {
                let u: Vec<usize> = c.iter().map(|&x| x as usize).collect();
                m[IxDyn(&u)]
            } else {
                0
            }
        };
        m.indexed_iter()
            .filter(|(_, &v)| v != 0)
            .map(|(idx, _)| {
                (0..shape.len())
                    .map(|k| idx[k] as i64)
                    .collect::<Vec<i64>>()
            })
            .filter(|c| {
                (0..c.len()).any(|k| {
                    [-1, 1].iter().any(|d| {
                        let mut n = c.clone();
                        n[k] += d;
                        get(&n) == 0
                    })
                })
            })
            .collect()
    }

    /// Dual-grid positions whose 2^d neighbourhood is mixed, on the full array.
    fn brute_surfels(m: &ArrayD<u8>) -> Vec<Vec<i64>> {
        let shape: Vec<i64> = m.shape().iter().map(|&n| n as i64).collect();
        let d = shape.len();
        let get = |c: &[i64]| {
            if c.iter().zip(&shape).all(|(&x, &n)| x >= 0 && x < n) {
                let u: Vec<usize> = c.iter().map(|&x| x as usize).collect();
                m[IxDyn(&u)]
            } else {
                0
            }
        };
        let dual: Vec<usize> = m.shape().iter().map(|&n| n + 1).collect();
        ArrayD::<u8>::zeros(IxDyn(&dual))
            .indexed_iter()
            .map(|(idx, _)| (0..d).map(|k| idx[k] as i64).collect::<Vec<i64>>())
            .filter(|p| {
                let values: Vec<u8> = (0..1usize << d)
                    .map(|o| {
                        let c: Vec<i64> =
                            (0..d).map(|k| p[k] - 1 + ((o >> k) & 1) as i64).collect();
                        get(&c)
                    })
                    .collect();
                values.contains(&0) && values.iter().any(|&v| v != 0)
            })
            .collect()
    }

    fn sorted(mut v: Vec<f64>) -> Vec<f64> {
        v.sort_by(f64::total_cmp);
        v
    }

    fn assert_close(got: &[f64], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{what}: {g} vs {w}");
        }
    }

    /// Sphere (or disk) of `radius_mm` sampled on a grid with `spacing`.
    fn ball(radius_mm: f64, spacing: &[f64]) -> ArrayD<u8> {
        let shape: Vec<usize> = spacing
            .iter()
            .map(|s| (2.0 * radius_mm / s).ceil() as usize + 5)
            .collect();
        let centre: Vec<f64> = shape
            .iter()
            .map(|&n| (n as f64 - 1.0) / 2.0 + 0.3)
            .collect();
        let mut m = ArrayD::<u8>::zeros(IxDyn(&shape));
        for (idx, v) in m.indexed_iter_mut() {
            let r2: f64 = (0..shape.len())
                .map(|k| ((idx[k] as f64 - centre[k]) * spacing[k]).powi(2))
                .sum();
            *v = u8::from(r2 <= radius_mm * radius_mm);
        }
        m
    }

    /// Binary marching squares / cubes through edge midpoints overestimate round
    /// boundaries (the contour zig-zags along the voxel staircase): by 5.4 % for a disk and
    /// 7.1 % for a sphere of radius 20 voxels, more on anisotropic grids (13 % at 0.5 x
    /// 1.5 mm, 16 % at 2 x 1 x 0.5 mm; the 2-D figures were reproduced by an independent
    /// script). This checks the tables stay to scale; exact values are tested elsewhere.
    #[test]
    fn surfel_sizes_approximate_the_true_perimeter_and_area() {
        use std::f64::consts::PI;
        let cases: [(&[f64], f64, f64); 4] = [
            (&[1.0, 1.0], 2.0 * PI * 20.0, 1.054),
            (&[0.5, 1.5], 2.0 * PI * 20.0, 1.131),
            (&[1.0, 1.0, 1.0], 4.0 * PI * 400.0, 1.071),
            (&[2.0, 1.0, 0.5], 4.0 * PI * 400.0, 1.158),
        ];
        for (spacing, truth, expected_ratio) in cases {
            let m = ball(20.0, spacing);
            let s = MaskPair::new(&m, &m, spacing).unwrap().surfel_distances();
            let ratio = s.prediction_surface_size() / truth;
            assert!(
                (ratio - expected_ratio).abs() < 0.001,
                "size ratio {ratio} at {spacing:?}"
            );
        }
    }

    #[test]
    fn surface_distances_match_brute_force_on_random_masks() {
        let mut rng = 0x0123_4567_89ab_cdef_u64;
        let cases: [(&[usize], &[f64]); 4] = [
            (&[13, 17], &[0.7, 1.9]),
            (&[24, 9], &[1.0, 1.0]),
            (&[6, 9, 11], &[2.5, 0.8, 0.8]),
            (&[10, 7, 5], &[0.6, 1.4, 3.0]),
        ];
        for (shape, spacing) in cases {
            for _ in 0..6 {
                let p = random_mask(shape, &mut rng);
                let r = random_mask(shape, &mut rng);
                if p.iter().all(|&x| x == 0) || r.iter().all(|&x| x == 0) {
                    continue;
                }
                let pair = MaskPair::new(&p, &r, spacing).unwrap();
                let v = pair.voxel_surface_distances();
                let (ps, rs) = (brute_voxel_surface(&p), brute_voxel_surface(&r));
                assert_close(
                    &sorted(v.prediction_to_reference_mm().to_vec()),
                    &sorted(brute_directed(&ps, &rs, spacing)),
                    "voxel prediction to reference",
                );
                assert_close(
                    &sorted(v.reference_to_prediction_mm().to_vec()),
                    &sorted(brute_directed(&rs, &ps, spacing)),
                    "voxel reference to prediction",
                );
                let s = pair.surfel_distances();
                let (pf, rf) = (brute_surfels(&p), brute_surfels(&r));
                let got: Vec<f64> = s.prediction_to_reference().iter().map(|x| x.0).collect();
                assert_close(
                    &got,
                    &sorted(brute_directed(&pf, &rf, spacing)),
                    "surfels p->r",
                );
                let got: Vec<f64> = s.reference_to_prediction().iter().map(|x| x.0).collect();
                assert_close(
                    &got,
                    &sorted(brute_directed(&rf, &pf, spacing)),
                    "surfels r->p",
                );
            }
        }
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4], 95) = 3.85
        assert!(
            (percentile_linear(&[1.0, 2.0, 3.0, 4.0], 95.0).unwrap_or(0.0) - 3.85).abs() < 1e-12
        );
        assert_eq!(percentile_linear(&[2.0], 95.0), Some(2.0));
        assert_eq!(percentile_linear(&[], 95.0), None);
        assert_eq!(percentile_linear(&[1.0, 5.0], 100.0), Some(5.0));
        assert_eq!(percentile_linear(&[1.0, 5.0], 0.0), Some(1.0));
    }

    #[test]
    fn pairwise_sum_is_a_sum() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(pairwise_sum(&v), 500_500.0);
        assert_eq!(pairwise_sum(&v[..5]), 15.0);
        assert_eq!(pairwise_sum(&v[..100]), 5050.0);
        assert_eq!(pairwise_sum(&[]), 0.0);
    }

    #[test]
    fn voxel_surface_of_a_filled_square_is_its_ring() {
        let mask = vec![1u8; 16];
        let s = voxel_surface(&mask, &[4, 4]);
        assert_eq!(s.iter().filter(|&&x| x).count(), 12);
        assert!(!s[5] && !s[6] && !s[9] && !s[10]);
    }

    #[test]
    fn robust_hd_takes_the_first_distance_reaching_the_fraction() {
        let v = [(1.0, 1.0), (2.0, 1.0), (3.0, 1.0), (4.0, 1.0)];
        assert_eq!(robust_directed(&v, 0.95), 4.0);
        assert_eq!(robust_directed(&v, 0.75), 3.0);
        assert_eq!(robust_directed(&v, 0.0), 1.0);
        assert_eq!(robust_directed(&[], 0.95), f64::INFINITY);
    }
}
