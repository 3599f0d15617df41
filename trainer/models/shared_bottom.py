"""Shared-bottom (hard parameter sharing): embeddings -> shared dense trunk -> one head per task."""

from __future__ import annotations

from typing import List, Mapping, Optional, Tuple

import tensorflow as tf

from pipeline.config import PipelineConfig
from trainer.models.base import (TRUNK_GROUP, MultiTaskNetwork, build_task_heads, embed_inputs,
                                 feature_inputs)


def build_shared_bottom(config: PipelineConfig, cardinalities: Mapping[str, int],
                        label_means: Optional[Mapping[str, float]] = None) -> MultiTaskNetwork:
  label_means = label_means or {}
  inputs = feature_inputs(config)
  x, embeddings = embed_inputs(config, inputs, cardinalities)
  x, trunk_layers = shared_trunk(config, x)
  trunk_layers = embeddings + trunk_layers
  outputs, groups = build_task_heads(config, {t.name: x for t in config.tasks}, label_means)
  model = tf.keras.Model(inputs=inputs, outputs=outputs, name='shared_bottom')
  return MultiTaskNetwork(model=model, groups={TRUNK_GROUP: trunk_layers, **groups})


def shared_trunk(config: PipelineConfig, x: tf.Tensor) -> Tuple[tf.Tensor,
                                                                List[tf.keras.layers.Layer]]:
  """The shared dense layers (model.trunk_units) over the embedded features."""
  layers = []
  for i, units in enumerate(config.model.trunk_units):
    dense = tf.keras.layers.Dense(units, activation='relu', name=f'trunk_dense_{i}')
    layers.append(dense)
    x = dense(x)
    if config.model.dropout:
      x = tf.keras.layers.Dropout(config.model.dropout, name=f'trunk_dropout_{i}')(x)
  return x, layers
