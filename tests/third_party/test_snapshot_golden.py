"""The golden snapshot in the exact on-disk format (module source replaced by a placeholder): the safe loader
rebuilds it from class names and state and reproduces the reference outputs; the trusting loader must fail
with a clear one-line error."""
import json
import pickletools

import numpy as np
import pytest
import torch

import gan_prune
from gan_prune.errors import GanPruneError


@pytest.fixture(scope='module')
def golden(golden_dir):
    ref = np.load(golden_dir / 'net_res32_skip_resnet.npz')
    info = json.loads((golden_dir / 'net_res32_skip_resnet.json').read_text())
    return golden_dir / 'snapshot_format_res32.pkl', {k: ref[k] for k in ref.files}, info


@pytest.fixture(scope='module')
def snapshot(golden):
    return gan_prune.load_network_pkl(str(golden[0]))


def _close(actual: torch.Tensor, ref: np.ndarray, max_abs: float) -> None:
    diff = (actual.detach().float() - torch.from_numpy(ref)).abs().max().item()
    assert diff <= 1e-5 * max(1.0, max_abs), diff


def test_golden_snapshot_stream_is_what_the_readme_says(golden):
    # Guards the premise of the tests below: the placeholder source, protocol 3 and numpy-1.x scalar names.
    path = golden[0]
    with open(path, 'rb') as f:
        ops = list(pickletools.genops(f))
    assert ops[0][0].name == 'PROTO' and ops[0][1] == 3
    found = {arg for op, arg, _ in ops if op.name == 'GLOBAL'}
    assert 'numpy.core.multiarray scalar' in found
    assert 'torch_utils.persistence _reconstruct_persistent_obj' in found


def test_safe_loader_reproduces_reference_outputs(golden, snapshot):
    _, ref, info = golden
    max_abs = info['max_abs']
    assert set(snapshot) == {'G', 'D', 'G_ema', 'training_set_kwargs', 'augment_pipe'}
    z, c = torch.from_numpy(ref['in.z']), torch.from_numpy(ref['in.c'])
    with torch.no_grad():
        for name in ('G_ema', 'G'):  # both hold the reference G weights
            G = snapshot[name]
            ws = G.mapping(z, c)
            _close(ws, ref['out.G.mapping.ws_psi1'], max_abs['out.G.mapping.ws_psi1'])
            img = G.synthesis(ws, noise_mode='const', force_fp32=True)
            _close(img, ref['out.G.synthesis.img_const'], max_abs['out.G.synthesis.img_const'])
        logits = snapshot['D'](torch.from_numpy(ref['out.G.synthesis.img_const']), c, force_fp32=True)
        _close(logits, ref['out.D.logits'], max_abs['out.D.logits'])


def test_safe_loader_restores_state_and_stored_attributes_exactly(golden, snapshot):
    _, ref, info = golden
    for name, ref_name in (('G_ema', 'G'), ('D', 'D'), ('G', 'G')):
        state = snapshot[name].state_dict()
        ref_keys = info[ref_name]['parameter_keys'] + info[ref_name]['buffer_keys']
        assert set(state) == set(ref_keys)
        assert all(torch.equal(state[k], torch.from_numpy(ref[f'{ref_name}.{k}'])) for k in ref_keys)
        assert snapshot[name].init_kwargs == info[ref_name]['init_kwargs']
    G = snapshot['G_ema']
    assert [G.z_dim, G.w_dim, G.num_ws, G.img_resolution] == [32, 32, 8, 32]
    assert list(G.synthesis.block_resolutions) == [4, 8, 16, 32]
    assert type(G.synthesis.b4.conv1.act_gain).__module__ == 'numpy'  # stored attrs come back as pickled
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    tsk = snapshot['training_set_kwargs']
    assert isinstance(tsk, dict) and tsk['class_name'] == 'training.dataset.ImageFolderDataset'


def test_augment_pipe_is_rebuilt(snapshot):
    pipe = snapshot['augment_pipe']
    assert type(pipe).__name__ == 'AugmentPipe'
    assert isinstance(pipe, torch.nn.Module)
    assert pipe.p.item() == pytest.approx(0.125)
    assert pipe.xflip == 1 and pipe.init_kwargs['xflip'] == 1


def test_trusting_loader_fails_with_one_clear_line(golden):
    with pytest.raises(GanPruneError) as info:
        gan_prune.load_network_pkl(str(golden[0]), trust=True)
    message = str(info.value)
    assert '\n' not in message
    assert 'does not define class' in message and 'without --trust-pickle' in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback


def test_saved_golden_snapshot_keeps_everything(snapshot, tmp_path, golden):
    _, ref, info = golden
    out = tmp_path / 'resaved.pkl'
    gan_prune.save_network_pkl(snapshot, out)
    for trust in (False, True):
        again = gan_prune.load_network_pkl(str(out), trust=trust)
        assert again['augment_pipe'].p.item() == pytest.approx(0.125)
        assert again['training_set_kwargs'] == snapshot['training_set_kwargs']
        z, c = torch.from_numpy(ref['in.z']), torch.from_numpy(ref['in.c'])
        with torch.no_grad():
            a = snapshot['G_ema'](z, c, noise_mode='const', force_fp32=True)
            b = again['G_ema'](z, c, noise_mode='const', force_fp32=True)
        assert torch.equal(a, b)
