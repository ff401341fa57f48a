"""How good is a head set's error decoder on the domains it never saw? For the coarse
mask of every slice holding each structure, in the 256x256 model frame:
  coarse Dice; the true error map XOR(coarse, reference);
  precision and recall of (error probability > t) at t = 0.5 and the heads' threshold;
  top-K precision: the share of the K most-likely-wrong pixels (the loop's point
  prompts) that are really wrong;
  pixel AUROC of the error probability for true errors.
Runs the exported ONNX graphs with ONNX Runtime on the `cosam export-training` data.

  .venv-export/bin/python models/train/diagnose.py models/lodo/abdomen/ts-mr-3mm
"""

import json
import os
import sys

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
K = 64


def auroc(scores, labels):
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels.sum()
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def main(heads_dir, domains=None):
    heads = json.load(open(os.path.join(heads_dir, "heads.json")))
    task = heads["task"]
    domains = domains or heads["held_out_domains"]
    data_dir = os.path.join(HERE, "data", task)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    dec = ort.InferenceSession(os.path.join(heads_dir, "decoder.onnx"), so)
    err = ort.InferenceSession(os.path.join(heads_dir, "error.onnx"), so)
    t_heads = heads.get("error_threshold", 0.5)
    print(f"{heads_dir}: task {task}, heads threshold {t_heads}, domains {domains}")
    print("| domain | structure | slices | coarse Dice | true error px | P@0.5 | R@0.5 "
          f"| P@{t_heads} | R@{t_heads} | top-{K} precision | pixel AUROC |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for domain in domains:
        d = os.path.join(data_dir, domain)
        meta = json.load(open(os.path.join(d, "meta.json")))
        emb = np.load(os.path.join(d, "embeddings.npy"), mmap_mode="r")
        lab = np.load(os.path.join(d, "labels.npy"))
        for s, name in enumerate(meta["structures"]):
            if name not in meta["labelled"]:
                continue
            stats = {"dice": [], "tp5": 0, "fp5": 0, "fn5": 0, "tpt": 0, "fpt": 0, "fnt": 0,
                     "topk": [], "scores": [], "truth": [], "wrong": 0}
            for i in range(lab.shape[0]):
                gt = lab[i] == s + 1
                if not gt.any():
                    continue
                rows, cols = meta["scaled"][i]
                e = np.asarray(emb[i:i + 1], dtype=np.float32)
                st = np.array([s], dtype=np.int64)
                logits = dec.run(None, {
                    "image_embeddings": e, "point_coords": np.zeros((1, 0, 2), np.float32),
                    "point_labels": np.zeros((1, 0), np.float32),
                    "mask_input": np.zeros((1, 1, 256, 256), np.float32),
                    "has_mask_input": np.zeros(1, np.float32), "structure": st})[0][0, 0]
                coarse = logits > 0
                coarse[rows:, :] = False
                coarse[:, cols:] = False
                prob = 1 / (1 + np.exp(-err.run(None, {
                    "image_embeddings": e, "mask": coarse[None, None].astype(np.float32),
                    "structure": st})[0][0, 0]))
                truth = (coarse != gt)[:rows, :cols]
                p = prob[:rows, :cols]
                stats["dice"].append(2 * (coarse & gt).sum() / max(coarse.sum() + gt.sum(), 1))
                stats["wrong"] += int(truth.sum())
                for t, key in ((0.5, "5"), (t_heads, "t")):
                    pred = p > t
                    stats["tp" + key] += int((pred & truth).sum())
                    stats["fp" + key] += int((pred & ~truth).sum())
                    stats["fn" + key] += int((~pred & truth).sum())
                top = np.argpartition(-p.ravel(), K - 1)[:K]
                stats["topk"].append(truth.ravel()[top].mean())
                stats["scores"].append(p.ravel())
                stats["truth"].append(truth.ravel())
            if not stats["dice"]:
                continue

            def ratio(a, b):
                return f"{a / b:.3f}" if b else "n/a"

            print(f"| {domain} | {name} | {len(stats['dice'])} | {np.mean(stats['dice']):.3f} "
                  f"| {stats['wrong']} "
                  f"| {ratio(stats['tp5'], stats['tp5'] + stats['fp5'])} "
                  f"| {ratio(stats['tp5'], stats['tp5'] + stats['fn5'])} "
                  f"| {ratio(stats['tpt'], stats['tpt'] + stats['fpt'])} "
                  f"| {ratio(stats['tpt'], stats['tpt'] + stats['fnt'])} "
                  f"| {np.mean(stats['topk']):.3f} "
                  f"| {auroc(np.concatenate(stats['scores']), np.concatenate(stats['truth'])):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or None)
