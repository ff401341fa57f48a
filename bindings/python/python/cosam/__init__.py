"""cosam: Segment-Anything (LiteMedSAM) for medical images, for viewers.

Embed a slice once (off the UI thread: the GIL is released while the encoder runs), then
predict a mask for every click, passing the previous ``logits`` back as ``mask_input``::

    import cosam
    seg = cosam.Segmenter()
    emb = seg.embed(ct_slice_hu, modality="ct")
    first = seg.predict(emb, box=(102, 194, 283, 379))
    refined = seg.predict(emb, box=(102, 194, 283, 379), points=[(190, 290)], labels=[1],
                          mask_input=first.logits)

See docs/bindings.md in the repository for threads, memory and where the models and ONNX
Runtime are found.
"""

import os
from pathlib import Path

from ._native import CosamError, Embedding, Prediction, Quality, Task
from ._native import Segmenter as _NativeSegmenter

__all__ = ["Segmenter", "Embedding", "Prediction", "Quality", "Task", "CosamError"]

#: The models copied into the wheel (absent in an editable checkout).
PACKAGED_MODELS = Path(__file__).resolve().parent / "models"


def _default_models():
    """COSAM_MODELS wins; then the wheel's models; then the library's own search."""
    if os.environ.get("COSAM_MODELS"):
        return None
    if (PACKAGED_MODELS / "manifest.json").is_file():
        return str(PACKAGED_MODELS)
    return None


class Segmenter(_NativeSegmenter):
    """LiteMedSAM loaded: ``embed`` a slice once, then ``predict`` per prompt.

    ``models``: folder holding manifest.json; None uses ``COSAM_MODELS``, else the models
    inside this package, else the library's search (``models/`` in the current folder or
    in the checkout it was built from). ``ort_lib``: ONNX Runtime library or its folder;
    None searches as the CLI does (``ORT_DYLIB_PATH``, then ``third_party/onnxruntime/``
    in the current folder and in the checkout it was built from). ``threads``: ONNX
    Runtime threads per model (None: one per core). ``encoder``: "auto", "fp32", "int8".
    """

    def __new__(cls, models=None, ort_lib=None, threads=None, encoder="auto"):
        if models is None:
            models = _default_models()
        return super().__new__(
            cls,
            None if models is None else str(models),
            None if ort_lib is None else str(ort_lib),
            threads,
            encoder,
        )
