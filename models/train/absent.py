"""When can the loop skip a slice? For each leave-one-domain-out head set, on its held-out
domains, the coarse pass runs on every slice and structure, then the loop's ROUNDS rounds
as cosam runs them (signals.slice_rounds). A slice is skipped at threshold tau when its
coarse mask is empty and its largest coarse logit is below tau: cosam then returns the
empty coarse mask without rounds. Per tau: the share of slice-structure pairs skipped
(the loop's work saved), the recall of slices holding the structure (the share that
still get rounds), and the pooled Dice of the loop's masks with and without skipping.
Then the same for a gate on the coarse pass's IoU-head score: a non-empty coarse mask
scored below theta is called absent and returned empty (History 15 of README.md).

  .venv-export/bin/python models/train/absent.py models/lodo/abdomen/* models/lodo/brain/*
"""

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from diagnose import Heads, structures  # noqa: E402
from signals import ROUNDS, decode, slice_rounds  # noqa: E402

TAUS = (0.0, -1.0, -2.0, -4.0, -8.0, -16.0)
THETAS = (0.1, 0.2, 0.3, 0.4, 0.5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("heads", nargs="+")
    a = ap.parse_args()
    # (max coarse logit, coarse empty, gt px, coarse tp/fp, loop tp/fp, coarse IoU head)
    rows = []
    for heads_dir in a.heads:
        heads = json.load(open(os.path.join(heads_dir, "heads.json")))
        h = Heads(heads_dir)
        data_dir = os.path.join(HERE, "data", heads["task"])
        for domain, meta, emb, lab, s, name in structures(data_dir, heads["held_out_domains"]):
            for i in range(lab.shape[0]):
                gt = lab[i] == s + 1
                rws, cls = meta["scaled"][i]
                e = np.asarray(emb[i:i + 1], dtype=np.float32)
                logits, _ = decode(h, e, s)
                peak = float(logits[:rws, :cls].max())
                rounds = slice_rounds(h, e, s, rws, cls, heads["error_threshold"],
                                      heads.get("point_label_threshold"))
                c, f = rounds[0]["mask"], rounds[ROUNDS]["mask"]
                rows.append((peak, not c.any(), int(gt.sum()), int((c & gt).sum()),
                             int((c & ~gt).sum()), int((f & gt).sum()), int((f & ~gt).sum()),
                             float(np.ravel(rounds[0]["iou_head"])[0])))
            print(f"{heads_dir} {domain} {name}: {lab.shape[0]} slices", flush=True)
    r = np.array(rows, dtype=np.float64)
    peak, empty, gt_px, c_tp, c_fp, f_tp, f_fp, iou = r.T
    present = gt_px > 0
    print(f"\n{len(r)} slice-structure pairs, {int(present.sum())} hold the structure; "
          f"coarse empty on {int(empty.sum())}")
    print("| tau | skipped | recall of slices with the structure | pooled Dice, loop | "
          "pooled Dice, loop with skips |")
    print("|---|---|---|---|---|")
    loop_dice = 2 * f_tp.sum() / (2 * f_tp.sum() + f_fp.sum() + (gt_px.sum() - f_tp.sum()))
    for tau in TAUS:
        skip = (empty > 0) & (peak < tau)
        tp = np.where(skip, c_tp, f_tp).sum()
        fp = np.where(skip, c_fp, f_fp).sum()
        dice = 2 * tp / (2 * tp + fp + (gt_px.sum() - tp))
        recall = (present & ~skip).sum() / max(present.sum(), 1)
        print(f"| {tau} | {skip.mean():.3f} | {recall:.3f} | {loop_dice:.4f} | {dice:.4f} |")
    phantom = ~present & (empty == 0)
    print(f"\nIoU gate: {int(phantom.sum())} pairs without the structure have a non-empty "
          "coarse mask")
    print("| theta | phantom masks emptied | recall of slices with the structure | "
          "pooled Dice, loop with the gate |")
    print("|---|---|---|---|")
    for theta in THETAS:
        gate = (empty == 0) & (iou < theta)
        tp = np.where(gate, 0, f_tp).sum()
        fp = np.where(gate, 0, f_fp).sum()
        dice = 2 * tp / (2 * tp + fp + (gt_px.sum() - tp))
        recall = (present & ~gate).sum() / max(present.sum(), 1)
        emptied = (phantom & gate).sum() / max(phantom.sum(), 1)
        print(f"| {theta} | {emptied:.3f} | {recall:.3f} | {dice:.4f} |")


if __name__ == "__main__":
    main()
