"""Shared-bottom (hard parameter sharing): embeddings -> shared dense trunk -> one head per task."""

from __future__ import annotations

from typing import Mapping, Optional

import tensorflow as tf

from pipeline.config import PipelineConfig
from trainer.models.base import TRUNK_GROUP, MultiTaskNetwork, embed_inputs, feature_inputs, task_head


def build_shared_bottom(config: PipelineConfig, cardinalities: Mapping[str, int],
                        label_means: Optional[Mapping[str, float]] = None) -> MultiTaskNetwork:
  label_means = label_means or {}
  inputs = feature_inputs(config)
  x, trunk_layers = embed_inputs(config, inputs, cardinalities)
  for i, units in enumerate(config.model.trunk_units):
    dense = tf.keras.layers.Dense(units, activation='relu', name=f'trunk_dense_{i}')
    trunk_layers.append(dense)
    x = dense(x)
    if config.model.dropout:
      x = tf.keras.layers.Dropout(config.model.dropout, name=f'trunk_dropout_{i}')(x)
  outputs, groups = {}, {TRUNK_GROUP: trunk_layers}
  for task in config.tasks:
    outputs[task.name], groups[task.name] = task_head(task, x, label_means.get(task.name))
  model = tf.keras.Model(inputs=inputs, outputs=outputs, name='shared_bottom')
  return MultiTaskNetwork(model=model, groups=groups)
