// Crops 256x256 decoder logits to the resized slice, upsamples them bilinearly (half-pixel
// centres, taps computed on the host) to the source grid and thresholds them, 4 output
// pixels (one packed word of bytes) per invocation. CPU twin: post::cpu::upsample_rows.

struct Params {
    slices: u32,
    rows: u32,
    cols: u32,
    words: u32,
    threshold: f32,
}

struct Tap {
    i0: u32,
    i1: u32,
    w0: f32,
    w1: f32,
}

const WG: u32 = 256u;
const MODEL: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
// row taps (p.rows of them), then column taps (p.cols)
@group(0) @binding(2) var<storage, read> taps: array<Tap>;
@group(0) @binding(3) var<storage, read_write> mask: array<u32>;

fn sample(i: u32) -> f32 {
    let plane = p.rows * p.cols;
    let z = i / plane;
    let rem = i - z * plane;
    let r = rem / p.cols;
    let c = rem - r * p.cols;
    let tr = taps[r];
    let tc = taps[p.rows + c];
    let base = z * MODEL * MODEL;
    let t0 = tr.w0 * logits[base + tr.i0 * MODEL + tc.i0] + tr.w1 * logits[base + tr.i1 * MODEL + tc.i0];
    let t1 = tr.w0 * logits[base + tr.i0 * MODEL + tc.i1] + tr.w1 * logits[base + tr.i1 * MODEL + tc.i1];
    return tc.w0 * t0 + tc.w1 * t1;
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = gid.x + gid.y * nwg.x * WG;
    if (w >= p.words) {
        return;
    }
    let n = p.slices * p.rows * p.cols;
    var word = 0u;
    for (var j = 0u; j < 4u; j++) {
        let i = w * 4u + j;
        if (i < n) {
            if (sample(i) > p.threshold) {
                word |= 1u << (j * 8u);
            }
        }
    }
    mask[w] = word;
}
