"The run report and the head snapshots on a real (tiny) run."
import pytest

from ssm_distill.train import Distiller, save_tiny_teacher, tiny_run_config
from ssm_distill.viz import HeadSnapshots, run_report


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
    return save_tiny_teacher(tmp_path_factory.mktemp('teacher'))


def test_report_of_a_run_with_head_snapshots(teacher_dir, tmp_path):
    snaps = HeadSnapshots(max_tokens=16)
    d = Distiller(tiny_run_config(teacher_dir, tmp_path/'run'), [snaps], progress=False)
    rep = d.run()
    stages = [s['stage'] for s in rep['stages']]
    assert list(snaps.snapshots) == ['initialised'] + [f'after {s}' for s in stages]
    assert snaps.layer in d.student.mixer_layers and 0 <= snaps.head < d.teacher.n_heads
    assert all(m.shape == (16, 16) for m in snaps.snapshots.values())
    assert (snaps.snapshots['initialised'] - snaps.snapshots[f'after {stages[0]}']).abs().max() > 0   # stage 1 moved the head
    # every head's error at every snapshot; stage 1 (matrix orientation) lowers it
    assert list(snaps.errors) == list(snaps.snapshots)
    assert all(e.shape == (len(d.student.mixer_layers), d.teacher.n_heads) for e in snaps.errors.values())
    assert snaps.errors[f'after {stages[0]}'].mean() < snaps.errors['initialised'].mean()
    page = run_report(d, title='tiny').read_text()
    order = [page.index(s) for s in ('teacher perplexity', '<h2>training curves', '<h2>mixing matrices', 'across the run',
                                     '<summary>run config')]
    assert order == sorted(order)                                       # headline, curves, matrices, the head, config folded
