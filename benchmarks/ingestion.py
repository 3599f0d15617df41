"""Ingestion benchmark: LogExampleGen alone (a pipeline of that one component) on a log
directory: wall seconds, rows/second and the process's peak RSS.

(Not a test: it prints one table row and writes JSON.) For a before/after pair, run it on the
same logs from two checkouts, back to back:

    .venv/bin/python benchmarks/ingestion.py --logs /tmp/mtl-performance/rows1000000/logs
    # add --profile FILE for a cProfile of the run (sorted by cumulative time on stdout)

`benchmarks/performance.py` generates such logs (`<work>/rows<N>/logs`).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--logs', required=True, help='input_base: the daily log partitions')
  parser.add_argument('--config', default=os.path.join(REPO, 'schemas', 'impressions.yaml'))
  parser.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results',
                                                    'ingestion.json'))
  parser.add_argument('--profile', help='write a cProfile of the run here')
  args = parser.parse_args()
  sys.argv = sys.argv[:1]  # TFX's Beam executors parse sys.argv

  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top
  import pipeline  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from components.log_example_gen import LogExampleGen, read_counts  # pylint: disable=g-import-not-at-top
  from ml_metadata.metadata_store import metadata_store  # pylint: disable=g-import-not-at-top
  from pipeline.beam_args import beam_pipeline_args  # pylint: disable=g-import-not-at-top
  from pipeline.config import load_config  # pylint: disable=g-import-not-at-top
  from pipeline.local_runner import metadata_config  # pylint: disable=g-import-not-at-top
  from pipeline.run_summary import read_run  # pylint: disable=g-import-not-at-top

  config = load_config(args.config, base_dir=REPO).with_overrides(
      data={'input_base': os.path.abspath(args.logs)})
  work = tempfile.mkdtemp(prefix='mtl-ingestion-')
  try:
    connection = metadata_config(work)
    ingestion = tfx.dsl.Pipeline(
        pipeline_name=config.name, pipeline_root=os.path.join(work, 'pipeline_root'),
        components=[LogExampleGen(input_base=config.data.input_base, config=config)],
        metadata_connection_config=connection,
        beam_pipeline_args=beam_pipeline_args(config.beam))
    started = time.time()
    if args.profile:
      profiler = cProfile.Profile()
      profiler.runcall(tfx.orchestration.LocalDagRunner().run, ingestion)
    else:
      tfx.orchestration.LocalDagRunner().run(ingestion)
    seconds = time.time() - started
    outputs = read_run(metadata_store.MetadataStore(connection), config.name)['nodes'][
        'LogExampleGen']['outputs']
    counts = read_counts(outputs['quarantine'][0].uri)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  rows = counts['num_ingested'] + counts['num_quarantined']
  result = {'rows': rows, 'ingested': counts['num_ingested'],
            'quarantined': counts['num_quarantined'], 'seconds': seconds,
            'rows_per_second': rows / seconds,
            'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            'profiled': bool(args.profile)}
  print('| rows | seconds | rows/s | peak RSS |\n| --- | --- | --- | --- |')
  print(f'| {rows:,} | {seconds:.1f} | {result["rows_per_second"]:,.0f} | '
        f'{result["peak_rss_mb"]:,.0f} MB |')
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=2, sort_keys=True)
  print(f'\nwrote {args.out}')
  if args.profile:
    profiler.dump_stats(args.profile)
    pstats.Stats(args.profile).sort_stats('cumulative').print_stats(40)


if __name__ == '__main__':
  main()
