// Distance transform, pass 1: for each column of each slice (one invocation), the distance
// in rows to the nearest feature pixel (foreground state == p.feature), scanning down then
// up; stores its square times the squared row spacing (mm^2), or NO_FEATURE. With
// p.border = 1 the rows just outside the slice are features. `count` is scratch.
// CPU twin: post::cpu::sq_distance_slice.

struct Params {
    slices: u32,
    rows: u32,
    cols: u32,
    feature: u32,
    border: u32,
    sy2: f32,
}

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;
const NO_FEATURE: f32 = 1.0e30;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> mask: array<u32>;
@group(0) @binding(2) var<storage, read_write> count: array<u32>;
@group(0) @binding(3) var<storage, read_write> g: array<f32>;

fn state(i: u32) -> u32 {
    return select(0u, 1u, ((mask[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu) != 0u);
}

fn step(k: u32) -> u32 {
    return select(k + 1u, NONE, k == NONE);
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * WG;
    if (t >= p.slices * p.cols) {
        return;
    }
    let z = t / p.cols;
    let c = t - z * p.cols;
    let base = z * p.rows * p.cols + c;
    let outside = select(NONE, 1u, p.border != 0u);
    var above = outside;
    for (var r = 0u; r < p.rows; r++) {
        let i = base + r * p.cols;
        var k = above;
        if (state(i) == p.feature) {
            k = 0u;
        }
        count[i] = k;
        above = step(k);
    }
    var below = outside;
    var r = p.rows;
    loop {
        if (r == 0u) {
            break;
        }
        r -= 1u;
        let i = base + r * p.cols;
        let k = min(count[i], below);
        if (k == NONE) {
            g[i] = NO_FEATURE;
        } else {
            let kf = f32(k);
            g[i] = kf * kf * p.sy2;
        }
        below = step(k);
    }
}
