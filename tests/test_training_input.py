"""The Trainer's input (`trainer.input.make_dataset`): block shuffle, determinism, coverage.

Records are written in the transformed format of the shared run (its real tf.Transform output
gives the packed columns' spec), each carrying its index in `position`, so the batches can be
traced back to the records.
"""

import collections
import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from conftest import output_uri
from trainer import input as run
from trainer.preprocessing import transformed_layout

NUM_RECORDS = 2048
BLOCK = 256
BATCH = 64


@pytest.fixture(scope='module')
def records(e2e_run, tmp_path_factory):
  """(config, TFTransformOutput, [gzip file patterns]) of NUM_RECORDS indexed records in 2 files."""
  config = e2e_run['config']
  transform_output = tft.TFTransformOutput(output_uri(e2e_run, 'Transform', 'transform_graph'))
  spec = run.packed_feature_spec(config, transform_output)
  layout = transformed_layout(config)
  directory = tmp_path_factory.mktemp('transformed')
  for part, indices in enumerate(np.array_split(np.arange(NUM_RECORDS), 2)):
    path = os.path.join(directory, f'part-{part}.gz')
    with tf.io.TFRecordWriter(path, options='GZIP') as writer:
      for i in indices:
        columns = {name: [0] * feature.shape[0] for name, feature in spec.items()}
        for name, (column, index) in layout.items():
          if spec[column].dtype == tf.int64:
            columns[column][index] = int(i) % 3
          else:
            columns[column][index] = float(i) if name == 'position' else 0.5
        example = tf.train.Example()
        for name, values in columns.items():
          value = example.features.feature[name]
          (value.int64_list if spec[name].dtype == tf.int64 else value.float_list).value.extend(
              values)
        writer.write(example.SerializeToString())
  return config, transform_output, [os.path.join(directory, '*.gz')]


def _indices(dataset, batches):
  """The `position` (record index) of each row of the first `batches` batches, batch by batch."""
  return [features['position'].numpy().astype(int).tolist()
          for features, _ in dataset.take(batches)]


@pytest.fixture
def small_blocks(monkeypatch):
  monkeypatch.setattr(run, 'SHUFFLE_BLOCK', BLOCK)


def test_training_input_is_deterministic_and_loses_no_record(records, small_blocks):
  config, transform_output, pattern = records
  epochs = 4
  batches = epochs * NUM_RECORDS // BATCH
  first = _indices(run.make_dataset(pattern, transform_output, config, BATCH), batches)
  again = _indices(run.make_dataset(pattern, transform_output, config, BATCH), batches)
  # Every worker under MultiWorkerMirroredStrategy (auto-shard DATA) must see the same batches.
  assert first == again
  assert all(len(batch) == BATCH for batch in first)
  features, labels = next(iter(run.make_dataset(pattern, transform_output, config, BATCH)))
  assert set(features) == {f.name for f in config.features}
  # the labels, and the example weight of each task on a space
  assert set(labels) == {t.label for t in config.tasks} | {
      t.weight_column for t in config.tasks if t.weight_column}
  counts = collections.Counter(i for batch in first for i in batch)
  assert set(counts) == set(range(NUM_RECORDS))
  # Blocks are shuffled through a buffer of run.SHUFFLE_BLOCKS, so one block may come an epoch
  # early or late, never more.
  assert set(counts.values()) <= {epochs - 1, epochs, epochs + 1}, collections.Counter(
      counts.values())


def test_training_input_mixes_records_and_differs_by_epoch(records, small_blocks):
  config, transform_output, pattern = records
  rows = [i for batch in _indices(run.make_dataset(pattern, transform_output, config, BATCH),
                                  2 * NUM_RECORDS // BATCH) for i in batch]
  # Records that were neighbours in the files are rarely neighbours in the batches.
  neighbours = sum(abs(a - b) == 1 for a, b in zip(rows, rows[1:]))
  assert neighbours < 0.02 * len(rows), neighbours
  # A block's records come out spread over the whole block, not in file order.
  first_batch = rows[:BATCH]
  assert max(first_batch) - min(first_batch) > BLOCK // 2
  assert first_batch != sorted(first_batch)
  # The same records meet again in the second epoch in another order.
  first_epoch, second_epoch = rows[:NUM_RECORDS], rows[NUM_RECORDS:]
  positions = {i: p for p, i in enumerate(second_epoch)}
  same_next = sum(positions.get(b) == positions.get(a, -2) + 1
                  for a, b in zip(first_epoch, first_epoch[1:]))
  assert same_next < 0.02 * NUM_RECORDS, same_next


def test_evaluation_input_reads_each_file_in_order(records):
  config, transform_output, pattern = records
  rows = [i for batch in _indices(
      run.make_dataset(pattern, transform_output, config, BATCH, shuffle=False),
      NUM_RECORDS // BATCH) for i in batch]
  # The two files one after another, each in its own order.
  assert rows == list(range(NUM_RECORDS))


def test_a_global_batch_larger_than_a_block_is_served_whole(records, small_blocks):
  config, transform_output, pattern = records
  batches = _indices(run.make_dataset(pattern, transform_output, config, 2 * BLOCK), 4)
  assert [len(batch) for batch in batches] == [2 * BLOCK] * 4
  assert len(set(i for batch in batches for i in batch)) > BLOCK


def test_transformed_examples_of_another_config_are_refused_naming_the_column(records):
  config, transform_output, pattern = records
  # One numeric feature more than Transform packed: its position would read another value.
  extra = dataclasses.replace(config, features=tuple(config.features) + (
      dataclasses.replace(config.numeric_features[0], name='extra_numeric'),))
  with pytest.raises(ValueError, match=r'numeric_values \(expected 3 values, found \[2\]\)'):
    run.make_dataset(pattern, transform_output, extra, BATCH)
