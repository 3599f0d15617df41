"""preprocessing_fn through tf.Transform's own Beam implementation on a few rows."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from pipeline.config import parse_config
from trainer.preprocessing import (analysed_range, build_preprocessing_fn,
                                   transform_piecewise_linear, transformed_layout,
                                   unpack_transformed)

CONFIG = parse_config({
    'name': 'prep-test',
    'data': {'input_base': '/unused', 'split_key': 'user'},
    'features': [
        {'name': 'user', 'type': 'categorical', 'frequency_threshold': 2, 'oov_buckets': 3},
        {'name': 'device', 'type': 'categorical', 'top_k': 1, 'oov_buckets': 1},
        {'name': 'position', 'type': 'numeric', 'scaling': 'z_score'},
        {'name': 'price', 'type': 'numeric', 'scaling': 'log'},
        {'name': 'raw', 'type': 'numeric', 'scaling': 'none'},
    ],
    'tasks': [{'name': 'click', 'label': 'click', 'type': 'binary'},
              {'name': 'dwell', 'label': 'dwell_seconds', 'type': 'regression'}],
})
FEATURE_SPEC = {
    'user': tf.io.FixedLenFeature([], tf.string),
    'device': tf.io.FixedLenFeature([], tf.string),
    'position': tf.io.FixedLenFeature([], tf.float32),
    'price': tf.io.FixedLenFeature([], tf.float32),
    'raw': tf.io.FixedLenFeature([], tf.float32),
    'click': tf.io.FixedLenFeature([], tf.int64),
    'dwell_seconds': tf.io.FixedLenFeature([], tf.float32),
}
USERS = ['a', 'a', 'a', 'b', 'b', 'c']
DEVICES = ['ios', 'ios', 'ios', 'web', 'web', 'android']
POSITIONS = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
PRICES = [0.0, 1.0, 3.0, 7.0, 15.0, 31.0]
ROWS = [{'user': u, 'device': d, 'position': p, 'price': pr, 'raw': 2.5 * i,
         'click': i % 2, 'dwell_seconds': 10.0 * i}
        for i, (u, d, p, pr) in enumerate(zip(USERS, DEVICES, POSITIONS, PRICES))]


def column(rows, name):
  """One feature's or label's transformed value in each row, from its packed column."""
  packed, index = transformed_layout(CONFIG)[name]
  return [row[packed][index] for row in rows]


@pytest.fixture(scope='module')
def transformed(tmp_path_factory):
  metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(FEATURE_SPEC))
  new_rows = [dict(ROWS[0], user='never-seen', device='tablet'),
              # far outside the analysed range, both ways: clamped to it
              dict(ROWS[0], position=1e30, price=1e30, raw=-1e30),
              dict(ROWS[0], position=-5.0, price=-3.0, raw=1e9)]
  with tft_beam.Context(temp_dir=str(tmp_path_factory.mktemp('tft'))):
    (data, _), transform_fn = ((ROWS, metadata) | tft_beam.AnalyzeAndTransformDataset(
        build_preprocessing_fn(CONFIG)))
    new_data, _ = ((new_rows, metadata), transform_fn) | tft_beam.TransformDataset()
  return data, new_data


def test_vocabulary_with_frequency_threshold_and_oov(transformed):
  data, new_data = transformed
  ids = column(data, 'user')
  # 'a' (3x) and 'b' (2x) make the vocabulary, most frequent first; 'c' (1x) is below the
  # threshold and falls into one of the 3 OOV buckets, ids 2..4.
  assert ids[:5] == [0, 0, 0, 1, 1]
  assert 2 <= ids[5] <= 4
  assert 2 <= column(new_data, 'user')[0] <= 4


def test_vocabulary_top_k(transformed):
  data, new_data = transformed
  ids = column(data, 'device')
  assert ids[:3] == [0, 0, 0]  # only the most frequent value is kept
  assert all(i == 1 for i in ids[3:])  # everything else is the single OOV bucket
  assert column(new_data, 'device')[0] == 1


def test_numeric_scaling(transformed):
  data, _ = transformed
  positions = np.array(column(data, 'position'))
  expected = (np.array(POSITIONS) - np.mean(POSITIONS)) / np.std(POSITIONS)
  np.testing.assert_allclose(positions, expected, rtol=1e-5)
  logs = np.log1p(PRICES)
  np.testing.assert_allclose(column(data, 'price'),
                             (logs - logs.mean()) / logs.std(), rtol=1e-5)
  assert column(data, 'raw') == [2.5 * i for i in range(6)]


def test_numeric_values_outside_the_analysed_range_are_clamped_to_it(transformed):
  data, new_data = transformed
  highest, lowest = np.argmax(POSITIONS), np.argmin(POSITIONS)
  for name in ('position', 'price'):
    assert column(new_data, name)[1] == pytest.approx(column(data, name)[highest]), name
    assert column(new_data, name)[2] == pytest.approx(column(data, name)[lowest]), name
  assert column(new_data, 'raw')[1:] == [0.0, 2.5 * 5]


def test_quantile_buckets_of_a_numeric_feature(tmp_path):
  """`buckets`: the scaled value as before, and the value's quantile bucket among the
  analysed rows as an integer id after the categorical ids; beyond the range, the edge
  buckets."""
  raw = CONFIG.to_dict()
  raw['features'][3]['buckets'] = 3  # price
  config = parse_config(raw)
  metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(FEATURE_SPEC))
  new_rows = [dict(ROWS[0], price=-5.0), dict(ROWS[0], price=1e9)]
  with tft_beam.Context(temp_dir=str(tmp_path)):
    (data, _), transform_fn = ((ROWS, metadata) | tft_beam.AnalyzeAndTransformDataset(
        build_preprocessing_fn(config)))
    new_data, _ = ((new_rows, metadata), transform_fn) | tft_beam.TransformDataset()
  assert transformed_layout(config)['price__bucket'] == ('categorical_ids', 2)
  packed, index = transformed_layout(config)['price__bucket']
  ids = [row[packed][index] for row in data]
  assert ids == sorted(ids) and ids[0] == 0 and ids[-1] == 2, ids  # PRICES increase
  assert len(set(ids)) == 3
  assert [row[packed][index] for row in new_data] == [0, 2]
  price, at = transformed_layout(config)['price']  # the scaled value is still there
  logs = np.log1p(PRICES)
  np.testing.assert_allclose([row[price][at] for row in data], (logs - logs.mean()) / logs.std(),
                             rtol=1e-5)


def test_labels_pass_through_as_float(transformed):
  data, _ = transformed
  assert column(data, 'click') == [i % 2 for i in range(6)]
  assert all(isinstance(v, (float, np.floating)) for v in column(data, 'click'))
  assert column(data, 'dwell_seconds') == pytest.approx([10.0 * i for i in range(6)])
  assert not any(math.isnan(v) for v in column(data, 'dwell_seconds'))


def test_outputs_are_packed_by_role_in_config_order(transformed):
  data, _ = transformed
  assert {name: row.shape for name, row in data[0].items()} == {
      'categorical_ids': (2,), 'numeric_values': (3,), 'labels': (2,)}
  assert transformed_layout(CONFIG) == {
      'user': ('categorical_ids', 0), 'device': ('categorical_ids', 1),
      'position': ('numeric_values', 0), 'price': ('numeric_values', 1),
      'raw': ('numeric_values', 2), 'click': ('labels', 0), 'dwell_seconds': ('labels', 1)}
  batch = {name: tf.constant(np.stack([row[name] for row in data])) for name in data[0]}
  unpacked = unpack_transformed(CONFIG, batch)
  for name in transformed_layout(CONFIG):
    np.testing.assert_array_equal(unpacked[name].numpy(), column(data, name))
  # A serving request has no labels, so tf.Transform leaves the labels column out.
  features_only = unpack_transformed(CONFIG, {n: v for n, v in batch.items() if n != 'labels'})
  assert set(features_only) == {'user', 'device', 'position', 'price', 'raw'}


def test_piecewise_linear_encoding_of_a_numeric_feature(tmp_path):
  """`piecewise_linear`: per quantile bin [l, r], 0 below, 1 above, (x - l) / (r - l) inside
  (Gorishniy et al. 2022, eq. 1), with the edges tf.Transform's quantiles and the data's min
  and max; a bin of no width (coinciding quantiles, here the many zeros) is 1 from its edge
  on. The expected values are computed in numpy from the edges the same analysis gives."""
  values = [0.0] * 12 + [float(v) for v in (2, 3, 5, 8, 13, 21, 34, 55)]  # zero-heavy
  spec = {'x': tf.io.FixedLenFeature([], tf.float32)}
  feature = parse_config({
      'name': 'ple', 'data': {'input_base': '/unused', 'split_key': 'id'},
      'features': [{'name': 'x', 'type': 'numeric', 'piecewise_linear': 4}],
      'tasks': [{'name': 'y', 'label': 'y', 'type': 'binary'}]}).features[0]

  def preprocessing_fn(inputs):
    low, high = analysed_range(inputs['x'])
    bins = transform_piecewise_linear(inputs['x'], feature, (low, high))
    inner = tft.quantiles(inputs['x'], 4, epsilon=0.01)
    ones = tf.ones_like(inputs['x'])
    return {'bins': tf.stack(bins, axis=1), 'x': inputs['x'],
            'edges': tf.concat([low * ones[:, None], inner * ones[:, None],
                                high * ones[:, None]], axis=1)}

  metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
  new_rows = [{'x': v} for v in (-1.0, 4.0, 1e6)]  # outside the range and between edges
  with tft_beam.Context(temp_dir=str(tmp_path)):
    (data, _), transform_fn = (([{'x': v} for v in values], metadata)
                               | tft_beam.AnalyzeAndTransformDataset(preprocessing_fn))
    new_data, _ = ((new_rows, metadata), transform_fn) | tft_beam.TransformDataset()
  edges = np.array(data[0]['edges'])
  assert edges[0] == 0 and edges[-1] == 55 and len(edges) == 5
  assert np.sum(np.diff(edges) == 0) >= 1  # the zeros give coinciding quantiles
  left, right = edges[:-1], edges[1:]
  for row in list(data) + list(new_data):
    x = np.clip(row['x'], 0, 55)
    expected = np.where(right > left,
                        np.clip((x - left) / np.where(right > left, right - left, 1), 0, 1),
                        (x >= right).astype(float))
    np.testing.assert_allclose(row['bins'], expected, rtol=1e-6, err_msg=str(row['x']))
  # the encoding is ordered and fills bins up to the value: a larger value never has less
  encodings = [np.array(row['bins']) for row in sorted(data, key=lambda r: r['x'])]
  assert all(np.all(b >= a) for a, b in zip(encodings, encodings[1:]))
  assert list(new_data[0]['bins']) == list(encodings[0])  # below the range: as the min
  assert list(new_data[2]['bins']) == [1.0] * 4  # above the range: every bin full
  assert 0 < max(new_data[1]['bins']) and min(new_data[1]['bins']) < 1


def test_piecewise_linear_bins_are_numeric_columns_after_the_features(tmp_path):
  raw = CONFIG.to_dict()
  raw['features'][3]['piecewise_linear'] = 3  # price
  config = parse_config(raw)
  layout = transformed_layout(config)
  assert [layout[f'price__piece{t}'] for t in range(3)] == [
      ('numeric_values', 3), ('numeric_values', 4), ('numeric_values', 5)]
  metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(FEATURE_SPEC))
  with tft_beam.Context(temp_dir=str(tmp_path)):
    (data, _), _ = ((ROWS, metadata) | tft_beam.AnalyzeAndTransformDataset(
        build_preprocessing_fn(config)))
  pieces = np.array([[row['numeric_values'][layout[f'price__piece{t}'][1]] for t in range(3)]
                     for row in data])
  assert pieces[0].tolist() == [0, 0, 0] and pieces[-1].tolist() == [1, 1, 1]  # min, max
  assert np.all(np.diff(pieces, axis=0) >= 0)  # PRICES increase
  price, at = layout['price']
  logs = np.log1p(PRICES)  # the scaled value is unchanged
  np.testing.assert_allclose([row[price][at] for row in data], (logs - logs.mean()) / logs.std(),
                             rtol=1e-5)
