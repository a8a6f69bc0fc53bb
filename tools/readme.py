"Render nbs/index.ipynb to README.md (nbdev's own readme step needs Quarto, which we do not use)."

import json, re
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nb = json.loads((root / "nbs" / "index.ipynb").read_text())
parts = []
for cell in nb["cells"]:
    src = "".join(cell["source"]).strip()
    if not src or re.match(r"#\|\s*(hide|export)", src):
        continue
    if cell["cell_type"] == "markdown":
        parts.append(src)
    elif cell["cell_type"] == "code":
        parts.append(f"```python\n{src}\n```")
note = "<!-- generated from nbs/index.ipynb by tools/readme.py: edit the notebook, not this file -->"
(root / "README.md").write_text("\n\n".join(parts + [note]) + "\n")
