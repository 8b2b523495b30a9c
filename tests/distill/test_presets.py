"""KD methods as presets of KD terms: what each preset resolves to, what the user overrides, the term registry."""
import copy
import json
import os

import pytest
import torch

from gan_prune.defaults import DISTILL
from gan_prune.distill import loop
from gan_prune.distill import losses as L
from gan_prune.distill import presets
from gan_prune.distill import rundir as rd
from gan_prune.distill.terms import KD_TERMS, KDTerm, TermEnv, build_terms, register_term
from gan_prune.errors import GanPruneError

REQUIRED = dict(teacher='t.pkl', student='s.pkl', data='d.zip')

# What each preset runs with when the user gives nothing else (the pinned contract of the presets).
EXPECTED = {
    'nickel-dime': dict(dime='clip:RN50=15,dino-resnet50=20', dime_batch=8, dime_estimator='moments',
                        nickel_weight=10.0, gamma=1.0, lr=0.0025, ds_init='random', teacher_d=True, mirror=True,
                        kd_noise='shared'),
    'cagan': dict(cagan_l1=3.0, cagan_perceptual=3.0, cagan_net='lpips-vgg', cagan_mask='face-parser', gamma=10.0,
                  lr=0.002, ds_init='teacher', teacher_d=False, kd_noise='independent', pl_weight=2.0, mirror=True),
    'none': dict(gamma=1.0, lr=0.0025, ds_init='teacher', teacher_d=False, mirror=True),
}
TERMS = {'nickel-dime': ('dime', 'nickel'), 'cagan': ('cagan',), 'none': ()}


@pytest.mark.parametrize('kd', sorted(EXPECTED))
def test_each_preset_resolves_to_its_pinned_options(kd):
    extra = dict(parser_weights='79999_iter.pth') if kd == 'cagan' else {}
    opts = loop.resolve_options(dict(REQUIRED, kd=kd, **extra))
    assert {k: opts[k] for k in EXPECTED[kd]} == EXPECTED[kd]
    assert presets.get_preset(kd).terms == TERMS[kd]


def test_explicit_options_override_the_preset():
    opts = loop.resolve_options(dict(REQUIRED, kd='cagan', cagan_mask='none', gamma=5.0, teacher_d=True,
                                     kd_noise='shared'))
    assert opts['gamma'] == 5.0 and opts['teacher_d'] is True and opts['kd_noise'] == 'shared'
    assert opts['lr'] == 0.002 and opts['ds_init'] == 'teacher'  # what was not given still comes from the preset
    line = presets.preset_summary(opts, dict(REQUIRED, kd='cagan', gamma=5.0))
    assert line.startswith('--kd cagan') and 'gamma=5.0 (given)' in line and "lr=0.002 (preset)" in line
    assert "cagan_net='lpips-vgg' (default)" in line and 'dime=' not in line  # only what the preset's terms use


def test_preset_errors_are_one_line():
    with pytest.raises(GanPruneError) as e:
        loop.resolve_options(dict(REQUIRED, kd='stylekd'))
    assert '\n' not in str(e.value) and all(name in str(e.value) for name in ('nickel-dime', 'cagan', 'none'))
    with pytest.raises(GanPruneError) as e:  # CAGAN's content mask needs the face parser's weights
        loop.resolve_options(dict(REQUIRED, kd='cagan'))
    msg = str(e.value)
    assert '\n' not in msg and '--parser-weights' in msg and '--cagan-mask none' in msg
    for bad in (dict(kd_noise='sometimes'), dict(dime_batch=0), dict(dime_estimator='mmd', dime_batch=2)):
        with pytest.raises(GanPruneError):
            loop.resolve_options(dict(REQUIRED, **bad))


def test_cli_passes_only_what_the_user_typed(monkeypatch, capsys):
    from gan_prune.cli import main
    seen = {}
    monkeypatch.setattr(loop, 'distill', lambda **kw: seen.update(kw) or 'run')
    main(['distill', '--teacher', 't.pkl', '--student', 's.pkl', '--data', 'd.zip', '--kd', 'cagan', '--lr', '0.001',
          '--no-mirror', '--embed-weights', 'clip:RN50=RN50.pt'])
    assert seen == dict(REQUIRED, kd='cagan', lr=0.001, mirror=False, embed_weights=['clip:RN50=RN50.pt'])


def test_the_run_records_the_resolved_options(tmp_path):
    opts = loop.resolve_options(dict(REQUIRED, kd='none', outdir=str(tmp_path), lr=0.001))
    run_dir, lock = loop._prepare_run_dir(opts)
    lock.release()
    saved = json.loads(open(os.path.join(run_dir, rd.OPTIONS_FILE)).read())
    assert saved['kd'] == 'none' and saved['ds_init'] == 'teacher' and saved['teacher_d'] is False
    assert saved['lr'] == 0.001 and saved['mirror'] is True


def test_distill_help_names_the_release_defaults(capsys):
    from gan_prune.cli import main
    main(['distill', '--help'])
    flat = ' '.join(capsys.readouterr().out.split())
    for part in ('--no-mirror', '--dime-batch', '--kd-noise', 'default: clip:RN50=15,',
                 "the release's", 'lite0=15', 'lpips-vgg', 'default: 8'):
        assert part in flat, part


def test_defaults_are_the_release():
    assert DISTILL['dime'] == 'clip:RN50=15,dino-resnet50=20' and DISTILL['dime_batch'] == 8
    assert DISTILL['mirror'] is True and DISTILL['kd'] == 'nickel-dime'


# ------------------------------------------------------------------------------------------------------------
# The KD-term registry

def test_terms_declare_what_they_need():
    assert {'dime', 'nickel', 'cagan'} <= set(KD_TERMS.names())
    assert KD_TERMS.info('nickel') == dict(phase='DS', trainable=True, needs_teacher_images=False, uses_mask=False)
    assert KD_TERMS.info('cagan') == dict(phase='G', trainable=False, needs_teacher_images=True, uses_mask=True)
    assert KD_TERMS.info('dime')['phase'] == 'G' and not KD_TERMS.info('dime')['trainable']
    for preset in presets.PRESET_TABLE:
        assert all(t in KD_TERMS for t in preset.terms)


def _tiny_generator(seed, cmax=8):
    import dnnlib
    from training import networks
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dnnlib.EasyDict(num_layers=2),
                           synthesis_kwargs=dnnlib.EasyDict(channel_base=16 * cmax, channel_max=cmax))
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(0.5)  # noise visibly changes the image
    return G


def _tiny_discriminator(seed):
    import dnnlib
    from training import networks
    torch.manual_seed(seed)
    return networks.Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=16 * 8, channel_max=8,
                                  epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=2))


class _RecordTeacher(KDTerm):
    """A G-phase term that keeps the images it was given and adds nothing."""
    name, phase, trainable = 'record', 'G', False
    needs_teacher_images = True

    def forward(self, img_s, img_t):
        self.seen = (img_s.detach(), img_t)
        return img_s.sum() * 0, {}


@pytest.mark.parametrize('kd_noise', ['shared', 'independent'])
def test_teacher_images_share_the_student_noise_only_when_asked(kd_noise):
    G = _tiny_generator(0)
    record = _RecordTeacher()
    loss = L.DistillLoss(copy.deepcopy(G).train(), G.eval(), _tiny_discriminator(1), None, terms=[record],
                         style_mixing=0.0, shared_noise=kd_noise == 'shared')
    loss.generator_main(loss.sample_latents(2, torch.zeros([2, 0]), torch.device('cpu')))
    img_s, img_t = record.seen
    # Same weights and latents: the images differ only through the noise inputs (and rounding: the student's
    # pass keeps a graph, the teacher's does not).
    difference = (img_s - img_t).abs().max().item()
    assert difference < 1e-5 if kd_noise == 'shared' else difference > 1e-2


def test_a_new_trainable_term_is_one_class():
    """Registered once, a DS-phase term with parameters is trained with D^S and saved with the run."""
    if 'test-bias' not in KD_TERMS:
        @register_term('test-bias', phase='DS', trainable=True)
        class BiasTerm(KDTerm):
            def __init__(self):
                super().__init__()
                self.bias = torch.nn.Parameter(torch.ones([]))

            @classmethod
            def from_options(cls, opts, env):
                return cls()

            def forward(self, objective, latents):
                value = (self.bias - 3).square()
                return value, {'Loss/DS/test_bias': value.detach().reshape(1)}
    G_t, D_s = _tiny_generator(0), _tiny_discriminator(1)
    env = TermEnv(G_t=G_t, D_s=D_s, device=torch.device('cpu'))
    terms = build_terms(['test-bias'], {}, env)
    loss = L.DistillLoss(_tiny_generator(2, cmax=4), G_t, D_s, None, terms=terms)
    assert list(loss.trainable_terms()) == ['test-bias']
    lat = loss.sample_latents(2, torch.zeros([2, 0]), torch.device('cpu'))
    fake = loss.fake_images(lat)
    value, stats = loss.discriminator_main('DS', fake, lat.c, fake, lat.c, teacher_latents=lat)
    assert 'Loss/DS/test_bias' in stats
    value.backward()
    assert terms[0].bias.grad is not None and terms[0].bias.grad.item() == pytest.approx(-4.0)
