"""Copies head sets with the task decoder quantised to int8, for the paired check of
issue 18 (is a cheaper decoder call worth its change to the masks?).

ONNX Runtime's dynamic quantisation of the decoder's MatMul and Gemm weights (per
channel; activations quantised per tensor at run time). The error decoder is left as it
is: it is convolutions, which the CPU provider has no int8 kernel for (docs/performance.md,
session 9). heads.json is rewritten with the new file's sha256 and size, and says how
the file was made.

  .venv-export/bin/python models/train/quantize_heads.py SRC OUT
      SRC: a head set (a folder with heads.json) or a folder of them (LODO folds)
"""

import json
import os
import shutil
import sys
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "export"))
from export import sha256, write_json  # noqa: E402


def quantize_set(src, out):
    out.mkdir(parents=True, exist_ok=True)
    heads = json.loads((src / "heads.json").read_text())
    for entry in heads["files"]:
        source, target = src / entry["file"], out / entry["file"]
        if entry["name"] == "decoder":
            quantize_dynamic(
                str(source),
                str(target),
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=True,
                weight_type=QuantType.QInt8,
            )
            entry["quantized"] = "onnxruntime quantize_dynamic: MatMul, Gemm; int8 per channel"
        else:
            shutil.copyfile(source, target)
        entry["sha256"] = sha256(target)
        entry["size_bytes"] = target.stat().st_size
    write_json(str(out / "heads.json"), heads)
    print(f"{src} -> {out}")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    if (src / "heads.json").is_file():
        quantize_set(src, out)
        return
    sets = sorted(p.parent for p in src.glob("*/heads.json"))
    if not sets:
        sys.exit(f"{src}: no heads.json here or one folder down")
    for s in sets:
        quantize_set(s, out / s.name)


if __name__ == "__main__":
    main()
