"""Click latency from Python: the median prompt-to-mask time of
``Segmenter.predict`` on the demo CT slice's 512x512 grid with a cached embedding and 2
ONNX Runtime threads, for a box and for a refining click (box + point + the previous
logits); compare with ``cargo bench --bench click`` for the Python overhead. Then shows
that a Python thread keeps running while ``embed`` runs (the GIL is released).

Prints figures; asserts nothing about time. Run: python bindings/python/bench/click.py
[RUNS] with the package installed (pip install bindings/python) and pydicom.
"""

import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom

import cosam

ROOT = Path(__file__).resolve().parents[3]
BOX = (102, 194, 283, 379)  # case ct_liver of data/demo/cases.json


def median_ms(f, runs):
    """Median wall and CPU (this process, all threads) ms of ``f``."""
    times, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        f()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(times) * 1e3, statistics.median(cpu) * 1e3


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    ds = pydicom.dcmread(ROOT / "data" / "demo" / "ct_abdomen_slice.dcm")
    hu = (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.int16)
    window = (float(ds.WindowCenter[0]), float(ds.WindowWidth[0]))
    seg = cosam.Segmenter(threads=2)
    t = time.perf_counter()
    emb = seg.embed(hu, modality="ct", window=window)
    embed_ms = (time.perf_counter() - t) * 1e3
    first = seg.predict(emb, box=BOX)
    print(f"python click bench: demo CT slice 512x512, 2 threads, {seg.encoder} encoder, "
          f"{runs} runs, {os.cpu_count()} cores, load {open('/proc/loadavg').read().strip()}")
    print(f"  embed (once):                 {embed_ms:8.1f} ms")
    print(f"  predict, box:                 {median_ms(lambda: seg.predict(emb, box=BOX), runs)[0]:8.1f} ms (median)")
    click, cpu = median_ms(lambda: seg.predict(emb, box=BOX, points=[(190, 290)], labels=[1],
                                               mask_input=first.logits), runs)
    print(f"  predict, click + mask prompt: {click:8.1f} ms (median; CPU {cpu:.1f} ms)  <- click latency")

    ticks = 0
    done = threading.Event()

    def ui_thread():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    worker = threading.Thread(target=ui_thread)
    worker.start()
    t = time.perf_counter()
    seg.embed(hu, modality="ct", window=window)
    took = time.perf_counter() - t
    done.set()
    worker.join()
    print(f"  while embed ran ({took * 1e3:.0f} ms) another Python thread looped {ticks} times "
          f"(1 ms sleeps: ~{took * 1e3:.0f} possible; ~1 if the GIL were held)")


if __name__ == "__main__":
    main()
