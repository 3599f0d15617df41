"""The training wrapper: a network, its loss weighting, and one optimizer per parameter group.

`MultiTaskModel.train_step` computes each task's loss (its weighted mean over the rows of its
space, tasks[].space and tasks[].weight; a batch without such rows adds nothing), combines them
(uncertainty weighting by default), takes one gradient of the total, and lets each group's
optimizer apply its own slice: the trunk's optimizer the embeddings and shared layers, each
head's optimizer that head, and the loss-weights optimizer the log-variances. Only `network` is
exported for serving.

With GradNorm or PCGrad (trainer/balancing.py) the step needs each task's own gradient on the
trunk: it takes one gradient per task for the trunk and one of the total for the other groups,
all-reduces them once, and combines them identically on every replica.

Under a distribution strategy (MultiWorkerMirroredStrategy), the model, the loss weighting's
log-variances and every group's optimizer must be created inside `strategy.scope()` (they are
created in `__init__`); each step's gradients are all-reduced once, for all groups together,
after one small all-reduce of each task's weight sum (`_replica_losses`).
"""

from __future__ import annotations

from typing import Dict, List

import tensorflow as tf

from pipeline.config import PipelineConfig
from trainer import balancing, losses, optimizers
from trainer.models import output_weights
from trainer.models.base import TRUNK_GROUP, MultiTaskNetwork


class MultiTaskModel(tf.keras.Model):
  """Trains a MultiTaskNetwork with per-group optimizers; see the module docstring."""

  def __init__(self, network: MultiTaskNetwork, config: PipelineConfig, **kwargs):
    super().__init__(**kwargs)
    self.network = network.model
    self.tasks = list(config.tasks)
    self.gradient_surgery = config.training.gradient_surgery
    # {task: its example weight column} for the tasks trained on part of the rows.
    self._weight_columns = output_weights(config)
    self._seed = config.training.seed
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

  def _task_sums(self, features, labels, training: bool):
    """({task: sum of w * loss}, {task: sum of w}) over this replica's rows, w being the
    task's example weight (0 outside its space; 1 for a task without space or row weight)."""
    predictions = self.network(features, training=training)
    sums, counts = {}, {}
    for t in self.tasks:
      label = labels[t.label]
      column = self._weight_columns.get(t.name)
      weights = labels[column] if column else tf.ones_like(label, dtype=tf.float32)
      sums[t.name], counts[t.name] = losses.weighted_loss_sum(
          t.type, label, predictions[t.name], weights)
    return sums, counts

  def _replica_losses(self, sums, counts):
    """({task: this replica's loss}, {task: whether the global batch has rows of its space}).

    A task's loss is its weighted mean over the global batch, sum(w l) / sum(w), the sums over
    every replica's rows (one all-reduce of the weight sums). Each replica's value is
    R * (its sum of w l) / sum(w), so that the mean over the R replicas, which the gradient
    all-reduce computes (it sums gradients of loss / R), is that weighted mean: replicas with
    different numbers of a task's rows take the step one replica with the whole batch would.
    A task without rows gets 0 (divide_no_nan: a finite loss, a zero gradient)."""
    replica = tf.distribute.get_replica_context()
    replicas = replica.num_replicas_in_sync
    names = [t.name for t in self.tasks]
    totals = tf.stop_gradient(replica.all_reduce(tf.distribute.ReduceOp.SUM,
                                                 tf.stack([counts[n] for n in names])))
    return ({n: tf.math.divide_no_nan(sums[n] * replicas, totals[i])
             for i, n in enumerate(names)},
            {n: totals[i] > 0 for i, n in enumerate(names)})

  def _logs(self, total, sums, counts, weights) -> Dict[str, tf.Tensor]:
    """Keras' logs: the running mean of the total loss, and of each task's loss over the rows
    of its space (weighted by the rows' weights, over every replica)."""
    self._trackers['loss'].update_state(total)
    for name, value in sums.items():
      self._trackers[f'{name}_loss'].update_state(tf.math.divide_no_nan(value, counts[name]),
                                                  sample_weight=counts[name])
    logs = {name: tracker.result() for name, tracker in self._trackers.items()}
    sigmas = self.loss_weighting.sigmas()
    for t in self.tasks:
      logs[f'{t.name}_sigma'] = sigmas[t.name]
      logs[f'{t.name}_weight'] = weights[t.name]
    return logs

  def train_step(self, data):
    if self.gradient_surgery != 'none' or self.loss_weighting.weighting == 'gradnorm':
      return self._per_task_train_step(data)
    features, labels = data
    grouped = self.grouped_variables()
    replica = tf.distribute.get_replica_context()
    with tf.GradientTape() as tape:
      sums, counts = self._task_sums(features, labels, training=True)
      task_losses, present = self._replica_losses(sums, counts)
      total, weights = self.loss_weighting(task_losses, present)
      # The all-reduce below sums the replicas' gradients: dividing by the replica count makes
      # that sum the gradient of the global-batch loss (what one worker with the whole batch
      # would compute; see `_replica_losses`).
      scaled_total = total / replica.num_replicas_in_sync
    pairs = _gradient_pairs(tape.gradient(scaled_total, grouped), grouped)
    # One all-reduce of every group's gradients per step (a no-op with a single replica); the
    # optimizers are then told not to aggregate again.
    flat = [g for group_pairs in pairs.values() for g, _ in group_pairs]
    reduced = replica.all_reduce(tf.distribute.ReduceOp.SUM, flat) if flat else []
    self._apply_reduced(pairs, reduced)
    return self._logs(total, sums, counts, weights)

  def _apply_reduced(self, pairs: Dict[str, List], reduced: List[tf.Tensor]) -> None:
    """Each group's optimizer applies its slice of the all-reduced gradients (in the order of
    `pairs`), without aggregating them again."""
    reduced = iter(reduced)
    for group, group_pairs in pairs.items():
      if group_pairs:
        self.group_optimizers[group].apply_gradients(
            [(next(reduced), v) for _, v in group_pairs], skip_gradients_aggregation=True)

  def _per_task_train_step(self, data):
    """The step with each task's own trunk gradient (GradNorm, PCGrad); see the module
    docstring."""
    features, labels = data
    grouped = self.grouped_variables()
    trunk = grouped[TRUNK_GROUP]
    gradnorm = self.loss_weighting.weighting == 'gradnorm'
    # GradNorm's weights never take the total loss's gradient.
    others = {group: group_vars for group, group_vars in grouped.items()
              if group != TRUNK_GROUP and not (gradnorm and group == optimizers.LOSS_WEIGHTS_GROUP)}
    replica = tf.distribute.get_replica_context()
    replicas = replica.num_replicas_in_sync
    with tf.GradientTape(persistent=True) as tape:
      sums, counts = self._task_sums(features, labels, training=True)
      task_losses, present = self._replica_losses(sums, counts)
      total, weights = self.loss_weighting(task_losses, present)
      terms = self.loss_weighting.terms(task_losses, present)
      scaled_total = total / replicas  # as in train_step: the all-reduce sums the replicas
      scaled_terms = [terms[t.name] / replicas for t in self.tasks]
    other_gradients = tape.gradient(scaled_total, others)
    # Embedding gradients come as IndexedSlices: dense here, to be compared and projected.
    task_trunk = [[tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                   for g, v in zip(tape.gradient(term, trunk), trunk)] for term in scaled_terms]
    del tape
    pairs = _gradient_pairs(other_gradients, others)
    flat = [g for group_pairs in pairs.values() for g, _ in group_pairs]
    flat.append(balancing.flatten([balancing.flatten(grads) for grads in task_trunk]))
    flat.append(tf.stack([task_losses[t.name] for t in self.tasks]) / replicas)
    # One all-reduce per step, as in train_step.
    reduced = replica.all_reduce(tf.distribute.ReduceOp.SUM, flat)
    global_losses = reduced.pop()
    per_task = tf.reshape(reduced.pop(), [len(self.tasks), -1])
    self._apply_reduced(pairs, reduced)
    step = self.group_optimizers[TRUNK_GROUP].iterations
    if self.gradient_surgery == 'pcgrad':
      combined = balancing.pcgrad(per_task, tf.stack([step, tf.constant(self._seed, tf.int64)]))
    else:
      combined = tf.reduce_sum(per_task, axis=0)
    self.group_optimizers[TRUNK_GROUP].apply_gradients(
        zip(balancing.unflatten(combined, trunk), trunk), skip_gradients_aggregation=True)
    if gradnorm:
      self._gradnorm_update(per_task, global_losses,
                            tf.stack([present[t.name] for t in self.tasks]))
    return self._logs(total, sums, counts, weights)

  def _gradnorm_update(self, per_task: tf.Tensor, global_losses: tf.Tensor,
                       present: tf.Tensor) -> None:
    """GradNorm's step on its weights from the all-reduced per-task trunk gradients (G_i are
    their norms) and task losses; a task's L_i(0) is recorded at the first step with rows of
    its space (`present`), and only the tasks present take part in the step."""
    weighting = self.loss_weighting
    recorded = tf.convert_to_tensor(weighting.initial_losses_set)
    initial = tf.where(tf.logical_and(present, tf.logical_not(recorded)), global_losses,
                       tf.convert_to_tensor(weighting.initial_losses))
    weighting.initial_losses.assign(initial)
    weighting.initial_losses_set.assign(tf.logical_or(recorded, present))
    weights = weighting.gradnorm_weights
    gradient = balancing.gradnorm_weight_gradients(
        tf.convert_to_tensor(weights), tf.norm(per_task, axis=1), global_losses, initial,
        weighting.gradnorm_alpha, active=present)
    self.group_optimizers[optimizers.LOSS_WEIGHTS_GROUP].apply_gradients(
        [(gradient, weights)], skip_gradients_aggregation=True)
    weights.assign(balancing.renormalise(tf.convert_to_tensor(weights)))

  def _task_losses(self, features, labels, training: bool):
    """(total, {task: loss}, {task: weight}) on this replica's rows alone: each task's loss
    is its weighted mean over the rows of its space here (0 without any)."""
    return self._local_losses(*self._task_sums(features, labels, training=training))

  def _local_losses(self, sums, counts):
    task_losses = {n: tf.math.divide_no_nan(sums[n], counts[n]) for n in sums}
    total, weights = self.loss_weighting(task_losses, {n: counts[n] > 0 for n in counts})
    return total, task_losses, weights

  def test_step(self, data):
    """Each task's loss over this replica's rows of its space (the trackers sum over the
    replicas: the epoch's logs are the weighted means over the whole eval set)."""
    features, labels = data
    sums, counts = self._task_sums(features, labels, training=False)
    total, _, weights = self._local_losses(sums, counts)
    return self._logs(total, sums, counts, weights)


def _gradient_pairs(gradients: Dict[str, List], grouped: Dict[str, List[tf.Variable]]
                    ) -> Dict[str, List]:
  """{group: [(gradient, variable)]}, leaving out variables without a gradient."""
  return {group: [(g, v) for g, v in zip(gradients[group], group_vars) if g is not None]
          for group, group_vars in grouped.items()}
