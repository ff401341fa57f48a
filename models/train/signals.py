"""Which signal tells whether a round of the loop made a mask better, on domains the heads
never saw? For every leave-one-domain-out head set given, on its held-out domains
(`cosam export-training` data, model frame), the loop runs ROUNDS rounds on every slice
as cosam runs it, and each round's mask is scored with candidate signals:

  iou_head      the decoder's IoU prediction for the mask (the review score's part)
  error_frac    the error decoder's predicted wrong pixels (p > the heads' threshold) on
                the mask, as a share of the mask's area (lower is better)
  stability     SAM's stability score: IoU of (logits > +1) and (logits > -1)
  neighbours    Dice of the slice's mask with the same round's masks on the adjacent
                slices (slice-to-slice consistency)
  tta           with --tta: Dice of the round's mask with the same round's mask when the
                loop runs on the slice under a contrast change (test-time augmentation;
                `cosam export-training --gamma G` exports the same slices so changed)

Ranking is judged per volume and structure, as the benchmark scores (Dice over the
volume): for every pair of rounds whose true Dice differs by more than 0.005, is the
signal's order the Dice's order (concordance)? Then the volume Dice of choosing, per
volume, the round the signal prefers, against the coarse mask, the fixed four rounds and
the oracle (the best round). Volume signals: mean over slices with a non-empty mask
(iou_head, stability), predicted wrong pixels over predicted area (error_frac), and
area-weighted adjacent-slice Dice (neighbours).

  .venv-export/bin/python models/train/signals.py models/lodo/abdomen/* models/lodo/brain/* \
      --json out/signals-6folds.json
  .venv-export/bin/python models/train/signals.py --from-json out/signals-6folds.json

With --tta, one export folder per augmentation of each task, named TASK-SUFFIX beside the
plain export under --tta-root (default models/train/data-tta): e.g. `--tta g0.7,g1.5` reads
models/train/data-tta/abdomen-g0.7 and abdomen-g1.5, made by
`cosam export-training --dataset data/bench/manifest.json --task abdomen --gamma 0.7
-o models/train/data-tta/abdomen-g0.7`.
"""

import argparse
import itertools
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from diagnose import K, Heads, box_of_largest, structures  # noqa: E402

ROUNDS = 4
SIGNALS = ("iou_head", "error_frac", "stability", "neighbours", "tta")
LOWER_IS_BETTER = {"error_frac"}


def decode(h, e, s, coords=None, labels=None, mask_prompt=None):
    return h.decode_with_iou(e, s, coords, labels, mask_prompt)


def slice_rounds(h, e, s, rows, cols, threshold, label_threshold):
    """Per round (0 = coarse): mask, IoU head, stability, predicted error fraction."""
    out = []
    logits, iou = decode(h, e, s)
    for r in range(ROUNDS + 1):
        logits = logits.copy()
        logits[rows:, :] = -1e4
        logits[:, cols:] = -1e4
        mask = logits > 0
        hi, lo = (logits > 1).sum(), (logits > -1).sum()
        p = h.error_prob(e, s, mask, rows, cols)
        flagged = p > threshold
        out.append({"mask": mask, "iou_head": iou, "stability": hi / lo if lo else 1.0,
                    "error_px": int(flagged.sum()), "area": int(mask.sum()),
                    "peak": float(logits[:rows, :cols].max())})
        if r == ROUNDS:
            break
        corrected = mask ^ flagged
        flat = np.argpartition(-p[:rows, :cols].ravel(), K - 1)[:K]
        ys, xs = np.unravel_index(flat, (rows, cols))
        lab = corrected[ys, xs] if label_threshold is None else \
            mask[ys, xs] ^ (p[ys, xs] > label_threshold)
        b = box_of_largest(corrected, rows, cols)
        coords = np.concatenate([np.stack([xs, ys], 1), [[b[0], b[1]], [b[2], b[3]]]])
        labels = np.concatenate([lab.astype(np.float32), [2, 3]])
        logits, iou = decode(h, e, s, coords[None].astype(np.float32),
                             labels[None].astype(np.float32), corrected)
    return out


def slice_records(per_slice, gt):
    """Per slice, the true area and, per round, what a per-slice rule may look at and the
    mask's overlap with the truth, so that any per-slice choice of round can be scored.
    With augmented runs, `tta` is (2 |M & M'|, |M| + |M'|) summed over the augmentations."""
    def record(x, g):
        r = {"area": x["area"], "overlap": int((x["mask"] & g).sum()),
             "error_px": x["error_px"], "iou_head": float(x["iou_head"]),
             "stability": float(x["stability"]), "peak": x["peak"]}
        if "tta" in x:
            r["tta"] = x["tta"]
        return r
    return [{"truth": int(g.sum()), "rounds": [record(x, g) for x in rounds]}
            for rounds, g in zip(per_slice, gt)]


def add_tta(rounds, augmented):
    """Marks each round of the plain run with its agreement with the augmented runs."""
    for t, x in enumerate(rounds):
        inter = sum(2 * int((x["mask"] & a[t]["mask"]).sum()) for a in augmented)
        total = sum(x["area"] + a[t]["area"] for a in augmented)
        x["tta"] = [inter, total]


def dice(a, b):
    both = a.sum() + b.sum()
    return 2 * (a & b).sum() / both if both else 1.0


def volume_signals(rounds):
    """rounds[z][r] -> per round: the volume's masks and signals."""
    n = len(rounds)
    per = []
    for r in range(ROUNDS + 1):
        masks = [rounds[z][r]["mask"] for z in range(n)]
        nonempty = [rounds[z][r] for z in range(n) if rounds[z][r]["area"] > 0]
        area = sum(x["area"] for x in nonempty)
        inter = total = 0
        for z in range(n - 1):
            a, b = masks[z], masks[z + 1]
            inter += 2 * int((a & b).sum())
            total += int(a.sum() + b.sum())
        per.append({
            "masks": masks,
            "iou_head": np.mean([x["iou_head"] for x in nonempty]) if nonempty else 0.0,
            "stability": np.mean([x["stability"] for x in nonempty]) if nonempty else 0.0,
            "error_frac": sum(x["error_px"] for x in nonempty) / area if area else 1.0,
            "neighbours": inter / total if total else 0.0,
        })
        if "tta" in rounds[0][r]:
            pair = np.sum([rounds[z][r]["tta"] for z in range(n)], axis=0)
            per[-1]["tta"] = pair[0] / pair[1] if pair[1] else 1.0
    return per


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("heads", nargs="*", help="leave-one-domain-out head folders")
    ap.add_argument("--json", help="also write the per-volume rows here")
    ap.add_argument("--from-json", help="report the rows of an earlier --json instead of "
                    "running the loop")
    ap.add_argument("--domains", help="score these domains (comma-separated) instead of "
                    "each head set's held-out ones, e.g. the shipped heads' own")
    ap.add_argument("--tta", help="augmented exports' suffixes (comma-separated), e.g. "
                    "g0.7,g1.5: adds the tta signal")
    ap.add_argument("--tta-root", default=os.path.join(HERE, "data-tta"),
                    help="folder of the augmented exports TASK-SUFFIX")
    a = ap.parse_args()
    if a.from_json:
        rows = json.load(open(a.from_json))
        report(rows)
        if all("slices" in r for r in rows):
            report_rules(rows)
        return
    if not a.heads:
        ap.error("give head folders, or --from-json")
    rows = []
    for heads_dir in a.heads:
        heads = json.load(open(os.path.join(heads_dir, "heads.json")))
        h = Heads(heads_dir)
        data_dir = os.path.join(HERE, "data", heads["task"])
        domains = a.domains.split(",") if a.domains else heads["held_out_domains"]
        tta_dirs = [os.path.join(a.tta_root, f"{heads['task']}-{x}")
                    for x in a.tta.split(",")] if a.tta else []
        for domain, meta, emb, lab, s, name in structures(data_dir, domains):
            gt = lab == s + 1
            if not gt.any():
                continue
            augmented = [augmented_embeddings(d, domain, meta) for d in tta_dirs]
            args = (heads["error_threshold"], heads.get("point_label_threshold"))
            per_slice = []
            for i in range(lab.shape[0]):
                rws, cls = meta["scaled"][i]
                e = np.asarray(emb[i:i + 1], dtype=np.float32)
                rounds = slice_rounds(h, e, s, rws, cls, *args)
                if augmented:
                    add_tta(rounds, [slice_rounds(h, np.asarray(x[i:i + 1], dtype=np.float32),
                                                  s, rws, cls, *args) for x in augmented])
                per_slice.append(rounds)
            per = volume_signals(per_slice)
            row = {"heads": heads_dir, "domain": domain, "structure": name,
                   "dice": [float(dice(np.stack(p["masks"]), gt)) for p in per],
                   "slices": slice_records(per_slice, gt)}
            for k in SIGNALS:
                if k in per[0]:
                    row[k] = [float(p[k]) for p in per]
            rows.append(row)
            print(f"{domain} {name}: dice {np.round(row['dice'], 3).tolist()}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    report(rows)
    if all("slices" in r for r in rows):
        report_rules(rows)


def augmented_embeddings(tta_dir, domain, meta):
    """The augmented export's embeddings of `domain`, checked to hold the same slices."""
    d = os.path.join(tta_dir, domain)
    other = json.load(open(os.path.join(d, "meta.json")))
    if other["slices"] != meta["slices"] or other["scaled"] != meta["scaled"]:
        sys.exit(f"{d}: not the same slices as the plain export of {domain}")
    return np.load(os.path.join(d, "embeddings.npy"), mmap_mode="r")


def stop_rule(counts):
    """`correct::chosen_round` with `stop_early`: run until a round does not lower the
    predicted error count, keep the mask with the fewest (the earliest on ties)."""
    last = next((t for t in range(1, len(counts)) if counts[t] >= counts[t - 1]),
                len(counts) - 1)
    return min(range(last + 1), key=lambda i: counts[i])


def silent_run(counts):
    """The last round of the leading run of masks with no predicted error."""
    t = 0
    while t + 1 < len(counts) and counts[t + 1] == 0:
        t += 1
    return t


# A silent head (no predicted error on the coarse mask) gives the stop rule no evidence: its
# count cannot fall, so the rule keeps the coarse mask. Each variant below acts only then.
RULES = {
    "coarse": lambda r, c: 0,
    "fixed 1": lambda r, c: 1,
    f"fixed {ROUNDS}": lambda r, c: ROUNDS,
    "stop rule": lambda r, c: stop_rule(c),
    "stop; silent: 1 round": lambda r, c: 1 if c[0] == 0 else stop_rule(c),
    "stop; silent: rounds while silent": lambda r, c: silent_run(c) if c[0] == 0
    else stop_rule(c),
    "stop; silent: stability": lambda r, c: max(range(len(r)), key=lambda t: r[t]["stability"])
    if c[0] == 0 else stop_rule(c),
}


def agreement(rnd):
    inter, total = rnd["tta"]
    return inter / total if total else 1.0


# Rules that need --tta: the round whose mask the augmented runs agree with most (the
# earliest on ties), and the stop rule's round only when it agrees no less than the coarse.
TTA_RULES = {
    "tta: most agreeing round": lambda r, c: max(range(len(r)), key=lambda t: agreement(r[t])),
    "stop rule if tta agrees no less": lambda r, c: stop_rule(c)
    if agreement(r[stop_rule(c)]) >= agreement(r[0]) else 0,
    "stop; silent: most agreeing round": lambda r, c: max(range(len(r)),
                                                            key=lambda t: agreement(r[t]))
    if c[0] == 0 else stop_rule(c),
}
ABSENT_LOGIT = -2.0  # correct::DEFAULT_ABSENT_LOGIT: such slices get no rounds


def rule_dice(row, rule):
    overlap = area = truth = 0
    for sl in row["slices"]:
        r = sl["rounds"]
        absent = r[0]["area"] == 0 and r[0]["peak"] < ABSENT_LOGIT
        t = 0 if absent else rule(r, [x["error_px"] for x in r])
        overlap += r[t]["overlap"]
        area += r[t]["area"]
        truth += sl["truth"]
    return 2 * overlap / (area + truth) if area + truth else 1.0


def report_rules(rows):
    """Per-slice rules scored as volume Dice, per fold, against the coarse mask."""
    folds = sorted({r["heads"] for r in rows})
    print("\nRules per slice: mean volume Dice (gain over coarse; worst row's gain)")
    print("| rule | " + " | ".join(f"{os.path.basename(f)} ({sum(r['heads'] == f for r in rows)})"
                                   for f in folds) + " | all |")
    print("|---|" + "---|" * (len(folds) + 1))
    coarse = {id(r): rule_dice(r, RULES["coarse"]) for r in rows}
    has_tta = all("tta" in sl["rounds"][0] for r in rows for sl in r["slices"])
    for name, rule in {**RULES, **(TTA_RULES if has_tta else {})}.items():
        cells = []
        for group in [[r for r in rows if r["heads"] == f] for f in folds] + [rows]:
            got = [rule_dice(r, rule) for r in group]
            gain = [g - coarse[id(r)] for g, r in zip(got, group)]
            cells.append(f"{np.mean(got):.3f} ({np.mean(gain):+.3f}; {min(gain):+.3f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    silent = [[sl["rounds"][0]["error_px"] == 0 for sl in r["slices"]
               if sl["rounds"][0]["area"] > 0 or sl["rounds"][0]["peak"] >= ABSENT_LOGIT]
              for r in rows]
    print("\nSlices given rounds whose coarse mask has no predicted error, per fold: " +
          ", ".join(f"{os.path.basename(f)} {sum(sum(s) for s, r in zip(silent, rows) if r['heads'] == f)}"
                    f"/{sum(len(s) for s, r in zip(silent, rows) if r['heads'] == f)}"
                    for f in folds))


def order_pairs(rows, scores):
    """(concordant, discordant) round pairs of per-round scores (higher = better) against
    each row's volume Dice, skipping pairs whose Dice differs by 0.005 or less."""
    conc = disc = 0
    for r, score in zip(rows, scores):
        for i, j in itertools.combinations(range(len(r["dice"])), 2):
            dd = r["dice"][j] - r["dice"][i]
            ds = score[j] - score[i]
            if abs(dd) <= 0.005 or ds == 0:
                continue
            conc += dd * ds > 0
            disc += dd * ds < 0
    return conc, disc


def concordance(rows, k):
    """(concordant, discordant) round pairs of signal k against the volume Dice."""
    sign = -1 if k in LOWER_IS_BETTER else 1
    return order_pairs(rows, [[sign * v for v in r[k]] for r in rows])


def report(rows):
    print(f"\n{len(rows)} volume-structure pairs; rounds 0 (coarse) to {ROUNDS}")
    coarse = np.mean([r["dice"][0] for r in rows])
    fixed = np.mean([r["dice"][ROUNDS] for r in rows])
    oracle = np.mean([max(r["dice"]) for r in rows])
    print(f"coarse {coarse:.3f}, fixed {ROUNDS} rounds {fixed:.3f}, oracle round {oracle:.3f}")
    signals = [k for k in SIGNALS if all(k in r for r in rows)]
    print("| signal | concordant pairs | discordant pairs | concordance | Dice of the round it picks |")
    print("|---|---|---|---|---|")
    for k in signals:
        sign = -1 if k in LOWER_IS_BETTER else 1
        conc, disc = concordance(rows, k)
        picked = [r["dice"][max(range(ROUNDS + 1), key=lambda t: sign * r[k][t])]
                  for r in rows]
        share = conc / (conc + disc) if conc + disc else float("nan")
        print(f"| {k} | {conc} | {disc} | {share:.2f} | {np.mean(picked):.3f} |")
    # a signal worth a rule must rank rounds on every fold, not on the pool alone
    folds = sorted({r["heads"] for r in rows})
    print("\nConcordance per fold (concordant:discordant)")
    print("| fold | pairs | " + " | ".join(signals) + " |")
    print("|---|---|" + "---|" * len(signals))
    for fold in folds:
        mine = [r for r in rows if r["heads"] == fold]
        cells = []
        for k in signals:
            conc, disc = concordance(mine, k)
            share = f"{conc / (conc + disc):.2f}" if conc + disc else "n/a"
            cells.append(f"{share} ({conc}:{disc})")
        print(f"| {fold} | {len(mine)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
