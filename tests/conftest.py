"""Shared fixtures: where the golden reference data lives, and deterministic small networks."""
import os
from pathlib import Path

import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')

REPO = Path(__file__).resolve().parents[1]


def golden_root() -> Path:
    """tests/golden in this repository, or $GAN_PRUNE_GOLDEN when set (e.g. a regenerated copy)."""
    env = os.environ.get('GAN_PRUNE_GOLDEN')
    return Path(env) if env else REPO / 'tests' / 'golden'


@pytest.fixture(scope='session')
def golden_dir() -> Path:
    """tests/golden (or $GAN_PRUNE_GOLDEN). In CI its absence is a failure, not a skip."""
    d = golden_root()
    if not (d / 'README.md').is_file():
        if os.environ.get('CI'):
            pytest.fail(f'golden reference data not found at {d}')
        pytest.skip(f'golden reference data not found at {d} (set GAN_PRUNE_GOLDEN)')
    return d


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO


def pytest_sessionstart(session):
    """Build the compiled narrow-layer kernels once, up front, rather than inside whichever test (or CLI
    subprocess) first renders a narrow layer; on a machine without a compiler this only logs why not."""
    from torch_utils.ops import narrow_conv
    narrow_conv.kernels()
