"""Writes models/encoder-int8.onnx, the opt-in faster encoder (`--encoder int8`), from
models/encoder.onnx, and lists it in models/manifest.json (run by export.py after the
export; rerun alone after changing this recipe).

Recipe (chosen in models/export/encoder_variants.py, figures in README Performance): ONNX
Runtime's dynamic quantisation, int8 per-channel weights for the attention's qkv and proj
and the MLP's first layer, activations quantised per tensor at run time. Kept fp32: every
MLP's second layer (fc2: its input is the GELU's long-tailed output, and quantising it
cost the most Dice), the attention's activation-by-activation MatMuls, every Conv (no int8
kernel for them on the CPU provider) and the neck. The output is byte-identical for a
given onnxruntime version (pinned in requirements.txt).

  .venv-export/bin/python models/export/quantize_encoder.py
"""

import json
import os
import sys
import tempfile

import onnx
import onnxruntime
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export import MODELS, sha256, signature, write_json  # noqa: E402

NAME = "encoder-int8"


def quantize(src, dst):
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(src, pre)
        # quant_pre_process fuses MatMul+Add into Gemm; the quantiser splits a Gemm back
        # into "<name>_MatMul" + Add before it reads nodes_to_exclude, so both names go in
        fc2 = [m for n in onnx.load(pre).graph.node
               if n.op_type in ("MatMul", "Gemm") and "/fc2/" in n.name
               for m in (n.name, n.name + "_MatMul")]
        partial = dst + ".partial"
        quantize_dynamic(pre, partial, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         nodes_to_exclude=fc2, extra_options={"MatMulConstBOnly": True})
        os.replace(partial, dst)


def main():
    src = os.path.join(MODELS, "encoder.onnx")
    dst = os.path.join(MODELS, f"{NAME}.onnx")
    quantize(src, dst)
    path = os.path.join(MODELS, "manifest.json")
    manifest = json.load(open(path))
    entry = {
        "name": NAME, "file": os.path.basename(dst),
        "role": "image encoder (TinyViT), int8 weights except the MLPs' fc2; opt-in",
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
