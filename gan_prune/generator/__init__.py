"""Generator network utilities: what the toolkit does to the StyleGAN2 generator it compresses.

The slim (pruned) generator, its cost model, and the non-finite parameter checks. Named `generator` so that it
reads apart from `features`, which holds the frozen pretrained networks used as tools.
"""
