"""components/spill.py on Beam's DirectRunner: grouping through bucket files, and the shuffle."""

import collections
import glob
import os

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
import pytest
import tensorflow as tf

from components import spill


def _run_shuffle(records, directory, num_buckets):
  """The shuffled records in the order written, as LogExampleGen writes them."""
  with TestPipeline() as p:
    _ = (p | beam.Create(records)
         | spill.Shuffle(os.path.join(directory, 'spill'), num_buckets)  # pylint: disable=no-value-for-parameter
         | beam.io.WriteToTFRecord(os.path.join(directory, 'out', 'records')))
  files = sorted(glob.glob(os.path.join(directory, 'out', 'records*')))
  assert len(files) == 1
  return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def test_shuffle_is_a_permutation_in_order_key_order_per_bucket(tmp_path):
  records = [f'record-{i:05d}'.encode() for i in range(3000)] + [b'same', b'same']
  out = _run_shuffle(records, str(tmp_path), num_buckets=5)
  assert collections.Counter(out) == collections.Counter(records)
  assert out != records
  salt = b'mtl-pipeline'
  bucket_of = {r: int.from_bytes(spill.order_key(r, salt), 'little') % 5 for r in records}
  # Buckets come out whole, each sorted by the order key: a bucket's records are contiguous.
  runs = [bucket_of[r] for i, r in enumerate(out) if i == 0 or bucket_of[r] != bucket_of[out[i - 1]]]
  assert sorted(runs) == sorted(set(runs)) and len(runs) == 5
  for bucket in range(5):
    keys = [spill.order_key(r, salt) for r in out if bucket_of[r] == bucket]
    assert keys == sorted(keys)
  # Far from the input order: consecutive input records rarely stay neighbours.
  position = {r: i for i, r in enumerate(out)}
  neighbours = sum(abs(position[a] - position[b]) == 1 for a, b in zip(records, records[1:3000]))
  assert neighbours < 30


def test_group_in_buckets_brings_each_bucket_together(tmp_path):
  records = [(i % 7, f'{i % 7}:{i}'.encode()) for i in range(700)]

  def check(groups):
    groups = list(groups)
    assert sorted(bucket for bucket, _ in groups) == list(range(7))
    for bucket, files in groups:
      values = list(spill.read_bucket(files))
      assert sorted(values) == sorted(r for b, r in records if b == bucket)
      assert all(os.path.dirname(f) == str(tmp_path / 'spill') for f in files)

  with TestPipeline() as p:
    grouped = (p | beam.Create(records)
               | spill.GroupInBuckets(str(tmp_path / 'spill')))  # pylint: disable=no-value-for-parameter
    assert_that(grouped, check)


def test_a_cut_bucket_file_is_an_error_naming_it(tmp_path):
  path = tmp_path / '00000-cut'
  path.write_bytes(b'\x10\x00\x00\x00only-part')
  with pytest.raises(IOError, match='00000-cut: bucket file ends inside a record'):
    list(spill.read_bucket([str(path)]))


def test_bucket_count_follows_the_input_size_within_bounds():
  assert spill.buckets_for(0, 100) == 1
  assert spill.buckets_for(250, 100) == 3
  assert spill.buckets_for(10**15, 100) == spill.MAX_BUCKETS
