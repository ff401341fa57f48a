//! The exact squared Euclidean distance transform (Felzenszwalb and Huttenlocher, the
//! twin of the distance kernels) and the disk morphology built on it.

use super::*;

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
pub(super) fn envelope_row(
    g: &[f32],
    out: &mut [f32],
    v: &mut [u32],
    z: &mut [f32],
    sx2: f32,
    border: bool,
) {
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
pub(super) fn sq_distance(
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
pub(super) fn morph(
    mask: ArrayView3<u8>,
    radius_px: u32,
    dilate: bool,
) -> Result<Array3<u8>, PostError> {
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
pub(super) const WINDOW_MORPH_MAX_RADIUS: u32 = 24;

/// Erosion or dilation of one slice by a disk, exactly: the squared distance to the
/// nearest feature pixel is `min over |dc| <= r of count(x + dc)^2 + dc^2`, where `count` is
/// the vertical distance within the column (capped at `r + 1`, beyond which nothing
/// counts). Gives the same masks as the distance-transform route (and the kernels).
#[allow(clippy::too_many_arguments)]
pub(super) fn morph_slice(
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
pub(super) fn morph_by_distance(
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
