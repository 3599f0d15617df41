"""Custom TFX components of mtl-pipeline."""

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# Importable as `components.QuarantinedRecords`, its type name (components/artifacts.py).
from components.artifacts import QuarantinedRecords  # noqa: F401,E402
