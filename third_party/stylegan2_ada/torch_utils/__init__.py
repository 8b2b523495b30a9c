"""Utilities and ops that StyleGAN2-ADA network pickles import (persistence, misc, ops, custom_ops)."""
