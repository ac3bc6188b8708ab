"""The benchmark's comparison methods, all black-box through the same adapter except Grad-CAM.

Every function takes an image already at the classifier's input size (float32 (H, W, C) in [0, 1]),
the adapter, the target class, a query budget and an ``np.random.Generator``, and returns a saliency
map (H, W) where larger means more evidence for the target. Patch-based methods use the same
:class:`~blackbox_lime.patches.PatchGrid` and the same smooth upsampling as MedLIME, so the
comparison isolates the attribution method, not the rendering.

- :func:`patch_lime`: classic LIME on the patch grid (lime's sampling, cosine kernel of width 0.25 and
  ridge regression), with mean fill: MedLIME's grid without GM and without its surrogate.
- :func:`lime_package`: the ``lime`` package's ``LimeImageExplainer`` with its defaults (quickshift).
- :func:`rise`: RISE (Petsiuk et al. 2018): random low-resolution binary masks, bilinearly upsampled
  with random shifts, multiplied into the image; saliency = E[P(target) * mask] / p.
- :func:`kernel_shap`: KernelSHAP on the patch grid, with the Shapley kernel, the empty and full
  coalitions, and the efficiency constraint; hidden patches are filled with the mean, or inpainted
  with OpenCV's Telea method per coalition (``fill="telea"``, as shap's default image masker).
- :func:`occlusion`: one query per patch filled with the mean; saliency = P(image) - P(occluded).
- :func:`random_map`: the floor.
- :func:`gradcam_torch`: white-box Grad-CAM on the shipped torch weights (CNN: last conv block; ViT:
  the last block's patch tokens). Needs the ``train`` extra (torch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from blackbox_lime.adapters.base import ClassifierAdapter
from blackbox_lime.patches import PatchGrid



def _compose(image: np.ndarray, grid: PatchGrid, visible: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """visible: bool (n, P) -> images (n, H, W, C) with hidden patches replaced by ``fill`` (H, W, C)."""
    hidden = grid.hidden_pixels(visible)[..., None]  # (n, H, W, 1)
    return np.where(hidden, fill[None], image[None]).astype(np.float32)


def _telea(image: np.ndarray, grid: PatchGrid, visible: np.ndarray) -> np.ndarray:
    """visible: bool (n, P) -> images (n, H, W, C) with hidden patches inpainted (Telea, radius 3: GM's "telea"
    fill, :class:`~blackbox_lime.fill.fillers.InpaintFiller`)."""
    from blackbox_lime.fill.fillers import InpaintFiller

    hidden = grid.hidden_pixels(visible)
    fills = InpaintFiller().fill(image.astype(np.float32), hidden)
    return np.where(hidden[..., None], fills, image[None]).astype(np.float32)


def _query_masks(adapter: ClassifierAdapter, image: np.ndarray, grid: PatchGrid, visible: np.ndarray,
                 fill: np.ndarray | str, target: int | None, chunk: int = 64) -> np.ndarray:
    """P(target) for each row of ``visible`` (n,), or every class's (n, K) with ``target=None``; ``fill`` is an
    image (H, W, C) or "telea"."""
    out = []
    for i in range(0, visible.shape[0], chunk):
        v = visible[i:i + chunk]
        batch = _telea(image, grid, v) if isinstance(fill, str) else _compose(image, grid, v, fill)
        out.append(adapter.predict(batch))
    probs = np.concatenate(out)
    return probs if target is None else probs[:, target]


def _mean_fill(image: np.ndarray) -> np.ndarray:
    return np.broadcast_to(image.mean(axis=(0, 1), keepdims=True), image.shape).astype(np.float32)


def patch_lime(image: np.ndarray, adapter: ClassifierAdapter, target: int, budget: int, rng: np.random.Generator,
               patch: int = 16, kernel_width: float = 0.25, alpha: float = 1.0) -> np.ndarray:
    """Classic LIME on the patch grid with mean fill (lime's sampling, kernel and ridge)."""
    w = patch_lime_weights(image, adapter, target, budget, rng, patch, kernel_width, alpha)
    return PatchGrid(image.shape[0], image.shape[1], patch).upsample(w, image.shape[:2])


def patch_lime_weights(image: np.ndarray, adapter: ClassifierAdapter, target: int, budget: int,
                       rng: np.random.Generator, patch: int = 16, kernel_width: float = 0.25,
                       alpha: float = 1.0) -> np.ndarray:
    """The patch coefficients (P,) of :func:`patch_lime`."""
    h, w, _ = image.shape
    grid = PatchGrid(h, w, patch)
    p = grid.n_patches
    visible = np.ones((budget, p), bool)
    for i in range(1, budget):  # the first sample is the image itself, as in lime
        off = rng.choice(p, rng.integers(1, p), replace=False)
        visible[i, off] = False
    y = _query_masks(adapter, image, grid, visible, _mean_fill(image), target)
    x = visible.astype(np.float64)
    cos = x.sum(axis=1) / (np.sqrt(x.sum(axis=1)) * math.sqrt(p) + 1e-12)  # cosine similarity to all-ones
    d = 1.0 - cos
    sw = np.sqrt(np.exp(-(d ** 2) / kernel_width ** 2))
    xm = np.c_[np.ones(budget), x] * sw[:, None]
    reg = alpha * np.eye(p + 1)
    reg[0, 0] = 0.0  # no penalty on the intercept
    coef = np.linalg.solve(xm.T @ xm + reg, xm.T @ (y * sw))
    return coef[1:]


def lime_package(image: np.ndarray, adapter: ClassifierAdapter, target: int, budget: int, rng: np.random.Generator,
                 batch_size: int = 64) -> np.ndarray:
    """The ``lime`` package (quickshift segments, its kernel and ridge), ``num_samples=budget``."""
    return lime_package_labels(image, adapter, [target], budget, rng, batch_size)[target]


def lime_package_labels(image: np.ndarray, adapter: ClassifierAdapter, targets: list[int], budget: int,
                        rng: np.random.Generator, batch_size: int = 64) -> dict[int, np.ndarray]:
    """The ``lime`` package for several labels at once: one set of ``budget`` samples, a ridge fit per label
    (as its ``labels=``/``top_labels`` do). -> {target: saliency (H, W)}."""
    from lime import lime_image

    seed = int(rng.integers(0, 2**31 - 1))
    explainer = lime_image.LimeImageExplainer(random_state=seed)
    exp = explainer.explain_instance(image.astype(np.float64), lambda x: adapter.predict(x.astype(np.float32)),
                                     labels=tuple(targets), top_labels=None, hide_color=None, num_samples=budget,
                                     batch_size=batch_size, random_seed=seed)
    out = {}
    for target in targets:
        sal = np.zeros(exp.segments.shape, np.float32)
        for seg, weight in exp.local_exp[target]:
            sal[exp.segments == seg] = weight
        out[target] = sal
    return out


def rise(image: np.ndarray, adapter: ClassifierAdapter, target: int, budget: int, rng: np.random.Generator,
         cells: int = 7, p_keep: float = 0.5, chunk: int = 64) -> np.ndarray:
    """RISE with ``budget`` masks of ``cells`` x ``cells`` cells, zero (black) background."""
    import cv2

    h, w, _ = image.shape
    ch, cw = math.ceil(h / cells), math.ceil(w / cells)
    up_h, up_w = (cells + 1) * ch, (cells + 1) * cw
    acc = np.zeros((h, w), np.float64)
    for i in range(0, budget, chunk):
        n = min(chunk, budget - i)
        grids = (rng.random((n, cells, cells)) < p_keep).astype(np.float32)
        masks = np.empty((n, h, w), np.float32)
        for j in range(n):
            big = cv2.resize(grids[j], (up_w, up_h), interpolation=cv2.INTER_LINEAR)
            dy, dx = int(rng.integers(0, ch)), int(rng.integers(0, cw))
            masks[j] = big[dy:dy + h, dx:dx + w]
        probs = adapter.predict(image[None] * masks[..., None])[:, target]
        acc += np.tensordot(probs, masks, axes=1)
    return (acc / (budget * p_keep)).astype(np.float32)


def _shapley_sizes(p: int) -> np.ndarray:
    """Probability of coalition size s (1..p-1) under the Shapley kernel."""
    s = np.arange(1, p)
    w = (p - 1) / (s * (p - s))
    return w / w.sum()


def kernel_shap(image: np.ndarray, adapter: ClassifierAdapter, target: int, budget: int, rng: np.random.Generator,
                patch: int = 16, fill: str = "mean") -> np.ndarray:
    """KernelSHAP on the patch grid (fill "mean" or "telea"); ``budget`` includes the empty and full coalitions."""
    phi = kernel_shap_values(image, adapter, target, budget, rng, patch, fill)
    return PatchGrid(image.shape[0], image.shape[1], patch).upsample(phi, image.shape[:2])


def kernel_shap_values(image: np.ndarray, adapter: ClassifierAdapter, target: int, budget: int,
                       rng: np.random.Generator, patch: int = 16, fill: str = "mean") -> np.ndarray:
    """The Shapley value estimates (P,) of :func:`kernel_shap`; they sum to f(image) - f(all filled)."""
    if fill not in ("mean", "telea"):
        raise ValueError(f"The 'fill' parameter must be 'mean' or 'telea'. Got {fill!r} instead.")
    h, w, _ = image.shape
    grid = PatchGrid(h, w, patch)
    p = grid.n_patches
    fill_with: np.ndarray | str = _mean_fill(image) if fill == "mean" else "telea"
    base = _query_masks(adapter, image, grid, np.array([np.zeros(p, bool), np.ones(p, bool)]), fill_with, target)
    f0, f1 = base[0], base[1]
    n = max(budget - 2, 1)
    sizes = rng.choice(np.arange(1, p), size=n, p=_shapley_sizes(p))
    z = np.zeros((n, p), bool)
    for i, s in enumerate(sizes):
        z[i, rng.choice(p, s, replace=False)] = True
    y = _query_masks(adapter, image, grid, z, fill_with, target) - f0
    # Sampling by the kernel's size distribution makes the regression unweighted; the efficiency
    # constraint sum(phi) = f1 - f0 eliminates the last coefficient.
    x = z.astype(np.float64)
    total = f1 - f0
    xr = x[:, :-1] - x[:, -1:]
    yr = y - x[:, -1] * total
    phi_head, *_ = np.linalg.lstsq(xr, yr, rcond=None)
    return np.r_[phi_head, total - phi_head.sum()]


def occlusion(image: np.ndarray, adapter: ClassifierAdapter, target: int, patch: int = 16,
              sigma: float = 0.0) -> np.ndarray:
    """One query per patch (mean fill) plus the image: P(image) - P(patch occluded). ``sigma``: smoothed as the
    default map is (``ExplainConfig.map_sigma``, in patches)."""
    d = occlusion_deltas(image, adapter, target, patch)
    return PatchGrid(image.shape[0], image.shape[1], patch).upsample(d, image.shape[:2], sigma)


def occlusion_deltas(image: np.ndarray, adapter: ClassifierAdapter, target: int | None, patch: int = 16) -> np.ndarray:
    """P(image) - P(patch j filled with the mean), per patch (P,); every class's (P, K) with ``target=None``."""
    h, w, _ = image.shape
    grid = PatchGrid(h, w, patch)
    p = grid.n_patches
    visible = np.ones((p + 1, p), bool)
    visible[np.arange(1, p + 1), np.arange(p)] = False
    y = _query_masks(adapter, image, grid, visible, _mean_fill(image), target)
    return y[0] - y[1:]


def random_map(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.random(image.shape[:2]).astype(np.float32)


# -- white-box reference ---------------------------------------------------------------------------


def load_torch_classifier(arch: str) -> Any:
    """The shipped torch weights (``onnx/demo_cnn.pt`` / ``demo_vit.pt``) in eval mode. Needs torch."""
    import sys

    import torch

    from blackbox_lime.models import _SOURCE_DIR

    if str(_SOURCE_DIR) not in sys.path:
        sys.path.insert(0, str(_SOURCE_DIR))
    from common import DemoCNN, DemoViT  # type: ignore[import-not-found]

    model = DemoCNN() if arch == "cnn" else DemoViT()
    state = torch.load(_SOURCE_DIR / f"demo_{arch}.pt", map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    model.load_state_dict(state)
    return model.eval()


def gradcam_torch(image: np.ndarray, model: Any, target: int, arch: str) -> np.ndarray:
    """Grad-CAM: ReLU(sum_k mean(dy/dA_k) A_k) on the last conv block (CNN) or the last block's
    patch tokens reshaped to the 14 x 14 grid (ViT), upsampled bilinearly to the image."""
    import cv2
    import torch

    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float()
    feats: list[torch.Tensor] = []
    layer = model.features if arch == "cnn" else model.blocks[-1]
    handle = layer.register_forward_hook(lambda m, i, o: feats.append(o))
    try:
        with torch.enable_grad():
            logits = model(x)
            a = feats[0]
            a.retain_grad()
            logits[0, target].backward()
    finally:
        handle.remove()
    g = a.grad
    assert g is not None, "the backward pass reached the hooked activation"
    if arch == "cnn":  # (1, C, h, w)
        weights = g.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * a).sum(dim=1))[0]
    else:  # (1, T, D): drop the class token if there is one, keep the last h*w patch tokens
        side = int(math.isqrt(a.shape[1]))
        tokens, grads = a[0, -side * side:], g[0, -side * side:]
        cam = torch.relu((grads.mean(dim=0, keepdim=True) * tokens).sum(dim=1)).reshape(side, side)
    cam_np = cam.detach().numpy().astype(np.float32)
    return cv2.resize(cam_np, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
