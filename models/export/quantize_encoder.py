"""Writes models/encoder-int8.onnx, the int8 encoder, from models/encoder.onnx, and lists it
in models/manifest.json (run by export.py after the export; rerun alone after changing
this recipe).

Recipe (chosen with models/export/encoder_variants.py, figures in README Performance):

1. Smoothing (SmoothQuant, Xiao et al. 2023), exact in fp32 up to rounding: a quantised
   MatMul's input channels are divided by s_j = max|x_j|^0.5 / max|W_j|^0.5 (rounded, see
   STEPS_PER_OCTAVE) and its weight rows multiplied by s_j, so that a few large activation
   channels no longer set the per-tensor int8 step for all the others. The division is
   folded into the LayerNorm before qkv and fc1 (its scale and bias) and, for proj, into
   the v columns of the same block's qkv (proj's input is softmax(q k^T) v, linear in v).
   max|x_j| comes from CALIBRATION.
2. ONNX Runtime's dynamic quantisation: int8 per-channel weights, activations quantised
   per tensor at run time, for the MatMuls in QUANTISED only. The others stay fp32: they
   cost the most accuracy for the least time (each group quantised alone, relative
   embedding error against its time share: encoder_variants.py --sensitivity). So do the
   attention's activation-by-activation MatMuls, every Conv (no int8 kernel for them on
   the CPU provider) and the neck.

The output is byte-identical for a given onnxruntime version (pinned in requirements.txt).

  .venv-export/bin/python models/export/quantize_encoder.py
"""

import json
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export import MODELS, ROOT, sha256, signature, write_json  # noqa: E402

NAME = "encoder-int8"
PARITY = os.path.join(ROOT, "tests", "fixtures", "parity")
# Calibration slices: the parity fixture's and the demo's, none of the benchmark that
# scripts/encoder-agreement scores the int8 encoder on
CALIBRATION = [os.path.join(PARITY, "brain.png"), os.path.join(PARITY, "mr_liver.png"),
               os.path.join(ROOT, "data", "demo", "brain_t1.png"),
               os.path.join(ROOT, "data", "demo", "mr_abdomen.png")]
LINEAR = ("qkv", "proj", "fc1", "fc2")
# (stage, linear layer) pairs quantised to int8
QUANTISED = {("layers.1", "qkv"), ("layers.1", "proj"), ("layers.1", "fc1"),
             ("layers.3", "qkv"), ("layers.3", "fc1")}
ALPHA = 0.5
# Smoothing factors are rounded to 2^(k/8): fine enough to keep their effect (rounding to
# whole powers of two gave a visibly larger embedding error), coarse enough that a
# calibration run on another CPU, differing in the last bits, gives the same factors.
STEPS_PER_OCTAVE = 8
HEAD_WIDTH, KEY_DIM = 96, 32  # per attention head: q, k, v of 32 channels each


def model_input(path):
    """A slice as the encoder sees it: 256 x 256, min-max to [0, 1], three channels."""
    a = np.asarray(Image.open(path).convert("L").resize((256, 256)), np.float32)
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-8)
    return np.repeat(a[None, None], 3, 1)


def linear_group(node_name):
    """("layers.N", "qkv"|"proj"|"fc1"|"fc2") for a transformer block's linear layer."""
    parts = node_name.split("/")
    stage = next((p for p in parts if p.startswith("layers.")), None)
    kind = next((k for k in LINEAR if k in parts), None)
    return (stage, kind) if stage and kind else None


def activation_maxima(model, names, images):
    """Per-channel max |x| of the named tensors over the images."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in names:
        probe.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(probe.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    maxima = {}
    for x in images:
        for name, a in zip(names, session.run(names, {"image": x})):
            a = np.abs(a.reshape(-1, a.shape[-1])).max(0)
            maxima[name] = np.maximum(maxima.get(name, 0.0), a)
    return maxima


def smooth(src, dst, images, groups, alpha=ALPHA):
    """Writes src with the inputs of the qkv, proj and fc1 layers in groups rescaled as in
    the module docstring; fp32 outputs are unchanged up to rounding."""
    model = onnx.load(src)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers, uses = {}, {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
            uses[i] = uses.get(i, 0) + 1
    weights = {t.name: numpy_helper.to_array(t).copy() for t in graph.initializer}
    matmuls = {n.name: n for n in graph.node if n.op_type == "MatMul"}
    sites = {}
    for n in matmuls.values():
        group = linear_group(n.name)
        if n.input[1] in weights and group in groups and group[1] != "fc2":
            sites[n.name] = n
    maxima = activation_maxima(model, [n.input[0] for n in sites.values()], images)

    def sole(name):
        if uses.get(name) != 1:
            raise ValueError(f"{src}: {name} is shared, cannot rescale it for one layer")
        return weights[name]

    for name, n in sites.items():
        w = sole(n.input[1])
        s = (np.clip(maxima[n.input[0]], 1e-5, None) ** alpha
             / np.clip(np.abs(w).max(1), 1e-5, None) ** (1 - alpha))
        s = (2.0 ** (np.round(STEPS_PER_OCTAVE * np.log2(s)) / STEPS_PER_OCTAVE)).astype(np.float32)
        if "/proj/" not in name:
            norm = producer[n.input[0]]
            if norm.op_type != "LayerNormalization" or len(consumers[n.input[0]]) != 1:
                raise ValueError(f"{src}: {name} is not fed by its own LayerNormalization")
            sole(norm.input[1])[:] /= s
            sole(norm.input[2])[:] /= s
        else:
            qkv = matmuls[name.replace("/proj/", "/qkv/")]
            add = consumers[qkv.output[0]][0]
            bias = sole(next(i for i in add.input if i in weights))
            w_qkv = sole(qkv.input[1])
            heads = w_qkv.shape[1] // HEAD_WIDTH
            v = np.array([h * HEAD_WIDTH + 2 * KEY_DIM + j
                          for h in range(heads) for j in range(KEY_DIM)])
            if add.op_type != "Add" or len(v) != w.shape[0]:
                raise ValueError(f"{src}: {qkv.name} is not laid out as q, k, v per head")
            w_qkv[:, v] /= s
            bias[v] /= s
        w *= s[:, None]
    for t in graph.initializer:
        t.CopyFrom(numpy_helper.from_array(weights[t.name], t.name))
    onnx.save(model, dst)


def quantize(src, dst, quantised=QUANTISED, smoothed=True):
    with tempfile.TemporaryDirectory() as tmp:
        if smoothed:
            images = [model_input(p) for p in CALIBRATION]
            smooth(src, os.path.join(tmp, "smooth.onnx"), images, quantised)
            src = os.path.join(tmp, "smooth.onnx")
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(src, pre)
        # quant_pre_process fuses MatMul+Add into Gemm; the quantiser splits a Gemm back
        # into "<name>_MatMul" + Add before it reads the node list, so both names go in
        nodes = [m for n in onnx.load(pre).graph.node
                 if n.op_type in ("MatMul", "Gemm") and linear_group(n.name) in quantised
                 for m in (n.name, n.name + "_MatMul")]
        partial = dst + ".partial"
        quantize_dynamic(pre, partial, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         nodes_to_quantize=nodes, extra_options={"MatMulConstBOnly": True})
        os.replace(partial, dst)


def main():
    src = os.path.join(MODELS, "encoder.onnx")
    dst = os.path.join(MODELS, f"{NAME}.onnx")
    quantize(src, dst)
    path = os.path.join(MODELS, "manifest.json")
    manifest = json.load(open(path))
    layers = ", ".join(f"{stage} {kind}" for stage, kind in sorted(QUANTISED))
    entry = {
        "name": NAME, "file": os.path.basename(dst),
        "role": f"image encoder (TinyViT), smoothed, int8 weights for {layers}",
        "sha256": sha256(dst), "size_bytes": os.path.getsize(dst), **signature(dst),
        "provenance": f"models/export/quantize_encoder.py from encoder.onnx "
                      f"(onnxruntime {onnxruntime.__version__} quantize_dynamic)",
    }
    models = [m for m in manifest["models"] if m["name"] != NAME]
    at = next((i + 1 for i, m in enumerate(models) if m["name"] == "encoder"), 0)
    manifest["models"] = models[:at] + [entry] + models[at:]
    write_json(path, manifest)
    print(f"{dst}: {entry['size_bytes']} bytes, sha256 {entry['sha256']}")


if __name__ == "__main__":
    main()
