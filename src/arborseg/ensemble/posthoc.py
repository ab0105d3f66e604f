"""``arborseg ensemble RUN_DIR`` (the default): an ensemble of trials already trained, with no training at all.

Candidates are the campaign's trained trials whose folders hold the probabilities the trainer scored them
from (``probs/<region>.npz``, :meth:`arborseg.runs.TrialFolder.read_probs`): the COMPLETE trials and, in a
campaign of rungs (successive halving), the PRUNED ones that finished at least one rung (their folders hold
the model and probabilities of the last rung they finished; trials paused between rungs are not candidates,
they may still be continued). All of them, or the best ``--candidates N`` by the objective on validation
(a stopped trial's value is that of its last rung). Members are chosen on validation by Caruana's forward
selection with replacement started from the ``--init K`` best (:mod:`.greedy`), for each fusion rule; the
best rule on validation is kept; the ensemble and every candidate are scored on every region, with the gain
over the best single trial and its bootstrap interval (:mod:`.bootstrap`). Nothing is trained or predicted:
no job is submitted and no trial folder is written. The manifest (``ensemble.json``, ``"mode": "posthoc"``)
names the members' trial folders (paths relative to the ensemble folder), so ``arborseg export`` reads their
``model.pt`` and ``tree.yaml`` where the campaign keeps them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from arborseg import runs
from arborseg.ensemble.build import (
    EnsembleResult,
    EnsembleSettings,
    _member_entry,
    choose_on_validation,
    manifest_body,
    pick_fusion,
    score_regions,
)
from arborseg.ensemble.manifest import write_manifest
from arborseg.ensemble.members import PROB_REGIONS, MemberSpec
from arborseg.ensemble.objective import Scoring
from arborseg.ensemble.select import CampaignContext, open_campaign
from arborseg.errors import CampaignError
from arborseg.log import get_logger
from arborseg.runs import TrialFolder
from arborseg.train.result import ResultState

log = get_logger(__name__)

DEFAULT_INIT = 2


def posthoc_name(settings: EnsembleSettings) -> str:
    """``--name``, else ``posthoc`` (all candidates) or ``posthoc<N>`` (``--candidates N``)."""
    return settings.name or ("posthoc" if settings.candidates is None else f"posthoc{settings.candidates}")


def member_label(trial_id: int) -> str:
    """A post-hoc member's key: ``t<trial id:04d>`` (its trial folder is ``trials/<trial id:04d>``)."""
    return f"t{int(trial_id):04d}"


def candidate_trials(ctx: CampaignContext, regions: list[str], limit: int | None = None) -> list[MemberSpec]:
    """The trained trials (COMPLETE, and PRUNED ones that finished a rung) with a tree, a model and stored
    probabilities of every region in ``regions``, best first by the objective on validation (the best
    ``limit`` when given). Trials without probabilities (trained by an older arborseg) are left out with one
    log line."""
    from arborseg.table import read_run, run_table, trained_trials

    table = run_table([], campaigns=[read_run(ctx.run_dir)])
    if table.empty or "state" not in table:
        raise CampaignError(f"{ctx.run_dir}: the campaign has no trials yet; run `arborseg search` first")
    done = trained_trials(table)
    done = done.sort_values(["value", "trial_id"], ascending=[ctx.direction != "maximize", True], kind="stable")
    out: list[MemberSpec] = []
    without: list[int] = []
    for _, row in done.iterrows():
        folder = TrialFolder(Path(str(row["artifact_dir"])))
        if not (folder.is_finished() and folder.tree_path.is_file()):
            continue
        if not all(folder.has_probs(r) for r in regions):
            without.append(int(row["trial_id"]))
            continue
        seed = row.get("seed")
        out.append(MemberSpec(str(row["tree_id"]), str(row["tree_name"]), str(row["family"]),
                              -1 if seed is None or (isinstance(seed, float) and math.isnan(seed)) else int(seed),
                              folder.tree_path, folder.path, int(row["trial_id"]),
                              label=member_label(int(row["trial_id"]))))
        if limit is not None and len(out) == limit:
            break
    if without:
        log.info("%d trained trial(s) have no stored probabilities of %s (trained by an older arborseg) and are "
                 "not candidates: %s", len(without), ", ".join(regions), ", ".join(map(str, without[:10])))
    if not out:
        raise CampaignError(f"{ctx.run_dir}: no trained trial with stored probabilities (probs/*.npz) to choose "
                            "from; train the campaign with this arborseg version, or pass --train to train members")
    return out


def build_posthoc(run_dir: str | Path, settings: EnsembleSettings | None = None) -> EnsembleResult:
    """Choose, fuse and score an ensemble of the campaign's trained trials; write its ``ensemble.json``."""
    settings = settings or EnsembleSettings()
    settings.check()
    if settings.init is None:
        settings.init = DEFAULT_INIT
    ctx = open_campaign(run_dir)
    data = ctx.data
    if "validation" not in data.regions:
        raise CampaignError(f"{ctx.run_dir}: the data has no validation region to choose the ensemble on; "
                            "add regions.validation to the data YAML")
    name = posthoc_name(settings)
    ensemble_dir = runs.ensemble_dir(ctx.run_dir, name)
    regions = [r for r in PROB_REGIONS if r in data.regions]
    candidates = candidate_trials(ctx, regions, settings.candidates)
    log.info("post-hoc ensemble %s: %d candidate trial(s), greedy start from the best %d; no training",
             name, len(candidates), min(settings.init, len(candidates)))
    scoring = Scoring.from_data(data, ctx.config.train_settings.fn_mode)
    done, selections = choose_on_validation(candidates, data, scoring, ctx.objective, ctx.direction, settings)
    chosen = selections[pick_fusion({f: sel.value for f, sel in selections.items()}, ctx.direction)]
    ens_scores, member_scores, gains = score_regions(done, chosen, data, scoring, regions, ctx.objective,
                                                     settings.bootstrap)
    ensemble_dir.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(ctx, settings, name, done, chosen, selections, ens_scores, member_scores, gains,
                         ensemble_dir)
    write_manifest(ensemble_dir, manifest)
    log.info("post-hoc ensemble %s: %s fusion of %d trial(s), %s=%.4f on validation; written to %s", name,
             chosen.fusion, len(chosen.chosen), ctx.objective, chosen.value, ensemble_dir / runs.ENSEMBLE_FILE)
    return EnsembleResult(ensemble_dir, manifest, selections)


def _manifest(ctx: CampaignContext, settings: EnsembleSettings, name: str, done: list[MemberSpec], chosen: Any,
              selections: dict[str, Any], ens_scores: dict, member_scores: list[dict], gains: dict,
              ensemble_dir: Path) -> dict[str, Any]:
    complete = {"state": ResultState.COMPLETE}
    counts = chosen.counts if chosen.counts is not None else [0] * len(done)
    candidates, members = [], []
    for i, spec in enumerate(done):
        weight = float(chosen.weights[i])
        entry = _member_entry(spec, ensemble_dir, weight, member_scores[i], complete)
        entry.update({"trial_dir": Path(entry["tree"]).parent.as_posix(), "count": int(counts[i])})
        candidates.append({**entry, "state": ResultState.COMPLETE})
        if weight > 0:
            members.append(entry)
    members.sort(key=lambda e: -e["weight"])
    manifest = manifest_body(
        ctx, "posthoc", name, chosen, members, candidates, ens_scores, selections, settings, gains,
        baseline=(done[0].key, "best single trial on validation"), ensemble_dir=ensemble_dir,
        settings_block={"candidates": settings.candidates, "init": settings.init, "fusion": settings.fusion,
                        "selection": settings.selection, "bootstrap": settings.bootstrap,
                        "rounds": settings.rounds, "train": None})
    manifest["training_steps"] = 0
    return manifest
