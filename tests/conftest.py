import pytest, torch

@pytest.fixture(scope='module')
def one_thread():
    "Tiny tensors: one intra-op thread avoids OpenMP contention on a shared CPU (a depthwise conv took seconds with 2)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def stream_file(tmp_path_factory):
    "A local stand-in of a hub split: three hundred short documents (first lines of the built-in corpus) in a parquet file with a `text` column, about 280 training blocks of 32 tokens."
    pa = pytest.importorskip('pyarrow'); pq = pytest.importorskip('pyarrow.parquet')
    from ssm_distill.data import load_builtin_corpus
    path = tmp_path_factory.mktemp('stream')/'docs.parquet'
    pq.write_table(pa.table({'text': [d.split('\n')[0][:60] for d in load_builtin_corpus()[:300]]}), path)
    return path
