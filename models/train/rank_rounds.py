"""Can the loop's own signals, combined and recalibrated on held-out folds, tell a round
that helped from one that did not (issue 14, item 3: "the IoU head recalibrated on held-out
folds")? No single signal ranks rounds above chance on every leave-one-domain-out fold
(docs/results.md); a learned combination might. This fits one, per slice and round, on the
`signals.py --json` records of all folds but one and scores it on the fold left out, so
every figure comes from heads and a ranker that never saw the scored domain.

Per slice and round t (1-4) the features compare round t with the coarse mask: the IoU
head, stability score, predicted error share and top logit (differences), the log area
ratio, whether the head was silent on the coarse mask, the coarse mask's own levels and t.
The target is the slice's contribution to the volume's Dice, 2 dOverlap - D0 dArea over the
volume's (area + truth), with D0 the coarse volume Dice (known in training only). A ridge
regression predicts it; the rule keeps, per slice, the round with the highest predicted
gain when that gain passes --margin, else the coarse mask.

  .venv-export/bin/python models/train/rank_rounds.py out/s19/signals-6folds.json \
      [--seen out/s19/signals-seen-abdomen.json out/s19/signals-seen-brain.json]

--seen fits on every fold and scores the rule on the shipped heads' own domains: a rule
that helps unseen scans must not cost the seen ones.
"""

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from signals import ABSENT_LOGIT, RULES, agreement, order_pairs, rule_dice  # noqa: E402

FEATURES = ("t", "d_iou", "d_stability", "d_error_share", "d_peak", "log_area_ratio",
            "silent", "iou0", "stability0", "error_share0", "peak0", "log_area0")
TTA_FEATURES = ("d_tta", "tta0")  # when the records hold signals.py --tta agreement


def absent(rounds):
    return rounds[0]["area"] == 0 and rounds[0]["peak"] < ABSENT_LOGIT


def features(rounds, t):
    c, x = rounds[0], rounds[t]
    share = lambda r: r["error_px"] / (r["area"] + 1)  # noqa: E731
    f = [t, x["iou_head"] - c["iou_head"], x["stability"] - c["stability"],
         share(x) - share(c), np.clip(x["peak"] - c["peak"], -20, 20),
         np.log((x["area"] + 1) / (c["area"] + 1)), float(c["error_px"] == 0),
         c["iou_head"], c["stability"], share(c), np.clip(c["peak"], -20, 20),
         np.log(c["area"] + 1)]
    if "tta" in c:
        f += [agreement(x) - agreement(c), agreement(c)]
    return f


def samples(rows):
    """Feature rows and targets of every (slice, round >= 1) that the loop would run."""
    X, y = [], []
    for row in rows:
        d0 = row["dice"][0]
        denom = sum(sl["rounds"][0]["area"] + sl["truth"] for sl in row["slices"]) or 1
        for sl in row["slices"]:
            r = sl["rounds"]
            if absent(r):
                continue
            for t in range(1, len(r)):
                X.append(features(r, t))
                gain = 2 * (r[t]["overlap"] - r[0]["overlap"]) - d0 * (r[t]["area"] - r[0]["area"])
                y.append(gain / denom * len(row["slices"]))
    return np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)


class Ridge:
    def __init__(self, X, y, alpha):
        self.mean, self.std = X.mean(0), X.std(0) + 1e-9
        Z = np.hstack([(X - self.mean) / self.std, np.ones((len(X), 1))])
        reg = alpha * np.eye(Z.shape[1])
        reg[-1, -1] = 0
        self.w = np.linalg.solve(Z.T @ Z + reg, Z.T @ y)

    def predict(self, X):
        Z = np.hstack([(np.asarray(X) - self.mean) / self.std, np.ones((len(X), 1))])
        return Z @ self.w


def learned_rule(model, margin):
    def rule(rounds, _counts):
        pred = model.predict([features(rounds, t) for t in range(1, len(rounds))])
        best = int(np.argmax(pred))
        return best + 1 if pred[best] > margin else 0
    return rule


def volume_scores(model, row):
    """Per round, the mean predicted gain over the slices the loop runs (coarse = 0): the
    learned signal at volume level, for concordance with the true volume Dice."""
    n = len(row["dice"])
    runs = [sl["rounds"] for sl in row["slices"] if not absent(sl["rounds"])]
    if not runs:
        return [0.0] * n
    pred = np.asarray([model.predict([features(r, t) for t in range(1, n)]) for r in runs])
    return [0.0] + pred.mean(0).tolist()


def bootstrap_ci(x, n=10000, seed=0):
    rng = np.random.default_rng(seed)
    x = np.asarray(x)
    means = x[rng.integers(0, len(x), (n, len(x)))].mean(1)
    return np.percentile(means, [2.5, 97.5])


def fold_name(row):
    return os.path.basename(row["heads"].rstrip("/"))


def score(rows, rules, label):
    """Per rule: mean volume Dice, paired gain over coarse with its 95% CI, worst row."""
    coarse = [rule_dice(r, RULES["coarse"]) for r in rows]
    print(f"\n{label} ({len(rows)} volume-structure rows)")
    print("| rule | mean Dice | gain over coarse | 95% CI | worst row | rows < -0.05 |")
    print("|---|---|---|---|---|---|")
    for name, rule_of in rules.items():
        got = [rule_dice(r, rule_of(r)) for r in rows]
        gain = np.subtract(got, coarse)
        lo, hi = bootstrap_ci(gain)
        print(f"| {name} | {np.mean(got):.3f} | {gain.mean():+.3f} | {lo:+.3f} to {hi:+.3f} "
              f"| {gain.min():+.3f} | {(gain < -0.05).sum()} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folds", nargs="+", help="signals.py --json files of the LODO folds")
    ap.add_argument("--seen", nargs="*", default=[], help="signals.py --json files of the "
                    "shipped heads on their own domains")
    ap.add_argument("--alpha", type=float, default=10.0, help="ridge penalty")
    ap.add_argument("--margin", type=float, default=0.0,
                    help="predicted gain a round must pass to replace the coarse mask")
    a = ap.parse_args()
    rows = [r for f in a.folds for r in json.load(open(f))]
    if not all("slices" in r for r in rows):
        sys.exit("rerun signals.py: these rows have no per-slice records")
    folds = sorted({fold_name(r) for r in rows})

    # leave one fold out: the ranker for a fold's rows never saw that fold
    model_of = {}
    for f in folds:
        X, y = samples([r for r in rows if fold_name(r) != f])
        model_of[f] = Ridge(X, y, a.alpha)
    print(f"{len(folds)} folds; ridge alpha {a.alpha}, margin {a.margin}")
    print("\nLearned signal, concordance with the true volume Dice on the fold left out")
    print("| fold | rows | concordant:discordant | concordance |")
    print("|---|---|---|---|")
    total = [0, 0]
    for f in folds:
        mine = [r for r in rows if fold_name(r) == f]
        c, d = order_pairs(mine, [volume_scores(model_of[f], r) for r in mine])
        total[0] += c
        total[1] += d
        share = f"{c / (c + d):.2f}" if c + d else "n/a"
        print(f"| {f} | {len(mine)} | {c}:{d} | {share} |")
    print(f"| all | {len(rows)} | {total[0]}:{total[1]} | "
          f"{total[0] / max(1, sum(total)):.2f} |")

    rules = {name: (lambda rule: lambda r: rule)(RULES[name])
             for name in ("fixed 1", "fixed 4", "stop rule")}
    rules["learned (leave one fold out)"] = lambda r: learned_rule(model_of[fold_name(r)],
                                                                   a.margin)
    for task in sorted({r["heads"].split("/")[-2] for r in rows}):
        score([r for r in rows if r["heads"].split("/")[-2] == task], rules,
              f"Unseen {task}")
    score(rows, rules, "Unseen, both tasks")

    if a.seen:
        X, y = samples(rows)
        everything = Ridge(X, y, a.alpha)
        names = ["fixed 1", "fixed 4", "stop rule"]
        seen_rules = {n: (lambda rule: lambda r: rule)(RULES[n]) for n in names}
        seen_rules["learned (every fold)"] = lambda r: learned_rule(everything, a.margin)
        for f in a.seen:
            score(json.load(open(f)), seen_rules, f"Seen domains, {f}")
        print("\nWeights (standardised features), fit on every fold:")
        names = FEATURES + (TTA_FEATURES if len(everything.w) > len(FEATURES) + 1 else ())
        print(", ".join(f"{k} {w:+.4f}" for k, w in zip(names + ("bias",), everything.w)))


if __name__ == "__main__":
    main()
