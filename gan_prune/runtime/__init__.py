"""Inference for deployment: backends that run a generator (chosen by the caller, never inferred inside a
module's forward) and exporters that write it for other runtimes."""
