"""Give every notebook under nbs/ the python3 kernelspec, so JupyterLab opens it without a "Select Kernel" dialog.

`python tools/kernelspec.py` adds it where missing (metadata only); `--check` lists the notebooks without it and
fails."""

import json, sys
from pathlib import Path

KERNELSPEC = {
    "display_name": "python3",
    "language": "python",
    "name": "python3",
}  # display_name: what nbdev-clean writes
root = Path(__file__).resolve().parent.parent


def missing() -> list[Path]:
    return [
        p
        for p in sorted((root / "nbs").rglob("*.ipynb"))
        if ".ipynb_checkpoints" not in p.parts
        and json.loads(p.read_text()).get("metadata", {}).get("kernelspec", {}).get("name") != "python3"
    ]


def add(p: Path):
    "Set the kernelspec, keeping the file's JSON layout (nbdev writes indent=1 and a final newline)."
    nb = json.loads(p.read_text())
    nb.setdefault("metadata", {})["kernelspec"] = KERNELSPEC
    p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    bad = missing()
    if "--check" in sys.argv:
        if bad:
            print(
                "these notebooks name no kernel (JupyterLab would ask for one); "
                "run `python tools/kernelspec.py` and commit:"
            )
            print("\n".join(f"  {p.relative_to(root)}" for p in bad))
            sys.exit(1)
    else:
        for p in bad:
            add(p)
