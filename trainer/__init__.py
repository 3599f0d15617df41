"""Transform and Trainer code of mtl-pipeline: preprocessing_fn, models, losses, run_fn, export."""

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
