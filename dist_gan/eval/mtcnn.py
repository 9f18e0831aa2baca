"""MTCNN (Zhang et al. 2016, "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks"), written for dist_gan around the weights facenet-pytorch ships.

facenet-pytorch's wheel pins ``torch<2.3``, so it cannot be installed beside this project;
its three state dicts (``pnet.pt``, ``rnet.pt``, ``onet.pt``, ported from the authors'
Caffe models) are fetched by ``dist-gan weights install``. The layer names and shapes
below are the ones those files hold. The cascade follows the paper and the reference
implementations: an image pyramid (smallest face 20 px, scale step 0.709) through the
fully convolutional P-Net, then R-Net on 24-px crops and O-Net on 48-px crops, each
stage thresholding, suppressing overlaps and regressing the boxes to squares.

Face detectability needs one number per image, the highest O-Net face probability, so
the landmark head is loaded but not used, and the final overlap suppression (which never
drops the highest-scoring box) is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

MIN_FACE = 20
"""Smallest face searched for, in pixels of the input."""
SCALE_STEP = 0.709
THRESHOLDS = (0.6, 0.7, 0.7)
"""Face probability a box needs to pass P-Net, R-Net and O-Net."""


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


class PNet(nn.Module):
    """12-px proposal network, fully convolutional: a face probability and a box offset per 2-px cell."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.conv4_1(x).softmax(1)[:, 1]


class RNet(nn.Module):
    """24-px refinement network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))  # Caffe's (W, H, C) flattening order
        return self.dense5_2(x), self.dense5_1(x).softmax(1)[:, 1]


class ONet(nn.Module):
    """48-px output network (its landmark head ``dense6_3`` is kept so the weights load, and unused)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_1(x).softmax(1)[:, 1]


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Each (x1, y1, x2, y2) grown to a square about its centre (side = the longer side)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1, y1 = boxes[:, 0] + 0.5 * (w - side), boxes[:, 1] + 0.5 * (h - side)
    return torch.stack([x1, y1, x1 + side, y1 + side], 1)


def _regress(boxes: torch.Tensor, reg: torch.Tensor, plus_one: bool) -> torch.Tensor:
    extra = 1.0 if plus_one else 0.0  # P-Net's offsets are in box widths, the later stages' in widths + 1 px
    w, h = boxes[:, 2] - boxes[:, 0] + extra, boxes[:, 3] - boxes[:, 1] + extra
    return boxes + reg * torch.stack([w, h, w, h], 1)


def _crops(images: torch.Tensor, boxes: torch.Tensor, owner: torch.Tensor, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each box cut out of its image (clipped to it, 1-based as the Caffe code) and resized to ``size``."""
    h, w = images.shape[2:]
    b = boxes.trunc().long()
    x1, y1 = b[:, 0].clamp(min=1), b[:, 1].clamp(min=1)
    x2, y2 = b[:, 2].clamp(max=w), b[:, 3].clamp(max=h)
    keep = (x2 > x1 - 1) & (y2 > y1 - 1)
    out = [F.interpolate(images[owner[k], None, :, y1[k] - 1 : y2[k], x1[k] - 1 : x2[k]], size=(size, size), mode="area")
           for k in torch.nonzero(keep).flatten().tolist()]
    return (torch.cat(out) if out else images.new_zeros(0, 3, size, size)), keep


class MTCNN(nn.Module):
    """The three networks and the cascade; ``face_probability`` gives each image's best face score."""

    def __init__(self, weights: Dict[str, Path]) -> None:
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for name, net in (("pnet", self.pnet), ("rnet", self.rnet), ("onet", self.onet)):
            net.load_state_dict(torch.load(weights[name], map_location="cpu", weights_only=True))
        self.eval()

    @torch.no_grad()
    def face_probability(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC RGB -> the highest O-Net face probability per image (0 where no box survives)."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        best = torch.zeros(len(x))
        boxes, owner = self._propose(x)
        for size, net in ((24, self.rnet), (48, self.onet)):
            if not len(boxes):
                return best.numpy()
            crops, keep = _crops(x, boxes, owner, size)
            boxes, owner = boxes[keep], owner[keep]
            reg, prob = net(_normalise(crops))
            ok = prob > THRESHOLDS[1 if net is self.rnet else 2]
            boxes, owner, reg, prob = boxes[ok], owner[ok], reg[ok], prob[ok]
            if net is self.onet:
                return best.scatter_reduce(0, owner, prob, reduce="amax").numpy()
            pick = batched_nms(boxes, prob, owner, 0.7)
            boxes, owner = _square(_regress(boxes[pick], reg[pick], plus_one=True)), owner[pick]
        return best.numpy()

    def _propose(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """P-Net over the image pyramid: candidate boxes (x1, y1, x2, y2) and the image each belongs to."""
        h, w = x.shape[2:]
        scale, smallest = 12.0 / MIN_FACE, min(h, w) * 12.0 / MIN_FACE
        found: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        while smallest >= 12:
            reg, prob = self.pnet(_normalise(F.interpolate(x, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")))
            hit = prob >= THRESHOLDS[0]
            where = hit.nonzero()  # (image, row, col) of each 12-px cell that passed
            cell = where[:, [2, 1]].float()  # (x, y)
            boxes = torch.cat([((2 * cell + 1) / scale).floor(), ((2 * cell + 12) / scale).floor()], 1)
            score, offsets = prob[hit], reg.permute(0, 2, 3, 1)[hit]
            pick = batched_nms(boxes, score, where[:, 0], 0.5)
            found.append((boxes[pick], score[pick], offsets[pick], where[pick, 0]))
            scale, smallest = scale * SCALE_STEP, smallest * SCALE_STEP
        if not found:
            return torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
        boxes, score, offsets, owner = (torch.cat(t) for t in zip(*found))
        pick = batched_nms(boxes, score, owner, 0.7)
        return _square(_regress(boxes[pick], offsets[pick], plus_one=False)), owner[pick]
