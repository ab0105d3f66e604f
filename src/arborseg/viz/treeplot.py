"""A picture of a module tree a person can read: nested modules top-down, coloured by dimensionality."""

from __future__ import annotations

from pathlib import Path

from arborseg.tree import ModuleNode, ModuleTree

COLOURS = {"2d": "#9ecae1", "thin3d": "#fdae6b", "3d": "#fc9272", None: "#e0e0e0"}
SHOWN = ("depth", "width", "layers", "branches", "merge", "pooling", "upsampling", "skip_merge", "kernel_z",
         "norm", "activation", "iterations", "width_growth", "dilation_growth", "dilation_base", "kernels",
         "appearance_kernel")
CONTAINERS = ("sequence", "parallel", "residual", "repeat", "identity")


def _label(node: ModuleNode) -> str:
    p = node.p
    dims = p.get("dims")
    title = node.type + (f" [{dims}]" if dims and node.type not in CONTAINERS else "")
    shown = [k for k in SHOWN if k in p and not (k == "kernel_z" and dims == "2d")
             and not (k == "appearance_kernel" and p.get("kernels") != "spatial+appearance")]
    details = [f"{k}={p[k]:.3g}" if isinstance(p[k], float) else f"{k}={p[k]}" for k in shown]
    lines, line = [], ""
    for item in details:
        if len(line) + len(item) > 26 and line:
            lines.append(line)
            line = ""
        line = f"{line} {item}".strip()
    if line:
        lines.append(line)
    return "\n".join([title] + lines)


def _layout(node: ModuleNode, depth: int, next_x: list[float], out: list) -> float:
    if node.children:
        xs = [_layout(child, depth + 1, next_x, out) for child in node.children]
        x = sum(xs) / len(xs)
    else:
        x = next_x[0]
        next_x[0] += 1.0
    out.append((node, x, depth))
    return x


def draw_tree(tree: ModuleTree, path: str | Path | None = None, title: str | None = None):
    """Draw ``tree`` with matplotlib; save to ``path`` (.png or .svg) when given; return the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    placed: list = []
    _layout(tree.root, 0, [0.0], placed)
    index = {id(node): (x, d) for node, x, d in placed}
    width = max(x for _, x, _ in placed) + 1
    height = max(d for _, _, d in placed) + 1
    fig, ax = plt.subplots(figsize=(max(5.0, 2.4 * width), max(3.0, 1.5 * height + 1.0)))
    for node, x, d in placed:
        for child in node.children:
            cx, cd = index[id(child)]
            ax.plot([x, cx], [-d, -cd], color="#888888", lw=1, zorder=1)
    for node, x, d in placed:
        ax.text(x, -d, _label(node), ha="center", va="center", fontsize=8, zorder=2,
                bbox=dict(boxstyle="round,pad=0.4", fc=COLOURS.get(node.get("dims") if node.type not in CONTAINERS
                                                                   else None, "#e0e0e0"), ec="#555555"))
    ax.set_xlim(-0.8, width - 0.2)
    ax.set_ylim(-height + 0.4, 0.6)
    ax.axis("off")
    ax.set_title(title or f"{tree.name}  ({tree.family}, window {list(tree.window)})", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, fc=c, ec="#555555") for c in COLOURS.values()]
    ax.legend(handles, ["2D (per slice)", "thin 3D", "full 3D", "container"], loc="lower right", fontsize=7,
              frameon=False)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
