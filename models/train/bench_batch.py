"""Does batching the structures of a slice into one head call pay on the CPU? Times the
decoder and the error decoder of a dynamic-batch head set at batch 1 and batch 4 (the four
abdominal structures) on ONNX Runtime's CPU provider, 2 intra-op threads, and prints the
median time per structure. Issue 18 asked for batched calls; this is the measurement that
decided against them on the CPU.

  .venv-export/bin/python models/train/bench_batch.py models/lodo-synth/abdomen-r07/ts-mr-3mm
"""

import argparse
import os
import time

import numpy as np
import onnxruntime as ort


def inputs(names, batch, rng):
    x = {
        "image_embeddings": rng.random((batch, 256, 64, 64), dtype=np.float32),
        "structure": np.arange(batch, dtype=np.int64) % 4,
    }
    if "point_coords" in names:  # the decoder: 64 error points and a box, a mask prompt
        x["point_coords"] = rng.random((batch, 66, 2), dtype=np.float32) * 256
        x["point_labels"] = np.ones((batch, 66), np.float32)
        x["mask_input"] = np.zeros((batch, 1, 256, 256), np.float32)
        x["has_mask_input"] = np.ones(batch, np.float32)
    else:
        x["mask"] = np.zeros((batch, 1, 256, 256), np.float32)
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("heads", help="a heads folder whose ONNX files take a batch dimension")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    a = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    rng = np.random.default_rng(0)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for name in ("decoder", "error"):
        s = ort.InferenceSession(os.path.join(a.heads, f"{name}.onnx"), so,
                                 providers=["CPUExecutionProvider"])
        names = {i.name for i in s.get_inputs()}
        for batch in (1, 4):
            x = inputs(names, batch, rng)
            s.run(None, x)
            times = []
            for _ in range(a.reps):
                t = time.perf_counter()
                s.run(None, x)
                times.append(time.perf_counter() - t)
            med = 1000 * float(np.median(times))
            print(f"{name} batch {batch}: median {med:.1f} ms per call, "
                  f"{med / batch:.1f} ms per structure")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
