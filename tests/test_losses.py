"""Kendall et al. uncertainty weighting: the formula, and where its gradient in s vanishes."""

import math

import numpy as np
import pytest
import tensorflow as tf

from trainer.losses import LossWeighting, task_loss, uncertainty_loss, uncertainty_weight


@pytest.mark.parametrize('task_type, loss, s, expected', [
    ('regression', 4.0, 0.7, 0.5 * math.exp(-0.7) * 4.0 + 0.5 * 0.7),
    ('regression', 250.0, -1.0, 0.5 * math.exp(1.0) * 250.0 - 0.5),
    ('binary', 0.3, 0.2, math.exp(-0.2) * 0.3 + 0.5 * 0.2),
    ('binary', 0.05, -2.0, math.exp(2.0) * 0.05 - 1.0),
])
def test_uncertainty_loss_matches_formula(task_type, loss, s, expected):
  value = uncertainty_loss(task_type, tf.constant(loss), tf.constant(s))
  assert float(value) == pytest.approx(expected, rel=1e-6)


def _ds(task_type, loss, s):
  s = tf.Variable(s)
  with tf.GradientTape() as tape:
    value = uncertainty_loss(task_type, tf.constant(loss), s)
  return float(tape.gradient(value, s))


@pytest.mark.parametrize('loss', [0.02, 0.7, 35.0, 900.0])
def test_gradient_in_s_vanishes_where_weighted_loss_balances(loss):
  # regression: exp(-s) * L = 1 at the optimum -> s* = log L
  s_star = math.log(loss)
  assert _ds('regression', loss, s_star) == pytest.approx(0.0, abs=1e-5)
  assert _ds('regression', loss, s_star + 0.5) > 0 > _ds('regression', loss, s_star - 0.5)
  # classification: exp(-s) * L = 1/2 at the optimum -> s* = log 2L
  s_star = math.log(2 * loss)
  assert _ds('binary', loss, s_star) == pytest.approx(0.0, abs=1e-5)
  assert _ds('binary', loss, s_star + 0.5) > 0 > _ds('binary', loss, s_star - 0.5)


def test_loss_weighting_combines_tasks():
  weighting = LossWeighting(['click', 'dwell'], ['binary', 'regression'], 'uncertainty')
  weighting.log_variances['click'].assign(0.3)
  weighting.log_variances['dwell'].assign(4.0)
  total, weights = weighting({'click': tf.constant(0.4), 'dwell': tf.constant(200.0)})
  expected = (math.exp(-0.3) * 0.4 + 0.15) + (0.5 * math.exp(-4.0) * 200.0 + 2.0)
  assert float(total) == pytest.approx(expected, rel=1e-6)
  assert float(weights['dwell']) == pytest.approx(float(uncertainty_weight('regression', 4.0)))
  assert float(weighting.sigmas()['dwell']) == pytest.approx(math.exp(2.0), rel=1e-6)
  assert len(weighting.trainable_variables) == 2

  equal = LossWeighting(['click', 'dwell'], ['binary', 'regression'], 'equal')
  total, weights = equal({'click': tf.constant(0.4), 'dwell': tf.constant(200.0)})
  assert float(total) == pytest.approx(200.4)
  assert not equal.trainable_variables


def test_task_losses():
  labels = tf.constant([1.0, 0.0, 1.0])
  predictions = tf.constant([[0.9], [0.2], [0.6]])
  expected_bce = -np.mean([math.log(0.9), math.log(0.8), math.log(0.6)])
  assert float(task_loss('binary', labels, predictions)) == pytest.approx(expected_bce, rel=1e-4)
  assert float(task_loss('regression', labels, predictions)) == pytest.approx(
      np.mean([0.01, 0.04, 0.16]), rel=1e-5)


def test_fixed_weighting_uses_configured_weights():
  weighting = LossWeighting(['click', 'dwell'], ['binary', 'regression'], 'fixed',
                            fixed_weights=[2.0, 0.01])
  total, weights = weighting({'click': tf.constant(0.4), 'dwell': tf.constant(200.0)})
  assert float(total) == pytest.approx(2.0 * 0.4 + 0.01 * 200.0)
  assert float(weights['click']) == 2.0 and float(weights['dwell']) == pytest.approx(0.01)
  assert not weighting.trainable_variables


def test_min_log_variance_bounds_the_loss_from_below():
  weighting = LossWeighting(['dwell'], ['regression'], 'uncertainty', min_log_variance=-2.0)
  weighting.log_variances['dwell'].assign(-50.0)
  total, _ = weighting({'dwell': tf.constant(0.0)})
  assert float(total) == pytest.approx(0.5 * -2.0)  # not 0.5 * -50
  assert float(weighting.sigmas()['dwell']) == pytest.approx(math.exp(-1.0))
