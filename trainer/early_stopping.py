"""Early stopping on a validation loss, exporting the best epoch's weights.

`BestEpoch` watches, after every epoch, the validation loss `training.early_stopping.monitor`
names (the total, or one task's), remembers the best epoch's network weights, stops training
after `patience` epochs without an improvement of more than `min_delta`, and puts the best
weights back when training ends, so the exported model is the best epoch's, not the last's.

Its state (best value, best epoch, epochs without improvement, the best weights) lives in
variables tracked by the training model (`attach_state`, inside the strategy's scope), so
Keras' BackupAndRestore checkpoints it with the model: a worker group restarted from a backup
goes on with the same best epoch and patience. The callback goes before BackupAndRestore in the
callback list, so an epoch's backup holds the state after that epoch. Under
MultiWorkerMirroredStrategy every worker sees the same validation loss (the metrics are
all-reduced), so every worker stops after the same epoch and restores the same weights.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import tensorflow as tf

from pipeline.config import EarlyStoppingConfig


class EarlyStoppingState(tf.Module):
  """The best value, its epoch (0-based, -1 before any), the epochs since, and the weights."""

  def __init__(self, network: tf.keras.Model):
    super().__init__(name='early_stopping_state')
    self.best_value = tf.Variable(math.inf, trainable=False, dtype=tf.float64)
    self.best_epoch = tf.Variable(-1, trainable=False, dtype=tf.int64)
    self.epochs_without_improvement = tf.Variable(0, trainable=False, dtype=tf.int64)
    self.best_weights = [tf.Variable(w, trainable=False, name=f'best_{i}')
                         for i, w in enumerate(network.weights)]


def attach_state(model: tf.keras.Model, network: tf.keras.Model) -> EarlyStoppingState:
  """Creates the state as an attribute of `model` (call inside the strategy's scope), so the
  model's checkpoints (BackupAndRestore) hold it."""
  model.early_stopping_state = EarlyStoppingState(network)
  return model.early_stopping_state


def monitored_key(stopping: EarlyStoppingConfig) -> str:
  """The Keras log key of the watched validation loss."""
  return 'val_loss' if stopping.monitor == 'loss' else f'val_{stopping.monitor}_loss'


class BestEpoch(tf.keras.callbacks.Callback):
  """See the module docstring. `report()` says which epoch was exported and why."""

  def __init__(self, stopping: EarlyStoppingConfig, state: EarlyStoppingState,
               network: tf.keras.Model):
    super().__init__()
    self._stopping = stopping
    self._state = state
    self._network = network
    self._last_epoch = -1
    self._stopped = False

  def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
    self._last_epoch = epoch
    value = float((logs or {})[monitored_key(self._stopping)])
    if value < float(self._state.best_value.numpy()) - self._stopping.min_delta:
      self._state.best_value.assign(value)
      self._state.best_epoch.assign(epoch)
      self._state.epochs_without_improvement.assign(0)
      for best, weight in zip(self._state.best_weights, self._network.weights):
        best.assign(weight)
      return
    self._state.epochs_without_improvement.assign_add(1)
    if int(self._state.epochs_without_improvement.numpy()) >= self._stopping.patience:
      self._stopped = True
      self.model.stop_training = True

  def on_train_end(self, logs: Optional[Dict[str, Any]] = None) -> None:
    best = int(self._state.best_epoch.numpy())
    if 0 <= best != self._last_epoch:
      for weight, saved in zip(self._network.weights, self._state.best_weights):
        weight.assign(saved)

  def report(self) -> Dict[str, Any]:
    best = int(self._state.best_epoch.numpy())
    exported = best + 1 if best >= 0 else self._last_epoch + 1
    watched = ('total validation loss' if self._stopping.monitor == 'loss'
               else f'validation loss of {self._stopping.monitor}')
    if self._stopped:
      reason = (f'lowest {watched} ({float(self._state.best_value.numpy()):.6g}); stopped after '
                f'epoch {self._last_epoch + 1}, {self._stopping.patience} epoch(s) without '
                'improvement')
    else:
      reason = (f'lowest {watched} ({float(self._state.best_value.numpy()):.6g}) in '
                f'{self._last_epoch + 1} epoch(s)')
    return {'monitor': self._stopping.monitor, 'patience': self._stopping.patience,
            'min_delta': self._stopping.min_delta, 'best_value': float(
                self._state.best_value.numpy()), 'epochs_trained': self._last_epoch + 1,
            'stopped_early': self._stopped, 'exported_epoch': exported, 'reason': reason}
