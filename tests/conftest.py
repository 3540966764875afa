"""Shared pytest fixtures: where the real data lives, and graph mode for every test."""

from pathlib import Path

import mindspore as ms
import pytest

from src.runtime import prefer_avx2_cpu_kernels

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (real COCO/VOC files, used in place, never copied)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}; the checkout needs ../shared beside it")
    return SHARED_DATA


def pytest_configure(config):
    """CPU and graph mode for the whole session: MindSpore accepts the device only before its first kernel runs,
    and module-scoped fixtures are set up before any per-test fixture."""
    prefer_avx2_cpu_kernels()
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture(autouse=True)
def graph_mode():
    """Every test starts in graph mode and leaves it in graph mode (so the next module's fixtures get it too);
    a test may switch to PyNative for itself."""
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)
