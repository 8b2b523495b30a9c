"""The release's weights files: where they come from, the checked download into the cache, the offline message."""
import hashlib
import os

import pytest
import torch

from gan_prune import defaults
from gan_prune.distill import official_weights as ow
from gan_prune.errors import GanPruneError
from gan_prune.features import torchscript


def serve_files(serve_http, files):
    """A local server (the serve_http fixture) answering each {path: bytes} with 200 and counting requests."""
    return serve_http({path: (200, body, None) for path, body in files.items()})


@pytest.fixture
def no_local_files(tmp_path, monkeypatch):
    """An empty cache and empty weights folders, so nothing is found by accident."""
    monkeypatch.setenv('GAN_PRUNE_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setenv('GAN_PRUNE_WEIGHTS', str(tmp_path / 'weights'))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(defaults.DOWNLOAD, 'retry_delay', 0.0)
    return tmp_path


@pytest.fixture
def online(monkeypatch):
    for var in ow.OFFLINE_ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')


def _state_bytes(tmp_path, seed):
    torch.manual_seed(seed)
    path = tmp_path / f'state{seed}.pth'
    torch.save({'w': torch.randn(64)}, path)
    return path.read_bytes()


def test_clip_rn50_checksum_comes_from_its_url_and_is_the_known_one():
    entry = ow.official_files()['clip:RN50']
    assert entry.url.endswith('/RN50.pt') and entry.url.startswith('https://openaipublic.azureedge.net/clip/models/')
    assert torchscript.KNOWN_TORCHSCRIPT_SHA256[entry.sha256] == 'RN50.pt (OpenAI CLIP)'
    dino = ow.official_files()['dino-resnet50']
    assert dino.sha256 is None and dino.check.startswith('length only')  # no published checksum, and it says so
    assert ow.official_files()['vgg16'].sha256_prefix == '397923af'


def test_offline_without_the_files_is_one_line_naming_both(no_local_files, offline):
    with pytest.raises(GanPruneError) as e:
        ow.resolve_embed_weights(['clip:RN50', 'dino-resnet50'], [])
    msg = str(e.value)
    assert '\n' not in msg and 'offline' in msg
    for part in ('RN50.pt', 'dino_resnet50_pretrain.pth', 'openaipublic.azureedge.net', 'dl.fbaipublicfiles.com',
                 '--embed-weights clip:RN50=', '--embed-weights dino-resnet50=', '--dime effnet-lite0=15'):
        assert part in msg, part


def test_given_files_are_used_and_nothing_is_fetched(no_local_files, offline):
    given = ['clip:RN50=/my/RN50.pt', 'dino-resnet50=/my/dino.pth']
    assert ow.resolve_embed_weights(['clip:RN50', 'dino-resnet50'], given) == given
    assert ow.resolve_embed_weights(['effnet-lite0:96'], []) == []  # ships with a package: nothing to fetch


def test_files_of_the_release_name_in_the_weights_folder_are_found(no_local_files, offline):
    folder = no_local_files / 'weights'
    folder.mkdir()
    (folder / 'dino_resnet50_pretrain.pth').write_bytes(b'x')
    with pytest.raises(GanPruneError) as e:  # RN50.pt is still missing: only it is named
        ow.resolve_embed_weights(['clip:RN50', 'dino-resnet50'], [])
    assert 'RN50.pt' in str(e.value) and 'dino_resnet50_pretrain.pth' not in str(e.value)
    (folder / 'RN50.pt').write_bytes(b'y')
    assert ow.resolve_embed_weights(['clip:RN50', 'dino-resnet50'], []) == [
        f'clip:RN50={folder / "RN50.pt"}', f'dino-resnet50={folder / "dino_resnet50_pretrain.pth"}']


def test_download_once_into_the_cache_with_checksums(no_local_files, online, monkeypatch, capsys, serve_http):
    clip_bytes, dino_bytes = _state_bytes(no_local_files, 0), _state_bytes(no_local_files, 1)
    clip_sha = hashlib.sha256(clip_bytes).hexdigest()
    server = serve_files(serve_http, {f'/clip/models/{clip_sha}/RN50.pt': clip_bytes,
                                      '/dino/dino_resnet50_pretrain.pth': dino_bytes})
    monkeypatch.setattr(ow, 'clip_rn50_url', lambda: f'{server.base}/clip/models/{clip_sha}/RN50.pt')
    monkeypatch.setattr(ow, 'DINO_RESNET50_URL', f'{server.base}/dino/dino_resnet50_pretrain.pth')
    entries = ow.resolve_embed_weights(['clip:RN50', 'dino-resnet50'], [], progress=False)
    paths = dict(e.split('=', 1) for e in entries)
    assert open(paths['clip:RN50'], 'rb').read() == clip_bytes
    assert open(paths['dino-resnet50'], 'rb').read() == dino_bytes
    assert paths['clip:RN50'].startswith(str(no_local_files / 'cache'))
    out = capsys.readouterr().out
    assert f'sha256 {clip_sha}' in out and 'no published checksum' in out
    assert hashlib.sha256(dino_bytes).hexdigest() in out  # the DINO file's checksum is printed for the record
    # A second run uses the cache, even offline.
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    assert ow.resolve_embed_weights(['clip:RN50', 'dino-resnet50'], [], progress=False) == entries
    assert sum(server.hits.values()) == 2


def test_a_file_that_fails_its_checksum_never_stays_in_the_cache(no_local_files, online, monkeypatch, serve_http):
    good, bad = _state_bytes(no_local_files, 0), _state_bytes(no_local_files, 1)
    sha = hashlib.sha256(good).hexdigest()
    server = serve_files(serve_http, {f'/{sha}/RN50.pt': bad, '/vgg16.pth': bad})
    monkeypatch.setattr(ow, 'clip_rn50_url', lambda: f'{server.base}/{sha}/RN50.pt')
    monkeypatch.setattr(ow, 'VGG16_URL', f'{server.base}/vgg16.pth')
    with pytest.raises(GanPruneError, match='checksum mismatch') as e:
        ow.fetch('clip:RN50', progress=False)
    assert '\n' not in str(e.value) and '--embed-weights clip:RN50=RN50.pt' in str(e.value)
    with pytest.raises(GanPruneError, match='sha256 starting 397923af'):
        ow.fetch('vgg16', progress=False)
    cache = no_local_files / 'cache' / 'downloads'
    assert not cache.exists() or os.listdir(cache) == []
    # torchvision-style prefix: a file whose sha256 starts with the published prefix is kept.
    monkeypatch.setattr(ow, 'VGG16_SHA256_PREFIX', hashlib.sha256(bad).hexdigest()[:8])
    path = ow.fetch('vgg16', progress=False)
    assert open(path, 'rb').read() == bad


def test_distill_offline_with_the_default_dime_stops_with_one_line(no_local_files, offline, capsys):
    from gan_prune.cli import main
    with pytest.raises(SystemExit) as e:
        main(['distill', '--teacher', 't.pkl', '--student', 's.pkl', '--data', 'd.zip'])
    assert e.value.code == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith('error:') and '\n' not in err
    assert 'RN50.pt' in err and 'dino_resnet50_pretrain.pth' in err and '--dime effnet-lite0=15' in err
    assert captured.out.startswith('--kd nickel-dime')  # the preset's summary came first
    assert not os.path.exists(no_local_files / 'runs')  # nothing was written


def test_the_run_records_the_files_it_fetched(no_local_files, online, monkeypatch, serve_http):
    from gan_prune.distill import loop
    payload = _state_bytes(no_local_files, 2)
    monkeypatch.setattr(ow, 'VGG16_SHA256_PREFIX', hashlib.sha256(payload).hexdigest()[:8])
    clip_sha = hashlib.sha256(payload).hexdigest()
    server = serve_files(serve_http, {'/vgg16.pth': payload, f'/{clip_sha}/RN50.pt': payload, '/dino.pth': payload})
    monkeypatch.setattr(ow, 'VGG16_URL', f'{server.base}/vgg16.pth')
    monkeypatch.setattr(ow, 'clip_rn50_url', lambda: f'{server.base}/{clip_sha}/RN50.pt')
    monkeypatch.setattr(ow, 'DINO_RESNET50_URL', f'{server.base}/dino.pth')
    required = dict(teacher='t.pkl', student='s.pkl', data='d.zip')
    cagan = loop.fetch_weights(loop.resolve_options(dict(required, kd='cagan', cagan_mask='none')), progress=False)
    assert cagan['cagan_net'].startswith('lpips-vgg:') and os.path.isfile(cagan['cagan_net'].split(':', 1)[1])
    assert cagan['embed_weights'] == []  # --kd cagan runs no DiME: nothing fetched for it
    method = loop.fetch_weights(loop.resolve_options(dict(required, embed_weights=['dino-resnet50=/my/dino.pth'])),
                                progress=False)
    entries = dict(e.split('=', 1) for e in method['embed_weights'])
    assert entries['dino-resnet50'] == '/my/dino.pth' and os.path.isfile(entries['clip:RN50'])
    assert method['cagan_net'] == 'lpips-vgg'
    assert sorted(server.hits.elements()) == sorted(['/vgg16.pth', f'/{clip_sha}/RN50.pt'])


def test_teacher_stats_finds_the_official_files_as_distill_does(no_local_files, offline, capsys):
    from gan_prune.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(['teacher-stats', '--pkl', 'builtin:teacher', '--embed', 'clip:RN50,dino-resnet50', '--out',
              str(no_local_files / 'stats.npz')])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'RN50.pt' in err and 'dino_resnet50_pretrain.pth' in err
    assert not (no_local_files / 'stats.npz').exists()
