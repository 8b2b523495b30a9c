"""The bundled teacher, built-in example networks and the demo pipeline."""
import os

# TorchScript content segmenter for the cartoon-face data (tools/train_mask_model.py); `--mask demo-faces`.
DEMO_FACE_MASK = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'face_mask.pt')
