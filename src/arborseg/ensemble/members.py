"""Ensemble members (tree x seed): planning, training as submitit jobs, resuming, reading back.

Each member lives in ``ENSEMBLE_DIR/members/<tree_id[:10]>-s<seed>/`` with the files of a trial
(``tree.yaml``, ``model.pt``, ``metrics.json``, ``history.json``, ``checkpoint.pt``), its predicted
probabilities of the validation and eval regions (``probs/<region>.npy``, float16, (C, Z, Y, X)),
``state.json`` (``{"state": "COMPLETE" | "FAIL", "reason": ...}``) and, while it trains outside the
driver, ``job.json`` (to reattach on a rerun).

A member is *finished* when ``metrics.json`` and ``model.pt`` are present: a rerun never trains it
again. Otherwise a rerun reattaches to its job if that still runs (local, slurm) or submits it again,
and training continues from its last checkpoint. A member whose tree and seed are those of a COMPLETE
campaign trial trained for the same number of steps is copied from the trial folder instead of trained
(``reuse``). A failed member is recorded (``state.json``) and left out; the next run tries it again.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from arborseg.jobs.executors import CheckpointableJob
from arborseg.errors import ArborsegError
from arborseg.log import get_logger

log = get_logger(__name__)

PROB_REGIONS = ("validation", "eval_near", "eval_far")


@dataclass(frozen=True)
class MemberSpec:
    """One member to have: a tree of the campaign trained with one seed."""

    tree_id: str
    tree_name: str
    family: str
    seed: int
    tree_file: Path  # the campaign trial's tree.yaml
    out_dir: Path
    trial_id: int | None = None
    reuse_from: Path | None = None  # a campaign trial folder holding this very member

    @property
    def key(self) -> str:
        return member_key(self.tree_id, self.seed)


def member_key(tree_id: str, seed: int) -> str:
    """The member's folder name: ``<tree_id[:10]>-s<seed>``."""
    return f"{tree_id[:10]}-s{seed}"


def is_finished(out_dir: Path) -> bool:
    return (out_dir / "metrics.json").is_file() and (out_dir / "model.pt").is_file()


def read_state(out_dir: Path) -> dict[str, Any]:
    """``state.json`` of a member folder (``{"state": "PENDING"}`` when absent)."""
    path = out_dir / "state.json"
    if is_finished(out_dir):
        state = json.loads(path.read_text()) if path.is_file() else {}
        return {"state": "COMPLETE", **({"reused_from": state["reused_from"]} if "reused_from" in state else {})}
    if path.is_file():
        return json.loads(path.read_text())
    return {"state": "PENDING"}


def write_state(out_dir: Path, state: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1, default=str))
    tmp.replace(out_dir / "state.json")


# ------------------------------------------------------------------------------------------- probabilities
def load_member_model(model_path: Path):
    """(network in eval mode, tree, the saved dict) from a ``model.pt`` written by ``Trainer.save_model``."""
    import torch

    from arborseg.nn import build_network
    from arborseg.tree import ModuleTree

    try:
        saved = torch.load(model_path, map_location="cpu", weights_only=True)
        tree = ModuleTree.from_dict(saved["tree"], source=str(model_path))
        model = build_network(tree, len(saved["classes"]))
        model.load_state_dict(saved["state_dict"])
    except (OSError, KeyError, RuntimeError) as exc:
        raise ArborsegError(f"{model_path}: not a model written by arborseg training ({exc}); delete the member "
                            "folder to train it again") from None
    return model.eval(), tree, saved


def predict_member(model_path: Path, data, regions: Sequence[str], settings, out_dir: Path) -> list[Path]:
    """Predict ``regions`` with the member's model (its own window) and save ``probs/<region>.npy`` (float16)."""
    from arborseg.device import resolve_device
    from arborseg.inference.tiled import predict_volume

    model, tree, saved = load_member_model(model_path)
    device = resolve_device(settings.device)
    written = []
    for region in regions:
        raw, _ = data.load_region(region)
        probs = predict_volume(model, raw, tuple(saved["window"]), len(saved["classes"]), overlap=settings.overlap,
                               blending="gaussian", batch_size=settings.eval_batch_size, device=device,
                               amp=settings.amp)
        path = out_dir / "probs" / f"{region}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, np.asarray(probs, dtype=np.float16))
        tmp.replace(path)
        written.append(path)
    return written


def load_probs(out_dir: Path, region: str) -> np.ndarray | None:
    path = out_dir / "probs" / f"{region}.npy"
    return np.load(path) if path.is_file() else None


# ------------------------------------------------------------------------------------------- the job
def _load_data(data: Any):
    from arborseg.data import DataConfig, load_data_config

    if isinstance(data, (list, tuple)):
        mapping, base_dir = data
        return DataConfig.from_dict(mapping, source="campaign", base_dir=base_dir, key_prefix="data",
                                    check_labels=False)
    return load_data_config(data, check_labels=False)


@dataclass
class MemberJob(CheckpointableJob):
    """Train one member (``train_and_score``) and predict its regions; never raises for its own failure.

    Returns ``{"state": "COMPLETE", "value": ...}`` or ``{"state": "FAIL", "reason": ...}`` (the traceback
    of an unexpected error goes to ``error.txt``). Requeued after preemption, it resumes from its checkpoint.
    """

    tree_file: str
    data: Any  # a data YAML path, or (mapping, base_dir)
    settings: dict
    out_dir: str
    regions: tuple[str, ...] = PROB_REGIONS

    def run(self) -> dict[str, Any]:
        from arborseg.train.settings import TrainSettings
        from arborseg.train.trainer import train_and_score
        from arborseg.tree import ModuleTree

        from arborseg.campaign.job import failure, job_log

        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with job_log(out / "member.log"):
            try:
                settings = TrainSettings.from_dict(self.settings)
                data = _load_data(self.data)
                result = train_and_score(ModuleTree.load(self.tree_file), data, settings, out, progress=False)
                regions = [r for r in self.regions if r in data.regions]
                predict_member(out / "model.pt", data, regions, settings, out)
                return {"state": "COMPLETE", "value": result["objective_value"]}
            except Exception as exc:  # noqa: BLE001 - a member's own failure must not sink the ensemble
                return failure(exc, out)


# ------------------------------------------------------------------------------------------- running
def reuse_trial(spec: MemberSpec) -> None:
    """Copy a campaign trial that is this member (same tree, seed and steps) into the member folder."""
    assert spec.reuse_from is not None
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tree.yaml", "metrics.json", "history.json", "learning_curve.png"):
        if (spec.reuse_from / name).is_file():
            shutil.copyfile(spec.reuse_from / name, spec.out_dir / name)
    tmp = spec.out_dir / "model.pt.tmp"
    shutil.copyfile(spec.reuse_from / "model.pt", tmp)  # model.pt last: it marks the member finished
    tmp.replace(spec.out_dir / "model.pt")
    write_state(spec.out_dir, {"state": "COMPLETE", "reused_from": str(spec.reuse_from)})
    log.info("member %s: copied from campaign trial %s (same tree, seed and steps)", spec.key, spec.trial_id)


def run_members(specs: Sequence[MemberSpec], data_arg: Any, settings: dict, executor_kind: str,
                executor_options: dict, jobs_dir: Path, progress: bool = True, poll_s: float = 0.3
                ) -> dict[str, dict[str, Any]]:
    """Bring every member to COMPLETE or FAIL: skip finished ones, reuse trials, reattach or submit jobs.

    ``settings``: TrainSettings as a dict (the seed is set per member). Returns ``{key: state dict}``.
    """
    from tqdm.auto import tqdm

    from arborseg.jobs.executors import (ACTIVE_STATES, cancel_job, job_outcome, job_state, make_executor,
                                             reattach_job)

    states: dict[str, dict[str, Any]] = {}
    queue: deque[MemberSpec] = deque()
    running: list[tuple[MemberSpec, Any]] = []
    for spec in specs:
        if is_finished(spec.out_dir):
            states[spec.key] = read_state(spec.out_dir)
            if (spec.out_dir / "job.json").is_file():  # it finished while no driver watched
                write_state(spec.out_dir, states[spec.key])
                (spec.out_dir / "job.json").unlink(missing_ok=True)
            _check_steps(spec, settings)
            continue
        if spec.reuse_from is not None:
            reuse_trial(spec)
            states[spec.key] = read_state(spec.out_dir)
            continue
        job = _reattach(spec, executor_kind, reattach_job)
        if job is not None and job_state(job) in ACTIVE_STATES:
            log.info("member %s: reattached to its running job %s", spec.key, job.job_id)
            running.append((spec, job))
        else:
            queue.append(spec)
    if not queue and not running:
        return states
    options = {k: v for k, v in executor_options.items() if k != "workers" or executor_kind == "local"}
    workers = 1 if executor_kind == "debug" else int(executor_options.get("workers", 2 if executor_kind == "local"
                                                                           else 4))
    executor = make_executor(executor_kind, jobs_dir, options)
    with tqdm(total=len(queue) + len(running), desc="members", unit="member", disable=not progress) as bar:
        try:
            while queue or running:
                while queue and len(running) < workers:
                    spec = queue.popleft()
                    running.append((spec, _submit(executor, spec, data_arg, settings, jobs_dir)))
                still = []
                for spec, job in running:
                    outcome = job_outcome(job)
                    if outcome is None:
                        still.append((spec, job))
                        continue
                    states[spec.key] = _finish(spec, outcome)
                    bar.update(1)
                    bar.set_postfix(failed=sum(s["state"] == "FAIL" for s in states.values()))
                running = still
                if running:
                    time.sleep(poll_s)
        except KeyboardInterrupt:
            for _, job in running:
                cancel_job(job)
            raise
    return states


def _submit(executor, spec: MemberSpec, data_arg: Any, settings: dict, jobs_dir: Path):
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    job_fn = MemberJob(str(spec.tree_file), data_arg, {**settings, "seed": spec.seed}, str(spec.out_dir))
    job = executor.submit(job_fn)
    (spec.out_dir / "job.json").write_text(json.dumps({"job_id": str(job.job_id), "kind": executor.kind,
                                                       "folder": str(jobs_dir)}))
    write_state(spec.out_dir, {"state": "RUNNING", "job_id": str(job.job_id)})
    log.debug("member %s: job %s submitted", spec.key, job.job_id)
    return job


def _reattach(spec: MemberSpec, kind: str, reattach_job) -> Any:
    path = spec.out_dir / "job.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        if info.get("kind") not in ("local", "slurm"):
            return None
        return reattach_job(info["folder"], info["job_id"], info["kind"])
    except Exception as exc:  # noqa: BLE001 - cannot follow it: submit again
        log.debug("member %s: cannot reattach (%s)", spec.key, exc)
        return None


def _finish(spec: MemberSpec, outcome) -> dict[str, Any]:
    if outcome.ok and isinstance(outcome.result, dict) and "state" in outcome.result:
        state = dict(outcome.result)
    elif outcome.ok:
        state = {"state": "FAIL", "reason": f"the job returned {outcome.result!r}, not a member result"}
    else:
        state = {"state": "FAIL", "reason": f"{outcome.reason} (log: {outcome.log})"}
    if state["state"] == "COMPLETE" and not is_finished(spec.out_dir):
        state = {"state": "FAIL", "reason": f"the job ended without model.pt and metrics.json in {spec.out_dir}"}
    write_state(spec.out_dir, state)
    (spec.out_dir / "job.json").unlink(missing_ok=True)
    if state["state"] == "FAIL":
        log.warning("member %s (%s, seed %d) failed: %s", spec.key, spec.tree_name, spec.seed, state["reason"])
    return state


def _check_steps(spec: MemberSpec, settings: dict) -> None:
    try:
        steps = json.loads((spec.out_dir / "metrics.json").read_text()).get("steps")
    except (OSError, json.JSONDecodeError):
        return
    if steps is not None and int(steps) != int(settings["steps"]):
        log.warning("member %s was trained for %s steps, not %s: kept (give another --name to train anew)",
                    spec.key, steps, settings["steps"])
