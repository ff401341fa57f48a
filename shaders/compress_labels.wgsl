// Ends connected-component labelling: every labelled pixel points straight at its root
// (the smallest index of its component). CPU twin: post::cpu::label_roots.

struct Params {
    n: u32,
}

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> labels: array<atomic<u32>>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) {
        return;
    }
    var a = atomicLoad(&labels[i]);
    if (a == NONE) {
        return;
    }
    loop {
        let b = atomicLoad(&labels[a]);
        if (b == a) {
            break;
        }
        a = b;
    }
    atomicStore(&labels[i], a);
}
