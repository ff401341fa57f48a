// Crops 256x256 decoder logits to the resized slice and upsamples them bilinearly
// (half-pixel centres, taps computed on the host) to the source grid, one pixel per
// invocation. CPU twin: post::cpu::upsample_rows.

struct Params {
    slices: u32,
    rows: u32,
    cols: u32,
    pixels: u32,
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
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.pixels) {
        return;
    }
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
    out[i] = tc.w0 * t0 + tc.w1 * t1;
}
