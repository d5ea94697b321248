"""How fast each fixed-point solver converges for a trained IFR head, on the RoIs of one image:

    cd mask_rcnn.ifr.res50.fpn.coco.multiscale.1x
    python -m ifr.tools.plot_convergence --image photo.jpg MODEL.WEIGHTS model_final.pth
    python -m ifr.tools.plot_convergence --quickstart --image datasets/synthetic_shapes/val/000000.png

The model detects objects in the image; the pooled features of its final detections are the inputs
x of the block f(z, x). Each solver then runs ``--max-iter`` steps from z = 0 without stopping early,
and the PNG shows every RoI's residual ||f(z) - z|| relative to its start, one panel per solver.
"""
from __future__ import annotations

import argparse
import os

import torch

from ifr.data import read_image
from ifr.deq import SOLVERS, get_solver, recorded_inputs
from ifr.engine.predictor import DefaultPredictor
from ifr.errors import UserError
from ifr.modeling.inspection import find_refinement
from ifr.visualization import plot_residual_traces

from .experiment import run_reporting_user_errors
from .trained_model import add_model_arguments, load_trained_model, parse_tool_arguments

DEFAULT_SOLVERS = ("broyden", "anderson", "fixed_point", "broyden_cvpods")


def residual_traces(refinement, features: torch.Tensor, solvers, max_iter: int) -> dict[str, torch.Tensor]:
    """Solver name -> (max_iter + 1, R) residual trace of each RoI's solve of z = block(z, features)."""
    f = lambda z: refinement.block(z, features)  # noqa: E731
    traces = {}
    with torch.no_grad():
        for name in solvers:
            _, stats = get_solver(name)(f, torch.zeros_like(features), max_iter=max_iter, tol=0.0, stop_mode="abs")
            traces[name] = stats.trace
    return traces


def run(args) -> None:
    unknown = sorted(set(args.solvers) - set(SOLVERS))
    if unknown:
        raise UserError(f"unknown solver(s) {unknown}; choose from {sorted(SOLVERS)}")
    config, model = load_trained_model(args)
    refinement = find_refinement(model)
    image = read_image(args.image)
    with recorded_inputs(refinement) as captured:
        DefaultPredictor(config, model)(image)
    if not captured or captured[-1].shape[0] == 0:
        raise UserError(f"the model detects nothing in {args.image}: pick an image with objects")
    features = captured[-1]
    traces = residual_traces(refinement, features, args.solvers, args.max_iter)
    output = args.output or os.path.join(config.OUTPUT_DIR, "solver_convergence.png")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    plot_residual_traces(traces, output, title=f"{os.path.basename(args.image)}: {features.shape[0]} RoIs")
    print(f"wrote {output}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="an image with objects the model detects")
    parser.add_argument("--solvers", nargs="+", default=list(DEFAULT_SOLVERS), help="solvers to compare")
    parser.add_argument("--max-iter", type=int, default=30, help="steps per solver (default 30)")
    parser.add_argument("--output", default=None, help="PNG to write (default: OUTPUT_DIR/solver_convergence.png)")
    add_model_arguments(parser)
    run_reporting_user_errors(run, parse_tool_arguments(parser, argv, "solvers"))


if __name__ == "__main__":
    main()
