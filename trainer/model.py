"""The training wrapper: a network, its loss weighting, and one optimizer per parameter group.

`MultiTaskModel.train_step` computes each task's loss, combines them (uncertainty weighting by
default), takes one gradient of the total, and lets each group's optimizer apply its own slice:
the trunk's optimizer the embeddings and shared layers, each head's optimizer that head, and the
loss-weights optimizer the log-variances. Only `network` is exported for serving.

Under a distribution strategy (MultiWorkerMirroredStrategy), the model, the loss weighting's
log-variances and every group's optimizer must be created inside `strategy.scope()` (they are
created in `__init__`); each step's gradients are all-reduced once, for all groups together.
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
    for group, layers in network.groups.items():
      optimizers.exclude_biases_from_decay(self.group_optimizers[group], layers)
    self._trackers = {name: tf.keras.metrics.Mean(name=name) for name in
                      ['loss'] + [f'{t.name}_loss' for t in self.tasks]}
    # What train_step/test_step return is already the same on every replica (tracker results
    # are aggregated over the replicas, the sigmas and weights are mirrored variables): report
    # the first replica's value. Keras' default under a multi-replica strategy sums them, which
    # would multiply every logged loss, sigma and weight by the number of replicas.
    self.distribute_reduction_method = 'first'

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
    replica = tf.distribute.get_replica_context()
    with tf.GradientTape() as tape:
      total, task_losses, weights = self._task_losses(features, labels, training=True)
      # Each replica's loss is the mean over its slice of the global batch and the all-reduce
      # below sums the replicas' gradients: dividing by the replica count makes that sum the
      # gradient of the global-batch mean (what one worker with the whole batch would compute).
      scaled_total = total / replica.num_replicas_in_sync
    gradients = tape.gradient(scaled_total, grouped)
    pairs = {group: [(g, v) for g, v in zip(gradients[group], group_vars) if g is not None]
             for group, group_vars in grouped.items()}
    # One all-reduce of every group's gradients per step (a no-op with a single replica); the
    # optimizers are then told not to aggregate again.
    flat = [g for group_pairs in pairs.values() for g, _ in group_pairs]
    reduced = iter(replica.all_reduce(tf.distribute.ReduceOp.SUM, flat) if flat else [])
    for group, group_pairs in pairs.items():
      if group_pairs:
        self.group_optimizers[group].apply_gradients(
            [(next(reduced), v) for _, v in group_pairs], skip_gradients_aggregation=True)
    return self._logs(total, task_losses, weights)

  def test_step(self, data):
    features, labels = data
    total, task_losses, weights = self._task_losses(features, labels, training=False)
    return self._logs(total, task_losses, weights)
