"""One trial: loss weighting, training artifacts, resume, NaN handling, real-data CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from arborseg.data import DataConfig
from arborseg.errors import ArborsegError, TrainingError
from arborseg.metrics import minimise
from arborseg.space import load_space
from arborseg.train.losses import class_weights, error_weight_map, segmentation_loss
from arborseg.train.settings import TrainSettings
from arborseg.train.trainer import Trainer, TrialPruned, train_and_score

ROOT = Path(__file__).parents[1]
VNC = ROOT.parent / "shared" / "data" / "drosophila_vnc_sstem"


def synthetic_data(shape=(8, 64, 64)) -> DataConfig:
    return DataConfig.from_dict({
        "synthetic": {"seed": 1, "shape": list(shape)}, "classes": ["interior", "membrane", "mito"],
        "membrane_class": 1,
        "regions": {"train": {"z": [0, 4]}, "validation": {"z": [4, 5]}, "eval_near": {"z": [5, 6]},
                    "eval_far": {"z": [7, 8]}}}, source="test")


def small_tree():
    space = load_space(ROOT / "search_spaces" / "quickstart.yaml")
    return next(t for t in (space.sample(s) for s in range(50)) if t.family == "thin3d")


# ---------------------------------------------------------------------- loss
def test_class_weights_follow_frequencies():
    w = class_weights(np.array([0.9, 0.1]), "inverse")
    assert w[1] / w[0] == pytest.approx(9.0)
    assert class_weights(np.array([0.9, 0.1]), "inverse_sqrt")[1] / class_weights(np.array([0.9, 0.1]),
                                                                                   "inverse_sqrt")[0] == pytest.approx(3.0)
    assert class_weights(np.array([1.0, 0.0]), "inverse")[1] == 0.0  # absent class
    assert (class_weights(np.array([0.5, 0.5]), "none") == 1).all()


def test_error_weight_map_all_and_false_negatives_only():
    target = np.array([[[0, 1, 1, 0]]])
    previous = np.array([[[1, 0, 1, 0]]])  # voxel 0: false positive, voxel 1: false negative
    assert error_weight_map(previous, target, "all", 4.0).tolist() == [[[4, 4, 1, 1]]]
    assert error_weight_map(previous, target, "fn", 4.0).tolist() == [[[1, 4, 1, 1]]]
    ignored = np.array([[[0, 255, 1, 0]]])
    assert error_weight_map(previous, ignored, "all", 4.0, ignore_value=255).tolist() == [[[4, 1, 1, 1]]]


def test_loss_ignores_ignore_value_exactly():
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 1, 4, 4)
    target = torch.randint(0, 2, (1, 1, 4, 4))
    sparse = target.clone()
    sparse[..., 2:, :] = 255  # half unlabeled
    full = segmentation_loss(logits[..., :2, :], target[..., :2, :])
    assert segmentation_loss(logits, sparse, ignore_value=255) == pytest.approx(full.item(), rel=1e-6)


def test_voxel_weights_shift_the_loss_towards_weighted_voxels():
    logits = torch.zeros(1, 2, 1, 1, 2)
    logits[0, 1, 0, 0, 0] = 3.0  # voxel 0 confidently class 1 (right), voxel 1 unsure (loss log 2)
    target = torch.tensor([[[[1, 1]]]])
    plain = segmentation_loss(logits, target)
    weighted = segmentation_loss(logits, target, voxel_weight=torch.tensor([[[[1.0, 9.0]]]]))
    assert weighted > plain
    assert weighted.item() == pytest.approx((0.0486 + 9 * np.log(2)) / 10, rel=1e-2)


def test_dice_term_adds_to_the_loss():
    logits = torch.randn(2, 3, 1, 8, 8)
    target = torch.randint(0, 3, (2, 1, 8, 8))
    assert segmentation_loss(logits, target, dice_weight=1.0) > segmentation_loss(logits, target)


def test_objective_directions():
    assert minimise("fn_401") and minimise("fp_65/mito") and minimise("rand_error")
    assert not minimise("fg_iou") and not minimise("iou/mito")


# ---------------------------------------------------------------------- training
def test_train_writes_artifacts_and_resumes(tmp_path):
    tree, data = small_tree(), synthetic_data()
    settings = TrainSettings(steps=6, eval_every=3, checkpoint_every=3, seed=0)
    result = train_and_score(tree, data, settings, tmp_path, progress=False)
    for name in ("metrics.json", "checkpoint.pt", "model.pt", "learning_curve.png", "history.json", "tree.yaml"):
        assert (tmp_path / name).is_file(), name
    assert sorted(p.name.split("_z")[0] for p in (tmp_path / "overlays").glob("*.png")) == ["eval_far", "eval_near"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["regions"]) == {"validation", "eval_near", "eval_far"}
    assert {"iou/mito", "fn_401/mito", "fp_5/membrane", "rand_error"} <= set(metrics["regions"]["eval_far"])
    assert result["steps"] == 6
    # a longer run continues from the checkpoint instead of starting again
    trainer = Trainer(tree, data, TrainSettings(steps=8, eval_every=4, seed=0), tmp_path, progress=False)
    assert trainer.try_resume() and trainer.step == 6
    trainer.fit()
    assert trainer.step == 8
    assert [h["step"] for h in trainer.history if "loss" in h] == list(range(1, 9))


def test_training_is_seeded(tmp_path):
    tree, data = small_tree(), synthetic_data()
    a = train_and_score(tree, data, TrainSettings(steps=3, eval_every=3, seed=5, overlays=False), tmp_path / "a",
                        progress=False)
    b = train_and_score(tree, data, TrainSettings(steps=3, eval_every=3, seed=5, overlays=False), tmp_path / "b",
                        progress=False)
    va, vb = a["regions"]["validation"], b["regions"]["validation"]
    assert va.keys() == vb.keys()
    np.testing.assert_array_equal([va[k] for k in sorted(va)], [vb[k] for k in sorted(vb)])  # NaN == NaN here


def test_nan_loss_is_a_clear_training_error(tmp_path):
    trainer = Trainer(small_tree(), synthetic_data(), TrainSettings(steps=2), tmp_path, progress=False)
    trainer.class_weight = None
    x = np.full((1, 1, *trainer.window), np.nan, dtype=np.float32)
    y = np.zeros((1, *trainer.window), dtype=np.int64)
    with pytest.raises(TrainingError, match=r"loss became nan at step 1 .* lower the learning rate"):
        trainer._train_step(x, y, None)


class AlwaysPrune:
    def report(self, step: int, value: float) -> bool:
        return True


def test_pruning_stops_with_a_checkpoint(tmp_path):
    trainer = Trainer(small_tree(), synthetic_data(), TrainSettings(steps=6, eval_every=2), tmp_path,
                      reporter=AlwaysPrune(), progress=False)
    with pytest.raises(TrialPruned, match="pruned at step 2"):
        trainer.fit()
    assert (tmp_path / "checkpoint.pt").is_file()


@pytest.mark.skipif(not VNC.is_dir(), reason="real data not present: ../shared/data/drosophila_vnc_sstem")
def test_train_cli_on_real_vnc_mitochondria(tmp_path):
    trees = tmp_path / "trees"
    subprocess.run([sys.executable, "-m", "arborseg.cli", "space", "sample", "search_spaces/quickstart.yaml", "--n", "1",
                    "--out", str(trees), "--no-pictures"], cwd=ROOT, check=True, capture_output=True)
    tree = next(trees.glob("*.yaml"))
    res = subprocess.run([sys.executable, "-m", "arborseg.cli", "train", str(tree), "--data", "examples/vnc_mito.yaml",
                          "--steps", "10", "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "eval_far" in res.stdout and "fn_401=" in res.stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0.0 <= metrics["regions"]["eval_far"]["iou/mitochondria"] <= 1.0
    assert metrics["regions"]["eval_far"]["positive_fraction/mitochondria"] > 0.001


def test_train_cli_bad_data_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("synthetic: {seed: 0, shape: [4, 32, 32]}\nclasses: [a, b]\nregions: {train: {z: [0, 9]}}\n")
    tree = small_tree().save(tmp_path / "t.yaml")
    res = subprocess.run([sys.executable, "-m", "arborseg.cli", "train", str(tree), "--data", str(bad)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "regions.train.z" in res.stderr


def test_train_cli_refuses_nan_raw_and_steps_below_one(tmp_path, capsys):
    from arborseg.cli import main
    from arborseg.data import make_em_volume, write_volume

    raw, labels = make_em_volume((6, 32, 32), seed=0)
    raw = raw.astype(np.float32)
    raw[1, 2, 3] = np.nan
    write_volume(tmp_path / "raw.npy", raw)
    write_volume(tmp_path / "labels.npy", labels)
    data = tmp_path / "nan.yaml"
    data.write_text("raw: raw.npy\nlabels: labels.npy\nclasses: [interior, membrane, mito]\n"
                    "regions: {train: {z: [0, 4]}, validation: {z: [4, 5]}, eval_near: {z: [5, 6]}}\n")
    tree = small_tree().save(tmp_path / "t.yaml")
    out = tmp_path / "out"
    assert main(["train", str(tree), "--data", str(data), "--steps", "2", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 NaN/inf voxels in region train (first at z=1, y=2, x=3)" in err[0], err
    assert main(["train", str(tree), "--data", str(data), "--steps", "-5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["arborseg: error: --steps -5: give at least 1"]


def test_fn_mode_is_checked_when_settings_load():
    with pytest.raises(ArborsegError, match="fn_mode '3D' must be 2d"):
        TrainSettings.from_dict({"fn_mode": "3D"})
    assert TrainSettings.from_dict({"fn_mode": "3d"}).fn_mode == "3d"
