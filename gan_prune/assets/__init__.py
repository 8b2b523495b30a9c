"""Files that ship with the package (data only, no code): the bundled teacher and the content segmenter."""
import os

ASSETS_DIR = os.path.dirname(os.path.abspath(__file__))
# The bundled teacher, `builtin:teacher`: 32 px cartoon faces (tools/train_teacher.py, docs/teacher.md).
TEACHER_PKL = os.path.join(ASSETS_DIR, 'teacher.pkl')
# The content segmenter for the teacher's cartoon faces, `--mask demo-faces` (tools/train_mask_model.py).
FACE_MASK = os.path.join(ASSETS_DIR, 'face_mask.pt')
