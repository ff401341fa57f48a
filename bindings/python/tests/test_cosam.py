"""Smoke tests of the Python module through its public names, with the real models and
the demo CT slice (behaviour is tested in the library: tests/viewer.rs)."""

import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

import cosam

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "data" / "demo"
CT = DEMO / "ct_abdomen_slice.dcm"


def liver_box():
    cases = json.loads((DEMO / "cases.json").read_text())["cases"]
    return tuple(next(c for c in cases if c["id"] == "ct_liver")["box"])


@pytest.fixture(scope="module")
def seg():
    return cosam.Segmenter(threads=2)


@pytest.fixture(scope="module")
def ct():
    """The demo slice in HU (int16) and the file's first CT window."""
    ds = pydicom.dcmread(CT)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    window = (float(ds.WindowCenter[0]), float(ds.WindowWidth[0]))
    return hu.astype(np.int16), window


@pytest.fixture(scope="module")
def emb(seg, ct):
    hu, window = ct
    return seg.embed(hu, modality="ct", window=window)


def test_a_box_gives_the_cli_mask(seg, emb, tmp_path):
    cli = ROOT / "target" / "release" / "cosam"
    assert cli.is_file(), "build the CLI first (cargo build --release)"
    x0, y0, x1, y1 = liver_box()
    subprocess.run(
        [str(cli), "segment", "-i", str(CT), "--box", f"{x0},{y0},{x1},{y1}",
         "-o", str(tmp_path), "--format", "png"],
        check=True, capture_output=True,
    )
    expected = np.array(Image.open(tmp_path / "ct_abdomen_slice_mask_png" / "slice_0000.png")) > 0
    p = seg.predict(emb, box=(x0, y0, x1, y1))
    assert p.mask.dtype == np.uint8 and p.mask.shape == (512, 512)
    assert p.logits.dtype == np.float32 and p.logits.shape == (256, 256)
    assert 0.5 < p.iou <= 1.5
    assert expected.sum() > 1000
    assert np.array_equal(p.mask > 0, expected), f"{np.sum((p.mask > 0) != expected)} pixels differ"


def test_a_click_refines_through_the_logits(seg, emb):
    box = liver_box()
    first = seg.predict(emb, box=box)
    refined = seg.predict(emb, box=box, points=[(150, 300)], labels=[0], mask_input=first.logits)
    plain = seg.predict(emb, box=box, points=[(150, 300)], labels=[0])
    assert not np.array_equal(refined.logits, plain.logits)
    assert refined.mask.sum() > 1000


def test_embedding_bytes_round_trip(seg, emb):
    data = emb.to_bytes()
    assert isinstance(data, bytes) and len(data) > 4 * 256 * 64 * 64
    back = cosam.Embedding.from_bytes(data)
    assert back.shape == (512, 512)
    a = seg.predict(emb, box=liver_box())
    b = seg.predict(back, box=liver_box())
    assert np.array_equal(a.logits, b.logits)
    with pytest.raises(cosam.CosamError, match="not a cosam embedding"):
        cosam.Embedding.from_bytes(data[:100])


def test_errors_name_the_problem(seg, emb):
    with pytest.raises(cosam.CosamError, match="outside the 512x512 image"):
        seg.predict(emb, box=(0, 0, 900, 10))
    with pytest.raises(cosam.CosamError, match="no prompt"):
        seg.predict(emb)
    with pytest.raises(cosam.CosamError, match="mask prompt is 64x64"):
        seg.predict(emb, box=liver_box(), mask_input=np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match="2 points but 1 labels"):
        seg.predict(emb, points=[(1, 1), (2, 2)], labels=[1])
    with pytest.raises(TypeError, match="uint8, int16, uint16 or float32"):
        seg.embed(np.zeros((8, 8), np.float64))
    with pytest.raises(ValueError, match="2D"):
        seg.embed(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="unknown modality 'pet'"):
        seg.embed(np.zeros((8, 8), np.uint8), modality="pet")
    with pytest.raises(cosam.CosamError, match="constant"):
        seg.embed(np.zeros((8, 8), np.uint8))
    with pytest.raises(cosam.CosamError, match="manifest"):
        cosam.Segmenter(models="/nonexistent-models")


def test_display_images_of_every_dtype_embed(seg):
    img = np.zeros((64, 80), np.uint8)
    img[20:40, 30:60] = 200
    for dtype in (np.uint8, np.uint16, np.int16, np.float32):
        e = seg.embed(img.astype(dtype), modality="display")
        p = seg.predict(e, box=(28, 18, 62, 42))
        assert p.mask.shape == (64, 80)
        assert p.mask[30, 45] == 1 and p.mask[5, 5] == 0


def test_prompt_free_task_has_a_quality(seg, emb):
    task = seg.load_task("abdomen")
    assert "liver" in task.structures
    p = task.segment(emb, "liver")
    assert p.quality is not None and 0.0 <= p.quality.score <= 1.0
    assert isinstance(p.quality.needs_review, bool)
    assert p.mask.sum() > 1000
    with pytest.raises(cosam.CosamError, match="no structure 'heart'"):
        task.segment(emb, "heart")


def test_a_python_thread_runs_while_embed_runs(seg, ct):
    hu, window = ct
    ticks = 0
    done = threading.Event()

    def count():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    started = time.perf_counter()
    seg.embed(hu, modality="ct", window=window)
    took = time.perf_counter() - started
    done.set()
    t.join()
    print(f"embed {took * 1e3:.0f} ms; the other thread ticked {ticks} times meanwhile")
    # With the GIL held for the whole embed the thread would tick about once.
    assert ticks >= 10


def test_the_wheel_holds_every_model_of_the_manifest():
    if not (cosam.PACKAGED_MODELS / "manifest.json").is_file():
        pytest.fail(f"no models in the installed package ({cosam.PACKAGED_MODELS})")
    manifest = json.loads((cosam.PACKAGED_MODELS / "manifest.json").read_text())
    missing = [m["file"] for m in manifest["models"]
               if not (cosam.PACKAGED_MODELS / m["file"]).is_file()]
    assert not missing, f"models missing from the package: {missing}"
    shipped = json.loads((ROOT / "models" / "manifest.json").read_text())
    assert manifest == shipped, "the package's manifest is not the repository's"
