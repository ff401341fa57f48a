"""How good is a head set's error decoder on the domains it never saw? For the coarse
mask of every slice holding each structure, in the 256x256 model frame:
  coarse Dice; the true error map XOR(coarse, reference);
  precision and recall of (error probability > t) at t = 0.5 and the heads' threshold;
  top-K precision: the share of the K most-likely-wrong pixels (the loop's point
  prompts) that are really wrong;
  pixel AUROC of the error probability for true errors.
Then, over every slice of the domain (with and without the structure), the loop's masks
as cosam makes them: Dice pooled over the slices of coarse, corrected and refined masks
for ROUNDS rounds, and of an oracle that keeps, per slice, whichever of those masks is
best. The oracle bounds what any stop rule or mask selection could gain.
Two probes of the refinement decoder: --reference-labels labels the error points with the
reference mask (perfect point labels), --no-mask-prompt leaves out the mask prompt.
Runs the exported ONNX graphs with ONNX Runtime on the `cosam export-training` data.

  .venv-export/bin/python models/train/diagnose.py models/lodo/abdomen/ts-mr-3mm \
      [DOMAIN...] [--reference-labels] [--no-mask-prompt]
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from scipy import ndimage

HERE = os.path.dirname(os.path.abspath(__file__))
K = 64
ROUNDS = 3
EIGHT = np.ones((3, 3), dtype=bool)


def auroc(scores, labels):
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels.sum()
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def box_of_largest(mask, rows, cols):
    lab, n = ndimage.label(mask[:rows, :cols], structure=EIGHT)
    if n == 0:
        return [0, 0, cols - 1, rows - 1]
    ys, xs = np.nonzero(lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:])))
    return [xs.min(), ys.min(), xs.max(), ys.max()]


def structures(data_dir, domains):
    """(domain, meta, embeddings, label maps, structure index, name) of each labelled
    structure of each domain of the `cosam export-training` data."""
    for domain in domains:
        d = os.path.join(data_dir, domain)
        meta = json.load(open(os.path.join(d, "meta.json")))
        emb = np.load(os.path.join(d, "embeddings.npy"), mmap_mode="r")
        lab = np.load(os.path.join(d, "labels.npy"))
        for s, name in enumerate(meta["structures"]):
            if name in meta["labelled"]:
                yield domain, meta, emb, lab, s, name


class Heads:
    def __init__(self, heads_dir):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        self.dec = ort.InferenceSession(os.path.join(heads_dir, "decoder.onnx"), so)
        self.err = ort.InferenceSession(os.path.join(heads_dir, "error.onnx"), so)

    def decode(self, e, s, coords=None, labels=None, mask_prompt=None):
        return self.decode_with_iou(e, s, coords, labels, mask_prompt)[0]

    def decode_with_iou(self, e, s, coords=None, labels=None, mask_prompt=None):
        """Logits [256, 256] and the IoU head's estimate."""
        has_mask = mask_prompt is not None
        out = self.dec.run(None, {
            "image_embeddings": e,
            "point_coords": np.zeros((1, 0, 2), np.float32) if coords is None else coords,
            "point_labels": np.zeros((1, 0), np.float32) if labels is None else labels,
            "mask_input": (mask_prompt[None, None].astype(np.float32) if has_mask
                           else np.zeros((1, 1, 256, 256), np.float32)),
            "has_mask_input": np.full(1, float(has_mask), np.float32),
            "structure": np.array([s], np.int64)})
        return out[0][0, 0], float(out[1][0, 0])

    def error_prob(self, e, s, mask, rows, cols):
        p = 1 / (1 + np.exp(-self.err.run(None, {
            "image_embeddings": e, "mask": mask[None, None].astype(np.float32),
            "structure": np.array([s], np.int64)})[0][0, 0]))
        p[rows:, :] = 0
        p[:, cols:] = 0
        return p


def loop_masks(h, e, s, rows, cols, threshold, label_threshold, probe, gt):
    """coarse, then per round corrected and refined, as cosam's loop makes them (or as
    `probe` changes them: reference point labels, no mask prompt)."""
    mask = h.decode(e, s) > 0
    mask[rows:, :] = False
    mask[:, cols:] = False
    out = [("coarse", mask)]
    for r in range(1, ROUNDS + 1):
        p = h.error_prob(e, s, mask, rows, cols)
        corrected = mask ^ (p > threshold)
        out.append((f"corrected:{r}", corrected))
        flat = np.argpartition(-p[:rows, :cols].ravel(), K - 1)[:K]
        ys, xs = np.unravel_index(flat, (rows, cols))
        if probe.reference_labels:
            lab = gt[ys, xs]
        elif label_threshold is None:  # the first heads: labelled by the corrected mask
            lab = corrected[ys, xs]
        else:
            lab = mask[ys, xs] ^ (p[ys, xs] > label_threshold)
        b = box_of_largest(corrected, rows, cols)
        coords = np.concatenate([np.stack([xs, ys], 1), [[b[0], b[1]], [b[2], b[3]]]])
        labels = np.concatenate([lab.astype(np.float32), [2, 3]])
        mask = h.decode(e, s, coords[None].astype(np.float32),
                        labels[None].astype(np.float32),
                        None if probe.no_mask_prompt else corrected) > 0
        mask[rows:, :] = False
        mask[:, cols:] = False
        out.append((f"cosam:{r}", mask))
    return out


def loop_table(h, heads, data_dir, domains, probe):
    threshold = heads.get("error_threshold", 0.5)
    label_threshold = heads.get("point_label_threshold")
    names = ["coarse"] + [f"{k}:{r}" for r in range(1, ROUNDS + 1)
                          for k in ("corrected", "cosam")] + ["oracle"]
    print(f"\nLoop masks, Dice pooled over every slice (error threshold {threshold}, "
          f"point labels {'p > %s' % label_threshold if label_threshold else 'corrected'}; "
          f"probes: reference labels {probe.reference_labels}, "
          f"no mask prompt {probe.no_mask_prompt})")
    print("| domain | structure | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for domain, meta, emb, lab, s, name in structures(data_dir, domains):
        if not (lab == s + 1).any():
            continue
        inter = dict.fromkeys(names, 0)
        total = dict.fromkeys(names, 0)
        for i in range(lab.shape[0]):
            gt = lab[i] == s + 1
            rows, cols = meta["scaled"][i]
            e = np.asarray(emb[i:i + 1], dtype=np.float32)
            masks = loop_masks(h, e, s, rows, cols, threshold, label_threshold, probe, gt)

            def dice(m):
                both = m.sum() + gt.sum()
                return 2 * (m & gt).sum() / both if both else 1.0
            masks.append(("oracle", max((m for _, m in masks), key=dice)))
            for k, m in masks:
                inter[k] += int((m & gt).sum())
                total[k] += int(m.sum() + gt.sum())
        print(f"| {domain} | {name} | " + " | ".join(
            f"{2 * inter[k] / max(total[k], 1):.3f}" for k in names) + " |")


def main(heads_dir, domains, probe):
    heads = json.load(open(os.path.join(heads_dir, "heads.json")))
    task = heads["task"]
    domains = domains or heads["held_out_domains"]
    data_dir = os.path.join(HERE, "data", task)
    h = Heads(heads_dir)
    t_heads = heads.get("error_threshold", 0.5)
    print(f"{heads_dir}: task {task}, heads threshold {t_heads}, domains {domains}")
    print("| domain | structure | slices | coarse Dice | true error px | P@0.5 | R@0.5 "
          f"| P@{t_heads} | R@{t_heads} | top-{K} precision | pixel AUROC |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for domain, meta, emb, lab, s, name in structures(data_dir, domains):
        stats = {"dice": [], "tp5": 0, "fp5": 0, "fn5": 0, "tpt": 0, "fpt": 0, "fnt": 0,
                 "topk": [], "scores": [], "truth": [], "wrong": 0}
        for i in range(lab.shape[0]):
            gt = lab[i] == s + 1
            if not gt.any():
                continue
            rows, cols = meta["scaled"][i]
            e = np.asarray(emb[i:i + 1], dtype=np.float32)
            coarse = h.decode(e, s) > 0
            coarse[rows:, :] = False
            coarse[:, cols:] = False
            prob = h.error_prob(e, s, coarse, rows, cols)
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
    loop_table(h, heads, data_dir, domains, probe)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="error decoder and loop on held-out domains")
    ap.add_argument("heads")
    ap.add_argument("domains", nargs="*", help="default: the heads' held-out domains")
    ap.add_argument("--reference-labels", action="store_true")
    ap.add_argument("--no-mask-prompt", action="store_true")
    a = ap.parse_args()
    main(a.heads, a.domains or None, a)
