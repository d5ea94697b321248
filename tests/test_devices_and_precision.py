"""What a GPU user's first run depends on, checked on the CPU: the launcher follows MODEL.DEVICE, boxes
stay float32 under autocast, the solves run in IEEE float32 and sync with the device rarely, the adjoint
does not depend on the loss scale, and the install keeps the user's torch."""
import ast
import math
import os
import re

import pytest
import torch

from ifr.config import ConfigError, RCNNFPNConfig
from ifr.deq import (EquilibriumRefinement, IFRBlock, ImplicitBackward, SolverConfig, SyncPolicy, broyden_solve,
                     ieee_float32)
from ifr.deq.precision import tf32_settings
from ifr.deq.solvers import anderson_solve, fixed_point_solve
from ifr.engine import launch as launch_module
from ifr.modeling.box_coder import SCALE_CLAMP, Float32BoxCoder
from ifr.modeling.mask_head import build_ifr_mask_head
from ifr.tools import train_net

from helpers import FOLDERS, ROOT


# ---- launcher ----

@pytest.fixture
def reports_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_cpu_processes_form_a_gloo_group_on_a_machine_with_a_gpu(reports_a_gpu):
    assert launch_module.process_device("cpu", 2) == "cpu"
    assert launch_module._backend(launch_module.process_device("cpu", 2)) == "gloo"
    assert launch_module._backend(launch_module.process_device("cuda", 2)) == "nccl"
    assert launch_module.process_device("cuda:0", 1) == "cuda"


def test_one_named_gpu_for_several_processes_is_refused(reports_a_gpu):
    with pytest.raises(ConfigError, match=r"MODEL.DEVICE cuda:0 names one GPU but --num-gpus 2.*use MODEL.DEVICE cuda"):
        launch_module.process_device("cuda:0", 2)
    with pytest.raises(ConfigError, match="not a device"):
        launch_module.process_device("gpu", 1)


def test_cuda_without_a_gpu_falls_back_to_the_cpu_group(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert launch_module.process_device("cuda", 2) == "cpu"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_pods_train_launches_with_the_configured_device(device, monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setenv("IFR_OUTPUT_ROOT", str(tmp_path))  # the launcher claims OUTPUT_DIR
    monkeypatch.setattr(train_net, "launch", lambda *a, **k: seen.update(k))
    monkeypatch.chdir(os.path.join(ROOT, FOLDERS["ifr"]))
    train_net.main(["--num-gpus", "2", "MODEL.DEVICE", device])
    assert seen["device"] == device


# ---- boxes under autocast ----

def _reference_decode(deltas, boxes, weights=(1.0, 1.0, 1.0, 1.0)):
    """float64 decode written out from the formula (independent of torchvision's BoxCoder)."""
    deltas, boxes = deltas.double(), boxes.double()
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    dx, dy = deltas[:, 0] / weights[0], deltas[:, 1] / weights[1]
    dw, dh = (deltas[:, 2] / weights[2]).clamp(max=SCALE_CLAMP), (deltas[:, 3] / weights[3]).clamp(max=SCALE_CLAMP)
    pcx, pcy, pw, ph = dx * widths + cx, dy * heights + cy, dw.exp() * widths, dh.exp() * heights
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=1)


def test_boxes_are_decoded_in_float32_under_autocast():
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(64, 2, generator=generator) * 1200
    boxes = torch.cat([xy, xy + 8 + torch.rand(64, 2, generator=generator) * 300], dim=1)
    deltas = torch.randn(64, 4, generator=generator).bfloat16()  # what a half-precision layer gives
    coder = Float32BoxCoder((1.0, 1.0, 1.0, 1.0), bbox_xform_clip=SCALE_CLAMP)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        decoded = coder.decode_single(deltas, boxes)
    assert decoded.dtype == torch.float32
    reference = _reference_decode(deltas.float(), boxes)
    # float32 rounding of COCO-scale coordinates (~1e-4 px), not bfloat16's (~4 px at 1000)
    assert (decoded.double() - reference).abs().max() < 1e-3


def test_a_huge_delta_gives_a_finite_clipped_box():
    from torchvision.ops import clip_boxes_to_image

    coder = Float32BoxCoder((1.0, 1.0, 1.0, 1.0), bbox_xform_clip=SCALE_CLAMP)
    boxes = torch.tensor([[900.0, 700.0, 1300.0, 1000.0]])
    deltas = torch.tensor([[3.0e4, -3.0e4, 6.0e4, 6.0e4]], dtype=torch.float16)  # finite in float16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        decoded = clip_boxes_to_image(coder.decode_single(deltas, boxes), (800, 1333))
    assert torch.isfinite(decoded).all() and decoded.dtype == torch.float32
    assert (decoded[:, 0::2] <= 1333).all() and (decoded[:, 1::2] <= 800).all()


def test_proposals_and_sampled_boxes_stay_float32_in_mixed_precision_training(monkeypatch):
    from ifr.modeling import build_generalized_rcnn
    from ifr.modeling.roi_heads import StandardROIHeads
    from ifr.presets import small_model_overrides

    cfg = RCNNFPNConfig()
    cfg.merge(small_model_overrides(max_iter=2, num_workers=0))
    cfg.merge_from_list(["MODEL.MASK_ON", "True", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
                         "MODEL.ROI_MASK_HEAD.PRETRAINED_STEPS", "0"])
    model = build_generalized_rcnn(cfg, mask_head="ifr").train()
    seen = []
    original = StandardROIHeads.label_and_sample_proposals

    def recording(self, proposals, targets):
        sampled = original(self, proposals, targets)
        seen.append(([p["boxes"].dtype for p in proposals], [s["proposal_boxes"].dtype for s in sampled]))
        return sampled

    monkeypatch.setattr(StandardROIHeads, "label_and_sample_proposals", recording)
    solve_dtypes = []
    model.roi_heads.mask_head.refinement.block.register_forward_pre_hook(
        lambda module, args: solve_dtypes.append((args[0].dtype, torch.is_autocast_enabled("cpu"))))
    image = torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)
    instances = {"boxes": torch.tensor([[10.0, 12.0, 50.0, 40.0]], dtype=torch.float64),
                 "classes": torch.tensor([0]), "masks": torch.zeros(1, 64, 96, dtype=torch.bool)}
    instances["masks"][0, 12:40, 10:50] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model([{"image": image, "instances": instances, "height": 64, "width": 96}], iteration=1)
    assert seen and all(d == torch.float32 for proposals, sampled in seen for d in proposals + sampled)
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.roi_heads.mask_head.refinement.last_stats is not None  # the implicit phase ran
    # every block evaluation of the solve (and the one differentiable step) in float32, autocast off
    assert solve_dtypes and set(solve_dtypes) == {(torch.float32, False)}


# ---- TF32 off inside the solves ----

def _ieee_settings():
    """What ``tf32_settings()`` reads with TF32 off, in this torch's API (per-backend from torch 2.9)."""
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        return ("ieee", "ieee", "ieee")
    return (False, False)


def test_ieee_float32_scopes_the_switches_and_restores_them():
    before = tf32_settings()
    with pytest.raises(RuntimeError):
        with ieee_float32():
            assert tf32_settings() == _ieee_settings()
            raise RuntimeError("inside")
    assert tf32_settings() == before
    with ieee_float32(enabled=False):
        assert tf32_settings() == before


class _RecordingBlock(IFRBlock):
    """The IFR block, recording the TF32 switches each evaluation ran under."""

    def __init__(self):
        super().__init__(channels=8, num_groups=2, weight_norm=True)
        self.switches = []

    def forward(self, z, x):
        self.switches.append(tf32_settings())
        return super().forward(z, x)


@pytest.mark.parametrize("allow_tf32", [False, True])
def test_forward_and_adjoint_solves_run_without_tf32_unless_allowed(allow_tf32):
    block = _RecordingBlock()
    solver = SolverConfig("broyden", max_iter=6, tol=1e-6)
    layer = EquilibriumRefinement(block, mode="implicit", solver=solver,
                                  backward=ImplicitBackward(solver, allow_tf32=allow_tf32), allow_tf32=allow_tf32)
    x = torch.randn(3, 8, 5, 5, requires_grad=True)
    outside = tf32_settings()
    layer(x).square().sum().backward()
    adjoint_steps = int(layer.backward_strategy.last_stats.iterations)
    assert adjoint_steps > 0
    expected = outside if allow_tf32 else _ieee_settings()
    # every evaluation but the one differentiable step f(z*) (evaluated outside the solve) is a solve's
    solves = [s for i, s in enumerate(block.switches) if i != len(block.switches) - 1]
    assert solves and all(s == expected for s in solves)
    assert tf32_settings() == outside


# ---- host syncs of the solvers ----

class _SyncCounter:
    """Counts the calls that make the host wait for the device: Tensor.__bool__, .item(), .nonzero()."""

    def __init__(self, monkeypatch):
        self.counts = {"bool": 0, "item": 0, "nonzero": 0}
        for name, method in (("bool", "__bool__"), ("item", "item"), ("nonzero", "nonzero")):
            original = getattr(torch.Tensor, method)

            def counted(self_, *args, _original=original, _name=name, **kwargs):
                self.counts[_name] += 1
                return _original(self_, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, method, counted)

    def total(self):
        return sum(self.counts.values())


def _contraction(seed=0, batch=6, dim=40):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=generator) / dim ** 0.5 * 0.4
    b = torch.randn(batch, dim, generator=generator) * torch.linspace(0.5, 5, batch).unsqueeze(1)
    return lambda z: torch.tanh(z @ a.T) + b, torch.zeros(batch, dim)


@pytest.mark.parametrize("solve", [broyden_solve, anderson_solve, fixed_point_solve])
def test_the_cuda_policy_syncs_once_per_check_period_and_gives_the_same_answers(solve, monkeypatch):
    f, z0 = _contraction()
    every_step, every_step_stats = solve(f, z0, max_iter=30, tol=1e-5, sync=SyncPolicy(1, restrict=True))
    cuda = SyncPolicy.for_device(torch.device("cuda"), cuda_check_period=3)
    assert cuda == SyncPolicy(3, restrict=False)
    counter = _SyncCounter(monkeypatch)
    periodic, stats = solve(f, z0, max_iter=30, tol=1e-5, sync=cuda)
    steps = int(stats.iterations)
    monkeypatch.undo()
    assert steps >= 6
    # one check at the start and one every third step; never a sync per step
    assert counter.counts["nonzero"] == counter.counts["item"] == 0
    assert counter.counts["bool"] <= 1 + math.ceil(steps / 3) < steps
    # each sample's own answer: the same steps, converged flags and iterates as checking every step
    assert torch.equal(stats.converged, every_step_stats.converged) and stats.converged.all()
    assert torch.equal(stats.sample_steps, every_step_stats.sample_steps)
    assert torch.allclose(periodic, every_step, rtol=1e-6, atol=1e-6)
    assert steps - int(every_step_stats.iterations) in range(0, 3)  # at most check_period - 1 extra steps


def test_the_cpu_policy_checks_every_step():
    assert SyncPolicy.for_device(torch.device("cpu")) == SyncPolicy(1, restrict=True)
    with pytest.raises(ValueError, match="check_period"):
        SyncPolicy(0)


# ---- the adjoint at any loss scale ----

@pytest.mark.parametrize("stop_mode,solver", [("abs", "broyden"), ("rel", "broyden"), ("abs", "anderson"),
                                              ("rel", "fixed_point"), ("abs", "broyden_cvpods")])
def test_the_adjoint_takes_the_same_steps_at_loss_scale_1_and_65536(stop_mode, solver):
    torch.manual_seed(0)
    block = IFRBlock(channels=8, num_groups=2, weight_norm=True)
    x = torch.randn(4, 8, 6, 6)
    weight = torch.randn(4, 8, 6, 6)
    tol = 2e-10 * math.sqrt(x.numel()) if stop_mode == "abs" else 1e-4
    backward_solver = SolverConfig(solver, max_iter=30, tol=tol, stop_mode=stop_mode)
    layer = EquilibriumRefinement(block, mode="implicit", solver=SolverConfig("broyden", max_iter=30, tol=1e-6),
                                  backward=ImplicitBackward(backward_solver))
    results = {}
    for scale in (1.0, 65536.0):
        block.zero_grad()
        ((layer(x) * weight).sum() * 1e-3 * scale).backward()
        stats = layer.backward_strategy.last_stats
        results[scale] = (int(stats.iterations), stats.sample_steps.clone(), block.conv1.weight_v.grad / scale)
    assert results[1.0][0] == results[65536.0][0]
    assert torch.equal(results[1.0][1], results[65536.0][1])
    assert torch.allclose(results[1.0][2], results[65536.0][2], rtol=1e-4, atol=1e-9)


def test_an_overflowed_step_is_not_counted_as_a_diverged_solve():
    block = IFRBlock(channels=8, num_groups=2, weight_norm=True)
    layer = EquilibriumRefinement(block, mode="implicit", solver=SolverConfig("broyden", max_iter=10, tol=1e-6))
    x = torch.randn(2, 8, 5, 5)
    (layer(x).sum() * float("inf")).backward()
    assert layer.backward_strategy.last_stats is None  # no solve ran, nothing to report as diverged
    assert not torch.isfinite(block.conv1.weight_v.grad).all()  # GradScaler sees the overflow and skips


# ---- configuration of the device-specific behaviour ----

def _head_cfg(**keys):
    cfg = RCNNFPNConfig()
    cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", "3", *[x for k, v in keys.items() for x in (k, str(v))]])
    return cfg


def test_the_mask_head_layout_and_solve_settings_follow_the_device(reports_a_gpu):
    cpu = build_ifr_mask_head(_head_cfg(**{"MODEL.DEVICE": "cpu"}), in_channels=16)
    cuda = build_ifr_mask_head(_head_cfg(**{"MODEL.DEVICE": "cuda"}), in_channels=16)
    assert cpu.channels_last and not cuda.channels_last  # CHANNELS_LAST True, CUDA_CHANNELS_LAST False
    assert not cpu.refinement.allow_tf32 and not cpu.refinement.backward_strategy.allow_tf32
    allowed = build_ifr_mask_head(_head_cfg(**{"MODEL.ROI_MASK_HEAD.SOLVE_ALLOW_TF32": True,
                                               "MODEL.ROI_MASK_HEAD.CUDA_CHECK_PERIOD": 5}), in_channels=16)
    assert allowed.refinement.allow_tf32 and allowed.refinement.backward_strategy.allow_tf32
    assert allowed.refinement.solver.cuda_check_period == 5
    with pytest.raises(ConfigError, match="CUDA_CHECK_PERIOD must be >= 1"):
        build_ifr_mask_head(_head_cfg(**{"MODEL.ROI_MASK_HEAD.CUDA_CHECK_PERIOD": 0}), in_channels=16)


# ---- installing into the user's environment ----

def test_setup_states_ranges_ci_pins_both_ends_and_the_installed_pair_is_in_range():
    """setup.py states ranges (a user's torch is kept); constraints.txt pins the newest tested pair and
    constraints-lower.txt the range's lower bound (CI runs the suite with each); the installed pair, whichever
    it is, lies in the range."""
    import torchvision
    from packaging.version import Version

    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    requires = next(ast.literal_eval(k.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                    for k in node.keywords if k.arg == "install_requires")
    lower = dict(re.findall(r"^(torch|torchvision)>=([\d.]+)$", "\n".join(requires), re.M))
    assert set(lower) == {"torch", "torchvision"} and not [r for r in requires if re.match(r"torch(vision)?==", r)]

    def pins(name):
        return dict(re.findall(r"^(torch|torchvision)==(\S+)$", open(os.path.join(ROOT, name)).read(), re.M))

    lowest = pins("constraints-lower.txt")
    assert set(lowest) == {"torch", "torchvision"}
    assert all(Version(lowest[name]) == Version(lower[name]) for name in lower), (lowest, lower)
    newest = pins("constraints.txt")
    assert set(newest) == {"torch", "torchvision"}
    assert all(Version(newest[name]) >= Version(lower[name]) for name in lower)
    installed = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    for name, version in installed.items():
        assert Version(version.split("+")[0]) >= Version(lower[name]), (
            f"{name} {version} is below setup.py's lower bound {lower[name]}")


def test_solver_config_hands_the_per_device_policy_to_per_sample_solvers_only(monkeypatch):
    import ifr.deq.solvers as solvers

    chosen = []
    real = solvers.SyncPolicy.for_device
    monkeypatch.setattr(solvers.SyncPolicy, "for_device",
                        lambda device, period: chosen.append((device.type, period)) or real(device, period))
    f, z0 = _contraction()
    SolverConfig("anderson", max_iter=5, tol=1e-5, cuda_check_period=5).solve(f, z0)
    assert chosen == [("cpu", 5)]
    SolverConfig("broyden_cvpods", max_iter=5, tol=1e-5).solve(f, z0)  # its parity stop test: no policy
    assert chosen == [("cpu", 5)]
