// Joins each labelled pixel with its labelled neighbours of smaller index by a lock-free
// union-find (atomicMin always links the larger root under the smaller), so every
// component ends with its smallest index as root. Modes: 0 = 4-connected and 1 =
// 8-connected within a slice, 2 = 26-connected across slices.
// CPU twin: post::cpu::label_roots.

struct Params {
    slices: u32,
    rows: u32,
    cols: u32,
    mode: u32,
    want: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> mask: array<u32>;
@group(0) @binding(2) var<storage, read_write> labels: array<atomic<u32>>;

fn state(i: u32) -> u32 {
    return select(0u, 1u, ((mask[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu) != 0u);
}

fn find(x: u32) -> u32 {
    var a = x;
    loop {
        let b = atomicLoad(&labels[a]);
        if (b == a) {
            break;
        }
        a = b;
    }
    return a;
}

fn unite(x: u32, y: u32) {
    var a = x;
    var b = y;
    loop {
        a = find(a);
        b = find(b);
        if (a == b) {
            return;
        }
        if (a < b) {
            let old = atomicMin(&labels[b], a);
            if (old == b) {
                return;
            }
            b = old;
        } else {
            let old = atomicMin(&labels[a], b);
            if (old == a) {
                return;
            }
            a = old;
        }
    }
}

fn join(i: u32, j: u32) {
    if (state(j) == p.want) {
        unite(i, j);
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    let plane = p.rows * p.cols;
    if (i >= p.slices * plane || state(i) != p.want) {
        return;
    }
    let z = i / plane;
    let rem = i - z * plane;
    let r = rem / p.cols;
    let c = rem - r * p.cols;
    if (c > 0u) {
        join(i, i - 1u);
    }
    if (r > 0u) {
        join(i, i - p.cols);
        if (p.mode != 0u) {
            if (c > 0u) {
                join(i, i - p.cols - 1u);
            }
            if (c + 1u < p.cols) {
                join(i, i - p.cols + 1u);
            }
        }
    }
    if (p.mode == 2u && z > 0u) {
        let below = i - plane;
        for (var dr = 0u; dr < 3u; dr++) {
            if ((r == 0u && dr == 0u) || (r + 1u == p.rows && dr == 2u)) {
                continue;
            }
            for (var dc = 0u; dc < 3u; dc++) {
                if ((c == 0u && dc == 0u) || (c + 1u == p.cols && dc == 2u)) {
                    continue;
                }
                join(i, below + (dr * p.cols + dc) - (p.cols + 1u));
            }
        }
    }
}
