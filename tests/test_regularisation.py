"""Regularisation options on the real model and training step: decoupled weight decay per
optimizer group, dropout on embeddings and task heads in every architecture, embedding widths
from the row count."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config, tiny_model
from pipeline.config import ConfigError, parse_config
from trainer.models import build_network
from trainer.models.base import embedding_width

CARDINALITIES = {'user': 12, 'device': 4}


def _config(model=None, features=None, trunk_optimizer=None, head_optimizer=None):
  return tiny_config('regularisation-test', [
      {'name': 'click', 'label': 'click', 'type': 'binary', 'head_units': [8],
       'optimizer': head_optimizer or {}},
      {'name': 'conversion', 'label': 'conversion', 'type': 'binary', 'head_units': [8],
       'optimizer': head_optimizer or {}}],
      training={'trunk_optimizer': trunk_optimizer or {}}, model=model, features=features)


def _batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  features = {'user': rng.integers(0, 12, n), 'device': rng.integers(0, 4, n),
              'position': rng.normal(size=n).astype(np.float32)}
  click = rng.integers(0, 2, n)
  labels = {'click': click.astype(np.float32),
            'conversion': (click * rng.integers(0, 2, n)).astype(np.float32)}
  return features, labels


def _model(config):
  return tiny_model(config, CARDINALITIES)


def test_weight_decay_is_decoupled_and_spares_biases():
  """One SGD step: w <- w - lr * wd * w - lr * g for kernels and embedding tables of a group
  with weight decay; b <- b - lr * g for its biases; a group without decay takes the plain
  step (Loshchilov & Hutter's decoupled decay, SGDW)."""
  lr, wd = 0.1, 0.5
  config = _config(trunk_optimizer={'type': 'sgd', 'learning_rate': lr, 'weight_decay': wd},
                   head_optimizer={'type': 'sgd', 'learning_rate': lr})
  model = _model(config)
  features, labels = _batch()
  model(features)
  grouped = model.grouped_variables()
  rng = np.random.default_rng(5)
  for variable in model.trainable_variables:  # biases start at 0, where decay is invisible
    variable.assign(variable + rng.normal(0, 0.1, variable.shape).astype(np.float32))
  trunk = grouped['trunk']
  heads = grouped['click'] + grouped['conversion']
  with tf.GradientTape() as tape:
    total, _, _ = model._task_losses(  # pylint: disable=protected-access
        {k: tf.constant(v) for k, v in features.items()},
        {k: tf.constant(v) for k, v in labels.items()}, training=True)
  gradients = tape.gradient(total, trunk + heads)
  before = [v.numpy().copy() for v in trunk + heads]
  model.train_on_batch(features, labels)

  biases = {id(layer.bias) for layers in model._group_layers.values()  # pylint: disable=protected-access
            for layer in layers if isinstance(getattr(layer, 'bias', None), tf.Variable)}
  decayed = spared = 0
  for variable, value, gradient in zip(trunk + heads, before, gradients):
    gradient = tf.convert_to_tensor(gradient).numpy()
    decays = id(variable) in {id(v) for v in trunk} and id(variable) not in biases
    expected = value - lr * gradient - (lr * wd * value if decays else 0.0)
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-6,
                               err_msg=variable.name)
    decayed += decays
    spared += not decays
  names = [v.name for v in trunk]
  assert any('embedding' in n for n in names) and decayed >= 3 and spared >= 4


@pytest.mark.parametrize('model_type', ['shared_bottom', 'mmoe', 'ple', 'esmm'])
def test_embedding_and_head_dropout_in_every_architecture(model_type):
  extra = {'esmm_click_task': 'click', 'esmm_conversion_task': 'conversion'} if (
      model_type == 'esmm') else {}
  config = _config(model=dict(type=model_type, embedding_dropout=0.5, head_dropout=0.5,
                              **extra))
  network = build_network(config, CARDINALITIES).model
  dropouts = [layer.name for layer in network.layers
              if isinstance(layer, tf.keras.layers.Dropout)]
  assert 'embedding_dropout' in dropouts
  head_dropouts = [n for n in dropouts if '_head_dropout_' in n]
  assert len(head_dropouts) == 2, dropouts  # one head layer per tower
  features, _ = _batch(64)
  features = {k: tf.constant(v) for k, v in features.items()}
  inference = network(features, training=False)
  again = network(features, training=False)
  training = network(features, training=True)
  for task in ('click', 'conversion'):
    np.testing.assert_array_equal(inference[task].numpy(), again[task].numpy())
    assert not np.allclose(inference[task].numpy(), training[task].numpy()), task


def test_no_dropout_layer_unless_configured():
  network = build_network(_config(), CARDINALITIES).model
  assert not [layer for layer in network.layers if isinstance(layer, tf.keras.layers.Dropout)]


def test_auto_embedding_width_follows_the_row_count():
  config = _config(features=[{'name': 'user', 'type': 'categorical', 'embedding_dim': 'auto'},
                             {'name': 'device', 'type': 'categorical', 'embedding_dim': 2},
                             {'name': 'position', 'type': 'numeric'}])
  user = config.features[0]
  # min(64, round(1.6 * rows ** 0.56))
  assert [embedding_width(user, n) for n in (2, 3, 12, 16, 1000, 10 ** 6)] == [
      2, 3, 6, 8, 64, 64]
  assert embedding_width(config.features[1], 1000) == 2
  network = build_network(config, CARDINALITIES).model
  assert network.get_layer('user_embedding').output_dim == 6
  assert network.get_layer('device_embedding').output_dim == 2


@pytest.mark.parametrize('change, message', [
    ({'features': [{'name': 'user', 'type': 'categorical', 'embedding_dim': 'wide'}]},
     r"features\[0\].embedding_dim: expected an integer or 'auto', got 'wide'"),
    ({'training': {'trunk_optimizer': {'weight_decay': -0.1}}},
     r'training.trunk_optimizer.weight_decay: -0.1 must be >= 0'),
    ({'training': {'loss_weights_optimizer': {'weight_decay': 0.01}}},
     r'training.loss_weights_optimizer.weight_decay: the loss weights .* are not decayed'),
    ({'model': {'head_dropout': 1.0}}, r'model.head_dropout: 1.0 must be <= 0.9'),
    ({'model': {'embedding_dropout': 'x'}}, r'model.embedding_dropout: expected a number'),
])
def test_regularisation_mistakes_name_the_key(change, message):
  raw = {'name': 'x', 'data': {'input_base': '/unused', 'split_key': 'user'},
         'features': [{'name': 'user', 'type': 'categorical'}],
         'tasks': [{'name': 'click', 'label': 'click', 'type': 'binary'}]}
  raw.update(change)
  with pytest.raises(ConfigError, match=message):
    parse_config(raw)
