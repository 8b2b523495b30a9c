"""Loading StyleGAN2-ADA network pickles: native PyTorch snapshots and TensorFlow-era pickles.

`load_network_pkl` is the trusting loader of the original toolkit: unpickling a native snapshot executes
the network source code embedded in it. Only use it on files you trust; gan_prune's
`gan_prune.load_network_pkl` rebuilds networks from its own classes instead.

TensorFlow pickles, a tuple (G, D, Gs) of `dnnlib.tflib.network.Network` objects, are converted to the
PyTorch networks of `training.networks`.

Also a command line tool:
    python legacy.py --source=SOURCE.pkl --dest=DEST.pkl [--force-fp16=True]
"""
from __future__ import annotations

import copy
import os
import pickle
import re
import tempfile
from typing import Any, BinaryIO, Callable

import click
import numpy as np
import torch

import dnnlib

# ------------------------------------------------------------------------------------------------------------
# Loading


class _TFNetworkStub(dnnlib.EasyDict):
    """Stands in for dnnlib.tflib.network.Network; the pickled state lands in its __dict__."""


class _LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == 'dnnlib.tflib.network' and name == 'Network':
            return _TFNetworkStub
        return super().find_class(module, name)


def load_network_pkl(f: BinaryIO, force_fp16: bool = False) -> dict:
    """Read a network pickle from the binary file `f`.

    Returns a dict with G, D, G_ema (torch Modules), training_set_kwargs (dict or None), augment_pipe
    (Module or None) and any further keys the pickle holds. force_fp16=True rebuilds the networks with
    num_fp16_res=4 and conv_clamp=256.
    """
    data = _LegacyUnpickler(f).load()

    # TensorFlow pickle: a tuple (G, D, Gs) of Network objects.
    if isinstance(data, tuple) and len(data) == 3 and all(isinstance(net, _TFNetworkStub) for net in data):
        tf_G, tf_D, tf_Gs = data
        G = convert_tf_generator(tf_G)
        D = convert_tf_discriminator(tf_D)
        G_ema = convert_tf_generator(tf_Gs)
        data = dict(G=G, D=D, G_ema=G_ema)

    if 'training_set_kwargs' not in data:
        data['training_set_kwargs'] = None
    if 'augment_pipe' not in data:
        data['augment_pipe'] = None

    assert isinstance(data['G'], torch.nn.Module)
    assert isinstance(data['D'], torch.nn.Module)
    assert isinstance(data['G_ema'], torch.nn.Module)
    assert isinstance(data['training_set_kwargs'], (dict, type(None)))
    assert isinstance(data['augment_pipe'], (torch.nn.Module, type(None)))

    if force_fp16:
        for key in ['G', 'D', 'G_ema']:
            data[key] = rebuild_with_fp16(data[key], is_generator=(key != 'D'))
    return data


def rebuild_with_fp16(old: torch.nn.Module, is_generator: bool) -> torch.nn.Module:
    """The same network built with num_fp16_res=4 and conv_clamp=256 (unchanged if it already has them).

    Rebuilds from init_kwargs, so it needs init kwargs that describe the real tensor shapes.
    """
    from torch_utils import misc

    kwargs = copy.deepcopy(old.init_kwargs)
    if is_generator:
        fp16_kwargs = dnnlib.EasyDict(kwargs.get('synthesis_kwargs', {}))
        kwargs['synthesis_kwargs'] = fp16_kwargs
    else:
        fp16_kwargs = kwargs
    fp16_kwargs['num_fp16_res'] = 4
    fp16_kwargs['conv_clamp'] = 256
    if kwargs == old.init_kwargs:
        return old
    new = type(old)(*old.init_args, **kwargs).eval().requires_grad_(False)
    misc.copy_params_and_buffers(old, new, require_all=True)
    return new


# ------------------------------------------------------------------------------------------------------------
# TensorFlow conversion

# Accepted in TF static kwargs but without effect on the PyTorch networks.
_IGNORED_TF_KWARGS = {
    'G': {'truncation_psi', 'truncation_cutoff', 'style_mixing_prob', 'structure'},
    'D': {'structure'},
}


class _KwargReader:
    """Reads TF static kwargs by name and remembers which names were consumed."""

    def __init__(self, static_kwargs: dict, ignored: set[str]):
        self.static_kwargs = dict(static_kwargs)
        self.known = set(ignored)

    def __call__(self, tf_name: str, default: Any = None, none: Any = None) -> Any:
        self.known.add(tf_name)
        value = self.static_kwargs.get(tf_name, default)
        return value if value is not None else none

    def check_unknown(self) -> None:
        for name in self.static_kwargs:
            if name not in self.known:
                raise ValueError('Unknown TensorFlow kwarg', name)


def _check_tf_version(tf_net: Any) -> None:
    if tf_net.version < 4:
        raise ValueError('TensorFlow pickle version too low')


def _collect_tf_params(tf_net: Any, prefix: str = '') -> dict[str, np.ndarray]:
    """Every variable of a TF network and its components, named '<component>/<variable>'."""
    params: dict[str, np.ndarray] = {}
    for name, value in tf_net.variables:
        params[prefix + name] = value
    for component_name, component in tf_net.components.items():
        params.update(_collect_tf_params(component, prefix=prefix + component_name + '/'))
    return params


def _conv_weight(value: np.ndarray, flip: bool = False) -> np.ndarray:
    # TF [kh, kw, in, out] -> PyTorch [out, in, kh, kw]; resampling convs were stored with flipped taps.
    if flip:
        value = value[::-1, ::-1]
    return value.transpose(3, 2, 0, 1)


def _populate_module(module: torch.nn.Module, rules: list[tuple[str, Callable[..., np.ndarray | None]]]) -> None:
    """Fill every parameter and buffer of `module` from the first rule whose regex matches its full name.

    A rule's function receives the regex groups and returns the array (None: keep the constructed value).
    """
    compiled = [(re.compile(pattern), fn) for pattern, fn in rules]
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, tensor in tensors:
        for regex, fn in compiled:
            match = regex.fullmatch(name)
            if match is None:
                continue
            value = fn(*match.groups())
            if value is not None:
                src = torch.from_numpy(np.array(value))
                if list(src.shape) != list(tensor.shape):
                    raise ValueError(f'TensorFlow variable for {name} has shape {list(src.shape)}, '
                                     f'expected {list(tensor.shape)}')
                with torch.no_grad():
                    tensor.copy_(src)
            break
        else:
            raise ValueError(f'no TensorFlow variable for {name} {list(tensor.shape)}')


def convert_tf_generator(tf_G: Any) -> torch.nn.Module:
    """A training.networks.Generator with the weights and configuration of a TF StyleGAN2(-ADA) generator."""
    _check_tf_version(tf_G)
    kwarg = _KwargReader(tf_G.static_kwargs, _IGNORED_TF_KWARGS['G'])
    kwargs = dnnlib.EasyDict(
        z_dim=kwarg('latent_size', 512),
        c_dim=kwarg('label_size', 0),
        w_dim=kwarg('dlatent_size', 512),
        img_resolution=kwarg('resolution', 1024),
        img_channels=kwarg('num_channels', 3),
        mapping_kwargs=dnnlib.EasyDict(
            num_layers=kwarg('mapping_layers', 8),
            embed_features=kwarg('label_fmaps', None),
            layer_features=kwarg('mapping_fmaps', None),
            activation=kwarg('mapping_nonlinearity', 'lrelu'),
            lr_multiplier=kwarg('mapping_lrmul', 0.01),
            w_avg_beta=kwarg('w_avg_beta', 0.995, none=1),
        ),
        synthesis_kwargs=dnnlib.EasyDict(
            channel_base=kwarg('fmap_base', 16384) * 2,
            channel_max=kwarg('fmap_max', 512),
            num_fp16_res=kwarg('num_fp16_res', 0),
            conv_clamp=kwarg('conv_clamp', None),
            architecture=kwarg('architecture', 'skip'),
            resample_filter=kwarg('resample_kernel', [1, 3, 3, 1]),
            use_noise=kwarg('use_noise', True),
            activation=kwarg('nonlinearity', 'lrelu'),
        ),
    )
    kwarg.check_unknown()

    tf_params = _collect_tf_params(tf_G)

    from training import networks
    G = networks.Generator(**kwargs).eval().requires_grad_(False)

    def noise_index(r: str, offset: int) -> int:
        return 2 * int(np.log2(int(r))) - offset

    p = tf_params
    _populate_module(G, [
        (r'mapping\.w_avg', lambda: p['dlatent_avg']),
        (r'mapping\.embed\.weight', lambda: p['mapping/LabelEmbed/weight'].transpose()),
        (r'mapping\.embed\.bias', lambda: p['mapping/LabelEmbed/bias']),
        (r'mapping\.fc(\d+)\.weight', lambda i: p[f'mapping/Dense{i}/weight'].transpose()),
        (r'mapping\.fc(\d+)\.bias', lambda i: p[f'mapping/Dense{i}/bias']),
        (r'synthesis\.b4\.const', lambda: p['synthesis/4x4/Const/const'][0]),
        (r'synthesis\.b4\.conv1\.weight', lambda: _conv_weight(p['synthesis/4x4/Conv/weight'])),
        (r'synthesis\.b4\.conv1\.bias', lambda: p['synthesis/4x4/Conv/bias']),
        (r'synthesis\.b4\.conv1\.noise_const', lambda: p['synthesis/noise0'][0, 0]),
        (r'synthesis\.b4\.conv1\.noise_strength', lambda: p['synthesis/4x4/Conv/noise_strength']),
        (r'synthesis\.b4\.conv1\.affine\.weight', lambda: p['synthesis/4x4/Conv/mod_weight'].transpose()),
        (r'synthesis\.b4\.conv1\.affine\.bias', lambda: p['synthesis/4x4/Conv/mod_bias'] + 1),
        (r'synthesis\.b(\d+)\.conv0\.weight',
         lambda r: _conv_weight(p[f'synthesis/{r}x{r}/Conv0_up/weight'], flip=True)),
        (r'synthesis\.b(\d+)\.conv0\.bias', lambda r: p[f'synthesis/{r}x{r}/Conv0_up/bias']),
        (r'synthesis\.b(\d+)\.conv0\.noise_const', lambda r: p[f'synthesis/noise{noise_index(r, 5)}'][0, 0]),
        (r'synthesis\.b(\d+)\.conv0\.noise_strength', lambda r: p[f'synthesis/{r}x{r}/Conv0_up/noise_strength']),
        (r'synthesis\.b(\d+)\.conv0\.affine\.weight',
         lambda r: p[f'synthesis/{r}x{r}/Conv0_up/mod_weight'].transpose()),
        (r'synthesis\.b(\d+)\.conv0\.affine\.bias', lambda r: p[f'synthesis/{r}x{r}/Conv0_up/mod_bias'] + 1),
        (r'synthesis\.b(\d+)\.conv1\.weight', lambda r: _conv_weight(p[f'synthesis/{r}x{r}/Conv1/weight'])),
        (r'synthesis\.b(\d+)\.conv1\.bias', lambda r: p[f'synthesis/{r}x{r}/Conv1/bias']),
        (r'synthesis\.b(\d+)\.conv1\.noise_const', lambda r: p[f'synthesis/noise{noise_index(r, 4)}'][0, 0]),
        (r'synthesis\.b(\d+)\.conv1\.noise_strength', lambda r: p[f'synthesis/{r}x{r}/Conv1/noise_strength']),
        (r'synthesis\.b(\d+)\.conv1\.affine\.weight', lambda r: p[f'synthesis/{r}x{r}/Conv1/mod_weight'].transpose()),
        (r'synthesis\.b(\d+)\.conv1\.affine\.bias', lambda r: p[f'synthesis/{r}x{r}/Conv1/mod_bias'] + 1),
        (r'synthesis\.b(\d+)\.torgb\.weight', lambda r: _conv_weight(p[f'synthesis/{r}x{r}/ToRGB/weight'])),
        (r'synthesis\.b(\d+)\.torgb\.bias', lambda r: p[f'synthesis/{r}x{r}/ToRGB/bias']),
        (r'synthesis\.b(\d+)\.torgb\.affine\.weight', lambda r: p[f'synthesis/{r}x{r}/ToRGB/mod_weight'].transpose()),
        (r'synthesis\.b(\d+)\.torgb\.affine\.bias', lambda r: p[f'synthesis/{r}x{r}/ToRGB/mod_bias'] + 1),
        (r'synthesis\.b(\d+)\.skip\.weight', lambda r: _conv_weight(p[f'synthesis/{r}x{r}/Skip/weight'], flip=True)),
        (r'.*\.resample_filter', lambda: None),
    ])
    return G


def convert_tf_discriminator(tf_D: Any) -> torch.nn.Module:
    """A training.networks.Discriminator with the weights and configuration of a TF StyleGAN2(-ADA) D."""
    _check_tf_version(tf_D)
    kwarg = _KwargReader(tf_D.static_kwargs, _IGNORED_TF_KWARGS['D'])

    tf_params = _collect_tf_params(tf_D)
    resolution = kwarg('resolution', 1024)
    architecture = kwarg('architecture', 'resnet')
    # Progressive-growing era: per-LOD FromRGB layers at top level become the per-block fromrgb layers.
    for name, value in list(tf_params.items()):
        match = re.fullmatch(r'FromRGB_lod(\d+)/(.*)', name)
        if match:
            r = resolution >> int(match.group(1))
            tf_params[f'{r}x{r}/FromRGB/{match.group(2)}'] = value
            architecture = 'orig'

    kwargs = dnnlib.EasyDict(
        c_dim=kwarg('label_size', 0),
        img_resolution=resolution,
        img_channels=kwarg('num_channels', 3),
        architecture=architecture,
        channel_base=kwarg('fmap_base', 16384) * 2,
        channel_max=kwarg('fmap_max', 512),
        num_fp16_res=kwarg('num_fp16_res', 0),
        conv_clamp=kwarg('conv_clamp', None),
        cmap_dim=kwarg('mapping_fmaps', None),
        block_kwargs=dnnlib.EasyDict(
            activation=kwarg('nonlinearity', 'lrelu'),
            resample_filter=kwarg('resample_kernel', [1, 3, 3, 1]),
            freeze_layers=kwarg('freeze_layers', 0),
        ),
        mapping_kwargs=dnnlib.EasyDict(
            num_layers=kwarg('mapping_layers', 0),
            embed_features=kwarg('mapping_fmaps', None),
            layer_features=kwarg('mapping_fmaps', None),
            activation=kwarg('nonlinearity', 'lrelu'),
            lr_multiplier=kwarg('mapping_lrmul', 0.1),
        ),
        epilogue_kwargs=dnnlib.EasyDict(
            mbstd_group_size=kwarg('mbstd_group_size', None),
            mbstd_num_channels=kwarg('mbstd_num_features', 1),
            activation=kwarg('nonlinearity', 'lrelu'),
        ),
    )
    kwarg.check_unknown()

    from training import networks
    D = networks.Discriminator(**kwargs).eval().requires_grad_(False)

    p = tf_params
    _populate_module(D, [
        (r'b(\d+)\.fromrgb\.weight', lambda r: _conv_weight(p[f'{r}x{r}/FromRGB/weight'])),
        (r'b(\d+)\.fromrgb\.bias', lambda r: p[f'{r}x{r}/FromRGB/bias']),
        (r'b(\d+)\.conv(\d)\.weight', lambda r, i: _conv_weight(p[f'{r}x{r}/Conv{i}{["", "_down"][int(i)]}/weight'])),
        (r'b(\d+)\.conv(\d)\.bias', lambda r, i: p[f'{r}x{r}/Conv{i}{["", "_down"][int(i)]}/bias']),
        (r'b(\d+)\.skip\.weight', lambda r: _conv_weight(p[f'{r}x{r}/Skip/weight'])),
        (r'mapping\.embed\.weight', lambda: p['LabelEmbed/weight'].transpose()),
        (r'mapping\.embed\.bias', lambda: p['LabelEmbed/bias']),
        (r'mapping\.fc(\d+)\.weight', lambda i: p[f'Mapping{i}/weight'].transpose()),
        (r'mapping\.fc(\d+)\.bias', lambda i: p[f'Mapping{i}/bias']),
        (r'b4\.conv\.weight', lambda: _conv_weight(p['4x4/Conv/weight'])),
        (r'b4\.conv\.bias', lambda: p['4x4/Conv/bias']),
        (r'b4\.fc\.weight', lambda: p['4x4/Dense0/weight'].transpose()),
        (r'b4\.fc\.bias', lambda: p['4x4/Dense0/bias']),
        (r'b4\.out\.weight', lambda: p['Output/weight'].transpose()),
        (r'b4\.out\.bias', lambda: p['Output/bias']),
        (r'.*\.resample_filter', lambda: None),
    ])
    return D


# ------------------------------------------------------------------------------------------------------------
# Command line


@click.command()
@click.option('--source', help='Input pickle (path or URL)', required=True, metavar='PATH')
@click.option('--dest', help='Output pickle', required=True, metavar='PATH')
@click.option('--force-fp16', help='Rebuild the networks with num_fp16_res=4 and conv_clamp=256', type=bool,
              default=False, show_default=True, metavar='BOOL')
def convert_network_pickle(source: str, dest: str, force_fp16: bool) -> None:
    """Convert a network pickle (TensorFlow or PyTorch) to a PyTorch snapshot.

    \b
    Example:
      python legacy.py --source=stylegan2-ffhq-config-f.pkl --dest=stylegan2-ffhq-config-f-pt.pkl
    """
    print(f'Loading "{source}"...')
    with dnnlib.util.open_url(source) as f:
        data = load_network_pkl(f, force_fp16=force_fp16)
    print(f'Saving "{dest}"...')
    dest_dir = os.path.dirname(os.path.abspath(dest))
    fd, tmp_path = tempfile.mkstemp(dir=dest_dir, prefix=os.path.basename(dest) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            pickle.dump(data, f)
        os.replace(tmp_path, dest)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    print('Done.')


if __name__ == '__main__':
    convert_network_pickle()  # pylint: disable=no-value-for-parameter
