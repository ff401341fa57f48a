// Starts connected-component labelling: every pixel whose foreground state equals
// p.want becomes its own root (label = its index); the others get NONE.
// CPU twin: post::cpu::label_roots.

struct Params {
    n: u32,
    want: u32,
}

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> mask: array<u32>;
@group(0) @binding(2) var<storage, read_write> labels: array<u32>;

fn state(i: u32) -> u32 {
    return select(0u, 1u, ((mask[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu) != 0u);
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) {
        return;
    }
    labels[i] = select(NONE, i, state(i) == p.want);
}
