"Tests of ssm_distill.stages: every stage kind lowers its own loss in a tiny run, options per kind, plug-ins."
import json
from dataclasses import asdict, dataclass

import pytest

from ssm_distill.core import SsmDistillError
from ssm_distill.stages import STAGES, Stage, kinds_taking, stage_options
from ssm_distill.config import load_config
from ssm_distill.train import Distiller, save_tiny_teacher, tiny_run_config


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
    return save_tiny_teacher(tmp_path_factory.mktemp('teacher'))


def _step_losses(out, part=lambda r: r['loss']) -> list[float]:
    recs = [json.loads(l) for l in (out/'metrics.jsonl').read_text().splitlines()]
    return [part(r) for r in recs if r['event'] == 'step']

# the part of a kind's loss that the student can change: kd's soft cross-entropy includes the teacher's entropy
# (near log V for the random tiny teacher), so its KL part is the one compared
STUDENT_PART = dict(kd=lambda r: r['loss'] - r['kd/teacher_entropy'])


LR = dict(matrix_orientation=1e-2, hidden_state_alignment=1e-2, kd=3e-3, od=3e-3, hs=1e-2, mha=3e-3, direct_minilm=3e-3)


@pytest.mark.parametrize('kind', sorted(LR))
def test_every_kind_lowers_its_own_loss(kind, teacher_dir, tmp_path):
    "16 steps of one stage at a constant learning rate: the mean loss of the last 4 steps is well below the first 4."
    assert set(LR) == set(STAGES)   # a new built-in kind needs its test here
    cfg = {**asdict(tiny_run_config(teacher_dir, tmp_path/'run')),
           'stages': [dict(kind=kind, tokens=16 * 4 * 32, lr=LR[kind], warmup=0.0, schedule='constant')]}
    Distiller(cfg, progress=False).run()
    losses = _step_losses(tmp_path/'run', STUDENT_PART.get(kind, lambda r: r['loss']))
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert len(losses) == 16 and last < 0.9 * first, (kind, losses)


def test_options_belong_to_their_kind():
    assert kinds_taking('temperature') == ['kd', 'od'] and kinds_taking('teacher_layer') == ['mha', 'direct_minilm']
    cfg = load_config({'total_tokens': 10**6, 'stages': [{'kind': 'kd', 'temperature': 2.0, 'hard_weight': 0.5},
                                                         {'kind': 'hs', 'layer_map': 'last_k', 'last_k': 2}]})
    assert cfg.stages[0].options.temperature == 2.0 and cfg.stages[1].stage.opt.map_kw() == {'k': 2}
    with pytest.raises(SsmDistillError, match=r"stages\[0\].relation_heads: od takes no option 'relation_heads' \(mha take it\)"):
        load_config({'total_tokens': 10**6, 'stages': [{'kind': 'od', 'relation_heads': 4}]})
    with pytest.raises(SsmDistillError, match=r"stages\[0\].temprature: unknown key; did you mean 'temperature'"):
        load_config({'total_tokens': 10**6, 'stages': [{'kind': 'kd', 'temprature': 4}]})


def test_qkv_stages_refuse_a_mixer_without_queries_and_keys(teacher_dir, tmp_path):
    "The Toeplitz student has no Q and K: mha and direct_minilm say so when the config loads; the stages it can take run."
    base = asdict(tiny_run_config(teacher_dir, tmp_path/'run', mixer='toeplitz'))
    for kind in ('mha', 'direct_minilm'):
        with pytest.raises(SsmDistillError, match=rf"stages\[0\].kind: {kind} compares queries, keys and values, but mixer 'toeplitz'"):
            load_config({**base, 'stages': [dict(kind=kind, tokens=256)]})
    cfg = {**base, 'stages': [dict(kind='matrix_orientation', tokens=8 * 4 * 32, lr=3e-2, warmup=0.0, schedule='constant')]}
    Distiller(cfg, progress=False).run()
    losses = _step_losses(tmp_path/'run')
    assert sum(losses[-2:]) < 0.9 * sum(losses[:2]), losses   # its kernels fit the attention matrices


def test_a_plugin_stage_runs_from_a_config(teacher_dir, tmp_path):
    "A Stage subclass registered outside the package runs through Distiller from a plain config, its option checked."
    @dataclass
    class Opts:
        weight:float = 1.0 # scale of the loss

    class LogitMSE(Stage):
        "Mean squared error of the logits."
        Options = Opts
        def targets(self, teacher, ids, layers): return dict(logits=teacher.model(input_ids=ids).logits)
        def loss(self, student, ids, t, layers, aux=None):
            mse = (student(input_ids=ids).logits - t['logits']).pow(2).mean() * self.opt.weight
            return mse, {'mse': mse.item()}

    STAGES['test_logit_mse'] = LogitMSE
    try:
        assert stage_options('test_logit_mse') == ['weight']
        cfg = {**asdict(tiny_run_config(teacher_dir, tmp_path/'run')),
               'stages': [dict(kind='test_logit_mse', tokens=12 * 4 * 32, lr=3e-3, warmup=0.0, weight=2.0)]}
        rep = Distiller(cfg, progress=False).run()
        losses = _step_losses(tmp_path/'run')
        assert rep['stages'][0]['kind'] == 'test_logit_mse' and losses[-1] < 0.9 * losses[0]
        with pytest.raises(SsmDistillError, match="test_logit_mse takes no option 'temperature'"):
            load_config({**cfg, 'stages': [dict(kind='test_logit_mse', tokens=512, temperature=2.0)]})
    finally:
        del STAGES['test_logit_mse']
