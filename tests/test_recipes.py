"""The recipes (`recipes/*.yaml`): each loads as is, names a real hub teacher and a streamed hub dataset, has a plan
from the published shapes (offline), and its stand-in (a tiny teacher of the same family, a local parquet file, two
steps per stage) runs sharded on 2 CPU processes under torchrun with finite losses, keeping the recipe's stages,
mixer and hybrid shape. The encoder (MiniLM) recipe is refused by the Distiller, plan and recipe-check with the reason."""
import math
from pathlib import Path

import pytest

from ssm_distill.config import load_config
from ssm_distill.core import SsmDistillError
from ssm_distill.plan import KNOWN_TEACHERS, plan_run, plan_table
from ssm_distill.recipes import check_recipe, family_config
from ssm_distill.teachers import ADAPTERS

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT/'recipes').glob('*.yaml'))
_causal = lambda p: ADAPTERS[family_config(load_config(p, check_teacher=False).teacher)['model_type']].causal
CAUSAL = [p for p in RECIPES if _causal(p)]
ENCODER = [p for p in RECIPES if p not in CAUSAL]
ids = lambda ps: [p.stem for p in ps]


def test_there_are_recipes():
    assert len(CAUSAL) >= 3 and len(ENCODER) >= 1


@pytest.mark.parametrize('recipe', RECIPES, ids=ids(RECIPES))
def test_recipe_loads_names_a_hub_teacher_and_a_streamed_dataset(recipe, monkeypatch):
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)   # a hub name not in the cache is fine where the hub is reachable
    cfg = load_config(recipe)
    assert cfg.teacher in KNOWN_TEACHERS and not Path(cfg.teacher).exists()
    d = cfg.data
    assert d.source == 'hub' and d.streaming and d.eval_blocks and d.name.count('/') == 1, d
    assert cfg.parallel.kind == 'fsdp' and all(s.tokens for s in cfg.stages)
    text = recipe.read_text()
    assert 'Source:' in text and 'accelerate launch --config_file recipes/accelerate/fsdp.yaml' in text and 'torchrun --nproc_per_node 2' in text


@pytest.mark.parametrize('recipe', CAUSAL, ids=ids(CAUSAL))
def test_plan_of_every_recipe(recipe):
    p = plan_run(recipe, 'h100', 8, 'fsdp')
    cfg = load_config(recipe, check_teacher=False)
    assert [s.kind for s in p.stages] == [s.kind for s in cfg.stages]
    assert [s.tokens for s in p.stages] == [s.tokens for s in cfg.stages]
    assert all(s.seconds > 0 and s.memory['total'] < p.device.memory for s in p.stages)   # every stage fits an H100 as written
    rows = plan_table(p).splitlines()
    assert all(any(r.startswith(s.name) for r in rows) for s in p.stages)


@pytest.mark.parametrize('recipe', ENCODER, ids=ids(ENCODER))
def test_encoder_recipe_is_refused_with_the_reason(recipe, tmp_path):
    with pytest.raises(SsmDistillError, match='encoders.distil_encoder'): plan_run(recipe, 'h100', 8, 'fsdp')
    with pytest.raises(SsmDistillError, match='encoder'): check_recipe(recipe, tmp_path)


@pytest.mark.parametrize('recipe', CAUSAL, ids=ids(CAUSAL))
def test_stand_in_runs_sharded_on_two_processes(recipe, tmp_path):
    "About 16 s a recipe on 2 CPU cores: the stand-in built, run under torchrun (fsdp, gloo) and checked by check_recipe."
    res = check_recipe(recipe, tmp_path)   # raises, naming what failed, unless finished on 2 processes with finite losses
    cfg = load_config(recipe, check_teacher=False)
    assert res['parallel']['world_size'] == 2 and res['parallel']['kind'] == 'fsdp'
    assert res['stages'] == [s.kind for s in cfg.stages] and res['steps'] == 2 * len(cfg.stages)
    assert all(math.isfinite(v) for v in res['final_losses'].values()) and len(res['final_losses']) == len(cfg.stages)
    assert res['student']['mixer'] == cfg.student.mixer
    assert len(res['student']['attention_layers']) == len(cfg.student.attention_layers)
    run = load_config(res['stand_in'])   # the stand-in: the same family at a tiny size, the local file in the hub path
    assert family_config(run.teacher)['model_type'] == family_config(cfg.teacher)['model_type']
    assert run.data.name == 'parquet' and run.data.streaming and run.data.text_field == cfg.data.text_field


def test_a_broken_stand_in_is_reported(tmp_path):
    "The check can fail: a stand-in whose stages outgrow the batch over 3 processes is refused with the run's own error."
    with pytest.raises(SsmDistillError, match='cannot be split'): check_recipe(CAUSAL[0], tmp_path, processes=3)
