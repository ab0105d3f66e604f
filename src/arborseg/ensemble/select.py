"""Reading a campaign folder for an ensemble: its configuration and its K best distinct trees."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arborseg.errors import CampaignError
from arborseg.log import get_logger

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
        """What a job needs to load the data: a data YAML path, or (mapping, base folder) for inline data."""
        spec = self.config.data_spec
        return spec if isinstance(spec, str) else (spec, str(self.config.source.parent))


def open_campaign(run_dir: str | Path) -> CampaignContext:
    """Read ``run_dir/campaign.json`` and the campaign YAML it names (or the copy kept in the folder)."""
    from arborseg.campaign.config import load_campaign
    from arborseg.table import read_manifest

    run_dir = Path(run_dir).resolve()
    manifest = read_manifest(run_dir)
    candidates = [Path(p) for p in (manifest.get("campaign_file"),) if p] + [run_dir / "campaign.yaml"]
    last: CampaignError | None = None
    for path in candidates:
        if path.is_file():
            try:
                return CampaignContext(run_dir, manifest, load_campaign(path))
            except CampaignError as exc:
                last = exc
                log.debug("cannot read %s: %s", path, exc)
    reason = f" ({last})" if last is not None else ""
    raise CampaignError(f"{run_dir}: cannot read the campaign configuration from {', '.join(map(str, candidates))}"
                        f"{reason}; restore the campaign YAML (its data and space files must be where it says)")


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
    """The ``k`` best distinct trees (by tree id) of the campaign's COMPLETE trials, by the objective on
    validation in the campaign's direction. Fewer if the campaign has fewer; an error if it has none."""
    from arborseg.table import load_campaign, run_table

    if k < 1:
        raise CampaignError(f"--top {k}: give at least 1 tree")
    table = run_table([], campaigns=[load_campaign(ctx.run_dir)])
    if table.empty or "state" not in table:
        raise CampaignError(f"{ctx.run_dir}: the campaign has no trials yet; run `arborseg search` first")
    done = table[(table["state"] == "COMPLETE") & table["value"].notna()]
    done = done.sort_values(["value", "trial_id"], ascending=[ctx.direction != "maximize", True], kind="stable")
    out: list[TreeChoice] = []
    for _, row in done.iterrows():
        if row["tree_id"] in {c.tree_id for c in out}:
            continue
        folder = Path(str(row["artifact_dir"]))
        tree_file = folder / "tree.yaml"
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
        raise CampaignError(f"{ctx.run_dir}: no COMPLETE trial with a tree file; nothing to ensemble "
                            "(`arborseg status` shows why trials failed)")
    if len(out) < k:
        log.warning("the campaign has only %d distinct complete trees (asked for %d)", len(out), k)
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
