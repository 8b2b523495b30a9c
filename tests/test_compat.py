"""Plugin mode: pointing the toolkit at another stylegan2-ada-pytorch checkout swaps the compatibility modules."""
import shutil
import subprocess
import sys
import textwrap

import pytest

from gan_prune.errors import GanPruneError


def test_rejects_folder_that_is_not_a_checkout(tmp_path):
    from gan_prune import compat
    with pytest.raises(GanPruneError, match='not a stylegan2-ada-pytorch checkout'):
        compat.use_sg2ada_root(str(tmp_path))


def test_plugin_root_is_used_and_gives_same_images(tmp_path, repo_root):
    # A stand-in checkout: a copy of the layer in another folder. Run in a subprocess so this process keeps its modules.
    checkout = tmp_path / 'stylegan2-ada-pytorch'
    shutil.copytree(repo_root / 'third_party' / 'stylegan2_ada', checkout,
                    ignore=shutil.ignore_patterns('*.egg-info', '__pycache__'))
    script = textwrap.dedent(f'''
        import os, torch
        os.environ['STYLEGAN2_ADA_ROOT'] = {str(checkout)!r}
        import gan_prune
        from gan_prune import compat
        import torch_utils, training.networks
        assert torch_utils.__file__.startswith({str(checkout)!r}), torch_utils.__file__
        assert training.networks.__file__.startswith({str(checkout)!r})
        assert compat.describe()['root'] == {str(checkout)!r}
        G = gan_prune.load_network_pkl('builtin:tiny32')['G_ema']
        z = torch.randn([2, G.z_dim], generator=torch.Generator().manual_seed(1))
        torch.save(G(z, None, noise_mode='const'), {str(tmp_path / 'plugin.pt')!r})
    ''')
    subprocess.run([sys.executable, '-c', script], check=True, timeout=300)
    import gan_prune
    import torch
    G = gan_prune.load_network_pkl('builtin:tiny32')['G_ema']
    z = torch.randn([2, G.z_dim], generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.load(tmp_path / 'plugin.pt'), G(z, None, noise_mode='const'))
