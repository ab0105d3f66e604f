"""Deep supervision (nnU-Net): auxiliary heads at the decoder levels in training mode only, nnU-Net's loss weights,
targets sampled nearest; evaluation, export, FLOPs and parameter counts unchanged; the no-deep-supervision loss
untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from arborseg import runs
from arborseg.bundle.convert import to_onnx, to_torchscript
from arborseg.data import DataConfig
from arborseg.nn import build_network, count_flops, count_parameters
from arborseg.nn.builder import AUX_PREFIX
from arborseg.train.losses import (
    deep_supervision_loss,
    deep_supervision_weights,
    downsample_nearest,
    segmentation_loss,
)
from arborseg.train.settings import TrainSettings
from arborseg.train.trainer import Trainer, training_values
from arborseg.tree import ModuleTree

ROOT = Path(__file__).parents[1]
K = 3  # classes
UNET = ("{{type: encoder_decoder, dims: {dims}, kernel_size: 3, kernel_z: 3, depth: {depth}, width: 3, "
        "width_growth: 2.0, blocks_per_level: 1, layers_per_block: 1, norm: instance, activation: leaky_relu, "
        "dropout: 0.0, separable: false, pooling: {pooling}, upsampling: transposed, skip_merge: concat}}")


def tree(dims: str = "2d", depth: int = 5, window: tuple[int, int, int] = (1, 32, 32), ds: bool = True,
         tail: str = "", pooling: str = "strided") -> ModuleTree:
    """A U-Net (then ``tail`` modules, then a predictor) with ``deep_supervision: ds``."""
    children = [UNET.format(dims=dims, depth=depth, pooling=pooling), *([tail] if tail else []), "{type: predictor}"]
    text = (f"arborseg_tree: 1\nspace: test\nwindow: {list(window)}\n"
            f"training: {{optimizer: sgd, schedule: poly, lr: 0.01, dice_weight: 1.0, deep_supervision: {str(ds).lower()}}}\n"
            "root:\n  type: sequence\n  children:\n" + "".join(f"  - {c}\n" for c in children))
    return ModuleTree.from_yaml(text, source="test")


def net(t: ModuleTree, ds: bool, seed: int = 0):
    torch.manual_seed(seed)
    return build_network(t, K, deep_supervision=ds)


def batch(window: tuple[int, int, int], n: int = 2) -> torch.Tensor:
    return torch.rand((n, 1, *window), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("dims,depth,window,tail,expected", [
    ("2d", 5, (1, 32, 32), "", [(1, 16, 16), (1, 8, 8)]),  # baseline B's shape: levels 1/2, 1/4 (1/8 weighs 0)
    ("2d", 4, (3, 16, 16), "", [(3, 8, 8)]),  # 2D per slice, z folded into the batch and back
    ("thin3d", 4, (3, 16, 16), "", [(3, 8, 8)]),  # z kept
    ("3d", 4, (16, 16, 16), "", [(8, 8, 8)]),  # z pooled too
    ("2d", 4, (3, 16, 16), "{type: conv_block, dims: thin3d, kernel_z: 3, kernel_size: 3, width: 4, layers: 1, "
     "norm: instance, activation: relu, separable: false, dropout: 0.0}", [(3, 8, 8)]),  # hybrid: 3D after 2D
])
def test_aux_outputs_in_training_mode_only(dims, depth, window, tail, expected):
    model = net(tree(dims, depth, window, tail=tail), ds=True).train()
    x = batch(window)
    out = model(x)
    assert out.shape == (2, K, *window)
    aux = model.deep_supervision_outputs()
    assert [tuple(a.shape) for a in aux] == [(2, K, *s) for s in expected]
    assert model.deep_supervision_outputs() == []  # used once
    assert model.deep_supervision_levels == depth - 1
    model.eval()
    with torch.no_grad():
        model(x)
    assert model.deep_supervision_outputs() == []


def test_per_slice_heads_keep_each_slice_in_its_place():
    """A 2D U-Net's aux output for slice z of sample n is the one of that slice run alone."""
    model = net(tree("2d", 4, (3, 16, 16)), ds=True).train()
    x = batch((3, 16, 16))
    model(x)
    whole = model.deep_supervision_outputs()[0]
    model(x[1:2, :, 2:3])
    alone = model.deep_supervision_outputs()[0]
    torch.testing.assert_close(whole[1:2, :, 2:3], alone)


def test_nnunet_weights():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(2) == [1.0, 0.0]
    assert deep_supervision_weights(4) == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0])
    assert sum(deep_supervision_weights(5)) == pytest.approx(1.0)


def test_no_heads_where_they_would_weigh_nothing_or_nothing_to_supervise():
    shallow = net(tree("2d", 3, (1, 16, 16)), ds=True)  # decoder levels 1/2 (weight 0) and full: nothing to add
    assert shallow.aux_heads is None and shallow.deep_supervision_levels == 0
    text = ("arborseg_tree: 1\nspace: test\nwindow: [1, 16, 16]\ntraining: {deep_supervision: true}\nroot:\n"
            "  type: sequence\n  children:\n  - {type: dilated_block, dims: 2d, kernel_size: 3, width: 3, layers: 2, "
            "dilation_growth: 2, norm: instance, activation: relu, separable: false, dropout: 0.0}\n"
            "  - {type: predictor}\n")
    dilated = ModuleTree.from_yaml(text, source="test")
    model = net(dilated, ds=True).train()
    assert model.aux_heads is None and set(model.state_dict()) == set(net(dilated, ds=False).state_dict())
    model(batch((1, 16, 16)))
    assert model.deep_supervision_outputs() == []


def test_same_network_with_or_without_heads():
    """Same seed: the shared weights are equal, eval (and train-mode main) outputs equal, the extra keys are the
    heads' only; FLOPs and parameter counts are those of the network without heads; a state_dict with heads loads
    into the network without them."""
    t = tree()
    plain, supervised = net(t, ds=False), net(t, ds=True)
    extra = set(supervised.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith(AUX_PREFIX) for k in extra)
    assert set(plain.state_dict()) <= set(supervised.state_dict())
    x = batch((1, 32, 32))
    for mode in (False, True):
        plain.train(mode), supervised.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(supervised(x), plain(x), rtol=0, atol=0)
    assert count_parameters(supervised) == count_parameters(plain)
    assert count_flops(supervised, (1, 32, 32)) == count_flops(plain, (1, 32, 32))
    fresh = net(t, ds=False, seed=1)
    fresh.load_state_dict(supervised.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), supervised.eval()(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError):  # a network with heads still checks its keys
        net(t, ds=True).load_state_dict(plain.state_dict())


def test_downsample_nearest_keeps_labels_ignore_and_weights():
    y = torch.arange(4 * 8 * 8).reshape(1, 4, 8, 8)
    small = downsample_nearest(y, (4, 4, 4))
    assert small.dtype == y.dtype and small.shape == (1, 4, 4, 4)
    assert torch.equal(small, y[:, :, 1::2, 1::2])  # nearest-exact: the centre of each 2 x 2 block, its lower right
    assert torch.equal(downsample_nearest(y, (2, 4, 4)), y[:, 1::2, 1::2, 1::2])
    assert torch.equal(downsample_nearest(y, (4, 8, 8)), y)
    labels = torch.full((2, 1, 8, 8), 255)
    labels[:, :, 1::2, 1::2] = 1
    assert torch.equal(downsample_nearest(labels, (1, 4, 4)), torch.ones(2, 1, 4, 4, dtype=labels.dtype))
    w = torch.rand(2, 1, 8, 8)
    assert torch.equal(downsample_nearest(w, (1, 2, 2)), w[:, :, 2::4, 2::4])


def test_loss_is_the_weighted_sum_over_scales_and_reaches_the_heads():
    model = net(tree(), ds=True).train()
    x = batch((1, 32, 32))
    y = torch.randint(0, K, (2, 1, 32, 32), generator=torch.Generator().manual_seed(1))
    y[0, 0, :4] = 255  # ignored
    w = torch.rand(2, 1, 32, 32)
    cw = torch.tensor([0.5, 1.0, 2.0])
    out = model(x)
    aux = model.deep_supervision_outputs()
    weights = deep_supervision_weights(model.deep_supervision_levels)
    loss = deep_supervision_loss([out, *aux], weights, y, cw, w, 255, 1.0, 0)
    expected = weights[0] * segmentation_loss(out, y, cw, w, 255, 1.0, 0)
    for a, wi in zip(aux, weights[1:]):
        size = a.shape[2:]
        expected = expected + wi * segmentation_loss(a, downsample_nearest(y, size), cw, downsample_nearest(w, size),
                                                     255, 1.0, 0)
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, segmentation_loss(out, y, cw, w, 255, 1.0, 0))
    loss.backward()
    assert model.aux_heads is not None
    for head in model.aux_heads.heads:
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):  # an output without a weight
        deep_supervision_loss([out, *aux, aux[-1], aux[-1]], weights, y)


def data() -> DataConfig:
    return DataConfig.from_dict({
        "synthetic": {"seed": 1, "shape": [6, 48, 48]}, "classes": ["interior", "membrane", "mito"],
        "membrane_class": 1, "regions": {"train": {"z": [0, 4]}, "validation": {"z": [4, 5]}}}, source="test")


def train(out: Path, t: ModuleTree, steps: int, overrides: dict | None = None) -> Trainer:
    settings = TrainSettings(steps=steps, schedule_steps=8, eval_every=100, checkpoint_every=1000, device="cpu",
                             precision="fp32", num_threads=1, overlays=False, overrides=overrides or {},
                             augment={"flip": True})
    trainer = Trainer(t, data(), settings, out, progress=False)
    trainer.fit()
    return trainer


def test_training_with_deep_supervision(tmp_path):
    """The loss differs from the plain one from the first step; the heads train; a checkpoint continues to the same
    weights; model.pt (with the heads' weights) loads into the plain network; an override switches it off."""
    t = tree(ds=True)
    assert training_values(t)["deep_supervision"] is True
    plain = train(tmp_path / "plain", t, 3, overrides={"deep_supervision": False})
    assert plain.model.aux_heads is None and plain.ds_weights is None
    straight = train(tmp_path / "straight", t, 6)
    assert straight.ds_weights == pytest.approx(deep_supervision_weights(4))
    losses = [h["loss"] for h in straight.history if "loss" in h]
    plain_losses = [h["loss"] for h in plain.history if "loss" in h]
    assert len(losses) == 6 and all(np.isfinite(losses)) and losses[0] != pytest.approx(plain_losses[0], rel=1e-4)
    assert straight.model.aux_heads is not None
    initial = net(t, ds=True).aux_heads
    assert initial is not None
    assert not torch.allclose(straight.model.aux_heads.heads[0].weight, initial.heads[0].weight)

    train(tmp_path / "continued", t, 3)
    continued = train(tmp_path / "continued", t, 6)
    a, b = straight.model.state_dict(), continued.model.state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)

    path = straight.save_model()
    assert any(k.startswith(AUX_PREFIX) for k in torch.load(path, weights_only=True)["state_dict"])
    loaded, _, _ = runs.load_model(path)
    assert loaded.aux_heads is None
    x = batch((1, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), straight.model.eval()(x), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit: TorchScript is deprecated, not gone
def test_export_of_a_deep_supervision_network(tmp_path):
    """A network with heads, and one loaded from a model.pt holding them, export to TorchScript and ONNX (each
    checked against the eager network by the export helpers)."""
    pytest.importorskip("onnx")
    t = tree("2d", 4, (1, 16, 16))
    model = net(t, ds=True)
    runs.save_model(tmp_path, model.state_dict(), t, ["a", "b", "c"], t.window, {})
    loaded, _, _ = runs.load_model(tmp_path / runs.MODEL_FILE)
    for i, m in enumerate((model, loaded)):
        assert to_torchscript(m, t.window, tmp_path / f"n{i}.ts")["max_rel_diff"] <= 1e-5
        assert to_onnx(m, t.window, tmp_path / f"n{i}.onnx")["max_rel_diff"] <= 1e-4
    assert model.training is False  # the helpers put it in eval mode: no taps while tracing


def test_baseline_b_is_deeply_supervised():
    b = ModuleTree.load(ROOT / "search_spaces" / "portfolio" / "unet2d_nnunet.yaml")
    assert training_values(b)["deep_supervision"] is True
    with torch.device("meta"):
        model = build_network(b, 2, deep_supervision=True)
    assert model.deep_supervision_levels == 4 and model.aux_heads is not None and len(model.aux_heads.heads) == 2
