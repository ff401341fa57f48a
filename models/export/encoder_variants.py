"""Faster encoder candidates for the >= 2.0x goal of issue #2, measured against the shipped
fp32 encoder in one run, with ONNX Runtime (Python) on this machine:

- int8-dynamic: MatMul weights int8, activations quantised at run time
  (onnxruntime.quantization.quantize_dynamic). Conv stays fp32: ConvInteger has no int8
  kernel on the CPU provider.
- int8-dynamic-mlp-fp32: as int8-dynamic with per-channel weights, MatMul and Gemm, but
  every MLP's second layer (fc2, whose input is the GELU's long-tailed output) kept fp32,
  and the attention's activation-by-activation MatMuls left alone.
- int8-smoothed-mlp-fp32: as int8-dynamic-mlp-fp32 after quantize_encoder.py's smoothing
  of every quantised layer's input.
- int8 (shipped): models/export/quantize_encoder.py's recipe, smoothed, only the layers
  in its QUANTISED set.
- int8-static: QDQ, per-channel int8 MatMul/Gemm weights, uint8 activations calibrated on
  the parity fixture's and the demo's slices.
- fast-gelu: the fused graph with every exact (erf) Gelu replaced by the tanh
  approximation (com.microsoft FastGelu).
- fp32 x2 sessions: two 1-thread sessions on alternate slices (throughput, not latency).

For each: median encoder latency over REPS runs on the parity images (variants
interleaved, so machine noise hits all alike), and, through the stock decoder with the
parity fixture's prompts, the largest logit difference, flipped mask pixels and Dice
against the fp32 encoder's masks. The figures are in the README (Performance). Writes the
variants under a temporary folder.

--sensitivity instead quantises (smoothed) one group of linear layers at a time, a
stage's qkv, proj, fc1 or fc2, and prints each group's share of the fp32 encoder's kernel
time (ONNX Runtime's profiler) against the relative error it puts on the embedding of the
calibration slices: how quantize_encoder.py's QUANTISED set was chosen.

  .venv-export/bin/python models/export/encoder_variants.py [--threads 2] [--reps 5]
  .venv-export/bin/python models/export/encoder_variants.py --sensitivity
"""

import argparse
import json
import os
import tempfile
import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from quantize_encoder import (CALIBRATION, LINEAR, PARITY, QUANTISED, ROOT, linear_group,
                              model_input, quantize)


class Calibration(CalibrationDataReader):
    def __init__(self):
        self.items = iter(model_input(p) for p in CALIBRATION)

    def get_next(self):
        x = next(self.items, None)
        return None if x is None else {"image": x}


def linear_groups(path):
    """Every (stage, linear layer) group in the graph at path."""
    return {g for n in onnx.load(path).graph.node if (g := linear_group(n.name))}


def all_but_fc2(path):
    return {g for g in linear_groups(path) if g[1] != "fc2"}


def build(encoder, tmp):
    pre = os.path.join(tmp, "pre.onnx")
    quant_pre_process(encoder, pre)
    out = {"fp32": encoder}
    out["int8-dynamic"] = os.path.join(tmp, "dynamic.onnx")
    quantize_dynamic(pre, out["int8-dynamic"], weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"])
    # session 4's shipped recipe (byte-identical to its encoder-int8.onnx, sha af14e5b2)
    out["int8-dynamic-mlp-fp32"] = os.path.join(tmp, "dynamic_mlp_fp32.onnx")
    quantize(encoder, out["int8-dynamic-mlp-fp32"], all_but_fc2(pre), smoothed=False)
    out["int8-smoothed-mlp-fp32"] = os.path.join(tmp, "smoothed_mlp_fp32.onnx")
    quantize(encoder, out["int8-smoothed-mlp-fp32"], all_but_fc2(pre))
    out["int8 (shipped)"] = os.path.join(tmp, "shipped.onnx")
    quantize(encoder, out["int8 (shipped)"])
    out["int8-static"] = os.path.join(tmp, "static.onnx")
    quantize_static(pre, out["int8-static"], Calibration(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    fused = os.path.join(tmp, "fused.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = fused
    ort.InferenceSession(encoder, so)
    graph = onnx.load(fused)
    for node in graph.graph.node:
        if node.op_type == "Gelu":
            node.op_type, node.domain = "FastGelu", "com.microsoft"
    out["fast-gelu"] = os.path.join(tmp, "fast_gelu.onnx")
    onnx.save(graph, out["fast-gelu"])
    return out


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so)


def sensitivity(encoder, threads):
    """Each group's share of the fp32 kernel time against the embedding error it causes
    when it alone is quantised."""
    images = [model_input(p) for p in CALIBRATION]
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = os.path.join(tmp, "profile")
        fp32 = ort.InferenceSession(encoder, so)
        reference = [fp32.run(None, {"image": x})[0] for x in images]
        events = json.load(open(fp32.end_profiling()))
        time_of, total = {}, 0.0
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                total += e["dur"]
                if g := linear_group(e["name"]):
                    time_of[g] = time_of.get(g, 0.0) + e["dur"]
        print(f"linear-layer groups quantised one at a time (smoothed), onnxruntime "
              f"{ort.__version__}, {len(images)} calibration slices")
        print("| stage | layer | share of fp32 kernel time | relative embedding error | "
              "in QUANTISED |")
        print("|---|---|---|---|---|")
        for group in sorted(linear_groups(encoder), key=lambda g: (g[0], LINEAR.index(g[1]))):
            path = os.path.join(tmp, "group.onnx")
            quantize(encoder, path, {group})
            s = session(path, threads)
            error = max(float(np.linalg.norm(s.run(None, {"image": x})[0] - r)
                              / np.linalg.norm(r)) for x, r in zip(images, reference))
            print(f"| {group[0]} | {group[1]} | {100 * time_of.get(group, 0) / total:.1f}% "
                  f"| {error:.4f} | {'yes' if group in QUANTISED else 'no'} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sensitivity", action="store_true")
    args = ap.parse_args()
    if args.sensitivity:
        sensitivity(os.path.join(ROOT, "models", "encoder.onnx"), args.threads)
        return
    cases = [c for c in json.load(open(os.path.join(PARITY, "parity.json")))["cases"]
             if c["mask_input"] is None]
    images = {c["image"]: model_input(os.path.join(PARITY, c["image"])) for c in cases}
    decoder = session(os.path.join(ROOT, "models", "decoder.onnx"), args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        paths = build(os.path.join(ROOT, "models", "encoder.onnx"), tmp)
        sessions = {name: session(p, args.threads) for name, p in paths.items()}
        pair = [session(paths["fp32"], 1) for _ in range(2)]
        times = {name: [] for name in list(sessions) + ["fp32 x2 sessions"]}
        embeddings = {}
        for x in images.values():  # warm-up
            for s in list(sessions.values()) + pair:
                s.run(None, {"image": x})
        for _ in range(args.reps):
            for name, s in sessions.items():
                for key, x in images.items():
                    t = time.perf_counter()
                    embeddings[name, key] = s.run(None, {"image": x})[0]
                    times[name].append(time.perf_counter() - t)
            # two sessions, one thread each, one image each, at once: time per image
            t = time.perf_counter()
            workers = [threading.Thread(target=s.run, args=(None, {"image": x}))
                       for s, x in zip(pair, images.values())]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            times["fp32 x2 sessions"].append((time.perf_counter() - t) / len(workers))

    def masks(name):
        out = {}
        for c in cases:
            logits = decoder.run(None, {
                "image_embeddings": embeddings[name, c["image"]],
                "point_coords": np.array([c["point_coords"]], np.float32),
                "point_labels": np.array([c["point_labels"]], np.float32),
                "mask_input": np.zeros((1, 1, 256, 256), np.float32),
                "has_mask_input": np.zeros(1, np.float32)})[0][0, 0]
            out[c["id"]] = logits
        return out

    reference = masks("fp32")
    base = 1000 * np.median(times["fp32"])
    print(f"encoder variants, {args.threads} threads, {args.reps} reps x {len(images)} images, "
          f"onnxruntime {ort.__version__}")
    print("| variant | encoder median ms | speed-up vs fp32 | max logit diff | flipped px "
          "| min Dice vs fp32 |")
    print("|---|---|---|---|---|---|")
    for name in times:
        ms = 1000 * np.median(times[name])
        if name in sessions:
            got = masks(name)
            diff = max(float(np.abs(got[k] - reference[k]).max()) for k in got)
            flipped = sum(int(((got[k] > 0) != (reference[k] > 0)).sum()) for k in got)
            dice = min(2 * float(((got[k] > 0) & (reference[k] > 0)).sum())
                       / max(float((got[k] > 0).sum() + (reference[k] > 0).sum()), 1.0)
                       for k in got)
            parity = f"{diff:.3f} | {flipped} | {dice:.4f}"
        else:
            parity = "exact | 0 | 1.0000"
        print(f"| {name} | {ms:.1f} | {base / ms:.2f}x | {parity} |")


if __name__ == "__main__":
    main()
