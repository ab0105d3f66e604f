"""The precision setting: what ``auto`` picks on this machine, refusals in one line, the older ``amp`` key, and
training in bf16 (recorded in the trial's metrics)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_continuation import data

from arborseg.device import native_bf16_cpu, resolve_precision
from arborseg.errors import ArborsegError
from arborseg.train.settings import TrainSettings
from arborseg.train.trainer import train_and_score
from arborseg.tree import ModuleTree

CPU = torch.device("cpu")
TREE = """
arborseg_tree: 1
space: test
window: [1, 32, 32]
training: {lr: 0.003, foreground_bias: 0.5}
root:
  type: sequence
  children:
  - {type: encoder_decoder, dims: 2d, kernel_size: 3, depth: 2, width: 4, width_growth: 2.0, blocks_per_level: 1,
     layers_per_block: 1, norm: instance, activation: leaky_relu, dropout: 0.0, separable: false, pooling: max,
     upsampling: transposed, skip_merge: concat}
  - {type: predictor}
"""


def test_auto_is_bf16_only_where_the_cpu_has_it():
    name, dtype = resolve_precision("auto", CPU)
    assert (name, dtype) == (("bf16", torch.bfloat16) if native_bf16_cpu() else ("fp32", None))
    assert resolve_precision("fp32", CPU) == ("fp32", None)
    assert resolve_precision("bf16", CPU) == ("bf16", torch.bfloat16)


def test_bad_precisions_are_refused_in_one_line():
    with pytest.raises(ArborsegError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ArborsegError, match=r"precision 'half' must be one of \['auto', 'fp32', 'bf16', 'fp16'\]"):
        TrainSettings.from_dict({"precision": "half"})


def test_the_older_amp_key_still_reads():
    assert TrainSettings.from_dict({"amp": False}).precision == "fp32"
    assert TrainSettings.from_dict({"amp": True}).precision == "auto"
    assert TrainSettings.from_dict({}).precision == "auto"


def test_training_in_bf16_is_recorded(tmp_path):
    tree = ModuleTree.from_yaml(TREE, source="test")
    settings = TrainSettings(steps=3, eval_every=3, device="cpu", precision="bf16", num_threads=1, overlays=False)
    result = train_and_score(tree, data(), settings, tmp_path, progress=False)
    assert result["precision"] == "bf16"
    assert json.loads((tmp_path / "metrics.json").read_text())["precision"] == "bf16"
    assert all(math.isfinite(h["loss"]) for h in json.loads((tmp_path / "history.json").read_text()) if "loss" in h)


def test_prediction_in_bf16_where_auto_picks_it(monkeypatch):
    import numpy as np

    import arborseg.device
    from arborseg.inference import predict_volume
    from arborseg.nn import build_network

    tree = ModuleTree.from_yaml(TREE, source="test")
    torch.manual_seed(0)
    net = build_network(tree, 3)
    volume = np.random.default_rng(0).random((2, 48, 48), dtype=np.float32)
    fp32 = predict_volume(net, volume, (1, 32, 32), 3)
    monkeypatch.setattr(arborseg.device, "native_bf16_cpu", lambda: True)  # as on a CPU with AVX512-BF16
    assert resolve_precision("auto", CPU) == ("bf16", torch.bfloat16)
    bf16 = predict_volume(net, volume, (1, 32, 32), 3, amp=True)
    assert bf16.dtype == np.float32 and not np.array_equal(bf16, fp32)  # it did run in bf16
    assert np.abs(bf16 - fp32).max() < 0.05 and (bf16.argmax(0) == fp32.argmax(0)).mean() > 0.95
