"""The Trainer's input: transformed examples as (features, labels) batches, block-shuffled,
sharded by data across workers (`make_dataset`), and what the network needs from Transform's
output (embedding cardinalities, label means)."""

from __future__ import annotations

import collections
from typing import Callable, Dict, List

import tensorflow as tf
import tensorflow_transform as tft

from pipeline.config import PipelineConfig
from trainer.preprocessing import (bucket_name, label_columns, network_inputs,
                                   transformed_layout, unpack_transformed, vocabulary_name)

_LABEL_MEAN_BATCHES = 20

# The training shuffle works on blocks of records, not on single records: each block is parsed
# at once, then put in a random order; the blocks themselves go through a shuffle buffer. With
# ~100-byte records, per-record work in tf.data (a shuffle buffer's hand-off of each record,
# parsing per batch) cost more than the record itself: docs/performance.md.
SHUFFLE_BLOCK = 8192   # records per block (at least the global batch)
SHUFFLE_BLOCKS = 8     # blocks in the block-order shuffle buffer (64k records with 8192)


def packed_feature_spec(config: PipelineConfig, tf_transform_output: tft.TFTransformOutput
                        ) -> Dict[str, tf.io.FixedLenFeature]:
  """Parse spec of the transformed examples' packed columns (`transformed_layout`), checked
  against the config: a column missing or of another width means Transform ran another
  config or an older preprocessing_fn, and its positions would be read as the wrong features."""
  widths = collections.Counter(column for column, _ in transformed_layout(config).values())
  transformed = tf_transform_output.transformed_feature_spec()
  wrong = [f'{column} (expected {width} values, found '
           f'{list(transformed[column].shape) if column in transformed else "no such column"})'
           for column, width in widths.items()
           if column not in transformed or list(transformed[column].shape) != [width]]
  if wrong:
    raise ValueError('the transformed examples do not match the config\'s features and tasks: '
                     + '; '.join(wrong))
  return {column: transformed[column] for column in widths}


def block_shuffle(records: tf.data.Dataset,
                  parse: Callable[[tf.Tensor], Dict[str, tf.Tensor]],
                  seed: int, batch_size: int) -> tf.data.Dataset:
  """Batches of parsed columns from a (repeated) dataset of serialized records, mixed by
  blocks (`make_dataset`): blocks of SHUFFLE_BLOCK records (at least the batch) through a
  seeded shuffle buffer of SHUFFLE_BLOCKS; `parse` turns a block into its columns, each with
  the block's records along its first axis; the block's rows put in the order of a stateless
  permutation keyed by the block's position; then re-cut into batches of `batch_size`."""
  block = max(SHUFFLE_BLOCK, batch_size)

  def parse_and_permute(position, serialized):
    order = tf.random.experimental.stateless_shuffle(
        tf.range(block), seed=tf.stack([tf.constant(seed, tf.int64), position]))
    return {name: tf.gather(values, order) for name, values in parse(serialized).items()}

  return (records.batch(block, drop_remainder=True)
          .shuffle(SHUFFLE_BLOCKS, seed=seed)
          .enumerate()
          .map(parse_and_permute, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .rebatch(batch_size, drop_remainder=True))


def make_dataset(file_pattern: List[str], tf_transform_output: tft.TFTransformOutput,
                 config: PipelineConfig, batch_size: int,
                 shuffle: bool = True) -> tf.data.Dataset:
  """(features, labels) batches of transformed examples, repeated indefinitely.

  Training input (`shuffle=True`): the TFRecord files in a seeded random order, read one
  after another (not interleaved: an interleave, even in one thread, costs about a quarter of
  the input's time per record, and ExampleGen already writes each split in random order),
  repeated; cut into blocks of SHUFFLE_BLOCK records; the blocks through a seeded shuffle
  buffer of SHUFFLE_BLOCKS; each block parsed with one `tf.io.parse_example` (its three
  packed columns, `trainer.preprocessing.transformed_layout`, unpacked by name; blocks in
  parallel) and its records put in a random order (a stateless permutation keyed by the
  block's position, so every epoch mixes differently); then re-cut into batches and
  prefetched (`block_shuffle`). A record can move anywhere within its block, and its block several blocks:
  mixing on the scale of the 10,000-record shuffle buffer this replaced, at about 60% of its
  input cost per example (the input alone, docs/performance.md).
  Evaluation input (`shuffle=False`): the files one after another in name order, batched
  and parsed per batch.

  Neither uses TFXIO's `TensorFlowDataset` (`DataAccessor.tf_dataset_factory`): that one reads
  through a parallel interleave, which hands every record between threads; with records of
  ~100 bytes the hand-off costs more than the reading (docs/performance.md).

  `batch_size` is the global batch. Under MultiWorkerMirroredStrategy Keras distributes the
  dataset with auto-shard policy DATA: every worker reads all the examples, in the same seeded
  order (every step above is deterministic), and keeps its own slice of each global batch.
  FILE (one file per worker) would read less, but Transform writes each split as a few gzip
  TFRecord files (one for a small log), so with FILE a worker could get no file or most of the
  data; DATA gives every worker an equal share whatever the file count, and each step's global
  batch is the one a single worker would train on.
  """
  files = sorted({f for pattern in file_pattern for f in tf.io.gfile.glob(pattern)})
  if not files:
    raise ValueError(f'no transformed examples match {file_pattern}')
  compressed = {f.endswith('.gz') for f in files}
  if len(compressed) > 1:
    raise ValueError(f'mixed gzip and uncompressed TFRecord files in {file_pattern}')
  compression = 'GZIP' if compressed.pop() else ''
  seed = config.training.seed
  spec = packed_feature_spec(config, tf_transform_output)
  feature_names = network_inputs(config)
  label_names = label_columns(config)  # the labels and the tasks' example weights

  def features_and_labels(columns):
    return ({n: columns[n] for n in feature_names}, {n: columns[n] for n in label_names})

  dataset = tf.data.Dataset.from_tensor_slices(files)
  if shuffle:
    dataset = dataset.shuffle(len(files), seed=seed)
  dataset = tf.data.TFRecordDataset(dataset, compression_type=compression).repeat()
  if shuffle:
    dataset = block_shuffle(
        dataset, lambda serialized: unpack_transformed(config,
                                                       tf.io.parse_example(serialized, spec)),
        seed, batch_size).map(features_and_labels)
  else:
    dataset = (dataset.batch(batch_size, drop_remainder=True)
               .map(lambda serialized: features_and_labels(
                   unpack_transformed(config, tf.io.parse_example(serialized, spec))),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return dataset.with_options(options)


def cardinalities(config: PipelineConfig,
                  tf_transform_output: tft.TFTransformOutput) -> Dict[str, int]:
  """Embedding rows per categorical feature (vocabulary size plus OOV buckets) and per
  numeric feature's quantile bucket input (its `buckets`)."""
  rows = {f.name: tf_transform_output.vocabulary_size_by_name(vocabulary_name(f.name)) +
          f.oov_buckets for f in config.categorical_features}
  rows.update({bucket_name(f.name): f.buckets for f in config.numeric_features if f.buckets})
  return rows


def estimate_label_means(dataset: tf.data.Dataset, config: PipelineConfig) -> Dict[str, float]:
  """Mean of each regression label over a few training batches (initial output bias),
  weighted by the task's example weight (its space) when it has one."""
  regression = [t for t in config.tasks if t.type == 'regression']
  if not regression:
    return {}
  sums = {t.name: 0.0 for t in regression}
  counts = {t.name: 0.0 for t in regression}
  for _, labels in dataset.take(_LABEL_MEAN_BATCHES):
    for t in regression:
      weights = (labels[t.weight_column] if t.weight_column
                 else tf.ones_like(labels[t.label]))
      sums[t.name] += float(tf.reduce_sum(weights * labels[t.label]))
      counts[t.name] += float(tf.reduce_sum(weights))
  return {name: total / counts[name] if counts[name] > 0 else 0.0
          for name, total in sums.items()}
