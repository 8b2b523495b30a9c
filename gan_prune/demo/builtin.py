"""The builtin: networks live in gan_prune.io.builtin; this name keeps older imports working."""
from gan_prune.io.builtin import *  # noqa: F401,F403
