import pytest, torch

@pytest.fixture(scope='module')
def one_thread():
    "Tiny tensors: one intra-op thread avoids OpenMP contention on a shared CPU (a depthwise conv took seconds with 2)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
