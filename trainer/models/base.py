"""What every multi-task architecture returns, and the shared input layer.

An architecture is a function `build(config, cardinalities, label_means) -> MultiTaskNetwork`:
a Keras functional model from the transformed features (a dict, one rank-1 tensor per
feature) to a dict of outputs named by task, plus which layers form the shared trunk and which
form each task's head. The groups drive the optimizers, so they are declared where the layers
are made.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from pipeline.config import AUTO, FeatureConfig, PipelineConfig, TaskConfig, order_tasks
from trainer.preprocessing import bucket_name, piece_names

TRUNK_GROUP = 'trunk'


@dataclasses.dataclass
class MultiTaskNetwork:
  model: tf.keras.Model
  # {'trunk': [...], <task name>: [...]}: layers whose trainable variables each group owns.
  groups: Dict[str, List[tf.keras.layers.Layer]]


def feature_inputs(config: PipelineConfig) -> Dict[str, tf.keras.Input]:
  """One Keras input per feature: int64 ids for categorical, float32 for numeric; int64 ids
  for each numeric feature's quantile bucket (`buckets`); float32 for each bin of its
  piecewise-linear encoding (`piecewise_linear`)."""
  inputs = {
      f.name: tf.keras.Input(shape=(), name=f.name,
                             dtype=tf.int64 if f.type == 'categorical' else tf.float32)
      for f in config.features
  }
  for f in config.numeric_features:
    if f.buckets:
      inputs[bucket_name(f.name)] = tf.keras.Input(shape=(), name=bucket_name(f.name),
                                                   dtype=tf.int64)
    for name in piece_names(f):
      inputs[name] = tf.keras.Input(shape=(), name=name, dtype=tf.float32)
  return inputs


def embedding_width(feature: FeatureConfig, rows: int) -> int:
  """The configured width, or for `auto` min(64, round(1.6 * rows ** 0.56)) (fast.ai's rule
  of thumb for tabular embeddings, capped): 3 rows give 3, 16 give 8, 1,000 give 77 -> 64."""
  if feature.embedding_dim == AUTO:
    return max(1, min(64, round(1.6 * rows ** 0.56)))
  return int(feature.embedding_dim)


@tf.keras.utils.register_keras_serializable(package='mtl')
class PeriodicEmbedding(tf.keras.layers.Layer):
  """A scalar feature as ReLU(W [sin(2 pi c x), cos(2 pi c x)] + b): `frequencies` trainable
  c ~ N(0, scale^2), then a dense layer of `units` (the PLR embedding of Gorishniy, Rubachev &
  Babenko, "On Embeddings for Numerical Features in Tabular Deep Learning", NeurIPS 2022).
  [B] -> [B, units]."""

  def __init__(self, frequencies: int, scale: float, units: int, **kwargs):
    super().__init__(**kwargs)
    self.frequencies = frequencies
    self.scale = scale
    self.units = units
    self.dense = tf.keras.layers.Dense(units, activation='relu')

  def build(self, input_shape):
    self.coefficients = self.add_weight(
        name='frequencies', shape=(self.frequencies,),
        initializer=tf.keras.initializers.RandomNormal(stddev=self.scale))
    self.dense.build((None, 2 * self.frequencies))
    super().build(input_shape)

  def call(self, inputs):
    angles = 2 * np.pi * tf.reshape(inputs, [-1, 1]) * self.coefficients[tf.newaxis, :]
    return self.dense(tf.concat([tf.sin(angles), tf.cos(angles)], axis=1))

  def get_config(self):
    return dict(super().get_config(), frequencies=self.frequencies, scale=self.scale,
                units=self.units)


@tf.keras.utils.register_keras_serializable(package='mtl')
class CrossLayer(tf.keras.layers.Layer):
  """One DCN-V2 cross layer (Wang et al., WWW 2021): x_next = x0 * (W x + b) + x, with x0 the
  embedded input. Each layer adds explicit feature crosses one degree higher (products of
  input coordinates) that an MLP over concatenated embeddings learns poorly; the residual
  keeps x. Call it on [x0, x]."""

  def build(self, input_shape):
    self.dense = tf.keras.layers.Dense(input_shape[0][-1])
    self.dense.build(input_shape[1])
    super().build(input_shape)

  def call(self, inputs):
    x0, x = inputs
    return x0 * self.dense(x) + x


def embed_inputs(config: PipelineConfig, inputs: Mapping[str, tf.Tensor],
                 cardinalities: Mapping[str, int]
                 ) -> Tuple[tf.Tensor, List[tf.keras.layers.Layer]]:
  """Concatenates one embedding per categorical feature and the numeric features (each
  scaled value, the embedding of its quantile bucket when it has `buckets`, its periodic
  embedding when it has `periodic`, ReLU(Dense) of its piecewise-linear bins when it has
  `piecewise_linear`), with `model.embedding_dropout` on each embedding's output, followed by
  `model.cross_layers` DCN-V2 cross layers.

  Returns the tensor and the embedding and cross layers (they belong to the trunk group).
  """
  parts, layers = [], []
  dropout = (tf.keras.layers.Dropout(config.model.embedding_dropout, name='embedding_dropout')
             if config.model.embedding_dropout else None)

  def embed(layer: tf.keras.layers.Layer, values: tf.Tensor) -> None:
    layers.append(layer)
    vectors = layer(values)
    parts.append(dropout(vectors) if dropout else vectors)

  def lookup(feature: FeatureConfig, name: str) -> tf.keras.layers.Layer:
    return tf.keras.layers.Embedding(cardinalities[name],
                                     embedding_width(feature, cardinalities[name]),
                                     name=f'{name}_embedding')

  for feature in config.features:
    if feature.type == 'categorical':
      embed(lookup(feature, feature.name), inputs[feature.name])
    else:
      parts.append(tf.keras.layers.Reshape((1,), name=f'{feature.name}_column')(
          inputs[feature.name]))
      if feature.buckets:
        embed(lookup(feature, bucket_name(feature.name)), inputs[bucket_name(feature.name)])
      if feature.periodic:
        embed(PeriodicEmbedding(feature.periodic, feature.periodic_scale,
                                embedding_width(feature, feature.periodic),
                                name=f'{feature.name}_periodic'), inputs[feature.name])
      if feature.piecewise_linear:
        bins = tf.keras.layers.Concatenate(name=f'{feature.name}_pieces')(
            [tf.keras.layers.Reshape((1,))(inputs[name]) for name in piece_names(feature)])
        embed(tf.keras.layers.Dense(embedding_width(feature, feature.piecewise_linear),
                                    activation='relu', name=f'{feature.name}_piecewise_linear'),
              bins)
  x0 = x = tf.keras.layers.Concatenate(name='features')(parts)
  for i in range(config.model.cross_layers):
    cross = CrossLayer(name=f'cross_{i}')
    layers.append(cross)
    x = cross([x0, x])
  return x, layers


@tf.keras.utils.register_keras_serializable(package='mtl')
class StopGradient(tf.keras.layers.Layer):
  """Passes its input forward and no gradient back.

  A task that takes another task's estimate as a feature gets it through this layer, so the
  consumer's loss never updates the producer's head (the producer has its own labels).
  """

  def call(self, inputs):
    return tf.stop_gradient(inputs)


def task_head(task: TaskConfig, x: tf.Tensor, label_mean: Optional[float] = None,
              extra_inputs: Sequence[tf.Tensor] = (), dropout: float = 0.0
              ) -> Tuple[tf.Tensor, List[tf.keras.layers.Layer]]:
  """A task's tower: dense layers (each followed by `dropout` when set), then one unit
  (sigmoid for binary, linear for regression).

  `extra_inputs` (other tasks' estimates, already stop-gradient) join the tower's input. A
  regression output starts at the label's mean so the first steps are not spent learning the
  offset. The output layer is named by the task.
  """
  if extra_inputs:
    x = tf.keras.layers.Concatenate(name=f'{task.name}_head_inputs')([x, *extra_inputs])
  layers = []
  for i, units in enumerate(task.head_units):
    dense = tf.keras.layers.Dense(units, activation='relu', name=f'{task.name}_head_dense_{i}')
    layers.append(dense)
    x = dense(x)
    if dropout:
      x = tf.keras.layers.Dropout(dropout, name=f'{task.name}_head_dropout_{i}')(x)
  bias = tf.keras.initializers.Constant(label_mean) if (
      task.type == 'regression' and label_mean is not None) else 'zeros'
  output = tf.keras.layers.Dense(1, activation='sigmoid' if task.type == 'binary' else None,
                                 bias_initializer=bias, name=task.name)
  layers.append(output)
  return output(x), layers


def build_task_heads(config: PipelineConfig, head_inputs: Mapping[str, tf.Tensor],
                     label_means: Mapping[str, float],
                     outputs: Optional[Dict[str, tf.Tensor]] = None
                     ) -> Tuple[Dict[str, tf.Tensor], Dict[str, List[tf.keras.layers.Layer]]]:
  """Builds the heads of the tasks in `head_inputs`, producers before consumers.

  `outputs` may already hold estimates of tasks built elsewhere (e.g. ESMM's towers), which
  consumers can use too. Returns ({task: output}, {task: layers of its head}).
  """
  outputs = dict(outputs or {})
  groups: Dict[str, List[tf.keras.layers.Layer]] = {}
  for task in order_tasks(config.tasks):
    if task.name not in head_inputs:
      continue
    extra = [StopGradient(name=f'{task.name}_from_{producer}')(outputs[producer])
             for producer in task.inputs_from]
    outputs[task.name], groups[task.name] = task_head(
        task, head_inputs[task.name], label_means.get(task.name), extra,
        config.model.head_dropout)
  return outputs, groups
