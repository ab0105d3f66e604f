"""Ensemble members (tree x seed): planning, training as submitit jobs, resuming, reading back.

Each member lives in ``ENSEMBLE_DIR/members/<tree_id[:10]>-s<seed>/`` with the files of a trial
(``tree.yaml``, ``model.pt``, ``metrics.json``, ``history.json``, ``checkpoint.pt``), its predicted
probabilities of the validation and eval regions (``probs/<region>.npz``, float16, (C, Z, Y, X), as every
campaign trial keeps them; :meth:`~arborseg.runs.TrialFolder.read_probs` also reads older ``.npy`` files),
``state.json`` (``{"state": "COMPLETE" | "FAIL", "reason": ...}``) and, while it trains outside the
driver, ``job.json`` (a :class:`~arborseg.jobs.scheduler.JobRecord`, to reattach on a rerun). Members run
as jobs of the one scheduler (:mod:`arborseg.jobs.scheduler`), as campaign trials do.

A member is *finished* when ``metrics.json`` and ``model.pt`` are present: a rerun never trains it
again. Otherwise a rerun reattaches to its job if that still runs (local, slurm) or submits it again,
and training continues from its last checkpoint. A member whose tree and seed are those of a COMPLETE
campaign trial trained for the same number of steps is copied from the trial folder instead of trained
(``reuse``). A failed member is recorded (``state.json``) and left out; the next run tries it again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arborseg.errors import ArborsegError
from arborseg.jobs.checkpointable import CheckpointableJob
from arborseg.jobs.runtime import failure, job_log, load_data
from arborseg.log import get_logger
from arborseg.runs import METRICS_FILE, MODEL_FILE, TrialFolder, load_model, member_key
from arborseg.train.result import ResultState, TrialOutcome, read_outcome

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
    label: str | None = None  # the key of a post-hoc member (``t<trial id>``); else tree id and seed

    @property
    def key(self) -> str:
        return self.label or member_key(self.tree_id, self.seed)


def is_finished(out_dir: Path) -> bool:
    """Trained and scored (see :meth:`arborseg.runs.TrialFolder.is_finished`)."""
    return TrialFolder(out_dir).is_finished()


def read_state(out_dir: Path) -> dict[str, Any]:
    """``state.json`` of a member folder (``{"state": "PENDING"}`` when absent)."""
    path = out_dir / "state.json"
    if is_finished(out_dir):
        state = json.loads(path.read_text()) if path.is_file() else {}
        return {"state": ResultState.COMPLETE,
                **({"reused_from": state["reused_from"]} if "reused_from" in state else {})}
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
    """(network in eval mode, tree, the saved dict) from a member's ``model.pt`` (:func:`arborseg.runs.load_model`)."""
    try:
        return load_model(model_path)
    except ArborsegError as exc:
        raise ArborsegError(f"{exc}; delete the member folder to train it again") from None


def predict_member(model_path: Path, data, regions: Sequence[str], settings, out_dir: Path) -> list[Path]:
    """Predict ``regions`` with the member's model (its own window) and save ``probs/<region>.npz`` (float16)."""
    from arborseg.device import resolve_device, resolve_precision
    from arborseg.inference import predict_volume

    model, tree, saved = load_member_model(model_path)
    device = resolve_device(settings.device)
    reduced = resolve_precision(settings.precision, device)[1] is not None
    written = []
    for region in regions:
        raw, _ = data.load_region(region)
        probs = predict_volume(model, raw, tuple(saved["window"]), len(saved["classes"]), overlap=settings.overlap,
                               blending="gaussian", batch_size=settings.eval_batch_size, device=device,
                               amp=reduced)
        written.append(TrialFolder(out_dir).save_probs(region, probs))
    return written


def load_probs(out_dir: Path, region: str) -> np.ndarray | None:
    """The stored probabilities of ``region`` of a member or trial folder (:meth:`TrialFolder.read_probs`)."""
    probs: np.ndarray | None = TrialFolder(out_dir).read_probs(region)
    return probs


# ------------------------------------------------------------------------------------------- the job
@dataclass
class MemberJob(CheckpointableJob):
    """Train one member (``train_and_score``, which keeps the probabilities of the regions it scores; any
    region it did not score is predicted here); never raises for its own failure.

    Returns a :class:`~arborseg.train.result.TrialOutcome`: COMPLETE with the training result, or FAIL with
    a reason (the traceback of an unexpected error goes to ``error.txt``). Requeued after preemption, it
    resumes from its checkpoint.
    """

    tree_file: str
    data: Any  # a data YAML path, or (mapping, base_dir)
    settings: dict
    out_dir: str
    regions: tuple[str, ...] = PROB_REGIONS

    def run(self) -> TrialOutcome:
        from arborseg.train.settings import TrainSettings
        from arborseg.train.trainer import train_and_score
        from arborseg.tree import ModuleTree

        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with job_log(out / "member.log"):
            try:
                settings = TrainSettings.from_dict(self.settings)
                data = load_data(self.data)
                result = train_and_score(ModuleTree.load(self.tree_file), data, settings, out, progress=False)
                missing = [r for r in self.regions if r in data.regions and not TrialFolder(out).has_probs(r)]
                if missing:
                    predict_member(TrialFolder(out).model_path, data, missing, settings, out)
                return TrialOutcome.complete(result)
            except Exception as exc:
                return failure(exc, out)


# ------------------------------------------------------------------------------------------- running
def reuse_trial(spec: MemberSpec) -> None:
    """Copy a campaign trial that is this member (same tree, seed and steps) into the member folder."""
    assert spec.reuse_from is not None
    TrialFolder(spec.reuse_from).copy_to(spec.out_dir)  # model.pt last: it marks the member finished
    write_state(spec.out_dir, {"state": ResultState.COMPLETE, "reused_from": str(spec.reuse_from)})
    log.info("member %s: copied from campaign trial %s (same tree, seed and steps)", spec.key, spec.trial_id)


def run_members(specs: Sequence[MemberSpec], data_arg: Any, settings: dict, executor_kind: str,
                executor_options: dict, jobs_dir: Path, progress: bool = True, poll_s: float = 0.3
                ) -> dict[str, dict[str, Any]]:
    """Bring every member to COMPLETE or FAIL: skip finished ones, reuse trials, reattach or submit jobs.

    ``settings``: TrainSettings as a dict (the seed is set per member). ``executor_options``: the campaign's
    ``executor:`` options (``workers`` jobs at once). Returns ``{key: state dict}`` (what ``state.json`` holds).
    An interrupted run (Ctrl-C) cancels the jobs it has in flight.
    """
    from tqdm.auto import tqdm

    from arborseg.jobs.executors import make_executor
    from arborseg.jobs.scheduler import JobRecord, Scheduler, reattach

    states: dict[str, dict[str, Any]] = {}
    queue: list[MemberSpec] = []
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
        found = reattach(JobRecord.read(spec.out_dir / "job.json"))
        if found is not None:
            log.info("member %s: reattached to its running job %s", spec.key, found[0].job_id)
            running.append((spec, found[0]))
        else:
            queue.append(spec)
    if not queue and not running:
        return states
    executor = make_executor(executor_kind, jobs_dir, executor_options)

    def prepare(spec: MemberSpec) -> tuple[MemberSpec, MemberJob]:
        spec.out_dir.mkdir(parents=True, exist_ok=True)
        return spec, MemberJob(str(spec.tree_file), data_arg, {**settings, "seed": spec.seed}, str(spec.out_dir))

    def submitted(spec: MemberSpec, job: Any) -> None:
        JobRecord(str(job.job_id), executor.record_kind, str(jobs_dir)).write(spec.out_dir / "job.json")
        write_state(spec.out_dir, {"state": "RUNNING", "job_id": str(job.job_id)})
        log.debug("member %s: job %s submitted", spec.key, job.job_id)

    with tqdm(total=len(queue) + len(running), desc="members", unit="member", disable=not progress) as bar:
        def finished(spec: MemberSpec, outcome: Any) -> None:
            states[spec.key] = _finish(spec, outcome)
            bar.update(1)
            bar.set_postfix(failed=sum(s["state"] == ResultState.FAIL for s in states.values()))

        Scheduler(executor, prepare, submitted, finished, cancel_on_interrupt=True, poll_s=poll_s).run(queue, running)
    return states


def _finish(spec: MemberSpec, job_result) -> dict[str, Any]:
    """Record how a member's job ended (``state.json``); a malformed result fails this member only."""
    if job_result.ok:
        outcome = read_outcome(job_result.result, "member")
    else:
        outcome = TrialOutcome.failed(f"{job_result.reason} (log: {job_result.log})")
    if outcome.state == ResultState.COMPLETE and not is_finished(spec.out_dir):
        outcome = TrialOutcome.failed(f"the job ended without {MODEL_FILE} and {METRICS_FILE} in {spec.out_dir}")
    if outcome.state == ResultState.COMPLETE:
        state: dict[str, Any] = {"state": ResultState.COMPLETE, "value": outcome.value}
    else:
        state = {"state": outcome.state, "reason": outcome.reason}
    write_state(spec.out_dir, state)
    (spec.out_dir / "job.json").unlink(missing_ok=True)
    if outcome.state == ResultState.FAIL:
        log.warning("member %s (%s, seed %d) failed: %s", spec.key, spec.tree_name, spec.seed, outcome.reason)
    return state


def _check_steps(spec: MemberSpec, settings: dict) -> None:
    steps = (TrialFolder(spec.out_dir).read_metrics() or {}).get("steps")
    if steps is not None and int(steps) != int(settings["steps"]):
        log.warning("member %s was trained for %s steps, not %s: kept (give another --name to train anew)",
                    spec.key, steps, settings["steps"])
