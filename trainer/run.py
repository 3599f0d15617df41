"""TFX Trainer entry point: `run_fn(fn_args)`, given to the Trainer by dotted path.

Reads the transformed examples, builds the configured multi-task network and its training
wrapper inside the distribution strategy's scope, trains with per-group optimizers and the
configured loss weighting, writes TensorBoard logs and `training_summary.json` (per task: the
learned sigma and effective loss weight, per epoch and final) to the model-run directory, and
exports the serving SavedModel.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping

import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from pipeline.config import PipelineConfig
from trainer import export
from trainer.model import MultiTaskModel
from trainer.models import build_network
from trainer.preprocessing import CONFIG_KEY, vocabulary_name

TRAINING_SUMMARY_FILE = 'training_summary.json'
_LABEL_MEAN_BATCHES = 20
_MAX_EPOCHS = 10


def make_strategy() -> tf.distribute.Strategy:
  """MultiWorkerMirroredStrategy when TF_CONFIG names more than one worker, else the default."""
  tf_config = json.loads(os.environ.get('TF_CONFIG') or '{}')
  workers = tf_config.get('cluster', {}).get('worker', [])
  if len(workers) > 1:
    return tf.distribute.MultiWorkerMirroredStrategy()
  return tf.distribute.get_strategy()


def make_dataset(file_pattern: List[str], data_accessor: tfx.components.DataAccessor,
                 tf_transform_output: tft.TFTransformOutput, config: PipelineConfig,
                 batch_size: int, shuffle: bool = True) -> tf.data.Dataset:
  """(features, labels) batches of transformed examples, repeated indefinitely."""
  dataset = data_accessor.tf_dataset_factory(
      file_pattern,
      tfxio.TensorFlowDatasetOptions(batch_size=batch_size, shuffle=shuffle,
                                     shuffle_seed=config.training.seed, num_epochs=None),
      tf_transform_output.transformed_metadata.schema)
  feature_names = [f.name for f in config.features]
  label_names = [t.label for t in config.tasks]

  def split(batch):
    return ({n: batch[n] for n in feature_names}, {n: batch[n] for n in label_names})

  return dataset.map(split, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def cardinalities(config: PipelineConfig,
                  tf_transform_output: tft.TFTransformOutput) -> Dict[str, int]:
  """Embedding rows per categorical feature: vocabulary size plus OOV buckets."""
  return {f.name: tf_transform_output.vocabulary_size_by_name(vocabulary_name(f.name)) +
          f.oov_buckets for f in config.categorical_features}


def estimate_label_means(dataset: tf.data.Dataset, config: PipelineConfig) -> Dict[str, float]:
  """Mean of each regression label over a few training batches (initial output bias)."""
  regression = [t for t in config.tasks if t.type == 'regression']
  if not regression:
    return {}
  sums = {t.name: 0.0 for t in regression}
  count = 0
  for _, labels in dataset.take(_LABEL_MEAN_BATCHES):
    for t in regression:
      sums[t.name] += float(tf.reduce_sum(labels[t.label]))
    count += int(tf.size(labels[regression[0].label]))
  return {name: total / max(count, 1) for name, total in sums.items()}


def _summarise(history: Mapping[str, List[float]], config: PipelineConfig,
               model: MultiTaskModel) -> Dict:
  sigmas = model.loss_weighting.sigmas()
  weights = model.loss_weighting.task_weights()
  tasks = {}
  for t in config.tasks:
    tasks[t.name] = {
        'sigma': float(sigmas[t.name]),
        'loss_weight': float(weights[t.name]),
        'sigma_by_epoch': [float(v) for v in history.get(f'{t.name}_sigma', [])],
        'loss_weight_by_epoch': [float(v) for v in history.get(f'{t.name}_weight', [])],
        'train_loss_by_epoch': [float(v) for v in history.get(f'{t.name}_loss', [])],
        'eval_loss_by_epoch': [float(v) for v in history.get(f'val_{t.name}_loss', [])],
    }
  return {'loss_weighting': config.training.loss_weighting, 'tasks': tasks,
          'train_loss_by_epoch': [float(v) for v in history.get('loss', [])]}


def run_fn(fn_args: tfx.components.FnArgs) -> None:
  """Trains and exports the multi-task model (called by TFX's Trainer)."""
  config = PipelineConfig.from_json(fn_args.custom_config[CONFIG_KEY])
  tf.keras.utils.set_random_seed(config.training.seed)
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  strategy = make_strategy()
  batch_size = config.training.batch_size * strategy.num_replicas_in_sync

  train_dataset = make_dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                               config, batch_size)
  eval_dataset = make_dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                              config, batch_size, shuffle=False)
  label_means = estimate_label_means(train_dataset, config)

  with strategy.scope():
    network = build_network(config, cardinalities(config, tf_transform_output), label_means)
    model = MultiTaskModel(network, config)
    model.compile(optimizer=model.group_optimizers['trunk'])

  epochs = min(_MAX_EPOCHS, fn_args.train_steps)
  tensorboard = tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq='epoch')
  history = model.fit(
      train_dataset,
      epochs=epochs,
      steps_per_epoch=max(1, fn_args.train_steps // epochs),
      validation_data=eval_dataset,
      validation_steps=max(1, fn_args.eval_steps // epochs),
      callbacks=[tensorboard],
      verbose=2)

  summary = _summarise(history.history, config, model)
  with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, TRAINING_SUMMARY_FILE), 'w') as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  export.export_serving_model(model.network, config, tf_transform_output,
                              fn_args.serving_model_dir)
