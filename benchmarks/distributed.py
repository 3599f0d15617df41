"""Distributed training benchmark: the Trainer on 1 and 2 local workers (MultiWorkerMirrored-
Strategy over gRPC on 127.0.0.1), same global batch and steps.

(Not a test: it prints a markdown table and writes JSON; nothing is asserted.)

1. Runs the whole pipeline once on a generated log (the sample config, 1 worker, in-process
   Trainer) to get the Transform output and the in-process Trainer's wall time.
2. Trains on that Transform output with the Trainer's local launcher
   (components/local_workers.py), `--repeats` times for each worker count: the global
   batch stays `training.batch_size` of the config (per-replica batch = global / workers).
   Reported per run: wall seconds from launching the workers to all of them exiting (process
   start, joining the cluster, training, export), `fit` seconds, and examples/second per
   worker over the whole fit and after the first step (the first step traces the training
   function; under the strategy that takes tens of seconds of CPU).

    .venv/bin/python benchmarks/distributed.py [--rows 20000] [--days 3] [--workers 1 2]
        [--repeats 2] [--work /tmp/mtl-distributed] [--out benchmarks/results/distributed.json]

On a 2-core machine two workers share the two cores (each also runs its own input pipeline
over all the data, auto-shard policy DATA), so no speed-up is expected: the point of local
workers is checking distributed training, not speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time
from typing import Any, Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_THROUGHPUT = re.compile(
    r'(?:worker (\d+) of (\d+)|trainer): trained (\d+) steps of (\d+) examples in ([0-9.]+) s: '
    r'([0-9.]+) examples/s \(([0-9.]+) examples/s after the first step\)')


def prepare(work: str, rows: int, days: int, config_path: str):
  """A finished 1-worker pipeline run on a generated log: (config, run dir, Trainer seconds)."""
  from pipeline.config import load_config  # pylint: disable=g-import-not-at-top
  from pipeline.local_runner import run_local  # pylint: disable=g-import-not-at-top
  from pipeline.sample_logs import generate_logs  # pylint: disable=g-import-not-at-top
  logs = os.path.join(work, 'logs')
  config = load_config(config_path, base_dir=REPO).with_overrides(
      data={'input_base': logs}, serving={'push_dir': os.path.join(work, 'serving')},
      training={'workers': 1})
  run_dir = os.path.join(work, 'run')
  summary_path = os.path.join(run_dir, 'run_summary.json')
  if not os.path.exists(summary_path):
    generate_logs(logs, rows=rows, days=days, seed=5)
    run_local(config, run_dir)
  with open(summary_path) as f:
    summary = json.load(f)
  return config, run_dir, summary['components']['Trainer']['wall_seconds'], summary


def train_once(config, run_dir: str, workers: int, out: str) -> Dict[str, Any]:
  from components.local_workers import run_local_workers  # pylint: disable=g-import-not-at-top
  from pipeline.local_runner import job_for_local_run  # pylint: disable=g-import-not-at-top
  global_batch = config.training.batch_size
  config = config.with_overrides(training={'workers': workers,
                                           'batch_size': global_batch // workers,
                                           'worker_restarts': 0})
  # A fresh output directory: a backup left by an earlier, failed run there would be resumed.
  shutil.rmtree(out, ignore_errors=True)
  job = job_for_local_run(run_dir, config, out)
  started = time.monotonic()
  result = run_local_workers(job, workers, config.training)
  wall = time.monotonic() - started
  per_worker = []
  for lines in result.outputs:
    found = [m for m in map(_THROUGHPUT.search, lines) if m]
    if not found:
      raise RuntimeError('a worker logged no throughput line:\n' + '\n'.join(lines[-30:]))
    m = found[-1]
    # One worker trains in the launcher's own process, which logs as `trainer:`.
    per_worker.append({'worker': int(m.group(1) or 0), 'steps': int(m.group(3)),
                       'batch': int(m.group(4)), 'fit_seconds': float(m.group(5)),
                       'examples_per_second': float(m.group(6)),
                       'examples_per_second_after_first_step': float(m.group(7))})
  return {'workers': workers, 'global_batch': global_batch, 'wall_seconds': round(wall, 1),
          'per_worker': per_worker}


def summarise(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
  """Medians over the repeats of one worker count."""
  def median(values):
    return round(statistics.median(values), 1)
  fits = [w for run in runs for w in run['per_worker']]
  return {
      'workers': runs[0]['workers'],
      'global_batch': runs[0]['global_batch'],
      'per_worker_batch': fits[0]['batch'],
      'steps': fits[0]['steps'],
      'repeats': len(runs),
      'wall_seconds': median([r['wall_seconds'] for r in runs]),
      'fit_seconds': median([w['fit_seconds'] for w in fits]),
      'examples_per_second_per_worker': median([w['examples_per_second'] for w in fits]),
      'examples_per_second_per_worker_after_first_step': median(
          [w['examples_per_second_after_first_step'] for w in fits]),
      'examples_per_second_total_after_first_step': median(
          [sum(w['examples_per_second_after_first_step'] for w in r['per_worker'])
           for r in runs]),
  }


def table(rows: List[Dict[str, Any]], in_process_seconds: float) -> str:
  lines = ['| workers | global batch | batch per worker | steps | wall s | fit s | '
           'examples/s per worker | after 1st step, per worker | after 1st step, total |',
           '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  for r in rows:
    lines.append(
        f'| {r["workers"]} | {r["global_batch"]} | {r["per_worker_batch"]} | {r["steps"]} | '
        f'{r["wall_seconds"]:.1f} | {r["fit_seconds"]:.1f} | '
        f'{r["examples_per_second_per_worker"]:.0f} | '
        f'{r["examples_per_second_per_worker_after_first_step"]:.0f} | '
        f'{r["examples_per_second_total_after_first_step"]:.0f} |')
  lines.append(f'\nIn-process Trainer (1 worker, the pipeline\'s default), whole component: '
               f'{in_process_seconds:.1f} s')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--rows', type=int, default=20000)
  parser.add_argument('--days', type=int, default=3)
  parser.add_argument('--workers', type=int, nargs='+', default=[1, 2])
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--config', default=os.path.join(REPO, 'schemas', 'impressions.yaml'))
  parser.add_argument('--work', default='/tmp/mtl-distributed')
  parser.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results',
                                                    'distributed.json'))
  args = parser.parse_args()
  import pipeline  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  os.makedirs(args.work, exist_ok=True)
  load = os.getloadavg()
  config, run_dir, in_process, summary = prepare(args.work, args.rows, args.days, args.config)
  runs: Dict[int, List[Dict[str, Any]]] = {}
  for repeat in range(args.repeats):
    for workers in args.workers:
      out = os.path.join(args.work, f'train-{workers}w-{repeat}')
      run = train_once(config, run_dir, workers, out)
      runs.setdefault(workers, []).append(run)
      print(json.dumps(run), flush=True)
  rows = [summarise(runs[w]) for w in args.workers]
  report = {
      'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(),
                  'load_average_at_start': [round(x, 2) for x in load]},
      'log': {'rows': args.rows, 'days': args.days,
              'train_examples': summary.get('ingestion', {}).get('examples_by_split', {}).get(
                  'train')},
      'in_process_trainer_seconds': in_process,
      'results': rows,
      'runs': runs,
  }
  print(table(rows, in_process))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=2, sort_keys=True)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
