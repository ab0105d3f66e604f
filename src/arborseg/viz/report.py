"""A static HTML report of one or more campaigns: what a lab shares with collaborators.

``build_report(run_dirs, out_dir)`` writes ``out_dir/index.html`` and beside it every file the page shows,
all by relative paths (no network, no CDN: the folder can be zipped, mailed or served as it is)::

    index.html        summary, best trees, plots, ranking across rungs, ensembles, the run table (click a
                      heading to sort)
    runs.csv          the full run table (every column; ensembles as rows of state ENSEMBLE)
    plots/*.png|svg   optimisation history, score vs size (Pareto), FN-n curves, importance, near vs far,
                      the objective at each rung of successive halving
    trees/*.png       pictures of the best trees (from their tree.yaml)
    trials/<slug>/    error overlays and learning curves copied from the best trials' folders

The page counts its images once loaded (``data-images-total`` / ``data-images-loaded`` /
``data-images-broken`` on ``<body>``), which the tests read back from a headless browser.
"""

from __future__ import annotations

import datetime as _dt
import html
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from arborseg.log import get_logger
from arborseg.runs import TrialFolder
from arborseg.table import (
    CampaignRun,
    campaign_summary,
    filter_table,
    group_table,
    rank_correlations,
    read_runs,
    run_table,
    sort_table,
    to_html_table,
)

log = get_logger(__name__)

TABLE_COLUMNS = ["campaign", "trial_id", "phase", "state", "value", "rung", "steps_trained", "tree_name", "family",
                 "depth", "width", "params", "flops_per_voxel", "eval_near.fg_iou", "eval_far.fg_iou", "eval_near.miou",
                 "eval_far.miou", "eval_near.fn_401", "eval_far.fn_401", "eval_far.fp_401", "train_seconds", "seed",
                 "members", "val_gain", "val_gain_ci", "inference_gflops", "reason"]
ENSEMBLE_COLUMNS = ["campaign", "tree_name", "family", "value", "members", "val_gain", "val_gain_ci",
                    "inference_gflops", "params", "eval_near.fg_iou", "eval_far.fg_iou", "eval_near.fn_401",
                    "eval_far.fn_401"]
RANK_HEADINGS = {"n_next": "n (both)", "spearman_next": "Spearman vs next", "top_steps": "top steps",
                 "n_top": "n (with top)", "spearman_top": "Spearman vs top", "next_steps": "next steps"}
SUMMARY_COLUMNS = ["campaign", "objective", "direction", "trials", "complete", "pruned", "failed", "paused", "running",
                   "trees",
                   "nets", "max", "mean", "best", "best_trial", "best_tree", "best_family", "best.eval_near.fg_iou",
                   "best.eval_far.fg_iou", "best.eval_near.fn_401", "best.eval_far.fn_401", "train_hours"]
PLOT_CAPTIONS = {
    "history": "Objective on the validation region for every trial in order: colours are families, hollow marks "
               "pruned trials, red crosses failed ones, the black line the best so far.",
    "pareto": "Score against size and cost. Circled trees lie on the Pareto front: no other tree is both smaller "
              "(cheaper) and better.",
    "fn_curves": "FN-n / FP-n: percent of eval voxels that are false negatives (positives) in error components of "
                 "at least n voxels. Lower is better; FN-401 is the headline of the seed work.",
    "importance": "How much each hyperparameter explains the differences in the objective (Optuna importance "
                  "evaluators over the completed trials).",
    "near_far": "Each completed trial scored on the eval region next to the training data (near) and far from it. "
                "Points off the diagonal generalise unevenly.",
    "rungs": "Successive halving: each line is one trial through its objective on validation at the end of every "
             "rung it finished. Trials that reached the top rung are in their family's colour; grey lines stopped "
             "below it (a cross where), dashed blue ones are paused or running.",
}
PLOT_TITLES = {"history": "Optimisation history", "pareto": "Score against size (Pareto front)",
               "fn_curves": "Errors by component size (FN-n, FP-n)", "importance": "Hyperparameter importance",
               "near_far": "eval-near against eval-far", "rungs": "The objective at each rung"}

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg2: #f6f8fa; --accent: #2b7bba; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg); margin: 0;
       background: #fff; }
header { background: #24292f; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 24px; }
header p { margin: 4px 0 0; color: #c9d1d9; font-size: 13px; }
nav { background: var(--bg2); border-bottom: 1px solid var(--line); padding: 8px 32px; font-size: 14px; }
nav a { margin-right: 18px; color: var(--accent); text-decoration: none; }
main { padding: 8px 32px 48px; max-width: 1500px; }
h2 { border-bottom: 1px solid var(--line); padding-bottom: 4px; margin-top: 36px; }
h3 { margin: 0 0 6px; font-size: 17px; }
.muted, .caption { color: var(--muted); font-size: 13px; }
.headline { font-size: 17px; background: #eef6fc; border-left: 4px solid var(--accent); padding: 10px 14px; }
.tablewrap { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; max-height: 640px; }
table.runs { border-collapse: collapse; font-size: 13px; white-space: nowrap; width: 100%; }
table.runs th, table.runs td { padding: 4px 9px; border-bottom: 1px solid #eaeef2; text-align: left; }
table.runs th { position: sticky; top: 0; background: var(--bg2); cursor: pointer; user-select: none;
                border-bottom: 1px solid var(--line); }
table.runs th.num, table.runs td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.runs tr.fail td { background: #fff0f0; }
table.runs tr.pruned td { color: #6e7781; }
table.runs tr.running td, table.runs tr.paused td { background: #fffbe6; }
table.runs tr.ensemble td { background: #f0f7ee; }
table.runs tbody tr:hover td { background: #eef6fc; }
.plots { display: grid; grid-template-columns: 1fr; gap: 24px; max-width: 1200px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 12px; background: #fff; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 16px; margin: 18px 0; }
.card .row { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.card .facts { min-width: 300px; flex: 0 0 320px; }
.card .facts table { font-size: 13px; border-collapse: collapse; }
.card .facts td { padding: 2px 8px 2px 0; vertical-align: top; }
.card .facts td:first-child { color: var(--muted); }
.card .pics { display: flex; flex-wrap: wrap; gap: 12px; flex: 1; }
.card .pics figure { padding: 6px; }
.card .pics img.tree { max-width: 440px; }
.card .pics img.overlay { max-width: 280px; }
.card .pics img.curve { max-width: 400px; }
.badge { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 12px; color: #fff; }
code, pre { background: var(--bg2); border-radius: 4px; font-size: 13px; }
code { padding: 1px 4px; }
pre { padding: 10px; overflow-x: auto; }
.missing { color: #9a6700; font-size: 13px; }
"""

SCRIPT = """
(function () {
  function countImages() {
    var imgs = Array.prototype.slice.call(document.images);
    var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    document.body.setAttribute('data-images-total', imgs.length);
    document.body.setAttribute('data-images-loaded', ok);
    document.body.setAttribute('data-images-broken', imgs.length - ok);
  }
  window.addEventListener('load', countImages);
  document.querySelectorAll('table.runs').forEach(function (table) {
    table.querySelectorAll('th').forEach(function (th, col) {
      th.addEventListener('click', function () {
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var asc = th.getAttribute('data-order') !== 'asc';
        table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-order'); });
        th.setAttribute('data-order', asc ? 'asc' : 'desc');
        rows.sort(function (a, b) {
          var x = a.cells[col], y = b.cells[col];
          var xv = x.getAttribute('data-v'), yv = y.getAttribute('data-v');
          if (xv === null && yv === null) { return asc ? x.textContent.localeCompare(y.textContent)
                                                     : y.textContent.localeCompare(x.textContent); }
          if (xv === null) { return 1; }
          if (yv === null) { return -1; }
          return asc ? parseFloat(xv) - parseFloat(yv) : parseFloat(yv) - parseFloat(xv);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""


def _slug(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def _e(v: Any) -> str:
    return html.escape(str(v))


def _num(v: Any, digits: int = 4) -> str:
    from arborseg.table import _fmt_value

    if isinstance(v, float) and not v.is_integer() and not pd.isna(v):
        return f"{v:.{digits}g}"
    return _fmt_value(v)


def dashboard_command(storage_url: str) -> str:
    """The shell command that opens a campaign's storage in optuna-dashboard (passwords hidden)."""
    from arborseg.campaign.storage import JOURNAL_SCHEME, redact

    if storage_url.startswith(JOURNAL_SCHEME):
        return f"optuna-dashboard {storage_url[len(JOURNAL_SCHEME):]}"
    if storage_url.startswith("sqlite:"):
        return f"optuna-dashboard {storage_url.split('?')[0]}"
    return f"optuna-dashboard '{redact(storage_url)}'"


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _img(src: str, alt: str, cls: str = "") -> str:
    return f'<img src="{_e(src)}" alt="{_e(alt)}"{f" class={cls}" if cls else ""} loading="eager">'


def _copy_trial_pictures(row: pd.Series, out: Path, slug: str) -> tuple[list[Path], Path | None]:
    """Copy the trial's error overlays and learning curve into the report; return (overlays, curve)."""
    folder = row.get("artifact_dir")
    if not isinstance(folder, str) or not Path(folder).is_dir():
        return [], None
    trial = TrialFolder(Path(folder))
    dest = out / "trials" / slug
    overlays = []
    found = trial.overlays()
    regions = ("validation", "eval_near", "eval_far")
    found.sort(key=lambda p: (next((i for i, r in enumerate(regions) if p.stem.startswith(r)), len(regions)), p.stem))
    for src in found:
        target = dest / "overlays" / src.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        overlays.append(target)
    curve = None
    if trial.learning_curve_path.is_file():
        curve = dest / trial.learning_curve_path.name
        curve.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trial.learning_curve_path, curve)
    return overlays, curve


def _tree_picture(row: pd.Series, out: Path, slug: str) -> Path | None:
    from arborseg.errors import ArborsegError
    from arborseg.viz.treeplot import draw_tree

    folder = row.get("artifact_dir")
    if not isinstance(folder, str) or not TrialFolder(Path(folder)).tree_path.is_file():
        return None
    try:
        tree = TrialFolder(Path(folder)).load_tree()
        path = out / "trees" / f"{slug}.png"
        draw_tree(tree, path)
        return path
    except (ArborsegError, OSError, ValueError) as exc:
        log.warning("cannot draw the tree of trial %s: %s", row.get("trial_id"), exc)
        return None


def _overlay_caption(name: str) -> str:
    m = re.match(r"(.+)_z(\d+)$", name)
    if not m:
        return name
    return f"{m.group(1).replace('_', '-')}, slice z={m.group(2)}"


def _tree_card(rank: int, row: pd.Series, out: Path, objective: str | None) -> str:
    from arborseg.viz.plots import family_label, family_style

    slug = f"{_slug(row['campaign'])}-{int(row['trial_id']):04d}"
    picture = _tree_picture(row, out, slug)
    overlays, curve = _copy_trial_pictures(row, out, slug)
    facts = [("campaign", row["campaign"]), ("trial", f"{row['trial_id']} ({row.get('phase')}, seed "
                                                      f"{_num(row.get('seed'))})"),
             (f"validation {objective or 'objective'}", _num(row["value"])),
             ("parameters", _num(row.get("params"))), ("FLOPs per voxel", _num(row.get("flops_per_voxel"))),
             ("depth / width / z", f"{_num(row.get('depth'))} / {_num(row.get('width'))} / "
                                   f"{_num(row.get('window_z'))}")]
    for region in ("eval_near", "eval_far"):
        parts = [f"{k} {_num(row.get(f'{region}.{k}'))}" for k in ("fg_iou", "miou", "fn_401", "fp_401")
                 if f"{region}.{k}" in row.index]
        if parts:
            facts.append((region.replace("_", "-"), ", ".join(parts)))
    facts.append(("train time", f"{_num(row.get('train_seconds'), 3)} s, {_num(row.get('steps'))} steps"))
    hps = [(k[len("param."):], row[k]) for k in row.index if str(k).startswith("param.") and pd.notna(row[k])]
    if hps:
        facts.append(("refinable values", "<br>".join(f"{_e(k)} = {_e(_num(v))}" for k, v in hps)))
    colour = family_style(row["family"])["color"]
    rows_html = "".join(f"<tr><td>{_e(k)}</td><td>{v if k == 'refinable values' else _e(v)}</td></tr>"
                        for k, v in facts)
    pics = []
    if picture:
        pics.append(f"<figure>{_img(_rel(picture, out), 'module tree of ' + str(row['tree_name']), 'tree')}"
                    "<figcaption>the module tree</figcaption></figure>")
    else:
        pics.append('<p class="missing">tree picture unavailable (tree.yaml missing from the trial folder)</p>')
    for path in overlays:
        pics.append(f"<figure>{_img(_rel(path, out), 'error overlay ' + path.stem, 'overlay')}"
                    f"<figcaption>{_e(_overlay_caption(path.stem))}: false negatives red, false positives "
                    "yellow</figcaption></figure>")
    if not overlays:
        pics.append('<p class="missing">no error overlays in the trial folder</p>')
    if curve:
        pics.append(f"<figure>{_img(_rel(curve, out), 'learning curve', 'curve')}"
                    "<figcaption>learning curve</figcaption></figure>")
    return (f'<div class="card" id="tree-{rank}"><h3>{rank}. {_e(row["tree_name"])} '
            f'<span class="badge" style="background:{colour}">{_e(family_label(row["family"]))}</span></h3>'
            f'<div class="row"><div class="facts"><table>{rows_html}</table></div>'
            f'<div class="pics">{"".join(pics)}</div></div></div>')


def _ensemble_headline(ensembles: pd.DataFrame, campaign: str, maximize: bool) -> str:
    """`` and ensemble <name> <value> (gain +x [lo, hi] over the best single trial, n members, g GFLOPs)``."""
    rows = ensembles[(ensembles["campaign"] == campaign) & ensembles["value"].notna()] if not ensembles.empty \
        else ensembles
    if rows.empty:
        return ""
    best = rows.loc[rows["value"].idxmax() if maximize else rows["value"].idxmin()]
    parts = []
    if pd.notna(best.get("val_gain")):
        parts.append(f"gain {best['val_gain']:+.4f} {_e(best.get('val_gain_ci') or '')} over the best single trial")
    members = str(best.get("members") or "").split()
    if members:
        parts.append(f"{len(members)} member{'s' if len(members) != 1 else ''}")
    if pd.notna(best.get("inference_gflops")):
        parts.append(f"{_num(best['inference_gflops'], 3)} GFLOPs per window")
    return (f"; ensemble <b>{_e(best['tree_name'])}</b> <b>{best['value']:.4f}</b>"
            + (f" ({', '.join(parts)})" if parts else ""))


def _headline(summary: pd.DataFrame, ensembles: pd.DataFrame | None = None) -> str:
    from arborseg.viz.plots import family_label

    lines = []
    for _, s in summary.iterrows():
        text = (f"<b>{_e(s['campaign'])}</b>: {s['trials']} trials ({s['complete']} complete, {s['pruned']} pruned, "
                f"{s['failed']} failed) over {s['trees']} trees")
        if pd.notna(s.get("best")):
            text += (f"; best validation {_e(s['objective'])} <b>{s['best']:.4f}</b> by "
                     f"<b>{_e(s['best_tree'])}</b> ({_e(family_label(s['best_family']))}, trial {s['best_trial']})")
            far = s.get("best.eval_far.fg_iou")
            if far is not None and pd.notna(far):
                text += f", eval-far fg_iou {far:.4f}"
            fn = s.get("best.eval_far.fn_401")
            if fn is not None and pd.notna(fn):
                text += f", eval-far FN-401 {fn:.3g}%"
        if ensembles is not None:
            text += _ensemble_headline(ensembles, s["campaign"], s.get("direction") != "minimize")
        lines.append(f"<p class=headline>{text}.</p>")
    return "".join(lines)


def _figure(name: str, files: list[Path], out: Path) -> str:
    png = next((p for p in files if p.suffix == ".png"), None)
    svg = next((p for p in files if p.suffix == ".svg"), None)
    shown = png or svg
    if shown is None:
        return ""
    link = f' (<a href="{_e(_rel(svg, out))}">SVG</a>)' if svg and png else ""
    return (f'<figure id="plot-{name}"><h3>{_e(PLOT_TITLES[name])}</h3>{_img(_rel(shown, out), PLOT_TITLES[name])}'
            f"<figcaption>{_e(PLOT_CAPTIONS[name])}{link}</figcaption></figure>")


def _rungs_section(table: pd.DataFrame, files: list[Path], out: Path) -> list[str]:
    """"Ranking across rungs": Spearman's rank correlation of each rung with the next and the top one, and the
    picture of successive halving (shown only when some campaign trained more than one rung)."""
    parts = ['<h2 id="rungs">Ranking across rungs</h2>']
    ranks = rank_correlations(table)
    if ranks.empty:
        parts.append('<p class="muted">Every campaign here trained one rung (its budget\'s steps): there is no '
                     "cheaper ranking to check.</p>")
        return parts
    parts.append('<p class="muted">Is the cheap ranking trustworthy? For each rung below the top: the trials that '
                 "reached it, and Spearman's rank correlation of their validation objective there with the same "
                 "trials' objective at the next rung and at the top rung (n: the trials that reached both; fewer "
                 "than 3 give no correlation). Near 1, the first rung already ranks configurations as the top "
                 "rung does and could be cheaper; low or negative, it ranks by how fast trees start learning and "
                 "should be longer (docs/campaigns.md).</p>")
    if ranks["campaign"].nunique() < 2:
        ranks = ranks.drop(columns="campaign")
    parts.append(f'<div class="tablewrap">{to_html_table(ranks.rename(columns=RANK_HEADINGS), "rank-table")}</div>')
    parts.append(f'<div class="plots">{_figure("rungs", files, out)}</div>')
    return parts


def _ensembles_section(ensembles: pd.DataFrame) -> list[str]:
    """"Ensembles": one row per ensemble of ``arborseg ensemble`` (members, gain on validation with its
    bootstrap interval, inference cost)."""
    parts = ['<h2 id="ensembles">Ensembles</h2>']
    if ensembles.empty:
        parts.append('<p class="muted">No ensembles yet: <code>arborseg ensemble RUN_DIR</code> chooses one among '
                     "the trained trials (no new training).</p>")
        return parts
    parts.append('<p class="muted">val_gain: the objective\'s gain on validation over the best single member, '
                 "with its 95 % bootstrap interval (val_gain_ci); inference_gflops: the members' forward GFLOPs "
                 "per window together; members: trial keys (*n: chosen n times).</p>")
    view = sort_table(ensembles)
    several = view["campaign"].nunique() > 1
    keep = [c for c in ENSEMBLE_COLUMNS if c in view.columns and (c != "campaign" or several)]
    view = view[keep].rename(columns={"tree_name": "ensemble", "family": "fusion"})
    if "fusion" in view:
        view["fusion"] = view["fusion"].astype(str).str.removeprefix("ensemble/")
    parts.append(f'<div class="tablewrap">{to_html_table(view, "ensembles-table")}</div>')
    return parts


def build_report(run_dirs: list[str | Path], out_dir: str | Path, top: int = 5, title: str | None = None,
                 where: str | None = None, formats: tuple[str, ...] = ("png", "svg"), evaluator: str = "auto",
                 campaigns: list[CampaignRun] | None = None) -> Path:
    """Write the HTML report of the campaigns in ``run_dirs`` into ``out_dir``; return ``index.html``.

    ``top`` best trees get a card (tree picture, overlays, learning curve); ``where`` filters the trials
    first (as ``arborseg table --where``)."""
    from arborseg import __version__
    from arborseg.viz.plots import PLOT_NAMES, make_plots, top_trees

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("plots", "trees", "trials"):
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)
    runs = campaigns if campaigns is not None else read_runs(run_dirs)
    full = filter_table(run_table([], campaigns=runs, ensembles=True), where)
    full.to_csv(out / "runs.csv", index=False)
    is_ensemble = full["state"] == "ENSEMBLE" if "state" in full else pd.Series(False, index=full.index)
    table, ensembles = full[~is_ensemble], full[is_ensemble]
    table.attrs = ensembles.attrs = dict(full.attrs)
    summary = campaign_summary(table)
    objective = next(iter({r.objective for r in runs}), None) if len({r.objective for r in runs}) == 1 else None
    plots = make_plots(table, out / "plots", campaigns=runs, formats=formats, top=top, evaluator=evaluator)
    best = top_trees(table, top)
    names = ", ".join(r.label for r in runs) or "no campaigns"
    title = title or f"arborseg report: {names}"
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")

    parts = [f"<header><h1>{_e(title)}</h1><p>{len(table)} trials from {len(runs)} campaign"
             f"{'s' if len(runs) != 1 else ''}; generated {now} by arborseg {__version__}"
             f"{'; filtered by ' + _e(where) if where else ''}</p></header>",
             '<nav><a href="#summary">Summary</a><a href="#best">Best trees</a><a href="#plots">Plots</a>'
             '<a href="#rungs">Rungs</a><a href="#ensembles">Ensembles</a><a href="#families">Families</a>'
             '<a href="#trials">All trials</a><a href="#dashboard">Dashboard</a></nav>',
             "<main>", '<h2 id="summary">Summary</h2>', _headline(summary, ensembles)]
    cols = [c for c in SUMMARY_COLUMNS if c in summary.columns]
    parts.append(f'<div class="tablewrap">{to_html_table(summary[cols], "summary-table")}</div>')
    parts.append('<p class="muted">nets: distinct trained trees that completed; trees: distinct base trees '
                 "(refinements count with the tree they refine); max / mean / best: the validation objective over "
                 "completed trials.</p>")

    parts.append(f'<h2 id="best">Best trees</h2><p class="muted">The best completed trial of each of the {top} best '
                 "trees (best seed or refinement), by the validation objective.</p>")
    if best.empty:
        parts.append('<p class="missing">no completed trials yet</p>')
    for rank, (_, row) in enumerate(best.iterrows(), start=1):
        parts.append(_tree_card(rank, row, out, objective))

    parts.append('<h2 id="plots">Plots</h2><div class="plots">')
    parts += [_figure(name, plots.get(name, []), out) for name in PLOT_NAMES if name != "rungs"]  # rungs: below
    parts.append("</div>")
    parts += _rungs_section(table, plots.get("rungs", []), out)
    parts += _ensembles_section(ensembles)

    parts.append('<h2 id="families">Families and trees</h2>'
                 '<p class="muted">Mean and standard deviation over the completed trials (seeds and refinements '
                 "pooled).</p>")
    for by in ("family", "tree"):
        grouped = sort_table(group_table(table, by))
        if grouped.empty:
            continue
        keep = [c for c in ["campaign", "family", "base_tree_name", "trees", "trials", "complete", "pruned", "failed",
                            "value.mean", "value.std", "value.best", "best_tree", "params.mean",
                            "eval_far.fg_iou.mean", "eval_far.fn_401.mean", "train_seconds.mean"]
                if c in grouped.columns and not (c == "campaign" and grouped["campaign"].nunique() < 2)]
        parts.append(f"<h3>by {by}</h3><div class=tablewrap>{to_html_table(grouped[keep], f'by-{by}')}</div>")

    parts.append('<h2 id="trials">All trials</h2><p class="muted">Best first (ensembles among the complete '
                 'trials); click a column heading to sort. '
                 'Every column (hyperparameters, every metric per class) is in <a href="runs.csv">runs.csv</a>.</p>')
    view = sort_table(full)
    if not view.empty:
        view = view.assign(reason=view["fail_reason"].fillna(view["prune_reason"]).fillna("")
                           if "fail_reason" in view else "")
        several = view["campaign"].nunique() > 1
        keep = [c for c in TABLE_COLUMNS if c in view.columns and (c != "campaign" or several)]
        parts.append(f'<div class="tablewrap">{to_html_table(view[keep], "trials-table")}</div>')
    else:
        parts.append('<p class="missing">no trials yet</p>')

    parts.append('<h2 id="dashboard">Explore in optuna-dashboard</h2><p>Every trial is an Optuna trial, so the '
                 "campaign opens in optuna-dashboard (live charts, parameter filters) on the machine that has the "
                 "campaign folder:</p>")
    cmds = "\n".join(["pip install optuna-dashboard"] + [dashboard_command(r.storage_url) for r in runs])
    parts.append(f"<pre>{_e(cmds)}</pre><p class=muted>then open http://127.0.0.1:8080/ in a browser. Studies: "
                 + ", ".join(f"<code>{_e(r.name)}.random</code>, <code>{_e(r.name)}.refine.&lt;tree id&gt;</code>"
                             for r in runs) + ".</p>")
    parts.append("</main>")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(parts)}<script>{SCRIPT}</script></body></html>")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
