"""Forged settings in a TensorFlow-format pickle are refused before the network they describe is allocated."""
import copy
import time
import resource

import pytest

from gan_prune.errors import GanPruneError
from gan_prune.io import pickles, unpickler


@pytest.fixture(scope='module')
def tf_nets(golden_dir):
    import legacy  # noqa: F401  (imported here, outside the measured allocations)
    with open(golden_dir / 'tf_legacy_res32.pkl', 'rb') as f:
        return unpickler.safe_load(f)


@pytest.mark.parametrize('kwarg, value', [('resolution', 2 ** 20), ('resolution', 48), ('fmap_max', 10 ** 6),
                                          ('mapping_layers', 10 ** 6), ('mapping_layers', 900), ('latent_size', 10 ** 9),
                                          ('num_channels', 10 ** 9), ('resolution', 'big')])
def test_forged_size_kwargs_are_refused_without_allocating(tf_nets, kwarg, value):
    nets = copy.deepcopy(tf_nets)
    nets[2].static_kwargs = dict(nets[2].static_kwargs, **{kwarg: value})
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; torch memory counts here
    started = time.monotonic()
    with pytest.raises(GanPruneError) as info:
        pickles._convert_tf(nets, 'forged.pkl')
    message = str(info.value)
    assert message.startswith('forged.pkl: ') and '\n' not in message
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 500_000, f'peak memory grew by {grown_kib:,} KiB'
    assert time.monotonic() - started < 60


def test_the_dry_run_accepts_the_real_networks(tf_nets):
    converted = pickles._convert_tf(copy.deepcopy(tf_nets), 'good.pkl')
    assert set(converted) == {'G', 'D', 'G_ema'}
    assert converted['G_ema'].img_resolution == 32
