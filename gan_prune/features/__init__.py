"""Frozen feature networks: pretrained elsewhere, never trained here, used as fixed tools.

EfficientNet-Lite0 (metric detector and DiME embedder), the BiSeNet face parser and the demo segmenter (mask
providers), the VGG-16 trunk of LPIPS (the perceptual term), and the one loader of TorchScript files with its
trust rule. Each network is built, loaded and fed its input in one place here; the callers keep only thin
classes for their own interfaces.
"""
