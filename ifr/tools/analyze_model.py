"""pods_analyze: parameters and FLOPs of an experiment folder's model, per component, and its mask head
against Mask R-CNN's 4-conv head.

    cd mask_rcnn.ifr.res50.fpn.coco.multiscale.1x && sh pods_analyze.sh [--rois 100] [KEY VALUE ...]
    sh pods_analyze.sh --input photos/ MODEL.WEIGHTS output/model_final.pth   # solver steps on real RoIs
    python -m ifr.tools.analyze_model --quickstart --input datasets/synthetic_shapes/val

FLOPs are torch.utils.flop_counter's: 2 per multiply-add of convolutions and matrix products (norms,
activations, RoIAlign and NMS are not counted), per image at the folder's test size, the box head on
RPN.POST_NMS_TOPK_TEST proposals and the mask head on ``--rois`` detections. A refinement head costs one
block evaluation per step: the tables give one evaluation, the unrolled form (NUM_CONV evaluations) and
the implicit solve at the mean number of steps it takes per RoI, measured on the RoIs the model detects
in ``--input`` images (with trained MODEL.WEIGHTS), else on ``--rois`` random RoI features at
initialisation, or given with ``--steps``. Weights are only read with ``--input``: the counts do not
depend on them.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch
from tabulate import tabulate
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ifr.data import read_image
from ifr.data.transforms import shortest_edge_size
from ifr.deq import EquilibriumRefinement
from ifr.engine.defaults import resolve_device
from ifr.engine.predictor import DefaultPredictor
from ifr.errors import UserError
from ifr.modeling.mask_head import ConvUpsampleMaskHead, RefinementMaskHead, build_conv_mask_head

from .demo import expand_inputs
from .experiment import run_reporting_user_errors
from .trained_model import add_model_arguments, load_tool_config, load_trained_model, parse_tool_arguments

# The paper's claim: IFR's mask head has 30% of the parameters of Mask R-CNN's.
PAPER_PARAMETER_FRACTION = 0.30


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters) of ``module``."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


@torch.no_grad()
def count_flops(fn, *args) -> int:
    """FLOPs of ``fn(*args)`` as torch.utils.flop_counter counts them (2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def padded_test_size(cfg, image_height: int, image_width: int, size_divisibility: int) -> tuple[int, int]:
    """The padded (H, W) the model computes on for an image of that size at the config's test resize."""
    resize = dict(cfg.INPUT.AUG.TEST_PIPELINES)["ResizeShortestEdge"]
    short = resize["short_edge_length"]
    short = short if isinstance(short, int) else max(short)
    height, width = shortest_edge_size(image_height, image_width, short, resize["max_size"])
    pad = lambda n: -(-n // size_divisibility) * size_divisibility  # noqa: E731
    return pad(height), pad(width)


def mask_head_parts(head: nn.Module) -> list[tuple[str, nn.Module]]:
    """The head's layers in order: the 4-conv head's convs or the refinement block's layers, then the
    upsampling ``deconv`` and the ``predictor``."""
    if isinstance(head, ConvUpsampleMaskHead):
        features = [(name, getattr(head, name)) for name in head.conv_names]
    elif isinstance(head, RefinementMaskHead):
        features = [(f"refinement.block.{name}", m) for name, m in head.refinement.block.named_children()]
    else:
        raise UserError(f"pods_analyze knows the conv, weight_sharing and ifr mask heads, not {type(head).__name__}")
    return features + [("deconv", head.deconv), ("predictor", head.predictor)]


def feature_parameters(head: nn.Module) -> int:
    """Parameters of the layers that refine the pooled features (everything but deconv and predictor)."""
    return count_parameters(head)[0] - count_parameters(head.deconv)[0] - count_parameters(head.predictor)[0]


def _roi_features(head: nn.Module, rois: int, resolution: int) -> torch.Tensor:
    """Seeded random pooled features (rois, C, resolution, resolution) of the width the head takes."""
    if isinstance(head, ConvUpsampleMaskHead) and head.conv_names:
        first = getattr(head, head.conv_names[0])
        channels = next(m for m in first.modules() if isinstance(m, nn.Conv2d)).in_channels
    else:  # the refinement keeps the width it is given
        channels = head.deconv.in_channels
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rois, channels, resolution, resolution, generator=generator)
    return head.in_layout(x.to(head.deconv.weight.device))


def block_evaluation_flops(refinement: EquilibriumRefinement, x: torch.Tensor) -> int:
    """FLOPs of one evaluation of the block on the RoIs ``x``."""
    return count_flops(refinement.block, torch.zeros_like(x), x)


def implicit_solve_flops(refinement: EquilibriumRefinement, x: torch.Tensor, steps: int) -> tuple[int, int]:
    """(block FLOPs, solver FLOPs) of a forward solve of exactly ``steps`` steps on the RoIs ``x``
    (tolerance 0, so no RoI stops early): the block is evaluated 1 + steps times; the solver's own
    linear algebra (Broyden's or Anderson's products) is the rest."""
    exact = dataclasses.replace(refinement.solver, max_iter=steps, tol=0.0)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        exact.solve(lambda z: refinement.block(z, x), torch.zeros_like(x))
    block = sum(counter.get_flop_counts().get(type(refinement.block).__name__, {}).values())
    return block, counter.get_total_flops() - block


@torch.no_grad()
def mean_solver_steps_on_images(cfg, model: nn.Module, images: list[str]) -> tuple[float, int]:
    """(mean forward-solve steps per RoI, RoIs) over the detections of ``model`` on ``images``."""
    refinement = model.roi_heads.mask_head.refinement
    steps: list[torch.Tensor] = []
    hook = refinement.register_forward_hook(
        lambda module, inputs, output: steps.append(module.last_stats.sample_steps.float())
        if module.last_stats is not None and inputs[0].shape[0] > 0 else None)
    try:
        predictor = DefaultPredictor(cfg, model)
        for path in images:
            predictor(read_image(path))
    finally:
        hook.remove()
    if not steps:
        raise UserError("the model detects nothing in the --input images (or its head does not solve): pass "
                        "images with objects and the trained MODEL.WEIGHTS")
    all_steps = torch.cat(steps)
    return all_steps.mean().item(), all_steps.numel()


@torch.no_grad()
def mean_solver_steps_on_random_rois(refinement: EquilibriumRefinement, x: torch.Tensor) -> float:
    _, stats = refinement.solver.solve(lambda z: refinement.block(z, x), torch.zeros_like(x))
    return stats.sample_steps.float().mean().item()


@dataclasses.dataclass
class MaskHeadCost:
    """A mask head's parameters and FLOPs on ``rois`` RoIs, by part."""

    name: str
    parameters: int
    feature_parameters: int
    parts: list[tuple[str, int, int]]  # (part, parameters, FLOPs at rois)
    features_flops: float  # the feature layers as run at inference, at rois
    rows: list[tuple[str, float]]  # refinement forms: (form, FLOPs at rois)

    @property
    def total_flops(self) -> float:
        return self.features_flops + sum(flops for name, _, flops in self.parts if name in ("deconv", "predictor"))


def mask_head_cost(name: str, head: nn.Module, rois: int, resolution: int, steps: float | None) -> MaskHeadCost:
    x = _roi_features(head, rois, resolution)
    parts = []
    if isinstance(head, ConvUpsampleMaskHead):
        for part, module in mask_head_parts(head)[:-2]:
            parts.append((part, count_parameters(module)[0], count_flops(module, x)))
            x = module(x)
        features_flops, rows = float(sum(f for _, _, f in parts)), []
    else:
        refinement = head.refinement
        z = torch.zeros_like(x)
        counted = {}
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            refinement.block(z, x)
        for module_name, ops in counter.get_flop_counts().items():
            counted[module_name.split(".", 1)[-1]] = sum(ops.values())
        for part, module in mask_head_parts(head)[:-2]:
            parts.append((part, count_parameters(module)[0], counted.get(part.split(".")[-1], 0)))
        one = block_evaluation_flops(refinement, x)
        rows = [("one block evaluation", float(one)),
                (f"unrolled form ({refinement.num_unrolled} evaluations)", float(refinement.num_unrolled * one))]
        if refinement.mode == "unrolled":
            features_flops = float(refinement.num_unrolled * one)
        else:
            whole_steps = max(1, round(steps))
            _, solver_flops = implicit_solve_flops(refinement, x, whole_steps)
            features_flops = (1 + steps) * one + solver_flops
            rows.append((f"implicit solve at {steps:.2f} steps / RoI (1 + steps evaluations, solver "
                         f"{solver_flops / max(features_flops, 1):.1%})", features_flops))
        x = refinement.unrolled(x)
    for part, module in mask_head_parts(head)[-2:]:
        parts.append((part, count_parameters(module)[0], count_flops(module, x)))
        x = torch.relu(module(x)) if part == "deconv" else module(x)
    return MaskHeadCost(name, count_parameters(head)[0], feature_parameters(head), parts, features_flops, rows)


def model_components(cfg, model: nn.Module, image_size: tuple[int, int]) -> list[tuple[str, int, int, int]]:
    """(component, parameters, trainable, FLOPs per image) of everything but the mask head."""
    backbone, rpn, roi_heads = model.backbone, model.proposal_generator, model.roi_heads
    device = next(model.parameters()).device
    image = torch.randn(1, 3, *image_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        features = backbone(image)
    by_module = {name.split(".", 1)[-1]: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    rpn_flops = count_flops(rpn.rpn_head, [features[name] for name in rpn.in_features])
    box_rois = cfg.MODEL.RPN.POST_NMS_TOPK_TEST
    resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
    pooled = torch.randn(box_rois, backbone.out_channels, resolution, resolution, device=device)
    box_heads = roi_heads.box_head if isinstance(roi_heads.box_head, nn.ModuleList) else [roi_heads.box_head]
    predictors = roi_heads.box_predictor if isinstance(roi_heads.box_predictor, nn.ModuleList) \
        else [roi_heads.box_predictor]
    box_flops = sum(count_flops(head, pooled) for head in box_heads)
    predictor_flops = sum(count_flops(p, head(pooled)) for head, p in zip(box_heads, predictors))
    stages = f", {len(box_heads)} stages" if len(box_heads) > 1 else ""
    return [
        ("backbone (ResNet trunk)", *count_parameters(backbone.body), by_module.get("body", 0)),
        ("FPN", *count_parameters(backbone.fpn), by_module.get("fpn", 0)),
        ("RPN head", *count_parameters(rpn), rpn_flops),
        (f"box head ({box_rois} proposals{stages})", *count_parameters(roi_heads.box_head), box_flops),
        ("box predictor", *count_parameters(roi_heads.box_predictor), predictor_flops),
    ]


def _g(flops: float) -> str:
    return f"{flops / 1e9:.2f}"


def paper_fraction_note(head: MaskHeadCost, conv: MaskHeadCost) -> str:
    """What the paper's "30% of the mask head's parameters" would mean against this count."""
    target = PAPER_PARAMETER_FRACTION * conv.feature_parameters
    return (f"The paper reports IFR with {PAPER_PARAMETER_FRACTION:.0%} of the mask head's parameters. Counted "
            f"here, the {head.name} head's feature layers hold {head.feature_parameters:,} parameters, "
            f"{head.feature_parameters / conv.feature_parameters:.1%} of the 4-conv stack's "
            f"{conv.feature_parameters:,}, and the whole head {head.parameters / conv.parameters:.1%} of the "
            f"4-conv head ({conv.parameters:,}, deconv and predictor included). The released IFR block is two "
            f"3x3 convs (plus GroupNorms and weight-norm scales) against the baseline's four, so it cannot be "
            f"below about 50%; {PAPER_PARAMETER_FRACTION:.0%} of the 4-conv stack would be {target:,.0f} "
            f"parameters, {target / conv.parts[0][1]:.1f} of its 3x3 convs. The released checkpoints also hold "
            f"a frozen copy of the block (repeat_block_copy), a duplicate the forward refreshes from the block; "
            f"it is not counted.")


def analyze(cfg, model: nn.Module, rois: int, image_size: tuple[int, int], steps: float | None,
            steps_source: str) -> str:
    """The report: components, the mask head by part, and the mask head against the 4-conv head."""
    head = model.roi_heads.mask_head
    resolution = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
    if isinstance(head, RefinementMaskHead) and head.refinement.mode != "unrolled" and steps is None:
        steps = mean_solver_steps_on_random_rois(head.refinement, _roi_features(head, rois, resolution))
    name = "conv" if isinstance(head, ConvUpsampleMaskHead) else (
        "weight_sharing" if head.refinement.mode == "unrolled" else "ifr")
    cost = mask_head_cost(name, head, rois, resolution, steps)
    if name == "conv":
        conv = cost
    else:
        conv_head = build_conv_mask_head(cfg, in_channels=model.backbone.out_channels)
        conv = mask_head_cost("conv", conv_head.to(head.deconv.weight.device).eval(), rois, resolution, None)

    components = model_components(cfg, model, image_size)
    components.append((f"mask head ({name}, {rois} RoIs)", *count_parameters(head), cost.total_flops))
    total = ("total", sum(c[1] for c in components), sum(c[2] for c in components), sum(c[3] for c in components))
    out = [f"Model: {type(model.roi_heads).__name__} with the {name} mask head; input {image_size[0]} x "
           f"{image_size[1]} (the test resize, padded); FLOPs as torch.utils.flop_counter counts them "
           f"(GFLOPs = 1e9, 2 per multiply-add).", ""]
    out.append(tabulate([(c, f"{p:,}", f"{t:,}", _g(f), f"{f / total[3]:.1%}") for c, p, t, f in components + [total]],
                        headers=["component", "parameters", "trainable", "GFLOPs / image", "share"],
                        tablefmt="pipe", disable_numparse=True))
    out += ["", f"Mask head by part ({name}, {rois} RoIs of {resolution} x {resolution}):", ""]
    out.append(tabulate([(p, f"{n:,}", _g(f)) for p, n, f in cost.parts],
                        headers=["part", "parameters", "GFLOPs (one evaluation)" if cost.rows else "GFLOPs"],
                        tablefmt="pipe", disable_numparse=True))
    if cost.rows:
        out += ["", f"Refinement ({steps_source}):" if name == "ifr" else "Refinement:", ""]
        out.append(tabulate([(form, _g(f), f"{f / rois / 1e6:.1f}") for form, f in cost.rows],
                            headers=["form", f"GFLOPs at {rois} RoIs", "MFLOPs / RoI"],
                            tablefmt="pipe", disable_numparse=True))
    out += ["", "Against Mask R-CNN's 4-conv head (same width and classes):", ""]
    rows = [(h.name, f"{h.parameters:,}", f"{h.parameters / conv.parameters:.2f}", f"{h.feature_parameters:,}",
             f"{h.feature_parameters / conv.feature_parameters:.2f}", _g(h.total_flops),
             f"{h.total_flops / conv.total_flops:.2f}") for h in ([conv] if name == "conv" else [conv, cost])]
    out.append(tabulate(rows, headers=["mask head", "parameters", "/ 4-conv", "feature-layer parameters",
                                       "/ 4-conv", f"GFLOPs at {rois} RoIs", "/ 4-conv"],
                        tablefmt="pipe", disable_numparse=True))
    if name != "conv":
        out += ["", paper_fraction_note(cost, conv)]
    return "\n".join(out)


def run(args) -> None:
    if args.rois < 1:
        raise UserError(f"--rois must be at least 1, got {args.rois}")
    if min(args.image_size) < 1:
        height, width = args.image_size
        raise UserError(f"--image-size is HEIGHT WIDTH in pixels (each at least 1), got {height} {width}: e.g. "
                        "--image-size 480 640")
    if args.steps is not None and (args.steps < 0 or args.input):
        raise UserError("--steps is a mean number of solver steps per RoI (>= 0), and --input measures it: "
                        "pass one or the other")
    if args.input:
        images = expand_inputs(args.input)
        cfg, model = load_trained_model(args)
        head = model.roi_heads.mask_head
        if not isinstance(head, RefinementMaskHead) or head.refinement.mode == "unrolled":
            raise UserError("--input measures the IFR solve's steps; this folder's mask head does not solve")
        steps, rois = mean_solver_steps_on_images(cfg, model, images)
        source = (f"steps: mean over the {rois} RoIs detected in {len(images)} image(s), "
                  f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS}")
    else:
        cfg, build_model = load_tool_config(args)
        resolve_device(cfg)
        model = build_model(cfg).to(cfg.MODEL.DEVICE).eval()
        steps, source = (args.steps, "steps: given with --steps") if args.steps is not None else (
            None, f"steps: mean over {args.rois} random N(0, 1) RoI features, block at initialisation")
    image_size = padded_test_size(cfg, *args.image_size, model.size_divisibility)
    print(analyze(cfg, model, args.rois, image_size, steps, source))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pods_analyze", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rois", type=int, default=100,
                        help="detections the mask head runs on per image (default 100, TEST.DETECTIONS_PER_IMAGE)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(480, 640), metavar=("HEIGHT", "WIDTH"),
                        help="size of the input image before the test resize (default 480 640, COCO's usual 4:3)")
    parser.add_argument("--input", nargs="+", default=[],
                        help="images (files, folders, globs) on which to measure the IFR solve's steps; needs the "
                             "trained MODEL.WEIGHTS")
    parser.add_argument("--steps", type=float, default=None,
                        help="cost the implicit solve at this mean number of steps per RoI (e.g. measured on a "
                             "trained model elsewhere) instead of measuring it")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.input:
        args = parse_tool_arguments(parser, argv, "input")
    run_reporting_user_errors(run, args)


if __name__ == "__main__":
    main()
