"tools/check_outputs.py on notebooks it writes to a temporary folder: the size budget, outputs and widget state."
import importlib.util, json
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1]/'tools'/'check_outputs.py'


def load():
    spec = importlib.util.spec_from_file_location('check_outputs', TOOL)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def write_nb(path:Path, outputs=(), pad:int=0) -> Path:
    "A one-cell notebook with these outputs, padded with a markdown cell of `pad` characters."
    cells = [dict(cell_type='code', source=['1'], metadata={}, outputs=list(outputs), execution_count=None),
             dict(cell_type='markdown', source=['x' * pad], metadata={})]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(cells=cells, metadata={}, nbformat=4, nbformat_minor=5), indent=1) + '\n')
    return path


def test_budget_is_one_and_a_half_megabytes():
    assert load().BUDGET == 1_500_000


def test_an_oversized_notebook_fails_with_its_name_size_and_fix(tmp_path):
    co = load()
    small = write_nb(tmp_path/'nbs'/'00_small.ipynb')
    big = write_nb(tmp_path/'nbs'/'tutorials'/'big.ipynb', pad=co.BUDGET)
    size = big.stat().st_size
    assert co.oversized([small], tmp_path) == [] and co.problems([small], tmp_path) == []
    lines = co.oversized(co.notebooks(tmp_path), tmp_path)
    assert len(lines) == 1                                                   # one line per offender, the small one passes
    assert 'nbs/tutorials/big.ipynb' in lines[0] and f'{size:,} bytes' in lines[0] and 'slim its figures' in lines[0]
    assert any('size budget' in l for l in co.problems(co.notebooks(tmp_path), tmp_path))
    # exactly at the budget passes; one byte over fails
    assert co.oversized([big], tmp_path, budget=size) == [] and len(co.oversized([big], tmp_path, budget=size - 1)) == 1


def test_outputs_only_in_tutorials_and_no_widget_state(tmp_path):
    co = load()
    out = [dict(output_type='stream', name='stdout', text=['hi\n'])]
    api, tut = write_nb(tmp_path/'nbs'/'01_api.ipynb', out), write_nb(tmp_path/'nbs'/'tutorials'/'tour.ipynb', out)
    lines = co.problems([api, tut], tmp_path)
    assert 'nbs/01_api.ipynb' in '\n'.join(lines) and 'tour' not in '\n'.join(lines)
    nb = json.loads(tut.read_text()); nb['metadata']['widgets'] = {'state': {}}; tut.write_text(json.dumps(nb))
    assert any('widget state' in l for l in co.problems([tut], tmp_path))
    assert co.strip_widgets([tut], tmp_path) == ['stripped widget state: nbs/tutorials/tour.ipynb']
    assert co.problems([tut], tmp_path) == []
