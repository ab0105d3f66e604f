"""Continued training: stopping at a step and continuing from the checkpoint equals training straight through,
for every LR schedule and optimiser, when the schedule's horizon is planned for the longest training."""

from __future__ import annotations

import pytest
import torch

from arborseg.data import DataConfig
from arborseg.errors import ArborsegError
from arborseg.train.settings import TrainSettings
from arborseg.train.trainer import Trainer
from arborseg.tree import ModuleTree

TREE = """
arborseg_tree: 1
space: test
window: [1, 32, 32]
training: {{optimizer: {optimizer}, schedule: {schedule}, lr: {lr}, foreground_bias: 0.5{extra}}}
root:
  type: sequence
  children:
  - {{type: encoder_decoder, dims: 2d, kernel_size: 3, depth: 2, width: 4, width_growth: 2.0, blocks_per_level: 1,
     layers_per_block: 1, norm: instance, activation: leaky_relu, dropout: 0.1, separable: false, pooling: max,
     upsampling: transposed, skip_merge: concat}}
  - {{type: predictor}}
"""


def data() -> DataConfig:
    return DataConfig.from_dict({
        "synthetic": {"seed": 1, "shape": [6, 48, 48]}, "classes": ["interior", "membrane", "mito"],
        "membrane_class": 1, "regions": {"train": {"z": [0, 4]}, "validation": {"z": [4, 5]}}}, source="test")


def tree(optimizer: str, schedule: str, lr: float, warmup: int = 0) -> ModuleTree:
    extra = f", warmup_steps: {warmup}" if warmup else ""
    return ModuleTree.from_yaml(TREE.format(optimizer=optimizer, schedule=schedule, lr=lr, extra=extra), source="test")


def train(out, t: ModuleTree, steps: int, horizon: int | None) -> Trainer:
    settings = TrainSettings(steps=steps, schedule_steps=horizon, eval_every=7, checkpoint_every=1000,
                             device="cpu", precision="fp32", num_threads=1, overlays=False,
                             augment={"flip": True, "rot90": True, "elastic": {"p": 0.5, "alpha": 10, "sigma": 4},
                                      "intensity": {"p": 0.5}})
    trainer = Trainer(t, data(), settings, out, progress=False)
    trainer.fit()
    return trainer


@pytest.mark.parametrize("optimizer,schedule,lr,warmup", [("sgd", "poly", 0.01, 0), ("adamw", "cosine", 1e-3, 0),
                                                          ("adam", "onecycle", 1e-3, 0), ("sgd", "poly", 0.01, 15)])
def test_continuing_equals_training_straight_through(tmp_path, optimizer, schedule, lr, warmup):
    t = tree(optimizer, schedule, lr, warmup)  # warm-up 15: stopped at 10, inside it
    straight = train(tmp_path / "straight", t, 30, horizon=40)
    first = train(tmp_path / "continued", t, 10, horizon=40)
    assert first.step == 10
    continued = train(tmp_path / "continued", t, 30, horizon=40)  # a new process would do the same
    assert continued.step == 30
    lrs = [h["lr"] for h in continued.history if "lr" in h]
    assert lrs == pytest.approx([h["lr"] for h in straight.history if "lr" in h], rel=1e-12)
    a, b = straight.model.state_dict(), continued.model.state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    moved = sum(float((a[k].float() - first.model.state_dict()[k].float()).abs().sum()) for k in a)
    assert moved > 0  # the 20 continued steps did train


def test_poly_schedule_is_nnunets(tmp_path):
    t = tree("sgd", "poly", 0.01)
    trainer = train(tmp_path, t, 5, horizon=10)
    opt = trainer.optimizer
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["momentum"] == 0.99 and opt.defaults["nesterov"] is True
    lrs = [h["lr"] for h in trainer.history if "lr" in h]
    assert lrs == pytest.approx([0.01 * (1 - s / 10) ** 0.9 for s in range(1, 6)])


def test_warmup_rises_linearly_then_the_schedule_runs_over_the_rest(tmp_path):
    trainer = train(tmp_path, tree("sgd", "poly", 0.01, warmup=4), 10, horizon=10)
    lrs = [h["lr"] for h in trainer.history if "lr" in h]
    rise = [0.01 * (0.25 + 0.75 * s / 4) for s in range(1, 5)]  # from lr / 4 at step 0 to lr at step 4
    decay = [0.01 * (1 - s / 6) ** 0.9 for s in range(1, 7)]  # poly over the 6 steps that are left
    assert lrs == pytest.approx(rise + decay)


@pytest.mark.parametrize("schedule,warmup,says", [("poly", 10, "below the schedule's horizon"),
                                                  ("onecycle", 2, "onecycle")])
def test_a_warmup_that_cannot_run_is_refused_with_one_line(tmp_path, schedule, warmup, says):
    with pytest.raises(ArborsegError) as err:
        train(tmp_path, tree("sgd", schedule, 0.01, warmup=warmup), 5, horizon=10)
    message = str(err.value)
    assert "\n" not in message and "warmup_steps" in message and says in message


def test_steps_beyond_the_horizon_are_refused_with_one_line(tmp_path):
    with pytest.raises(ArborsegError) as err:
        train(tmp_path, tree("sgd", "poly", 0.01), 30, horizon=20)
    message = str(err.value)
    assert "\n" not in message and "schedule_steps" in message and "30" in message


def test_a_checkpoint_of_another_horizon_is_refused(tmp_path):
    t = tree("adamw", "cosine", 1e-3)
    train(tmp_path, t, 5, horizon=10)
    with pytest.raises(ArborsegError, match="horizon"):
        train(tmp_path, t, 8, horizon=20)
