"""Pre-trained encoders: MoCo v2 pre-training on real unlabeled EM, CEM500K-format checkpoints, trees' ``init``.

Real data from ``../shared/data/unlabeled`` (skipped clearly when absent); tiny encoders, one thread.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from arborseg.errors import PretrainError, SpaceError
from arborseg.nn import build_network
from arborseg.nn.blocks import EncoderDecoder
from arborseg.nn.pretrained import initialise_encoders, load_encoder, read_encoder_checkpoint
from arborseg.nn.resnet import ResNet50Encoder, ResNetUNet2d
from arborseg.pretrain import PretrainConfig, load_pretrain_config
from arborseg.pretrain.run import Pretrainer, pretrain
from arborseg.space.loader import load_space
from arborseg.tree import ModuleNode, ModuleTree

ROOT = Path(__file__).resolve().parents[1]
UNLABELED = ROOT.parent / "shared" / "data" / "unlabeled"
VNC2 = UNLABELED / "drosophila_vnc_stack2" / "raw.tif"
ISBI_TEST = UNLABELED / "isbi2012_test" / "raw.tif"
needs_unlabeled = pytest.mark.skipif(not (VNC2.exists() and ISBI_TEST.exists()),
                                     reason=f"unlabeled EM volumes not found under {UNLABELED}")

ENCODER = {"dims": "2d", "depth": 3, "width": 8}


def tiny_config(name: str = "tiny", steps: int = 30, **extra) -> dict:
    cfg = {"name": name, "volumes": [str(VNC2), {"path": str(ISBI_TEST), "z": [0, 10]}],
           "encoder": {"encoder_decoder": dict(ENCODER)}, "steps": steps, "batch_size": 16, "patch": 32,
           "lr": 0.03, "moco": {"queue": 64}, "checkpoint_every": 10, "neighbours": False}
    cfg.update(extra)
    return cfg


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory) -> Path:
    """A short real pre-training of a tiny 2D encoder (module-wide: several tests read it)."""
    if not (VNC2.exists() and ISBI_TEST.exists()):
        pytest.skip(f"unlabeled EM volumes not found under {UNLABELED}")
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pretrain") / "tiny"
    pretrain(PretrainConfig.from_dict(tiny_config(steps=120, neighbours=True)), out, progress=False)
    return out


# ------------------------------------------------------------------------------------------- pre-training
@needs_unlabeled
def test_pretraining_learns_on_real_unlabeled_em(pretrained_run: Path) -> None:
    history = json.loads((pretrained_run / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, 121))
    # once the queue holds real keys (64 = 4 batches), the loss starts near chance, log(1 + 64); it must fall
    early = np.mean([h["loss"] for h in history[5:25]])
    late = np.mean([h["loss"] for h in history[-20:]])
    assert late < early - 0.1, (early, late)
    assert np.mean([h["accuracy"] for h in history[-20:]]) > np.mean([h["accuracy"] for h in history[5:25]])
    for name in ("encoder.pt", "encoder.json", "checkpoint.pt", "loss_curve.png", "neighbours.png",
                 "pretrain.yaml", "summary.json"):
        assert (pretrained_run / name).is_file(), name
    from arborseg import runs
    from arborseg.space import encoder_init

    assert (runs.ENCODER_CHECKPOINT, runs.ENCODER_DESCRIPTION) == (encoder_init.ENCODER_FILE,
                                                                   encoder_init.ENCODER_SPEC_FILE)
    spec = json.loads((pretrained_run / "encoder.json").read_text())
    assert spec["module"] == "encoder_decoder" and spec["values"]["width"] == 8 and spec["step"] == 120


@needs_unlabeled
def test_resume_after_kill_continues_from_the_checkpoint(tmp_path: Path) -> None:
    """kill -9 of `arborseg pretrain` after its first checkpoint; the same command then finishes the run, which
    ends with the very weights of a run never interrupted."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(steps=40)))
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "arborseg.cli", "-q", "pretrain", str(cfg), "--out", str(out), "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while not (out / "checkpoint.pt").exists():  # the marker: the first checkpoint (step 10)
        assert proc.poll() is None, "pre-training ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    killed_at = torch.load(out / "checkpoint.pt", weights_only=False)["step"]
    assert 10 <= killed_at < 40
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, 41))  # nothing lost, nothing repeated
    straight = tmp_path / "straight"
    pretrain(PretrainConfig.from_dict(tiny_config(steps=40)), straight, progress=False)
    a, _ = read_encoder_checkpoint(out / "encoder.pt")
    b, _ = read_encoder_checkpoint(straight / "encoder.pt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@needs_unlabeled
def test_a_folder_of_another_run_is_refused(tmp_path: Path) -> None:
    Pretrainer(PretrainConfig.from_dict(tiny_config(steps=2)), tmp_path / "run", progress=False)
    with pytest.raises(PretrainError, match="other patch"):
        Pretrainer(PretrainConfig.from_dict(tiny_config(steps=2, patch=64)), tmp_path / "run", progress=False)


def test_bad_configs_are_one_line(tmp_path: Path) -> None:
    good = {"name": "x", "volumes": [str(tmp_path / "v.npy")], "encoder": "resnet50"}
    np.save(tmp_path / "v.npy", np.zeros((4, 64, 64), np.uint8))
    PretrainConfig.from_dict(good, "p.yaml")
    cases = [({"stepz": 3}, "stepz: unknown key; did you mean 'steps'"),
             ({"volumes": [str(tmp_path / "missing.tif")]}, "does not exist"),
             ({"patch": 48}, "multiple of 32"),
             ({"encoder": "vgg"}, "expected resnet50"),
             ({"z": 3}, "z must be 1"),
             ({"batch_size": 1}, "at least 2 views"),
             ({"moco": {"queue": 100}, "batch_size": 32}, "multiple of batch_size"),
             ({"method": "simclr"}, "not one of"),
             ({"encoder": {"encoder_decoder": {"widht": 8}}}, "did you mean 'width'")]
    for change, message in cases:
        with pytest.raises(PretrainError, match=message) as info:
            PretrainConfig.from_dict({**good, **change}, "p.yaml")
        assert "\n" not in str(info.value) and str(info.value).startswith("p.yaml: ")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(PretrainError, match="not valid YAML"):
        load_pretrain_config(tmp_path / "bad.yaml")


def test_pretrain_cli_reports_a_bad_config_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("name: x\nvolumes: [nowhere.tif]\nencoder: resnet50\n")
    done = subprocess.run([sys.executable, "-m", "arborseg.cli", "pretrain", str(tmp_path / "p.yaml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "does not exist" in done.stderr


# ------------------------------------------------------------------------------------------- CEM500K format
def moco_checkpoint(encoder: torch.nn.Module, norms=(0.57287007, 0.12740536)) -> dict:
    """A checkpoint laid out as CEM500K's MoCo v2 file: query and key encoders, MLP head, queue, norms."""
    state = {}
    for prefix in ("module.encoder_q.", "module.encoder_k."):
        state.update({prefix + k: v.clone() for k, v in encoder.state_dict().items()})
        state[prefix + "fc.0.weight"] = torch.randn(2048, 2048)
        state[prefix + "fc.0.bias"] = torch.randn(2048)
        state[prefix + "fc.2.weight"] = torch.randn(128, 2048)
        state[prefix + "fc.2.bias"] = torch.randn(128)
    state["module.queue"] = torch.randn(128, 256)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {}, "norms": list(norms)}


def resnet_tree(init: str, decoder_width: int = 4) -> ModuleTree:
    unet = ModuleNode("resnet_unet", (("decoder_width", decoder_width), ("encoder", "resnet50"), ("init", init)))
    root = ModuleNode("sequence", (), (unet, ModuleNode("predictor")))
    return ModuleTree(root, (1, 64, 64))


def test_cem500k_layout_loads_into_the_resnet50_encoder(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = ResNet50Encoder(1)
    for m in source.modules():  # non-trivial batch-norm statistics, so that buffers are checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / "cem500k_mocov2_resnet50_200ep.pth.tar"
    torch.save(moco_checkpoint(source), path)
    net = build_network(resnet_tree(str(path)), 2)
    reports = initialise_encoders(net)
    assert len(reports) == 1 and reports[0].matched == reports[0].total == len(source.state_dict()) == 318
    unet = next(m for m in net.modules() if isinstance(m, ResNetUNet2d))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(unet.encoder.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert float(unet.input_mean) == pytest.approx(0.57287007) and float(unet.input_std) == pytest.approx(0.12740536)
    assert "318 of 318 encoder tensors" in reports[0].line()
    out = net(torch.rand(1, 1, 1, 64, 64))
    assert out.shape == (1, 2, 1, 64, 64) and torch.isfinite(out).all()


def test_wrong_files_and_shapes_are_one_line(tmp_path: Path) -> None:
    unet = ResNetUNet2d(1, 4)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    three_channel = ResNet50Encoder(3)
    torch.save(moco_checkpoint(three_channel), tmp_path / "rgb.pth.tar")
    torch.save({"state_dict": {"module.encoder_q.fc.0.weight": torch.zeros(2, 2)}}, tmp_path / "head_only.pt")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "other.pt")
    cases = [(tmp_path / "missing.pt", "does not exist"), (tmp_path / "notes.txt", "is not a PyTorch checkpoint"),
             (tmp_path / "rgb.pth.tar", r"conv1.weight is \(64, 3, 7, 7\) in the file but \(64, 1, 7, 7\)"),
             (tmp_path / "head_only.pt", "holds no encoder weights"), (tmp_path / "other.pt", "holds no state_dict")]
    for path, message in cases:
        with pytest.raises(PretrainError, match=message) as info:
            load_encoder(unet, path)
        assert "\n" not in str(info.value)


def encoder_decoder(**values) -> EncoderDecoder:
    from arborseg.nn.blocks import BuildContext
    from arborseg.space.catalog import MODULE_SPECS

    full = {name: p.default for name, p in MODULE_SPECS["encoder_decoder"].param_index.items()}
    full.update(values)
    return BuildContext(2).build(ModuleNode("encoder_decoder", tuple(sorted(full.items()))), 1)[0].module


def test_an_encoder_of_another_shape_is_refused(tmp_path: Path) -> None:
    wide = encoder_decoder(depth=3, width=16)
    state = {f"module.encoder_q.{k}": v for k, v in wide.state_dict().items() if k.startswith(("encoders", "downs"))}
    torch.save({"state_dict": state, "norms": [0.0, 1.0]}, tmp_path / "wide.pt")
    narrow = encoder_decoder(depth=3, width=8)
    with pytest.raises(PretrainError, match="pre-trained for another encoder"):
        load_encoder(narrow, tmp_path / "wide.pt")
    deeper = encoder_decoder(depth=4, width=16)
    with pytest.raises(PretrainError, match="are not in the file"):
        load_encoder(deeper, tmp_path / "wide.pt")


# ------------------------------------------------------------------------------------------- trees' init
def space_yaml(tmp_path: Path, init) -> Path:
    space = {"name": "init_space", "window": {"z": 1, "xy": 64},
             "training": {"lr": 0.001, "batch_size": 2, "freeze_encoder_steps": 2, "encoder_lr_scale": 0.1},
             "root": {"type": "sequence", "children": [
                 {"type": "encoder_decoder", "dims": "2d", "depth": {"choice": [2, 3, 4]}, "width": {"choice": [4, 16]},
                  "init": init},
                 {"type": "predictor"}]}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@needs_unlabeled
def test_a_tree_with_init_starts_from_the_pretrained_encoder(pretrained_run: Path, tmp_path: Path) -> None:
    """The space offers random or the pre-training run; a drawn tree with the run gets the checkpoint's encoder
    values, and training starts from its weights tensor by tensor (frozen for the first steps, so still equal
    after them) while the decoder trains; a random start differs."""
    from arborseg.data import load_data_config
    from arborseg.space.sampler import sample_tree
    from arborseg.train.settings import TrainSettings
    from arborseg.train.trainer import Trainer, encoder_init_name

    space = load_space(space_yaml(tmp_path, {"choice": ["random", str(pretrained_run)]}))
    trees = [sample_tree(space, seed) for seed in range(12)]
    pre = [t for t in trees if t.root.children[0].get("init") is not None]  # random starts keep init out of the tree
    assert pre and len(pre) < len(trees)
    for tree in pre:  # the checkpoint's structure, whatever was drawn
        node = tree.root.children[0]
        assert (node.get("depth"), node.get("width"), node.get("init")) == (3, 8, str(pretrained_run / "encoder.pt"))
    data = load_data_config(ROOT / "examples" / "isbi2012_membrane.yaml")
    settings = TrainSettings(steps=2, eval_every=2, device="cpu", precision="fp32", overlays=False,
                             augment={})
    trainer = Trainer(pre[0], data, settings, tmp_path / "trial", progress=False)
    trainer.fit()
    assert len(trainer.init_reports) == 1 and trainer.init_reports[0].matched == trainer.init_reports[0].total
    tensors, _ = read_encoder_checkpoint(pretrained_run / "encoder.pt")
    ed = next(m for m in trainer.model.modules() if isinstance(m, EncoderDecoder))
    state = ed.state_dict()
    encoder_keys = [k for k in state if k.startswith(("encoders.", "downs."))]
    assert encoder_keys and set(encoder_keys) <= set(tensors)
    for key in encoder_keys:  # frozen for 2 steps: exactly the pre-trained weights
        torch.testing.assert_close(state[key], tensors[key], rtol=0, atol=0, msg=key)
    rest, encoder = trainer.optimizer.param_groups  # encoder_lr_scale 0.1 of lr 0.001
    assert (rest["initial_lr"], encoder["initial_lr"]) == pytest.approx((1e-3, 1e-4))
    assert encoder_init_name(trainer.model) == pretrained_run.name
    torch.manual_seed(0)
    fresh = build_network(pre[0], 2)  # the same tree built without the trainer: no pre-trained weights
    fresh_ed = next(m for m in fresh.modules() if isinstance(m, EncoderDecoder))
    assert not torch.equal(fresh_ed.state_dict()[encoder_keys[0]], tensors[encoder_keys[0]])


def test_init_that_does_not_exist_is_refused_when_the_space_loads(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"space.yaml: root.children\[0\].init.choice\[1\]: .*arborseg pretrain"):
        load_space(space_yaml(tmp_path, {"choice": ["random", "runs/pretrain/nothing"]}))


# ------------------------------------------------------------------------------------------- as a job
def thin3d_config(name: str) -> dict:
    return tiny_config(name, steps=3, encoder={"encoder_decoder": {"dims": "thin3d", "depth": 2, "width": 4}},
                       batch_size=4, moco={"queue": 16}, z=3, checkpoint_every=3)


@needs_unlabeled
@pytest.mark.parametrize("kind", ["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def test_pretraining_runs_as_a_job_with_a_thin3d_encoder(kind: str, tmp_path: Path, request) -> None:
    """A thin-3D encoder (3-slice views) pre-trained as a submitit job: local process or SLURM job."""
    from arborseg.pretrain.run import run_pretraining

    options: dict = {"threads_per_job": 1}
    if kind == "slurm":
        request.getfixturevalue("slurm_cluster")
        options = {"partition": "debug", "timeout_min": 10, "cpus_per_task": 1, "mem_gb": 2}
    config = PretrainConfig.from_dict(thin3d_config(f"job_{kind}"))
    summary = run_pretraining(config, tmp_path / "run", kind, options)
    assert summary["ok"], summary
    assert summary["steps"] == 3
    tensors, norms = read_encoder_checkpoint(tmp_path / "run" / "encoder.pt")
    assert norms == (0.0, 1.0)
    conv = next(v for k, v in tensors.items() if k.endswith("weight") and v.dim() == 5)
    assert conv.shape[2] == 3  # a (3, k, k) thin-3D kernel
    assert not (tmp_path / "run" / "job.json").exists()  # the job record is dropped once it ended


def write_encoder_run(run: Path, depth: int = 2, width: int = 4) -> dict[str, torch.Tensor]:
    """A pre-training run folder as `arborseg pretrain` writes it (encoder.pt in the MoCo layout, encoder.json
    with every encoder value) for a random 2D encoder; returns its state dict."""
    from arborseg.space.catalog import MODULE_SPECS

    run.mkdir(parents=True)
    values = {name: p.default for name, p in MODULE_SPECS["encoder_decoder"].param_index.items()}
    values.update(dims="2d", depth=depth, width=width)
    values.pop("init")
    encoder = encoder_decoder(**values)
    state = {f"module.encoder_q.{k}": v for k, v in encoder.state_dict().items() if k.startswith(("encoders", "downs"))}
    torch.save({"state_dict": state, "norms": [0.0, 1.0]}, run / "encoder.pt")
    (run / "encoder.json").write_text(json.dumps({"module": "encoder_decoder", "values": values}))
    return state


def test_start_from_gives_a_tree_the_encoder_and_train_uses_it(tmp_path: Path) -> None:
    """`start_from` (and `arborseg train --init`): the checkpoint's encoder values and init on the tree's
    encoder_decoder; a tree without one is refused; training starts from the weights."""
    from arborseg.cli.main import main as cli
    from arborseg.space.encoder_init import start_from

    run = tmp_path / "runs" / "my_encoder"
    state = write_encoder_run(run)
    tree = ModuleTree.load(ROOT / "search_spaces" / "portfolio" / "unet2d_nnunet.yaml")
    started = start_from(tree, str(run))
    node = started.root.children[0]
    assert (node.get("depth"), node.get("width"), node.get("init")) == (2, 4, str(run / "encoder.pt"))
    assert node.get("upsampling") == "transposed" and started.window == tree.window
    with pytest.raises(SpaceError, match="has no encoder_decoder"):
        start_from(ModuleTree(ModuleNode("sequence", (), (ModuleNode("predictor"),)), (1, 64, 64)), str(run))
    tree_file = tree.save(tmp_path / "tree.yaml")
    out = tmp_path / "trained"
    code = cli(["-q", "train", str(tree_file), "--data", str(ROOT / "examples" / "quickstart_data.yaml"), "--steps",
                "1", "--out", str(out), "--init", str(run), "--set", "freeze_encoder_steps=1", "--device", "cpu"])
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["encoder_init"] == "my_encoder"
    trained = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    for key, value in state.items():  # frozen for its one step: exactly the checkpoint's weights
        name = "body.0.module." + key.removeprefix("module.encoder_q.")
        torch.testing.assert_close(trained[name], value, rtol=0, atol=0, msg=name)
