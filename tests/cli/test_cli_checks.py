"""Option values are checked while the command line is parsed: a bad one fails with one line before any work."""
import pytest

from gan_prune.cli import main


@pytest.fixture
def no_work(monkeypatch):
    """Make every long-running entry point fail the test if it is reached."""
    import gan_prune.demo.pipeline as demo
    import gan_prune.distill.loop as loop
    import gan_prune.generate as generate
    import gan_prune.prune.pipeline as prune
    from gan_prune.cli import metrics, teacher_stats

    def reached(*args, **kwargs):
        pytest.fail('the work started before the options were checked')
    monkeypatch.setattr(demo, 'run_demo', reached)
    monkeypatch.setattr(generate, 'generate_images', reached)
    monkeypatch.setattr(prune, 'prune', reached)
    monkeypatch.setattr(metrics, '_load_generator', reached)
    monkeypatch.setattr(loop.Trainer, 'setup', reached)
    monkeypatch.setattr(teacher_stats, 'load_network_pkl', reached, raising=False)
    import gan_prune
    monkeypatch.setattr(gan_prune, 'load_network_pkl', reached)


@pytest.mark.parametrize('args, expected', [
    (['demo', '--seeds', '5-1'], '--seeds'),
    (['demo', '--seeds', 'all'], '--seeds'),
    (['demo', '--rate', '1.5'], '--rate'),
    (['demo', '--device', 'gpu0'], '--device'),
    (['generate', '--pkl', 'builtin:tiny32', '--seeds', '1,x'], '--seeds'),
    (['generate', '--pkl', 'builtin:tiny32', '--device', 'tpu'], '--device'),
    (['metrics', '--pkl', 'builtin:tiny32', '--metrics', 'fid,fis'], "'fis'"),
    (['metrics', '--pkl', 'builtin:tiny32', '--detector', 'resnet'], '--detector'),
    (['metrics', '--pkl', 'builtin:tiny32', '--detector', 'inception:/no/such/file.pt'], '/no/such/file.pt'),
    (['teacher-stats', '--pkl', 'builtin:tiny32', '--out', 'x.npz', '--embed', 'vgg16'], '--embed'),
    (['teacher-stats', '--pkl', 'builtin:tiny32', '--out', 'x.npz', '--embed', 'torchscript:/no/f.pt'], '/no/f.pt'),
    (['prune', '--pkl', 'builtin:tiny32', '--out', 'p.pkl', '--ratio', '0'], '--ratio'),
    (['distill', '--teacher', 't.pkl', '--student', 's.pkl', '--data-free', '--metrics', 'fid,nope'], '--metrics'),
    (['distill', '--teacher', 't.pkl', '--student', 's.pkl', '--data-free', '--dime', 'nope=3'], '--dime'),
    (['distill', '--teacher', 't.pkl', '--student', 's.pkl', '--data-free', '--metrics-detector', 'x'],
     '--metrics-detector'),
])
def test_bad_option_fails_at_once_with_one_line(args, expected, no_work, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1
    assert err.startswith('error:') and expected in err and len(err.splitlines()) == 1, err


def test_good_values_pass_the_checks(no_work, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pytest.fail.Exception, match='work started'):
        main(['demo', '--seeds', '0-3,7', '--rate', '0.9', '--device', 'cpu'])
