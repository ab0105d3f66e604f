"""The bootstrap loop on tiny synthetic volumes: training on sparse labels, network outputs for the
strategies, pseudo-labels, the project folder (init / next / ingest / status) and its CLI, the simulation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from arborseg.bootstrap import BootstrapProject, ProjectSettings
from arborseg.bootstrap.models import (
    ArrayData,
    LabelTrainer,
    mc_dropout_probs,
    train_models,
    unit_embeddings,
    with_dropout,
)
from arborseg.bootstrap.paint import read_label_stack
from arborseg.bootstrap.pseudo import make_pseudo_labels
from arborseg.bootstrap.units import make_units
from arborseg.data import Normalizer, make_em_volume, write_volume
from arborseg.errors import ArborsegError
from arborseg.space import load_space
from arborseg.train.settings import TrainSettings

IGNORE = 255
CLASSES = ("interior", "membrane", "mitochondria")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: many times faster than two on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trees():
    space = load_space("search_spaces/quickstart.yaml")
    t2d, t3d = space.sample(1), space.sample(3)
    assert t2d.window[0] == 1 and t3d.window[0] == 3
    return t2d, t3d


@pytest.fixture(scope="module")
def volume():
    raw, labels = make_em_volume((6, 64, 64), seed=3)
    return raw, labels


def _data(volume, labeled_slices=(0,)):
    raw, gt = volume
    sparse = np.full(gt.shape, IGNORE, np.uint8)
    for z in labeled_slices:
        sparse[z] = gt[z]
    return ArrayData(Normalizer.fit(raw).apply(raw).astype(np.float32), sparse, CLASSES, IGNORE, 0)


def _settings(steps=3, seed=0):
    return TrainSettings(steps=steps, eval_every=steps, checkpoint_every=steps, seed=seed, device="cpu",
                         overlays=False)


def test_label_trainer_samples_labeled_windows_with_voxel_weights(volume, trees, tmp_path):
    data = _data(volume, (2,))
    weights = np.ones(data.labels.shape, np.float32)
    weights[2, :32] = 5.0
    trainer = LabelTrainer(trees[0], data, _settings(), tmp_path, voxel_weights=weights, progress=False)
    sampler = trainer._sampler()
    for _ in range(5):
        x, y, w = sampler.sample_batch(2)
        assert (y != IGNORE).all()            # 2D windows sit on the labeled slice
        assert w is not None and set(np.unique(w)) <= {1.0, 5.0}
    with pytest.raises(ArborsegError, match="nothing is labeled"):
        empty = _data(volume, ())
        LabelTrainer(trees[0], empty, _settings(), tmp_path / "e", progress=False)._sampler()


def test_mc_dropout_needs_dropout_and_then_varies(volume, trees, tmp_path):
    data = _data(volume)
    plain = train_models(trees[0], data, _settings(), tmp_path / "a", progress=False)[0]
    with pytest.raises(ArborsegError, match="no dropout"):
        mc_dropout_probs(plain, data.raw, trees[0].window, 3, samples=2)
    dropped = train_models(with_dropout(trees[0], 0.3), data, _settings(), tmp_path / "b", progress=False)[0]
    samples = mc_dropout_probs(dropped, data.raw, trees[0].window, 3, samples=3, z_range=(1, 2))
    assert samples.shape == (3, 3) + data.raw.shape
    assert not np.allclose(samples[0, :, 1], samples[1, :, 1])
    assert np.allclose(samples[:, :, 0], 0)   # outside z_range nothing is predicted
    units = make_units(data.raw.shape, "tile", 32)[:5]
    emb = unit_embeddings(dropped, data.raw, units, trees[0].window)
    assert emb.shape[0] == 5 and emb.shape[1] >= 4 and np.isfinite(emb).all()
    assert not dropped.training and any(isinstance(m, torch.nn.Dropout2d) for m in dropped.modules())


def test_pseudo_labels_fill_only_unlabeled_slices(volume, trees, tmp_path):
    data = _data(volume, (0, 3))
    labels, pseudo = make_pseudo_labels(trees[0], data, _settings(), tmp_path, progress=False)
    assert np.array_equal(labels[[0, 3]], data.labels[[0, 3]])
    assert not pseudo[[0, 3]].any() and pseudo[[1, 2, 4, 5]].all()
    assert labels.max() < 3
    with pytest.raises(ArborsegError, match="2D network"):
        make_pseudo_labels(trees[1], data, _settings(), tmp_path / "x", progress=False)


def test_project_init_next_ingest_status(volume, trees, tmp_path):
    raw, gt = volume
    sparse = np.full(gt.shape, IGNORE, np.uint8)
    sparse[0] = gt[0]
    settings = ProjectSettings(classes=list(CLASSES), unit="tile", tile=32, steps=3, per_iteration=2,
                               strategy="entropy", device="cpu", error_mode="fn")
    project = BootstrapProject.create(tmp_path / "p", raw, sparse, trees[0], settings)
    assert project.labeled_voxels() == 64 * 64
    rec = project.next(progress=False)
    it = tmp_path / "p" / "iterations" / "001"
    pre = read_label_stack(it / "presegmentation.tif")
    assert pre.shape == (2, 32, 32) and rec["candidates"] == 20
    assert (it / "preview.png").is_file() and (it / "raw.tif").is_file()
    with pytest.raises(ArborsegError, match="waits for its correction"):
        project.next(progress=False)
    # a wrong shape and a wrong value are refused, then the ground truth (whole volume) is ingested
    bad = tmp_path / "bad.tif"
    write_volume(bad, np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(ArborsegError, match="neither the proposal's stack"):
        project.ingest(bad)
    write_volume(bad, np.full((2, 32, 32), 7, np.uint8))
    with pytest.raises(ArborsegError, match="values \\[7\\]"):
        project.ingest(bad)
    gt_path = tmp_path / "gt.tif"
    write_volume(gt_path, gt)
    stats = project.ingest(gt_path)
    truth = np.stack([gt[z, y:y + 32, x:x + 32] for z, y, x, _, _ in rec["units"]])
    assert stats["labeled"] == 2 * 32 * 32
    assert stats["changed"] == int((truth != pre).sum())
    assert stats["labeled_voxels"] == 64 * 64 + 2 * 32 * 32 == project.labeled_voxels()
    errors = project.errors()
    z, y, x, _, _ = rec["units"][0]
    missed = (pre[0] != truth[0]) & (truth[0] != 0)
    assert np.array_equal(errors[z, y:y + 32, x:x + 32] == 2, missed)
    history = json.loads((tmp_path / "p" / "history.json").read_text())
    assert len(history) == 1 and history[0]["changed"] == stats["changed"]
    text = project.status()
    assert "labeled: 6/24 tiles" in text and (tmp_path / "p" / "progress.png").is_file()
    # the next round trains with the error weights of the correction and proposes other tiles
    rec2 = project.next(strategy="adjacent", k=1, progress=False)
    assert rec2["iteration"] == 2 and rec2["units"][0] not in rec["units"]


def test_cli_loop_on_a_tiff_volume(volume, trees, tmp_path, capsys):
    from arborseg.cli import main

    raw, gt = volume
    write_volume(tmp_path / "raw.tif", raw)
    write_volume(tmp_path / "gt.tif", gt)
    tree = trees[0].save(tmp_path / "tree.yaml")
    folder = tmp_path / "proj"
    assert main(["bootstrap", "init", str(folder), "--raw", str(tmp_path / "raw.tif"), "--classes", *CLASSES,
                 "--tree", str(tree), "--steps", "2", "--device", "cpu", "--threads", "1"]) == 0
    assert main(["bootstrap", "next", str(folder)]) == 2   # nothing labeled yet
    assert "nothing is labeled" in capsys.readouterr().err
    write_volume(tmp_path / "partial.tif", np.where(np.arange(6)[:, None, None] == 2, gt, IGNORE).astype(np.uint8))
    folder2 = tmp_path / "proj2"
    assert main(["bootstrap", "init", str(folder2), "--raw", str(tmp_path / "raw.tif"), "--labels",
                 str(tmp_path / "partial.tif"), "--classes", *CLASSES, "--tree", str(tree), "--steps", "2",
                 "--device", "cpu", "--strategy", "coreset"]) == 0
    assert main(["-q", "bootstrap", "next", str(folder2)]) == 0
    out = capsys.readouterr().out
    assert "coreset chose 1 of 5 unlabeled slices" in out
    assert main(["bootstrap", "ingest", str(folder2), str(tmp_path / "gt.tif")]) == 0
    out = capsys.readouterr().out
    assert "4096 voxels labeled in 1 units" in out and "fn_401=" in out
    assert main(["bootstrap", "status", str(folder2)]) == 0
    assert "labeled: 2/6 slices" in capsys.readouterr().out
    assert main(["bootstrap", "status", str(tmp_path / "nowhere")]) == 2
    assert "not a bootstrap project" in capsys.readouterr().err


def test_a_project_can_start_from_a_pre_trained_encoder(volume, trees, tmp_path, caplog):
    """`bootstrap init --init RUN`: the project's tree takes the encoder's structure and init, and every
    iteration's training starts from those weights."""
    from test_pretrain import write_encoder_run

    from arborseg.cli import main
    from arborseg.tree import ModuleTree

    raw, gt = volume
    write_volume(tmp_path / "raw.tif", raw)
    write_volume(tmp_path / "partial.tif", np.where(np.arange(6)[:, None, None] == 2, gt, IGNORE).astype(np.uint8))
    run = tmp_path / "my_encoder"
    write_encoder_run(run, depth=2, width=4)
    folder = tmp_path / "proj"
    assert main(["bootstrap", "init", str(folder), "--raw", str(tmp_path / "raw.tif"), "--labels",
                 str(tmp_path / "partial.tif"), "--classes", *CLASSES, "--tree", str(trees[0].save(tmp_path / "t.yaml")),
                 "--steps", "2", "--device", "cpu", "--init", str(run)]) == 0
    node = ModuleTree.load(folder / "tree.yaml").root.children[0]
    assert (node.get("depth"), node.get("width"), node.get("init")) == (2, 4, str(run / "encoder.pt"))
    with caplog.at_level("INFO", logger="arborseg"):
        assert main(["bootstrap", "next", str(folder)]) == 0
    assert any("encoder tensors" in r.getMessage() and "my_encoder" in r.getMessage() for r in caplog.records)
    assert main(["bootstrap", "init", str(tmp_path / "proj2"), "--raw", str(tmp_path / "raw.tif"), "--classes",
                 *CLASSES, "--tree", str(tmp_path / "t.yaml"), "--init", str(tmp_path / "nowhere")]) == 2


def test_simulation_rows_grow_by_the_round(volume, trees, tmp_path):
    from arborseg.bootstrap.simulation import SimulationSettings, SimVolume, simulate

    raw, gt = volume
    norm = Normalizer.fit(raw).apply(raw).astype(np.float32)
    pool, held = SimVolume(norm[:4], gt[:4], CLASSES), [SimVolume(norm[4:], gt[4:], CLASSES)]
    settings = SimulationSettings(unit="tile", tile=32, initial=1, per_round=2, rounds=2, steps=2)
    rows = simulate(pool, held, trees[0], "least_confidence", settings, seed=0, out_dir=tmp_path)
    assert [r["labeled_units"] for r in rows] == [1, 3, 5]
    assert all(0 <= r["fg_iou"] <= 1 and r["fn_401"] >= 0 for r in rows)
    assert "next_changed_fraction" in rows[0] and "next_changed_fraction" not in rows[-1]
    pseudo = simulate(pool, held, trees[1], "random", SimulationSettings(unit="slice", initial=1, per_round=1,
                                                                         rounds=1, steps=2, pseudo_lambda=0.5),
                      seed=0, out_dir=tmp_path / "pseudo", tree2d=trees[0])
    assert [r["labeled_units"] for r in pseudo] == [1, 2]


def test_next_reuses_trained_models_and_checks_their_classes(volume, trees, tmp_path):
    raw, gt = volume
    sparse = np.full(gt.shape, IGNORE, np.uint8)
    sparse[1] = gt[1]
    data = _data(volume, (1,))
    train_models(trees[0], data, _settings(), tmp_path / "pre", members=2, progress=False)
    paths = [tmp_path / "pre" / f"member_{i}" / "model.pt" for i in range(2)]
    settings = ProjectSettings(classes=list(CLASSES), steps=3, device="cpu")
    project = BootstrapProject.create(tmp_path / "p", raw, sparse, trees[0], settings)
    rec = project.next(strategy="bald_ensemble", k=2, model_paths=paths, progress=False)
    assert rec["models"].startswith("loaded ") and len(rec["units"]) == 2
    assert not (tmp_path / "p" / "iterations" / "001" / "models").exists()  # nothing was trained
    other = ProjectSettings(classes=["a", "b"], steps=3, device="cpu")
    two = BootstrapProject.create(tmp_path / "q", raw, np.where(sparse == IGNORE, IGNORE, sparse > 0).astype(np.uint8),
                                  trees[0], other)
    with pytest.raises(ArborsegError, match="predict 3 classes but the project has 2"):
        two.next(model_paths=paths, progress=False)
    assert two.pending() is None and two.iteration_dirs() == []  # a failed proposal leaves no iteration


@pytest.mark.parametrize("pool", [[5], [3, 2], [0, 1, 2], "0:4", [0.5, 3]])
def test_a_bad_pool_is_one_line(pool):
    with pytest.raises(ArborsegError, match=r"project.yaml: pool .* must be two slice numbers"):
        ProjectSettings.from_dict({"classes": ["bg", "fg"], "pool": pool})
