"""The run store: the one place that knows the layout of a campaign run folder and of a trial folder.

::

    runs/<campaign>/                   a run folder (RunFolder)
      campaign.json                    the manifest the driver writes: name, storage URL, objective, direction, ...
      campaign.yaml                    a copy of the campaign YAML
      optuna.sqlite3 | optuna.journal  the Optuna storage (when it is a file; see arborseg.campaign.storage)
      jobs/                            the executor's job folders
      trials/<id:04d>/                 a trial folder (TrialFolder), id = Optuna's storage-wide trial id
        tree.yaml  model.pt  checkpoint.pt  metrics.json  history.json  learning_curve.png  overlays/*.png
        probs/<region>.npz             predicted probabilities of validation and the eval regions (float16,
                                       (C, Z, Y, X), np.savez_compressed; older ensemble members: .npy)
      ensembles/<name>/                an ensemble folder: ensemble.json, and for ``--train`` ensembles jobs/ and
                                       members/<tree id[:10]>-s<seed>/ (a trial folder of its own + state.json);
                                       post-hoc ensembles name their members' trial folders instead

A model file (``model.pt``) is a dict of tensors and plain types only, ``{"state_dict", "tree", "classes",
"window", "normalizer"}``: :func:`save_model` writes it, :func:`load_model` reads it back with
``torch.load(weights_only=True)`` (nothing in it needs arbitrary unpickling). Checkpoints (``checkpoint.pt``)
hold optimiser and RNG states and are the trainer's own business.

Campaign folders may be moved or copied: a storage file and trial folders that are no longer where the
campaign recorded them are looked for in the folder itself (:meth:`RunFolder.locate`).

torch, optuna, the module tree and the campaign configuration are imported only where they are needed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arborseg.errors import ArborsegError, CampaignError
from arborseg.log import get_logger

if TYPE_CHECKING:
    import torch

    from arborseg.tree import ModuleTree

log = get_logger(__name__)

# a run folder
CAMPAIGN_JSON = "campaign.json"
CAMPAIGN_YAML = "campaign.yaml"
TRIALS_DIR = "trials"
JOBS_DIR = "jobs"
ENSEMBLES_DIR = "ensembles"
# a trial folder (and an ensemble member's folder)
TREE_FILE = "tree.yaml"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
LEARNING_CURVE_FILE = "learning_curve.png"
OVERLAYS_DIR = "overlays"
PROBS_DIR = "probs"
PROBS_SUFFIX = ".npz"  # np.savez_compressed of one float16 array; older members wrote .npy
# an ensemble folder
ENSEMBLE_FILE = "ensemble.json"
MEMBERS_DIR = "members"
# a pre-training run folder (runs/pretrain/<name>): checkpoint.pt and history.json as a trial's, and
PRETRAIN_DIR = "pretrain"
PRETRAIN_CONFIG = "pretrain.yaml"  # the config as run (a resumed run must match it)
# the query encoder in MoCo / CEM500K layout (what a tree's init loads), and which module it fits with its values;
# the names space/encoder_init.py looks for (ENCODER_FILE, ENCODER_SPEC_FILE: a test checks they agree)
ENCODER_CHECKPOINT = "encoder.pt"
ENCODER_DESCRIPTION = "encoder.json"
LOSS_CURVE_FILE = "loss_curve.png"
NEIGHBOURS_FILE = "neighbours.png"

MODEL_KEYS = ("state_dict", "tree", "classes", "window", "normalizer")
RESULT_FILES = (TREE_FILE, METRICS_FILE, HISTORY_FILE, LEARNING_CURVE_FILE)  # what a finished trial hands on


# ---------------------------------------------------------------------------------------------- trial folders
@dataclass(frozen=True)
class TrialFolder:
    """The files of one trial (or ensemble member) folder."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def tree_path(self) -> Path:
        return self.path / TREE_FILE

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def learning_curve_path(self) -> Path:
        return self.path / LEARNING_CURVE_FILE

    @property
    def overlays_dir(self) -> Path:
        return self.path / OVERLAYS_DIR

    @property
    def probs_dir(self) -> Path:
        return self.path / PROBS_DIR

    def probs_path(self, region: str) -> Path:
        """``probs/<region>.npz``: the predicted probabilities of ``region`` (see :meth:`save_probs`)."""
        return self.probs_dir / f"{region}{PROBS_SUFFIX}"

    def has_probs(self, region: str) -> bool:
        return self.probs_path(region).is_file() or (self.probs_dir / f"{region}.npy").is_file()

    def save_probs(self, region: str, probs: Any) -> Path:
        """Write the (C, Z, Y, X) probabilities of ``region`` as float16, compressed, atomically."""
        import numpy as np

        path = self.probs_path(region)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{region}.tmp{PROBS_SUFFIX}")
        np.savez_compressed(tmp, probs=np.asarray(probs, dtype=np.float16))
        tmp.replace(path)
        return path

    def rung_probs_path(self, steps: int, region: str = "validation") -> Path:
        """``probs/step<steps>/<region>.npz``: the probabilities a trial had at the end of a rung."""
        return self.probs_dir / f"step{int(steps)}" / f"{region}{PROBS_SUFFIX}"

    def keep_rung_probs(self, steps: int, region: str = "validation") -> Path | None:
        """Keep the current probabilities of ``region`` as those of the rung ending at ``steps`` (a hard link where
        the file system allows, else a copy); None when there are none."""
        import os
        import shutil

        source, dest = self.probs_path(region), self.rung_probs_path(steps, region)
        if not source.is_file():
            return None
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        try:
            os.link(source, dest)
        except OSError:
            shutil.copyfile(source, dest)
        return dest

    def read_probs(self, region: str) -> Any:
        """The float16 probabilities of ``region`` (``probs/<region>.npz``, or an older member's ``.npy``);
        None when neither is there."""
        import numpy as np

        path = self.probs_path(region)
        if path.is_file():
            with np.load(path) as saved:
                return saved["probs"]
        legacy = self.probs_dir / f"{region}.npy"
        return np.load(legacy) if legacy.is_file() else None

    def is_finished(self) -> bool:
        """Trained and scored: ``metrics.json`` and ``model.pt`` are both there."""
        return self.metrics_path.is_file() and self.model_path.is_file()

    def overlays(self) -> list[Path]:
        """The error overlay pictures (``overlays/*.png``), by name."""
        return sorted(self.overlays_dir.glob("*.png")) if self.overlays_dir.is_dir() else []

    def load_tree(self) -> ModuleTree:
        return load_tree(self.tree_path)

    def save_tree(self, tree: ModuleTree) -> Path:
        return save_tree(tree, self.path)

    def copy_to(self, dest: str | Path) -> TrialFolder:
        """Copy the trained trial into ``dest`` (tree, metrics, history, learning curve, probabilities, then the
        model last and atomically: a ``model.pt`` beside ``metrics.json`` marks a finished trial)."""
        out = TrialFolder(Path(dest))
        out.path.mkdir(parents=True, exist_ok=True)
        for name in RESULT_FILES:
            if (self.path / name).is_file():
                shutil.copyfile(self.path / name, out.path / name)
        if self.probs_dir.is_dir():
            shutil.copytree(self.probs_dir, out.probs_dir, dirs_exist_ok=True)
        tmp = out.model_path.with_name(MODEL_FILE + ".tmp")
        shutil.copyfile(self.model_path, tmp)
        tmp.replace(out.model_path)
        return out

    def read_metrics(self) -> dict[str, Any] | None:
        """The trainer's result record (``metrics.json``); None when missing or unreadable."""
        try:
            record = json.loads(self.metrics_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return record if isinstance(record, dict) else None


def load_tree(path: str | Path) -> ModuleTree:
    """The module tree of a ``tree.yaml`` (a :class:`~arborseg.errors.TreeError` for a bad file)."""
    from arborseg.tree import ModuleTree

    return ModuleTree.load(path)


def save_tree(tree: ModuleTree, folder: str | Path) -> Path:
    """Write ``folder/tree.yaml``; return its path."""
    return tree.save(Path(folder) / TREE_FILE)


# ---------------------------------------------------------------------------------------------- model files
def save_model(folder: str | Path, state_dict: dict[str, Any], tree: ModuleTree, classes: list[str],
               window: tuple[int, ...] | list[int], normalizer: dict[str, Any]) -> Path:
    """Write ``folder/model.pt`` atomically: the weights and what is needed to rebuild and use the network."""
    import torch

    path = Path(folder) / MODEL_FILE
    saved = {"state_dict": state_dict, "tree": tree.to_dict(), "classes": [str(c) for c in classes],
             "window": [int(v) for v in window], "normalizer": normalizer}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(saved, tmp)
    tmp.replace(path)
    return path


def load_model(path: str | Path, tree: ModuleTree | None = None,
               device: str = "cpu") -> tuple[torch.nn.Module, ModuleTree, dict[str, Any]]:
    """(network in eval mode on ``device``, its tree, the saved dict) from a ``model.pt`` that
    :func:`save_model` wrote. The network is built from ``tree`` when given (e.g. the ``tree.yaml`` beside
    it), else from the tree saved in the file. Any problem is one :class:`ArborsegError` line."""

    import torch

    from arborseg.nn import build_network
    from arborseg.tree import ModuleTree

    path = Path(path)
    if not path.is_file():
        raise ArborsegError(f"{path}: no such model file (a trial's {MODEL_FILE})")
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # any unreadable file (junk bytes raise struct.error) is one line
        detail = "it holds objects other than tensors and plain values" if "Weights only load failed" in str(exc) \
            else _first_line(exc)
        raise ArborsegError(f"{path}: not a readable {MODEL_FILE} ({detail}); expected a model written by arborseg "
                            "training") from None
    missing = [k for k in ("state_dict", "tree", "classes") if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise ArborsegError(f"{path}: not a model written by arborseg training (no {', '.join(missing)})")
    if tree is None:
        try:
            tree = ModuleTree.from_dict(saved["tree"], source=str(path))
        except (ArborsegError, KeyError, TypeError, ValueError) as exc:
            raise ArborsegError(f"{path}: the tree saved in it is invalid ({_first_line(exc)})") from None
    try:
        net = build_network(tree, len(saved["classes"]))
        net.load_state_dict(saved["state_dict"])
    except (ArborsegError, KeyError, TypeError, RuntimeError) as exc:
        raise ArborsegError(f"{path}: the weights do not fit the tree {tree.name} ({_first_line(exc)})") from None
    return net.to(device).eval(), tree, saved


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------- run folders
def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / CAMPAIGN_JSON).is_file()


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Campaign folders named by ``paths``: each a campaign folder or a folder of campaign folders (``runs/``)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if is_run_dir(p):
            found = [p]
        elif p.is_dir():
            found = sorted(c for c in p.iterdir() if is_run_dir(c))
        else:
            found = []
        if not found:
            what = "no such folder" if not p.exists() else f"no {CAMPAIGN_JSON} in it nor in its subfolders"
            raise CampaignError(f"{p}: not a campaign folder ({what}); pass runs/<name>/ (or runs/ for all)")
        out += [f for f in found if f.resolve() not in {o.resolve() for o in out}]
    return out


def storage_file(url: str) -> Path | None:
    """The file behind a SQLite or journal storage URL (None for a database server)."""
    from arborseg.campaign.storage import JOURNAL_SCHEME

    if url.startswith(JOURNAL_SCHEME):
        return Path(url[len(JOURNAL_SCHEME):])
    if url.startswith("sqlite:///"):
        from sqlalchemy.engine import make_url

        db = make_url(url).database
        return Path(db) if db and not db.startswith(":") else None
    return None


def study_trials(storage: Any, campaign: str) -> list[tuple[Any, Any]]:
    """(optuna Study, FrozenTrial) for every trial of the studies ``<campaign>.*`` of ``storage``, studies in
    the order they were created, trials in their order within each study."""
    import optuna

    out = []
    for summary in sorted(optuna.get_all_study_summaries(storage), key=lambda s: s._study_id):
        if summary.study_name.startswith(f"{campaign}."):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            out += [(study, t) for t in study.get_trials(deepcopy=False)]
    return out


@dataclass(frozen=True)
class RunFolder:
    """A campaign run folder: its manifest (``campaign.json``), its storage and its trial and ensemble folders."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """Read ``path/campaign.json`` (a :class:`CampaignError` if ``path`` is not a run folder)."""
        path = Path(path)
        file = path / CAMPAIGN_JSON
        if not file.is_file():
            raise CampaignError(f"{path}: not a campaign folder (no {CAMPAIGN_JSON}); campaigns live in "
                                "runs/<name>/")
        try:
            manifest = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise CampaignError(f"{file}: not valid JSON ({exc})") from None
        if not isinstance(manifest, dict) or "name" not in manifest:
            raise CampaignError(f"{file}: not a campaign manifest (no name); was it written by `arborseg search`?")
        return cls(path, manifest)

    @classmethod
    def create(cls, path: str | Path, manifest: dict[str, Any], campaign_file: str | Path) -> RunFolder:
        """Make ``path``, write its ``campaign.json`` and keep a copy of ``campaign_file`` as ``campaign.yaml``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CAMPAIGN_JSON).write_text(json.dumps(manifest, indent=1, default=str))
        copy = path / CAMPAIGN_YAML
        if not copy.exists() or copy.resolve() != Path(campaign_file):
            shutil.copyfile(campaign_file, copy)
        return cls(path, manifest)

    # ------------------------------------------------------------------ the manifest
    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def objective(self) -> str:
        return str(self.manifest.get("objective", "value"))

    @property
    def direction(self) -> str:
        return str(self.manifest.get("direction", "maximize"))

    # ------------------------------------------------------------------ places
    @property
    def trials_dir(self) -> Path:
        return self.path / TRIALS_DIR

    @property
    def jobs_dir(self) -> Path:
        return self.path / JOBS_DIR

    @property
    def ensembles_dir(self) -> Path:
        return self.path / ENSEMBLES_DIR

    @property
    def campaign_yaml(self) -> Path:
        return self.path / CAMPAIGN_YAML

    def trial_dir(self, trial_id: int) -> Path:
        return trial_dir(self.path, trial_id)

    def trial(self, trial_id: int) -> TrialFolder:
        return TrialFolder(self.trial_dir(trial_id))

    def ensemble_dir(self, name: str) -> Path:
        return ensemble_dir(self.path, name)

    def ensemble_dirs(self) -> list[Path]:
        return ensemble_dirs(self.path)

    # ------------------------------------------------------------------ the storage and its trials
    @property
    def recorded_url(self) -> str:
        """The storage URL as the campaign recorded it."""
        return str(self.manifest.get("storage_url", ""))

    @property
    def recorded_dir(self) -> str | None:
        """Where the campaign folder was when the storage was written (None for a database server)."""
        path = storage_file(self.recorded_url)
        return str(path.parent) if path is not None else None

    @property
    def storage_url(self) -> str:
        """The campaign's storage URL; a SQLite or journal file that was copied or moved with the campaign
        folder is read from the folder itself."""
        from arborseg.campaign.storage import JOURNAL_SCHEME

        url = self.manifest["storage_url"]
        run_dir = self.path.absolute()
        path = storage_file(url)
        if path is None or path.parent.resolve() == run_dir.resolve() or not (run_dir / path.name).is_file():
            return url
        here = run_dir / path.name
        if url.startswith(JOURNAL_SCHEME):
            return f"{JOURNAL_SCHEME}{here}"
        from sqlalchemy.engine import make_url

        return make_url(url).set(database=str(here)).render_as_string(hide_password=False)

    def trials(self) -> list[tuple[Any, Any]]:
        """(optuna Study, FrozenTrial) of every trial of the campaign's studies (see :func:`study_trials`)."""
        from arborseg.campaign.storage import open_storage

        return study_trials(open_storage(self.storage_url), self.name)

    def locate(self, path: str | None) -> str | None:
        """Where ``path`` (recorded below the campaign folder of old) is now: below this folder when the
        campaign folder was copied or moved, else ``path`` itself."""
        if not path:
            return path
        p = Path(path)
        recorded = self.recorded_dir
        if recorded:
            try:
                candidate = self.path / p.relative_to(recorded)
                if candidate.exists():
                    return str(candidate)
            except ValueError:
                pass
        if p.exists():
            return path
        parts = p.parts
        if TRIALS_DIR in parts:
            i = len(parts) - 1 - parts[::-1].index(TRIALS_DIR)
            candidate = self.path.joinpath(*parts[i:])
            if candidate.exists():
                return str(candidate)
        return path

    # ------------------------------------------------------------------ the configuration
    def campaign_files(self) -> list[Path]:
        """Where the campaign YAML may be: the file the manifest names, then the copy in the folder."""
        named = self.manifest.get("campaign_file")
        return [Path(p) for p in (named,) if p] + [self.campaign_yaml]

    def load_config(self) -> Any:
        """The campaign configuration (:class:`arborseg.campaign.config.CampaignConfig`), from the first of
        :meth:`campaign_files` that reads."""
        from arborseg.campaign.config import load_campaign

        candidates = self.campaign_files()
        last: CampaignError | None = None
        for path in candidates:
            if path.is_file():
                try:
                    return load_campaign(path)
                except CampaignError as exc:
                    last = exc
                    log.debug("cannot read %s: %s", path, exc)
        reason = f" ({last})" if last is not None else ""
        raise CampaignError(f"{self.path}: cannot read the campaign configuration from "
                            f"{', '.join(map(str, candidates))}{reason}; restore the campaign YAML (its data and "
                            "space files must be where it says)")


def trial_dir(run_dir: str | Path, trial_id: int) -> Path:
    """``run_dir/trials/<trial_id:04d>``."""
    return Path(run_dir) / TRIALS_DIR / f"{int(trial_id):04d}"


def ensemble_dir(run_dir: str | Path, name: str) -> Path:
    """``run_dir/ensembles/<name>``."""
    return Path(run_dir) / ENSEMBLES_DIR / name


def ensemble_dirs(run_dir: str | Path) -> list[Path]:
    """The ensemble folders of a run folder (``ensembles/*/ensemble.json``), by name."""
    root = Path(run_dir) / ENSEMBLES_DIR
    return sorted(p.parent for p in root.glob(f"*/{ENSEMBLE_FILE}")) if root.is_dir() else []


def member_key(tree_id: str, seed: int) -> str:
    """An ensemble member's key and folder name: ``<tree id[:10]>-s<seed>``."""
    return f"{tree_id[:10]}-s{seed}"


def member_dir(ensemble: str | Path, tree_id: str, seed: int) -> Path:
    """An ensemble member's folder: ``ENSEMBLE_DIR/members/<member key>``."""
    return Path(ensemble) / MEMBERS_DIR / member_key(tree_id, seed)
