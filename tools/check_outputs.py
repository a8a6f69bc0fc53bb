"""API notebooks are committed without outputs; only tutorials (nbs/tutorials/) may keep plots. No notebook keeps
saved widget state (metadata.widgets: megabytes of JSON that only replays a dead kernel's widgets). No notebook
weighs more than 1.5 MB (1,500,000 bytes; `BUDGET`): a tutorial's weight is its figures.

    python tools/check_outputs.py                  # check: exit 1 naming the offenders
    python tools/check_outputs.py --strip-widgets  # remove the saved widget state (make tutorials runs it)
"""

import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 1_500_000  # bytes (1.5 MB) per notebook, outputs included


def notebooks(root: Path = ROOT) -> list[Path]:
    "Every notebook under root/nbs, in a stable order."
    return sorted(p for p in (root / "nbs").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def strip_widgets(paths: list[Path], root: Path = ROOT) -> list[str]:
    "Remove the saved widget state from each notebook that has some; one line per notebook changed."
    done = []
    for p in paths:
        nb = json.loads(p.read_text())
        if nb.get("metadata", {}).pop("widgets", None) is not None:
            p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            done.append(f"stripped widget state: {p.relative_to(root)}")
    return done


def oversized(paths: list[Path], root: Path = ROOT, budget: int = BUDGET) -> list[str]:
    "One line per notebook over `budget` bytes: its name, its size and the fix."
    return [
        f"  {p.relative_to(root)}: {p.stat().st_size:,} bytes, over the {budget:,}-byte budget; slim its figures "
        "(ssm_distill.viz stores matrices as rounded float32 and hover templates: see nbs/07a_viz.ipynb), "
        "re-run it (make tutorials) and commit"
        for p in paths
        if p.stat().st_size > budget
    ]


def problems(paths: list[Path], root: Path = ROOT, budget: int = BUDGET) -> list[str]:
    "Every problem of the notebooks as lines to print, each group headed by its fix; empty when all are clean."
    books = {str(p.relative_to(root)): (p, json.loads(p.read_text())) for p in paths}  # each notebook read once
    outputs = [
        n for n, (p, nb) in books.items() if p.parent.name != "tutorials" and any(c.get("outputs") for c in nb["cells"])
    ]
    widgets = [n for n, (p, nb) in books.items() if "widgets" in nb.get("metadata", {})]
    lines = []
    if outputs:
        lines += [
            "these notebooks carry outputs; clear them (Jupyter: Edit > Clear Outputs of All Cells) and commit:",
            *(f"  {b}" for b in outputs),
        ]
    if widgets:
        lines += [
            "these notebooks carry saved widget state; run `python tools/check_outputs.py --strip-widgets` and commit:",
            *(f"  {b}" for b in widgets),
        ]
    big = oversized(paths, root, budget)
    if big:
        lines += [f"these notebooks are over the size budget of {budget:,} bytes (1.5 MB):", *big]
    return lines


def main(argv: list[str]) -> int:
    paths = notebooks()
    if "--strip-widgets" in argv:
        for line in strip_widgets(paths):
            print(line)
        return 0
    lines = problems(paths)
    if lines:
        print("\n".join(lines))
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
