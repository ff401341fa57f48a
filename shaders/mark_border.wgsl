// Hole filling, step 1: flags the background components (labelled 4-connected) that
// touch the edge of their slice. CPU twin: CpuMaskOps::fill_holes.

struct Params {
    slices: u32,
    rows: u32,
    cols: u32,
}

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read_write> flags: array<atomic<u32>>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    let plane = p.rows * p.cols;
    if (i >= p.slices * plane) {
        return;
    }
    let rem = i % plane;
    let r = rem / p.cols;
    let c = rem - r * p.cols;
    let l = labels[i];
    if (l != NONE && (r == 0u || c == 0u || r + 1u == p.rows || c + 1u == p.cols)) {
        atomicStore(&flags[l], 1u);
    }
}
