"""The training wrapper: a network, its loss weighting, and one optimizer per parameter group.

`MultiTaskModel.train_step` computes each task's loss, combines them (uncertainty weighting by
default), takes one gradient of the total, and lets each group's optimizer apply its own slice:
the trunk's optimizer the embeddings and shared layers, each head's optimizer that head, and the
loss-weights optimizer the log-variances. Only `network` is exported for serving.
"""

from __future__ import annotations

from typing import Dict, List

import tensorflow as tf

from pipeline.config import PipelineConfig
from trainer import losses, optimizers
from trainer.models.base import MultiTaskNetwork


class MultiTaskModel(tf.keras.Model):
  """Trains a MultiTaskNetwork with per-group optimizers; see the module docstring."""

  def __init__(self, network: MultiTaskNetwork, config: PipelineConfig, **kwargs):
    super().__init__(**kwargs)
    self.network = network.model
    self.tasks = list(config.tasks)
    self.loss_weighting = losses.LossWeighting.for_config(config)
    self.group_optimizers = optimizers.build_optimizers(config)
    self._group_layers = dict(network.groups)
    self._group_layers[optimizers.LOSS_WEIGHTS_GROUP] = [self.loss_weighting]
    self._trackers = {name: tf.keras.metrics.Mean(name=name) for name in
                      ['loss'] + [f'{t.name}_loss' for t in self.tasks]}

  @property
  def metrics(self) -> List[tf.keras.metrics.Metric]:
    return list(self._trackers.values())

  def call(self, features, training=False):
    return self.network(features, training=training)

  def grouped_variables(self) -> Dict[str, List[tf.Variable]]:
    """{group: trainable variables}; checked to cover every trainable variable exactly once."""
    grouped = optimizers.group_variables(self._group_layers)
    optimizers.check_groups_cover(self.trainable_variables, grouped)
    return grouped

  def _task_losses(self, features, labels, training: bool):
    predictions = self.network(features, training=training)
    task_losses = {t.name: losses.task_loss(t.type, labels[t.label], predictions[t.name])
                   for t in self.tasks}
    total, weights = self.loss_weighting(task_losses)
    return total, task_losses, weights

  def _logs(self, total, task_losses, weights) -> Dict[str, tf.Tensor]:
    self._trackers['loss'].update_state(total)
    for name, value in task_losses.items():
      self._trackers[f'{name}_loss'].update_state(value)
    logs = {name: tracker.result() for name, tracker in self._trackers.items()}
    sigmas = self.loss_weighting.sigmas()
    for t in self.tasks:
      logs[f'{t.name}_sigma'] = sigmas[t.name]
      logs[f'{t.name}_weight'] = weights[t.name]
    return logs

  def train_step(self, data):
    features, labels = data
    grouped = self.grouped_variables()
    with tf.GradientTape() as tape:
      total, task_losses, weights = self._task_losses(features, labels, training=True)
    gradients = tape.gradient(total, grouped)
    for group, group_vars in grouped.items():
      pairs = [(g, v) for g, v in zip(gradients[group], group_vars) if g is not None]
      if pairs:
        self.group_optimizers[group].apply_gradients(pairs)
    return self._logs(total, task_losses, weights)

  def test_step(self, data):
    features, labels = data
    total, task_losses, weights = self._task_losses(features, labels, training=False)
    return self._logs(total, task_losses, weights)
