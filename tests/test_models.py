"""Architectures: outputs named by task, SavedModel round trip, ESMM identity, stop_gradient,
and optimizer groups covering every trainable variable exactly once."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ConfigError, parse_config
from trainer.model import MultiTaskModel
from trainer.models import build_network, output_labels

CARDINALITIES = {'item': 20, 'device': 4}
BASE = {
    'name': 'models-test',
    'data': {'input_base': '/unused', 'split_key': 'user'},
    'features': [{'name': 'item', 'type': 'categorical', 'embedding_dim': 4},
                 {'name': 'device', 'type': 'categorical', 'embedding_dim': 2},
                 {'name': 'position', 'type': 'numeric'}],
    'tasks': [{'name': 'click', 'label': 'click', 'type': 'binary', 'head_units': [8]},
              {'name': 'conversion', 'label': 'conversion', 'type': 'binary',
               'head_units': [8]},
              {'name': 'dwell', 'label': 'dwell_seconds', 'type': 'regression',
               'head_units': [8]}],
    'model': {'trunk_units': [16], 'num_experts': 3, 'expert_units': [12, 8]},
}
MODELS = {
    'shared_bottom': {'type': 'shared_bottom'},
    'mmoe': {'type': 'mmoe'},
    'esmm': {'type': 'esmm', 'esmm_click_task': 'click', 'esmm_conversion_task': 'conversion'},
    'ple': {'type': 'ple', 'num_shared_experts': 2, 'num_task_experts': 2},
}


def _config(model_type, **task_changes):
  raw = {**BASE, 'model': {**BASE['model'], **MODELS[model_type]},
         'tasks': [dict(t, **task_changes.get(t['name'], {})) for t in BASE['tasks']]}
  if model_type not in ('mmoe', 'ple'):
    raw['model'] = {k: v for k, v in raw['model'].items()
                    if k not in ('num_experts', 'expert_units')}
  return parse_config(raw)


def _features(n=32, seed=0):
  rng = np.random.default_rng(seed)
  return {'item': tf.constant(rng.integers(0, 20, n)), 'device': tf.constant(rng.integers(0, 4, n)),
          'position': tf.constant(rng.normal(size=n).astype(np.float32))}


def _labels(n=32, seed=0):
  rng = np.random.default_rng(seed + 1)
  click = rng.integers(0, 2, n).astype(np.float32)
  return {'click': click, 'conversion': click * rng.integers(0, 2, n).astype(np.float32),
          'dwell_seconds': click * rng.gamma(2.0, 10.0, n).astype(np.float32)}


@pytest.mark.parametrize('model_type', sorted(MODELS))
def test_outputs_are_named_by_task_with_batch_shape(model_type):
  config = _config(model_type)
  network = build_network(config, CARDINALITIES, {'dwell': 7.0})
  outputs = network.model(_features())
  assert set(outputs) == set(output_labels(config))
  assert {'click', 'conversion', 'dwell'} <= set(outputs)
  for name, value in outputs.items():
    assert value.shape == (32, 1), name
  for name in ('click', 'conversion'):
    assert np.all((outputs[name].numpy() > 0) & (outputs[name].numpy() < 1))


@pytest.mark.parametrize('model_type', sorted(MODELS))
def test_saved_model_round_trip(model_type, tmp_path):
  network = build_network(_config(model_type), CARDINALITIES).model
  features = _features()
  expected = network(features)
  network.save(str(tmp_path / 'model'), save_format='tf')
  reloaded = tf.keras.models.load_model(str(tmp_path / 'model'))
  actual = reloaded(features)
  for name in expected:
    np.testing.assert_allclose(actual[name].numpy(), expected[name].numpy(), rtol=1e-6)


@pytest.mark.parametrize('model_type', sorted(MODELS))
def test_groups_cover_every_trainable_variable_once(model_type):
  config = _config(model_type, dwell={'inputs_from': ['click']})
  model = MultiTaskModel(build_network(config, CARDINALITIES), config)
  model(_features(4))
  grouped = model.grouped_variables()  # raises if a variable is in no group or in two
  assert set(grouped) == {'trunk', 'click', 'conversion', 'dwell', 'loss_weights'}
  assert all(grouped.values())
  if model_type == 'mmoe':
    assert any('gate' in v.name for v in grouped['click'])
    assert any('experts' in v.name for v in grouped['trunk'])
  if model_type == 'ple':  # two levels ([12, 8]): experts and gates of each task at both
    for task in ('click', 'conversion', 'dwell'):
      names = {v.name.split('/')[0] for v in grouped[task]}
      assert {f'{task}_experts_0', f'{task}_experts_1', f'{task}_gate_0',
              f'{task}_gate_1'} <= names, names
    trunk = {v.name.split('/')[0] for v in grouped['trunk']}
    assert {'shared_experts_0', 'shared_experts_1', 'shared_gate_0'} <= trunk, trunk
    assert 'shared_gate_1' not in trunk  # no shared gate above the last level


@pytest.mark.parametrize('levels', [[12], [12, 8, 6]])
def test_ple_levels_and_cgc(levels):
  """One level is CGC (task and shared experts, task gates only); each level adds task
  experts, task gates and, below the last level, a shared gate over every expert."""
  raw = {**BASE, 'model': {'type': 'ple', 'expert_units': levels, 'num_shared_experts': 3,
                           'num_task_experts': 1}}
  config = parse_config(raw)
  network = build_network(config, CARDINALITIES)
  outputs = network.model(_features())
  assert {name: v.shape for name, v in outputs.items()} == {
      'click': (32, 1), 'conversion': (32, 1), 'dwell': (32, 1)}
  layers = {layer.name: layer for layer in network.model.layers}
  for level, units in enumerate(levels):
    assert layers[f'shared_experts_{level}'].kernel.shape[0] == 3
    assert layers[f'click_experts_{level}'].kernel.shape[0] == 1
    assert layers[f'click_experts_{level}'].units == units
    assert layers[f'click_gate_{level}'].units == 1 + 3
    has_shared_gate = f'shared_gate_{level}' in layers
    assert has_shared_gate == (level < len(levels) - 1)
    if has_shared_gate:
      assert layers[f'shared_gate_{level}'].units == 3 * 1 + 3


def test_esmm_ctcvr_is_ctr_times_cvr():
  config = _config('esmm')
  outputs = build_network(config, CARDINALITIES).model(_features())
  np.testing.assert_allclose(outputs['ctcvr'].numpy(),
                             outputs['ctr'].numpy() * outputs['cvr'].numpy(), rtol=1e-6)
  np.testing.assert_array_equal(outputs['conversion'].numpy(), outputs['ctcvr'].numpy())
  np.testing.assert_array_equal(outputs['click'].numpy(), outputs['ctr'].numpy())
  assert output_labels(config)['cvr'] == 'conversion'


def test_esmm_trains_cvr_tower_only_through_ctcvr():
  config = _config('esmm')
  model = MultiTaskModel(build_network(config, CARDINALITIES), config)
  model.compile(optimizer=model.group_optimizers['trunk'])
  before = [v.numpy().copy() for v in model.grouped_variables()['conversion']]
  model.train_on_batch(_features(), _labels())
  after = [v.numpy() for v in model.grouped_variables()['conversion']]
  assert any(not np.array_equal(b, a) for b, a in zip(before, after))


@pytest.mark.parametrize('model_type', ['shared_bottom', 'mmoe', 'ple'])
def test_stop_gradient_keeps_consumer_loss_out_of_producer_head(model_type):
  config = _config(model_type, dwell={'inputs_from': ['click']})
  network = build_network(config, CARDINALITIES)
  producer = network.groups['click']
  if model_type == 'ple':
    # Below the last level a task's experts also feed the shared gate, so every task's loss
    # reaches them by design; the producer's last level and tower must not see the consumer's.
    last = len(config.model.expert_units) - 1
    producer = [layer for layer in producer if not any(
        layer.name == f'click_{kind}_{level}' for kind in ('experts', 'gate')
        for level in range(last))]
    assert len(producer) < len(network.groups['click'])
  producer_vars = [v for layer in producer for v in layer.trainable_variables]
  consumer_vars = [v for layer in network.groups['dwell'] for v in layer.trainable_variables]
  labels = _labels()
  with tf.GradientTape(persistent=True) as tape:
    outputs = network.model(_features())
    consumer_loss = tf.reduce_mean(tf.square(outputs['dwell'][:, 0] - labels['dwell_seconds']))
  grads = tape.gradient(consumer_loss, producer_vars)
  assert all(g is None or not np.any(g.numpy()) for g in grads)
  assert all(g is not None for g in tape.gradient(consumer_loss, consumer_vars))
  # The estimate really is an input: the dwell head reads the click output.
  assert any('dwell_from_click' in layer.name for layer in network.model.layers)


def test_inputs_from_is_validated():
  with pytest.raises(ConfigError, match="tasks\\[2\\].inputs_from: 'clicks' is not one of"):
    _config('shared_bottom', dwell={'inputs_from': ['clicks']})
  with pytest.raises(ConfigError, match='inputs_from forms a cycle: click -> dwell -> click'):
    _config('shared_bottom', click={'inputs_from': ['dwell']}, dwell={'inputs_from': ['click']})
  raw = {**BASE, 'model': {'type': 'esmm', 'esmm_click_task': 'click'}}
  with pytest.raises(ConfigError, match='model.esmm_conversion_task: required'):
    parse_config(raw)
  raw['model']['esmm_conversion_task'] = 'dwell'
  with pytest.raises(ConfigError, match="task 'dwell' must be binary for esmm"):
    parse_config(raw)


def test_a_numeric_feature_with_buckets_adds_a_bucket_embedding_to_the_trunk(tmp_path):
  raw = {**BASE, 'features': [
      *BASE['features'][:2], {'name': 'position', 'type': 'numeric', 'buckets': 5,
                              'embedding_dim': 3}], 'model': {'trunk_units': [16]}}
  config = parse_config(raw)
  network = build_network(config, {**CARDINALITIES, 'position__bucket': 5})
  assert 'position__bucket' in network.model.input
  embedding = network.model.get_layer('position__bucket_embedding')
  assert embedding.input_dim == 5 and embedding.output_dim == 3
  assert embedding in network.groups['trunk']
  features = dict(_features(), position__bucket=tf.constant(np.arange(32) % 5))
  expected = network.model(features)
  network.model.save(str(tmp_path / 'model'), save_format='tf')
  reloaded = tf.keras.models.load_model(str(tmp_path / 'model'))
  for name, value in reloaded(features).items():
    np.testing.assert_allclose(value.numpy(), expected[name].numpy(), rtol=1e-6)
  # the bucket really is an input: another bucket, another prediction
  moved = network.model(dict(features, position__bucket=tf.constant((np.arange(32) + 1) % 5)))
  assert not np.allclose(moved['click'].numpy(), expected['click'].numpy())


def test_a_numeric_feature_with_periodic_adds_a_plr_embedding_to_the_trunk(tmp_path):
  """PLR (Gorishniy et al. 2022): ReLU(W [sin(2 pi c x), cos(2 pi c x)] + b), trainable c."""
  raw = {**BASE, 'features': [
      *BASE['features'][:2], {'name': 'position', 'type': 'numeric', 'periodic': 6,
                              'periodic_scale': 0.5, 'embedding_dim': 3}],
         'model': {'trunk_units': [16]}}
  config = parse_config(raw)
  network = build_network(config, CARDINALITIES)
  layer = network.model.get_layer('position_periodic')
  assert layer in network.groups['trunk']
  frequencies = layer.coefficients.numpy()
  assert frequencies.shape == (6,) and 0 < np.std(frequencies) < 2
  x = np.linspace(-2, 2, 32).astype(np.float32)
  kernel, bias = layer.dense.kernel.numpy(), layer.dense.bias.numpy()
  angles = 2 * np.pi * x[:, None] * frequencies[None, :]
  expected = np.maximum(np.concatenate([np.sin(angles), np.cos(angles)], 1) @ kernel + bias, 0)
  np.testing.assert_allclose(layer(tf.constant(x)).numpy(), expected, rtol=1e-5, atol=1e-6)
  # every trainable variable in exactly one group (the frequencies and the dense layer: trunk)
  model = MultiTaskModel(network, config)
  model(_features())
  grouped = model.grouped_variables()
  assert {v.name for v in layer.trainable_variables} <= {v.name for v in grouped['trunk']}
  features = _features()
  expected_outputs = network.model(features)
  network.model.save(str(tmp_path / 'model'), save_format='tf')
  reloaded = tf.keras.models.load_model(str(tmp_path / 'model'))
  for name, value in reloaded(features).items():
    np.testing.assert_allclose(value.numpy(), expected_outputs[name].numpy(), rtol=1e-6)
  with pytest.raises(ConfigError, match=r'features\[0\].periodic: only applies to numeric'):
    parse_config({**BASE, 'features': [{'name': 'item', 'type': 'categorical', 'periodic': 4}]})


def test_a_numeric_feature_with_piecewise_linear_bins_adds_a_dense_embedding_to_the_trunk(
    tmp_path):
  """PLE (Gorishniy et al. 2022): the bins Transform computes enter as one input each and
  become ReLU(W bins + b), a trunk layer; the model saves and reloads."""
  raw = {**BASE, 'features': [
      *BASE['features'][:2], {'name': 'position', 'type': 'numeric', 'piecewise_linear': 5,
                              'embedding_dim': 3}], 'model': {'trunk_units': [16]}}
  config = parse_config(raw)
  network = build_network(config, CARDINALITIES)
  layer = network.model.get_layer('position_piecewise_linear')
  assert layer in network.groups['trunk'] and layer.units == 3
  rng = np.random.default_rng(3)
  bins = np.sort(rng.uniform(size=(32, 5)).astype(np.float32), axis=1)[:, ::-1]
  features = {**_features(), **{f'position__piece{t}': tf.constant(bins[:, t])
                                for t in range(5)}}
  model = MultiTaskModel(network, config)
  model(features)
  assert {v.name for v in layer.trainable_variables} <= {
      v.name for v in model.grouped_variables()['trunk']}
  np.testing.assert_allclose(
      tf.keras.Model(network.model.inputs, layer.output)(features).numpy(),
      np.maximum(bins @ layer.kernel.numpy() + layer.bias.numpy(), 0), rtol=1e-5, atol=1e-6)
  expected_outputs = network.model(features)
  network.model.save(str(tmp_path / 'model'), save_format='tf')
  reloaded = tf.keras.models.load_model(str(tmp_path / 'model'))
  for name, value in reloaded(features).items():
    np.testing.assert_allclose(value.numpy(), expected_outputs[name].numpy(), rtol=1e-6)
  for mistake, message in (
      ({'name': 'item', 'type': 'categorical', 'piecewise_linear': 4},
       r'features\[0\].piecewise_linear: only applies to numeric'),
      ({'name': 'price', 'type': 'numeric', 'piecewise_linear': 1},
       r'features\[0\].piecewise_linear'),
      ({'name': 'price__piece2', 'type': 'numeric'}, r'features\[0\].name')):
    with pytest.raises(ConfigError, match=message):
      parse_config({**BASE, 'features': [mistake]})


@pytest.mark.parametrize('model_type', sorted(MODELS))
def test_cross_layers_follow_dcn_v2_in_every_architecture(model_type, tmp_path):
  """`cross_layers`: x1 = x0 * (W0 x0 + b0) + x0, x2 = x0 * (W1 x1 + b1) + x1 on the embedded
  input (Wang et al. 2021, eq. 1), in the trunk group; the model saves and reloads."""
  raw = {**BASE, 'model': {**BASE['model'], **MODELS[model_type], 'cross_layers': 2}}
  if model_type not in ('mmoe', 'ple'):
    raw['model'] = {k: v for k, v in raw['model'].items()
                    if k not in ('num_experts', 'expert_units')}
  config = parse_config(raw)
  network = build_network(config, CARDINALITIES)
  features = _features()
  x0 = tf.keras.Model(network.model.inputs,
                      network.model.get_layer('features').output)(features).numpy()
  assert x0.shape == (32, 4 + 2 + 1)
  x = x0
  for i in range(2):
    layer = network.model.get_layer(f'cross_{i}')
    assert layer in network.groups['trunk']
    x = x0 * (x @ layer.dense.kernel.numpy() + layer.dense.bias.numpy()) + x
  crossed = tf.keras.Model(network.model.inputs,
                           network.model.get_layer('cross_1').output)(features).numpy()
  np.testing.assert_allclose(crossed, x, rtol=1e-5, atol=1e-6)
  model = MultiTaskModel(network, config)
  model(features)
  grouped = model.grouped_variables()
  cross_variables = {v.name for i in range(2)
                     for v in network.model.get_layer(f'cross_{i}').trainable_variables}
  assert len(cross_variables) == 4 and cross_variables <= {v.name for v in grouped['trunk']}
  expected = network.model(features)
  network.model.save(str(tmp_path / 'model'), save_format='tf')
  reloaded = tf.keras.models.load_model(str(tmp_path / 'model'))
  for name, value in reloaded(features).items():
    np.testing.assert_allclose(value.numpy(), expected[name].numpy(), rtol=1e-6)
