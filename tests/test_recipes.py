"""The recipes (`recipes/*.yaml`): each loads as is, names a real hub teacher and a streamed hub dataset, has a plan
from the published shapes (offline), and its stand-in (a tiny teacher of the same family, a local parquet file, two
steps per stage) runs sharded on 2 CPU processes under torchrun with finite losses, keeping the recipe's stages,
mixer and hybrid shape. A recipe with an encoder teacher is refused by plan and recipe-check with the reason."""
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
ids = lambda ps: [p.stem for p in ps]


def test_there_are_recipes_and_every_one_runs():
    "MOHAWK, a per-layer hybrid, hidden-state alignment and the task-agnostic transfers: four paper settings, all causal."
    assert len(RECIPES) >= 4 and CAUSAL == RECIPES
    kinds = {s.kind for p in RECIPES for s in load_config(p, check_teacher=False).stages}
    assert {'matrix_orientation', 'hidden_state_alignment', 'kd', 'mha', 'hs'} <= kinds


@pytest.mark.parametrize('recipe', RECIPES, ids=ids(RECIPES))
def test_recipe_loads_names_a_hub_teacher_and_a_streamed_dataset(recipe, monkeypatch):
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)   # a hub name not in the cache is fine where the hub is reachable
    cfg = load_config(recipe)
    assert cfg.teacher in KNOWN_TEACHERS and not Path(cfg.teacher).exists()
    d = cfg.data
    assert d.source == 'hub' and d.streaming and d.eval_blocks and d.name.count('/') == 1, d
    assert cfg.parallel.kind in ('fsdp', 'ddp') and all(s.tokens for s in cfg.stages)
    assert cfg.parallel.kind == 'fsdp' or 'parallel.kind: ddp' in recipe.read_text()   # replicated only with the reason
    text = recipe.read_text()
    launch = 'accelerate launch --config_file recipes/accelerate/fsdp.yaml' if cfg.parallel.kind == 'fsdp' else 'accelerate launch --multi_gpu'
    assert 'Source:' in text and launch in text and 'torchrun --nproc_per_node 2' in text


@pytest.mark.parametrize('recipe', CAUSAL, ids=ids(CAUSAL))
def test_plan_of_every_recipe(recipe):
    cfg = load_config(recipe, check_teacher=False)
    p = plan_run(recipe, 'h100', 8, cfg.parallel.kind)
    assert [s.kind for s in p.stages] == [s.kind for s in cfg.stages]
    assert [s.tokens for s in p.stages] == [s.tokens for s in cfg.stages]
    assert all(s.seconds > 0 and s.memory['total'] < p.device.memory for s in p.stages)   # every stage fits an H100 as written
    rows = plan_table(p).splitlines()
    assert all(any(r.startswith(s.name) for r in rows) for s in p.stages)


def test_an_encoder_teacher_is_refused_with_the_reason(tmp_path):
    "The Distiller builds causal students: a recipe with a BERT-family teacher gets the reason and the single-process route."
    text = (ROOT/'recipes'/'minilmv2_task_agnostic.yaml').read_text().replace('HuggingFaceTB/SmolLM2-360M', 'sentence-transformers/all-MiniLM-L6-v2')
    recipe = tmp_path/'encoder.yaml'
    recipe.write_text(text.replace('n_layers: 16', 'n_layers: 3').replace('[1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31]', '[1, 3, 5]'))
    with pytest.raises(SsmDistillError, match='encoders.distil_encoder'): plan_run(recipe, 'h100', 8, 'fsdp')
    with pytest.raises(SsmDistillError, match='encoder'): check_recipe(recipe, tmp_path/'run')


@pytest.mark.parametrize('recipe', CAUSAL, ids=ids(CAUSAL))
def test_stand_in_runs_sharded_on_two_processes(recipe, tmp_path):
    "About 16 s a recipe on 2 CPU cores: the stand-in built, run under torchrun (fsdp, gloo) and checked by check_recipe."
    res = check_recipe(recipe, tmp_path)   # raises, naming what failed, unless finished on 2 processes with finite losses
    cfg = load_config(recipe, check_teacher=False)
    assert res['parallel']['world_size'] == 2 and res['parallel']['kind'] == cfg.parallel.kind
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
