"""Gradient-based task balancing: the formulas, as pure TensorFlow functions.

- DWA, Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, eq. 7): a task whose loss fell
  more slowly over the last two epochs gets more weight,

      lambda_k(t) = K exp(w_k(t-1) / T) / sum_i exp(w_i(t-1) / T),  w_k(t-1) = L_k(t-1) / L_k(t-2)

  with L_k an epoch's mean training loss, T a temperature, lambda_k = 1 in the first two epochs.
- GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018): learned weights w_i whose
  weighted gradient norms on the shared parameters W, G_i = ||grad_W w_i L_i||, are pulled
  towards a common norm scaled by each task's relative inverse training rate:

      L_grad = sum_i | G_i - mean_j(G_j) * r_i ** alpha |,   r_i = L~_i / mean_j L~_j,
      L~_i = L_i(t) / L_i(0)

  the target being a constant (no gradient through it); w is updated with grad_w L_grad only
  (never with the training loss), then renormalised to sum to the number of tasks.
- PCGrad, gradient surgery (Yu, Kumar, Gupta, Levine, Hausman & Finn, NeurIPS 2020, Alg. 1):
  where two tasks' gradients on the shared parameters conflict (negative dot product), each is
  projected onto the normal plane of the other, the other tasks taken in random order; the
  shared parameters take the sum of the projected gradients.

`MultiTaskModel.train_step` applies them; the order of PCGrad's projections comes from a
stateless random draw seeded by the step, so every replica makes the same choice.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import tensorflow as tf


def dwa_weights(last_losses: tf.Tensor, previous_losses: tf.Tensor,
                temperature: float) -> tf.Tensor:
  """DWA's weights [K] from two epochs' mean losses [K] (epoch t-1 and t-2); they sum to K.
  A task whose earlier epoch had no row of its space (loss 0) counts as unchanged (ratio 1)."""
  last_losses = tf.convert_to_tensor(last_losses)
  ratios = tf.where(previous_losses > 0, tf.math.divide_no_nan(last_losses, previous_losses),
                    tf.ones_like(last_losses))
  num_tasks = tf.cast(tf.size(ratios), ratios.dtype)
  return num_tasks * tf.nn.softmax(ratios / temperature)


def gradnorm_weight_gradients(weights: tf.Tensor, weighted_norms: tf.Tensor,
                              losses: tf.Tensor, initial_losses: tf.Tensor,
                              alpha: float, active: Optional[tf.Tensor] = None) -> tf.Tensor:
  """grad_w L_grad [K]: `weighted_norms` are G_i = ||grad_W w_i L_i||, `losses` L_i(t),
  `initial_losses` L_i(0).

  G_i = w_i ||grad_W L_i|| depends on w_i alone and the target is a constant, so
  d L_grad / d w_i = sign(G_i - target_i) * ||grad_W L_i|| = sign(G_i - target_i) * G_i / w_i.

  `active` [K] bool (all when None): the tasks with rows of their space in this step's batch
  and a recorded L_i(0); the means run over them, and the others' weights get no gradient.
  """
  if active is None:
    active = tf.ones_like(weights, dtype=tf.bool)
  share = tf.cast(active, weights.dtype)
  count = tf.reduce_sum(share)
  loss_ratios = tf.math.divide_no_nan(losses, initial_losses) * share
  inverse_rates = tf.math.divide_no_nan(
      loss_ratios, tf.math.divide_no_nan(tf.reduce_sum(loss_ratios), count))
  mean_norm = tf.math.divide_no_nan(tf.reduce_sum(weighted_norms * share), count)
  target = tf.stop_gradient(mean_norm * inverse_rates ** alpha)
  return share * tf.sign(weighted_norms - target) * weighted_norms / weights


def renormalise(weights: tf.Tensor, floor: float = 1e-3) -> tf.Tensor:
  """GradNorm's renormalisation: positive weights (at least `floor`) summing to K."""
  weights = tf.maximum(weights, floor)
  return weights * tf.cast(tf.size(weights), weights.dtype) / tf.reduce_sum(weights)


def flatten(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
  return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def unflatten(flat: tf.Tensor, like: Sequence[tf.Tensor]) -> List[tf.Tensor]:
  sizes = [t.shape.num_elements() for t in like]
  return [tf.reshape(part, t.shape) for part, t in zip(tf.split(flat, sizes), like)]


def pcgrad(task_gradients: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """PCGrad on flattened gradients [K, N] -> the combined gradient [N].

  For each task i, every other task j in an order drawn from `seed` (an int64 [2]): if
  g_i . g_j < 0, g_i -= (g_i . g_j / ||g_j||^2) g_j, with g_j the other task's original
  gradient (Algorithm 1). Returns the sum of the projected g_i.
  """
  num_tasks = task_gradients.shape[0]
  projected = []
  for i in range(num_tasks):
    order = tf.argsort(tf.random.stateless_uniform([num_tasks], seed=seed + [0, i]))
    g_i = task_gradients[i]
    for position in range(num_tasks):
      j = order[position]
      g_j = tf.gather(task_gradients, j)
      dot = tf.tensordot(g_i, g_j, 1)
      squared_norm = tf.tensordot(g_j, g_j, 1)
      conflict = tf.logical_and(tf.not_equal(j, i), dot < 0.0)
      g_i = tf.where(conflict, g_i - dot / tf.maximum(squared_norm, 1e-20) * g_j, g_i)
    projected.append(g_i)
  return tf.add_n(projected)


class DynamicWeightAverage(tf.keras.callbacks.Callback):
  """DWA: at each epoch's end, records the epoch's mean training loss per task (Keras'
  `<task>_loss`, already the global mean on every worker) and sets the next epoch's weights.

  The history lives in the loss weighting's variables, so the backup (BackupAndRestore, after
  this callback in the list) resumes it.
  """

  def __init__(self, loss_weighting, task_names: Sequence[str]):
    super().__init__()
    self._weighting = loss_weighting
    self._task_names = list(task_names)

  def on_epoch_end(self, epoch, logs=None):
    losses = [float((logs or {})[f'{name}_loss']) for name in self._task_names]
    self._weighting.record_epoch_losses(losses)
