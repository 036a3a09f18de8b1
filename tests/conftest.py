"""Fixtures shared by several test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: one torch thread is fastest, and several only fight over a busy machine's cores.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: runs a local two-node Slurm (root; ~10 min); only with -m slurm")


def pytest_collection_modifyitems(config, items):
    """The slurm tests start daemons and take minutes: they run only when ``-m`` names them
    (``pytest -m slurm``, as .ci/run does), never as part of the main suite."""
    if "slurm" in (config.option.markexpr or ""):
        return
    keep = [i for i in items if i.get_closest_marker("slurm") is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("slurm")])
        items[:] = keep
