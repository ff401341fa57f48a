//! Top-K selection of an error map, ordered as the kernels order it.

use super::*;

/// Better-first order of top-K entries: larger key, then smaller index.
pub(super) type Ranked = (u32, Reverse<usize>);

pub(super) fn top_k_keys(values: &[f32], k: usize) -> Vec<usize> {
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
