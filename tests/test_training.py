"""Split learning rates and optimizer groups on the real model and training step; a NaN loss
stops training."""

import re

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config, tiny_model
from trainer import early_stopping, optimizers, run

CARDINALITIES = {'user': 12, 'device': 4}


def _config(dwell_learning_rate=0.01):
  return tiny_config('train-test', [
      {'name': 'click', 'label': 'click', 'type': 'binary', 'head_units': [8],
       'optimizer': {'learning_rate': 0.05}},
      {'name': 'dwell', 'label': 'dwell_seconds', 'type': 'regression', 'head_units': [8],
       'optimizer': {'learning_rate': dwell_learning_rate}}],
      training={'trunk_optimizer': {'learning_rate': 0.05},
                'loss_weights_optimizer': {'learning_rate': 0.05}})


def _batch(n=64, seed=0):
  rng = np.random.default_rng(seed)
  features = {'user': rng.integers(0, 12, n), 'device': rng.integers(0, 4, n),
              'position': rng.normal(size=n).astype(np.float32)}
  labels = {'click': rng.integers(0, 2, n).astype(np.float32),
            'dwell_seconds': rng.gamma(2.0, 10.0, n).astype(np.float32)}
  return features, labels


def _model(config):
  return tiny_model(config, CARDINALITIES)


def _snapshot(variables):
  return [v.numpy().copy() for v in variables]


def test_zero_head_learning_rate_freezes_only_that_head():
  model = _model(_config(dwell_learning_rate=0.0))
  features, labels = _batch()
  model.train_on_batch(features, labels)  # builds every optimizer's slots
  grouped = model.grouped_variables()
  before = {g: _snapshot(vs) for g, vs in grouped.items()}
  model.train_on_batch(features, labels)
  after = {g: _snapshot(vs) for g, vs in grouped.items()}

  def moved(group):
    return any(not np.array_equal(b, a) for b, a in zip(before[group], after[group]))

  assert not moved('dwell'), 'a head with learning rate 0 must not change'
  assert moved('trunk') and moved('click') and moved('loss_weights')
  # The frozen head still produced a loss (it is trained with the others, just not updated).
  assert grouped['dwell'] and grouped['trunk']


def test_every_trainable_variable_is_in_exactly_one_group():
  model = _model(_config())
  features, _ = _batch(4)
  model(features)
  grouped = model.grouped_variables()
  assert set(grouped) == {'trunk', 'click', 'dwell', 'loss_weights'}
  assert sum(len(v) for v in grouped.values()) == len(model.trainable_variables)
  # Embeddings belong to the trunk; each head's layers to its own group.
  assert any('user_embedding' in v.name for v in grouped['trunk'])
  assert all(v.name.startswith('click') for v in grouped['click'])


def test_group_check_fails_on_a_missing_or_shared_variable():
  model = _model(_config())
  model(_batch(4)[0])
  grouped = optimizers.group_variables(model._group_layers)  # pylint: disable=protected-access
  missing = dict(grouped, click=grouped['click'][1:])
  with pytest.raises(ValueError, match='in groups none'):
    optimizers.check_groups_cover(model.trainable_variables, missing)
  shared = dict(grouped, dwell=grouped['dwell'] + grouped['click'][:1])
  with pytest.raises(ValueError, match=r"in groups \['click', 'dwell'\]"):
    optimizers.check_groups_cover(model.trainable_variables, shared)


def test_training_reduces_loss_and_learns_sigmas():
  model = _model(_config())
  features, labels = _batch(512, seed=3)
  dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(64).repeat()
  history = model.fit(dataset, steps_per_epoch=20, epochs=3, verbose=0).history
  assert history['dwell_loss'][-1] < history['dwell_loss'][0]
  # The dwell loss is on a much larger scale, so its learned sigma grows beyond click's.
  assert history['dwell_sigma'][-1] > history['dwell_sigma'][0]
  assert history['dwell_sigma'][-1] > history['click_sigma'][-1]


def test_nan_loss_stops_training_naming_the_step_and_task(tmp_path):
  # A dwell head learning rate far too high: its loss overflows within a few steps.
  config = _config(dwell_learning_rate=1e30)
  model = _model(config)
  train_data = tf.data.Dataset.from_tensor_slices(_batch(512, seed=3)).batch(64).repeat()
  eval_data = tf.data.Dataset.from_tensor_slices(_batch(128, seed=4)).batch(64).repeat()
  with pytest.raises(run.NonFiniteLossError) as e:
    run.train(model, train_data, eval_data, config, train_steps=40, eval_steps=4)
  message = str(e.value)
  step = re.search(r'Training stopped at step (\d+) of 40: the loss of task\(s\) (\S+) is not '
                   r'finite \((.*)\)\. No model was exported\.', message)
  assert step, message
  assert step.group(2) == 'dwell' and 'click' not in step.group(3), message
  # Stopped at the first bad step: the steps before it had finite losses.
  assert 1 <= int(step.group(1)) < 40


def test_finite_training_is_not_stopped():
  config = _config()
  model = _model(config)
  train_data = tf.data.Dataset.from_tensor_slices(_batch(512, seed=3)).batch(64).repeat()
  eval_data = tf.data.Dataset.from_tensor_slices(_batch(128, seed=4)).batch(64).repeat()
  history = run.train(model, train_data, eval_data, config, train_steps=20, eval_steps=4)
  assert len(history['loss']) == 10 and all(np.isfinite(history['val_dwell_loss']))


def test_backup_restores_every_group_optimizer_and_the_step(tmp_path, caplog):
  """BackupAndRestore (as run_fn uses it) saves every group optimizer's step and slots: an
  interrupted fit, resumed from the backup by a fresh model, ends where an uninterrupted fit
  does, and says at which step it resumed."""
  config = _config()
  # The same batch at every step, so where the data restarts after resuming does not matter.
  data = tf.data.Dataset.from_tensor_slices(_batch(64, seed=3)).batch(64).repeat()
  backup = str(tmp_path / 'backup')

  class Interrupt(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
      if epoch == 1:  # after BackupAndRestore backed up epochs 0 and 1
        raise RuntimeError('interrupted')

  interrupted = _model(config)
  with pytest.raises(RuntimeError, match='interrupted'):
    interrupted.fit(data, steps_per_epoch=5, epochs=4, verbose=0,
                    callbacks=[tf.keras.callbacks.BackupAndRestore(backup), Interrupt()])
  assert run.backed_up_steps(backup, steps_per_epoch=5) == 10
  resumed = _model(config)
  caplog.set_level('INFO', logger='absl')
  history = resumed.fit(data, steps_per_epoch=5, epochs=4, verbose=0, callbacks=[
      tf.keras.callbacks.BackupAndRestore(backup), run.ReportResume(backup, 20, 'trainer')])
  assert len(history.history['loss']) == 2  # only the epochs after the backup
  assert f'trainer: resumed from the backup in {backup} at step 10 of 20' in caplog.text
  straight = _model(config)
  straight.fit(data, steps_per_epoch=5, epochs=4, verbose=0)
  for group, optimizer in resumed.group_optimizers.items():
    assert int(optimizer.iterations) == int(straight.group_optimizers[group].iterations) == 20
  for a, b in zip(resumed.variables, straight.variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.name)


class _Snapshots(tf.keras.callbacks.Callback):
  """The network's weights at the end of each epoch (after BestEpoch saw the epoch)."""

  def __init__(self, network):
    super().__init__()
    self._network = network
    self.by_epoch = {}

  def on_epoch_end(self, epoch, logs=None):
    self.by_epoch[epoch] = _snapshot(self._network.weights)


def _overfitting_data():
  """One training batch, and eval labels that disagree with it: the dwell output starts at 0
  and climbs towards the training mean (about 20 s), passing the eval dwell of 8 s, so the
  validation loss falls, then rises."""
  features, labels = _batch(64, seed=5)
  eval_labels = {'click': 1.0 - labels['click'],
                 'dwell_seconds': np.full(64, 8.0, dtype=np.float32)}
  train = tf.data.Dataset.from_tensor_slices((features, labels)).batch(64).repeat()
  evaluation = tf.data.Dataset.from_tensor_slices((features, eval_labels)).batch(64).repeat()
  return train, evaluation


def _stopping_config(**stopping):
  return _config().with_overrides(training={'early_stopping': dict(
      {'monitor': 'loss', 'patience': 2}, **stopping)})


def _fit_with_early_stopping(config, train, evaluation, epochs=12, callbacks=()):
  model = _model(config)
  state = early_stopping.attach_state(model, model.network)
  best = early_stopping.BestEpoch(config.training.early_stopping, state, model.network)
  snapshots = _Snapshots(model.network)
  history = model.fit(train, validation_data=evaluation, validation_steps=1, epochs=epochs,
                      steps_per_epoch=3, verbose=0, callbacks=[best, *callbacks, snapshots])
  return model, best, snapshots, history.history


@pytest.mark.parametrize('monitor', ['loss', 'click'])
def test_early_stopping_exports_the_best_epoch(monitor):
  config = _stopping_config(monitor=monitor)
  train, evaluation = _overfitting_data()
  model, best, snapshots, history = _fit_with_early_stopping(config, train, evaluation)
  watched = history['val_loss' if monitor == 'loss' else 'val_click_loss']
  best_epoch = int(np.argmin(watched))
  report = best.report()
  assert report['stopped_early'], (watched, report)  # the setup overfits within 12 epochs
  assert len(watched) == best_epoch + 1 + 2 < 12  # stopped 2 epochs (patience) after the best
  assert report['exported_epoch'] == best_epoch + 1
  assert report['epochs_trained'] == len(watched)
  assert report['best_value'] == pytest.approx(watched[best_epoch], rel=1e-6)
  assert 'stopped after epoch' in report['reason']
  # The network holds the best epoch's weights, not the last epoch's.
  last = snapshots.by_epoch[len(watched) - 1]
  now = _snapshot(model.network.weights)
  assert any(not np.array_equal(a, b) for a, b in zip(now, last))
  for a, b in zip(now, snapshots.by_epoch[best_epoch]):
    np.testing.assert_array_equal(a, b)


def test_early_stopping_state_survives_a_restart_from_the_backup(tmp_path):
  """BackupAndRestore checkpoints the early-stopping state with the model: a run interrupted
  after its best epoch and resumed by a fresh process exports what an uninterrupted run
  exports."""
  config = _stopping_config(patience=3)
  train, evaluation = _overfitting_data()
  straight, straight_best, _, straight_history = _fit_with_early_stopping(
      config, train, evaluation)
  best_epoch = straight_best.report()['exported_epoch'] - 1
  assert straight_best.report()['stopped_early']
  backup = str(tmp_path / 'backup')

  class Interrupt(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
      if epoch == best_epoch + 1:  # the best epoch is behind, the patience not used up
        raise RuntimeError('interrupted')

  with pytest.raises(RuntimeError, match='interrupted'):
    _fit_with_early_stopping(config, train, evaluation, callbacks=[
        tf.keras.callbacks.BackupAndRestore(backup), Interrupt()])
  resumed, resumed_best, _, _ = _fit_with_early_stopping(config, train, evaluation, callbacks=[
      tf.keras.callbacks.BackupAndRestore(backup)])
  report = resumed_best.report()
  assert report['exported_epoch'] == best_epoch + 1
  assert report['epochs_trained'] == len(straight_history['loss'])
  assert report['best_value'] == pytest.approx(straight_best.report()['best_value'], rel=1e-5)
  for a, b in zip(resumed.network.weights, straight.network.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.name)


def test_early_stopping_config_names_the_key():
  from pipeline.config import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match="training.early_stopping.monitor: 'ctr' is neither"):
    _stopping_config(monitor='ctr')
  with pytest.raises(ConfigError, match='training.early_stopping.patience: 0 must be >= 1'):
    _stopping_config(patience=0)
  with pytest.raises(ConfigError, match='training.early_stopping.wait: unknown key'):
    _stopping_config(wait=3)
  assert _config().training.early_stopping is None
