"""Per-task losses and how they are combined into one training loss.

Uncertainty weighting follows Kendall, Gal & Cipolla (CVPR 2018), with one learned
`s_t = log sigma_t^2` per task:

    regression:      0.5 * exp(-s) * L + 0.5 * s     (from 1/(2 sigma^2) L + log sigma)
    classification:  exp(-s) * L + 0.5 * s           (from 1/sigma^2 L + log sigma)

At the optimum of s the gradient vanishes: exp(-s) * L = 1 for regression and 0.5 for
classification, so a task whose loss is on a larger scale gets a proportionally smaller weight.

DWA and GradNorm (trainer/balancing.py) keep their state here too, so it is checkpointed with
the model.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import tensorflow as tf

from pipeline.config import PipelineConfig
from trainer import balancing


def row_losses(task_type: str, labels: tf.Tensor, predictions: tf.Tensor) -> tf.Tensor:
  """Each row's binary cross-entropy (binary) or squared error (regression), [batch]."""
  labels = tf.reshape(tf.cast(labels, tf.float32), [-1])
  predictions = tf.reshape(tf.cast(predictions, tf.float32), [-1])
  if task_type == 'binary':
    return tf.keras.losses.binary_crossentropy(labels[:, tf.newaxis], predictions[:, tf.newaxis])
  return tf.square(labels - predictions)


def task_loss(task_type: str, labels: tf.Tensor, predictions: tf.Tensor) -> tf.Tensor:
  """Mean binary cross-entropy (binary) or mean squared error (regression) over the batch."""
  return tf.reduce_mean(row_losses(task_type, labels, predictions))


def weighted_loss_sum(task_type: str, labels: tf.Tensor, predictions: tf.Tensor,
                      weights: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """(sum_i w_i l_i, sum_i w_i) over the batch: a task's loss on its space is the first over
  the second, summed over every replica's rows (`MultiTaskModel`). Rows outside the space
  weigh 0; the row weight (tasks[].weight) inside."""
  weights = tf.reshape(tf.cast(weights, tf.float32), [-1])
  return (tf.reduce_sum(weights * row_losses(task_type, labels, predictions)),
          tf.reduce_sum(weights))


def uncertainty_loss(task_type: str, loss: tf.Tensor, log_variance: tf.Tensor) -> tf.Tensor:
  """Kendall et al.'s uncertainty-weighted term for one task (see the module docstring)."""
  precision = tf.exp(-log_variance)
  if task_type == 'regression':
    return 0.5 * precision * loss + 0.5 * log_variance
  return precision * loss + 0.5 * log_variance


def uncertainty_weight(task_type: str, log_variance: tf.Tensor) -> tf.Tensor:
  """The effective weight multiplying the task's loss under uncertainty weighting."""
  precision = tf.exp(-log_variance)
  return 0.5 * precision if task_type == 'regression' else precision


class LossWeighting(tf.keras.layers.Layer):
  """Combines per-task losses into one; owns the learned log-variances when there are any.

  - `uncertainty`: one learned `log_variance` s per task (initialised at 0, sigma = 1); with
    `min_log_variance`, the loss uses max(s, min_log_variance), so it stays bounded below;
  - `fixed`: sum of `fixed_weights[task] * loss`;
  - `equal`: plain sum of the task losses;
  - `dwa`: sum of DWA's weights times the losses; the weights change at epoch ends
    (`record_epoch_losses`, called by balancing.DynamicWeightAverage);
  - `gradnorm`: sum of GradNorm's learned weights times the losses; the weights are trained by
    `MultiTaskModel.train_step` with GradNorm's own gradient, never with the total loss's.
  """

  def __init__(self, task_names: Sequence[str], task_types: Sequence[str],
               weighting: str = 'uncertainty', fixed_weights: Optional[Sequence[float]] = None,
               min_log_variance: Optional[float] = None, dwa_temperature: float = 2.0,
               gradnorm_alpha: float = 1.5, **kwargs):
    super().__init__(**kwargs)
    self.dwa_temperature = dwa_temperature
    self.gradnorm_alpha = gradnorm_alpha
    self.task_names = list(task_names)
    self.task_types = list(task_types)
    self.weighting = weighting
    self.fixed_weights = list(fixed_weights) if fixed_weights else [1.0] * len(self.task_names)
    # What multiplies each task's loss when nothing is learned: the fixed weight, or 1.
    self._constant_weights = dict(zip(
        self.task_names, self.fixed_weights if weighting == 'fixed' else [1.0] * len(task_names)))
    self.min_log_variance = min_log_variance
    self.log_variances: Dict[str, tf.Variable] = {}
    if weighting == 'uncertainty':
      for name in self.task_names:
        self.log_variances[name] = self.add_weight(
            name=f'{name}_log_variance', shape=(), initializer='zeros', trainable=True)
    num_tasks = len(self.task_names)
    # Written the same way on every replica; ONLY_FIRST_REPLICA lets train_step assign them.
    first = tf.VariableAggregation.ONLY_FIRST_REPLICA
    if weighting == 'dwa':
      self.dwa_weights = self.add_weight(name='dwa_weights', shape=(num_tasks,),
                                         initializer='ones', trainable=False, aggregation=first)
      # Rows: the mean training loss of the last epoch and of the one before.
      self.dwa_history = self.add_weight(name='dwa_loss_history', shape=(2, num_tasks),
                                         initializer='zeros', trainable=False,
                                         aggregation=first)
      self.dwa_epochs = self.add_weight(name='dwa_epochs', shape=(), dtype=tf.int64,
                                        initializer='zeros', trainable=False,
                                        aggregation=first)
    if weighting == 'gradnorm':
      self.gradnorm_weights = self.add_weight(name='gradnorm_weights', shape=(num_tasks,),
                                              initializer='ones', trainable=True,
                                              aggregation=first)
      self.initial_losses = self.add_weight(name='gradnorm_initial_losses', shape=(num_tasks,),
                                            initializer='zeros', trainable=False,
                                            aggregation=first)
      # Per task: L_i(0) is its loss at the first step with rows of its space.
      self.initial_losses_set = self.add_weight(name='gradnorm_initial_losses_set',
                                                shape=(num_tasks,),
                                                dtype=tf.bool, initializer='zeros',
                                                trainable=False, aggregation=first)

  def call(self, task_losses: Mapping[str, tf.Tensor],
           present: Optional[Mapping[str, tf.Tensor]] = None
           ) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    """Returns (total loss, {task: effective weight}); see `terms` for `present`."""
    return tf.add_n(list(self.terms(task_losses, present).values())), self.task_weights()

  def terms(self, task_losses: Mapping[str, tf.Tensor],
            present: Optional[Mapping[str, tf.Tensor]] = None) -> Dict[str, tf.Tensor]:
    """{task: its term of the total loss}; the terms sum to the total. `present` ({task:
    bool scalar}, all true when None) says whether the batch has rows of the task's space: a
    task without any adds 0 (no uncertainty regulariser either), so neither its loss weight
    nor anything else takes a gradient from it."""
    if self.weighting == 'uncertainty':
      terms = {name: uncertainty_loss(task_type, task_losses[name], self._effective(name))
               for name, task_type in zip(self.task_names, self.task_types)}
    else:
      weights = self.task_weights()
      terms = {name: weights[name] * task_losses[name] for name in self.task_names}
    if present is None:
      return terms
    return {name: tf.where(present[name], term, tf.zeros_like(term))
            for name, term in terms.items()}

  def task_weights(self) -> Dict[str, tf.Tensor]:
    """The effective weight multiplying each task's loss, now."""
    if self.weighting == 'uncertainty':
      return {name: uncertainty_weight(task_type, self._effective(name))
              for name, task_type in zip(self.task_names, self.task_types)}
    if self.weighting in ('dwa', 'gradnorm'):
      vector = self.dwa_weights if self.weighting == 'dwa' else self.gradnorm_weights
      return {name: tf.convert_to_tensor(vector)[i] for i, name in enumerate(self.task_names)}
    return {name: tf.constant(w) for name, w in self._constant_weights.items()}

  def record_epoch_losses(self, losses: Sequence[float]) -> None:
    """DWA: an epoch's mean training loss per task; from the third epoch on, the weights are
    DWA's of the last two epochs (before that they stay 1)."""
    last = self.dwa_history[0]
    self.dwa_history.assign(tf.stack([tf.constant(losses, tf.float32), last]))
    self.dwa_epochs.assign_add(1)
    if int(self.dwa_epochs.numpy()) >= 2:
      self.dwa_weights.assign(balancing.dwa_weights(self.dwa_history[0], self.dwa_history[1],
                                                    self.dwa_temperature))

  def _effective(self, name: str) -> tf.Tensor:
    s = self.log_variances[name]
    if self.min_log_variance is None:
      return tf.convert_to_tensor(s)
    return tf.maximum(s, self.min_log_variance)

  def sigmas(self) -> Dict[str, tf.Tensor]:
    """sigma_t = exp(s_t / 2) per task (1 for tasks without a learned variance)."""
    return {name: (tf.exp(0.5 * self._effective(name)) if name in self.log_variances
                   else tf.constant(1.0)) for name in self.task_names}

  def get_config(self):
    return dict(super().get_config(), task_names=self.task_names,
                task_types=self.task_types, weighting=self.weighting,
                fixed_weights=self.fixed_weights, min_log_variance=self.min_log_variance,
                dwa_temperature=self.dwa_temperature, gradnorm_alpha=self.gradnorm_alpha)

  @classmethod
  def for_config(cls, config: PipelineConfig) -> 'LossWeighting':
    return cls([t.name for t in config.tasks], [t.type for t in config.tasks],
               config.training.loss_weighting, [t.loss_weight for t in config.tasks],
               config.training.min_log_variance, config.training.dwa_temperature,
               config.training.gradnorm_alpha, name='loss_weighting')
