"""Performance benchmark: every stage's throughput, scaling, input efficiency, serving cost.

(Not a test: it prints markdown tables and writes JSON; targets are read off, never asserted.)

1. Stage throughput: the whole local pipeline (no cache) on generated logs of each size: wall
   seconds and rows/second of each component, the total, and the run's peak RSS (each size runs
   in its own process, so the peak is that run's).
2. Scaling: total wall time and peak RSS of the largest size over the smallest.
3. Training input efficiency: the Trainer's examples/second reading the transformed TFRecords
   (the pipeline's own input function) against the same model and batch size fed from
   tensors already in memory (no input cost).
4. Serving cost: latency of the exported `serving_default` (parse + transform + model) at
   batch 1 and 256, p50 and p99, against the bare Keras network on transformed tensors.
5. Quality per second: per-task eval AUC after a fixed wall-clock training budget, at two
   batch sizes.

    .venv/bin/python benchmarks/performance.py --sizes 100000 1000000 \\
        [--work /tmp/mtl-perf] [--out benchmarks/results/performance.json]

Parts 3-5 use the smallest size's run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

STAGES = ['LogExampleGen', 'StatisticsGen', 'ImportSchemaGen', 'StrictExampleValidator',
          'Transform', 'Trainer', 'Evaluator', 'Pusher']
_CHILD = '''
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import pipeline
from pipeline.config import load_config
from pipeline.local_runner import run_local
from pipeline.sample_logs import generate_logs
started = time.time()
generate_logs({logs!r}, rows={rows}, days=7, seed=3)
generated = time.time() - started
config = load_config({config!r}, base_dir={repo!r}).with_overrides(
    data={{'input_base': {logs!r}}}, serving={{'push_dir': {push!r}}})
started = time.time()
summary = run_local(config, {run!r}, enable_cache=False)
wall = time.time() - started
print('RESULT ' + json.dumps({{'summary': summary, 'wall_seconds': wall,
                              'generate_seconds': generated,
                              'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
'''


def run_pipeline(rows: int, work: str, config: str, reuse: bool = False) -> Dict[str, Any]:
  base = os.path.join(work, f'rows{rows}')
  saved = os.path.join(base, 'result.json')
  if reuse and os.path.exists(saved):
    with open(saved) as f:
      return json.load(f)
  script = _CHILD.format(repo=REPO, logs=os.path.join(base, 'logs'), rows=rows, config=config,
                         push=os.path.join(base, 'serving'), run=os.path.join(base, 'run'))
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          cwd=REPO)
  lines = [l for l in result.stdout.splitlines() if l.startswith('RESULT ')]
  if result.returncode or not lines:
    raise RuntimeError(f'pipeline run with {rows} rows failed:\n{result.stderr[-4000:]}')
  data = json.loads(lines[-1][len('RESULT '):])
  components = data['summary']['components']
  data['stages'] = {name: {'seconds': components[name]['wall_seconds'],
                           'rows_per_second': rows / max(components[name]['wall_seconds'], 1e-3)}
                    for name in STAGES if name in components}
  data['rows'] = rows
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
  from tfx.components.trainer import fn_args_utils  # pylint: disable=g-import-not-at-top
  from tfx.components.util import tfxio_utils  # pylint: disable=g-import-not-at-top
  from tfx.types import standard_artifacts  # pylint: disable=g-import-not-at-top
  from pipeline.config import load_config  # pylint: disable=g-import-not-at-top
  from trainer import run as trainer_run  # pylint: disable=g-import-not-at-top
  from trainer.model import MultiTaskModel  # pylint: disable=g-import-not-at-top
  from trainer.models import build_network  # pylint: disable=g-import-not-at-top

  examples_mlmd, transform_uri, _ = _artifacts(run_dir)
  examples = standard_artifacts.Examples()
  examples.set_mlmd_artifact(examples_mlmd)
  config = load_config(config_path, base_dir=REPO).with_overrides(
      training={'batch_size': batch_size})
  tf_transform_output = tft.TFTransformOutput(transform_uri)
  accessor = fn_args_utils.DataAccessor(
      tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([examples], []),
      record_batch_factory=None, data_view_decode_fn=None)

  def files(split):
    return [os.path.join(examples.uri, f'Split-{split}', '*')]

  train = trainer_run.make_dataset(files('train'), accessor, tf_transform_output, config,
                                   batch_size)
  evaluate = trainer_run.make_dataset(files('eval'), accessor, tf_transform_output, config,
                                      batch_size, shuffle=False)

  def new_model():
    tf.keras.utils.set_random_seed(config.training.seed)
    network = build_network(config, trainer_run.cardinalities(config, tf_transform_output))
    model = MultiTaskModel(network, config)
    model.compile(optimizer=model.group_optimizers['trunk'])
    return model

  return config, train, evaluate, new_model


def input_efficiency(run_dir: str, config_path: str, batch_size: int = 256,
                     steps: int = 300) -> Dict[str, Any]:
  _, train, _, new_model = _training_setup(run_dir, config_path, batch_size)
  in_memory = train.take(50).cache().repeat()
  for _ in in_memory.take(50):  # materialise the cache before timing
    pass
  result = {}
  for name, dataset in (('tfrecords', train), ('in_memory', in_memory)):
    model = new_model()
    model.fit(dataset, steps_per_epoch=20, epochs=1, verbose=0)  # build and trace
    started = time.time()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.time() - started
    result[name] = {'steps': steps, 'seconds': seconds,
                    'examples_per_second': steps * batch_size / seconds}
  result['ratio'] = (result['tfrecords']['examples_per_second'] /
                     result['in_memory']['examples_per_second'])
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
  feature_names = [f.name for f in config.features]
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
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  result = {}
  for batch_size in batch_sizes:
    config, train, evaluate, new_model = _training_setup(run_dir, config_path, batch_size)
    model = new_model()
    model.fit(train, steps_per_epoch=5, epochs=1, verbose=0)
    steps, started = 5, time.time()
    while time.time() - started < budget_seconds:
      model.fit(train, steps_per_epoch=20, epochs=1, verbose=0)
      steps += 20
    aucs = {t.name: tf.keras.metrics.AUC() for t in config.tasks if t.type == 'binary'}
    for features, labels in evaluate.take(max(1, 20000 // batch_size)):
      outputs = model.network(features, training=False)
      for task in config.tasks:
        if task.name in aucs:
          aucs[task.name].update_state(labels[task.label], outputs[task.name])
    result[f'batch_{batch_size}'] = {
        'budget_seconds': budget_seconds, 'steps': steps,
        'examples_seen': steps * batch_size,
        'auc': {name: float(m.result()) for name, m in aucs.items()}}
  return result


def _print_tables(report: Dict[str, Any]) -> None:
  runs = report['runs']
  print('\n## Stage throughput (wall seconds, rows/second)\n')
  print('| stage | ' + ' | '.join(f'{r["rows"]:,} rows' for r in runs) + ' |')
  print('| --- |' + ' --- |' * len(runs))
  for stage in STAGES:
    cells = []
    for r in runs:
      s = r['stages'].get(stage)
      cells.append(f'{s["seconds"]:.1f} s ({s["rows_per_second"]:,.0f}/s)' if s else 'n/a')
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
    print('\n## Training input efficiency\n')
    print('| input | examples/s |\n| --- | --- |')
    for name in ('tfrecords', 'in_memory'):
      print(f'| {name} | {e[name]["examples_per_second"]:,.0f} |')
    print(f'| ratio | {e["ratio"]:.2f} |')
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
  args = parser.parse_args()
  os.makedirs(args.work, exist_ok=True)
  report: Dict[str, Any] = {'machine': {'cores': os.cpu_count(),
                                        'memory_gb': round(os.sysconf('SC_PAGE_SIZE') *
                                                           os.sysconf('SC_PHYS_PAGES') / 2**30)},
                            'runs': []}
  for rows in sorted(args.sizes):
    print(f'running the pipeline on {rows:,} rows ...', flush=True)
    report['runs'].append(run_pipeline(rows, args.work, args.config, args.reuse))
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
