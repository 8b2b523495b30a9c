"""tools/bench_demo.py: every variant changes options that `prune` and `distill` take (its runs are slow)."""
import inspect
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'tools'))
import bench_demo  # noqa: E402


@pytest.mark.parametrize('name', sorted(bench_demo.VARIANTS))
def test_each_variant_names_real_options(name):
    from gan_prune.defaults import DEMO, DISTILL, PRUNE
    from gan_prune.prune.pipeline import prune
    prune_overrides, distill_overrides = bench_demo.VARIANTS[name]
    assert set(prune_overrides) <= set(inspect.signature(prune).parameters) - {'src', 'out'}
    assert set(distill_overrides) <= set(DISTILL)
    # Every other variant changes something the demo would otherwise run.
    changed = [k for k, v in prune_overrides.items() if v != DEMO.get(k, PRUNE.get(k))]
    changed += [k for k, v in distill_overrides.items() if v != DEMO.get(k, DISTILL.get(k))]
    assert bool(changed) == (name != 'demo') and len(changed) == len(prune_overrides) + len(distill_overrides)


def test_an_unknown_variant_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', ['bench_demo.py', '--variants', 'demo,nope', '--no-write'])
    with pytest.raises(SystemExit) as e:
        bench_demo.main()
    assert e.value.code == 2 and "unknown variant 'nope'" in capsys.readouterr().err
