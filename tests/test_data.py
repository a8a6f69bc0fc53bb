"Tests of ssm_distill.data beyond the notebook: determinism of the corpus, file formats, resumption."
import json
import pytest, torch
from ssm_distill.core import SsmDistillError
from ssm_distill.data import (DataConfig, build_data, build_builtin_corpus, builtin_corpus_path, load_texts, make_dataloader, PackedDataset, infinite_batches, ResumableBatchSampler, cache_dir)

class ByteTok:
    eos_token_id = 256
    def __call__(self, texts, add_special_tokens=False, verbose=True): return {'input_ids': [list(t.encode()) for t in texts]}

@pytest.fixture(scope='module')
def corpus_path(): return build_builtin_corpus()

def test_corpus_deterministic(tmp_path, monkeypatch, corpus_path):
    monkeypatch.setenv('SSM_DISTILL_CACHE', str(tmp_path))
    assert cache_dir() == tmp_path and builtin_corpus_path().parent == tmp_path
    p = build_builtin_corpus()
    assert p.read_bytes() == corpus_path.read_bytes()

def test_corpus_clean(corpus_path):
    docs = [json.loads(l) for l in open(corpus_path)]
    names = [d['name'] for d in docs]
    assert not any(n.split('.')[0] in ('this', 'antigravity', 'idlelib', 'tkinter', 'test') for n in names)
    assert len({d['text'] for d in docs}) == len(docs) and min(len(d['text']) for d in docs) >= 80
    assert any(n.startswith('pydoc_data.topics.') for n in names) and 'json.dumps' in names

def test_parquet_and_hub_parquet(tmp_path):
    pa = pytest.importorskip('pyarrow'); pq = pytest.importorskip('pyarrow.parquet')
    pq.write_table(pa.table({'body': ['one doc', 'two doc']}), tmp_path/'x.parquet')
    assert list(load_texts(DataConfig('files', path=tmp_path/'x.parquet', text_field='body'))) == ['one doc', 'two doc']
    with pytest.raises(SsmDistillError, match="no column 'text'"):
        list(load_texts(DataConfig('files', path=tmp_path/'x.parquet')))
    got = list(load_texts(DataConfig('hub', name='parquet', data_files=str(tmp_path/'x.parquet'), text_field='body')))
    assert got == ['one doc', 'two doc']
    with pytest.raises(SsmDistillError, match="no field 'text'"):
        list(load_texts(DataConfig('hub', name='parquet', data_files=str(tmp_path/'x.parquet'))))

def test_hub_text_streaming(tmp_path):
    (tmp_path/'a.txt').write_text('line one\nline two\n')
    cfg = DataConfig('hub', name='text', data_files=str(tmp_path/'a.txt'), streaming=True)
    assert list(load_texts(cfg)) == ['line one', 'line two']

def test_folder_and_split_by_document(tmp_path):
    for i in range(40): (tmp_path/f'{i:02d}.txt').write_text(f'document number {i} ' * 10)
    cfg = DataConfig('files', path=tmp_path, seq_len=32, eval_fraction=0.25, batch_size=4)
    d = build_data(cfg, ByteTok())
    assert d.stats['documents'] == 40 and d.stats['eval_documents'] > 0
    assert d.stats['train_tokens'] + d.stats['eval_tokens'] <= 40 * 211
    assert torch.equal(d.train.blocks, build_data(cfg, ByteTok()).train.blocks)

@pytest.mark.parametrize('bs,n', [(3, 10), (4, 8), (1, 5)])
def test_resume_matches(bs, n):
    ds = PackedDataset(torch.arange(n * 2).view(n, 2))
    full = [b for b, _ in zip(infinite_batches(make_dataloader(ds, bs, seed=7)), range(13))]
    for k in (0, 1, 6, 12):
        dl = make_dataloader(ds, bs, seed=7, start_step=k)
        assert all(torch.equal(a, b) for a, b in zip(infinite_batches(dl), full[k:]))

def test_resume_state_mismatch():
    s = ResumableBatchSampler(10, 3, seed=0)
    with pytest.raises(SsmDistillError, match='same data config'):
        ResumableBatchSampler(11, 3, seed=0).load_state_dict(s.state_dict())
    with pytest.raises(SsmDistillError, match='cannot fill one batch'):
        ResumableBatchSampler(2, 3)

SAMPLES = {'latin-1': 'Café, naïve façade, señor.', 'cp1252': '“Smart quotes” – dashes and €5.', 'utf-16': 'Ünïcode text in UTF-16.'}

@pytest.mark.parametrize('enc', list(SAMPLES))
@pytest.mark.parametrize('suffix', ['.txt', '.jsonl'])
def test_other_encodings_refused_then_read(tmp_path, enc, suffix):
    "A non-UTF-8 file is refused in one line naming the file, the byte and `data.encoding: <enc>`; with the setting it reads."
    text = SAMPLES[enc]
    body = text if suffix == '.txt' else json.dumps({'text': text}, ensure_ascii=False) + '\n'
    f = tmp_path/f'doc{suffix}'; f.write_bytes(body.encode(enc))
    with pytest.raises(SsmDistillError) as e: list(load_texts(DataConfig('files', path=f)))
    msg = str(e.value)
    assert '\n' not in msg and str(f) in msg and 'byte ' in msg and msg.endswith(f'set data.encoding: {enc}'), msg
    assert list(load_texts(DataConfig('files', path=f, encoding=enc))) == [text]

def test_decode_error_names_the_byte_offset(tmp_path):
    f = tmp_path/'late.txt'; f.write_bytes(b'plain ascii ' * 1000 + 'é'.encode('latin-1') + b' end')
    with pytest.raises(SsmDistillError, match=r'late.txt: not utf-8 text \(byte 12000: e9'): list(load_texts(DataConfig('files', path=f)))

def test_unknown_encoding_is_refused():
    with pytest.raises(SsmDistillError, match="encoding='utf-9'"): DataConfig(encoding='utf-9')


# ---- a streamed hub split: a local parquet file read through load_dataset('parquet', ..., streaming=True)
from dataclasses import replace  # noqa: E402
from ssm_distill.data import StreamPacker, StreamedData, hub_dataset, is_held_out, stream_train_documents  # noqa: E402


def _parquet(path, docs):
    pa = pytest.importorskip('pyarrow'); pq = pytest.importorskip('pyarrow.parquet')
    pq.write_table(pa.table({'text': docs}), path)
    return str(path)


@pytest.fixture(scope='module')
def stream_docs(tmp_path_factory):
    "A few hundred short documents, each numbered (so a held-out one is recognisable in the token stream), one long."
    docs = [f'<{i:04d}> ' + 'word ' * (i % 7) + 'end.' for i in range(400)]
    docs[33] = '<0033> ' + 'a long document ' * 60
    docs[50] = '   '   # empty: skipped, and not counted by the held-out rule (as build_data counts)
    return docs, _parquet(tmp_path_factory.mktemp('stream')/'docs.parquet', docs)


def _scfg(path, **kw):
    return DataConfig(**{**dict(source='hub', name='parquet', data_files=path, streaming=True, seq_len=24, eval_fraction=0.1,
                                eval_blocks=5, batch_size=4, shuffle=False), **kw})


def _epoch(cfg) -> int:
    "Training blocks in an epoch of `cfg`'s stream (build_data's, of the same documents)."
    return len(build_data(replace(cfg, streaming=False, eval_blocks=None, shuffle=False), ByteTok()).train)


_LOADED = {}


def _ds(cfg):
    "The split of `cfg` loaded once (`load_dataset(..., streaming=True)`), read again by every packer of these tests."
    if cfg.data_files not in _LOADED: _LOADED[cfg.data_files] = hub_dataset(cfg)
    return _LOADED[cfg.data_files]


def _take(cfg, tok, n, position=None):
    p = StreamPacker(cfg, tok, position, dataset=_ds(cfg))
    return [p.next_block() for _ in range(n)], p.position


@pytest.mark.parametrize('max_tokens', [None, 3000])
def test_stream_equals_the_packing_of_the_same_documents(stream_docs, max_tokens):
    "A real BPE tokenizer: one epoch of streamed training blocks and the held-out blocks are build_data's, token for token."
    from transformers import AutoTokenizer
    from ssm_distill.core import builtin_teacher_path
    tok = AutoTokenizer.from_pretrained(builtin_teacher_path())
    cfg = _scfg(stream_docs[1], max_tokens=max_tokens)
    whole = build_data(replace(cfg, streaming=False, eval_blocks=None), tok)
    streamed = build_data(cfg, tok)
    assert isinstance(streamed, StreamedData) and streamed.stats['streaming'] and streamed.stats['dataset'] == 'parquet'
    assert torch.equal(streamed.eval.blocks, whole.eval.blocks[:5])
    n = len(whole.train)
    blocks, pos = _take(cfg, tok, n + 1)
    assert torch.equal(torch.stack(blocks[:n]), whole.train.blocks)
    assert pos['epoch'] == 1 and torch.equal(blocks[n], whole.train.blocks[0])   # then the stream starts again
    assert torch.equal(streamed.head(4), whole.train.blocks[:4])


def test_stream_reads_only_what_it_needs(tmp_path, monkeypatch):
    "Collecting the held-out blocks and packing a few batches reads the start of a large split, never all of it."
    import ssm_distill.data as D
    path = _parquet(tmp_path/'big.parquet', [f'document {i} ' * 5 for i in range(50_000)])
    read, orig = [0], D.dataset_texts
    def counting(ds, cfg):
        for t in orig(ds, cfg): read[0] += 1; yield t
    monkeypatch.setattr(D, 'dataset_texts', counting)
    data = build_data(_scfg(path, eval_blocks=4), ByteTok())
    batches = list(data.batches(None, 4, 3))
    assert len(data.eval) == 4 and [b.shape for b in batches] == [(4, 24)] * 3
    assert read[0] < 500, read[0]


@pytest.mark.parametrize('shuffle', [False, True])
def test_stream_never_trains_on_held_out_documents(stream_docs, shuffle):
    "Over two epochs (reshuffled), no held-out document's text is in the training stream; every training document is."
    docs, path = stream_docs
    cfg = _scfg(path, shuffle=shuffle, shuffle_buffer=50, seed=1)
    kept = [d for d in docs if d.strip()]
    held = [d for i, d in enumerate(kept) if is_held_out(i, 0, 0.1)]
    assert 20 < len(held) < 70
    one = sum(len(d.encode()) + 1 for d in kept if d not in held) // 24   # an epoch's blocks
    blocks, pos = _take(cfg, ByteTok(), 2 * one + 3)
    assert pos['epoch'] == 2
    for epoch in (blocks[:one], blocks[one:2 * one]):
        text = bytes(t if t < 256 else 10 for t in torch.stack(epoch).flatten().tolist()).decode()
        assert not any(h.split()[0] in text for h in held)
        assert sum(d.split()[0] in text for d in kept if d not in held) >= len(kept) - len(held) - 1   # all but the dropped tail
    ev = bytes(t if t < 256 else 10 for t in build_data(cfg, ByteTok()).eval.blocks.flatten().tolist()).decode()
    assert all(h.split()[0] in ev for h in held[:3])


def test_stream_shuffle_keeps_the_split_and_the_documents(stream_docs):
    _, path = stream_docs
    plain, shuf = _scfg(path), _scfg(path, shuffle=True, shuffle_buffer=40, seed=3)
    docs = lambda c, epoch=0: list(stream_train_documents(c, epoch=epoch, dataset=_ds(c)))
    a, b, c = (docs(x) for x in (plain, shuf, replace(shuf, seed=4)))
    assert a != b != c and sorted(a) == sorted(b) == sorted(c)
    assert docs(shuf, epoch=1) != b                      # each epoch its own order
    assert docs(replace(shuf, shuffle=False)) == a        # shuffle: false is the stream's order
    assert docs(replace(shuf, shuffle_buffer=0)) == a
    assert torch.equal(build_data(shuf, ByteTok()).eval.blocks, build_data(plain, ByteTok()).eval.blocks)


@pytest.mark.parametrize('shuffle', [False, True])
def test_stream_resumes_at_any_block(stream_docs, shuffle):
    "A packer started from any saved position (JSON round trip) yields exactly what the uninterrupted one yields next."
    cfg = _scfg(stream_docs[1], shuffle=shuffle, shuffle_buffer=30)
    n = _epoch(cfg); total = n + 40
    full, pos = _take(cfg, ByteTok(), total)
    assert pos['epoch'] == 1
    for k in sorted(set(range(0, total, 23)) | {1, 2, n - 1, n, n + 1, total - 1}):
        _, pos = _take(cfg, ByteTok(), k)
        rest, _ = _take(cfg, ByteTok(), total - k, json.loads(json.dumps(pos)))
        assert all(torch.equal(x, y) for x, y in zip(rest, full[k:])), k


@pytest.mark.parametrize('world', [2, 4])
def test_stream_ranks_get_disjoint_shares_of_each_batch(stream_docs, world):
    cfg = _scfg(stream_docs[1], shuffle=True, shuffle_buffer=30)
    fresh = lambda: StreamedData(cfg, ByteTok(), PackedDataset(torch.zeros(0, 24, dtype=torch.long)), dataset=_ds(cfg))
    m = _epoch(cfg) // 8 + 5   # batches: across the end of the first epoch
    one = list(fresh().batches(None, 8, m))
    ranks = [list(fresh().batches(None, 8, m, rank=r, world=world)) for r in range(world)]
    for i, b in enumerate(one):
        parts = [rk[i] for rk in ranks]
        assert all(p.shape == (8 // world, 24) for p in parts) and torch.equal(torch.cat(parts), b)
    with pytest.raises(SsmDistillError, match='cannot be split evenly over 3'): fresh().batches(None, 8, 1, rank=0, world=3)


def test_stream_position_continues_between_calls(stream_docs):
    "A run's stages ask for batches from the position they reached: the packer in use goes on, and a position it is not at starts a new one."
    data = build_data(_scfg(stream_docs[1]), ByteTok())
    first = data.batches(None, 4, 3); a = list(first); at = first.position   # (the position of the packer in use: it moves on)
    second = data.batches(at, 4, 2); b = list(second)
    assert data.packer(second.position) is second.packer
    ref = list(StreamedData(data.cfg, ByteTok(), data.eval, dataset=data.dataset).batches(None, 4, 5))
    assert all(torch.equal(x, y) for x, y in zip(a + b, ref))
    again = list(data.batches(at, 4, 2))   # an older position: re-read, the same blocks
    assert all(torch.equal(x, y) for x, y in zip(again, b))


def test_stream_end_starts_a_new_epoch_with_a_log_line(stream_docs, caplog):
    import logging
    cfg = _scfg(stream_docs[1])
    n = _epoch(cfg)
    with caplog.at_level(logging.INFO, logger='ssm_distill'): _, pos = _take(cfg, ByteTok(), n + 1)
    assert pos['epoch'] == 1 and pos['epoch_blocks'] == 1 and pos['blocks'] == n + 1
    assert any('ended after' in r.getMessage() and 'epoch 1 reads it again from the start' in r.getMessage() for r in caplog.records)


def test_stream_refusals(stream_docs, tmp_path):
    _, path = stream_docs
    with pytest.raises(SsmDistillError, match='set data.eval_blocks'): build_data(_scfg(path, eval_blocks=None), ByteTok())
    from ssm_distill.data import stream_data
    with pytest.raises(SsmDistillError, match='reads a hub split'): stream_data(DataConfig('files', path=path, streaming=True, eval_blocks=2), ByteTok())
    with pytest.raises(SsmDistillError, match='shuffle_buffer=-2'): _scfg(path, shuffle_buffer=-2)
    assert len(build_data(_scfg(path, eval_fraction=0), ByteTok()).eval) == 0   # no held-out documents: none read for them
    tiny = _parquet(tmp_path/'tiny.parquet', ['ab', 'cd'])
    with pytest.raises(SsmDistillError, match='less than one training block'): _take(_scfg(tiny, eval_fraction=0), ByteTok(), 1)
    with pytest.raises(SsmDistillError, match='held-out documents .* give less than one block'):
        build_data(_scfg(tiny, eval_fraction=0.5, split_seed=1), ByteTok())
