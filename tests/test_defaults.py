"""gan_prune.defaults: one value per default."""
import inspect

from gan_prune import defaults
from gan_prune.distill import dime, nickel


def test_nickel_and_dime_defaults_have_one_home():
    # NICKEL['weight'] and NICKEL['resolution'] were never read and contradicted DISTILL's nickel_weight and
    # nickel_res; NICKEL['levels'] and DIME['estimator'] repeated DISTILL. DISTILL holds each value once.
    assert not hasattr(defaults, 'NICKEL')
    assert 'estimator' not in defaults.DIME
    assert inspect.signature(nickel.NickelLoss).parameters['levels'].default == defaults.DISTILL['nickel_levels']
    assert inspect.signature(dime.DiMELoss.build).parameters['estimator'].default == defaults.DISTILL['dime_estimator']
