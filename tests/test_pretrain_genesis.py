"""Models Genesis pre-training (restoration of distorted patches; encoder and decoder): on real unlabeled EM, its
checkpoint loads into trees (the decoder too, where it fits), its config errors are one line.

Real data from ``../shared/data/unlabeled`` (skipped clearly when absent); tiny encoder-decoders, one thread.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pretrain import ISBI_TEST, VNC2, needs_unlabeled, one_thread  # noqa: F401  (the fixture)

from arborseg.errors import PretrainError
from arborseg.nn import build_network
from arborseg.nn.blocks import EncoderDecoder
from arborseg.nn.pretrained import load_encoder, read_encoder_checkpoint
from arborseg.pretrain import PretrainConfig
from arborseg.pretrain.genesis import Distortions, Genesis, distort, in_paint, out_paint, restoration_pairs
from arborseg.pretrain.run import pretrain
from arborseg.space.encoder_init import start_from
from arborseg.tree import ModuleTree

ROOT = Path(__file__).resolve().parents[1]
ENCODER_DECODER = {"dims": "2d", "depth": 3, "width": 8, "skip_merge": "concat", "upsampling": "transposed"}


def genesis_config(name: str = "genesis", steps: int = 60, **extra) -> dict:
    cfg = {"name": name, "method": "genesis", "volumes": [str(VNC2), {"path": str(ISBI_TEST), "z": [0, 10]}],
           "encoder": {"encoder_decoder": dict(ENCODER_DECODER)}, "steps": steps, "batch_size": 8, "patch": 32,
           "checkpoint_every": 20, "neighbours": False}
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="module")
def genesis_run(tmp_path_factory) -> Path:
    if not (VNC2.exists() and ISBI_TEST.exists()):
        pytest.skip("unlabeled EM volumes not found under ../shared/data/unlabeled")
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("genesis") / "run"
    pretrain(PretrainConfig.from_dict(genesis_config(steps=80, neighbours=True)), out, progress=False)
    return out


# ------------------------------------------------------------------------------------------- distortions
def test_intensity_curves_invert_only_when_asked() -> None:
    from arborseg.pretrain.genesis import nonlinear_intensity

    ramp = np.linspace(0, 1, 50, dtype=np.float32)
    for seed in range(20):
        assert (np.diff(nonlinear_intensity(ramp, np.random.default_rng(seed))) >= -1e-6).all()
    inverted = [nonlinear_intensity(ramp, np.random.default_rng(seed), invert=1.0) for seed in range(5)]
    assert all(curve[0] > curve[-1] for curve in inverted)


def test_distortions_keep_shape_and_are_reproducible() -> None:
    patch = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    a = distort(patch, np.random.default_rng(1))
    b = distort(patch, np.random.default_rng(1))
    assert a.shape == patch.shape and a.dtype == patch.dtype
    np.testing.assert_array_equal(a, b)
    never = Distortions(nonlinear=0, local_shuffle=0, paint=0)
    np.testing.assert_array_equal(distort(patch, np.random.default_rng(2), never), patch)  # nothing drawn: a copy
    x, y = restoration_pairs([patch, patch], np.random.default_rng(3))
    assert x.shape == y.shape == (2, 1, 3, 32, 32)
    assert {tuple(np.sort(t.numpy().ravel())) == tuple(np.sort(patch.ravel())) for t in y[:, 0]} == {True}


def test_painting_keeps_or_cuts_out_boxes_through_the_whole_stack() -> None:
    rng = np.random.default_rng(0)
    patch = np.full((3, 64, 64), 2.0, dtype=np.float32)  # noise is drawn in 0..1, so kept pixels are the 2.0s
    kept = out_paint(patch, rng) == 2.0
    assert 0 < kept.mean() < 1 and (kept == kept[0]).all()  # some boxes kept, the same on every slice
    cut = in_paint(patch, np.random.default_rng(5)) != 2.0
    assert 0 < cut.mean() < 0.5 and (cut == cut[0]).all()


# ------------------------------------------------------------------------------------------- pre-training
@needs_unlabeled
def test_restoration_learns_on_real_unlabeled_em(genesis_run: Path) -> None:
    history = json.loads((genesis_run / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, 81))
    early = np.mean([h["loss"] for h in history[:10]])
    late = np.mean([h["loss"] for h in history[-20:]])
    copying = np.mean([h["copy_mse"] for h in history[-20:]])
    assert late < 0.85 * early, (early, late)
    assert late < 0.8, late  # standardised patches: predicting zero everywhere scores 1
    assert late < copying, (late, copying)  # it restores, it does not just return its input
    for name in ("encoder.pt", "encoder.json", "checkpoint.pt", "loss_curve.png", "restorations.png"):
        assert (genesis_run / name).is_file(), name
    spec = json.loads((genesis_run / "encoder.json").read_text())
    assert spec["method"] == "genesis" and spec["decoder"] is True


@needs_unlabeled
def test_a_tree_started_from_genesis_gets_encoder_and_decoder(genesis_run: Path) -> None:
    """start_from pins the checkpoint's encoder and decoder values; every tensor of the net's encoder-decoder
    is then the checkpoint's, tensor by tensor."""
    tree = ModuleTree.load(ROOT / "search_spaces" / "portfolio" / "unet2d_nnunet.yaml")
    node = next(n for n in tree.root.walk() if n.type == "encoder_decoder")
    assert node.get("depth") != 3
    started = start_from(tree, str(genesis_run))
    node = next(n for n in started.root.walk() if n.type == "encoder_decoder")
    assert (node.get("depth"), node.get("width"), node.get("skip_merge")) == (3, 8, "concat")
    net = build_network(started, 2)
    ed = next(m for m in net.modules() if isinstance(m, EncoderDecoder))
    report = load_encoder(ed, node.get("init"))
    tensors, _ = read_encoder_checkpoint(genesis_run / "encoder.pt")
    state = ed.state_dict()
    assert report.decoder == len([k for k in state if k.startswith(("ups.", "decoders."))]) > 0
    assert "decoder tensors" in report.line()
    assert set(state) == set(tensors)
    for key, value in state.items():
        torch.testing.assert_close(value, tensors[key], rtol=0, atol=0, msg=key)


@needs_unlabeled
def test_a_decoder_that_does_not_fit_is_left_random(genesis_run: Path, caplog) -> None:
    values = PretrainConfig.from_dict(genesis_config()).encoder  # every value, the defaults filled in
    assert isinstance(values, dict)
    ed = Genesis({**values, "skip_merge": "add"}).net  # the same encoder, another decoder
    with caplog.at_level(logging.WARNING):
        report = load_encoder(ed, genesis_run / "encoder.pt")
    assert report.matched == report.total and report.decoder == 0
    assert "decoder does not fit" in caplog.text


# ------------------------------------------------------------------------------------------- config
@needs_unlabeled
@pytest.mark.parametrize("change, message", [
    ({"encoder": "resnet50"}, "encoder: genesis restores patches with a whole encoder_decoder"),
    ({"moco": {"queue": 64}}, "moco: only for method: mocov2"),
    ({"genesis": {"paint": 1.5}}, "genesis.paint: expected a probability between 0 and 1"),
    ({"genesis": {"inpaint": 0.5}}, "genesis.inpaint: unknown key"),
])
def test_bad_genesis_configs_are_one_line(change: dict, message: str) -> None:
    with pytest.raises(PretrainError, match=message) as err:
        PretrainConfig.from_dict(genesis_config(**change))
    assert "\n" not in str(err.value)


@needs_unlabeled
def test_genesis_defaults() -> None:
    config = PretrainConfig.from_dict(genesis_config(batch_size=1))
    assert config.learning_rate == pytest.approx(1e-3)
    assert config.genesis == {"nonlinear": 0.9, "invert": 0.0, "local_shuffle": 0.5, "paint": 0.9, "outpaint": 0.8}


@needs_unlabeled
def test_a_stopped_genesis_run_resumes_to_the_same_weights(tmp_path: Path, monkeypatch) -> None:
    """A run that dies at step 15 (its last checkpoint: step 10) continues from the checkpoint on the next call
    and ends with the weights of a run never stopped (model, AdamW state, schedule and RNG all restored)."""
    from arborseg.pretrain.run import Pretrainer

    config = genesis_config(steps=20, checkpoint_every=10)
    calls = {"n": 0}
    real = Pretrainer._loss

    def dies_at_15(self):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt  # as a kill would, between two checkpoints
        return real(self)

    monkeypatch.setattr(Pretrainer, "_loss", dies_at_15)
    with pytest.raises(KeyboardInterrupt):
        pretrain(PretrainConfig.from_dict(config), tmp_path / "stopped", progress=False)
    monkeypatch.setattr(Pretrainer, "_loss", real)
    assert torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=False)["step"] == 10
    pretrain(PretrainConfig.from_dict(config), tmp_path / "stopped", progress=False)
    pretrain(PretrainConfig.from_dict(config), tmp_path / "straight", progress=False)
    history = json.loads((tmp_path / "stopped" / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, 21))
    a, _ = read_encoder_checkpoint(tmp_path / "stopped" / "encoder.pt")
    b, _ = read_encoder_checkpoint(tmp_path / "straight" / "encoder.pt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@needs_unlabeled
def test_a_genesis_config_round_trips_as_a_job_reads_it() -> None:
    config = PretrainConfig.from_dict(genesis_config(genesis={"paint": 0.5}))
    again = PretrainConfig.from_dict(config.to_dict())
    assert again == config and "moco" not in config.to_dict()


@needs_unlabeled
def test_the_example_config_loads() -> None:
    from arborseg.pretrain import load_pretrain_config

    config = load_pretrain_config(ROOT / "examples" / "pretrain_em_genesis.yaml")
    assert config.method == "genesis" and config.module == "encoder_decoder" and config.learning_rate == 1e-3
