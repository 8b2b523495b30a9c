"""One table of defaults, shared by the Python API and the CLI (the CLI reads its option defaults here).

Each stage owns one section. Values are plain Python data so they can be written to training_options.json.
"""

DOWNLOAD = dict(
    cache_dir=None,            # None: $GAN_PRUNE_CACHE_DIR, else $DNNLIB_CACHE_DIR/gan_prune, else ~/.cache/gan_prune
    num_attempts=3,
    timeout=60,
)

PRUNE = dict(
    criterion='content-aware',
    samples=400,
    batch=8,
    seed=0,
    noise_prob=0.05,
    rate_convention='conv',    # 'conv': synthesis convs + toRGB (method.md sec. 3); 'total': + affine and mapping
)

GENERATE = dict(
    truncation_psi=1.0,
    noise_mode='const',
)

DISTILL = dict()

METRICS = dict(
    metrics='fid',                 # comma list of fid, kid, pr
    detector='effnet-lite0',       # 'effnet-lite0' (offline, bundled) | 'inception' | 'inception:FILE'
    inception_file='inception-2015-12-05.pt',  # looked up under <cache_dir>/detectors/ for plain 'inception'
    num_gen=50000,                 # generated images (StyleGAN2-ADA's fid50k_full convention)
    num_real=None,                 # real images used; None: the whole dataset ("_full")
    num_ref=50000,                 # teacher samples when the reference is a network (--ref-pkl)
    batch=32,                      # images per generator / detector call
    seed=0,                        # generated samples; teacher reference samples use seed + 1 (independent)
    kid_subsets=100,               # KID as in StyleGAN2-ADA: 100 subsets ...
    kid_subset_size=1000,          # ... of at most 1000 samples each
    pr_neighbours=3,               # k of the k-NN radii in precision/recall (Kynkaanniemi et al. 2019)
    cache=True,                    # reuse reference statistics from <cache_dir>/metrics/
)
