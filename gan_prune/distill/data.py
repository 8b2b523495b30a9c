"""The datasets and the loop's batch sources live in gan_prune.data.datasets; this name keeps older imports
working."""
from gan_prune.data.datasets import *  # noqa: F401,F403
