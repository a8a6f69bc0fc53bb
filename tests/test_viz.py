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
    me = rep['matrix_error']   # the headline also says how far stage 1's measure moved
    assert f"all-zero matrices {me['zeros']:.3g}, start {me['start']:.3g}" in page and f"{stages[0]} {me['after_stage'][stages[0]]:.3g}" in page


def test_layer_matrices_takes_a_transformers_model(teacher_dir):
    "A LlamaForCausalLM gives the matrices its Teacher gives (routed through load_teacher)."
    import torch
    from ssm_distill.students import build_student
    from ssm_distill.teachers import load_teacher
    from ssm_distill.viz import layer_matrices
    teacher = load_teacher(teacher_dir)
    assert type(teacher.model).__name__ == 'LlamaForCausalLM'
    student = build_student(teacher, mixer='phi_mamba').eval()
    ids = torch.randint(0, teacher.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    want, got = layer_matrices(teacher, student, ids), layer_matrices(teacher.model, student, ids)
    assert sorted(got) == sorted(want) == list(student.mixer_layers)
    for l in want:
        for who in ('teacher', 'student'): torch.testing.assert_close(got[l][who], want[l][who])
