import pytest

from gan_prune.errors import GanPruneError
from gan_prune.registry import Registry


def test_register_build_names_and_info():
    things = Registry('thing')

    @things.register('double', trainable=False)
    class Double:
        def __init__(self, x):
            self.value = 2 * x

    assert things.names() == ['double'] and 'double' in things
    assert things.build('double', 3).value == 6
    assert things.info('double') == {'trainable': False}
    things.info('double')['trainable'] = True          # a copy: the registry's facts cannot be edited by callers
    assert things.info('double') == {'trainable': False}


def test_unknown_name_is_one_line_with_a_suggestion():
    things = Registry('criterion')
    things.register('l1-out')(dict)
    with pytest.raises(GanPruneError, match=r"unknown criterion 'l1-ot'; did you mean 'l1-out'\? \(known: l1-out\)"):
        things.get('l1-ot')


def test_a_name_cannot_be_registered_twice():
    things = Registry('thing')
    things.register('a')(dict)
    with pytest.raises(ValueError, match='twice'):
        things.register('a')(list)


def test_unregister_forgets_a_name_so_it_can_be_registered_again():
    things = Registry('thing')
    things.register('a', n=1)(dict)
    things.unregister('a')
    things.unregister('never-registered')  # ignored
    assert 'a' not in things and things.names() == []
    with pytest.raises(GanPruneError, match="unknown thing 'a'"):
        things.info('a')
    things.register('a', n=2)(list)
    assert things.build('a') == [] and things.info('a') == {'n': 2}


def test_embedders_use_the_shared_registry():
    from gan_prune.distill.embedders import EMBEDDERS, build_embedder
    assert isinstance(EMBEDDERS, Registry) and 'effnet-lite0' in EMBEDDERS
    with pytest.raises(GanPruneError, match="unknown embedder 'efnet-lite0'; did you mean 'effnet-lite0'"):
        build_embedder('efnet-lite0')


def test_eager_backend_runs_fp32_on_cpu():
    import torch

    from gan_prune.runtime.backends import BACKENDS

    class Probe(torch.nn.Module):
        z_dim, c_dim = 4, 0

        def forward(self, z, c, truncation_psi=1.0, noise_mode='const', force_fp32=False):
            self.seen = dict(psi=truncation_psi, noise=noise_mode, fp32=force_fp32, c=tuple(c.shape))
            return z

    G = Probe()
    run = BACKENDS.build('eager', G, device='cpu')
    out = run(torch.ones(2, 4), truncation_psi=0.5)
    assert torch.equal(out, torch.ones(2, 4))
    assert G.seen == dict(psi=0.5, noise='const', fp32=True, c=(2, 0))
