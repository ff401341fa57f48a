// Component sizes: one atomic increment at each labelled pixel's root.
// CPU twin: post::cpu::count_sizes.

struct Params {
    n: u32,
}

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read_write> sizes: array<atomic<u32>>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) {
        return;
    }
    let l = labels[i];
    if (l != NONE) {
        atomicAdd(&sizes[l], 1u);
    }
}
