"""The student as a Hugging Face model: its cache, `GenerationMixin` generation, loading, dtypes, embeddings, pipelines.

These are the tests `make test-compat` runs against the oldest and the newest transformers that pyproject.toml admits."""
import copy, json, os, subprocess, sys, warnings
import pytest, torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig, pipeline
from ssm_distill.core import SsmDistillError
from ssm_distill.mixers import MIXERS
from ssm_distill.teachers import tiny_teacher
from ssm_distill.students import (StaticStudentCache, StudentCache, StudentForCausalLM, build_student, check_transformers_contract,
                                  output_cache_field)

FAMILIES = ['llama', 'mistral', 'qwen2', 'qwen3', 'phi', 'gpt2', 'gpt_neox']

pytestmark = pytest.mark.usefixtures('one_thread')

@pytest.fixture(scope='module')
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp('teachers')
    return {f: tiny_teacher(f, path=root/f) for f in FAMILIES}

def ids(B=2, T=10, seed=0, vocab=64):
    return torch.randint(3, vocab, (B, T), generator=torch.Generator().manual_seed(seed))

def no_eos(s):
    "Greedy runs of a fixed length: a random tiny model may well produce its eos token."
    s.generation_config.eos_token_id = None
    return s

def forward_argmax(s, out, prompt_len, **kw):
    with torch.no_grad(): return s(out, **kw).logits[:, prompt_len - 1:-1].argmax(-1)

# --- the cache carries the state through Hugging Face's layers, on every supported family

@pytest.mark.parametrize('family', FAMILIES)
def test_transformers_contract_per_family(teachers, family):
    "What the student relies on in transformers holds for this family (fails naming the transformers version if not)."
    s = build_student(teachers[family], 'mamba2', attention_layers=[1])
    found = check_transformers_contract(s)
    assert found['transformers'] == transformers.__version__
    assert found['output_field'] in ('cache', 'past_key_values')

def test_a_layer_that_loses_the_cache_fails_loudly(teachers, monkeypatch):
    "A decoder layer that does not pass the cache on (as after a renamed argument) raises, naming transformers' version."
    s = build_student(teachers['llama'], 'gla', attention_layers=[1])
    attn = s.attention(1)
    forward = type(attn).forward
    def drop_cache(self, *a, **kw):
        for n in ('cache', 'past_key_values'): kw.pop(n, None)
        return forward(self, *a, **kw)
    monkeypatch.setattr(type(attn), 'forward', drop_cache)
    with pytest.raises(SsmDistillError, match=f'transformers {transformers.__version__}.*layer\\(s\\) \\[1\\]'):
        s.generate(ids(), max_new_tokens=2)

@pytest.mark.parametrize('family', ['llama', 'gpt2', 'gpt_neox', 'mistral'])
def test_forward_with_cache_continues_the_parallel_forward(teachers, family):
    "forward(use_cache=True) returns a StudentCache; continuing from it equals the forward over the whole sequence."
    s = build_student(teachers[family], 'gla', attention_layers=[0]).double()
    x = ids(T=12)
    with torch.no_grad():
        whole = s(x).logits
        first = s(x[:, :8], use_cache=True)
        cache = getattr(first, output_cache_field())
        assert isinstance(cache, StudentCache) and cache.get_seq_length() == 8
        rest = s(x[:, 8:], **{s._cache_arg: cache}).logits
    torch.testing.assert_close(torch.cat([first.logits, rest], 1), whole, atol=1e-9, rtol=1e-9)

def test_state_size_does_not_grow_with_context(teachers):
    "A pure student's decode state is the same size after 16 and after 200 tokens; a kept attention layer's keys grow."
    s = build_student(teachers['llama'], 'mamba2')
    sizes = []
    for T in (16, 200):
        cache = StudentCache.for_model(s)
        with torch.no_grad(): s(ids(T=T), use_cache=True, **{s._cache_arg: cache})
        sizes.append(cache.state_bytes())
        assert not cache.keys
    assert sizes[0] == sizes[1] > 0
    h = build_student(teachers['llama'], 'mamba2', attention_layers=[1])
    cache = StudentCache.for_model(h)
    with torch.no_grad(): h(ids(T=20), use_cache=True, **{h._cache_arg: cache})
    assert cache.keys[1].shape[-2] == 20

def test_per_head_hybrid_caches_only_the_kept_heads(teachers):
    "A per-head hybrid caches the keys and values of its kept heads' K/V heads only, beside the mixer's constant state."
    t = tiny_teacher('llama', num_attention_heads=4, num_key_value_heads=2)
    h = no_eos(build_student(t, 'mamba2', attention_heads={1: [0, 1]}))      # query heads 0, 1 share K/V head 0
    for T in (16, 40):
        cache = StudentCache.for_model(h)
        with torch.no_grad(): h(ids(T=T), use_cache=True, **{h._cache_arg: cache})
        kept = cache.states[1]['kept']
        assert kept['k'].shape == kept['v'].shape == (2, T, 1, h.config.hidden_size // 4) and not cache.keys
        assert set(cache.states[1]) == {'kept', 'mixer'}
    check_transformers_contract(h)
    out = h.generate(ids(), max_new_tokens=5, do_sample=False)
    assert torch.equal(out[:, 10:], forward_argmax(h, out, 10))

# --- greedy generation equals the parallel forward's argmax path: every mixer, pure, per-layer and per-head hybrid, f32 and f64

KEPT = {'pure': {}, 'hybrid': dict(attention_layers=[1]), 'heads': dict(attention_heads={1: [1]})}   # build options

@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=['f32', 'f64'])
@pytest.mark.parametrize('kept', list(KEPT))
@pytest.mark.parametrize('mixer', list(MIXERS))
def test_greedy_equals_parallel_argmax(teachers, mixer, kept, dtype):
    s = no_eos(build_student(teachers['llama'], mixer, **KEPT[kept]).to(dtype))
    for x in (ids(B=1, T=7, seed=1), ids(B=2, T=9, seed=2)):
        out = s.generate(x, max_new_tokens=6, do_sample=False)
        assert out.shape == (x.shape[0], x.shape[1] + 6) and torch.equal(out[:, :x.shape[1]], x)
        assert torch.equal(out[:, x.shape[1]:], forward_argmax(s, out, x.shape[1]))

CASES = ([('llama', m, k) for m in MIXERS for k in KEPT]
         + [(f, m, k) for f in ('gpt2', 'gpt_neox', 'mistral', 'phi') for m, k in (('mamba2', 'pure'), ('gla', 'hybrid'))]
         + [(f, 'gla', 'heads') for f in ('gpt2', 'gpt_neox', 'phi', 'qwen3')])   # Mistral's window: whole layers only

@pytest.mark.parametrize('family,mixer,kept', CASES)
def test_left_padded_batch_generates_each_prompt(teachers, family, mixer, kept):
    "Rows of a left-padded batch generate what each prompt generates alone (float64), and the forward's argmax path."
    s = no_eos(build_student(teachers[family], mixer, **KEPT[kept]).double())
    a, b = ids(1, 9, seed=3)[0], ids(1, 5, seed=4)[0]
    batch = torch.stack([a, torch.cat([torch.zeros(4, dtype=torch.long), b])])
    mask = torch.ones_like(batch); mask[1, :4] = 0
    out = s.generate(batch, attention_mask=mask, max_new_tokens=7, do_sample=False)
    for row, p in zip(out, (a, b)):
        alone = s.generate(p[None], max_new_tokens=7, do_sample=False)[0, len(p):]
        assert torch.equal(row[9:], alone)
    full = torch.cat([mask, torch.ones(2, 7, dtype=torch.long)], 1)
    pos = (full.cumsum(-1) - 1).clamp(min=0)
    assert torch.equal(out[:, 9:], forward_argmax(s, out, 9, attention_mask=full, position_ids=pos))

def test_hybrid_sliding_window(teachers):
    "Mistral keeps attention with window 8: the step mask must close keys older than the window."
    s = no_eos(build_student(teachers['mistral'], 'mamba2', attention_layers=[1]).double())
    x = ids(T=10)
    out = s.generate(x, max_new_tokens=14, do_sample=False)
    assert torch.equal(out[:, 10:], forward_argmax(s, out, 10))

# --- the rest of GenerationMixin

def test_generation_options(teachers):
    s = build_student(teachers['llama'], 'mamba2', attention_layers=[1])
    x = ids()
    assert StudentForCausalLM.can_generate() and isinstance(s.generation_config, GenerationConfig)
    first = s.generate(x, max_new_tokens=1, do_sample=False)[:, -1]
    eos = [int(first[0]), 63]
    out = s.generate(x, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert out.shape[1] <= 16 and out[0, 10] == first[0] and (out[0, 11:] == 0).all()     # row 0 stopped and padded
    assert s.generate(x, max_length=13, do_sample=False).shape == (2, 13)
    torch.manual_seed(0); a = s.generate(x, max_new_tokens=5, do_sample=True, top_k=5, top_p=0.9, temperature=0.7)
    torch.manual_seed(0); b = s.generate(x, max_new_tokens=5, do_sample=True, top_k=5, top_p=0.9, temperature=0.7)
    assert torch.equal(a, b)
    beams = s.generate(x, max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False)
    assert beams.shape == (4, 15)
    rp = s.generate(x, max_new_tokens=8, do_sample=False, repetition_penalty=50.0, eos_token_id=None)
    assert all(len(set(r[10:].tolist()) & set(r[:10].tolist())) == 0 for r in rp)       # a huge penalty: no repeats
    res = s.generate(x, max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_scores=True)
    assert res.sequences.shape == (2, 13) and len(res.scores) == 3
    gc = GenerationConfig(max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert s.generate(x, generation_config=gc).shape == (2, 14)

def test_beam_search_reorders_the_state(teachers):
    "num_beams=1 beam search equals greedy; with more beams the best beam scores at least greedy's path."
    s = no_eos(build_student(teachers['llama'], 'gla', attention_layers=[1]).double())
    x = ids(B=1)
    greedy = s.generate(x, max_new_tokens=6, do_sample=False)
    res = s.generate(x, max_new_tokens=6, num_beams=4, do_sample=False, length_penalty=0.0,
                     return_dict_in_generate=True, output_scores=True)
    def logp(seq):
        with torch.no_grad(): lp = s(seq).logits.log_softmax(-1)[0, 9:-1]
        return lp.gather(-1, seq[0, 10:, None]).sum().item()
    assert logp(res.sequences[:1]) >= logp(greedy) - 1e-9

def test_streamer_and_unsupported_modes(teachers):
    from transformers.generation.streamers import BaseStreamer
    class Collect(BaseStreamer):
        def __init__(self): self.chunks = []
        def put(self, value): self.chunks.append(value.clone())
        def end(self): self.chunks.append(None)
    s = no_eos(build_student(teachers['llama'], 'mamba2'))
    c = Collect()
    out = s.generate(ids(B=1), max_new_tokens=4, do_sample=False, streamer=c)
    assert c.chunks[-1] is None and torch.equal(torch.cat([t.flatten() for t in c.chunks[1:-1]]), out[0, 10:])
    with pytest.raises(Exception, match='cannot be cropped|crop|contrastive|assist'):
        s.generate(ids(B=1), max_new_tokens=3, penalty_alpha=0.6, top_k=4, trust_remote_code=True)

def test_prefill_keeps_only_the_last_logits(teachers):
    s = build_student(teachers['llama'], 'mamba2')
    seen = []
    hook = s.register_forward_hook(lambda m, a, kw_out: seen.append(kw_out.logits.shape[1]))
    try: s.generate(ids(T=30), max_new_tokens=3, do_sample=False)
    finally: hook.remove()
    assert seen[0] == 1 and all(n == 1 for n in seen)

# --- loading like any model

def test_top_level_config_and_generation_config(teachers, tmp_path):
    t = teachers['gpt2']
    s = build_student(t, 'mamba2')
    for k, want in dict(vocab_size=t.config.vocab_size, hidden_size=t.config.n_embd, num_hidden_layers=t.config.n_layer,
                        max_position_embeddings=t.config.n_positions, eos_token_id=t.config.eos_token_id,
                        bos_token_id=t.config.bos_token_id).items():
        assert getattr(s.config, k) == want, k
    s.generation_config.max_new_tokens = 7
    s.save_pretrained(tmp_path)
    saved = json.loads((tmp_path/'config.json').read_text())
    assert saved['auto_map']['AutoModelForCausalLM'].endswith('StudentForCausalLM') and (tmp_path/'modeling_ssm_distill.py').exists()
    assert json.loads((tmp_path/'generation_config.json').read_text())['max_new_tokens'] == 7
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.generation_config.max_new_tokens == 7 and again.config.vocab_size == t.config.vocab_size

@pytest.mark.parametrize('kept', ['pure', 'heads'])
@pytest.mark.parametrize('mixer', list(MIXERS))
def test_every_mixer_saves_and_reloads_by_auto_class(teachers, tmp_path, mixer, kept):
    "from_pretrained builds the model under a meta-device context: every mixer's own initialisation must survive it."
    s = build_student(teachers['llama'], mixer, **KEPT[kept]).eval()
    with torch.no_grad():
        for p in s.parameters(): p.add_(0.01 * torch.randn_like(p))   # weights that no initialisation reproduces
    s.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad(): assert torch.equal(again(ids()).logits, s(ids()).logits), mixer

def test_checkpoint_without_matrix_scale_loads_at_scale_one(teachers, tmp_path):
    "A student saved before mixers had `matrix_scale` loads with it at 1, the matrix it was trained with (not uninitialised memory)."
    from safetensors.torch import load_file, save_file
    s = build_student(teachers['llama'], 'gla').eval()                      # no calibration: every scale is 1
    s.save_pretrained(tmp_path)
    f = tmp_path/'model.safetensors'
    sd = load_file(f)
    assert any(k.endswith('matrix_scale') for k in sd)
    save_file({k: v for k, v in sd.items() if not k.endswith('matrix_scale')}, f, metadata={'format': 'pt'})
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    scales = [p for n, p in again.named_parameters() if n.endswith('matrix_scale')]
    assert scales and all(torch.equal(p, torch.ones_like(p)) for p in scales)
    with torch.no_grad(): assert torch.equal(again(ids()).logits, s(ids()).logits)

@pytest.mark.parametrize('how', ['bf16', 'fp16', 'auto-bf16'])
def test_load_in_another_dtype(teachers, tmp_path, how):
    s = build_student(teachers['llama'], 'gla', attention_layers=[1])
    if how == 'auto-bf16':
        s.to(torch.bfloat16).save_pretrained(tmp_path)
        m, want = AutoModelForCausalLM.from_pretrained(tmp_path, dtype='auto'), torch.bfloat16
    else:
        s.save_pretrained(tmp_path)
        want = dict(bf16=torch.bfloat16, fp16=torch.float16)[how]
        m = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=want)
    assert {p.dtype for p in m.parameters()} == {want}
    with torch.no_grad(): assert m(ids()).logits.dtype == want
    assert m.generate(ids(), max_new_tokens=3, do_sample=False).shape == (2, 13)

def test_embeddings_and_resize(teachers):
    for family in ('llama', 'gpt2'):       # untied and tied heads
        s = build_student(teachers[family], 'mamba2', attention_layers=[1])
        V = s.config.vocab_size
        emb = s.resize_token_embeddings(V + 8)
        assert emb.weight.shape[0] == V + 8 == s.get_output_embeddings().weight.shape[0] == s.config.vocab_size
        assert s.config.base_config['vocab_size'] == V + 8
        with torch.no_grad(): assert s(torch.tensor([[V + 7, 1, 2]])).logits.shape[-1] == V + 8
        head = torch.nn.Linear(s.config.hidden_size, V + 8, bias=False)
        s.set_output_embeddings(head)
        assert s.get_output_embeddings() is head

def test_gradient_checkpointing(teachers):
    "Same gradients with and without checkpointing, for packed (unpadded) batches and right padding; no warnings of ours."
    t = teachers['llama']
    x, mask = ids(T=12), torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    base = build_student(t, 'gla', attention_layers=[1]).train()
    grads = []
    for ckpt in (False, True):
        s = copy.deepcopy(base)
        if ckpt:   # transformers >= 5.24 calls it activation checkpointing
            if hasattr(s, 'activation_checkpointing_enable'): s.activation_checkpointing_enable(dict(use_reentrant=False))
            else: s.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(use_reentrant=False))
            assert any(getattr(b, 'gradient_checkpointing', False) for b in s.layers)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            loss = s(x, labels=x).loss + s(x, attention_mask=mask, labels=x.masked_fill(mask == 0, -100)).loss
            loss.backward()
        assert not [m for m in w if 'ssm_distill' in str(m.filename)]
        grads.append(torch.cat([p.grad.flatten() for p in s.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)

def test_refused_with_a_message(teachers):
    from transformers import DynamicCache
    s = build_student(teachers['llama'], 'mamba2')
    with pytest.raises(SsmDistillError, match='StudentCache'): s(ids(), **{s._cache_arg: DynamicCache()})
    with pytest.raises(SsmDistillError, match='cannot be cropped'): StudentCache.for_model(s).crop(3)
    right = torch.ones(2, 10, dtype=torch.long); right[1, 7:] = 0
    with pytest.raises(SsmDistillError, match='right-padded.*left'): s.generate(ids(), attention_mask=right, max_new_tokens=2)
    with pytest.raises(SsmDistillError, match='pass a mask over all'):
        cache = StudentCache.for_model(s)
        with torch.no_grad(): s(ids(), use_cache=True, **{s._cache_arg: cache})
        s(ids(T=1), attention_mask=torch.ones(2, 4, dtype=torch.long), **{s._cache_arg: cache})

def test_pipeline_on_a_path_and_an_object(tmp_path):
    from ssm_distill.builtin import load_builtin_teacher
    model, tok = load_builtin_teacher()
    s = no_eos(build_student(model, 'phi_mamba'))
    s.save_pretrained(tmp_path); tok.save_pretrained(tmp_path)
    by_path = pipeline('text-generation', model=str(tmp_path))
    by_object = pipeline('text-generation', model=s, tokenizer=tok)
    a = by_path('The function', max_new_tokens=6, do_sample=False)[0]['generated_text']
    b = by_object('The function', max_new_tokens=6, do_sample=False)[0]['generated_text']
    assert a == b and a.startswith('The function') and len(a) > len('The function')

def test_loading_in_a_process_that_never_imported_the_package(teachers, tmp_path):
    "trust_remote_code=True loads through the saved loader; without it the refusal names the fix."
    s = build_student(teachers['llama'], 'mamba2', attention_layers=[1])
    s.save_pretrained(tmp_path)
    x = ids()
    with torch.no_grad(): want = s(x).logits
    torch.save(x, tmp_path/'ids.pt')
    code = (f"import sys, torch\nfrom transformers import AutoModelForCausalLM\n"
            f"assert 'ssm_distill' not in sys.modules\n"
            f"try: AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})\n"
            f"except Exception as e: print('REFUSED', 'trust_remote_code' in str(e))\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)\n"
            f"with torch.no_grad(): torch.save(m(torch.load({str(tmp_path/'ids.pt')!r})).logits, {str(tmp_path/'out.pt')!r})\n"
            f"print(type(m).__name__)\n")
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_MODULES_CACHE=str(tmp_path/'modules'))
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'REFUSED True' in r.stdout and 'StudentForCausalLM' in r.stdout
    torch.testing.assert_close(torch.load(tmp_path/'out.pt'), want)

def test_tiny_distillation_runs(tmp_path):
    "A tiny 3-stage run through the Distiller writes a student that loads by path and generates."
    from ssm_distill.train import Distiller, save_tiny_teacher, tiny_run_config
    teacher = save_tiny_teacher(tmp_path/'teacher')
    report = Distiller(tiny_run_config(teacher, tmp_path/'run'), progress=False).run()
    assert report['status'] == 'finished'
    st = AutoModelForCausalLM.from_pretrained(tmp_path/'run'/'student')
    assert isinstance(st, StudentForCausalLM)
    assert st.generate(ids(), max_new_tokens=3, do_sample=False).shape[1] <= 13

# --- static cache, compiled decoding, chunked prefill

STATIC_CASES = {'mamba2': dict(mixer='mamba2'), 'gla_attn1': dict(mixer='gla', attention_layers=[1]),
                'per_head': dict(mixer='mamba2', attention_heads={0: [1]}), 'mlstm': dict(mixer='mlstm')}

def padded(B=2, T=10):
    "A left-padded batch: row 1 starts with 3 pads."
    x = ids(B=B, T=T); mask = torch.ones_like(x); mask[1, :3] = 0
    return x, mask

@pytest.mark.parametrize('case', list(STATIC_CASES))
def test_static_cache_generates_the_same(teachers, case):
    "cache_implementation='static' (buffers written in place, the step uncompiled) generates what the growing cache does."
    s = no_eos(build_student(teachers['llama'], **STATIC_CASES[case]))
    x, mask = padded()
    want = s.generate(x, attention_mask=mask, max_new_tokens=6, do_sample=False)
    cache = StaticStudentCache.for_model(s, max_cache_len=16)
    got = s.generate(x, attention_mask=mask, max_new_tokens=6, do_sample=False, **{s._cache_arg: cache})
    assert torch.equal(got, want)
    assert cache.frozen and cache.seen == 15 and int(cache.cursor) == 15
    if case == 'gla_attn1': assert cache.keys[1].shape[2] == 16 and cache.open[1, :3].sum() == 0   # padding stays closed
    assert torch.equal(s.generate(x, attention_mask=mask, max_new_tokens=6, do_sample=False, cache_implementation='static'), want)

def test_cache_maps_tuple_states(teachers):
    "mLSTM keeps a tuple in its state: the cache counts its bytes and beam search reorders its rows like any other state."
    from ssm_distill.students import StudentCache
    s = build_student(teachers['llama'], 'mlstm')
    cache = StudentCache.for_model(s)
    with torch.no_grad(): s(ids(), use_cache=True, **{s._cache_arg: cache})
    tensors = []
    def walk(t):
        if isinstance(t, dict): [walk(v) for v in t.values()]
        elif isinstance(t, (tuple, list)): [walk(v) for v in t]
        elif isinstance(t, torch.Tensor): tensors.append(t)
    walk(cache.states)
    assert any(isinstance(v, tuple) for st in cache.states.values() for v in st.values())   # the case this covers
    assert cache.state_bytes() == sum(t.numel() * t.element_size() for t in tensors)
    before = [t.clone() for t in tensors]
    cache.reorder_cache(torch.tensor([1, 0]))
    tensors.clear(); walk(cache.states)
    assert all(torch.equal(a, b.flip(0)) for a, b in zip(tensors, before))


def test_static_cache_keeps_its_addresses(teachers):
    "Decoding writes every state in place: the same tensors before and after a step (what CUDA graphs replay)."
    s = build_student(teachers['llama'], 'gla', attention_layers=[1])
    cache = StaticStudentCache.for_model(s, max_cache_len=12)
    x = ids(T=8)
    with torch.no_grad():
        s(x, use_cache=True, **{s._cache_arg: cache})
        s(x[:, :1], **{s._cache_arg: cache})
        before = [t.data_ptr() for t in cache.buffers()]
        s(x[:, :1], **{s._cache_arg: cache})
        assert [t.data_ptr() for t in cache.buffers()] == before and cache.seen == 10
        with pytest.raises(SsmDistillError, match='one token'): s(x[:, :2], **{s._cache_arg: cache})
        s(x[:, :1], **{s._cache_arg: cache}); s(x[:, :1], **{s._cache_arg: cache})
        with pytest.raises(SsmDistillError, match='full'): s(x[:, :1], **{s._cache_arg: cache})

@pytest.mark.parametrize('case', ['mamba2', 'gla_attn1'])
def test_compiled_decoding_generates_the_same(teachers, case):
    "compile_decoding() (the whole one-token step through torch.compile, a static cache) leaves greedy generation unchanged."
    s = no_eos(build_student(teachers['llama'], **STATIC_CASES[case]))
    x, mask = padded()
    want = s.generate(x, attention_mask=mask, max_new_tokens=6, do_sample=False)
    s.compile_decoding()
    assert torch.equal(s.generate(x, attention_mask=mask, max_new_tokens=6, do_sample=False), want)
    assert torch.equal(s.generate(x, attention_mask=mask, max_new_tokens=6, do_sample=False), want)   # the compiled graph reused

class LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    "The largest tensor (bytes) any op produced inside the block: what a forward's peak memory grows with."
    largest = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor): self.largest = max(self.largest, t.numel() * t.element_size())
        return out

@pytest.mark.parametrize('case', ['mamba2', 'gla_attn1'])
def test_prefill_in_chunks(teachers, case):
    "A prompt longer than prefill_chunk runs in chunks: the same logits and tokens, its largest intermediate a chunk's, not the prompt's."
    s = no_eos(build_student(teachers['llama'], **STATIC_CASES[case]))
    x, mask = padded(T=300)
    runs = {}
    for C in (0, 64):
        s.config.prefill_chunk = C
        with torch.no_grad(), LargestTensor() as big:
            logits = s(x, attention_mask=mask, use_cache=True).logits
        last = s(x, attention_mask=mask, use_cache=True, logits_to_keep=5).logits
        runs[C] = logits, last, big.largest, s.generate(x, attention_mask=mask, max_new_tokens=4, do_sample=False)
    (whole, _, big0, gen0), (chunked, last1, big1, gen1) = runs[0], runs[64]
    assert torch.equal(s.generate(x, attention_mask=mask, max_new_tokens=4, do_sample=False, cache_implementation='static'), gen0)
    tokens = mask.bool()
    torch.testing.assert_close(chunked[tokens], whole[tokens], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(last1, whole[:, -5:], atol=1e-4, rtol=1e-4)
    assert last1.shape[1] == 5 and torch.equal(gen1, gen0)
    assert big1 * 2 < big0, (big1, big0)

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('case', ['mamba2', 'gla_attn1'])
def test_compiled_decoding_on_cuda_graphs(teachers, case):
    "On a GPU, compile_decoding() replays CUDA graphs (mode='reduce-overhead', the static cache's buffers at fixed addresses): greedy unchanged."
    s = no_eos(build_student(teachers['llama'], **STATIC_CASES[case])).cuda()
    x, mask = (t.cuda() for t in padded())
    want = s.generate(x, attention_mask=mask, max_new_tokens=8, do_sample=False)
    s.compile_decoding()
    for _ in range(3): assert torch.equal(s.generate(x, attention_mask=mask, max_new_tokens=8, do_sample=False), want)
