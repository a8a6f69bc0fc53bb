"""API notebooks are committed without outputs; only tutorials (nbs/tutorials/) may keep plots. No notebook keeps
saved widget state (metadata.widgets: megabytes of JSON that only replays a dead kernel's widgets).

    python tools/check_outputs.py                  # check: exit 1 naming the offenders
    python tools/check_outputs.py --strip-widgets  # remove the saved widget state (make tutorials runs it)
"""
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nbs = sorted((root/'nbs').rglob('*.ipynb'))
if '--strip-widgets' in sys.argv:
    for p in nbs:
        nb = json.loads(p.read_text())
        if nb.get('metadata', {}).pop('widgets', None) is not None:
            p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n'); print(f'stripped widget state: {p.relative_to(root)}')
    sys.exit(0)
books = {str(p.relative_to(root)): (p, json.loads(p.read_text())) for p in nbs}   # each notebook read once
outputs = [n for n, (p, nb) in books.items() if p.parent.name != 'tutorials' and any(c.get('outputs') for c in nb['cells'])]
widgets = [n for n, (p, nb) in books.items() if 'widgets' in nb.get('metadata', {})]
if outputs:
    print('these notebooks carry outputs; clear them (Jupyter: Edit > Clear Outputs of All Cells) and commit:')
    print('\n'.join(f'  {b}' for b in outputs))
if widgets:
    print('these notebooks carry saved widget state; run `python tools/check_outputs.py --strip-widgets` and commit:')
    print('\n'.join(f'  {b}' for b in widgets))
sys.exit(1 if outputs or widgets else 0)
