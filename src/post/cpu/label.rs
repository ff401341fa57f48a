//! Connected components: union-find over pixels (the kernels' algorithm, the test
//! reference) and over row runs (the CPU path), with canonical labels shared with the
//! kernels.

use super::*;

#[inline]
pub(super) fn find(parent: &mut [u32], mut x: u32) -> u32 {
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
pub(super) fn union(parent: &mut [u32], a: u32, b: u32) {
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

/// Row-run labelling: the runs of pixels whose foreground state equals a target, joined
/// by union-find over runs (far fewer than pixels). Runs are numbered in raster order and
/// unions link the larger root under the smaller, so each component's root is its first
/// run, which holds its smallest linear index: the same canonical labels as the kernels.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    /// Row (`slice * rows + row`) of each run.
    pub(super) row: Vec<u32>,
    /// First column of each run.
    pub(super) c0: Vec<u32>,
    /// One past the last column of each run.
    pub(super) c1: Vec<u32>,
    /// Root run of each run after [`Runs::label`].
    pub(super) parent: Vec<u32>,
    /// Index of the first run of each row, and the number of runs at the end.
    pub(super) first: Vec<u32>,
    /// Pixels per root run (filled by [`Runs::sizes`]).
    pub(super) size: Vec<u32>,
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
    pub(super) fn len(&self) -> usize {
        self.parent.len()
    }

    /// The pixel range of run `i` in its block.
    pub(super) fn range(&self, i: usize, cols: usize) -> std::ops::Range<usize> {
        let base = self.row[i] as usize * cols;
        base + self.c0[i] as usize..base + self.c1[i] as usize
    }

    /// Counts the pixels of each component into `size[root]`.
    pub(super) fn sizes(&mut self) {
        self.size.clear();
        self.size.resize(self.parent.len(), 0);
        for i in 0..self.parent.len() {
            self.size[self.parent[i] as usize] += self.c1[i] - self.c0[i];
        }
    }
}

/// Block size and neighbourhood of a connectivity for `dims`.
pub(super) fn blocks(
    dims: (usize, usize, usize),
    connectivity: Connectivity,
) -> (usize, Neighbours) {
    let (s, r, c) = dims;
    match connectivity {
        Connectivity::Planar => (r * c, Neighbours::Eight),
        Connectivity::Volumetric => (s * r * c, Neighbours::TwentySix),
    }
}

pub(super) fn block_dims(
    dims: (usize, usize, usize),
    connectivity: Connectivity,
) -> (usize, usize, usize) {
    match connectivity {
        Connectivity::Planar => (1, dims.1, dims.2),
        Connectivity::Volumetric => dims,
    }
}
