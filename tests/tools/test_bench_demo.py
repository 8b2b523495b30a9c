"""tools/bench_demo.py: every variant changes options that `prune` and `distill` take (its runs are slow)."""
import inspect
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'tools'))
import bench_demo  # noqa: E402


@pytest.mark.parametrize('name', sorted(bench_demo.VARIANTS))
def test_each_variant_names_real_options(name):
    from gan_prune.defaults import DISTILL
    from gan_prune.prune.pipeline import prune
    prune_overrides, distill_overrides = bench_demo.VARIANTS[name]
    assert set(prune_overrides) <= set(inspect.signature(prune).parameters) - {'src', 'out'}
    assert set(distill_overrides) <= set(DISTILL)
    assert name == 'demo' or prune_overrides or distill_overrides  # a variant changes something


def test_an_unknown_variant_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', ['bench_demo.py', '--variants', 'demo,nope', '--no-write'])
    with pytest.raises(SystemExit) as e:
        bench_demo.main()
    assert e.value.code == 2 and "unknown variant 'nope'" in capsys.readouterr().err
