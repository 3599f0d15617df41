"""mtl-pipeline: config, pipeline definition, runners and the `mtlp` command."""

import os

# TFX, TFMA and TF Serving load TF SavedModels written by Keras 2 (tf-keras); Keras 3 cannot
# write them. Must be set before TensorFlow is first imported, as TFX's own images do.
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
