"""Class activation maps (pytorch-grad-cam) for our timm models: method registry, target layer, batching.

Our code decides three things the library leaves open: which layer to explain (chosen per timm
family, overridable with ``cam.target_layer``), which output to explain (one map per class from
that class's logit, for multilabel and multiclass heads alike: the pre-sigmoid / pre-softmax score
``y^c`` of the Grad-CAM paper), and how images become model input: the checkpoint's own
``model.inference.Preprocess``, always passed in (for a run, ``clf.model`` and ``clf.preprocess``
of its ``Classifier``). Maps are computed in float32, without the checkpoint's autocast dtype:
the gradients a map is made of are too coarse in bf16/fp16 on small feature maps, and pytorch-grad-cam
expects float32 activations. Every object holding hooks lives inside ``with`` so the hooks are
released after each use, even on error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from tqdm.auto import tqdm

from cxr_helpers.model.inference import Preprocess

METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
    "layercam": LayerCAM,
    "xgradcam": XGradCAM,
    "ablationcam": AblationCAM,
}
METHOD_LABELS = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "hirescam": "HiResCAM",
    "eigencam": "EigenCAM",
    "scorecam": "Score-CAM",
    "layercam": "LayerCAM",
    "xgradcam": "XGrad-CAM",
    "ablationcam": "Ablation-CAM",
}
SHARED_PASS = {
    "gradcam",
    "gradcam++",
    "hirescam",
    "xgradcam",
    "layercam",
    "eigencam",
}  # first principal component of the activations: same map for every class

# timm class name -> dotted path of the layer to explain at full depth (the last spatial feature map).
FAMILY_LAYERS: dict[str, Sequence[str]] = {
    "ResNet": ("layer4",),
    "DenseNet": ("features.norm5", "features.denseblock4"),
    "ConvNeXt": ("stages.-1",),
    "EfficientNet": ("bn2", "conv_head"),
    "RegNet": ("s4",),
    "MobileNetV3": ("blocks.-1",),
}
MIN_REDUCTION = 8  # never fall back to layers finer than stride 8: their maps are edges, not findings


class CamError(ValueError):
    """A CAM setting (method, target layer) is invalid; the message says which key to change."""


def method_class(name: str) -> type:
    """The pytorch-grad-cam class for a config method name (``gradcam``, ``gradcam++``, ...)."""
    key = name.strip().lower()
    if key not in METHODS:
        raise CamError(f"cam.methods: unknown method '{name}' (choose from: {', '.join(METHODS)})")
    return METHODS[key]


def get_module(model: torch.nn.Module, dotted: str) -> torch.nn.Module:
    """Resolve ``"layer4"``, ``"stages.-1"`` or ``"features.norm5"`` to a submodule (negative indices ok)."""
    mod = model
    for part in dotted.split("."):
        try:
            if part.lstrip("-").isdigit():
                mod = mod[int(part)]  # type: ignore[index]
            else:
                mod = getattr(mod, part)
        except (AttributeError, IndexError, TypeError, KeyError):
            raise CamError(
                f"cam.target_layer: '{dotted}' not found in {type(model).__name__} "
                f"(candidates: {', '.join(candidate_layers(model))})"
            ) from None
        if not isinstance(mod, torch.nn.Module):
            raise CamError(f"cam.target_layer: '{dotted}' is not a module in {type(model).__name__}")
    return mod


def candidate_layers(model: torch.nn.Module, limit: int = 8) -> list[str]:
    """Names of late, coarse modules worth explaining (the last top-level children and feature stages)."""
    names = []
    info = getattr(model, "feature_info", None)
    if info is not None:
        try:
            names += [f["module"] for f in info][-3:]
        except (KeyError, TypeError):
            pass
    names += [n for n, _ in model.named_children()][-limit:]
    seen: list[str] = []
    for n in names:
        if n and n not in seen:
            seen.append(n)
    return seen[:limit]


def _output_is_spatial(model: torch.nn.Module, layer: torch.nn.Module, in_chans: int, size: int) -> bool:
    shapes: list[tuple[int, ...]] = []
    handle = layer.register_forward_hook(
        lambda m, i, o: shapes.append(tuple(o.shape)) if torch.is_tensor(o) else None
    )
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, size, size, device=next(model.parameters()).device))
        model.train(was_training)
    finally:
        handle.remove()
    return bool(shapes) and len(shapes[-1]) == 4


def _shallower_stages(model: torch.nn.Module) -> list[tuple[str, int]]:
    """timm ``feature_info`` stages ``(module, reduction)``, deepest first, down to stride MIN_REDUCTION."""
    info = getattr(model, "feature_info", None)
    try:
        stages = [(f["module"], int(f["reduction"])) for f in info]  # type: ignore[union-attr]
    except (KeyError, TypeError, ValueError):
        return []
    return [(m, r) for m, r in reversed(stages) if r >= MIN_REDUCTION]


def find_target_layer(
    model: torch.nn.Module,
    override: Optional[str] = None,
    in_chans: Optional[int] = None,
    image_size: int = 224,
    min_cells: int = 4,
) -> tuple[str, torch.nn.Module]:
    """The layer to explain: ``override`` (``cam.target_layer``) if given, else chosen for the family.

    Automatic choice: the family's last feature map (ResNet ``layer4``, DenseNet ``features.norm5``,
    ConvNeXt ``stages[-1]``, EfficientNet ``bn2``, ...) when it has at least ``min_cells`` cells a side
    at ``image_size``; otherwise the deepest earlier stage (timm ``feature_info``, stride >= 8) that
    does, since a 2 x 2 map cannot point at anything (resnet18 at 64 px -> ``layer3``, 4 x 4).
    Unknown families use ``feature_info`` when its last stage is a 4-D map, else one CamError line
    naming ``cam.target_layer`` and candidate modules. Returns ``(dotted_name, module)``.
    """
    if override:
        return override, get_module(model, override)
    family = type(model).__name__
    stages = _shallower_stages(model)
    deepest_reduction = stages[0][1] if stages else 32
    candidates: list[tuple[str, int]] = []
    for dotted in FAMILY_LAYERS.get(family, ()):
        try:
            get_module(model, dotted)
            candidates.append((dotted, deepest_reduction))
            break
        except CamError:
            continue
    if not candidates and stages:
        try:
            layer = get_module(model, stages[0][0])
            if in_chans is None:
                in_chans = _first_conv_in_chans(model)
            if _output_is_spatial(model, layer, in_chans, image_size):
                candidates.append(stages[0])
        except (CamError, RuntimeError):
            pass
    if not candidates:
        raise CamError(
            f"cam.target_layer: no automatic CAM layer for model family {family}; set cam.target_layer "
            f"to a dotted module path with a (B, C, H, W) output (candidates: {', '.join(candidate_layers(model))})"
        )
    candidates += [s for s in stages if s[1] < candidates[0][1]]
    chosen = next((c for c in candidates if image_size // c[1] >= min_cells), candidates[-1])
    return chosen[0], get_module(model, chosen[0])


def _first_conv_in_chans(model: torch.nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return int(m.in_channels)
    return 3


def feature_map_size(
    model: torch.nn.Module, layer: torch.nn.Module, in_chans: int, image_size: int
) -> tuple[int, int]:
    """(h, w) of ``layer``'s output for a square ``image_size`` input: the CAM's true resolution."""
    shapes: list[tuple[int, ...]] = []
    handle = layer.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, image_size, image_size, device=next(model.parameters()).device))
    finally:
        handle.remove()
        model.train(was_training)
    return (int(shapes[-1][-2]), int(shapes[-1][-1])) if shapes and len(shapes[-1]) == 4 else (0, 0)


@contextmanager
def cam_extractor(
    model: torch.nn.Module, method: str, target_layer: torch.nn.Module, batch_size: int = 32
) -> Iterator[object]:
    """A pytorch-grad-cam object whose hooks are removed on exit.

    Unlike the library's own ``__exit__`` (which silently swallows IndexError), errors propagate.
    """
    cls = method_class(method)
    kwargs = {"batch_size": batch_size} if cls is AblationCAM else {}
    cam = cls(model=model, target_layers=[target_layer], **kwargs)
    if cls is ScoreCAM:
        cam.batch_size = batch_size
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()
        cam.outputs = None


def compute_cams(
    model: torch.nn.Module,
    images: np.ndarray,
    class_index: Sequence[int] | np.ndarray,
    method: str = "gradcam",
    *,
    preprocess: Preprocess,
    target_layer: Optional[str] = None,
    batch_size: int = 16,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    progress: bool = False,
    min_cells: int = 4,
) -> np.ndarray:
    """One map per (image, class) pair.

    images: uint8 (N, S, S) prepared images; class_index: (N,) ints, the class each map explains
    (its logit is the target); preprocess: the model's input normalisation (``clf.preprocess``).
    Runs in float32 (no autocast). Returns float32 (N, S, S) in [0, 1], each map min-max scaled by
    the library (a map that is zero everywhere stays zero). Hooks exist only while this runs.
    """
    return compute_cams_multi(
        model,
        images,
        class_index,
        [method],
        preprocess=preprocess,
        target_layer=target_layer,
        batch_size=batch_size,
        aug_smooth=aug_smooth,
        eigen_smooth=eigen_smooth,
        progress=progress,
        min_cells=min_cells,
    )[method]


def _library_maps(
    cam: object, x: torch.Tensor, targets: list, acts: np.ndarray, grads: np.ndarray, eigen_smooth: bool
) -> np.ndarray:
    """What ``BaseCAM.forward`` returns for one target layer, from activations/gradients already captured."""
    layer = cam.target_layers[0]  # type: ignore[attr-defined]
    raw = cam.get_cam_image(x, layer, targets, acts, grads, eigen_smooth)  # type: ignore[attr-defined]
    scaled = scale_cam_image(np.maximum(raw, 0), (x.shape[-1], x.shape[-2]))
    return scale_cam_image(np.maximum(scaled, 0))


def compute_cams_multi(
    model: torch.nn.Module,
    images: np.ndarray,
    class_index: Sequence[int] | np.ndarray,
    methods: Sequence[str] = ("gradcam",),
    *,
    preprocess: Preprocess,
    target_layer: Optional[str] = None,
    batch_size: int = 16,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    progress: bool = False,
    min_cells: int = 4,
) -> dict[str, np.ndarray]:
    """``{method: float32 (N, S, S)}`` like ``compute_cams``, sharing one forward/backward pass per batch.

    Grad-CAM, Grad-CAM++, HiResCAM, XGrad-CAM, LayerCAM and EigenCAM differ only in how they weigh
    the same activations and gradients, so one pass serves them all (identical maps, about
    len(methods) times cheaper). Score-CAM, Ablation-CAM and ``aug_smooth`` run their own passes.
    """
    images = np.asarray(images)
    idx = np.asarray(class_index, dtype=int).reshape(-1)
    if images.ndim != 3 or len(idx) != len(images):
        raise ValueError(
            f"compute_cams: images must be (N, S, S) with one class per image, got {images.shape}, {idx.shape}"
        )
    methods = [m.strip().lower() for m in methods]
    for m in methods:
        method_class(m)
    device = next(model.parameters()).device
    _, layer = find_target_layer(model, target_layer, image_size=images.shape[-1], min_cells=min_cells)
    shared = sorted(
        (m for m in methods if m in SHARED_PASS and not aug_smooth), key=lambda m: m == "eigencam"
    )
    out = {m: np.zeros(images.shape, dtype=np.float32) for m in methods}
    was_training = model.training
    jobs = ([shared] if shared else []) + [[m] for m in methods if m not in shared]
    for group in jobs:
        starts = range(0, len(images), batch_size)
        if progress:
            starts = tqdm(starts, desc=", ".join(METHOD_LABELS.get(m, m) for m in group), leave=False)
        with (
            cam_extractor(model, group[0], layer, batch_size=max(batch_size, 32)) as cam,
            torch.enable_grad(),
        ):
            others = {m: _unhooked(model, m, layer) for m in group[1:]}
            for s in starts:
                x = preprocess(images[s : s + batch_size], device)
                x.requires_grad_(True)  # gradients reach the target layer even if the weights are frozen
                targets = [ClassifierOutputTarget(int(k)) for k in idx[s : s + batch_size]]
                maps = cam(input_tensor=x, targets=targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
                out[group[0]][s : s + len(maps)] = np.nan_to_num(maps, nan=0.0)
                if others:
                    ag = cam.activations_and_grads  # type: ignore[attr-defined]
                    acts = ag.activations[0].cpu().numpy()
                    grads = ag.gradients[0].cpu().numpy()
                    for m, obj in others.items():
                        out[m][s : s + len(maps)] = np.nan_to_num(
                            _library_maps(obj, x, targets, acts, grads, eigen_smooth), nan=0.0
                        )
                model.zero_grad(set_to_none=True)
    model.train(was_training)
    return out


def _unhooked(model: torch.nn.Module, method: str, layer: torch.nn.Module) -> object:
    """A library CAM object used only for its weighting of captured tensors (its hooks removed at once)."""
    obj = method_class(method)(model=model, target_layers=[layer])
    obj.activations_and_grads.release()
    return obj
