"""The builder: every sampled tree builds, runs forward and backward, and keeps z, y, x."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from arborseg.errors import TreeError, WindowError
from arborseg.nn import BUILDERS, build_network, check_window, count_parameters, network_summary, window_multiple
from arborseg.nn.layers import SliceWise
from arborseg.space import MODULE_SPECS, load_space
from arborseg.tree import ModuleNode, ModuleTree

SPACES = sorted(Path(__file__).parents[1].joinpath("search_spaces").glob("*.yaml"))
SAMPLES_PER_SPACE = 50  # 6 spaces x 50 = 300 seeded samples
SAMPLED_WIDTHS = 5  # the first samples of each space run at their own widths, the others narrowed


def narrowed(tree: ModuleTree) -> ModuleTree:
    """The same structure with tiny widths: the distinct widths of ``tree``, smallest first, become 3, 4, 5, ...

    Widths are refinable (they change no shape, depth or branch), and the mapping keeps which widths are
    equal and which larger, so every projection and merge the tree needs is still built; only the
    arithmetic shrinks (a hybrid tree at width 48 costs seconds per pass).
    """
    widths = sorted({v for node in tree.root.walk() for k, v in node.params if k == "width"})
    small = {w: 3 + i for i, w in enumerate(widths)}

    def node(n: ModuleNode) -> ModuleNode:
        params = tuple((k, small[v] if k == "width" else v) for k, v in n.params)
        return ModuleNode(n.type, params, tuple(node(c) for c in n.children))

    return replace(tree, root=node(tree.root), _id="")


def test_every_module_type_has_a_builder():
    assert set(BUILDERS) == set(MODULE_SPECS)


@pytest.mark.parametrize("space_path", SPACES, ids=lambda p: p.stem)
def test_sampled_trees_build_forward_backward(space_path):
    space = load_space(space_path)
    torch.manual_seed(0)
    for seed in range(SAMPLES_PER_SPACE):
        tree = space.sample(seed)
        net = build_network(tree, n_classes=3)
        if seed >= SAMPLED_WIDTHS:
            modules = [type(m) for m in net.modules()]
            tree = narrowed(tree)
            net = build_network(tree, n_classes=3)
            assert [type(m) for m in net.modules()] == modules, f"{tree.name}: narrowing changed the network"
        _, mxy, _ = window_multiple(tree)
        assert tree.window[1] % mxy == 0, f"{tree.name}: its own window does not fit"
        window = (tree.window[0], max(2 * mxy, 16), max(2 * mxy, 16) + (mxy if seed % 2 else 0))
        x = torch.randn(2, 1, *window, requires_grad=True)
        y = net(x)
        assert y.shape == (2, 3, *window), tree.name
        assert torch.isfinite(y).all(), tree.name
        y.square().mean().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


def _thin_tree() -> ModuleTree:
    return load_space(Path(__file__).parents[1] / "search_spaces" / "thin3d_unet.yaml").sample(0)


def test_thin3d_never_pools_z():
    space = load_space(Path(__file__).parents[1] / "search_spaces" / "thin3d_unet.yaml")
    for seed in range(20):
        tree = space.sample(seed)
        net = build_network(tree, 2)
        for module in net.modules():
            if isinstance(module, (torch.nn.MaxPool3d,)):
                assert tuple(module.kernel_size)[0] == 1
            if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)) and module.stride != (1, 1, 1):
                assert module.stride[0] == 1
            if isinstance(module, torch.nn.Conv3d) and module.kernel_size[0] == 3:
                assert module.padding[0] == 1  # zero padding keeps z
        xy = 2 * window_multiple(tree)[1]
        for z in (1, 3, 5):
            out = net(torch.zeros(1, 1, z, xy, xy))
            assert out.shape[2] == z


def test_two_d_modules_run_per_slice():
    space = load_space(Path(__file__).parents[1] / "search_spaces" / "unet2d.yaml")
    tree = space.sample(0)
    net = build_network(tree, 2).eval()
    assert any(isinstance(m, SliceWise) for m in net.modules())
    xy = max(2 * window_multiple(tree)[1], 32)
    volume = torch.randn(1, 1, 3, xy, xy)
    with torch.no_grad():
        together = net(volume)
        alone = torch.cat([net(volume[:, :, i:i + 1]) for i in range(3)], dim=2)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_invalid_window_is_explained():
    tree = _thin_tree()
    mxy = window_multiple(tree)[1]
    assert mxy > 1
    with pytest.raises(WindowError, match=r"must be multiples of .* try"):
        check_window(tree, (3, 2 * mxy + 1, 2 * mxy))
    with pytest.raises(WindowError, match=r"too small .* bottleneck"):
        check_window(tree, (3, mxy, mxy))
    net = build_network(tree, 2)
    with pytest.raises(WindowError, match="must be multiples"):
        net(torch.zeros(1, 1, 3, 2 * mxy + 2, 2 * mxy))
    with pytest.raises(WindowError, match=r"expects input \(N, 1, Z, Y, X\)"):
        net(torch.zeros(1, 3, 3, 2 * mxy, 2 * mxy))


def test_crf_must_follow_a_predictor():
    root = ModuleNode("sequence", (), (ModuleNode("conv_block", tuple(sorted({
        "layers": 1, "dims": "2d", "kernel_z": 3, "kernel_size": 3, "width": 4, "norm": "none",
        "activation": "relu", "separable": False, "dropout": 0.0}.items()))),
        ModuleNode("crf3d", (("iterations", 2), ("spatial_kernel", 3), ("spatial_sigma", 1.0)))))
    with pytest.raises(TreeError, match="crf3d needs one input channel per class"):
        build_network(ModuleTree(root, (1, 8, 8)), 2)


def test_params_and_flops_are_counted():
    tree = _thin_tree()
    summary = network_summary(tree, 2)
    assert summary["params"] == count_parameters(build_network(tree, 2))
    assert summary["flops"] == pytest.approx(summary["flops_per_voxel"] * np.prod(tree.window))


def test_flops_match_a_hand_count():
    block = {"layers": 1, "dims": "thin3d", "kernel_z": 3, "kernel_size": 3, "width": 4, "norm": "none",
             "activation": "relu", "separable": False, "dropout": 0.0}
    root = ModuleNode("sequence", (), (ModuleNode("conv_block", tuple(sorted(block.items()))), ModuleNode("predictor")))
    tree = ModuleTree(root, (3, 8, 8))
    summary = network_summary(tree, n_classes=2)
    voxels = 3 * 8 * 8
    # 2 FLOPs per multiply-add: a 3x3x3 conv 1 -> 4 channels, then a 1x1x1 conv 4 -> 2 channels
    assert summary["flops"] == 2 * voxels * (27 * 1 * 4 + 4 * 2)
    assert summary["params"] == (27 * 4 + 4) + (4 * 2 + 2)
