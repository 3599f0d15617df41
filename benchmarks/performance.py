"""Performance benchmark: every stage's throughput, scaling, input efficiency, serving cost.

(Not a test: it prints markdown tables and writes JSON; targets are read off, never asserted.)

1. Stage throughput: the whole local pipeline (no cache) on generated logs of each size: wall
   seconds and rows/second of each component, the total, and peak RSS: the resident memory of
   the run's process plus every process it started (Beam workers in multi_processing mode),
   sampled every 0.25 s; its peak over the run and over each component's execution (ML
   Metadata's start and end times). Each size runs in its own process.
2. Scaling: total wall time and peak RSS of the largest size over the smallest.
3. Training input efficiency: the Trainer's examples/second reading the transformed TFRecords
   (the pipeline's own input function) against the same model and batch size fed from
   tensors already in memory (no input cost); also TFX's own reader (the DataAccessor's TFXIO
   dataset), the input before the block shuffle and before the packed columns, for
   comparison, and each input's examples/second alone, without training.
4. Serving cost: latency of the exported `serving_default` (parse + transform + model) at
   batch 1 and 256, p50 and p99, against the bare Keras network on transformed tensors.
5. Quality per second: per-task eval AUC after a fixed wall-clock training budget, at two
   batch sizes.

    .venv/bin/python benchmarks/performance.py --sizes 100000 1000000 \\
        [--work /tmp/mtl-perf] [--out benchmarks/results/performance.json] \\
        [--direct-workers 0]   # Beam DirectRunner multi_processing, one worker per core

Parts 3-5 use the smallest size's run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

STAGES = ['LogExampleGen', 'StatisticsGen', 'ImportSchemaGen', 'StrictExampleValidator',
          'Transform', 'Trainer', 'Evaluator', 'Pusher']
_CHILD = '''
import json, resource, sys, threading, time
import psutil
sys.path.insert(0, {repo!r})
import pipeline
from pipeline.config import load_config
from pipeline.local_runner import run_local
from pipeline.sample_logs import generate_logs

samples = []  # (time, RSS of this process and every descendant, e.g. Beam worker processes)
done = threading.Event()
def sample_rss():
  me = psutil.Process()
  while not done.is_set():
    total = 0
    for p in [me] + me.children(recursive=True):
      try:
        total += p.memory_info().rss
      except psutil.Error:
        pass
    samples.append((time.time(), total / 2**20))
    done.wait(0.25)

started = time.time()
generate_logs({logs!r}, rows={rows}, days=7, seed=3)
generated = time.time() - started
config = load_config({config!r}, base_dir={repo!r}).with_overrides(
    data={{'input_base': {logs!r}}}, serving={{'push_dir': {push!r}}}, beam={beam!r})
sampler = threading.Thread(target=sample_rss, daemon=True)
sampler.start()
started = time.time()
summary = run_local(config, {run!r}, enable_cache=False)
wall = time.time() - started
done.set()
sampler.join()
print('RESULT ' + json.dumps({{'summary': summary, 'wall_seconds': wall,
                              'generate_seconds': generated, 'rss_samples': samples,
                              'peak_rss_mb': max(m for _, m in samples),
                              'maxrss_self_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                              'maxrss_children_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
'''


def _stage_peaks(run_dir: str, samples: List[List[float]]) -> Dict[str, float]:
  """Peak sampled RSS (MB, process tree) while each component ran (ML Metadata times)."""
  from ml_metadata.metadata_store import metadata_store  # pylint: disable=g-import-not-at-top
  from pipeline.local_runner import metadata_config  # pylint: disable=g-import-not-at-top
  from pipeline.run_summary import read_run  # pylint: disable=g-import-not-at-top
  store = metadata_store.MetadataStore(metadata_config(run_dir))
  with open(os.path.join(run_dir, 'run_summary.json')) as f:
    name = json.load(f)['pipeline']
  peaks = {}
  for node, info in read_run(store, name)['nodes'].items():
    during = [mb for t, mb in samples if info['started'] - 0.5 <= t <= info['ended'] + 0.5]
    peaks[node] = max(during) if during else None
  return peaks


def run_pipeline(rows: int, work: str, config: str, reuse: bool = False,
                 beam: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  base = os.path.join(work, f'rows{rows}')
  saved = os.path.join(base, 'result.json')
  if reuse and os.path.exists(saved):
    with open(saved) as f:
      return json.load(f)
  # A fresh run: no cache, and no model served from an earlier run (the Evaluator would also
  # evaluate it as the baseline, and the blessing would depend on it).
  for previous in ('run', 'serving'):
    shutil.rmtree(os.path.join(base, previous), ignore_errors=True)
  script = _CHILD.format(repo=REPO, logs=os.path.join(base, 'logs'), rows=rows, config=config,
                         push=os.path.join(base, 'serving'), run=os.path.join(base, 'run'),
                         beam=beam or {})
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          cwd=REPO)
  lines = [l for l in result.stdout.splitlines() if l.startswith('RESULT ')]
  if result.returncode or not lines:
    raise RuntimeError(f'pipeline run with {rows} rows failed:\n{result.stderr[-4000:]}')
  data = json.loads(lines[-1][len('RESULT '):])
  components = data['summary']['components']
  peaks = _stage_peaks(os.path.join(base, 'run'), data.pop('rss_samples'))
  data['stages'] = {name: {'seconds': components[name]['wall_seconds'],
                           'rows_per_second': rows / max(components[name]['wall_seconds'], 1e-3),
                           'peak_rss_mb': peaks.get(name)}
                    for name in STAGES if name in components}
  data['rows'] = rows
  data['beam'] = beam or {}
  data['run_dir'] = os.path.join(base, 'run')
  data['push_path'] = data['summary']['push'].get('path')
  data['metrics'] = {t: v['metrics'] for t, v in data['summary']['tasks'].items()}
  del data['summary']
  with open(saved, 'w') as f:
    json.dump(data, f)
  return data


# ---------------------------------------------------------------------------------------------
# Parts 3-5: on the artifacts of one pipeline run.


def _artifacts(run_dir: str):
  from ml_metadata.metadata_store import metadata_store  # pylint: disable=g-import-not-at-top
  from pipeline.local_runner import metadata_config  # pylint: disable=g-import-not-at-top
  from pipeline.run_summary import read_run  # pylint: disable=g-import-not-at-top
  store = metadata_store.MetadataStore(metadata_config(run_dir))
  with open(os.path.join(run_dir, 'run_summary.json')) as f:
    name = json.load(f)['pipeline']
  nodes = read_run(store, name)['nodes']
  transform = nodes['Transform']['outputs']
  return (transform['transformed_examples'][0], transform['transform_graph'][0].uri, nodes)


def _training_setup(run_dir: str, config_path: str, batch_size: int):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  from pipeline.config import load_config  # pylint: disable=g-import-not-at-top
  from trainer import input as trainer_input  # pylint: disable=g-import-not-at-top
  from trainer.model import MultiTaskModel  # pylint: disable=g-import-not-at-top
  from trainer.models import build_network  # pylint: disable=g-import-not-at-top

  examples, transform_uri, _ = _artifacts(run_dir)
  config = load_config(config_path, base_dir=REPO).with_overrides(
      training={'batch_size': batch_size})
  tf_transform_output = tft.TFTransformOutput(transform_uri)

  def files(split):
    return [os.path.join(examples.uri, f'Split-{split}', '*')]

  train = trainer_input.make_dataset(files('train'), tf_transform_output, config, batch_size)
  evaluate = trainer_input.make_dataset(files('eval'), tf_transform_output, config, batch_size,
                                      shuffle=False)

  def new_model():
    tf.keras.utils.set_random_seed(config.training.seed)
    network = build_network(config, trainer_input.cardinalities(config, tf_transform_output))
    model = MultiTaskModel(network, config)
    model.compile(optimizer=model.group_optimizers['trunk'])
    return model

  return config, train, evaluate, new_model, examples, tf_transform_output


def _tfxio_dataset(examples_mlmd, tf_transform_output, config, batch_size: int):
  """The Trainer's input before it read the files itself: TFX's DataAccessor factory (TFXIO
  `TensorFlowDataset`, a parallel interleave of the files), same shuffle and batch."""
  from tfx.components.trainer import fn_args_utils  # pylint: disable=g-import-not-at-top
  from tfx.components.util import tfxio_utils  # pylint: disable=g-import-not-at-top
  from tfx.types import standard_artifacts  # pylint: disable=g-import-not-at-top
  from tfx_bsl.public import tfxio  # pylint: disable=g-import-not-at-top
  from trainer.preprocessing import unpack_transformed  # pylint: disable=g-import-not-at-top
  examples = standard_artifacts.Examples()
  examples.set_mlmd_artifact(examples_mlmd)
  accessor = fn_args_utils.DataAccessor(
      tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([examples], []),
      record_batch_factory=None, data_view_decode_fn=None)
  dataset = accessor.tf_dataset_factory(
      [os.path.join(examples.uri, 'Split-train', '*')],
      tfxio.TensorFlowDatasetOptions(batch_size=batch_size, shuffle=True,
                                     shuffle_seed=config.training.seed, num_epochs=None),
      tf_transform_output.transformed_metadata.schema)
  from trainer.preprocessing import network_inputs  # pylint: disable=g-import-not-at-top
  features = network_inputs(config)
  labels = [t.label for t in config.tasks]

  def features_and_labels(batch):
    columns = unpack_transformed(config, batch)
    return {n: columns[n] for n in features}, {n: columns[n] for n in labels}

  return dataset.map(features_and_labels)


def _record_shuffle_dataset(examples_mlmd, tf_transform_output, config, batch_size: int):
  """The Trainer's input before the block shuffle: records through a 10,000-record shuffle
  buffer, then batched and parsed per batch (same files, seed and parsing)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer.preprocessing import unpack_transformed  # pylint: disable=g-import-not-at-top
  from trainer.input import packed_feature_spec  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(examples_mlmd.uri, 'Split-train', '*')))
  spec = packed_feature_spec(config, tf_transform_output)
  from trainer.preprocessing import network_inputs  # pylint: disable=g-import-not-at-top
  features = network_inputs(config)
  labels = [t.label for t in config.tasks]

  def parse(serialized):
    columns = unpack_transformed(config, tf.io.parse_example(serialized, spec))
    return {n: columns[n] for n in features}, {n: columns[n] for n in labels}

  seed = config.training.seed
  return (tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed)
          .interleave(lambda f: tf.data.TFRecordDataset(f, compression_type='GZIP'),
                      cycle_length=min(len(files), 4))
          .shuffle(10000, seed=seed).repeat().batch(batch_size, drop_remainder=True)
          .map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .prefetch(tf.data.AUTOTUNE))


def _per_feature_dataset(examples_mlmd, tf_transform_output, config, batch_size: int,
                         directory: str):
  """The Trainer's input before the packed columns (change 8): the same training records
  rewritten with one tf.Example feature per feature and label (gzip, as Beam writes it) in
  `directory`, read by the Trainer's block shuffle (`trainer.input.block_shuffle`)."""
  import gzip  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer import input as trainer_input  # pylint: disable=g-import-not-at-top
  from trainer.preprocessing import (  # pylint: disable=g-import-not-at-top
      transformed_layout, unpack_transformed)
  packed_spec = trainer_input.packed_feature_spec(config, tf_transform_output)
  from trainer.preprocessing import network_inputs  # pylint: disable=g-import-not-at-top
  features = network_inputs(config)
  labels = [t.label for t in config.tasks]
  os.makedirs(directory, exist_ok=True)
  files = []
  for part, path in enumerate(sorted(glob.glob(os.path.join(examples_mlmd.uri, 'Split-train',
                                                             '*')))):
    uncompressed = os.path.join(directory, f'part-{part}.tfrecord')
    with tf.io.TFRecordWriter(uncompressed) as writer:
      for serialized in tf.data.TFRecordDataset(path, compression_type='GZIP').batch(8192):
        columns = unpack_transformed(config, tf.io.parse_example(serialized, packed_spec))
        columns = {name: values.numpy().tolist() for name, values in columns.items()}
        for row in range(len(serialized)):
          example = tf.train.Example()
          for name, values in columns.items():
            value = example.features.feature[name]
            (value.int64_list if isinstance(values[row], int) else value.float_list).value.append(
                values[row])
          writer.write(example.SerializeToString(deterministic=True))
    with open(uncompressed, 'rb') as source, gzip.open(uncompressed + '.gz', 'wb',
                                                       compresslevel=6) as target:
      shutil.copyfileobj(source, target)  # zlib's default level, as Beam's gzip sink
    os.remove(uncompressed)
    files.append(uncompressed + '.gz')
  spec = {name: tf.io.FixedLenFeature([], packed_spec[column].dtype)
          for name, (column, _) in transformed_layout(config).items()}
  seed = config.training.seed
  files = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed)
  return (trainer_input.block_shuffle(
      tf.data.TFRecordDataset(files, compression_type='GZIP').repeat(),
      lambda serialized: tf.io.parse_example(serialized, spec), seed, batch_size)
          .map(lambda c: ({n: c[n] for n in features}, {n: c[n] for n in labels}))
          .prefetch(tf.data.AUTOTUNE))


def _input_only(dataset, batch_size: int, batches: int = 1000) -> Dict[str, float]:
  """Examples/second and CPU microseconds per example of the input pipeline alone."""
  iterator = iter(dataset)
  for _ in range(20):
    next(iterator)
  started, cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(iterator)
  n = batches * batch_size
  return {'examples_per_second': n / (time.perf_counter() - started),
          'cpu_us_per_example': (time.process_time() - cpu) / n * 1e6}


def _steady_training_rate(model, dataset, batch_size: int, steps: int,
                          warmup: int = 50) -> Dict[str, float]:
  """Examples/second (and process CPU microseconds per example) over `steps` training steps
  after `warmup` ones, timed between the steps by a callback.

  Not the time of the whole `fit` call: when a `fit` ends, deleting its input iterator waits
  for tf.data's autotuning thread, which wakes at 1.27, 2.55, 5.11, 10.23 s... after the
  iterator was made (a doubling period), so `fit` calls of 1 to 5 s measured whole took 2.55
  or 5.11 s whatever their work (seen as examples/s rates stuck at 50,000, 75,000, 100,000).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  class Clock(tf.keras.callbacks.Callback):

    def __init__(self):
      super().__init__()
      self._supports_tf_logs = True  # no per-step copy of the logs to Python
      self.started = self.ended = self.cpu_started = self.cpu_ended = 0.0

    def on_train_batch_begin(self, batch, logs=None):
      if batch == warmup:
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, batch, logs=None):
      self.ended, self.cpu_ended = time.perf_counter(), time.process_time()

  clock = Clock()
  model.fit(dataset, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[clock])
  n = steps * batch_size
  return {'examples_per_second': n / (clock.ended - clock.started),
          'cpu_us_per_example': (clock.cpu_ended - clock.cpu_started) / n * 1e6}


def input_efficiency(run_dir: str, config_path: str, batch_size: int = 256,
                     steps: int = 500, rounds: int = 12) -> Dict[str, Any]:
  """Training examples/second from each input, and its share of the in-memory upper bound.

  One model per input, built and traced once; then `rounds` rounds, each training every
  model `steps` more steps on its input in turn, with the in-memory model trained before the
  first input and after each one. The machine's speed drifts by tens of percent within
  seconds, so an input's share is taken against the in-memory rates measured just before
  and just after it (the mean of the two: one machine state), and reported as the median
  over the rounds.
  """
  config, train, _, new_model, examples, tf_transform_output = _training_setup(
      run_dir, config_path, batch_size)
  tfxio_train = _tfxio_dataset(examples, tf_transform_output, config, batch_size)
  record_shuffle = _record_shuffle_dataset(examples, tf_transform_output, config, batch_size)
  copy_dir = tempfile.mkdtemp(prefix='per-feature-')
  per_feature = _per_feature_dataset(examples, tf_transform_output, config, batch_size, copy_dir)
  in_memory = train.take(50).cache().repeat()
  for _ in in_memory.take(50):  # materialise the cache before timing
    pass
  inputs = (('tfrecords', train), ('per_feature_tfrecords', per_feature),
            ('record_shuffle_tfrecords', record_shuffle), ('tfxio_tfrecords', tfxio_train))
  models = {}
  for name, dataset in inputs + (('in_memory', in_memory),):
    models[name] = new_model()
    models[name].fit(dataset, steps_per_epoch=20, epochs=1, verbose=0)  # build and trace
  rates: Dict[str, List[Dict[str, float]]] = {name: [] for name, _ in inputs}
  rates['in_memory'] = []
  shares: Dict[str, List[float]] = {name: [] for name, _ in inputs}

  def bound():
    rates['in_memory'].append(
        _steady_training_rate(models['in_memory'], in_memory, batch_size, steps))
    return rates['in_memory'][-1]['examples_per_second']

  for _ in range(rounds):
    before = bound()
    for name, dataset in inputs:
      rates[name].append(_steady_training_rate(models[name], dataset, batch_size, steps))
      after = bound()
      shares[name].append(rates[name][-1]['examples_per_second'] / ((before + after) / 2))
      before = after
  result: Dict[str, Any] = {'steps_per_round': steps, 'rounds': rounds}
  for name, dataset in inputs + (('in_memory', in_memory),):
    per_round = [r['examples_per_second'] for r in rates[name]]
    entry = {
        'examples_per_second_by_round': per_round,
        'examples_per_second': statistics.median(per_round),
        'cpu_us_per_example': statistics.median(r['cpu_us_per_example'] for r in rates[name]),
        'input_only': _input_only(dataset, batch_size)}
    if name in shares:
      quartiles = statistics.quantiles(shares[name], n=4)
      entry.update({'share_of_upper_bound_by_round': shares[name],
                    'share_of_upper_bound': statistics.median(shares[name]),
                    'share_quartiles': [quartiles[0], quartiles[2]]})
    else:
      entry.update({'share_of_upper_bound': 1.0, 'share_quartiles': [1.0, 1.0]})
    result[name] = entry
  shutil.rmtree(copy_dir)
  result['ratio'] = result['tfrecords']['share_of_upper_bound']
  result['tfxio_ratio'] = result['tfxio_tfrecords']['share_of_upper_bound']
  return result


def serving_cost(push_path: str, logs_dir: str, config_path: str,
                 calls: int = 200) -> Dict[str, Any]:
  import gzip  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from components.records import record_to_example  # pylint: disable=g-import-not-at-top
  from pipeline.config import load_config  # pylint: disable=g-import-not-at-top
  config = load_config(config_path, base_dir=REPO)
  path = sorted(glob.glob(os.path.join(logs_dir, '*', '*.gz')))[0]
  with gzip.open(path, 'rt') as f:
    records = [json.loads(next(f)) for _ in range(256)]
  examples = [record_to_example(r, config, with_labels=False).SerializeToString()
              for r in records]
  # transform_features (TFMA's preprocessing) expects every raw column, labels included.
  labelled = [record_to_example(r, config).SerializeToString() for r in records]
  loaded = tf.saved_model.load(push_path)
  serve = loaded.signatures['serving_default']
  network = tf.keras.models.load_model(push_path, compile=False)
  from trainer.preprocessing import network_inputs  # pylint: disable=g-import-not-at-top
  feature_names = network_inputs(config)
  transform = loaded.signatures['transform_features']
  result = {}
  for batch in (1, 256):
    batch_examples = tf.constant(examples[:batch])
    transformed = transform(examples=tf.constant(labelled[:batch]))
    transformed = {n: transformed[n] for n in feature_names}
    bare = tf.function(lambda features: network(features, training=False))
    timings = {}
    for name, call in (('serving_default', lambda: serve(examples=batch_examples)),
                       ('bare_model', lambda: bare(transformed))):
      for _ in range(20):
        call()
      samples = []
      for _ in range(calls):
        started = time.perf_counter()
        outputs = call()
        _ = [v.numpy() for v in outputs.values()]
        samples.append((time.perf_counter() - started) * 1000)
      timings[name] = {'p50_ms': float(np.percentile(samples, 50)),
                       'p99_ms': float(np.percentile(samples, 99))}
    timings['p50_ratio'] = timings['serving_default']['p50_ms'] / timings['bare_model']['p50_ms']
    result[f'batch_{batch}'] = timings
  return result


def quality_per_second(run_dir: str, config_path: str, budget_seconds: float = 20.0,
                       batch_sizes=(256, 1024)) -> Dict[str, Any]:
  """Per-task eval AUC after `budget_seconds` of training (after 5 steps that trace the step),
  at each batch size. One `fit` that a callback stops when the budget is spent: a new `fit`
  per chunk of steps would restart the input at the start of the file each time."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  class Budget(tf.keras.callbacks.Callback):

    def __init__(self, warmup: int):
      super().__init__()
      self._supports_tf_logs = True
      self._warmup = warmup
      self.steps = 0
      self.started = None

    def on_train_batch_end(self, batch, logs=None):
      self.steps = batch + 1
      if self.steps == self._warmup:
        self.started = time.perf_counter()
      elif self.started is not None and time.perf_counter() - self.started >= budget_seconds:
        self.model.stop_training = True

  result = {}
  for batch_size in batch_sizes:
    config, train, evaluate, new_model, _, _ = _training_setup(run_dir, config_path,
                                                               batch_size)
    model = new_model()
    budget = Budget(warmup=5)
    model.fit(train, steps_per_epoch=10**7, epochs=1, verbose=0, callbacks=[budget])
    aucs = {t.name: tf.keras.metrics.AUC() for t in config.tasks if t.type == 'binary'}
    for features, labels in evaluate.take(max(1, 20000 // batch_size)):
      outputs = model.network(features, training=False)
      for task in config.tasks:
        if task.name in aucs:
          aucs[task.name].update_state(labels[task.label], outputs[task.name])
    result[f'batch_{batch_size}'] = {
        'budget_seconds': budget_seconds, 'steps': budget.steps,
        'examples_seen': budget.steps * batch_size,
        'auc': {name: float(m.result()) for name, m in aucs.items()}}
  return result


def _print_tables(report: Dict[str, Any]) -> None:
  runs = report['runs']
  print('\n## Stage throughput (wall seconds, rows/second, peak RSS of the process tree)\n')
  print('| stage | ' + ' | '.join(f'{r["rows"]:,} rows' for r in runs) + ' |')
  print('| --- |' + ' --- |' * len(runs))
  for stage in STAGES:
    cells = []
    for r in runs:
      s = r['stages'].get(stage)
      rss = f', {s["peak_rss_mb"]:,.0f} MB' if s and s.get('peak_rss_mb') else ''
      cells.append(f'{s["seconds"]:.1f} s ({s["rows_per_second"]:,.0f}/s{rss})' if s else 'n/a')
    print(f'| {stage} | ' + ' | '.join(cells) + ' |')
  print('| **total (run_local)** | ' + ' | '.join(
      f'{r["wall_seconds"]:.1f} s ({r["rows"] / r["wall_seconds"]:,.0f}/s)' for r in runs) + ' |')
  print('| peak RSS | ' + ' | '.join(f'{r["peak_rss_mb"]:,.0f} MB' for r in runs) + ' |')
  if 'scaling' in report:
    s = report['scaling']
    print(f'\nScaling {s["rows_ratio"]:.0f}x rows: wall time x{s["wall_ratio"]:.2f}, '
          f'peak RSS x{s["rss_ratio"]:.2f}')
  if 'input_efficiency' in report:
    e = report['input_efficiency']
    print(f'\n## Training input efficiency (medians of {e["rounds"]} rounds of '
          f'{e["steps_per_round"]} steps)\n')
    print('| input | training examples/s | CPU us/example | input alone examples/s | '
          'input alone CPU us/example | share of the upper bound (quartiles) |\n'
          '| --- | --- | --- | --- | --- | --- |')
    for name in ('tfrecords', 'per_feature_tfrecords', 'record_shuffle_tfrecords',
                 'tfxio_tfrecords', 'in_memory'):
      r = e[name]
      print(f'| {name} | {r["examples_per_second"]:,.0f} | {r["cpu_us_per_example"]:.2f} | '
            f'{r["input_only"]["examples_per_second"]:,.0f} | '
            f'{r["input_only"]["cpu_us_per_example"]:.2f} | {r["share_of_upper_bound"]:.2f} '
            f'({r["share_quartiles"][0]:.2f}-{r["share_quartiles"][1]:.2f}) |')
  if 'serving' in report:
    print('\n## Serving latency (ms)\n')
    print('| batch | serving_default p50 | p99 | bare model p50 | p99 | p50 ratio |')
    print('| --- | --- | --- | --- | --- | --- |')
    for batch, t in report['serving'].items():
      print(f'| {batch.split("_")[1]} | {t["serving_default"]["p50_ms"]:.2f} | '
            f'{t["serving_default"]["p99_ms"]:.2f} | {t["bare_model"]["p50_ms"]:.2f} | '
            f'{t["bare_model"]["p99_ms"]:.2f} | {t["p50_ratio"]:.2f} |')
  if 'quality_per_second' in report:
    print('\n## Quality per second (fixed training budget)\n')
    print('| batch | steps | examples | ' + ' | '.join(
        f'{n} AUC' for n in next(iter(report['quality_per_second'].values()))['auc']) + ' |')
    for batch, q in report['quality_per_second'].items():
      print(f'| {batch.split("_")[1]} | {q["steps"]} | {q["examples_seen"]:,} | ' +
            ' | '.join(f'{v:.4f}' for v in q['auc'].values()) + ' |')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--sizes', type=int, nargs='+', default=[100000, 1000000])
  parser.add_argument('--work', default='/tmp/mtl-performance')
  parser.add_argument('--config', default=os.path.join(REPO, 'schemas', 'impressions.yaml'))
  parser.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results',
                                                    'performance.json'))
  parser.add_argument('--reuse', action='store_true',
                      help='reuse pipeline runs already measured in --work')
  parser.add_argument('--skip-parts', default='', help='comma-separated: input,serving,quality')
  parser.add_argument('--direct-workers', type=int, default=None,
                      help='run Beam stages on the DirectRunner in multi_processing mode with '
                           'this many worker processes (0: one per core); default: the '
                           "config's beam section (in_memory, one worker)")
  args = parser.parse_args()
  os.makedirs(args.work, exist_ok=True)
  report: Dict[str, Any] = {'machine': {'cores': os.cpu_count(),
                                        'memory_gb': round(os.sysconf('SC_PAGE_SIZE') *
                                                           os.sysconf('SC_PHYS_PAGES') / 2**30)},
                            'runs': []}
  for rows in sorted(args.sizes):
    print(f'running the pipeline on {rows:,} rows ...', flush=True)
    beam = (None if args.direct_workers is None else
            {'direct_running_mode': 'multi_processing',
             'direct_num_workers': args.direct_workers})
    report['runs'].append(run_pipeline(rows, args.work, args.config, args.reuse, beam))
    print(json.dumps(report['runs'][-1]['stages']), flush=True)
  if len(report['runs']) > 1:
    small, large = report['runs'][0], report['runs'][-1]
    report['scaling'] = {'rows_ratio': large['rows'] / small['rows'],
                         'wall_ratio': large['wall_seconds'] / small['wall_seconds'],
                         'rss_ratio': large['peak_rss_mb'] / small['peak_rss_mb']}
  import pipeline  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  small = report['runs'][0]
  skip = set(args.skip_parts.split(',')) if args.skip_parts else set()
  if 'input' not in skip:
    print('training input efficiency ...', flush=True)
    report['input_efficiency'] = input_efficiency(small['run_dir'], args.config)
  if 'serving' not in skip and small.get('push_path'):
    print('serving latency ...', flush=True)
    report['serving'] = serving_cost(small['push_path'],
                                     os.path.join(os.path.dirname(small['run_dir']), 'logs'),
                                     args.config)
  if 'quality' not in skip:
    print('quality per second ...', flush=True)
    report['quality_per_second'] = quality_per_second(small['run_dir'], args.config)
  report['peak_rss_benchmark_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  _print_tables(report)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  for run in report['runs']:  # where this machine kept the runs is not a result
    run.pop('run_dir', None)
    run.pop('push_path', None)
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=2, sort_keys=True)
  print(f'\nwrote {args.out}')


if __name__ == '__main__':
  main()
