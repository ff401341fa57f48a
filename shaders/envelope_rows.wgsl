// Distance transform, pass 2: for each row of each slice (one invocation), the lower
// envelope of the parabolas g[q] + sx2 * (x - q)^2 (Felzenszwalb and Huttenlocher), which
// gives exact squared Euclidean distances (mm^2); columns without a feature (NO_FEATURE)
// are skipped. With p.border = 1 the columns just outside the slice are features.
// `v` (cols per row) and `z` (cols + 1 per row) are scratch.
// CPU twin: post::cpu::envelope_row.

struct Params {
    slices: u32,
    rows: u32,
    cols: u32,
    border: u32,
    sx2: f32,
}

const WG: u32 = 256u;
const NO_FEATURE: f32 = 1.0e30;
// stands for +-infinity in z; every intersection is far smaller
const BIG: f32 = 3.0e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<u32>;
@group(0) @binding(3) var<storage, read_write> z: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG;
    if (row >= p.slices * p.rows) {
        return;
    }
    let n = p.cols;
    let gb = row * n;
    let zb = row * (n + 1u);
    let sx2 = p.sx2;
    var k = 0u;
    var have = false;
    for (var q = 0u; q < n; q++) {
        let fq = g[gb + q];
        if (fq >= NO_FEATURE) {
            continue;
        }
        if (!have) {
            have = true;
            k = 0u;
            v[gb] = q;
            z[zb] = -BIG;
            z[zb + 1u] = BIG;
            continue;
        }
        let qf = f32(q);
        var s = 0.0;
        loop {
            let pv = v[gb + k];
            let pf = f32(pv);
            s = ((fq + sx2 * qf * qf) - (g[gb + pv] + sx2 * pf * pf)) / (2.0 * sx2 * (qf - pf));
            if (s <= z[zb + k] && k > 0u) {
                k -= 1u;
            } else {
                break;
            }
        }
        k += 1u;
        v[gb + k] = q;
        z[zb + k] = s;
        z[zb + k + 1u] = BIG;
    }
    k = 0u;
    for (var x = 0u; x < n; x++) {
        let xf = f32(x);
        var d = NO_FEATURE;
        if (have) {
            while (z[zb + k + 1u] < xf) {
                k += 1u;
            }
            let pv = v[gb + k];
            let dx = xf - f32(pv);
            d = dx * dx * sx2 + g[gb + pv];
        }
        if (p.border != 0u) {
            let b = f32(min(x + 1u, n - x));
            d = min(d, b * b * sx2);
        }
        out[gb + x] = d;
    }
}
