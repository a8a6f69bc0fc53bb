"API notebooks are committed without outputs; only tutorials (nbs/tutorials/) may keep plots."
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
bad = [str(p.relative_to(root)) for p in sorted((root/'nbs').glob('*.ipynb'))
       if any(c.get('outputs') for c in json.loads(p.read_text())['cells'])]
if bad:
    print('these notebooks carry outputs; clear them (Jupyter: Edit > Clear Outputs of All Cells) and commit:')
    print('\n'.join(f'  {b}' for b in bad)); sys.exit(1)
