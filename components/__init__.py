"""Custom TFX components of mtl-pipeline."""

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
