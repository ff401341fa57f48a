"""CoSAM heads on top of LiteMedSAM: the task decoder (prompt-free and promptable) and the
error decoder. Shared by train.py (training, export) and nothing else.

Task decoder: LiteMedSAM's prompt encoder and mask decoder, with per-structure learned
prompt tokens appended to the sparse prompt embeddings and a per-structure offset added to
the dense prompt embedding. With no points and no mask it is CoSAM's prompt-free coarse
decoder; with error points, a box and the corrected mask it is the refinement decoder.

Error decoder: CoSAM's generalised error decoder. Input: the image embedding and the binary
mask embedded by a copy of SAM's mask_downscaling (256x64x64); a U-Net style path of
(bilinear x2, two 3x3 conv + BN + ReLU) stages up to 256x256; output: error logits.
Channel widths are smaller than a 256-wide decoder would use so that it trains on 2 CPU
cores (about 2 GFLOP per call).
"""

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE_SIZE = 256
TOKENS_PER_STRUCTURE = 4


def encode_points(prompt_encoder, coords, labels):
    """Sparse embeddings of points in the 256 model frame, as the exported decoder does:
    labels 1 positive, 0 negative, 2/3 box corners, -1 padding."""
    pe = prompt_encoder
    sparse = pe.pe_layer._pe_encoding((coords + 0.5) / IMAGE_SIZE)
    lab = labels.unsqueeze(-1)
    sparse = sparse * (lab != -1).float()
    sparse = sparse + pe.not_a_point_embed.weight * (lab == -1).float()
    for i in range(4):
        sparse = sparse + pe.point_embeddings[i].weight * (lab == i).float()
    return sparse


class TaskDecoder(nn.Module):
    def __init__(self, net, structures):
        super().__init__()
        self.prompt_encoder = copy.deepcopy(net.prompt_encoder)
        self.mask_decoder = copy.deepcopy(net.mask_decoder)
        # the positional encoding stays as trained; the point, mask and no-mask embeddings
        # are trained (LiteMedSAM only ever saw boxes, so they were never tuned for it)
        for p in self.prompt_encoder.pe_layer.parameters():
            p.requires_grad_(False)
        scale = self.prompt_encoder.point_embeddings[1].weight.detach().std()
        self.structure_tokens = nn.Parameter(
            torch.randn(structures, TOKENS_PER_STRUCTURE, 256) * scale)
        self.structure_dense = nn.Parameter(torch.zeros(structures, 256))

    def forward(self, emb, coords, labels, mask, has_mask, structure):
        """emb [B,256,64,64], coords [B,N,2], labels [B,N], mask [B,1,256,256],
        has_mask [B], structure [B] (int64) -> logits [B,1,256,256], iou [B,1]."""
        pe = self.prompt_encoder
        md = self.mask_decoder
        b = emb.shape[0]
        # no branch on the point count: the ONNX graph must keep N dynamic (N = 0 is the
        # prompt-free call)
        tokens = torch.cat([encode_points(pe, coords, labels), self.structure_tokens[structure]],
                           dim=1)
        has = has_mask.reshape(-1, 1, 1, 1)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has * pe.mask_downscaling(mask) + (1 - has) * no_mask
        dense = dense + self.structure_dense[structure].reshape(b, -1, 1, 1)
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), tokens], dim=1)
        hs, src = md.transformer(emb + dense, pe.get_dense_pe(), tokens)
        iou_out = hs[:, 0, :]
        mask_token = hs[:, 1, :]
        src = src.transpose(1, 2).reshape(b, 256, 64, 64)
        up = md.output_upscaling(src)
        hyper = md.output_hypernetworks_mlps[0](mask_token)
        c = up.shape[1]
        logits = (hyper.unsqueeze(1) @ up.reshape(b, c, -1)).reshape(b, 1, up.shape[2], up.shape[3])
        iou = md.iou_prediction_head(iou_out)[:, 0:1]
        return logits, iou


def conv_bn(cin, cout, k=3):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ErrorDecoder(nn.Module):
    def __init__(self, net, structures):
        super().__init__()
        self.mask_embed = copy.deepcopy(net.prompt_encoder.mask_downscaling)
        self.structure = nn.Parameter(torch.zeros(structures, 64))
        self.stem = nn.Sequential(conv_bn(512, 64, 1), conv_bn(64, 64))
        self.up1 = nn.Sequential(conv_bn(64, 32), conv_bn(32, 32))
        # the mask itself joins at full resolution so that boundaries stay sharp
        self.up2 = conv_bn(33, 16)
        self.head = nn.Conv2d(16, 1, 1)

    def forward(self, emb, mask, structure):
        """emb [B,256,64,64], mask [B,1,256,256] (0/1), structure [B] -> error logits
        [B,1,256,256]."""
        x = torch.cat([emb, self.mask_embed(mask)], dim=1)
        x = self.stem(x) + self.structure[structure].reshape(emb.shape[0], -1, 1, 1)
        x = self.up1(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.up2(torch.cat([x, mask], dim=1))
        return self.head(x)


class ExportTaskDecoder(nn.Module):
    """Batch-1 ONNX signature of the task decoder (the stock decoder's inputs + structure)."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input,
                structure):
        return self.decoder(image_embeddings, point_coords, point_labels, mask_input,
                            has_mask_input, structure)


class ExportErrorDecoder(nn.Module):
    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, image_embeddings, mask, structure):
        return self.decoder(image_embeddings, mask, structure)
