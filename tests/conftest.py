import pytest


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: opt in with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _engine_cache_in_tmp(tmp_path_factory):
    """Compiled encoder engines and measured memory layouts of the tests go to a temporary cache, not the user's."""
    from lvmlt.features import engines
    from lvmlt.training import layout

    root = tmp_path_factory.mktemp("engines")
    mp = pytest.MonkeyPatch()
    mp.setattr(engines, "cache_root", lambda: root)
    mp.setattr(layout, "cache_file", lambda: root / "layouts.json")  # measured layouts too
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny tensors (``pytest.mark.usefixtures``): a second
    thread only adds contention on a loaded 2-core machine. Restored after the module."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
