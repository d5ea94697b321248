"""State-dict naming schemes and pure functions that translate keys between them.

Schemes (``detect_format`` tells them apart by their keys):
    ``ifr``: this project's model (torchvision names in the backbone: ``backbone.body.layer1.0.conv1``,
        ``backbone.fpn.inner_blocks.0.0``; the mask head's block under ``refinement.block``).
    ``cvpods``: cvpods/detectron2 models, e.g. the released IFR checkpoints
        (``backbone.bottom_up.res2.0.conv1``, ``backbone.fpn_lateral2``, ``mask_head.repeat_block``).
        A detectron2 ImageNet backbone (``stem.conv1``, ``res2.0.conv1`` without the prefix) is
        the same scheme with ``backbone.bottom_up.`` left off.
    ``caffe2``: Detectron's ImageNet ``.pkl`` backbones, e.g. MSRA ``R-50.pkl`` (``res2_0_branch2a_w``).
    ``torchvision_resnet``: torchvision's classification ResNet (``layer1.0.conv1.weight``, ``fc.*``).

Everything else (RPN, box heads, predictors) is named identically in ``ifr`` and ``cvpods``, and both
keep the background class last in ``cls_score``, so no tensor is reordered.
"""
from __future__ import annotations

import re

import torch

IFR = "ifr"
CVPODS = "cvpods"
CAFFE2 = "caffe2"
TORCHVISION_RESNET = "torchvision_resnet"

# Inside one bottleneck/basic block: cvpods part -> torchvision part (longest prefixes first).
_BLOCK_PARTS = (
    ("shortcut.norm.", "downsample.1."), ("shortcut.", "downsample.0."),
    ("conv1.norm.", "bn1."), ("conv2.norm.", "bn2."), ("conv3.norm.", "bn3."),
    ("conv1.", "conv1."), ("conv2.", "conv2."), ("conv3.", "conv3."),
)
_FPN_PARTS = (("fpn_lateral", "inner_blocks"), ("fpn_output", "layer_blocks"))
_FIRST_FPN_LEVEL = 2  # fpn_lateral2 (res2) is the FPN's first input: inner_blocks.0
_MASK_BLOCK = ("roi_heads.mask_head.repeat_block.", "roi_heads.mask_head.refinement.block.")
# Whole-prefix renames, cvpods -> ours (the stem's norm before the stem conv: longest first).
_PREFIXES = (("backbone.bottom_up.stem.conv1.norm.", "backbone.body.bn1."),
             ("backbone.bottom_up.stem.conv1.", "backbone.body.conv1."), _MASK_BLOCK)
# The original IFR head's state dict repeats its block: a frozen, one-step-stale copy used only by its
# backward solve, and the DEQ wrapper's references to both blocks. None of it carries information.
_MASK_HEAD_ALIASES = ("roi_heads.mask_head.repeat_block_copy.", "roi_heads.mask_head.deq.func.",
                      "roi_heads.mask_head.deq.func_copy.")
_C2_NORM_RULES = (
    (r"bn\.s$", "norm.weight"), (r"bn\.bias$", "norm.bias"), (r"bn\.rm$", "norm.running_mean"),
    (r"bn\.running\.mean$", "norm.running_mean"), (r"bn\.riv$", "norm.running_var"),
    (r"bn\.running\.var$", "norm.running_var"), (r"bn\.gamma$", "norm.weight"), (r"bn\.beta$", "norm.bias"),
    (r"gn\.s$", "norm.weight"), (r"gn\.bias$", "norm.bias"),
)
# Caffe2 ImageNet blobs without a counterpart: the classifier, and the stem conv's bias (the
# stem conv has none in cvpods either), plus optimiser momenta.
_C2_UNUSED = re.compile(r"^fc1000_|^conv1_b$|_momentum$")
# cvpods' FrozenBN buffers before any checkpoint is loaded (ImageNet .pkl files carry no statistics).
FROZEN_BN_RUNNING_VAR = 1.0 - 1e-5


def detect_format(keys) -> str:
    """The naming scheme of a state dict, from its keys."""
    keys = list(keys)
    if any(k.startswith(("backbone.bottom_up.", "backbone.fpn_lateral", "stem.conv1.", "res2.0."))
           or k.startswith(_MASK_BLOCK[0]) for k in keys):
        return CVPODS
    if any(re.match(r"res\d_\d+_branch|res_conv1_bn_|conv1_w$", k) for k in keys):
        return CAFFE2
    if any(k.startswith("layer1.0.") for k in keys):
        return TORCHVISION_RESNET
    return IFR


def is_mask_head_alias(cvpods_key: str) -> bool:
    """True for the original IFR head's redundant copies of its block (see ``_MASK_HEAD_ALIASES``)."""
    return cvpods_key.startswith(_MASK_HEAD_ALIASES)


def _replace_prefix(key: str, pairs) -> str | None:
    """``key`` with the first matching ``(old, new)`` prefix replaced, or None if none matches."""
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def cvpods_to_ifr_key(key: str) -> str:
    """One cvpods key -> this project's key (unchanged where both schemes agree)."""
    if key.startswith(("stem.", "res")):
        key = "backbone.bottom_up." + key
    renamed = _replace_prefix(key, _PREFIXES)
    if renamed is not None:
        return renamed
    match = re.fullmatch(r"backbone\.bottom_up\.res(\d)\.(\d+)\.(.+)", key)
    if match:
        stage, block, rest = int(match[1]), match[2], match[3]
        for cv_part, tv_part in _BLOCK_PARTS:
            if rest.startswith(cv_part):
                return f"backbone.body.layer{stage - 1}.{block}.{tv_part}{rest[len(cv_part):]}"
    match = re.fullmatch(r"backbone\.(fpn_lateral|fpn_output)(\d)\.(norm\.)?(.+)", key)
    if match:
        blocks = dict(_FPN_PARTS)[match[1]]
        part = 1 if match[3] else 0  # torchvision's Conv2dNormActivation: 0 the conv, 1 its norm
        return f"backbone.fpn.{blocks}.{int(match[2]) - _FIRST_FPN_LEVEL}.{part}.{match[4]}"
    return key


def ifr_to_cvpods_key(key: str) -> str:
    """One key of this project's model -> its cvpods name (the inverse of ``cvpods_to_ifr_key``)."""
    renamed = _replace_prefix(key, [(new, old) for old, new in _PREFIXES])
    if renamed is not None:
        return renamed
    match = re.fullmatch(r"backbone\.body\.layer(\d)\.(\d+)\.(.+)", key)
    if match:
        stage, block, rest = int(match[1]), match[2], match[3]
        for cv_part, tv_part in _BLOCK_PARTS:
            if rest.startswith(tv_part):
                return f"backbone.bottom_up.res{stage + 1}.{block}.{cv_part}{rest[len(tv_part):]}"
    match = re.fullmatch(r"backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d)\.([01])\.(.+)", key)
    if match:
        prefix = {tv: cv for cv, tv in _FPN_PARTS}[match[1]]
        norm = "norm." if match[3] == "1" else ""
        return f"backbone.{prefix}{int(match[2]) + _FIRST_FPN_LEVEL}.{norm}{match[4]}"
    return key


def caffe2_to_cvpods_key(key: str) -> str:
    """Detectron/Caffe2 ImageNet names -> cvpods names, by detectron2's ``convert_basic_c2_names``
    rules (e.g. ``res2_0_branch2a_bn_s`` -> ``backbone.bottom_up.res2.0.conv1.norm.weight``)."""
    key = key.replace("_", ".")
    key = re.sub(r"\.b$", ".bias", key)
    key = re.sub(r"\.w$", ".weight", key)
    for pattern, replacement in _C2_NORM_RULES:
        key = re.sub(pattern, replacement, key)
    key = re.sub(r"^res\.conv1\.norm\.", "conv1.norm.", key)
    key = re.sub(r"^conv1\.", "stem.conv1.", key)
    for c2_part, cv_part in ((".branch1.", ".shortcut."), (".branch2a.", ".conv1."),
                             (".branch2b.", ".conv2."), (".branch2c.", ".conv3.")):
        key = key.replace(c2_part, cv_part)
    return "backbone.bottom_up." + key


def convert_to_ifr(state: dict[str, torch.Tensor], source_format: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Renames a state dict of ``source_format`` to this project's names.

    Returns the renamed state and the source keys it dropped on purpose (the original IFR head's
    redundant block copies; torchvision's ``fc`` classifier and BN step counters; Caffe2's
    classifier, stem-conv bias and optimiser momenta). ImageNet ``.pkl`` backbones get cvpods' initial FrozenBN statistics (mean 0, variance
    1 - 1e-5) for every normalisation they carry, as cvpods leaves them.
    """
    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if source_format == IFR:
            renamed[key] = value
        elif source_format == CVPODS:
            if is_mask_head_alias(key):
                dropped.append(key)
            else:
                renamed[cvpods_to_ifr_key(key)] = value
        elif source_format == CAFFE2:
            if _C2_UNUSED.search(key):
                dropped.append(key)
            else:
                renamed[cvpods_to_ifr_key(caffe2_to_cvpods_key(key))] = value
        elif source_format == TORCHVISION_RESNET:
            if key.startswith("fc.") or key.endswith("num_batches_tracked"):
                dropped.append(key)
            else:
                renamed["backbone.body." + key] = value
        else:
            raise ValueError(f"unknown state-dict format {source_format!r}")
    if source_format == CAFFE2:
        for key in [k for k in renamed if re.search(r"\.bn\d\.weight$|\.downsample\.1\.weight$", k)]:
            stem = key[: -len("weight")]
            renamed.setdefault(stem + "running_mean", torch.zeros_like(renamed[key]))
            renamed.setdefault(stem + "running_var", torch.full_like(renamed[key], FROZEN_BN_RUNNING_VAR))
    return renamed, dropped


def _weight_norm_weight(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The original's weight-norm formula: w = v * g / ||v|| (norm over all but dim 0)."""
    return v * (g / v.reshape(v.shape[0], -1).norm(dim=1).view(-1, *([1] * (v.dim() - 1))))


def ifr_to_cvpods(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This project's state dict -> cvpods names, key for key as the original code saves it.

    For the IFR head the original's redundant entries are written too (``repeat_block_copy`` with
    the plain weights the weight-norm parameters give, and the ``deq.func``/``deq.func_copy``
    references), so the result has exactly the released checkpoints' keys.
    """
    out = {ifr_to_cvpods_key(k): v for k, v in state.items()}
    block = _MASK_BLOCK[0]
    if block + "conv1.weight_g" not in out:
        return out
    copy = {}
    for key in [k for k in out if k.startswith(block)]:
        name = key[len(block):]
        if name.endswith(".weight_g"):
            conv = name[: -len(".weight_g")]
            copy[conv + ".weight"] = _weight_norm_weight(out[key], out[block + conv + ".weight_v"])
        elif not name.endswith(".weight_v"):
            copy[name] = out[key]
    head = "roi_heads.mask_head."
    for name, value in copy.items():
        out[head + "repeat_block_copy." + name] = value
        out[head + "deq.func_copy." + name] = value
    for key in [k for k in out if k.startswith(block)]:
        out[head + "deq.func." + key[len(block):]] = out[key]
    return out
