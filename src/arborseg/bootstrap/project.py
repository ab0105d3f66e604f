"""A bootstrapping project folder: the volume, the growing labels, and numbered iterations.

::

    project/
      project.yaml          settings (classes, unit, tree, training, strategy, error weighting, pseudo-labels)
      raw.tif               the volume
      labels.tif            the current labels (uint8; ignore_value = unlabeled)
      errors.tif            error map of every correction so far (0 right, 1 wrong on background, 2 missed)
      tree.yaml             the network trained at each iteration
      history.json          one record per ingested iteration (the numbers `status` shows)
      iterations/001/       (001.partial while `next` works on it)
        proposal.json       strategy, the units proposed (z, y0, x0, h, w), timing, models used
        raw.tif             raw of the proposed units, stacked (k, h, w)
        presegmentation.tif the network's labels of those units: paint over it (palette TIFF)
        preview.png         raw and pre-segmentation side by side
        models/             the trained networks (member_<i>/model.pt)
        corrected.tif       after ingest: the correction; errors.tif: its error map; stats.json
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from arborseg.bootstrap.models import ArrayData, load_models, train_models, with_dropout
from arborseg.bootstrap.paint import preview, read_label_stack, write_label_stack
from arborseg.bootstrap.propose import build_context, mean_probs, z_span
from arborseg.bootstrap.pseudo import train_with_pseudo_labels
from arborseg.bootstrap.stats import ERROR_MODES, correction_stats, error_codes, error_weights
from arborseg.bootstrap.strategies import get_strategy
from arborseg.bootstrap.units import UNIT_KINDS, Unit, labeled_units, make_units, scatter_units, stack_units
from arborseg.data import Normalizer, write_volume
from arborseg.errors import ArborsegError
from arborseg.log import get_logger
from arborseg.runs import TREE_FILE, load_tree, save_tree
from arborseg.train.settings import TrainSettings
from arborseg.tree import ModuleTree

log = get_logger(__name__)
PROJECT_FILE = "project.yaml"


@dataclass
class ProjectSettings:
    """Everything `next` needs; stored in project.yaml and editable there."""

    classes: list[str]
    ignore_value: int = 255
    background_class: int | None = 0
    unit: str = "slice"
    tile: int = 256
    pool: list[int] | None = None          # [z0, z1): slices to propose from (default: all)
    normalization: dict = field(default_factory=lambda: {"mode": "percentile", "low": 1.0, "high": 99.0})
    steps: int = 300
    batch_size: int | None = None
    members: int = 1
    dropout: float = 0.0                   # > 0 puts dropout in the tree (needed by bald_mc)
    mc_samples: int = 8
    error_mode: str = "all"                # all | fn | none: prediction-error weighting of the corrections
    error_weight: float = 5.0
    pseudo_lambda: float | None = None     # slices only: weight of pseudo-labels from a 2D network (None: off)
    pseudo_tree: str | None = None         # the 2D tree for pseudo-labels (a file in the project)
    strategy: str = "adjacent"
    per_iteration: int = 1
    z_scale: float = 1.0                   # adjacency: weight of a z step against one tile step in xy
    seed: int = 0
    device: str = "auto"
    threads: int | None = None             # torch CPU threads (1 is fastest on a busy shared machine)
    source: dict = field(default_factory=dict)

    def check(self, where: str = PROJECT_FILE) -> None:
        n = len(self.classes)
        if n < 2:
            raise ArborsegError(f"{where}: classes: give at least 2 class names")
        if not n <= self.ignore_value <= 255:
            raise ArborsegError(f"{where}: ignore_value {self.ignore_value} must lie in {n}..255 (not a class id)")
        if self.unit not in UNIT_KINDS:
            raise ArborsegError(f"{where}: unit {self.unit!r} must be one of {', '.join(UNIT_KINDS)}")
        if self.error_mode not in ERROR_MODES + ("none",):
            raise ArborsegError(f"{where}: error_mode {self.error_mode!r} must be all, fn or none")
        get_strategy(self.strategy)
        if self.pool is not None and (not isinstance(self.pool, (list, tuple)) or len(self.pool) != 2
                                      or not all(isinstance(z, int) for z in self.pool) or self.pool[0] >= self.pool[1]):
            raise ArborsegError(f"{where}: pool {self.pool!r} must be two slice numbers [z0, z1) with z0 < z1, "
                                "e.g. [0, 20]")
        if self.pseudo_lambda is not None and self.unit != "slice":
            raise ArborsegError(f"{where}: pseudo-labels fill whole unlabeled slices: set unit: slice or "
                                "pseudo_lambda: null")

    @classmethod
    def from_dict(cls, data: dict, where: str = PROJECT_FILE) -> ProjectSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArborsegError(f"{where}: unknown keys {unknown}; valid: {sorted(known)}")
        settings = cls(**data)
        settings.check(where)
        return settings


class BootstrapProject:
    """Open an existing project folder (``BootstrapProject.create`` makes one)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / PROJECT_FILE
        if not path.is_file():
            raise ArborsegError(f"{self.folder}: not a bootstrap project (no {PROJECT_FILE}); start one with "
                                "`arborseg bootstrap init`")
        self.settings = ProjectSettings.from_dict(yaml.safe_load(path.read_text()) or {}, str(path))
        self._raw: np.ndarray | None = None
        self._norm: tuple[np.ndarray, Normalizer] | None = None

    # ------------------------------------------------------------------------------------- creation
    @classmethod
    def create(cls, folder: str | Path, raw: np.ndarray, labels: np.ndarray, tree: ModuleTree,
               settings: ProjectSettings, pseudo_tree: ModuleTree | None = None) -> BootstrapProject:
        """Write a new project: the volume, the initial labels (ignore_value = unlabeled), the tree(s)."""
        folder = Path(folder)
        if (folder / PROJECT_FILE).exists():
            raise ArborsegError(f"{folder}: a project exists there already; choose another folder or delete it")
        raw, labels = np.asarray(raw), np.asarray(labels)
        if raw.ndim != 3 or raw.shape != labels.shape:
            raise ArborsegError(f"raw {raw.shape} and labels {labels.shape} must be the same 3D shape")
        settings.check()
        bad = sorted(set(np.unique(labels).tolist()) - set(range(len(settings.classes))) - {settings.ignore_value})
        if bad:
            raise ArborsegError(f"the initial labels hold values {bad[:5]} that are neither classes "
                                f"(0..{len(settings.classes) - 1}) nor the ignore value {settings.ignore_value}")
        make_units(raw.shape, settings.unit, settings.tile, tuple(settings.pool) if settings.pool else None)
        folder.mkdir(parents=True, exist_ok=True)
        write_volume(folder / "raw.tif", raw)
        write_volume(folder / "labels.tif", labels.astype(np.uint8))
        write_volume(folder / "errors.tif", np.zeros(raw.shape, np.uint8))
        save_tree(tree, folder)
        if pseudo_tree is not None:
            pseudo_tree.save(folder / "pseudo_tree.yaml")
            settings.pseudo_tree = "pseudo_tree.yaml"
        (folder / "history.json").write_text("[]")
        (folder / PROJECT_FILE).write_text(yaml.safe_dump(asdict(settings), sort_keys=False))
        project = cls(folder)
        log.info("bootstrap project %s: %s voxels, %d labeled", folder, raw.shape, project.labeled_voxels())
        return project

    # ------------------------------------------------------------------------------------- state
    def raw(self) -> np.ndarray:
        if self._raw is None:
            import tifffile

            self._raw = np.asarray(tifffile.imread(self.folder / "raw.tif"))
        return self._raw

    def normalized_raw(self) -> tuple[np.ndarray, Normalizer]:
        """The network input: the volume normalised with statistics fitted on all of it."""
        if self._norm is None:
            n = self.settings.normalization
            norm = Normalizer.fit(self.raw(), n.get("mode", "percentile"), n.get("low", 1.0), n.get("high", 99.0))
            self._norm = norm.apply(self.raw()).astype(np.float32), norm
        return self._norm

    def labels(self) -> np.ndarray:
        import tifffile

        return np.array(tifffile.imread(self.folder / "labels.tif"))

    def errors(self) -> np.ndarray:
        import tifffile

        return np.array(tifffile.imread(self.folder / "errors.tif"))

    def tree(self) -> ModuleTree:
        return load_tree(self.folder / TREE_FILE)

    def units(self) -> list[Unit]:
        s = self.settings
        return make_units(self.raw().shape, s.unit, s.tile, tuple(s.pool) if s.pool else None)

    def labeled_voxels(self) -> int:
        return int((self.labels() != self.settings.ignore_value).sum())

    def history(self) -> list[dict[str, Any]]:
        return json.loads((self.folder / "history.json").read_text())

    def iteration_dirs(self) -> list[Path]:
        return sorted((self.folder / "iterations").glob("[0-9][0-9][0-9]"))

    def pending(self) -> Path | None:
        """The latest iteration if it waits for its correction."""
        dirs = self.iteration_dirs()
        return dirs[-1] if dirs and not (dirs[-1] / "stats.json").exists() else None

    # ------------------------------------------------------------------------------------- next
    def next(self, strategy: str | None = None, k: int | None = None, steps: int | None = None,
             members: int | None = None, model_paths: Sequence[str | Path] = (), replace: bool = False,
             progress: bool = True) -> dict[str, Any]:
        """Train on what is labeled (or load ``model_paths``), propose the next units, write their
        pre-segmentation for correction. Returns the proposal record (also ``proposal.json``)."""
        from arborseg.device import resolve_device

        s = self.settings
        strategy = strategy or s.strategy
        get_strategy(strategy)
        k = int(k or s.per_iteration)
        pending = self.pending()
        if pending is not None and not replace:
            raise ArborsegError(f"iteration {pending.name} waits for its correction: run `arborseg bootstrap "
                                f"ingest {self.folder} CORRECTED.tif` (or `next --replace` to propose again)")
        import shutil

        number = int(pending.name) if pending is not None else len(self.iteration_dirs()) + 1
        final = self.folder / "iterations" / f"{number:03d}"
        out = final.with_name(final.name + ".partial")  # renamed when the proposal is complete
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        started = time.perf_counter()
        if s.threads:
            import torch

            torch.set_num_threads(int(s.threads))
        raw, norm = self.normalized_raw()
        labels = self.labels()
        device = str(resolve_device(s.device))
        units = self.units()
        is_labeled = labeled_units(labels, units, s.ignore_value)
        candidates = [u for u, done in zip(units, is_labeled) if not done]
        labeled = [u for u, done in zip(units, is_labeled) if done]
        if not candidates:
            raise ArborsegError(f"every {s.unit} of the pool is labeled: the project is complete")
        n_members = int(members or s.members)
        if strategy == "bald_ensemble" and n_members < 2 and len(model_paths) < 2:
            raise ArborsegError("bald_ensemble needs an ensemble: --members 2 or more (or several --model files)")
        if model_paths:
            models, tree = load_models(model_paths, device)
            if any(getattr(m, "n_classes", len(s.classes)) != len(s.classes) for m in models):
                raise ArborsegError(f"the models given predict {models[0].n_classes} classes but the project has "
                                    f"{len(s.classes)} ({', '.join(s.classes)}); use models trained on these classes")
            trained = "loaded " + ", ".join(str(p) for p in model_paths)
        else:
            tree = with_dropout(self.tree(), s.dropout)
            models = self._train(tree, raw, labels, norm, steps or s.steps, n_members, number, out, progress)
            trained = f"trained {n_members} x {tree.name} for {steps or s.steps} steps"
        train_seconds = time.perf_counter() - started
        rng = np.random.default_rng([s.seed, number])
        n_classes = len(s.classes)
        ctx = build_context(strategy, models, raw, tree.window, n_classes, candidates, labeled, rng,
                            s.mc_samples, device, s.z_scale)
        chosen = get_strategy(strategy).select(ctx, k)
        probs = ctx.probs if ctx.probs is not None else mean_probs(models, raw, tree.window, n_classes, device,
                                                                    z_span(candidates))
        pre = stack_units(probs, chosen).argmax(0).astype(np.uint8)
        raw_stack = stack_units(self.raw(), chosen)
        write_volume(out / "raw.tif", raw_stack)
        write_label_stack(out / "presegmentation.tif", pre, s.ignore_value)
        preview(out / "preview.png", raw_stack, pre, s.ignore_value,
                title=f"iteration {number}: {strategy}, units {', '.join(str(u) for u in chosen[:6])}",
                background=s.background_class)
        record = {"iteration": number, "strategy": strategy, "units": [u.to_list() for u in chosen],
                  "unit": s.unit, "candidates": len(candidates), "labeled_units": len(labeled),
                  "models": trained, "tree": tree.name, "train_seconds": round(train_seconds, 2),
                  "seconds": round(time.perf_counter() - started, 2)}
        (out / "proposal.json").write_text(json.dumps(record, indent=1))
        if pending is not None:
            shutil.rmtree(pending)
        out.rename(final)
        log.info("iteration %d: proposed %s by %s", number, ", ".join(str(u) for u in chosen), strategy)
        return record

    def _train(self, tree: ModuleTree, raw: np.ndarray, labels: np.ndarray, norm: Normalizer, steps: int,
               members: int, number: int, out: Path, progress: bool):
        s = self.settings
        data = ArrayData(raw, labels, tuple(s.classes), s.ignore_value, s.background_class, norm)
        overrides = {"batch_size": s.batch_size} if s.batch_size else {}
        settings = TrainSettings(steps=steps, eval_every=max(steps, 1), checkpoint_every=max(steps, 1),
                                 seed=s.seed + 1000 * number, device=s.device, overrides=overrides, overlays=False)
        weights = None
        errors = self.errors()
        if s.error_mode != "none" and errors.any():
            weights = error_weights(errors, s.error_mode, s.error_weight)
        if s.pseudo_lambda is not None:
            if not s.pseudo_tree:
                raise ArborsegError(f"{self.folder / PROJECT_FILE}: pseudo_lambda is set but pseudo_tree is not "
                                    "(a 2D tree file in the project folder)")
            tree2d = ModuleTree.load(self.folder / s.pseudo_tree)
            models, _ = train_with_pseudo_labels(tree, tree2d, data, settings, out / "models", s.pseudo_lambda,
                                                 members=members, voxel_weights=weights, progress=progress)
            return models
        return train_models(tree, data, settings, out / "models", members, weights, progress)

    # ------------------------------------------------------------------------------------- ingest
    def ingest(self, corrected_path: str | Path) -> dict[str, Any]:
        """Take the corrected labels of the pending iteration (its (k, h, w) stack, or a whole label volume
        from which the proposed units are read); record the statistics, grow the labels, keep the errors."""
        import tifffile

        s = self.settings
        pending = self.pending()
        if pending is None:
            raise ArborsegError(f"{self.folder}: no iteration waits for a correction; run `arborseg bootstrap next "
                                f"{self.folder}` first")
        proposal = json.loads((pending / "proposal.json").read_text())
        units = [Unit.from_list(u) for u in proposal["units"]]
        corrected = read_label_stack(corrected_path)
        pre = np.asarray(tifffile.imread(pending / "presegmentation.tif"))
        if pre.ndim == 2:
            pre = pre[None]
        shape = self.raw().shape
        if corrected.shape == shape:
            corrected = stack_units(corrected, units)
        elif corrected.shape != pre.shape:
            raise ArborsegError(f"{corrected_path}: shape {corrected.shape} is neither the proposal's stack "
                                f"{pre.shape} (iteration {pending.name}) nor the volume {shape}")
        bad = sorted(set(np.unique(corrected).tolist()) - set(range(len(s.classes))) - {s.ignore_value})
        if bad:
            raise ArborsegError(f"{corrected_path}: values {bad[:5]} are neither class ids (0..{len(s.classes) - 1}) "
                                f"nor the ignore value {s.ignore_value}; repaint them")
        corrected = corrected.astype(np.uint8)
        stats = correction_stats(pre, corrected, s.classes, s.ignore_value, s.background_class)
        codes = error_codes(pre, corrected, s.background_class, s.ignore_value)
        labels, errors = self.labels(), self.errors()
        scatter_units(labels, units, corrected)
        scatter_units(errors, units, codes)
        write_volume(self.folder / "labels.tif", labels)
        write_volume(self.folder / "errors.tif", errors)
        write_label_stack(pending / "corrected.tif", corrected, s.ignore_value)
        write_volume(pending / "errors.tif", codes)
        total = int((labels != s.ignore_value).sum())
        record = {"iteration": int(pending.name), "strategy": proposal["strategy"], "units": len(units),
                  "labeled_units": proposal["labeled_units"] + len(units), "labeled_voxels": total,
                  "labeled_fraction": total / labels.size, "train_seconds": proposal["train_seconds"], **stats,
                  "errors_fn": int((codes == 2).sum()), "errors_fp": int((codes == 1).sum())}
        (pending / "stats.json").write_text(json.dumps(record, indent=1))
        history = [h for h in self.history() if h["iteration"] != record["iteration"]] + [record]
        (self.folder / "history.json").write_text(json.dumps(history, indent=1))
        log.info("iteration %s ingested: %d voxels labeled, %d changed", pending.name, stats["labeled"],
                 stats["changed"])
        return record

    # ------------------------------------------------------------------------------------- status
    def status(self, plot: bool = True) -> str:
        """A table of the iterations (and ``progress.png`` in the project folder)."""
        from arborseg.bootstrap.report import format_history, plot_history

        s = self.settings
        lines = [f"project {self.folder}: {s.unit}s" + (f" {s.tile}x{s.tile}" if s.unit == "tile" else "") +
                 f", classes {s.classes}, strategy {s.strategy}, error weighting {s.error_mode}"]
        history = self.history()
        units = self.units()
        done = int(labeled_units(self.labels(), units, s.ignore_value).sum())
        lines.append(f"labeled: {done}/{len(units)} {s.unit}s, {self.labeled_voxels()} voxels")
        if history:
            lines.append(format_history(history))
            if plot:
                lines.append(f"plot: {plot_history(history, self.folder / 'progress.png')}")
        pending = self.pending()
        if pending is not None:
            lines.append(f"waiting for the correction of iteration {pending.name}: paint "
                         f"{pending / 'presegmentation.tif'} and run `arborseg bootstrap ingest {self.folder} FILE`")
        return "\n".join(lines)
