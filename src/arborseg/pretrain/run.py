"""Run a pre-training: sample unlabeled patches, train MoCo v2 or Models Genesis, checkpoint, resume, draw, hand on.

A run folder (``runs/pretrain/<name>``) holds ``pretrain.yaml`` (the config as run), ``checkpoint.pt`` (the
model: MoCo's two encoders and queue, or Genesis' encoder-decoder; optimiser, schedule, RNG, step: a killed run
continues from it), ``history.json`` (loss and the method's other number per step), ``loss_curve.png``, the
picture to judge it by (MoCo: ``neighbours.png``, nearest neighbours of a few query patches, pre-trained vs
random encoder; Genesis: ``restorations.png``) and the hand-over: ``encoder.pt`` (MoCo / CEM500K layout; Genesis
adds the decoder) with ``encoder.json`` (which module it fits, its values and norms). ``encoder.pt`` is rewritten
at every checkpoint, so a run stopped early still leaves an encoder to use. :class:`PretrainJob` runs it as a
submitit job (debug, local, slurm).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from arborseg import runs
from arborseg.errors import PretrainError
from arborseg.jobs.checkpointable import CheckpointableJob
from arborseg.log import get_logger
from arborseg.pretrain.augment import view_pairs
from arborseg.pretrain.config import PretrainConfig
from arborseg.pretrain.genesis import Distortions, Genesis, restoration_pairs
from arborseg.pretrain.moco import MoCo

log = get_logger(__name__)

#: region side relative to the view side: crops of 0.2-1 of it are resized to the view (CEM500K: 224 of 224)
REGION_FACTOR = 1.5
#: Models Genesis' picture: distorted, restored and original patches
RESTORATIONS_FILE = "restorations.png"
SGD_MOMENTUM = 0.9


# ------------------------------------------------------------------------------------------- data
class UnlabeledVolumes:
    """The config's volumes, normalised as a data YAML would be (statistics fitted on each volume), sampled as
    (Z, S, S) regions: volumes in proportion to their voxels, positions uniformly."""

    def __init__(self, config: PretrainConfig) -> None:
        from arborseg.data import open_volume
        from arborseg.data.preprocess import Normalizer

        self.z = config.z
        self.size = int(math.ceil(config.patch * REGION_FACTOR))
        self.volumes, self.normalizers, self.z_ranges = [], [], []
        norm = config.normalization
        for spec in config.volumes:
            volume = open_volume(spec.path)
            if volume.ndim != 3:
                raise PretrainError(f"{spec.path}: expected a 3D volume (z, y, x), got shape {volume.shape}")
            z0, z1 = spec.z or (0, volume.shape[0])
            z1 = min(z1, volume.shape[0])
            if z1 - z0 < self.z or min(volume.shape[1:]) < self.size:
                raise PretrainError(f"{spec.path}: {z1 - z0} x {volume.shape[1]} x {volume.shape[2]} is smaller than "
                                    f"one region ({self.z} x {self.size} x {self.size}); lower patch or z")
            sample = volume[z0:z1:max(1, (z1 - z0) // 8)]
            self.normalizers.append(Normalizer.fit(sample, norm.get("mode", "percentile"),
                                                   float(norm.get("low", 1.0)), float(norm.get("high", 99.0))))
            self.volumes.append(volume)
            self.z_ranges.append((z0, z1))
        sizes = np.array([(z1 - z0) * v.shape[1] * v.shape[2] for v, (z0, z1) in zip(self.volumes, self.z_ranges)],
                         dtype=float)
        self.weights = sizes / sizes.sum()

    def crop(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """A normalised (Z, size, size) crop at a random place, and where it lies (volume, z, y, x)."""
        i = int(rng.choice(len(self.volumes), p=self.weights))
        volume, (z0, z1) = self.volumes[i], self.z_ranges[i]
        z = int(rng.integers(z0, z1 - self.z + 1))
        y = int(rng.integers(0, volume.shape[1] - size + 1))
        x = int(rng.integers(0, volume.shape[2] - size + 1))
        raw = volume[z:z + self.z, y:y + size, x:x + size]
        return np.ascontiguousarray(self.normalizers[i].normalize(raw)), (i, z, y, x)

    def region(self, rng: np.random.Generator) -> torch.Tensor:
        """A region the two views of a pair are cut from."""
        return torch.from_numpy(self.crop(rng, self.size)[0])

    def norms(self, rng: np.random.Generator, n: int = 64) -> tuple[float, float]:
        """Mean and standard deviation of the normalised intensities (what CEM500K calls ``norms``)."""
        values = torch.stack([self.region(rng) for _ in range(n)])
        return float(values.mean()), float(values.std())


# ------------------------------------------------------------------------------------------- training
@dataclass
class PretrainState:
    step: int = 0
    seconds: float = 0.0


class Pretrainer:
    """One pre-training run in ``out``; :meth:`fit` continues from ``checkpoint.pt`` when there is one."""

    def __init__(self, config: PretrainConfig, out: str | Path, progress: bool = True) -> None:
        self.config, self.out, self.progress = config, Path(out), progress
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_config_file()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.data = UnlabeledVolumes(config)
        # ResNet-50 standardises its input with the data's norms (CEM500K); arborseg's own encoders see 0..1 as in
        # training (instance norm), so their norms are the identity
        self.norms = self.data.norms(np.random.default_rng(config.seed + 1)) if config.encoder == "resnet50" \
            else (0.0, 1.0)
        self.model: MoCo | Genesis
        self.optimizer: torch.optim.Optimizer
        if config.method == "genesis":
            assert isinstance(config.encoder, dict)
            self.model = Genesis(config.encoder).to(self.device)
            self.distortions = Distortions(**config.genesis)
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate,
                                               weight_decay=config.weight_decay)
        else:
            moco = config.moco
            self.model = MoCo(config.encoder, self.norms, int(moco["dim"]), int(moco["queue"]),
                              float(moco["momentum"]), float(moco["temperature"])).to(self.device)
            self.optimizer = torch.optim.SGD(self.model.encoder_q.parameters(), lr=config.learning_rate,
                                             momentum=SGD_MOMENTUM, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.steps)
        self.history: list[dict[str, float]] = []
        self.state = PretrainState()

    @property
    def checkpoint_path(self) -> Path:
        return self.out / runs.CHECKPOINT_FILE

    def _check_config_file(self) -> None:
        """Write the config; a folder that holds another run's config is refused (resume only the same run)."""
        path = self.out / runs.PRETRAIN_CONFIG
        mine = self.config.to_dict()
        if path.exists():
            theirs = yaml.safe_load(path.read_text()) or {}
            differ = sorted(k for k in mine if k != "steps" and theirs.get(k) != mine[k])
            if differ:
                raise PretrainError(f"{self.out} holds a pre-training with other {', '.join(differ)}; use another name "
                                    "(or --out), or delete the folder to start over")
        path.write_text(yaml.safe_dump(mine, sort_keys=False))

    def save_checkpoint(self) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "step": self.state.step, "seconds": self.state.seconds,
                 "history": self.history, "norms": list(self.norms),
                 "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state(),
                         "python": random.getstate()}}
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)  # atomic: a kill never leaves half a checkpoint
        self.save_encoder()

    def try_resume(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.state = PretrainState(int(state["step"]), float(state["seconds"]))
        self.history = list(state["history"])
        self.norms = tuple(state["norms"])  # type: ignore[assignment]
        self.rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        log.info("pre-training %s resumed at step %d", self.config.name, self.state.step)
        return True

    def save_encoder(self) -> None:
        """``encoder.pt`` (MoCo layout) and ``encoder.json`` (the module and values it fits) for trees' ``init``."""
        c = self.config
        values = {} if c.encoder == "resnet50" else dict(c.encoder)  # type: ignore[arg-type]
        meta = {"module": c.module, "values": values, "norms": list(self.norms), "method": c.method,
                "decoder": c.method == "genesis",
                "arch": "resnet50" if c.encoder == "resnet50" else "encoder_decoder", "step": self.state.step,
                "steps": c.steps, "seconds": round(self.state.seconds, 1), "volumes": [v.path for v in c.volumes],
                "patch": c.patch, "z": c.z}
        ckpt = self.model.encoder_checkpoint(self.norms, meta)
        tmp = self.out / (runs.ENCODER_CHECKPOINT + ".tmp")
        torch.save(ckpt, tmp)
        tmp.replace(self.out / runs.ENCODER_CHECKPOINT)
        (self.out / runs.ENCODER_DESCRIPTION).write_text(json.dumps(meta, indent=1))

    def fit(self) -> dict[str, Any]:
        """Train to ``config.steps``; return a summary (steps, seconds, last loss and accuracy)."""
        from tqdm.auto import tqdm

        self.try_resume()
        c = self.config
        self.model.train()
        bar = tqdm(total=c.steps, initial=self.state.step, desc=f"pretrain {c.name}", unit="step",
                   disable=not self.progress, leave=False)
        started = time.perf_counter()
        try:
            while self.state.step < c.steps:
                loss, metrics = self._loss()
                if not torch.isfinite(loss):
                    raise PretrainError(f"pre-training loss became {loss.item()} at step {self.state.step + 1}; "
                                        f"lower lr (now {c.learning_rate:.3g})")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                self.state.step += 1
                self.history.append({"step": self.state.step, "loss": loss.item(),
                                     **{k: v.item() for k, v in metrics.items()},
                                     "lr": float(self.scheduler.get_last_lr()[0])})
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in self.history[-1].items() if k not in ("step", "lr")})
                if self.state.step % c.checkpoint_every == 0 or self.state.step == c.steps:
                    self.state.seconds += time.perf_counter() - started
                    started = time.perf_counter()
                    self.save_checkpoint()
        finally:
            bar.close()
        (self.out / runs.HISTORY_FILE).write_text(json.dumps(self.history))
        return self.summary()

    def _loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch and the method's other numbers (MoCo: ``accuracy``, Genesis: ``copy_mse``)."""
        c = self.config
        if isinstance(self.model, Genesis):
            patches = [self.data.crop(self.rng, c.patch)[0] for _ in range(c.batch_size)]
            distorted, target = restoration_pairs(patches, self.rng, self.distortions)
            return self.model(distorted.to(self.device), target.to(self.device))
        regions = [self.data.region(self.rng) for _ in range(c.batch_size)]
        first, second = view_pairs(regions, c.patch, self.rng)
        loss, accuracy = self.model(first.to(self.device), second.to(self.device))
        return loss, {"accuracy": accuracy}

    def summary(self) -> dict[str, Any]:
        last = self.history[-min(len(self.history), 20):]
        first = self.history[:min(len(self.history), 20)]

        def mean(rows: list[dict[str, float]], key: str) -> float:
            return float(np.mean([r[key] for r in rows])) if rows else float("nan")

        extra = "copy_mse" if self.config.method == "genesis" else "accuracy"
        return {"name": self.config.name, "method": self.config.method, "steps": self.state.step,
                "seconds": round(self.state.seconds, 1), "loss_start": mean(first, "loss"),
                "loss_end": mean(last, "loss"), f"{extra}_end": mean(last, extra),
                "encoder": str(self.out / runs.ENCODER_CHECKPOINT)}


def what_it_learned(summary: dict[str, Any], method: str) -> str:
    """One phrase on a pre-training's summary: how far its loss fell, and against what."""
    if method == "genesis":
        return (f"restoration MSE {summary['loss_start']:.4f} -> {summary['loss_end']:.4f} (returning the distorted "
                f"input: {summary['copy_mse_end']:.4f})")
    return (f"InfoNCE loss {summary['loss_start']:.3f} -> {summary['loss_end']:.3f}, positive found "
            f"{summary['accuracy_end']:.0%} of the time")


def pretrain(config: PretrainConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Pre-train (or continue) in ``out``, then draw the loss curve and the nearest neighbours; the summary."""
    from arborseg.pretrain.figures import loss_curve, neighbours_figure, restorations_figure

    trainer = Pretrainer(config, out, progress)
    summary = trainer.fit()
    loss_curve(trainer.history, trainer.out / runs.LOSS_CURVE_FILE, config.name, config.method)
    if config.neighbours and config.method == "genesis":
        restorations_figure(trainer, trainer.out / RESTORATIONS_FILE)
    elif config.neighbours:
        neighbours_figure(trainer, trainer.out / runs.NEIGHBOURS_FILE)
    (trainer.out / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("pre-trained %s: %d steps in %.0f s, loss %.4g -> %.4g; encoder %s", config.name, summary["steps"],
             summary["seconds"], summary["loss_start"], summary["loss_end"], summary["encoder"])
    return summary


# ------------------------------------------------------------------------------------------- as a job
@dataclass
class PretrainJob(CheckpointableJob):
    """A pre-training as a submitit job: resumes from its checkpoint when requeued; never raises for its own
    failure (returns ``{"ok": False, "reason": ...}``)."""

    config: dict
    out_dir: str

    def run(self) -> dict[str, Any]:
        from arborseg.jobs.runtime import job_log

        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with job_log(out / "pretrain.log"):
            try:
                summary = pretrain(PretrainConfig.from_dict(self.config, str(out / runs.PRETRAIN_CONFIG)), out,
                                   progress=False)
                return {"ok": True, **summary}
            except PretrainError as exc:
                return {"ok": False, "reason": str(exc)}
            except Exception as exc:
                import traceback

                (out / "error.txt").write_text("".join(traceback.format_exception(exc)))
                return {"ok": False, "reason": f"{type(exc).__name__}: {str(exc).strip()[:300]} "
                                               f"(traceback: {out / 'error.txt'})"}


def run_pretraining(config: PretrainConfig, out: Path, executor_kind: str = "debug",
                    executor_options: dict | None = None) -> dict[str, Any]:
    """Run the pre-training as one job of ``executor_kind`` (reattaching to a running one); its summary.
    The debug executor runs it in this process, with a progress bar."""
    from arborseg.jobs.executors import make_executor
    from arborseg.jobs.scheduler import JobRecord, Scheduler, reattach

    out.mkdir(parents=True, exist_ok=True)
    if executor_kind == "debug":
        return {"ok": True, **pretrain(config, out)}
    record = out / "job.json"
    executor = make_executor(executor_kind, out / runs.JOBS_DIR, executor_options or {})
    found = reattach(JobRecord.read(record))
    results: list[dict[str, Any]] = []

    def prepare(_: Any) -> tuple[str, PretrainJob]:
        return config.name, PretrainJob(config.to_dict(), str(out))

    def submitted(_: str, job: Any) -> None:
        JobRecord(str(job.job_id), executor.record_kind, str(out / runs.JOBS_DIR)).write(record)
        log.info("pre-training %s: job %s submitted (log: %s)", config.name, job.job_id, out / "pretrain.log")

    def finished(_: str, outcome: Any) -> None:
        if outcome.ok and isinstance(outcome.result, dict):
            results.append(outcome.result)
        else:
            results.append({"ok": False, "reason": f"{outcome.reason} (log: {outcome.log})"})

    running = [(config.name, found[0])] if found is not None else []
    Scheduler(executor, prepare, submitted, finished, cancel_on_interrupt=True).run([] if running else [None], running)
    record.unlink(missing_ok=True)
    return results[0]
