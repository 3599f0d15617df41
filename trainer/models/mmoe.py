"""Multi-gate Mixture-of-Experts (Ma et al., KDD 2018).

N expert networks read the shared input; each task has a softmax gate over the experts and
feeds the gated mixture to its own tower. Experts (and embeddings) form the trunk group; a
task's gate and tower form that task's group.
"""

from __future__ import annotations

from typing import Mapping, Optional

import tensorflow as tf

from pipeline.config import PipelineConfig
from trainer.models.base import (TRUNK_GROUP, MultiTaskNetwork, build_task_heads, embed_inputs,
                                 feature_inputs)


@tf.keras.utils.register_keras_serializable(package='mtl')
class Experts(tf.keras.layers.Layer):
  """`num_experts` dense layers applied side by side: [B, D] or [B, E, D] -> [B, E, units]."""

  def __init__(self, num_experts: int, units: int, activation: str = 'relu', **kwargs):
    super().__init__(**kwargs)
    self.num_experts = num_experts
    self.units = units
    self.activation = tf.keras.activations.get(activation)

  def build(self, input_shape):
    self.kernel = self.add_weight(
        name='kernel', shape=(self.num_experts, int(input_shape[-1]), self.units),
        initializer='glorot_uniform')
    self.bias = self.add_weight(name='bias', shape=(self.num_experts, self.units),
                                initializer='zeros')

  def call(self, inputs):
    if inputs.shape.rank == 2:  # the same input for every expert
      outputs = tf.einsum('bd,edu->beu', inputs, self.kernel)
    else:  # each expert continues on its own previous layer
      outputs = tf.einsum('bed,edu->beu', inputs, self.kernel)
    return self.activation(outputs + self.bias)

  def get_config(self):
    return dict(super().get_config(), num_experts=self.num_experts, units=self.units,
                activation=tf.keras.activations.serialize(self.activation))


@tf.keras.utils.register_keras_serializable(package='mtl')
class MixExperts(tf.keras.layers.Layer):
  """Gate-weighted sum of expert outputs: ([B, E, U], [B, E]) -> [B, U]."""

  def call(self, inputs):
    experts, gate = inputs
    return tf.einsum('beu,be->bu', experts, gate)


def build_mmoe(config: PipelineConfig, cardinalities: Mapping[str, int],
               label_means: Optional[Mapping[str, float]] = None) -> MultiTaskNetwork:
  inputs = feature_inputs(config)
  x, trunk_layers = embed_inputs(config, inputs, cardinalities)
  experts = x
  for i, units in enumerate(config.model.expert_units):
    layer = Experts(config.model.num_experts, units, name=f'experts_{i}')
    trunk_layers.append(layer)
    experts = layer(experts)
  gates, mixtures = {}, {}
  for task in config.tasks:
    gates[task.name] = tf.keras.layers.Dense(config.model.num_experts, activation='softmax',
                                             name=f'{task.name}_gate')
    mixtures[task.name] = MixExperts(name=f'{task.name}_mixture')(
        [experts, gates[task.name](x)])
  outputs, groups = build_task_heads(config, mixtures, label_means or {})
  for task in config.tasks:
    groups[task.name].insert(0, gates[task.name])
  model = tf.keras.Model(inputs=inputs, outputs=outputs, name='mmoe')
  return MultiTaskNetwork(model=model, groups={TRUNK_GROUP: trunk_layers, **groups})
