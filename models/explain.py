"""Grad-CAM (Selvaraju et al., 2017): which pixels drove a classifier's decision.

The activations A (B, K, h, w) of a late conv stage are weighted by the gradient of the chosen
class's logit, averaged over each channel's positions (w_k = mean_hw dy_c / dA_k); the map is
ReLU(sum_k w_k A_k), bilinearly upsampled to the model's input and scaled to [0, 1] per image
(0 everywhere when nothing speaks for the class). ``heatmap_on_image`` takes it from the
letterboxed input back to the original image's pixels (peak 1 over the image).

Serving runs models under ``torch.inference_mode``; ``grad_cam`` leaves it for its own forward
pass, with gradients on. The hook it sets lives only for that pass, and acts only on the calling
thread's forward, so other threads running the same model meanwhile are untouched. Gradients go
to the activations only (``torch.autograd.grad``), so no parameter's ``.grad`` is written.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.errors import InvalidInputError
from models.preprocessing import letterbox_geometry


def grad_cam(
    model: nn.Module, layer: nn.Module, batch: torch.Tensor, targets: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, C), maps float (B, H, W) in [0, 1]) for ``batch`` (B, 3, H, W) on the model's
    device; each map explains ``targets[b]`` (default: the most probable class). ``layer`` is the
    module whose output (B, K, h, w) is explained (models.classification.cam_layer)."""
    owner, seen = threading.get_ident(), []

    def keep(module: nn.Module, args: object, output: object) -> torch.Tensor | None:
        if threading.get_ident() != owner:  # another thread's forward of the same model
            return None
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise InvalidInputError(f"Grad-CAM needs a (B, K, h, w) feature map; {type(module).__name__} gave another")
        seen.append(output.detach().requires_grad_(True))
        return seen[-1]  # the rest of the forward builds its graph from here

    handle = layer.register_forward_hook(keep)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            logits = model(batch.clone())  # clone: an inference tensor cannot enter a graph
            if not seen:
                raise InvalidInputError(f"Grad-CAM's layer ({type(layer).__name__}) did not run in the forward pass")
            chosen = logits.argmax(1) if targets is None else torch.as_tensor(targets, device=logits.device)
            (grads,) = torch.autograd.grad(logits.gather(1, chosen.view(-1, 1)).sum(), seen[-1])
            activations = seen[-1].detach()
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    maps = F.relu((weights * activations).sum(1, keepdim=True))
    maps = F.interpolate(maps, size=batch.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = maps.flatten(1).amax(1).clamp_min(1e-12)
    return logits.detach(), (maps / peak.view(-1, 1, 1)).clamp(0, 1)


def heatmap_on_image(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A map over the letterboxed model input (S, S) -> float32 (height, width) over the original
    image of ``shape``: the padding cut off, the rest resized and scaled to a peak of 1 again
    (the padding may have held the peak). A map already at ``shape`` (a served one, or an image
    that was S x S) is returned as it is."""
    height, width = shape
    if heatmap.shape == (height, width):
        return heatmap.astype(np.float32, copy=False)
    _, (new_w, new_h), (pad_x, pad_y) = letterbox_geometry((height, width), size=heatmap.shape[:2])
    inside = np.ascontiguousarray(heatmap[pad_y : pad_y + new_h, pad_x : pad_x + new_w], dtype=np.float32)
    resized = cv2.resize(inside, (width, height), interpolation=cv2.INTER_LINEAR).clip(0, None)
    return resized / resized.max() if resized.max() > 0 else resized


def heatmap_png_pixels(heatmap: np.ndarray) -> np.ndarray:
    """A [0, 1] map -> uint8 (0..255), as a one-channel PNG carries it."""
    return (heatmap * 255).round().clip(0, 255).astype(np.uint8)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """``image`` (RGB uint8 (H, W, 3)) with ``heatmap`` (H, W) in [0, 1] blended on in the jet colour
    map (blue: nothing, red: the most), more opaque where the map is higher."""
    colours = cv2.cvtColor(cv2.applyColorMap(heatmap_png_pixels(heatmap), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    weight = alpha * (0.35 + 0.65 * heatmap[..., None])
    return (image * (1 - weight) + colours * weight).round().clip(0, 255).astype(np.uint8)
