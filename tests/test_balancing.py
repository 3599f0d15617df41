"""Gradient-based task balancing against the papers' formulas: DWA's weights, PCGrad's
projections and GradNorm's weight update, each on the real training step of a tiny model
(SGD, so one step's update is the gradient times the learning rate)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config, tiny_model
from pipeline.config import ConfigError
from trainer import balancing

CARDINALITIES = {'user': 12, 'device': 4}
LR = 0.1


def _config(**training):
  sgd = {'type': 'sgd', 'learning_rate': LR}
  return tiny_config('balancing-test', [
      {'name': 'click', 'label': 'click', 'type': 'binary', 'head_units': [8], 'optimizer': sgd},
      {'name': 'skip', 'label': 'skip', 'type': 'binary', 'head_units': [8], 'optimizer': sgd}],
      training=dict({'trunk_optimizer': sgd, 'loss_weights_optimizer': sgd}, **training))


def _batch(n=64, seed=0):
  """`skip` is the opposite of `click` on the same rows: the tasks' trunk gradients conflict."""
  rng = np.random.default_rng(seed)
  features = {'user': rng.integers(0, 12, n), 'device': rng.integers(0, 4, n),
              'position': rng.normal(size=n).astype(np.float32)}
  click = (features['position'] + rng.normal(0, 0.5, n) > 0).astype(np.float32)
  return features, {'click': click, 'skip': 1.0 - click}


def _model(config):
  return tiny_model(config, CARDINALITIES)


def _tensors(batch):
  return tuple({k: tf.constant(v) for k, v in part.items()} for part in batch)


def _dense(gradients):
  return [tf.convert_to_tensor(g).numpy() for g in gradients]


def _flat(arrays):
  return np.concatenate([a.reshape(-1) for a in arrays])


# ---------------------------------------------------------------------------------------------
# DWA


def test_dwa_weights_are_k_softmax_of_the_loss_ratios():
  last, before, temperature = np.array([0.5, 2.0, 1.0]), np.array([1.0, 2.5, 0.5]), 2.0
  ratios = last / before
  expected = 3 * np.exp(ratios / temperature) / np.exp(ratios / temperature).sum()
  np.testing.assert_allclose(balancing.dwa_weights(last, before, temperature).numpy(),
                             expected, rtol=1e-6)


def test_dwa_sets_each_epochs_weights_from_the_two_before():
  config = _config(loss_weighting='dwa', dwa_temperature=2.0)
  model = _model(config)
  features, labels = _batch(512, seed=3)
  labels['skip'] = (features['device'] > 1).astype(np.float32)  # two unrelated tasks
  dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(64).repeat()
  history = model.fit(dataset, epochs=5, steps_per_epoch=8, verbose=0, callbacks=[
      balancing.DynamicWeightAverage(model.loss_weighting, ['click', 'skip'])]).history
  losses = np.array([history['click_loss'], history['skip_loss']])  # [task, epoch]
  weights = np.array([history['click_weight'], history['skip_weight']])
  np.testing.assert_array_equal(weights[:, :2], 1.0)  # lambda = 1 in the first two epochs
  for epoch in range(2, 5):
    ratios = losses[:, epoch - 1] / losses[:, epoch - 2]
    expected = 2 * np.exp(ratios / 2.0) / np.exp(ratios / 2.0).sum()
    np.testing.assert_allclose(weights[:, epoch], expected, rtol=1e-5)
    # The epoch's total is the weighted sum of its task losses (weights fixed within it).
    assert history['loss'][epoch] == pytest.approx(float(weights[:, epoch] @ losses[:, epoch]),
                                                   rel=1e-5)
  assert not np.allclose(weights[:, 2:], 1.0)


# ---------------------------------------------------------------------------------------------
# PCGrad


def _pcgrad_reference(gradients, seed):
  """Algorithm 1 of Yu et al. 2020 in numpy, the other tasks in the order the step draws."""
  num_tasks = len(gradients)
  projected = []
  for i in range(num_tasks):
    order = np.argsort(tf.random.stateless_uniform(
        [num_tasks], seed=tf.constant(seed, tf.int64) + [0, i]).numpy(), kind='stable')
    g_i = gradients[i].astype(np.float64).copy()
    for j in order:
      if j == i:
        continue
      g_j = gradients[j].astype(np.float64)
      if g_i @ g_j < 0:
        g_i -= (g_i @ g_j) / (g_j @ g_j) * g_j
    projected.append(g_i)
  return np.sum(projected, axis=0)


def test_pcgrad_projects_conflicting_gradients_only():
  conflicting = np.array([[1.0, 0.0], [-1.0, 1.0]], np.float32)
  # g1 - (g1.g2 / |g2|^2) g2 = [0.5, 0.5]; g2 - (g2.g1 / |g1|^2) g1 = [0, 1]
  np.testing.assert_allclose(balancing.pcgrad(conflicting, tf.constant([0, 0], tf.int64)),
                             [0.5, 1.5], rtol=1e-6)
  agreeing = np.array([[1.0, 0.0], [1.0, 1.0]], np.float32)
  np.testing.assert_allclose(balancing.pcgrad(agreeing, tf.constant([0, 0], tf.int64)),
                             [2.0, 1.0], rtol=1e-6)
  rng = np.random.default_rng(0)
  three = rng.normal(size=(3, 50)).astype(np.float32)
  for step in range(4):
    seed = [step, 42]
    np.testing.assert_allclose(balancing.pcgrad(three, tf.constant(seed, tf.int64)).numpy(),
                               _pcgrad_reference(three, seed), rtol=1e-4, atol=1e-5)


def test_pcgrad_step_on_a_tiny_model():
  config = _config(loss_weighting='equal', gradient_surgery='pcgrad')
  model = _model(config)
  features, labels = _tensors(_batch())
  model.train_on_batch(features, labels)  # a step taken, so the projection order has a seed
  step = int(model.group_optimizers['trunk'].iterations.numpy())
  grouped = model.grouped_variables()
  trunk, heads = grouped['trunk'], grouped['click'] + grouped['skip']
  # The same head for opposite labels: the two tasks pull the trunk in conflicting directions.
  for click_variable, skip_variable in zip(grouped['click'], grouped['skip']):
    skip_variable.assign(click_variable)
  with tf.GradientTape(persistent=True) as tape:
    _, task_losses, _ = model._task_losses(features, labels, training=True)  # pylint: disable=protected-access
    total = task_losses['click'] + task_losses['skip']
  per_task = [_flat(_dense(tape.gradient(task_losses[t], trunk))) for t in ('click', 'skip')]
  head_gradients = _dense(tape.gradient(total, heads))
  assert per_task[0] @ per_task[1] < 0  # the tasks conflict, so PCGrad changes the step
  combined = _pcgrad_reference(per_task, [step, config.training.seed])
  assert not np.allclose(combined, per_task[0] + per_task[1], atol=1e-4)
  before = [v.numpy().copy() for v in trunk + heads]
  model.train_on_batch(features, labels)
  expected_trunk = _flat(before[:len(trunk)]) - LR * combined
  np.testing.assert_allclose(_flat([v.numpy() for v in trunk]), expected_trunk, rtol=1e-4,
                             atol=1e-6)
  for variable, value, gradient in zip(heads, before[len(trunk):], head_gradients):
    np.testing.assert_allclose(variable.numpy(), value - LR * gradient, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# GradNorm


def test_gradnorm_weight_gradient_is_the_papers_l_grad_differentiated():
  # G = [0.75, 1.25], r = [0.8, 1.2]: with alpha 1.5 the targets are [0.716, 1.315], so G_1
  # is above its target and G_2 below; with alpha 1 ([0.8, 1.2]) it would be the other way.
  weights = tf.Variable([0.5, 1.0])
  norms = np.array([1.5, 1.25], np.float32)  # ||grad_W L_i||
  losses, initial = np.array([0.4, 0.6], np.float32), np.array([1.0, 1.0], np.float32)
  with tf.GradientTape() as tape:
    weighted = weights * norms  # G_i
    ratios = losses / initial
    target = tf.stop_gradient(tf.reduce_mean(weighted) * (ratios / ratios.mean()) ** 1.5)
    l_grad = tf.reduce_sum(tf.abs(weighted - target))
  expected = tape.gradient(l_grad, weights)
  got = balancing.gradnorm_weight_gradients(tf.convert_to_tensor(weights),
                                            tf.convert_to_tensor(weights) * norms, losses,
                                            initial, 1.5)
  np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6)
  np.testing.assert_allclose(got.numpy(), [1.5, -1.25], rtol=1e-6)
  np.testing.assert_allclose(balancing.renormalise(tf.constant([0.5, 2.5])).numpy(),
                             [1 / 3, 5 / 3], rtol=1e-6)


def test_gradnorm_step_on_a_tiny_model():
  """Two steps: the first records L_i(0); in the second the losses have moved, so the inverse
  training rates differ from 1. Expected values come from autodiff of the paper's L_grad."""
  alpha = 1.5
  config = _config(loss_weighting='gradnorm', gradnorm_alpha=alpha)
  model = _model(config)
  first, second = _tensors(_batch(seed=0)), _tensors(_batch(seed=1))
  model(first[0])
  initial = np.array([float(v) for v in model._task_losses(*first, training=True)[1].values()])  # pylint: disable=protected-access
  model.train_on_batch(*first)
  np.testing.assert_allclose(model.loss_weighting.initial_losses.numpy(), initial, rtol=1e-5)
  grouped = model.grouped_variables()
  trunk, heads = grouped['trunk'], grouped['click'] + grouped['skip']
  assert grouped['loss_weights'] == [model.loss_weighting.gradnorm_weights]
  w = model.loss_weighting.gradnorm_weights
  w_before = w.numpy().copy()
  with tf.GradientTape(persistent=True) as outer:
    with tf.GradientTape(persistent=True) as inner:
      _, task_losses, _ = model._task_losses(*second, training=True)  # pylint: disable=protected-access
      terms = [w[i] * task_losses[t] for i, t in enumerate(('click', 'skip'))]
      total = terms[0] + terms[1]
    trunk_gradients = [inner.gradient(term, trunk) for term in terms]
    norms = tf.stack([tf.linalg.global_norm([tf.convert_to_tensor(g) for g in grads])
                      for grads in trunk_gradients])
    losses = tf.stack([task_losses['click'], task_losses['skip']])
    ratios = losses / initial
    target = tf.stop_gradient(tf.reduce_mean(norms) * (ratios / tf.reduce_mean(ratios)) ** alpha)
    l_grad = tf.reduce_sum(tf.abs(norms - target))
  w_gradient = outer.gradient(l_grad, w).numpy()
  total_trunk = _flat(_dense(trunk_gradients[0])) + _flat(_dense(trunk_gradients[1]))
  head_gradients = _dense(inner.gradient(total, heads))
  ratios_value = ratios.numpy()
  assert abs(ratios_value[0] / ratios_value.mean() - 1) > 1e-3  # r_i != 1: alpha matters
  before = [v.numpy().copy() for v in trunk + heads]
  model.train_on_batch(*second)
  stepped = w_before - LR * w_gradient
  np.testing.assert_allclose(w.numpy(), stepped * 2 / stepped.sum(), rtol=1e-4)
  np.testing.assert_allclose(w.numpy().sum(), 2.0, rtol=1e-6)
  np.testing.assert_allclose(_flat([v.numpy() for v in trunk]),
                             _flat(before[:len(trunk)]) - LR * total_trunk, rtol=1e-4, atol=1e-6)
  for variable, value, gradient in zip(heads, before[len(trunk):], head_gradients):
    np.testing.assert_allclose(variable.numpy(), value - LR * gradient, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('training, message', [
    ({'gradient_surgery': 'mgda'}, r'training.gradient_surgery: .*mgda.*pcgrad'),
    ({'loss_weighting': 'gradnrom'}, r'training.loss_weighting: .*gradnrom'),
    ({'dwa_temperature': 0}, r'training.dwa_temperature: 0.0 must be > 0'),
    ({'gradnorm_alpha': -1}, r'training.gradnorm_alpha: -1.0 must be >= 0'),
])
def test_balancing_mistakes_name_the_key(training, message):
  with pytest.raises(ConfigError, match=message):
    _config(**training)


def _straight_and_resumed(weighting: str, backup: str):
  """A run of 5 epochs straight, and one interrupted after epoch 3 then resumed from the backup
  by a fresh model: {'straight' | 'resumed': {task weight or variable name: value}}."""
  config = _config(loss_weighting=weighting)
  features, labels = _batch(512, seed=3)
  labels['skip'] = (features['device'] > 1).astype(np.float32)
  # Exactly one epoch of batches, the same each epoch, so a resumed run sees what a straight
  # one does.
  dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(64)

  def fit(callbacks=()):
    model = _model(config)
    dwa = ([balancing.DynamicWeightAverage(model.loss_weighting, ['click', 'skip'])]
           if weighting == 'dwa' else [])
    model.fit(dataset, epochs=5, verbose=0, callbacks=dwa + list(callbacks))
    return model

  class Interrupt(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
      if epoch == 2:
        raise RuntimeError('interrupted')

  def values(model):
    result = {f'weight:{n}': np.float64(w) for n, w in model.loss_weighting.task_weights().items()}
    result.update({f'{i}:{v.name}': v.numpy() for i, v in enumerate(model.weights)})
    return result

  straight = values(fit())
  try:
    fit([tf.keras.callbacks.BackupAndRestore(backup), Interrupt()])
    raise AssertionError('the run was not interrupted')
  except RuntimeError as e:
    assert str(e) == 'interrupted', e
  return {'straight': straight, 'resumed': values(fit([tf.keras.callbacks.BackupAndRestore(
      backup)]))}


_RESTART_SCRIPT = r'''
import sys
sys.path[:0] = [{tests!r}, {repo!r}]
import pipeline  # sets TF_USE_LEGACY_KERAS
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
import numpy as np
import test_balancing
runs = test_balancing._straight_and_resumed({weighting!r}, {backup!r})
np.savez({out!r}, **{{f'{{run}}/{{name}}': value for run, values in runs.items()
                     for name, value in values.items()}})
'''


@pytest.mark.parametrize('weighting', ['dwa', 'gradnorm'])
def test_balancing_state_survives_a_restart_from_the_backup(tmp_path, weighting):
  """DWA's loss history and GradNorm's weights and L_i(0) are model variables: a run
  interrupted after epoch 3 and resumed from the backup by a fresh model ends where an
  uninterrupted run ends.

  Both runs take the same steps on the same batches, so they end bit for bit equal if each
  step sums in the same order: in a process of its own with one thread per op and one op at a
  time (with a thread pool, how an op's work is split can vary with the load, and over 40
  steps with GradNorm that once moved 3 kernel entries by 7e-6)."""
  tests = os.path.dirname(os.path.abspath(__file__))
  out = str(tmp_path / 'runs.npz')
  completed = subprocess.run(
      [sys.executable, '-c', _RESTART_SCRIPT.format(
          tests=tests, repo=os.path.dirname(tests), weighting=weighting,
          backup=str(tmp_path / 'backup'), out=out)],
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'), capture_output=True, text=True,
      timeout=600)
  assert completed.returncode == 0, completed.stderr[-3000:]
  saved = np.load(out)
  straight = {k.split('/', 1)[1]: saved[k] for k in saved.files if k.startswith('straight/')}
  resumed = {k.split('/', 1)[1]: saved[k] for k in saved.files if k.startswith('resumed/')}
  assert set(straight) == set(resumed)
  weights = {k: float(v) for k, v in straight.items() if k.startswith('weight:')}
  assert weights != {'weight:click': 1.0, 'weight:skip': 1.0}
  for name, value in straight.items():
    np.testing.assert_array_equal(resumed[name], value, err_msg=name)
