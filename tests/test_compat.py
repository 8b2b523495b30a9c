"""Plugin mode: pointing the toolkit at another stylegan2-ada-pytorch checkout swaps the compatibility modules."""
import json
import os
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


def test_wrong_root_in_environment_is_one_line_and_not_at_import(tmp_path):
    # In a subprocess: the variable must be read while `gan_prune` is first imported.
    script = textwrap.dedent('''
        import json, sys
        import gan_prune  # must not raise
        from gan_prune.cli import main
        def run(args):
            try:
                main(args)
                return 0
            except SystemExit as e:
                return e.code
        assert run(['--help']) == 0
        assert run(['info', '--help']) == 0
        assert run(['env', '--json']) == 0
        print('INFO-EXIT', run(['info', '--pkl', 'builtin:tiny32']), file=sys.stderr)
        try:
            gan_prune.load_network_pkl('builtin:tiny32')
        except gan_prune.errors.GanPruneError as e:
            print('API', e, file=sys.stderr)
    ''')
    env = dict(os.environ, STYLEGAN2_ADA_ROOT=str(tmp_path / 'no-such-checkout'))
    proc = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout[proc.stdout.index('\n{') + 1:])
    assert report['compat']['implementation'] == 'bundled clean-room layer'
    assert 'STYLEGAN2_ADA_ROOT' in report['compat']['problem'] and 'no-such-checkout' in report['compat']['problem']
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'STYLEGAN2_ADA_ROOT' in errors[0] and 'no-such-checkout' in errors[0]
    assert 'INFO-EXIT 1' in proc.stderr and 'Traceback' not in proc.stderr
    assert 'API $STYLEGAN2_ADA_ROOT' in proc.stderr


def test_wrong_root_option_is_one_line_and_env_reports_it(tmp_path, capsys):
    from gan_prune.cli import main
    with pytest.raises(SystemExit) as e:
        main(['--sg2ada-root', str(tmp_path), 'info', '--pkl', 'builtin:tiny32'])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith('error: --sg2ada-root') and len(err.strip().splitlines()) == 1
    main(['--sg2ada-root', str(tmp_path), 'env'])
    out = capsys.readouterr().out
    assert 'not used: --sg2ada-root' in out and 'bundled clean-room layer' in out
    main(['info', '--pkl', 'builtin:tiny32'])  # the next invocation without the option is not affected
    assert 'generator:' in capsys.readouterr().out
