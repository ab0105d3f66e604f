"""Reading a campaign folder for an ensemble: its configuration and its K best distinct trees."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arborseg.errors import CampaignError
from arborseg.log import get_logger
from arborseg.runs import RunFolder, TrialFolder

log = get_logger(__name__)


@dataclass
class CampaignContext:
    """A campaign folder read back: manifest (objective, direction), the campaign configuration and data."""

    run_dir: Path
    manifest: dict[str, Any]
    config: Any  # arborseg.campaign.config.CampaignConfig

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def objective(self) -> str:
        return str(self.manifest.get("objective", self.config.objective))

    @property
    def direction(self) -> str:
        return str(self.manifest.get("direction", self.config.direction))

    @property
    def data(self):
        """The campaign's :class:`arborseg.data.DataConfig`."""
        return self.config.data

    @property
    def data_arg(self) -> Any:
        """What a job needs to load the data (:attr:`arborseg.campaign.config.CampaignConfig.job_data`)."""
        return self.config.job_data


def open_campaign(run_dir: str | Path) -> CampaignContext:
    """Read ``run_dir/campaign.json`` and the campaign YAML it names (or the copy kept in the folder)."""
    folder = RunFolder.open(Path(run_dir).resolve())
    return CampaignContext(folder.path, folder.manifest, folder.load_config())


@dataclass(frozen=True)
class TreeChoice:
    """One of the best trees of a campaign: its best COMPLETE trial."""

    tree_id: str
    tree_name: str
    family: str
    value: float
    trial_id: int
    artifact_dir: Path
    tree_file: Path
    seed: int | None = None
    steps: int | None = None


def top_trees(ctx: CampaignContext, k: int) -> list[TreeChoice]:
    """The ``k`` best distinct trees (by tree id) of the campaign's trained trials: those that got furthest in the
    rungs first (COMPLETE at the top rung, then trials stopped below it, by rung), each group by the objective on
    validation in the campaign's direction. Fewer if the campaign has fewer; an error if it has none."""
    from arborseg.table import read_run, run_table, trained_trials

    if k < 1:
        raise CampaignError(f"--top {k}: give at least 1 tree")
    table = run_table([], campaigns=[read_run(ctx.run_dir)])
    if table.empty or "state" not in table:
        raise CampaignError(f"{ctx.run_dir}: the campaign has no trials yet; run `arborseg search` first")
    rung = table["rung"] if "rung" in table else 0
    done = trained_trials(table).assign(_rung=rung)
    done = done.sort_values(["_rung", "value", "trial_id"], ascending=[False, ctx.direction != "maximize", True],
                            kind="stable")
    out: list[TreeChoice] = []
    for _, row in done.iterrows():
        if row["tree_id"] in {c.tree_id for c in out}:
            continue
        folder = Path(str(row["artifact_dir"]))
        tree_file = TrialFolder(folder).tree_path
        if not tree_file.is_file():
            log.warning("trial %s (%s): no tree file in %s; skipped", row["trial_id"], row["tree_name"], folder)
            continue
        out.append(TreeChoice(str(row["tree_id"]), str(row["tree_name"]), str(row["family"]), float(row["value"]),
                              int(row["trial_id"]), folder, tree_file,
                              None if _missing(row.get("seed")) else int(row["seed"]),
                              None if _missing(row.get("steps")) else int(row["steps"])))
        if len(out) == k:
            break
    if not out:
        raise CampaignError(f"{ctx.run_dir}: no trained trial with a tree file; nothing to ensemble "
                            "(`arborseg status` shows why trials failed)")
    if len(out) < k:
        log.warning("the campaign has only %d distinct trained trees (asked for %d)", len(out), k)
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
