//! Exact squared Euclidean distance transform on a regular grid with anisotropic spacing.
//!
//! Separable algorithm of Felzenszwalb and Huttenlocher ("Distance transforms of sampled
//! functions", Theory of Computing 8, 2012): one pass per axis, each pass computing the
//! lower envelope of the parabolas `f(p) + ((q - p) * spacing)^2` along every line in
//! O(n). Passes run over axes 0, 1, 2, ... so the squared distance of a point is summed as
//! `((d0 * s0)^2 + (d1 * s1)^2) + (d2 * s2)^2`, the order scipy's `distance_transform_edt`
//! uses; distances to a unique nearest feature therefore agree bit for bit.
//!
//! Lines along the last (contiguous) axis are transformed in place; lines along other axes
//! are gathered in tiles of [`TILE_COLUMNS`] neighbouring lines, so every cache line read
//! from memory serves several lines. Lines and tiles run in parallel with rayon.

use rayon::prelude::*;

/// Neighbouring lines gathered together when transforming along a strided axis.
const TILE_COLUMNS: usize = 64;

/// Scratch space of the 1-D lower envelope, reused across the lines of one worker.
#[derive(Default)]
struct Envelope {
    /// Input values of the current line.
    f: Vec<f64>,
    /// Positions of the parabolas in the lower envelope.
    v: Vec<usize>,
    /// Left boundary of each envelope parabola's interval, in index units.
    z: Vec<f64>,
}

impl Envelope {
    /// Replaces `line[q]` by `min_p line[p] + ((q - p) * spacing)^2` (all in mm²).
    /// Infinite entries contribute no parabola; a line without finite entries is unchanged.
    fn transform(&mut self, line: &mut [f64], spacing: f64) {
        self.f.clear();
        self.f.extend_from_slice(line);
        self.v.clear();
        self.z.clear();
        let f = &self.f;
        let s2 = spacing * spacing;
        for (q, &fq) in f.iter().enumerate() {
            if fq == f64::INFINITY {
                continue;
            }
            let qf = q as f64;
            while let Some(&p) = self.v.last() {
                let pf = p as f64;
                // Abscissa (index units) where the parabolas of p and q intersect.
                let x = ((fq - f[p]) / s2 + (qf * qf - pf * pf)) / (2.0 * (qf - pf));
                let left = self.z.last().copied().unwrap_or(f64::NEG_INFINITY);
                if x <= left {
                    // q's parabola is below p's over p's whole interval.
                    self.v.pop();
                    self.z.pop();
                } else {
                    self.v.push(q);
                    self.z.push(x);
                    break;
                }
            }
            if self.v.is_empty() {
                self.v.push(q);
                self.z.push(f64::NEG_INFINITY);
            }
        }
        if self.v.is_empty() {
            return;
        }
        let mut k = 0;
        for (q, out) in line.iter_mut().enumerate() {
            let x = q as f64;
            while k + 1 < self.v.len() && self.z[k + 1] < x {
                k += 1;
            }
            let p = self.v[k];
            let d = (x - p as f64) * spacing;
            *out = f[p] + d * d;
        }
    }
}

/// Squared Euclidean distance transform in place, in mm².
///
/// `buf` holds a C-order array of `shape`, with `0.0` at feature elements and `+inf`
/// elsewhere (more generally any initial squared distances). Afterwards each element holds
/// the squared distance to its nearest feature, `+inf` when there is none.
/// `spacing_mm` has one positive finite entry per axis; `buf.len()` is the product of
/// `shape` (both checked by the callers).
pub(crate) fn squared_edt_in_place(buf: &mut [f64], shape: &[usize], spacing_mm: &[f64]) {
    debug_assert_eq!(buf.len(), shape.iter().product::<usize>());
    debug_assert_eq!(shape.len(), spacing_mm.len());
    if buf.is_empty() {
        return;
    }
    for (axis, &spacing) in spacing_mm.iter().enumerate() {
        transform_axis(buf, shape, axis, spacing);
    }
}

/// One separable pass: the 1-D transform along every line parallel to `axis`.
fn transform_axis(buf: &mut [f64], shape: &[usize], axis: usize, spacing: f64) {
    let n = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    if n <= 1 {
        return;
    }
    if inner == 1 {
        buf.par_chunks_mut(n)
            .for_each_init(Envelope::default, |env, line| env.transform(line, spacing));
        return;
    }
    // Rows of `inner` elements; row r = o * n + j holds line position j of the lines of
    // outer index o. Each row is cut into blocks of TILE_COLUMNS columns, and the n blocks
    // with the same (o, block) form one tile of independent lines.
    let blocks_per_row = inner.div_ceil(TILE_COLUMNS);
    let outer = buf.len() / (n * inner);
    let mut tiles: Vec<Vec<&mut [f64]>> = (0..outer * blocks_per_row)
        .map(|_| Vec::with_capacity(n))
        .collect();
    for (r, row) in buf.chunks_mut(inner).enumerate() {
        let o = r / n;
        for (b, block) in row.chunks_mut(TILE_COLUMNS).enumerate() {
            tiles[o * blocks_per_row + b].push(block);
        }
    }
    tiles.into_par_iter().for_each_init(
        || (Envelope::default(), Vec::new()),
        |(env, lines), mut rows| {
            let width = rows.first().map_or(0, |r| r.len());
            lines.clear();
            lines.resize(width * n, 0.0);
            for (j, row) in rows.iter().enumerate() {
                for (c, &value) in row.iter().enumerate() {
                    lines[c * n + j] = value;
                }
            }
            for line in lines.chunks_mut(n) {
                env.transform(line, spacing);
            }
            for (j, row) in rows.iter_mut().enumerate() {
                for (c, value) in row.iter_mut().enumerate() {
                    *value = lines[c * n + j];
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small deterministic generator (xorshift64*), so the tests need no extra crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn coords(mut i: usize, shape: &[usize]) -> Vec<usize> {
        let mut c = vec![0; shape.len()];
        for k in (0..shape.len()).rev() {
            c[k] = i % shape[k];
            i /= shape[k];
        }
        c
    }

    fn brute_force(features: &[bool], shape: &[usize], spacing: &[f64]) -> Vec<f64> {
        let points: Vec<Vec<usize>> = (0..features.len())
            .filter(|&i| features[i])
            .map(|i| coords(i, shape))
            .collect();
        (0..features.len())
            .map(|i| {
                let c = coords(i, shape);
                points
                    .iter()
                    .map(|p| {
                        p.iter()
                            .zip(&c)
                            .zip(spacing)
                            .map(|((&a, &b), &s)| {
                                let d = (a as f64 - b as f64) * s;
                                d * d
                            })
                            .sum::<f64>()
                    })
                    .fold(f64::INFINITY, f64::min)
            })
            .collect()
    }

    fn check_random(shape: &[usize], spacing: &[f64], seed: u64, rounds: usize) {
        let mut rng = Rng(seed);
        let len: usize = shape.iter().product();
        for round in 0..rounds {
            // Densities from very sparse (often a single or no feature) to dense.
            let density = [1, 3, 10, 40, 80][round % 5];
            let features: Vec<bool> = (0..len).map(|_| rng.below(100) < density).collect();
            let mut buf: Vec<f64> = features
                .iter()
                .map(|&f| if f { 0.0 } else { f64::INFINITY })
                .collect();
            squared_edt_in_place(&mut buf, shape, spacing);
            let expected = brute_force(&features, shape, spacing);
            for (i, (&got, &want)) in buf.iter().zip(&expected).enumerate() {
                if want.is_infinite() {
                    assert!(
                        got.is_infinite(),
                        "round {round}, element {i}: {got} vs inf"
                    );
                } else {
                    assert!(
                        (got - want).abs() <= 1e-9 * want.max(1.0),
                        "shape {shape:?} spacing {spacing:?} round {round}, element {i}: \
                         {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn edt_matches_brute_force_in_2d_with_anisotropic_spacing() {
        check_random(&[17, 23], &[0.7, 2.3], 0x1234_5678, 25);
        check_random(&[1, 40], &[1.0, 0.3], 0x42, 10);
        check_random(&[40, 1], &[0.3, 1.0], 0x43, 10);
        check_random(&[9, 131], &[1.25, 0.5], 0x44, 10);
    }

    #[test]
    fn edt_matches_brute_force_in_3d_with_anisotropic_spacing() {
        check_random(&[7, 11, 13], &[2.5, 0.8, 1.1], 0x9E37_79B9, 20);
        check_random(&[5, 3, 70], &[0.4, 3.0, 1.0], 0x77, 10);
        check_random(&[70, 3, 5], &[1.0, 0.5, 2.0], 0x78, 10);
    }

    #[test]
    fn edt_of_a_single_feature_is_the_scaled_distance() {
        let shape = [4, 5, 6];
        let spacing = [2.0, 0.5, 3.0];
        let mut buf = vec![f64::INFINITY; 120];
        buf[5 * 6 + 2 * 6 + 4] = 0.0; // (1, 2, 4)
        squared_edt_in_place(&mut buf, &shape, &spacing);
        // (3, 0, 0): d = (2*2, 2*0.5, 4*3) = (4, 1, 12) -> 16 + 1 + 144
        assert_eq!(buf[3 * 30], 161.0);
        assert_eq!(buf[30 + 12 + 4], 0.0);
    }

    #[test]
    fn edt_without_features_is_infinite() {
        let mut buf = vec![f64::INFINITY; 24];
        squared_edt_in_place(&mut buf, &[2, 3, 4], &[1.0, 1.0, 1.0]);
        assert!(buf.iter().all(|d| d.is_infinite()));
    }
}
