"""preprocessing_fn through tf.Transform's own Beam implementation on a few rows."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from pipeline.config import parse_config
from trainer.preprocessing import build_preprocessing_fn

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


@pytest.fixture(scope='module')
def transformed(tmp_path_factory):
  metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(FEATURE_SPEC))
  new_rows = [dict(ROWS[0], user='never-seen', device='tablet')]
  with tft_beam.Context(temp_dir=str(tmp_path_factory.mktemp('tft'))):
    (data, _), transform_fn = ((ROWS, metadata) | tft_beam.AnalyzeAndTransformDataset(
        build_preprocessing_fn(CONFIG)))
    new_data, _ = ((new_rows, metadata), transform_fn) | tft_beam.TransformDataset()
  return data, new_data


def test_vocabulary_with_frequency_threshold_and_oov(transformed):
  data, new_data = transformed
  ids = [row['user'] for row in data]
  # 'a' (3x) and 'b' (2x) make the vocabulary, most frequent first; 'c' (1x) is below the
  # threshold and falls into one of the 3 OOV buckets, ids 2..4.
  assert ids[:5] == [0, 0, 0, 1, 1]
  assert 2 <= ids[5] <= 4
  assert 2 <= new_data[0]['user'] <= 4


def test_vocabulary_top_k(transformed):
  data, new_data = transformed
  ids = [row['device'] for row in data]
  assert ids[:3] == [0, 0, 0]  # only the most frequent value is kept
  assert all(i == 1 for i in ids[3:])  # everything else is the single OOV bucket
  assert new_data[0]['device'] == 1


def test_numeric_scaling(transformed):
  data, _ = transformed
  positions = np.array([row['position'] for row in data])
  expected = (np.array(POSITIONS) - np.mean(POSITIONS)) / np.std(POSITIONS)
  np.testing.assert_allclose(positions, expected, rtol=1e-5)
  logs = np.log1p(PRICES)
  np.testing.assert_allclose([row['price'] for row in data],
                             (logs - logs.mean()) / logs.std(), rtol=1e-5)
  assert [row['raw'] for row in data] == [2.5 * i for i in range(6)]


def test_labels_pass_through_as_float(transformed):
  data, _ = transformed
  assert [row['click'] for row in data] == [i % 2 for i in range(6)]
  assert all(isinstance(row['click'], (float, np.floating)) for row in data)
  assert [row['dwell_seconds'] for row in data] == pytest.approx([10.0 * i for i in range(6)])
  assert not any(math.isnan(row['dwell_seconds']) for row in data)
