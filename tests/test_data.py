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
