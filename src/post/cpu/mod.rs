//! The CPU path of post-processing: the reference twin of every kernel in `shaders/`,
//! parallel over slices with rayon and allocation-free per pixel (scratch buffers live per
//! thread). Arithmetic is written in the same order as the kernels so that results agree.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ndarray::{Array3, ArrayView3};
use rayon::prelude::*;

use super::{
    bilinear_taps, check_logits, order_key, Backend, Border, Bounds, Connectivity, MaskOps, Peak,
    PostError, Tap,
};
use crate::io::Spacing;
use crate::preprocess::{Transform, MODEL_SIZE};

mod distance;
mod label;
mod top_k;

pub(crate) use distance::*;
pub(crate) use label::*;
pub(crate) use top_k::*;

/// Parent of a pixel outside the labelled set.
pub(crate) const NONE: u32 = u32::MAX;

/// Squared distances at or above this mean "no feature pixel in reach" (kernels use the
/// same value).
pub(crate) const NO_FEATURE: f32 = 1.0e30;

/// The CPU (rayon) implementation of [`MaskOps`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuMaskOps;

impl CpuMaskOps {
    /// The CPU path (uses rayon's global thread pool).
    pub fn new() -> CpuMaskOps {
        CpuMaskOps
    }
}

/// Neighbourhoods used by the labelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Neighbours {
    /// Left and up, within a slice (background for hole filling).
    Four,
    /// 8-connected within a slice.
    Eight,
    /// 26-connected across slices.
    TwentySix,
}

/// The input as one contiguous slice, borrowed when already in standard layout.
fn contiguous<'a, T: Clone>(a: &ArrayView3<'a, T>) -> Cow<'a, [T]> {
    match a.to_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().cloned().collect()),
    }
}

fn shaped<T>(dim: (usize, usize, usize), data: Vec<T>) -> Result<Array3<T>, PostError> {
    let found = data.len();
    Array3::from_shape_vec(dim, data).map_err(|_| PostError::Shape {
        what: "post-processing output",
        expected: format!("{dim:?}"),
        found: format!("{found} values"),
    })
}

/// Runs `f(block_index, input_block, output_block, scratch)` over blocks of `block` pixels
/// in parallel, with one scratch per thread.
fn per_block<T: Send, S, F>(input: &[u8], output: &mut [T], block: usize, f: F)
where
    S: Default,
    F: Fn(usize, &[u8], &mut [T], &mut S) + Send + Sync,
{
    if block == 0 {
        return;
    }
    output
        .par_chunks_mut(block)
        .zip(input.par_chunks(block))
        .enumerate()
        .for_each_init(S::default, |scratch, (z, (out, inp))| {
            f(z, inp, out, scratch);
        });
}

pub(crate) fn bounds(mask: ArrayView3<u8>) -> Vec<Option<Bounds>> {
    (0..mask.dim().0)
        .into_par_iter()
        .map(|z| {
            let slice = mask.index_axis(ndarray::Axis(0), z);
            let mut b: Option<Bounds> = None;
            for ((r, c), &v) in slice.indexed_iter() {
                if v == 0 {
                    continue;
                }
                b = Some(match b {
                    None => Bounds {
                        row_min: r,
                        column_min: c,
                        row_max: r,
                        column_max: c,
                    },
                    Some(b) => Bounds {
                        row_min: b.row_min.min(r),
                        column_min: b.column_min.min(c),
                        row_max: b.row_max.max(r),
                        column_max: b.column_max.max(c),
                    },
                });
            }
            b
        })
        .collect()
}

/// Bilinear upsampling of each logit slice, calling `emit(slice_out, row, values)` once per
/// output row.
fn upsample_rows<T: Send + Copy + Default>(
    logits: ArrayView3<f32>,
    transform: &Transform,
    map: impl Fn(f32) -> T + Sync,
) -> Result<Array3<T>, PostError> {
    check_logits(&logits)?;
    let n = logits.dim().0;
    let (rows, cols) = (transform.source_rows, transform.source_cols);
    let sc = transform.scaled_cols.clamp(1, MODEL_SIZE);
    let row_taps: Vec<Tap> = bilinear_taps(transform.scaled_rows.clamp(1, MODEL_SIZE), rows);
    let col_taps: Vec<Tap> = bilinear_taps(sc, cols);
    let input = contiguous(&logits);
    let frame = MODEL_SIZE * MODEL_SIZE;
    let mut out = vec![T::default(); n * rows * cols];
    if rows * cols > 0 {
        out.par_chunks_mut(rows * cols)
            .zip(input.par_chunks(frame))
            .for_each_init(
                || vec![0f32; rows * sc],
                |tmp, (out, l)| {
                    for (r, t) in row_taps.iter().enumerate() {
                        let a = &l[t.i0 as usize * MODEL_SIZE..][..sc];
                        let b = &l[t.i1 as usize * MODEL_SIZE..][..sc];
                        for ((d, &x), &y) in tmp[r * sc..(r + 1) * sc].iter_mut().zip(a).zip(b) {
                            *d = t.w0 * x + t.w1 * y;
                        }
                    }
                    for (tr, o) in tmp.chunks_exact(sc).zip(out.chunks_exact_mut(cols)) {
                        for (d, t) in o.iter_mut().zip(&col_taps) {
                            *d = map(t.w0 * tr[t.i0 as usize] + t.w1 * tr[t.i1 as usize]);
                        }
                    }
                },
            );
    }
    shaped((n, rows, cols), out)
}

impl MaskOps for CpuMaskOps {
    fn backend(&self) -> Backend {
        Backend::Cpu
    }

    fn upsample_threshold(
        &self,
        logits: ArrayView3<f32>,
        transform: &Transform,
        threshold_logit: f32,
    ) -> Result<Array3<u8>, PostError> {
        upsample_rows(logits, transform, |v| u8::from(v > threshold_logit))
    }

    fn upsample(
        &self,
        logits: ArrayView3<f32>,
        transform: &Transform,
    ) -> Result<Array3<f32>, PostError> {
        upsample_rows(logits, transform, |v| v)
    }

    fn label(
        &self,
        mask: ArrayView3<u8>,
        connectivity: Connectivity,
    ) -> Result<Array3<u32>, PostError> {
        let dims = mask.dim();
        let (block, neighbours) = blocks(dims, connectivity);
        let bdims = block_dims(dims, connectivity);
        let cols = dims.2;
        let input = contiguous(&mask);
        let mut out = vec![0u32; input.len()];
        per_block(&input, &mut out, block, |z, inp, out, runs: &mut Runs| {
            runs.label(inp, bdims, neighbours, true);
            let offset = (z * block) as u32 + 1;
            for i in 0..runs.len() {
                let root = runs.parent[i] as usize;
                let label = runs.range(root, cols).start as u32 + offset;
                out[runs.range(i, cols)].fill(label);
            }
        });
        shaped(dims, out)
    }

    fn keep_largest(
        &self,
        mask: ArrayView3<u8>,
        connectivity: Connectivity,
    ) -> Result<Array3<u8>, PostError> {
        let dims = mask.dim();
        let (block, neighbours) = blocks(dims, connectivity);
        let bdims = block_dims(dims, connectivity);
        let cols = dims.2;
        let input = contiguous(&mask);
        let mut out = vec![0u8; input.len()];
        per_block(&input, &mut out, block, |_, inp, out, runs: &mut Runs| {
            runs.label(inp, bdims, neighbours, true);
            runs.sizes();
            // the first root of the largest size: ties go to the smallest label
            let mut best = (0u32, usize::MAX);
            for (i, &s) in runs.size.iter().enumerate() {
                if s > best.0 {
                    best = (s, i);
                }
            }
            for i in 0..runs.len() {
                if runs.parent[i] as usize == best.1 {
                    out[runs.range(i, cols)].fill(1);
                }
            }
        });
        shaped(dims, out)
    }

    fn remove_small(
        &self,
        mask: ArrayView3<u8>,
        connectivity: Connectivity,
        min_pixels: usize,
    ) -> Result<Array3<u8>, PostError> {
        let dims = mask.dim();
        let (block, neighbours) = blocks(dims, connectivity);
        let bdims = block_dims(dims, connectivity);
        let cols = dims.2;
        let input = contiguous(&mask);
        let mut out = vec![0u8; input.len()];
        per_block(&input, &mut out, block, |_, inp, out, runs: &mut Runs| {
            runs.label(inp, bdims, neighbours, true);
            runs.sizes();
            for i in 0..runs.len() {
                if runs.size[runs.parent[i] as usize] as usize >= min_pixels {
                    out[runs.range(i, cols)].fill(1);
                }
            }
        });
        shaped(dims, out)
    }

    fn fill_holes(&self, mask: ArrayView3<u8>) -> Result<Array3<u8>, PostError> {
        let dims = mask.dim();
        let (_, rows, cols) = dims;
        let plane = rows * cols;
        let input = contiguous(&mask);
        let mut out = vec![0u8; input.len()];
        per_block(&input, &mut out, plane, |_, inp, out, runs: &mut Runs| {
            // background runs, 4-connected; `size` flags the roots touching the edge
            runs.label(inp, (1, rows, cols), Neighbours::Four, false);
            runs.size.clear();
            runs.size.resize(runs.len(), 0);
            for i in 0..runs.len() {
                let r = runs.row[i] as usize;
                if r == 0 || r + 1 == rows || runs.c0[i] == 0 || runs.c1[i] as usize == cols {
                    runs.size[runs.parent[i] as usize] = 1;
                }
            }
            out.fill(1);
            for i in 0..runs.len() {
                if runs.size[runs.parent[i] as usize] == 1 {
                    out[runs.range(i, cols)].fill(0);
                }
            }
        });
        shaped(dims, out)
    }

    fn open(&self, mask: ArrayView3<u8>, radius_px: u32) -> Result<Array3<u8>, PostError> {
        let eroded = morph(mask, radius_px, false)?;
        morph(eroded.view(), radius_px, true)
    }

    fn close(&self, mask: ArrayView3<u8>, radius_px: u32) -> Result<Array3<u8>, PostError> {
        let dilated = morph(mask, radius_px, true)?;
        morph(dilated.view(), radius_px, false)
    }

    fn distance(
        &self,
        mask: ArrayView3<u8>,
        spacing: Spacing,
        border: Border,
    ) -> Result<Array3<f32>, PostError> {
        let (mut d2, dims) =
            sq_distance(mask, false, border == Border::Background, spacing2(spacing));
        d2.par_iter_mut().for_each(|d| *d = finish_distance(*d));
        shaped(dims, d2)
    }

    fn top_k(&self, values: ArrayView3<f32>, k: usize) -> Result<Vec<Peak>, PostError> {
        let data = contiguous(&values);
        let indices = top_k_keys(&data, k);
        Ok(peaks(&values, &indices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr3, Array3};

    const ONE_MM: Spacing = Spacing {
        column_mm: 1.0,
        row_mm: 1.0,
        slice_mm: 1.0,
    };

    fn mask(rows: &[&str]) -> Array3<u8> {
        let r = rows.len();
        let c = rows.first().map_or(0, |s| s.len());
        Array3::from_shape_fn((1, r, c), |(_, i, j)| {
            u8::from(rows[i].as_bytes()[j] == b'#')
        })
    }

    #[test]
    fn run_labelling_equals_pixel_labelling() {
        let mut seed = 7u64;
        let mut runs = Runs::default();
        for (dims, density) in [
            ((1, 40, 37), 0.5),
            ((3, 17, 23), 0.6),
            ((4, 9, 1), 0.5),
            ((2, 1, 30), 0.4),
        ] {
            let m: Vec<u8> = (0..dims.0 * dims.1 * dims.2)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    u8::from((seed % 1000) as f64 / 1000.0 < density)
                })
                .collect();
            for nb in [Neighbours::Four, Neighbours::Eight, Neighbours::TwentySix] {
                for target in [true, false] {
                    let mut parent = vec![0u32; m.len()];
                    label_roots(&m, dims, nb, target, &mut parent);
                    runs.label(&m, dims, nb, target);
                    let mut from_runs = vec![NONE; m.len()];
                    for i in 0..runs.len() {
                        let root = runs.range(runs.parent[i] as usize, dims.2).start as u32;
                        from_runs[runs.range(i, dims.2)].fill(root);
                    }
                    assert_eq!(parent, from_runs, "{dims:?} {nb:?} {target}");
                }
            }
        }
    }

    #[test]
    fn diagonal_pixels_are_one_planar_component() {
        let m = mask(&["#..", ".#.", "..#"]);
        let labels = CpuMaskOps.label(m.view(), Connectivity::Planar).unwrap();
        assert_eq!(labels[[0, 0, 0]], 1);
        assert_eq!(labels[[0, 2, 2]], 1);
        assert_eq!(component_count(&labels), 1);
    }

    #[test]
    fn labels_are_one_plus_the_smallest_index_of_each_component() {
        let m = mask(&["..#.#", ".##.#", "....#"]);
        let labels = CpuMaskOps.label(m.view(), Connectivity::Planar).unwrap();
        assert_eq!(labels[[0, 1, 1]], 3); // component starts at index 2
        assert_eq!(labels[[0, 2, 4]], 5); // the right column starts at index 4
    }

    #[test]
    fn slices_are_separate_unless_volumetric() {
        let m = arr3(&[[[1u8, 0], [0, 0]], [[0, 0], [0, 1]]]);
        let planar = CpuMaskOps.label(m.view(), Connectivity::Planar).unwrap();
        assert_eq!(planar[[1, 1, 1]], 8);
        let volumetric = CpuMaskOps
            .label(m.view(), Connectivity::Volumetric)
            .unwrap();
        assert_eq!(
            volumetric[[1, 1, 1]],
            1,
            "diagonal across slices is 26-connected"
        );
    }

    fn component_count(labels: &Array3<u32>) -> usize {
        labels
            .iter()
            .filter(|&&l| l != 0)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }

    #[test]
    fn keep_largest_breaks_ties_by_first_pixel() {
        let m = mask(&["##.##", ".....", "###.."]);
        let kept = CpuMaskOps
            .keep_largest(m.view(), Connectivity::Planar)
            .unwrap();
        assert_eq!(kept, mask(&[".....", ".....", "###.."]));
        let m = mask(&["##.##"]);
        let kept = CpuMaskOps
            .keep_largest(m.view(), Connectivity::Planar)
            .unwrap();
        assert_eq!(kept, mask(&["##..."]));
    }

    #[test]
    fn remove_small_keeps_components_at_the_limit() {
        let m = mask(&["##..#", "##...", "....#"]);
        let out = CpuMaskOps
            .remove_small(m.view(), Connectivity::Planar, 4)
            .unwrap();
        assert_eq!(out, mask(&["##...", "##...", "....."]));
    }

    #[test]
    fn holes_are_filled_but_bays_open_to_the_edge_are_not() {
        let m = mask(&["#####.", "#...#.", "#####.", "#..#..", "#..#.."]);
        let out = CpuMaskOps.fill_holes(m.view()).unwrap();
        assert_eq!(
            out,
            mask(&["#####.", "#####.", "#####.", "#..#..", "#..#.."])
        );
    }

    #[test]
    fn a_diagonal_gap_does_not_open_a_hole() {
        // the hole touches the outside only diagonally: with 8-connected foreground the
        // background is 4-connected, so it is a hole
        let m = mask(&[".###", "#..#", "#..#", "####"]);
        let out = CpuMaskOps.fill_holes(m.view()).unwrap();
        assert_eq!(out[[0, 1, 1]], 1);
        assert_eq!(out[[0, 0, 0]], 0);
    }

    #[test]
    fn distance_is_exact_with_spacing() {
        // one background pixel at the centre of a 5x5 slice, no border: the corner is at
        // (2 rows, 2 cols) = sqrt((2*2mm)^2 + (2*1mm)^2)
        let mut m = Array3::from_elem((1, 5, 5), 1u8);
        m[[0, 2, 2]] = 0;
        let spacing = Spacing {
            column_mm: 1.0,
            row_mm: 2.0,
            slice_mm: 5.0,
        };
        let d = CpuMaskOps
            .distance(m.view(), spacing, Border::Ignore)
            .unwrap();
        assert_eq!(d[[0, 2, 2]], 0.0);
        assert!((d[[0, 0, 0]] - 20f32.sqrt()).abs() < 1e-6);
        assert!((d[[0, 2, 4]] - 2.0).abs() < 1e-6);
        assert!((d[[0, 0, 2]] - 4.0).abs() < 1e-6);
    }

    #[test]
    fn distance_matches_brute_force_on_a_pattern() {
        let m = Array3::from_shape_fn((2, 13, 9), |(z, r, c)| {
            u8::from((r * 7 + c * 3 + z) % 5 != 0)
        });
        let spacing = Spacing {
            column_mm: 0.7,
            row_mm: 1.3,
            slice_mm: 1.0,
        };
        for border in [Border::Background, Border::Ignore] {
            let d = CpuMaskOps.distance(m.view(), spacing, border).unwrap();
            for ((z, r, c), &got) in d.indexed_iter() {
                let mut best = f64::INFINITY;
                for ((z2, r2, c2), &v) in m.indexed_iter() {
                    if z2 == z && v == 0 {
                        let dy = (r as f64 - r2 as f64) * 1.3;
                        let dx = (c as f64 - c2 as f64) * 0.7;
                        best = best.min((dy * dy + dx * dx).sqrt());
                    }
                }
                if border == Border::Background {
                    let dy = (r + 1).min(13 - r) as f64 * 1.3;
                    let dx = (c + 1).min(9 - c) as f64 * 0.7;
                    best = best.min(dy).min(dx);
                }
                assert!(
                    (got as f64 - best).abs() < 1e-5,
                    "{z} {r} {c}: {got} vs {best}"
                );
            }
        }
    }

    #[test]
    fn distance_without_background_is_infinite_unless_the_border_counts() {
        let m = Array3::from_elem((1, 3, 4), 1u8);
        let d = CpuMaskOps
            .distance(m.view(), ONE_MM, Border::Ignore)
            .unwrap();
        assert!(d.iter().all(|v| v.is_infinite()));
        let d = CpuMaskOps
            .distance(m.view(), ONE_MM, Border::Background)
            .unwrap();
        assert_eq!(d[[0, 1, 1]], 2.0);
        assert_eq!(d[[0, 0, 0]], 1.0);
    }

    #[test]
    fn opening_removes_thin_lines_and_closing_fills_narrow_gaps() {
        let m = mask(
            &[
                ".......", ".###...", ".###...", ".#######", ".###...", ".......",
            ]
            .map(|s| &s[..7]),
        );
        let opened = CpuMaskOps.open(m.view(), 1).unwrap();
        assert_eq!(opened[[0, 3, 6]], 0, "the one-pixel line is gone");
        assert_eq!(opened[[0, 2, 2]], 1, "the square core stays");
        let gap = mask(&["###.###"]);
        let closed = CpuMaskOps.close(gap.view(), 1).unwrap();
        assert_eq!(closed, mask(&["#######"]));
    }

    #[test]
    fn windowed_morphology_equals_the_distance_transform_route() {
        let mut seed = 99u64;
        for dims in [(2, 31, 29), (1, 1, 17), (1, 13, 1), (1, 40, 40)] {
            let m = Array3::from_shape_fn(dims, |_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                u8::from(seed % 10 < 6)
            });
            for radius in [0, 1, 2, 3, 5, 8, 30] {
                for dilate in [false, true] {
                    assert_eq!(
                        morph(m.view(), radius, dilate).unwrap(),
                        morph_by_distance(m.view(), radius, dilate).unwrap(),
                        "{dims:?} r={radius} dilate={dilate}"
                    );
                }
            }
        }
    }

    #[test]
    fn opening_and_closing_with_radius_zero_change_nothing() {
        let m = mask(&["#.#", ".##", "#.."]);
        assert_eq!(CpuMaskOps.open(m.view(), 0).unwrap(), m);
        assert_eq!(CpuMaskOps.close(m.view(), 0).unwrap(), m);
    }

    #[test]
    fn top_k_is_ordered_with_ties_by_index_and_nan_last() {
        let v = arr3(&[[[0.5f32, f32::NAN, 0.9], [0.5, 0.1, 0.9]]]);
        let top = CpuMaskOps.top_k(v.view(), 4).unwrap();
        let idx: Vec<(usize, usize)> = top.iter().map(|p| (p.row, p.column)).collect();
        assert_eq!(idx, vec![(0, 2), (1, 2), (0, 0), (1, 0)]);
        assert_eq!(CpuMaskOps.top_k(v.view(), 10).unwrap().len(), 6);
        assert!(CpuMaskOps.top_k(v.view(), 0).unwrap().is_empty());
    }

    #[test]
    fn upsampling_matches_the_reference_resize() {
        let t = Transform::new(217, 181);
        let logits = Array3::from_shape_fn((2, 256, 256), |(z, r, c)| {
            ((r * 31 + c * 17 + z * 5) % 23) as f32 - 11.3
        });
        let up = CpuMaskOps.upsample(logits.view(), &t).unwrap();
        for z in 0..2 {
            let reference =
                super::super::logits_to_source(logits.slice(ndarray::s![z, .., ..]), &t);
            assert_eq!(up.slice(ndarray::s![z, .., ..]), reference);
        }
        let mask = CpuMaskOps
            .upsample_threshold(logits.view(), &t, 0.0)
            .unwrap();
        assert_eq!(mask, up.mapv(|v| u8::from(v > 0.0)));
    }

    #[test]
    fn bounds_cover_the_foreground() {
        let m = arr3(&[[[0u8, 0, 0], [0, 1, 0]], [[0, 0, 0], [0, 0, 0]]]);
        let b = bounds(m.view());
        assert_eq!(
            b,
            vec![
                Some(Bounds {
                    row_min: 1,
                    column_min: 1,
                    row_max: 1,
                    column_max: 1
                }),
                None
            ]
        );
    }
}
