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

#[inline]
fn find(parent: &mut [u32], mut x: u32) -> u32 {
    loop {
        let p = parent[x as usize];
        if p == x {
            return x;
        }
        let g = parent[p as usize];
        parent[x as usize] = g;
        x = g;
    }
}

#[inline]
fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra < rb {
        parent[rb as usize] = ra;
    } else if rb < ra {
        parent[ra as usize] = rb;
    }
}

/// Pixel-by-pixel union-find labelling (the reference the run-based [`Runs`] is tested
/// against, and the algorithm of the kernels) of the pixels whose foreground state equals
/// `target`, in a block of `dims = (slices, rows, cols)`. Afterwards `parent[i]` is the smallest index of `i`'s
/// component (its root), or [`NONE`] outside the set.
#[cfg(test)]
pub(crate) fn label_roots(
    mask: &[u8],
    dims: (usize, usize, usize),
    neighbours: Neighbours,
    target: bool,
    parent: &mut [u32],
) {
    let (slices, rows, cols) = dims;
    let plane = rows * cols;
    for z in 0..slices {
        for r in 0..rows {
            let row_start = z * plane + r * cols;
            for c in 0..cols {
                let i = row_start + c;
                if (mask[i] != 0) != target {
                    parent[i] = NONE;
                    continue;
                }
                parent[i] = i as u32;
                let mut join = |j: usize| {
                    if parent[j] != NONE {
                        union(parent, i as u32, j as u32);
                    }
                };
                if c > 0 {
                    join(i - 1);
                }
                if r > 0 {
                    join(i - cols);
                    if neighbours != Neighbours::Four {
                        if c > 0 {
                            join(i - cols - 1);
                        }
                        if c + 1 < cols {
                            join(i - cols + 1);
                        }
                    }
                }
                if neighbours == Neighbours::TwentySix && z > 0 {
                    for dr in -1isize..=1 {
                        let rr = r as isize + dr;
                        if rr < 0 || rr >= rows as isize {
                            continue;
                        }
                        for dc in -1isize..=1 {
                            let cc = c as isize + dc;
                            if cc < 0 || cc >= cols as isize {
                                continue;
                            }
                            join((z - 1) * plane + rr as usize * cols + cc as usize);
                        }
                    }
                }
            }
        }
    }
    // parent[i] <= i always holds, so one increasing pass flattens every tree
    for i in 0..parent.len() {
        let p = parent[i];
        if p != NONE {
            parent[i] = parent[p as usize];
        }
    }
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

/// Row-run labelling: the runs of pixels whose foreground state equals a target, joined
/// by union-find over runs (far fewer than pixels). Runs are numbered in raster order and
/// unions link the larger root under the smaller, so each component's root is its first
/// run, which holds its smallest linear index: the same canonical labels as the kernels.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    /// Row (`slice * rows + row`) of each run.
    row: Vec<u32>,
    /// First column of each run.
    c0: Vec<u32>,
    /// One past the last column of each run.
    c1: Vec<u32>,
    /// Root run of each run after [`Runs::label`].
    parent: Vec<u32>,
    /// Index of the first run of each row, and the number of runs at the end.
    first: Vec<u32>,
    /// Pixels per root run (filled by [`Runs::sizes`]).
    size: Vec<u32>,
}

impl Runs {
    /// Labels the pixels of `mask` (a block of `dims = (slices, rows, cols)`) whose
    /// foreground state is `target`.
    pub(crate) fn label(
        &mut self,
        mask: &[u8],
        dims: (usize, usize, usize),
        neighbours: Neighbours,
        target: bool,
    ) {
        let (slices, rows, cols) = dims;
        self.row.clear();
        self.c0.clear();
        self.c1.clear();
        self.parent.clear();
        self.first.clear();
        let ext = u32::from(neighbours != Neighbours::Four);
        for z in 0..slices {
            for r in 0..rows {
                let row_id = z * rows + r;
                let first = self.parent.len();
                self.first.push(first as u32);
                let line = &mask[row_id * cols..(row_id + 1) * cols];
                let mut c = 0;
                while c < cols {
                    match line[c..].iter().position(|&b| (b != 0) == target) {
                        Some(o) => c += o,
                        None => break,
                    }
                    let start = c;
                    c += line[c..]
                        .iter()
                        .position(|&b| (b != 0) != target)
                        .unwrap_or(cols - c);
                    self.parent.push(self.parent.len() as u32);
                    self.row.push(row_id as u32);
                    self.c0.push(start as u32);
                    self.c1.push(c as u32);
                }
                let end = self.parent.len();
                if r > 0 {
                    self.merge(first..end, row_id - 1, ext);
                }
                if neighbours == Neighbours::TwentySix && z > 0 {
                    for rr in r.saturating_sub(1)..=(r + 1).min(rows - 1) {
                        self.merge(first..end, (z - 1) * rows + rr, 1);
                    }
                }
            }
        }
        self.first.push(self.parent.len() as u32);
        // parent[i] <= i, so one increasing pass flattens every tree
        for i in 0..self.parent.len() {
            let p = self.parent[i] as usize;
            self.parent[i] = self.parent[p];
        }
    }

    /// Joins the runs `current` with the runs of row `earlier` that touch them (`ext` = 1
    /// lets runs touch diagonally).
    fn merge(&mut self, current: std::ops::Range<usize>, earlier: usize, ext: u32) {
        let (a, b) = (
            self.first[earlier] as usize,
            self.first[earlier + 1] as usize,
        );
        let mut j = a;
        for i in current {
            let (q0, q1) = (self.c0[i], self.c1[i]);
            while j < b && self.c1[j] + ext <= q0 {
                j += 1;
            }
            let mut k = j;
            while k < b && self.c0[k] < q1 + ext {
                union(&mut self.parent, i as u32, k as u32);
                k += 1;
            }
        }
    }

    /// Number of runs.
    fn len(&self) -> usize {
        self.parent.len()
    }

    /// The pixel range of run `i` in its block.
    fn range(&self, i: usize, cols: usize) -> std::ops::Range<usize> {
        let base = self.row[i] as usize * cols;
        base + self.c0[i] as usize..base + self.c1[i] as usize
    }

    /// Counts the pixels of each component into `size[root]`.
    fn sizes(&mut self) {
        self.size.clear();
        self.size.resize(self.parent.len(), 0);
        for i in 0..self.parent.len() {
            self.size[self.parent[i] as usize] += self.c1[i] - self.c0[i];
        }
    }
}

/// Block size and neighbourhood of a connectivity for `dims`.
fn blocks(dims: (usize, usize, usize), connectivity: Connectivity) -> (usize, Neighbours) {
    let (s, r, c) = dims;
    match connectivity {
        Connectivity::Planar => (r * c, Neighbours::Eight),
        Connectivity::Volumetric => (s * r * c, Neighbours::TwentySix),
    }
}

fn block_dims(dims: (usize, usize, usize), connectivity: Connectivity) -> (usize, usize, usize) {
    match connectivity {
        Connectivity::Planar => (1, dims.1, dims.2),
        Connectivity::Volumetric => dims,
    }
}

/// Squared distance transform of one slice, `out[i]` in mm^2 to the nearest pixel whose
/// foreground state is `feature` (or [`NO_FEATURE`]); `count` (u32), `v` and `z` are
/// scratch of at least `plane`, `cols` and `cols + 1` entries.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sq_distance_slice(
    mask: &[u8],
    rows: usize,
    cols: usize,
    feature: bool,
    border: bool,
    (sy2, sx2): (f32, f32),
    out: &mut [f32],
    g: &mut [f32],
    count: &mut [u32],
    v: &mut [u32],
    z: &mut [f32],
) {
    // column pass: distance in rows to the nearest feature, down then up (row-major loops
    // over the same recurrences as scan_columns.wgsl)
    for r in 0..rows {
        for c in 0..cols {
            let i = r * cols + c;
            count[i] = if (mask[i] != 0) == feature {
                0
            } else if r == 0 {
                if border {
                    1
                } else {
                    NONE
                }
            } else {
                count[i - cols].saturating_add(1)
            };
        }
    }
    for r in (0..rows).rev() {
        for c in 0..cols {
            let i = r * cols + c;
            let below = if r + 1 == rows {
                if border {
                    1
                } else {
                    NONE
                }
            } else {
                count[i + cols].saturating_add(1)
            };
            let k = count[i].min(below);
            count[i] = k;
            g[i] = if k == NONE {
                NO_FEATURE
            } else {
                let kf = k as f32;
                kf * kf * sy2
            };
        }
    }
    for r in 0..rows {
        let range = r * cols..(r + 1) * cols;
        envelope_row(&g[range.clone()], &mut out[range], v, z, sx2, border);
    }
}

/// Lower envelope of parabolas along one row (Felzenszwalb and Huttenlocher), the twin of
/// envelope_rows.wgsl (indexed loops on purpose, to read like the kernel).
#[allow(clippy::needless_range_loop)]
fn envelope_row(g: &[f32], out: &mut [f32], v: &mut [u32], z: &mut [f32], sx2: f32, border: bool) {
    let n = g.len();
    let mut k = 0usize;
    let mut have = false;
    for q in 0..n {
        let fq = g[q];
        if fq >= NO_FEATURE {
            continue;
        }
        if !have {
            have = true;
            k = 0;
            v[0] = q as u32;
            z[0] = f32::NEG_INFINITY;
            z[1] = f32::INFINITY;
            continue;
        }
        let qf = q as f32;
        let mut s;
        loop {
            let p = v[k] as usize;
            let pf = p as f32;
            s = ((fq + sx2 * qf * qf) - (g[p] + sx2 * pf * pf)) / (2.0 * sx2 * (qf - pf));
            if s <= z[k] && k > 0 {
                k -= 1;
            } else {
                break;
            }
        }
        k += 1;
        v[k] = q as u32;
        z[k] = s;
        z[k + 1] = f32::INFINITY;
    }
    k = 0;
    for x in 0..n {
        let xf = x as f32;
        let mut d = NO_FEATURE;
        if have {
            while z[k + 1] < xf {
                k += 1;
            }
            let p = v[k] as usize;
            let dx = xf - p as f32;
            d = dx * dx * sx2 + g[p];
        }
        if border {
            let b = (x + 1).min(n - x) as f32;
            d = d.min(b * b * sx2);
        }
        out[x] = d;
    }
}

/// Squared distances (mm^2) for every slice of `mask`.
fn sq_distance(
    mask: ArrayView3<u8>,
    feature: bool,
    border: bool,
    spacing2: (f32, f32),
) -> (Vec<f32>, (usize, usize, usize)) {
    let dims = mask.dim();
    let (_, rows, cols) = dims;
    let plane = rows * cols;
    let input = contiguous(&mask);
    let mut out = vec![0f32; input.len()];
    if plane > 0 {
        out.par_chunks_mut(plane)
            .zip(input.par_chunks(plane))
            .for_each_init(
                || {
                    (
                        vec![0f32; plane],
                        vec![0u32; plane],
                        vec![0u32; cols],
                        vec![0f32; cols + 1],
                    )
                },
                |(g, count, v, z), (out, inp)| {
                    sq_distance_slice(
                        inp, rows, cols, feature, border, spacing2, out, g, count, v, z,
                    )
                },
            );
    }
    (out, dims)
}

/// Erosion (`feature` = background, keep pixels farther than the radius) or dilation
/// (`feature` = foreground, keep pixels within the radius) by a disk, via exact integer
/// squared distances.
fn morph(mask: ArrayView3<u8>, radius_px: u32, dilate: bool) -> Result<Array3<u8>, PostError> {
    if radius_px > WINDOW_MORPH_MAX_RADIUS {
        return morph_by_distance(mask, radius_px, dilate);
    }
    let dims = mask.dim();
    let (_, rows, cols) = dims;
    let plane = rows * cols;
    let input = contiguous(&mask);
    let mut out = vec![0u8; input.len()];
    if plane > 0 {
        out.par_chunks_mut(plane)
            .zip(input.par_chunks(plane))
            .for_each_init(
                || (vec![0u32; plane], vec![0u32; cols]),
                |(count, acc), (out, inp)| {
                    morph_slice(inp, rows, cols, radius_px, dilate, out, count, acc)
                },
            );
    }
    shaped(dims, out)
}

/// Radii up to this use the windowed morphology ([`morph_slice`], `2r + 1` operations per
/// pixel); larger ones the distance transform (constant per pixel).
const WINDOW_MORPH_MAX_RADIUS: u32 = 24;

/// Erosion or dilation of one slice by a disk, exactly: the squared distance to the
/// nearest feature pixel is `min over |dc| <= r of count(x + dc)^2 + dc^2`, where `count` is
/// the vertical distance within the column (capped at `r + 1`, beyond which nothing
/// counts). Gives the same masks as the distance-transform route (and the kernels).
#[allow(clippy::too_many_arguments)]
fn morph_slice(
    mask: &[u8],
    rows: usize,
    cols: usize,
    radius_px: u32,
    dilate: bool,
    out: &mut [u8],
    count: &mut [u32],
    acc: &mut [u32],
) {
    let far = radius_px + 1;
    // vertical distance to the nearest feature, capped at `far` (outside is no feature)
    for r in 0..rows {
        let (above, row) = count.split_at_mut(r * cols);
        let line = &mask[r * cols..(r + 1) * cols];
        let prev = if r == 0 {
            None
        } else {
            Some(&above[(r - 1) * cols..])
        };
        for c in 0..cols {
            row[c] = if (line[c] != 0) == dilate {
                0
            } else {
                prev.map_or(far, |p| (p[c] + 1).min(far))
            };
        }
    }
    for r in (0..rows.saturating_sub(1)).rev() {
        let (head, below) = count.split_at_mut((r + 1) * cols);
        let row = &mut head[r * cols..];
        for (k, &b) in row.iter_mut().zip(&below[..cols]) {
            *k = (*k).min((b + 1).min(far));
        }
    }
    for k in count.iter_mut() {
        *k *= *k;
    }
    let r2 = radius_px * radius_px;
    let rad = radius_px as usize;
    for r in 0..rows {
        let sq = &count[r * cols..(r + 1) * cols];
        acc.copy_from_slice(sq);
        for dc in 1..=rad.min(cols.saturating_sub(1)) {
            let d2 = (dc * dc) as u32;
            // neighbours dc columns to the right and to the left
            for (a, &v) in acc[..cols - dc].iter_mut().zip(&sq[dc..]) {
                *a = (*a).min(v + d2);
            }
            for (a, &v) in acc[dc..].iter_mut().zip(&sq[..cols - dc]) {
                *a = (*a).min(v + d2);
            }
        }
        for (o, &a) in out[r * cols..(r + 1) * cols].iter_mut().zip(acc.iter()) {
            *o = u8::from(if dilate { a <= r2 } else { a > r2 });
        }
    }
}

/// Morphology through the exact squared distance transform (unit spacing, integer
/// distances), the route the kernels take.
fn morph_by_distance(
    mask: ArrayView3<u8>,
    radius_px: u32,
    dilate: bool,
) -> Result<Array3<u8>, PostError> {
    let (d2, dims) = sq_distance(mask, dilate, false, (1.0, 1.0));
    let r2 = radius_px as f32 * radius_px as f32;
    let out = d2
        .par_iter()
        .map(|&d| u8::from(if dilate { d <= r2 } else { d > r2 }))
        .collect();
    shaped(dims, out)
}

pub(crate) fn spacing2(spacing: Spacing) -> (f32, f32) {
    let sy = spacing.row_mm as f32;
    let sx = spacing.column_mm as f32;
    (sy * sy, sx * sx)
}

/// A squared distance to a distance in mm ([`NO_FEATURE`] to infinity).
#[inline]
pub(crate) fn finish_distance(d2: f32) -> f32 {
    if d2 >= NO_FEATURE {
        f32::INFINITY
    } else {
        d2.sqrt()
    }
}

/// Better-first order of top-K entries: larger key, then smaller index.
type Ranked = (u32, Reverse<usize>);

fn top_k_keys(values: &[f32], k: usize) -> Vec<usize> {
    if k == 0 || values.is_empty() {
        return Vec::new();
    }
    const CHUNK: usize = 1 << 16;
    let partial: Vec<Vec<Ranked>> = values
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(ci, chunk)| {
            let mut heap: BinaryHeap<Reverse<Ranked>> = BinaryHeap::with_capacity(k + 1);
            let mut worst = 0u32;
            for (j, &v) in chunk.iter().enumerate() {
                let key = order_key(v);
                if heap.len() == k && key < worst {
                    continue;
                }
                let item = (key, Reverse(ci * CHUNK + j));
                if heap.len() < k {
                    heap.push(Reverse(item));
                } else if heap.peek().is_some_and(|Reverse(w)| item > *w) {
                    heap.pop();
                    heap.push(Reverse(item));
                }
                if heap.len() == k {
                    worst = heap.peek().map_or(0, |Reverse(w)| w.0);
                }
            }
            heap.into_iter().map(|Reverse(x)| x).collect()
        })
        .collect();
    let mut all: Vec<Ranked> = partial.into_iter().flatten().collect();
    all.sort_unstable_by(|a, b| b.cmp(a));
    all.truncate(k);
    all.into_iter().map(|(_, Reverse(i))| i).collect()
}

/// Turns linear indices into peaks of `values`.
pub(crate) fn peaks(values: &ArrayView3<f32>, indices: &[usize]) -> Vec<Peak> {
    let (_, rows, cols) = values.dim();
    indices
        .iter()
        .filter_map(|&i| {
            let (z, r, c) = (i / (rows * cols), (i / cols) % rows, i % cols);
            values.get((z, r, c)).map(|&value| Peak {
                slice: z,
                row: r,
                column: c,
                value,
            })
        })
        .collect()
}

/// Orders top-K candidates (any order, exact set) as [`MaskOps::top_k`] returns them.
pub(crate) fn rank(values: &ArrayView3<f32>, mut indices: Vec<usize>) -> Vec<Peak> {
    let (_, rows, cols) = values.dim();
    let key = |i: usize| {
        let (z, r, c) = (i / (rows * cols), (i / cols) % rows, i % cols);
        values.get((z, r, c)).map_or(0, |&v| order_key(v))
    };
    indices.sort_unstable_by_key(|&i| (Reverse(key(i)), i));
    peaks(values, &indices)
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
