"""One trial: train a module tree on a data region, score it, write its artifacts.

Artifacts in the output folder: ``checkpoint.pt`` (resumable), ``model.pt`` (final weights and
what is needed to rebuild the net), ``metrics.json`` (every metric per region and class),
``history.json``, ``learning_curve.png``, ``overlays/*.png`` (FN red, FP yellow) and ``probs/<region>.npz``
(the probabilities each region was scored from, float16: post-hoc ensembles choose members from them).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arborseg import runs
from arborseg.device import autocast, is_out_of_memory, resolve_device, resolve_precision
from arborseg.errors import ArborsegError, TrainingError
from arborseg.log import get_logger
from arborseg.metrics import minimise
from arborseg.nn import ImageFacts, build_network, check_window, count_flops, count_parameters, uses_image_facts
from arborseg.nn.pretrained import LoadReport, initialise_encoders, pretrained_encoder_parameters, pretrained_modules
from arborseg.space.catalog import TRAINING_PARAMS
from arborseg.space.encoder_init import init_name
from arborseg.train.losses import (
    class_weights,
    deep_supervision_loss,
    deep_supervision_weights,
    error_weight_map,
    segmentation_loss,
)
from arborseg.train.result import NullReporter, Reporter, TrialPruned
from arborseg.train.settings import EVAL_REGIONS, TrainSettings
from arborseg.train.timings import Timings
from arborseg.tree import ModuleTree

log = get_logger(__name__)


def training_values(tree: ModuleTree, overrides: dict | None = None) -> dict[str, Any]:
    """The tree's training values, completed with defaults and overridden where asked."""
    values = {name: spec.default for name, spec in TRAINING_PARAMS.items()}
    values.update(tree.training_values())
    for key, value in (overrides or {}).items():
        if key not in TRAINING_PARAMS:
            raise ArborsegError(f"unknown training value {key!r}; valid: {sorted(TRAINING_PARAMS)}")
        problem = TRAINING_PARAMS[key].check(value)
        if problem:
            raise ArborsegError(f"training value {key}: {problem}")
        values[key] = TRAINING_PARAMS[key].coerce(value)
    return values


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


#: nnU-Net's SGD momentum (Nesterov) and poly exponent (nnUNetTrainer, PolyLRScheduler)
SGD_MOMENTUM = 0.99
POLY_EXPONENT = 0.9


def schedule_horizon(settings: TrainSettings) -> int:
    """The number of steps the LR schedule is planned for; refuses ``steps`` beyond it."""
    horizon = settings.steps if settings.schedule_steps is None else int(settings.schedule_steps)
    if horizon < 1:
        raise ArborsegError(f"schedule_steps {horizon} must be at least 1")
    if settings.steps > horizon:
        raise ArborsegError(f"steps {settings.steps} exceed the LR schedule's horizon schedule_steps {horizon}: "
                            f"raise schedule_steps to at least {settings.steps} (or leave it unset)")
    return horizon


def make_optimizer(model: torch.nn.Module, values: dict, steps: int,
                   encoder_params: list[torch.nn.Parameter] | None = None):
    """The optimiser and LR scheduler; ``steps`` is the schedule's horizon (the scheduler is stepped once a step).
    ``encoder_params``: pre-trained encoder weights, which learn at ``encoder_lr_scale`` times the rate."""
    lr, decay = values["lr"], values["weight_decay"]
    params: list[dict[str, Any]] = [{"params": list(model.parameters()), "lr": lr}]
    if encoder_params:
        ids = {id(p) for p in encoder_params}
        params = [{"params": [p for p in model.parameters() if id(p) not in ids], "lr": lr},
                  {"params": list(encoder_params), "lr": lr * float(values["encoder_lr_scale"])}]
    warmup = int(values["warmup_steps"])
    if warmup and values["schedule"] == "onecycle":
        raise ArborsegError(f"warmup_steps {warmup} cannot be combined with schedule onecycle (it warms up itself): "
                            "set one of them")
    if warmup and warmup >= steps:
        raise ArborsegError(f"warmup_steps {warmup} must be below the schedule's horizon of {steps} steps: lower it "
                            "or train longer")
    optimizer: torch.optim.Optimizer
    if values["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, weight_decay=decay, momentum=SGD_MOMENTUM, nesterov=True)
    else:
        cls = torch.optim.AdamW if values["optimizer"] == "adamw" else torch.optim.Adam
        optimizer = cls(params, lr=lr, weight_decay=decay)
    if not warmup:
        return optimizer, _decay(optimizer, values["schedule"], steps, lr, params)
    # nnU-Net's fine-tuning warm-up (nnUNetTrainerV2_warmup, nnssl): linear from lr / warmup to lr, then the
    # schedule over the steps that are left
    rise = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0,
                                             total_iters=warmup)
    decay = _decay(optimizer, values["schedule"], steps - warmup, lr, params)
    return optimizer, torch.optim.lr_scheduler.SequentialLR(optimizer, [rise, decay], milestones=[warmup])


def _decay(optimizer: torch.optim.Optimizer, schedule: str, steps: int, lr: float, params: list[dict[str, Any]]
           ) -> torch.optim.lr_scheduler.LRScheduler:
    """The LR schedule ``schedule`` over ``steps`` steps."""
    if schedule == "cosine":
        # down to lr / 100 (for every parameter group: a pre-trained encoder's lower rate ends there too)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1), eta_min=lr * 0.01)
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in params],
                                                   total_steps=max(steps, 2))
    if schedule == "poly":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _PolyFactor(max(steps, 1)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


class _PolyFactor:
    """nnU-Net's poly decay as a LambdaLR factor: (1 - step / horizon) ** 0.9, 0 from the horizon on."""

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.horizon) ** POLY_EXPONENT


def objective_value(scores: dict[str, float], objective: str) -> float:
    """The objective from a region's scores; undefined (NaN: e.g. IoU where neither labels nor prediction have
    foreground) counts as the worst value, so that ranking and pruning never see NaN."""
    value = float(scores[objective])
    if math.isnan(value):
        return float("inf") if minimise(objective) else 0.0
    return value


class Trainer:
    """Fits one tree on one data config; evaluation and artifacts on request."""

    def __init__(self, tree: ModuleTree, data, settings: TrainSettings, out_dir: str | Path,
                 reporter: Reporter | None = None, progress: bool = True, timings: Timings | None = None) -> None:
        self.timings = timings or Timings()  # where this job's time goes (arborseg.train.timings)
        with self.timings.part("setup"):  # a region read inside is charged to "data"
            self.tree, self.data, self.settings = tree, data, settings
            self.out = Path(out_dir)
            self.out.mkdir(parents=True, exist_ok=True)
            self.reporter = reporter or NullReporter()
            self.progress = progress
            self.values = training_values(tree, settings.overrides)
            self.device = resolve_device(settings.device)
            self.precision, self.autocast_dtype = resolve_precision(settings.precision, self.device)
            # fp16 needs loss scaling (its range is small); bf16 and fp32 do not
            self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None
            if settings.num_threads:
                torch.set_num_threads(settings.num_threads)
            self.window = tuple(tree.window)
            check_window(tree, self.window)
            self.n_classes = len(data.classes)
            self.rng = seed_everything(settings.seed)
            self._eval_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # region -> (raw, labels)
            self.model = build_network(tree, self.n_classes, deep_supervision=bool(self.values["deep_supervision"]),
                                       image_facts=self._image_facts()).to(self.device)
            levels = self.model.deep_supervision_levels  # 0: no deep supervision (off, or no deep encoder-decoder)
            self.ds_weights = deep_supervision_weights(levels) if levels else None
            self.horizon = schedule_horizon(settings)
            # encoders that start from pre-trained weights (tree value init): own LR, frozen for the first steps
            self.encoder_params = pretrained_encoder_parameters(self.model)
            self.init_reports: list[LoadReport] = []
            self.optimizer, self.scheduler = make_optimizer(self.model, self.values, self.horizon,
                                                            self.encoder_params)
            self.history: list[dict] = []
            self.step = 0
            self.train_seconds = 0.0

    # ------------------------------------------------------------------ data
    def _image_facts(self) -> ImageFacts | None:
        """The voxel size and training-image spread a CRF's appearance kernel starts from (None: not needed)."""
        if not uses_image_facts(self.tree):
            return None
        raw, _ = self._region("train")
        sample = raw.reshape(-1)[:: max(1, raw.size // 1_000_000)]  # a million voxels give the std to 0.1 %
        return ImageFacts.of(self.data.voxel_size, float(np.std(sample)))

    def _sampler(self):
        from arborseg.data import Augmenter, PatchSampler, class_frequencies

        raw, labels = self._region("train")
        weights = None
        if self.settings.error_weighting:
            weights = self._error_weights(labels, self.settings.error_weighting)
        freq = class_frequencies(labels, self.n_classes, self.data.ignore_value)
        self.class_weight = torch.as_tensor(class_weights(freq, self.values["class_weighting"]), device=self.device)
        fg = [c for c in range(self.n_classes) if c != self.data.background_class]
        return PatchSampler(raw, labels, self.window, self.rng, foreground_bias=self.values["foreground_bias"],
                            foreground_classes=fg, augmenter=Augmenter.from_dict(self.settings.augment),
                            weights=weights, ignore_value=self.data.ignore_value)

    def _error_weights(self, labels: np.ndarray, cfg: dict) -> np.ndarray:
        from arborseg.data import open_volume

        region = self.data.regions["train"]
        previous = np.asarray(open_volume(cfg["prediction"])[region.slices])
        return error_weight_map(previous, labels, cfg.get("mode", "all"), float(cfg.get("weight", 5.0)),
                                self.data.background_class, self.data.ignore_value)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out / runs.CHECKPOINT_FILE

    def save_checkpoint(self) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "step": self.step, "history": self.history,
                 "train_seconds": self.train_seconds, "tree_id": self.tree.id,
                 "schedule_steps": self.settings.schedule_steps,
                 "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                 "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state(),
                         "python": random.getstate()}}
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)  # atomic: a kill never leaves half a checkpoint

    def try_resume(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        if state.get("tree_id") != self.tree.id:
            raise TrainingError(f"{self.checkpoint_path} belongs to another tree ({state.get('tree_id')}); "
                                "use another --out folder or delete it")
        planned = self.settings.schedule_steps
        if planned is not None and state.get("schedule_steps") != planned:  # without it: the old behaviour
            raise TrainingError(f"{self.checkpoint_path} was trained with the LR schedule horizon schedule_steps "
                                f"{state.get('schedule_steps')}, not {planned}: continue it with the same "
                                "schedule_steps or use another --out folder")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.history = state["step"], state["history"]
        self.train_seconds = state.get("train_seconds", 0.0)
        self.rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        log.info("resumed %s from step %d", self.tree.name, self.step)
        return True

    # ------------------------------------------------------------------ training
    def fit(self) -> None:
        """Train for ``settings.steps`` steps (continuing from a checkpoint when there is one)."""
        from tqdm.auto import tqdm

        with self.timings.part("setup"):
            if not self.try_resume():
                self.init_reports = initialise_encoders(self.model)  # a fresh start: load pre-trained encoders
        s = self.settings
        if self.step >= s.steps:
            return
        with self.timings.part("data"):
            sampler = self._sampler()
        batch_size = int(self.values["batch_size"])
        self.model.train()
        bar = tqdm(total=s.steps, initial=self.step, desc=self.tree.name, disable=not self.progress,
                   unit="step", leave=False)
        started = time.perf_counter()
        with self.timings.part("train"):  # validation inside is charged to its own part
            try:
                while self.step < s.steps:
                    x, y, w = sampler.sample_batch(batch_size)
                    loss = self._train_step(x, y, w)
                    self.step += 1
                    self.history.append({"step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0]})
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                    if self.step % s.eval_every == 0 or self.step == s.steps:
                        self.train_seconds += time.perf_counter() - started
                        with self.timings.part("validation"):
                            value = self.validate()
                        started = time.perf_counter()
                        bar.set_postfix(loss=f"{loss:.4f}", **{s.objective: f"{value:.4f}"})
                        if self.step < s.steps and self.reporter.report(self.step, value):
                            self.save_checkpoint()
                            raise TrialPruned(f"pruned at step {self.step} ({s.objective}={value:.4f})")
                    if self.step % s.checkpoint_every == 0 or self.step == s.steps:
                        self.save_checkpoint()
            finally:
                bar.close()
        self.train_seconds += time.perf_counter() - started

    def _freeze_encoders(self) -> None:
        """Pre-trained encoders learn only from step ``freeze_encoder_steps`` on (a function of the step alone, so
        that continuing from a checkpoint freezes exactly the same steps)."""
        trainable = self.step >= int(self.values["freeze_encoder_steps"])
        for p in self.encoder_params:
            p.requires_grad_(trainable)

    def _train_step(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
        if self.encoder_params:
            self._freeze_encoders()
        xt = torch.from_numpy(x).to(self.device, non_blocking=True)
        yt = torch.from_numpy(y).to(self.device, non_blocking=True)
        wt = torch.from_numpy(w).to(self.device) if w is not None else None
        try:
            with autocast(self.device, self.autocast_dtype):
                logits = self.model(xt)
                aux = self.model.deep_supervision_outputs() if self.ds_weights else []
            logits, aux = logits.float(), [a.float() for a in aux]  # losses in float32
            if self.ds_weights:  # nnU-Net: the loss at every decoder level, full resolution first
                loss = deep_supervision_loss([logits, *aux], self.ds_weights, yt, self.class_weight, wt,
                                             self.data.ignore_value, self.values["dice_weight"],
                                             self.data.background_class)
            else:
                loss = segmentation_loss(logits, yt, self.class_weight, wt, self.data.ignore_value,
                                         self.values["dice_weight"], self.data.background_class)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at step {self.step + 1} of {self.tree.name}; "
                                    f"lower the learning rate (now {self.values['lr']:.2g}) or check the data")
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is None:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
                self.optimizer.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
                self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
                self.scaler.update()
            self.scheduler.step()
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if is_out_of_memory(exc):
                raise TrainingError(f"out of memory training {self.tree.name} with batch "
                                    f"{tuple(xt.shape)}: lower batch_size or the window") from None
            raise
        return float(loss.item())

    # ------------------------------------------------------------------ evaluation
    def _region(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._eval_cache:
            with self.timings.part("data"):
                self._eval_cache[name] = self.data.load_region(name)
        return self._eval_cache[name]

    def predict_region(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw, labels, predicted probabilities (C, Z, Y, X)) of a region."""
        from arborseg.inference import predict_volume

        raw, labels = self._region(name)
        self.model.eval()
        try:
            probs = predict_volume(self.model, raw, self.window, self.n_classes, overlap=self.settings.overlap,
                                   blending="gaussian", batch_size=self.settings.eval_batch_size,
                                   device=self.device, amp=self.autocast_dtype is not None)
        finally:
            self.model.train()
        return raw, labels, probs

    def score_region(self, name: str, save_probs: bool = False) -> tuple[dict[str, float], np.ndarray]:
        """(every metric, predicted class map) of a region; ``save_probs``: also keep the probabilities the
        scores come from in ``probs/<region>.npz`` (:meth:`arborseg.runs.TrialFolder.save_probs`)."""
        from arborseg.metrics import score_segmentation

        raw, labels, probs = self.predict_region(name)
        if save_probs:
            runs.TrialFolder(self.out).save_probs(name, probs)
        pred = probs.argmax(0)
        scores = score_segmentation(pred, labels, list(self.data.classes), ignore_value=self.data.ignore_value,
                                    mode=self.settings.fn_mode, background=self.data.background_class,
                                    membrane_class=self.data.membrane_class)
        return scores, pred

    def validate(self) -> float:
        scores, _ = self.score_region("validation")
        value = objective_value(scores, self.settings.objective)
        self.history.append({"step": self.step, self.settings.objective: value})
        return value

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Score every eval region present, keeping its probabilities; draw overlays of their middle slices."""
        from arborseg.viz.figures import error_overlay

        results = {}
        for name in EVAL_REGIONS:
            if name not in self.data.regions:
                continue
            scores, pred = self.score_region(name, save_probs=True)  # post-hoc ensembles choose from these
            results[name] = scores
            if self.settings.overlays and name != "validation":
                raw, labels = self._region(name)
                z = raw.shape[0] // 2
                with self.timings.part("figures"):
                    error_overlay(raw[z], pred[z], labels[z], self.out / runs.OVERLAYS_DIR / f"{name}_z{z}.png",
                                  title=f"{self.tree.name} {name} z={z}", background=self.data.background_class,
                                  ignore_value=self.data.ignore_value)
        return results

    def save_model(self) -> Path:
        """Write ``model.pt`` (:func:`arborseg.runs.save_model`); return its path."""
        return runs.save_model(self.out, self.model.state_dict(), self.tree, list(self.data.classes), self.window,
                               self.data.normalizer().to_dict())


def train_and_score(tree: ModuleTree, data, settings: TrainSettings, out_dir: str | Path,
                    reporter: Reporter | None = None, progress: bool = True,
                    timings: Timings | None = None) -> dict[str, Any]:
    """Train ``tree`` on ``data`` and write every artifact; return the result record (also metrics.json).
    ``timings``: where to add the time of each part (a job passes its own, with its start-up in it); the record's
    ``timings`` holds them (:mod:`arborseg.train.timings`)."""
    from arborseg.viz.figures import learning_curve

    trainer = Trainer(tree, data, settings, out_dir, reporter, progress, timings)
    started = time.perf_counter()
    trainer.fit()
    with trainer.timings.part("evaluation"):
        trainer.save_model()
        regions = trainer.evaluate()
    with trainer.timings.part("figures"):
        learning_curve(trainer.history, trainer.out / runs.LEARNING_CURVE_FILE, settings.objective)
    validation = regions.get("validation", {})
    result = {
        "tree_id": tree.id, "tree_name": tree.name, "family": tree.family, "depth": tree.depth,
        "width": tree.width, "window": list(tree.window), "params": count_parameters(trainer.model),
        "flops_per_voxel": count_flops(trainer.model.cpu(), tree.window) / math.prod(tree.window),
        "steps": trainer.step, "seed": settings.seed, "train_seconds": round(trainer.train_seconds, 3),
        "wall_seconds": round(time.perf_counter() - started, 3), "device": str(trainer.device),
        "precision": trainer.precision, "timings": trainer.timings.to_dict(),
        "encoder_init": encoder_init_name(trainer.model),
        "objective": settings.objective,
        "objective_value": objective_value(validation, settings.objective) if settings.objective in validation else None,
        "training": trainer.values, "settings": asdict(settings), "regions": regions,
    }
    (trainer.out / runs.METRICS_FILE).write_text(json.dumps(result, indent=1, default=_json_default))
    (trainer.out / runs.HISTORY_FILE).write_text(json.dumps(trainer.history))
    runs.save_tree(tree, trainer.out)
    return result


def encoder_init_name(model: torch.nn.Module) -> str:
    """How the net's encoders started, for tables: ``random``, or the pre-training run (or checkpoint file) name."""
    return ", ".join(init_name(str(m.init_source)) for m in pretrained_modules(model)) or "random"


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
