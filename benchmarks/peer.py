"""The pipeline against the script a user would write instead, on the same log and split.

(Not a test: it prints a markdown table and writes JSON; targets are read off, never asserted.)

The script (`python benchmarks/peer.py --script ...`, in a process of its own) does in one
process what the pipeline does in eight components, the way a user without TFX would:
- reads every JSON line of the log (orjson), keeps the first copy of a repeated line and skips
  lines without every configured field (the pipeline quarantines them);
- splits by the split key with TFX's own rule (sha256 of the key's serialized tf.train.Feature
  modulo 100 buckets, the first 100 * (1 - eval_fraction) train), so both hold the same rows;
- builds each categorical vocabulary with numpy on the train rows as the config says (top_k,
  frequency_threshold, most frequent first, out-of-vocabulary ids after it) and scales each
  numeric feature (clamped to the train range; z_score, log1p then z_score, none);
- trains the project's own network (`trainer.models.build_network`, `MultiTaskModel`, the same
  optimizers and loss weighting) for the same steps and batch size from tensors in memory;
- computes each task's eval AUC or RMSE with scikit-learn.
It does not validate statistics, check drift, export a SavedModel with its preprocessing,
compare with a served model or push: what the comparison prices is everything the pipeline
does beyond this.

The pipeline runs without its cache and with nothing served (a first run: the Evaluator
evaluates the new model only). Both sides run in their own process, sampled every 0.25 s for
resident memory (the process and its children); wall time from start to exit, imports
included.

    .venv/bin/python benchmarks/peer.py --rows 100000 [--days 3] [--work /tmp/mtl-peer] \\
        [--out benchmarks/results/peer.json]
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CONFIG = os.path.join(REPO, 'schemas', 'impressions.yaml')


# ---------------------------------------------------------------------------------------------
# The script.


def _read(input_base: str, pattern: str, fields: List[str]) -> Tuple[List[Dict[str, Any]], int]:
  import orjson  # pylint: disable=g-import-not-at-top
  rows, seen, skipped = [], set(), 0
  glob_pattern = pattern.replace('{YYYY}', '*').replace('{MM}', '*').replace(
      '{DD}', '*').replace('{SPAN}', '*')
  for path in sorted(glob.glob(os.path.join(input_base, glob_pattern))):
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
      for line in f:
        line = line.strip()
        if not line:
          continue
        digest = hashlib.blake2b(line, digest_size=16).digest()
        if digest in seen:
          continue
        seen.add(digest)
        try:
          record = orjson.loads(line)
        except orjson.JSONDecodeError:
          skipped += 1
          continue
        if not isinstance(record, dict) or any(record.get(f) is None for f in fields):
          skipped += 1
          continue
        rows.append(record)
  return rows, skipped


def _example_weights(rows: List[Dict[str, Any]], task, np):
  """A task's example weight per row: its row weight (or 1) where every `space.where` field
  has its value (as text) and, with `label_present`, the label is there; 0 elsewhere."""
  where = {name: str(value) for name, value in (task.space.where.items() if task.space else ())}
  present = bool(task.space and task.space.label_present)
  return np.asarray([
      (float(r[task.weight]) if task.weight else 1.0)
      if all(str(r.get(name)) == value for name, value in where.items())
      and not (present and r.get(task.label) is None) else 0.0
      for r in rows], dtype=np.float32)


def _is_eval(value: Any, eval_buckets: int, buckets: int) -> bool:
  """TFX's ExampleGen split (`_PartitionFn` with `partition_feature_name`): sha256 of the
  key's tf.train.Feature, serialized, modulo the buckets; train holds the first ones."""
  from tensorflow.core.example import feature_pb2  # pylint: disable=g-import-not-at-top
  if isinstance(value, int):
    feature = feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[value]))
  else:
    feature = feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[str(value).encode()]))
  bucket = int(hashlib.sha256(feature.SerializeToString(deterministic=True)).hexdigest(),
               16) % buckets
  return bucket >= buckets - eval_buckets


def _vocabulary(values, feature) -> Dict[str, int]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  tokens, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
  order = np.lexsort((tokens, -counts))  # most frequent first, ties by token
  kept = [tokens[i] for i in order if counts[i] >= max(feature.frequency_threshold, 1)]
  if feature.top_k:
    kept = kept[:feature.top_k]
  return {token: i for i, token in enumerate(kept)}


def run_script(config_path: str, input_base: str, out: str) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  started = time.time()
  import pipeline  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from sklearn.metrics import (  # pylint: disable=g-import-not-at-top
      mean_squared_error, roc_auc_score)
  from pipeline.config import SPLIT_BUCKETS, load_config  # pylint: disable=g-import-not-at-top
  from trainer.model import MultiTaskModel  # pylint: disable=g-import-not-at-top
  from trainer.models import build_network, output_weights  # pylint: disable=g-import-not-at-top
  config = load_config(config_path, base_dir=REPO)
  unsupported = [f.name for f in config.features if f.type == 'numeric' and (
      f.buckets or f.periodic or f.piecewise_linear)]
  if unsupported:
    raise SystemExit(f'the script scales numeric features only: {unsupported} use buckets, '
                     'periodic or piecewise_linear')
  timings = {}
  t0 = time.time()
  # A label of a task with a space may be absent (outside the space it reads 0).
  fields = [f.name for f in config.features] + [t.label for t in config.tasks if not t.space] + [
      config.data.split_key]
  rows, skipped = _read(input_base, config.data.file_pattern, fields)
  timings['read'] = time.time() - t0

  t0 = time.time()
  eval_buckets = round(config.data.eval_fraction * SPLIT_BUCKETS)
  is_eval = np.array([_is_eval(r[config.data.split_key], eval_buckets, SPLIT_BUCKETS)
                      for r in rows])
  timings['split'] = time.time() - t0

  t0 = time.time()
  columns, cardinalities = {}, {}
  for feature in config.features:
    raw = [r[feature.name] for r in rows]
    if feature.type == 'categorical':
      raw = np.asarray([str(v) for v in raw])
      vocabulary = _vocabulary(raw[~is_eval], feature)
      oov = max(feature.oov_buckets, 1)
      ids = np.array([vocabulary.get(v, -1) for v in raw], dtype=np.int64)
      unknown = ids < 0
      ids[unknown] = len(vocabulary) + np.array(
          [int(hashlib.md5(v.encode()).hexdigest(), 16) % oov for v in raw[unknown]],
          dtype=np.int64)
      columns[feature.name] = ids
      cardinalities[feature.name] = len(vocabulary) + oov
    else:
      values = np.asarray(raw, dtype=np.float32)
      train = values[~is_eval]
      clamped = np.clip(values, train.min(), train.max())
      if feature.scaling == 'log':
        clamped, train = np.log1p(np.maximum(clamped, 0)), np.log1p(np.maximum(train, 0))
      if feature.scaling in ('log', 'z_score'):
        std = train.std()
        clamped = (clamped - train.mean()) / (std if std > 0 else 1.0)
      columns[feature.name] = clamped.astype(np.float32)
  labels = {t.label: np.asarray([r.get(t.label) or 0 for r in rows], dtype=np.float32)
            for t in config.tasks}  # keyed as the training step reads them
  # Each task's example weight (tasks[].space, tasks[].weight), read by the training step too.
  labels.update({t.weight_column: _example_weights(rows, t, np)
                 for t in config.tasks if t.weight_column})
  evaluated_on = output_weights(config)  # {output: weight column}: the tasks on a space
  timings['vocabularies_and_scaling'] = time.time() - t0

  t0 = time.time()
  tf.keras.utils.set_random_seed(config.training.seed)
  train_features = {k: v[~is_eval] for k, v in columns.items()}
  train_labels = {k: v[~is_eval] for k, v in labels.items()}
  # The initial output bias of a regression head (binary heads start at 0, as in the Trainer).
  label_means = {t.name: float(np.average(
      train_labels[t.label], weights=train_labels.get(t.weight_column)))
                 for t in config.tasks if t.type == 'regression'}
  model = MultiTaskModel(build_network(config, cardinalities, label_means), config)
  model.compile(optimizer=model.group_optimizers['trunk'])
  dataset = (tf.data.Dataset.from_tensor_slices((train_features, train_labels))
             .shuffle(65536, seed=config.training.seed).repeat()
             .batch(config.training.batch_size, drop_remainder=True).prefetch(2))
  model.fit(dataset, steps_per_epoch=config.training.train_steps, epochs=1, verbose=0)
  timings['train'] = time.time() - t0

  t0 = time.time()
  eval_features = {k: v[is_eval] for k, v in columns.items()}
  predictions = model.network.predict(eval_features, batch_size=4096, verbose=0)
  metrics = {}
  for task in config.tasks:
    truth = labels[task.label][is_eval]
    predicted = np.asarray(predictions[task.name]).reshape(-1)
    column = evaluated_on.get(task.name)
    weights = labels[column][is_eval] if column else None
    metrics[task.name] = ({'auc': float(roc_auc_score(truth, predicted, sample_weight=weights))}
                          if task.type == 'binary' else
                          {'root_mean_squared_error': float(np.sqrt(mean_squared_error(
                              truth, predicted, sample_weight=weights)))})
  timings['evaluate'] = time.time() - t0
  with open(out, 'w') as f:
    json.dump({'rows': len(rows), 'skipped': skipped, 'train': int((~is_eval).sum()),
               'eval': int(is_eval.sum()), 'metrics': metrics,
               'stage_seconds': {k: round(v, 2) for k, v in timings.items()},
               'seconds_after_start': round(time.time() - started, 2)}, f, indent=2)


# ---------------------------------------------------------------------------------------------
# Measuring both.


def _measured(argv: List[str], env: Dict[str, str]) -> Dict[str, Any]:
  """Runs `argv`; wall seconds and the peak resident memory of it and its children."""
  import psutil  # pylint: disable=g-import-not-at-top
  started = time.time()
  process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  peak = [0]
  done = threading.Event()

  def sample():
    me = psutil.Process(process.pid)
    while not done.is_set():
      try:
        total = me.memory_info().rss + sum(c.memory_info().rss
                                           for c in me.children(recursive=True))
        peak[0] = max(peak[0], total)
      except psutil.Error:
        pass
      time.sleep(0.25)

  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  output = process.communicate()[0].decode(errors='replace')
  done.set()
  thread.join()
  if process.returncode != 0:
    raise SystemExit(f'{argv[:4]} failed:\n{output[-3000:]}')
  return {'wall_seconds': round(time.time() - started, 1), 'peak_rss_mb': round(peak[0] / 2**20)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rows', type=int, nargs='+', default=[100000])
  parser.add_argument('--days', type=int, default=3)
  parser.add_argument('--work', default='/tmp/mtl-peer')
  parser.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results', 'peer.json'))
  parser.add_argument('--script', nargs=3, metavar=('CONFIG', 'LOGS', 'OUT'),
                      help=argparse.SUPPRESS)  # the script side, in its own process
  args = parser.parse_args()
  if args.script:
    run_script(*args.script)
    return
  bin_dir = os.path.dirname(sys.executable)
  env = dict(os.environ, TF_USE_LEGACY_KERAS='1', PYTHONHASHSEED='0', TF_CPP_MIN_LOG_LEVEL='2')
  results = []
  for rows in args.rows:
    work = os.path.join(args.work, str(rows))
    logs = os.path.join(work, 'logs')
    if not os.path.isdir(logs):
      subprocess.run([os.path.join(bin_dir, 'mtlp'), 'generate-logs', '--rows', str(rows),
                      '--days', str(args.days), '--out', logs], env=env, check=True,
                     capture_output=True)
    script_out = os.path.join(work, 'script.json')
    script = _measured([sys.executable, os.path.abspath(__file__), '--script', CONFIG, logs,
                        script_out], env)
    with open(script_out) as f:
      script.update(json.load(f))
    run_dir = os.path.join(work, 'run')
    # A first run: nothing served, so the Evaluator evaluates the new model only.
    shutil.rmtree(os.path.join(work, 'serving'), ignore_errors=True)
    pipeline = _measured([os.path.join(bin_dir, 'mtlp'), 'run', '--config', CONFIG,
                          '--output', run_dir, '--logs', logs, '--push-dir',
                          os.path.join(work, 'serving'), '--no-cache'], env)
    with open(os.path.join(run_dir, 'run_summary.json')) as f:
      summary = json.load(f)
    pipeline['stage_seconds'] = {n: c['wall_seconds'] for n, c in summary['components'].items()}
    pipeline['metrics'] = {name: {m: task['metrics'].get(m) for m in (
        'auc', 'root_mean_squared_error') if m in task['metrics']}
                           for name, task in summary['tasks'].items()}
    pipeline['examples_by_split'] = summary.get('ingestion', {}).get('examples_by_split')
    results.append({'rows': rows, 'script': script, 'pipeline': pipeline,
                    'wall_ratio': round(pipeline['wall_seconds'] / script['wall_seconds'], 2),
                    'memory_ratio': round(pipeline['peak_rss_mb'] / script['peak_rss_mb'], 2)})

  print('| rows | side | wall s | peak RSS MB | examples train / eval | metrics |')
  print('| --- | --- | --- | --- | --- | --- |')
  for r in results:
    for side in ('script', 'pipeline'):
      s = r[side]
      split = (f'{s["train"]} / {s["eval"]}' if side == 'script' else
               ' / '.join(str((s['examples_by_split'] or {}).get(k)) for k in ('train', 'eval')))
      shown = ', '.join(f'{t} {list(m.values())[0]:.4f}' for t, m in s['metrics'].items())
      print(f'| {r["rows"]:,} | {side} | {s["wall_seconds"]} | {s["peak_rss_mb"]} | {split} | '
            f'{shown} |')
    print(f'| {r["rows"]:,} | pipeline / script | {r["wall_ratio"]}x | {r["memory_ratio"]}x | | |')
  for r in results:
    print(f'\n{r["rows"]:,} rows, seconds per stage: script {r["script"]["stage_seconds"]}; '
          f'pipeline {r["pipeline"]["stage_seconds"]}')
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'config': os.path.relpath(CONFIG, REPO), 'days': args.days, 'results': results},
              f, indent=2)


if __name__ == '__main__':
  main()
