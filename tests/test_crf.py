"""The 3D CRF-as-RNN with its appearance (bilateral) kernel: one mean-field step equals a direct dense computation,
gradients reach every kernel parameter, the hand-written backward pass equals autograd's, memory per voxel stays
bounded, and the kernel works inside a built network (input image, training, TorchScript, FLOPs, trainer)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from arborseg.data import DataConfig
from arborseg.nn import ImageFacts, build_network, count_flops, uses_image_facts
from arborseg.nn.crf import AppearanceKernel, CRF3d, _NeighbourSum, neighbourhood
from arborseg.train.settings import TrainSettings
from arborseg.train.trainer import Trainer
from arborseg.tree import ModuleTree

TREE = """
arborseg_tree: 1
space: test
window: [3, 16, 16]
training: {{lr: 0.003, foreground_bias: 0.5}}
root:
  type: sequence
  children:
  - {{type: conv_block, dims: thin3d, kernel_z: 3, kernel_size: 3, width: 4, layers: 1, norm: none,
     activation: relu, separable: false, dropout: 0.0}}
  - {{type: predictor}}
  - {{type: crf3d, iterations: 2, spatial_kernel: 3, spatial_sigma: 1.0, kernels: {kernels},
     appearance_kernel: {k}, appearance_sigma: 1.5}}
"""


def crf_tree(kernels: str = "spatial+appearance", k: int = 3) -> ModuleTree:
    return ModuleTree.from_yaml(TREE.format(kernels=kernels, k=k), source="test")


def random_crf(n_classes: int, kernel: int, z_step: float, seed: int) -> CRF3d:
    """A CRF with every parameter moved away from its initial value (so the comparison tests all of them)."""
    torch.manual_seed(seed)
    crf = CRF3d(n_classes, 1, 3, 1.0, AppearanceKernel(n_classes, kernel, 1.5, ImageFacts(z_step, 0.3))).double()
    with torch.no_grad():
        crf.spatial.weight.uniform_(0.0, 0.2)
        crf.compat.weight.normal_(0.0, 1.0)
        crf.appearance.weight.uniform_(0.5, 2.0)
        crf.appearance.log_theta_xy.fill_(math.log(1.3))
        crf.appearance.log_theta_z.fill_(math.log(0.8))
        crf.appearance.log_theta_intensity.fill_(math.log(0.4))
    return crf


def dense_mean_field_step(crf: CRF3d, unary: np.ndarray, image: np.ndarray) -> np.ndarray:
    """One mean-field iteration written out voxel by voxel over every pair (i, j) of the volume."""
    app = crf.appearance
    Z, Y, X = unary.shape[1:]
    q = np.exp(unary - unary.max(0)) / np.exp(unary - unary.max(0)).sum(0)
    spatial_w = crf.spatial.weight.detach().numpy()[:, 0]  # (C, 3, k, k)
    ks = spatial_w.shape[-1] // 2
    tz, txy = math.exp(app.log_theta_z.item()), math.exp(app.log_theta_xy.item())
    ti, z_step = math.exp(app.log_theta_intensity.item()), app.z_step.item()
    offsets = neighbourhood(app.kernel)
    log_g = np.array([-0.5 * ((dz * z_step / tz) ** 2 + (dy * dy + dx * dx) / txy ** 2) for dz, dy, dx in offsets])
    g = np.exp(log_g - log_g.max()) / np.exp(log_g - log_g.max()).sum()
    g_of = dict(zip(offsets, g))
    message = np.zeros_like(q)
    for i in np.ndindex(Z, Y, X):
        for j in np.ndindex(Z, Y, X):
            d = tuple(b - a for a, b in zip(i, j))
            if abs(d[0]) <= 1 and abs(d[1]) <= ks and abs(d[2]) <= ks:  # the spatial filter (a correlation)
                message[(slice(None), *i)] += spatial_w[:, d[0] + 1, d[1] + ks, d[2] + ks] * q[(slice(None), *j)]
            if d in g_of:  # the appearance kernel (no centre)
                k = g_of[d] * math.exp(-((image[i] - image[j]) ** 2) / (2 * ti ** 2))
                message[(slice(None), *i)] += app.weight.detach().numpy() * k * q[(slice(None), *j)]
    compat = crf.compat.weight.detach().numpy()[:, :, 0, 0, 0]
    return unary - np.einsum("cd,dzyx->czyx", compat, message)


@pytest.mark.parametrize("kernel,z_step", [(3, 1.0), (5, 2.5)])
def test_one_mean_field_step_equals_the_dense_computation(kernel, z_step, monkeypatch):
    monkeypatch.setattr(AppearanceKernel, "min_relative_weight", 0.0)  # every neighbour, as the dense sum
    crf = random_crf(3, kernel, z_step, seed=kernel)
    rng = np.random.default_rng(kernel)
    unary, image = rng.normal(size=(3, 3, 5, 6)), rng.uniform(size=(3, 5, 6))
    crf.image = torch.from_numpy(image)[None, None]
    got = crf(torch.from_numpy(unary)[None]).detach().numpy()[0]
    np.testing.assert_allclose(got, dense_mean_field_step(crf, unary, image), rtol=1e-10, atol=1e-10)


def test_left_out_neighbours_change_messages_by_less_than_the_floor():
    crf = random_crf(2, 5, 10.0, seed=1)  # z neighbours 10 xy steps away: their position weight is ~1e-30
    offsets, _ = crf.appearance.weights(torch.rand(1, 1, 3, 8, 8, dtype=torch.double))
    assert offsets and all(dz == 0 for dz, _, _ in offsets)
    unary = torch.randn(1, 2, 3, 8, 8, dtype=torch.double)
    crf.image = torch.rand(1, 1, 3, 8, 8, dtype=torch.double)
    pruned = crf(unary)
    AppearanceKernel.min_relative_weight, floor = 0.0, AppearanceKernel.min_relative_weight
    try:
        exact = crf(unary)
    finally:
        AppearanceKernel.min_relative_weight = floor
    assert torch.allclose(pruned, exact, atol=1e-12)


def test_gradients_reach_every_kernel_parameter():
    crf = CRF3d(2, 3, 3, 1.0, AppearanceKernel(2, 5, 2.0, ImageFacts(1.0, 0.25)))
    crf.image = torch.rand(2, 1, 3, 12, 12)
    unary = torch.randn(2, 2, 3, 12, 12, requires_grad=True)
    target = torch.randint(0, 2, (2, 3, 12, 12))
    torch.nn.functional.cross_entropy(crf(unary), target).backward()
    for name, p in crf.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert unary.grad is not None and unary.grad.abs().sum() > 0


def test_the_hand_written_backward_equals_autograd_of_the_plain_sum():
    kernel, offsets = 5, neighbourhood(5)[::3]
    q = torch.rand(1, 2, 3, 6, 7, dtype=torch.double, requires_grad=True)
    weights = [torch.rand(1, 1, 3, 6, 7, dtype=torch.double, requires_grad=True) for _ in offsets]
    assert torch.autograd.gradcheck(lambda q, *w: _NeighbourSum.apply(kernel, offsets, q, *w), (q, *weights))


def _saved_bytes_per_voxel(kernel: int, iterations: int, n_classes: int, shape: tuple[int, int, int]) -> float:
    """Bytes autograd keeps for the backward pass of a CRF forward, per voxel (distinct storages counted once)."""
    crf = CRF3d(n_classes, iterations, 3, 1.0, AppearanceKernel(n_classes, kernel, 8.0, ImageFacts(1.0, 0.25)))
    crf.image = torch.rand(1, 1, *shape)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        crf(torch.randn(1, n_classes, *shape, requires_grad=True)).sum().backward()
    return sum(storages.values()) / math.prod(shape)


def test_memory_per_voxel_is_bounded_for_the_largest_neighbourhood():
    kernel, iterations, n_classes = 7, 5, 3  # the largest built-in neighbourhood and iterations of the spaces
    neighbours = len(neighbourhood(kernel))
    small = _saved_bytes_per_voxel(kernel, iterations, n_classes, (3, 16, 16))
    large = _saved_bytes_per_voxel(kernel, iterations, n_classes, (5, 48, 48))
    # per neighbour a few floats (weight, squared difference), per iteration a few per class; never neighbours x
    # classes x iterations (what a stacked unfold of the probabilities would keep: 146 x 3 x 5 x 4 = 8.8 kB/voxel)
    bound = 4 * (4 * neighbours + 24 * iterations * n_classes)
    assert large <= bound, (large, bound)
    assert small <= bound * 1.5  # padding weighs more in a small volume
    assert large < neighbours * n_classes * iterations * 4 / 2


def test_a_network_with_the_appearance_kernel_sees_its_input_image():
    tree = crf_tree()
    assert uses_image_facts(tree) and not uses_image_facts(crf_tree("spatial"))
    net = build_network(tree, 2, image_facts=ImageFacts(z_step=9.8, intensity_spread=0.2))
    crf = next(m for m in net.modules() if isinstance(m, CRF3d))
    assert crf.needs_image and crf.appearance is not None
    assert crf.appearance.z_step.item() == pytest.approx(9.8)
    assert math.exp(crf.appearance.log_theta_intensity.item()) == pytest.approx(0.1)
    x = torch.rand(2, 1, 3, 16, 16)
    net.train()
    net(x).sum().backward()
    assert crf.image is None  # cleared after the pass
    assert crf.appearance.log_theta_intensity.grad is not None
    net.eval()
    with torch.no_grad():
        eager = net(x)
        changed = x.clone()
        changed[:, :, :, :8] = 1.0 - changed[:, :, :, :8]
        assert not torch.allclose(net(changed)[..., 8:, 8:], eager[..., 8:, 8:])  # the image moves the messages
    # the weights carry the data facts: a network built without them loads them with the state dict
    rebuilt = build_network(tree, 2)
    rebuilt.load_state_dict(net.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), eager)
        traced = torch.jit.trace(rebuilt, x, check_trace=False)
        assert torch.allclose(traced(x), eager, atol=1e-6)


def test_flops_count_the_appearance_kernel():
    window = (3, 16, 16)
    spatial = count_flops(build_network(crf_tree("spatial"), 2), window)
    appearance = count_flops(build_network(crf_tree(k=5), 2), window)
    neighbours, iterations, classes = len(neighbourhood(5)), 2, 2
    per_voxel = neighbours * 6 + iterations * (2 * neighbours * classes + classes)
    assert appearance - spatial == math.prod(window) * per_voxel


def test_image_facts_come_from_the_voxel_size_and_the_training_image(tmp_path):
    assert ImageFacts.of([45, 4.6, 4.6], 0.2).z_step == pytest.approx(45 / 4.6)
    assert ImageFacts.of(None, 0.2).z_step == 1.0
    assert ImageFacts.of([4, 4, 4], float("nan")).intensity_spread == ImageFacts().intensity_spread
    data = DataConfig.from_dict({
        "synthetic": {"seed": 1, "shape": [8, 32, 32]}, "classes": ["interior", "membrane", "mito"],
        "voxel_size": [40, 5, 5], "membrane_class": 1,
        "regions": {"train": {"z": [0, 4]}, "validation": {"z": [4, 7]}}}, source="test")
    settings = TrainSettings(steps=2, eval_every=2, device="cpu", precision="fp32", num_threads=1, overlays=False)
    trainer = Trainer(crf_tree(), data, settings, tmp_path, progress=False)
    crf = next(m for m in trainer.model.modules() if isinstance(m, CRF3d))
    raw, _ = data.load_region("train")
    assert crf.appearance is not None and crf.appearance.z_step.item() == pytest.approx(8.0)
    assert math.exp(crf.appearance.log_theta_intensity.item()) == pytest.approx(0.5 * raw.std(), rel=0.02)
    trainer.fit()
    assert trainer.step == 2 and math.isfinite(trainer.history[-1][settings.objective])


def test_exports_and_tiled_prediction_handle_the_appearance_kernel(tmp_path):
    from arborseg.bundle.convert import to_onnx, to_torchscript
    from arborseg.inference import predict_volume
    from arborseg.viz.treeplot import _label

    tree = crf_tree(k=5)
    crf_node = tree.root.children[-1]
    assert "kernels=spatial+appearance" in _label(crf_node) and "appearance_kernel=5" in _label(crf_node)
    net = build_network(tree, 2, image_facts=ImageFacts(z_step=3.0)).eval()
    assert to_torchscript(net, (3, 16, 16), tmp_path / "net.pt")["max_rel_diff"] < 1e-5
    pytest.importorskip("onnxruntime")
    assert to_onnx(net, (3, 16, 16), tmp_path / "net.onnx")["max_rel_diff"] < 1e-4
    probs = predict_volume(net, np.random.default_rng(0).random((5, 40, 40), dtype=np.float32), (3, 16, 16), 2)
    assert probs.shape == (2, 5, 40, 40) and np.isfinite(probs).all()
    assert np.allclose(probs.sum(0), 1.0, atol=1e-4)
