// Top-K by radix selection: a 256-bin histogram of one byte of the order key of each
// value whose higher bytes match the prefix chosen so far (p.mode = 0), or of one byte of
// the index of each value whose key equals p.key (p.mode = 1, to break ties by index).
// Each invocation reads ITEMS values; bins are summed per workgroup first.
// CPU twin: post::cpu::top_k_keys (a heap; both select the same set).

struct Params {
    n: u32,
    shift: u32,
    prefix_mask: u32,
    prefix: u32,
    mode: u32,
    key: u32,
}

const WG: u32 = 256u;
const ITEMS: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> values: array<f32>;
@group(0) @binding(2) var<storage, read_write> hist: array<atomic<u32>>;

var<workgroup> local_hist: array<atomic<u32>, 256>;

// Larger values give larger keys; NaN gives 0 (post::order_key).
fn order_key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return 0u;
    }
    if ((b & 0x80000000u) != 0u) {
        return ~b;
    }
    return b | 0x80000000u;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    atomicStore(&local_hist[lid], 0u);
    workgroupBarrier();
    let base = (wid.x + wid.y * nwg.x) * WG * ITEMS;
    for (var j = 0u; j < ITEMS; j++) {
        let i = base + j * WG + lid;
        if (i < p.n) {
            let key = order_key(values[i]);
            if (p.mode == 0u) {
                if ((key & p.prefix_mask) == p.prefix) {
                    atomicAdd(&local_hist[(key >> p.shift) & 0xffu], 1u);
                }
            } else if (key == p.key && (i & p.prefix_mask) == p.prefix) {
                atomicAdd(&local_hist[(i >> p.shift) & 0xffu], 1u);
            }
        }
    }
    workgroupBarrier();
    let c = atomicLoad(&local_hist[lid]);
    if (c != 0u) {
        atomicAdd(&hist[lid], c);
    }
}
