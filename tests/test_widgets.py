"The widgets driven as a user drives them, without a browser: `Button.click()`, dropdown values, the state machine."
import time

import numpy as np
import pytest
import torch
import yaml
from dataclasses import asdict

from ssm_distill.checkpoints import latest_checkpoint
from ssm_distill.train import save_tiny_teacher, tiny_run_config
from ssm_distill.widgets import MixingExplorer, TrainerPanel


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
    return save_tiny_teacher(tmp_path_factory.mktemp('teacher'))


def wait_for(cond, panel, timeout=60.0):
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, f'timed out in state {panel.state}: {panel.status.value}'
        time.sleep(0.02)


def test_a_run_goes_idle_running_finished_and_refreshes_the_explorer(teacher_dir, tmp_path):
    "A whole tiny run from a YAML file: the states pass in order, the curves hold every step, the explorer shows the final student."
    p = tmp_path/'run.yaml'
    d = asdict(tiny_run_config(teacher_dir, tmp_path/'run')); p.write_text(yaml.safe_dump(d))
    panel = TrainerPanel.from_config(p, throttle=0.0)
    seen = []
    panel.status.observe(lambda ch: seen.append(ch['new'].split('</b>')[0].removeprefix('<b>')), 'value')
    assert (panel.state, panel.start_button.disabled, panel.stop_button.disabled) == ('idle', False, True)
    panel.start_button.click()
    assert panel.wait(120) == 'finished', panel.status.value
    states = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]
    assert states[:2] == ['starting', 'running'] and states[-1] == 'finished'
    assert panel.curves.n_points == panel.distiller.state.global_step == panel.progress.value
    assert [t.name for t in panel.curves.fig.data] == [f'{i + 1}-{s.kind}' for i, s in enumerate(panel.distiller.cfg.stages)]
    assert panel.explorer is not None and len(panel.explorer.heatmaps.data) == 3
    final = panel.distiller.accelerator.unwrap_model(panel.distiller.student)
    x = panel.explorer.mats[0]['student']
    fresh = MixingExplorer(panel.distiller.teacher, final, tokenizer=panel.distiller.tokenizer).mats[0]['student']
    torch.testing.assert_close(x, fresh)                                   # refreshed at the last stage end: the final student
    assert not panel.save_button.disabled and (panel.save_student(tmp_path/'saved')/'config.json').exists()


def test_stop_while_starting_still_stops(teacher_dir, tmp_path):
    "Stop pressed while the teacher and data are still being built: the run stops at its first step, with a checkpoint."
    panel = TrainerPanel.from_config(tiny_run_config(teacher_dir, tmp_path/'run', total_tokens=400_000, checkpoint_every=0))
    panel.start_button.click()
    assert panel.state == 'starting' and not panel.stop_button.disabled
    panel.stop_button.click()
    assert panel.wait(120) == 'stopped', panel.status.value
    assert panel.distiller.state.global_step <= 2 and latest_checkpoint(tmp_path/'run') is not None


def test_bad_input_is_shown_and_nothing_starts(teacher_dir, tmp_path):
    panel = TrainerPanel.from_config(tiny_run_config(teacher_dir, tmp_path/'run'))
    panel.form.teacher.value = str(tmp_path/'no-such-teacher')
    panel.start_button.click()
    assert panel.thread is None and panel.state == 'idle' and 'teacher:' in panel.status.value
    panel.form.teacher.value = str(teacher_dir)
    panel.form.stages.children[0].children[1].value = 'lots'
    panel.start_button.click()
    assert panel.thread is None and 'stages[0].tokens' in panel.status.value
    assert not (tmp_path/'run').exists()


def test_explorer_dropdowns_and_text_change_the_figures(teacher_dir):
    from ssm_distill.students import build_student
    from ssm_distill.teachers import load_teacher
    teacher = load_teacher(teacher_dir)
    ex = MixingExplorer(teacher, build_student(teacher, mixer='phi_mamba'), text='one two one two one two')
    z0 = ex.heatmaps.data[0].z
    ex.layer.value = 1
    assert ex.heatmaps.data[0].z != z0 and 'layer 1' in ex.heatmaps.layout.title.text   # (the page gets the blank triangle as None)
    ex.scale.value = 'linear'
    torch.testing.assert_close(torch.tensor(np.array(ex.heatmaps.data[0].z, dtype=np.float32)).nan_to_num(0.0), ex.mats[1]["teacher"][0].tril(), atol=1e-4, rtol=1e-3)  # 4 digits
    n = len(ex.tokens)
    ex.text.value = 'a much longer sentence than the one before it, with more tokens'
    assert len(ex.tokens) > n and len(ex.heatmaps.data[0].x) == len(ex.tokens)


def test_matrix_class_panel_fits_the_head(teacher_dir):
    from ssm_distill.teachers import load_teacher
    ex = MixingExplorer(load_teacher(teacher_dir), text='one two one two one two', fit_classes=True, class_sizes=(1, 4))
    assert len(ex.classes.data) >= 2 and all(list(t.x) == [1, 4] for t in ex.classes.data)
    assert all(e >= 0 for t in ex.classes.data for e in t.y)


def test_explorer_takes_a_transformers_model(teacher_dir):
    "MixingExplorer(model, tokenizer=tok) with a LlamaForCausalLM works as with its Teacher (it raised AttributeError: n_heads)."
    from ssm_distill.teachers import load_teacher
    teacher = load_teacher(teacher_dir)
    assert type(teacher.model).__name__ == 'LlamaForCausalLM'
    ex = MixingExplorer(teacher.model, tokenizer=teacher.tokenizer, text='one two one two one two')
    ref = MixingExplorer(teacher, text='one two one two one two')
    assert ex.teacher.model is teacher.model and list(ex.head.options) == list(ref.head.options)
    assert sorted(ex.mats) == sorted(ref.mats)
    for l in ref.mats: torch.testing.assert_close(ex.mats[l]['teacher'], ref.mats[l]['teacher'])
