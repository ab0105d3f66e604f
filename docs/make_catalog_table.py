"""Print the module-catalogue tables of docs/search_spaces.md from arborseg.space.catalog.

    python docs/make_catalog_table.py > /tmp/catalog.md   # then paste over the tables in the doc
"""

from arborseg.space.catalog import INHERITED, MODULE_SPECS, TRAINING_PARAMS, WINDOW_PARAMS


def allowed(p) -> str:
    if p.options is not None:
        return ", ".join(f"`{o}`" for o in p.options)
    if p.kind is bool:
        return "`true`, `false`"
    low = "" if p.low is None else f"{p.kind(p.low)!r}"
    high = "" if p.high is None else f"{p.kind(p.high)!r}"
    return f"{p.kind.__name__} {low}..{high}" if (low or high) else p.kind.__name__


def row(p, extra: str = "") -> str:
    kind = "structural" if p.structural else "refinable"
    default = str(p.default).lower() if isinstance(p.default, bool) else p.default
    return f"| `{p.name}` | {allowed(p)} | `{default}` | {kind} | {p.doc or extra} |"


def params_table(params) -> list[str]:
    lines = ["| key | allowed | default | kind | notes |", "|---|---|---|---|---|"]
    return lines + [row(p) for p in params]


def main() -> None:
    print("#### Modules\n")
    print("| type | what it is | children key | own parameters | uses inherited |")
    print("|---|---|---|---|---|")
    for spec in MODULE_SPECS.values():
        own = "<br>".join(f"`{p.name}`: {allowed(p)}; default `{str(p.default).lower() if isinstance(p.default, bool) else p.default}`"
                          + (" (S)" if p.structural else "") for p in spec.params) or "-"
        inh = ", ".join(f"`{n}`" for n in spec.inherited) or "-"
        kids = f"`{spec.children}`" if spec.children else "-"
        print(f"| `{spec.name}` | {spec.doc} | {kids} | {own} | {inh} |")
    print("\n(S) = structural. Every other module parameter is refinable.\n")
    print("#### Inherited parameters (any node, and `defaults:`)\n")
    print("\n".join(params_table(INHERITED.values())))
    print("\n#### `training:` keys\n")
    print("\n".join(params_table(TRAINING_PARAMS.values())))
    print("\n#### `window:` keys\n")
    print("\n".join(params_table(WINDOW_PARAMS.values())))


if __name__ == "__main__":
    main()
