"""gan-prune export: ONNX and TorchScript models equal the eager generator, depend on z, and run from the CLI
(ONNX through ONNX Runtime and OpenVINO)."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch

from gan_prune import save_network_pkl
from gan_prune.cli import main
from gan_prune.errors import GanPruneError
from gan_prune.runtime.backends import BACKENDS
from gan_prune.runtime.export import export_onnx, export_torchscript, parse_batch

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')
pytestmark = pytest.mark.slow  # every test exports a network (tens of seconds each on a 2-core CPU)

TOL = 1e-4

HAS_OPENVINO = importlib.util.find_spec('openvino') is not None  # optional: its runs join the others when present
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason='openvino is not installed (pip install openvino)')


def make_generator(architecture='skip', c_dim=0, num_fp16_res=0, seed=0, channel_max=8):
    from training import networks
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=12, c_dim=c_dim, w_dim=10, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=8 * channel_max, channel_max=channel_max,
                                                 architecture=architecture,
                                                 num_fp16_res=num_fp16_res,
                                                 conv_clamp=256 if num_fp16_res else None)).eval()
    with torch.no_grad():  # non-zero noise strengths, biases and w_avg, as in a trained network
        for name, p in G.named_parameters():
            if name.endswith('noise_strength') or name.endswith('.bias'):
                p.add_(torch.rand(p.shape) * 0.2)
        G.mapping.w_avg.copy_(torch.randn(G.w_dim) * 0.3)
    return G.requires_grad_(False)


def make_student(architecture='skip', num_fp16_res=2, channel_max=8):
    """A pruned student: half the channels of every feature map kept (a SlimGenerator), fp16 blocks."""
    from gan_prune.prune.surgery import feature_maps, slice_generator
    G = make_generator(architecture, num_fp16_res=num_fp16_res, seed=1, channel_max=channel_max)
    gen = torch.Generator().manual_seed(0)
    kept = {name: torch.randperm(size, generator=gen)[: max(1, size // 2)].sort().values
            for name, size in feature_maps(G).items()}
    return slice_generator(G, kept).eval().requires_grad_(False)


CONFIGS = {
    'skip': lambda: make_generator('skip'),
    'orig': lambda: make_generator('orig'),
    'resnet-conditional': lambda: make_generator('resnet', c_dim=3),
    'student-fp16-blocks': lambda: make_student('skip'),
}


def inputs(G, seed, batch=3):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([batch, G.z_dim], generator=gen)
    c = torch.eye(max(int(G.c_dim), 1))[torch.arange(batch) % max(int(G.c_dim), 1)][:, :G.c_dim]
    return z, c


def eager(G, z, c, psi, noise_mode='const'):
    with torch.no_grad():
        return G(z, c, truncation_psi=psi, noise_mode=noise_mode, force_fp32=True)


def run_onnx(path, z, c):
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    feeds = {'z': z.numpy()}
    if 'c' in [i.name for i in session.get_inputs()]:
        feeds['c'] = c.numpy()
    return torch.from_numpy(session.run(['img'], feeds)[0])


@pytest.fixture(scope='module', params=list(CONFIGS))
def exported(request, tmp_path_factory):
    """(name, G, onnx path, torchscript path), exported once per configuration, truncation 0.7."""
    G = CONFIGS[request.param]()
    folder = tmp_path_factory.mktemp(request.param)
    onnx_path, ts_path = str(folder / 'G.onnx'), str(folder / 'G.pt')
    export_onnx(G, onnx_path, truncation_psi=0.7)
    export_torchscript(G, ts_path, truncation_psi=0.7)
    return request.param, G, onnx_path, ts_path


def test_onnx_equals_eager(exported):
    name, G, onnx_path, _ = exported
    for seed in range(3):
        z, c = inputs(G, seed, batch=1 + seed)  # dynamic batch: 1, 2, 3
        ref = eager(G, z, c, 0.7)
        out = run_onnx(onnx_path, z, c)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert (out - ref).abs().max().item() < TOL, name


@needs_openvino
def test_openvino_equals_eager(exported):
    """OpenVINO reads the exported file itself; fp32 (not the bfloat16 it picks on some CPUs), any batch."""
    name, G, onnx_path, _ = exported
    run = BACKENDS.build('openvino', onnx_path)
    assert run.input_names == (['z', 'c'] if G.c_dim else ['z'])
    for seed in range(3):
        z, c = inputs(G, seed, batch=1 + seed)  # dynamic batch: 1, 2, 3
        ref = eager(G, z, c, 0.7)
        out = run(z, c, truncation_psi=0.7)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert (out - ref).abs().max().item() < TOL, name


@needs_openvino
def test_openvino_image_depends_on_z_and_takes_a_thread_count(exported):
    _, G, onnx_path, _ = exported
    run = BACKENDS.build('openvino', onnx_path, threads=1)
    assert run.compiled.get_property('INFERENCE_NUM_THREADS') == 1
    from openvino import Type
    assert run.compiled.get_property('INFERENCE_PRECISION_HINT') == Type.f32
    z1, c = inputs(G, 0, batch=2)
    z2, _ = inputs(G, 1, batch=2)
    out1, out2 = run(z1, c, truncation_psi=0.7), run(z2, c, truncation_psi=0.7)
    assert (out1 - out2).abs().mean().item() > 1e-2
    assert (out1[0] - out1[1]).abs().mean().item() > 1e-2
    assert (out1 - BACKENDS.build('openvino', onnx_path, threads=2)(z1, c, truncation_psi=0.7)).abs().max() < TOL


def test_torchscript_equals_eager(exported):
    name, G, _, ts_path = exported
    module = torch.jit.load(ts_path)
    for seed in range(3):
        z, c = inputs(G, seed, batch=1 + seed)
        ref = eager(G, z, c, 0.7)
        with torch.no_grad():
            out = module(z, c) if G.c_dim else module(z)
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() < TOL, name


def test_exported_image_depends_on_z(exported):
    """The defect this exporter fixes: a naive export returned one constant image whatever z was."""
    _, G, onnx_path, ts_path = exported
    z1, c = inputs(G, 0, batch=2)
    z2, _ = inputs(G, 1, batch=2)
    for out1, out2 in ((run_onnx(onnx_path, z1, c), run_onnx(onnx_path, z2, c)),
                       (torch.jit.load(ts_path)(z1, *([c] if G.c_dim else [])),
                        torch.jit.load(ts_path)(z2, *([c] if G.c_dim else [])))):
        assert (out1 - out2).abs().mean().item() > 1e-2
        assert (out1[0] - out1[1]).abs().mean().item() > 1e-2  # the samples of one batch differ too


def test_onnx_metadata_and_interface(exported):
    import onnx
    name, G, onnx_path, _ = exported
    model = onnx.load(onnx_path)
    assert [i.name for i in model.graph.input] == (['z', 'c'] if G.c_dim else ['z'])
    assert [o.name for o in model.graph.output] == ['img']
    assert {o.domain: o.version for o in model.opset_import}.get('', None) == 18
    facts = json.loads({p.key: p.value for p in model.metadata_props}['gan_prune'])
    assert facts['truncation_psi'] == 0.7 and facts['noise_mode'] == 'const' and facts['z_dim'] == 12
    assert facts['c_dim'] == G.c_dim and facts['img_resolution'] == 16


def test_fixed_batch_and_noise_none(tmp_path):
    import onnx
    G = make_generator('skip')
    path = str(tmp_path / 'b2.onnx')
    export_onnx(G, path, batch=2, truncation_psi=1.0, noise_mode='none')
    dims = [d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 12]
    z, c = inputs(G, 5, batch=2)
    assert (run_onnx(path, z, c) - eager(G, z, c, 1.0, 'none')).abs().max().item() < TOL
    if HAS_OPENVINO:
        out = BACKENDS.build('openvino', path)(z, c, noise_mode='none')
        assert (out - eager(G, z, c, 1.0, 'none')).abs().max().item() < TOL


def test_fp16_weight_storage_halves_the_file_and_computes_in_fp32(tmp_path):
    import onnx
    G = make_student(channel_max=64)  # wide enough that the weights are most of the file
    full, half = str(tmp_path / 'full.onnx'), str(tmp_path / 'half.onnx')
    export_onnx(G, full, truncation_psi=0.7)
    export_onnx(G, half, truncation_psi=0.7, fp16_weights=True)
    model = onnx.load(half)
    assert os.path.getsize(half) < 0.7 * os.path.getsize(full)
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    z, c = inputs(G, 0)
    diff = (run_onnx(half, z, c) - eager(G, z, c, 0.7)).abs().max().item()
    assert 0 < diff < 2e-2
    if HAS_OPENVINO:  # float16 weights are cast back to float32, not computed in float16
        out = BACKENDS.build('openvino', half)(z, c, truncation_psi=0.7)
        assert (out - run_onnx(half, z, c)).abs().max().item() < TOL


def test_backends_from_a_module_take_any_truncation():
    G = make_generator('resnet', c_dim=3)
    z, c = inputs(G, 3)
    names = ('onnxruntime', 'torchscript') + (('openvino',) if HAS_OPENVINO else ())
    for name in names:
        run = BACKENDS.build(name, G)
        for psi in (0.5, 1.0):
            assert (run(z, c, truncation_psi=psi) - eager(G, z, c, psi)).abs().max().item() < TOL, (name, psi)


def test_exported_file_refuses_another_truncation(exported):
    _, G, onnx_path, ts_path = exported
    z, c = inputs(G, 0)
    runs = [('onnxruntime', onnx_path), ('torchscript', ts_path)]
    if HAS_OPENVINO:
        runs.append(('openvino', onnx_path))
    for name, path in runs:
        run = BACKENDS.build(name, path, trust=True)  # a TorchScript file is a program: it loads when trusted
        assert run.z_dim == 12 and run.c_dim == G.c_dim
        with pytest.raises(GanPruneError, match='exported with truncation 0.7'):
            run(z, c, truncation_psi=1.0)
        with pytest.raises(GanPruneError, match='noise mode'):
            run(z, c, truncation_psi=0.7, noise_mode='none')


def test_random_noise_and_bad_batch_are_refused():
    with pytest.raises(GanPruneError, match='cannot be exported'):
        export_onnx(make_generator(), '/nonexistent/never.onnx', noise_mode='random')
    assert parse_batch('dynamic') is None and parse_batch('4') == 4
    for bad in ('0', 'many'):
        with pytest.raises(GanPruneError, match='--batch'):
            parse_batch(bad)


# --- command line: export, generate --backend, info

def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def read_png(path):
    import PIL.Image
    return np.asarray(PIL.Image.open(path)).astype(np.int16)


@pytest.fixture(scope='module')
def snapshot(tmp_path_factory):
    folder = tmp_path_factory.mktemp('snapshot')
    from training import networks
    G = make_generator('skip', c_dim=0)
    D = networks.Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=64,
                               channel_max=8).eval().requires_grad_(False)
    path = str(folder / 'G.pkl')
    save_network_pkl(dict(G=G, G_ema=G, D=D, training_set_kwargs=None, augment_pipe=None), path)
    return path


def test_cli_export_generate_and_info(snapshot, tmp_path, capsys):
    onnx_path, ts_path = str(tmp_path / 'G.onnx'), str(tmp_path / 'G.pt')
    main(['export', '--pkl', snapshot, '--out', onnx_path, '--truncation', '0.7'])
    main(['export', '--pkl', snapshot, '--format', 'torchscript', '--out', ts_path, '--truncation', '0.7'])
    capsys.readouterr()
    seeds = '0-2'
    main(['generate', '--pkl', snapshot, '--seeds', seeds, '--trunc', '0.7', '--outdir', str(tmp_path / 'eager'),
          '--device', 'cpu'])
    runs = [('onnx-file', onnx_path, None), ('ts-file', ts_path, None), ('onnxruntime', snapshot, 'onnxruntime')]
    if HAS_OPENVINO:
        runs.append(('openvino-file', onnx_path, 'openvino'))
    for name, src, backend in runs:
        args = ['generate', '--pkl', src, '--seeds', seeds, '--trunc', '0.7', '--outdir', str(tmp_path / name),
                '--device', 'cpu']
        main(args + (['--backend', backend] if backend else [])
             + (['--trust-pickle'] if name == 'ts-file' else []))  # a TorchScript file is a program
        for seed in range(3):
            ref = read_png(tmp_path / 'eager' / f'seed{seed:04d}.png')
            out = read_png(tmp_path / name / f'seed{seed:04d}.png')
            assert np.abs(ref - out).max() <= 2, (name, seed)
    capsys.readouterr()
    main(['info', '--pkl', onnx_path])
    out = capsys.readouterr().out
    assert 'onnx model' in out and 'ai.onnx 18' in out and "z ['batch', 12] float32" in out
    assert "img ['batch', 3, 16, 16] float32" in out and 'truncation 0.7' in out
    main(['info', '--pkl', ts_path, '--json'])
    summary = json.loads(capsys.readouterr().out)
    assert summary['format'] == 'torchscript' and [i['name'] for i in summary['inputs']] == ['z']
    assert summary['size_bytes'] == os.path.getsize(ts_path)


def test_cli_one_line_errors(snapshot, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('GAN_PRUNE_ORT_WEB', raising=False)
    code, _, err = run_cli(['export', '--pkl', snapshot, '--format', 'web', '--out', str(tmp_path / 'web')], capsys)
    assert code == 1 and err.count('\n') == 1 and 'npm pack onnxruntime-web@' in err
    assert not (tmp_path / 'web').exists()
    code, _, err = run_cli(['export', '--pkl', snapshot, '--format', 'torchscript', '--fp16', '--out',
                            str(tmp_path / 'x.pt')], capsys)
    assert code == 1 and '--fp16' in err and err.count('\n') == 1
    code, _, err = run_cli(['generate', '--pkl', snapshot, '--backend', 'onnxrt', '--outdir', str(tmp_path)], capsys)
    assert code == 1 and "did you mean 'onnxruntime'" in err
    onnx_path = str(tmp_path / 'G.onnx')
    export_onnx(make_generator(), onnx_path, truncation_psi=0.5)
    code, _, err = run_cli(['generate', '--pkl', onnx_path, '--backend', 'torchscript', '--outdir', str(tmp_path)],
                           capsys)
    assert code == 1 and '--backend onnxruntime or --backend openvino' in err and err.count('\n') == 1
    code, _, err = run_cli(['generate', '--pkl', onnx_path, '--trunc', '1', '--outdir', str(tmp_path)], capsys)
    assert code == 1 and 'pass --trunc 0.5' in err and err.count('\n') == 1


def test_openvino_missing_says_how_to_install_it_in_one_line(snapshot, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'openvino', None)  # import openvino raises ImportError
    assert 'openvino' in BACKENDS.names()
    onnx_path = str(tmp_path / 'G.onnx')
    export_onnx(make_generator(), onnx_path)
    message = 'the openvino backend needs the openvino package: pip install openvino'
    for source in (onnx_path, make_generator()):
        with pytest.raises(GanPruneError, match=message):
            BACKENDS.build('openvino', source)
    for src in (onnx_path, snapshot):
        code, _, err = run_cli(['generate', '--pkl', src, '--backend', 'openvino', '--outdir', str(tmp_path / 'out'),
                                '--device', 'cpu'], capsys)
        assert code == 1 and err.strip().endswith(message) and err.count('\n') == 1
    assert not (tmp_path / 'out').exists() or not os.listdir(tmp_path / 'out')


def test_export_to_a_folder_is_refused(tmp_path):
    from gan_prune.runtime.export import export_generator
    with pytest.raises(GanPruneError, match='is a folder'):
        export_generator(make_generator(), 'onnx', str(tmp_path))
