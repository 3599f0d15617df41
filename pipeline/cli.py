"""`mtlp`: the command line of mtl-pipeline.

    mtlp generate-logs --rows 20000 --days 3 --out data/logs
    mtlp validate-config --config schemas/impressions.yaml
    mtlp config-schema --output schemas/config.schema.json
    mtlp run --config schemas/impressions.yaml --output runs/impressions
    mtlp compile --config schemas/impressions.yaml --output pipeline.yaml
    mtlp submit --config schemas/impressions.yaml --host http://localhost:8080
    mtlp schedule --config schemas/impressions.yaml --host URL --cron "0 0 3 * * *"
    mtlp unschedule --config schemas/impressions.yaml --host URL
    mtlp serve-check serving/impressions_mtl/1763712000
    mtlp rescore --config schemas/impressions.yaml
    mtlp report runs/impressions
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import warnings
from typing import List, Optional

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from pipeline.config import ConfigError, check_inputs, load_config
from pipeline.sample_logs import POST_CLICK_LABELS

LOG_FILE = 'run.log'


def _generate_logs(args: argparse.Namespace) -> int:
  from pipeline.sample_logs import generate_logs  # pylint: disable=g-import-not-at-top
  written = generate_logs(args.out, rows=args.rows, days=args.days, seed=args.seed,
                          start_date=args.start_date, truth_dir=args.truth_out,
                          compress=not args.no_gzip, post_click_labels=args.post_click_labels)
  print(f'wrote {written["rows"]} impressions in {written["days"]} daily files under '
        f'{args.out}; ground truth under {written["truth_dir"]}')
  return 0


def _validate_config(args: argparse.Namespace) -> int:
  config = load_config(args.config)
  notes = check_inputs(config)
  print(f'{args.config}: ok ({len(config.features)} features, tasks: '
        f'{", ".join(t.name for t in config.tasks)})'
        + ''.join(f'\n  {note}' for note in notes))
  return 0


def _config_schema(args: argparse.Namespace) -> int:
  from pipeline.config import json_schema  # pylint: disable=g-import-not-at-top
  text = json.dumps(json_schema(), indent=2) + '\n'
  if args.output in (None, '-'):
    sys.stdout.write(text)
  else:
    with open(args.output, 'w') as f:
      f.write(text)
    print(f'wrote the config JSON Schema to {args.output}', file=sys.stderr)
  return 0


def _rescore(args: argparse.Namespace) -> int:
  from pipeline.rescore import rescore  # pylint: disable=g-import-not-at-top
  from pipeline.serve_check import format_report  # pylint: disable=g-import-not-at-top
  config = load_config(args.config)
  result = rescore(config, version=args.version, push=not args.no_push)
  print(format_report(result['serve_check']))
  weights = ', '.join(f'{n} {result["weights_before"][n]:g} -> {w:g}'
                      for n, w in result['weights'].items())
  if not result['serve_check']['ok']:
    print(f'version {result["from_version"]} re-exported with weights {weights}: the serve '
          'check failed, nothing pushed', file=sys.stderr)
    return 1
  if args.no_push:
    print(f'version {result["from_version"]} re-exported with weights {weights}: serve check '
          'passed; not pushed (--no-push)')
    return 0
  print(f'version {result["from_version"]} re-exported with weights {weights}: pushed as '
        f'version {result["version"]} to {result["path"]} (labels {result["labels"]})')
  return 0


def _quiet_libraries() -> None:
  """TensorFlow, Beam and absl log at INFO/WARNING by default; keep the run's output readable."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.ERROR)
  tf.get_logger().setLevel('ERROR')
  logging.getLogger('apache_beam').setLevel(logging.ERROR)


def _run(args: argparse.Namespace) -> int:
  from pipeline import progress  # pylint: disable=g-import-not-at-top
  config = load_config(args.config)
  overrides = {}
  if args.logs:
    overrides['data'] = {'input_base': os.path.abspath(args.logs)}
  if args.push_dir:
    overrides['serving'] = {'push_dir': os.path.abspath(args.push_dir)}
  if args.train_steps is not None:  # 0 is refused by the config's check, not ignored
    overrides['training'] = {'train_steps': args.train_steps}
  if overrides:
    config = config.with_overrides(**overrides)
  check_inputs(config)
  os.makedirs(args.output, exist_ok=True)
  log_path = os.path.abspath(os.path.join(args.output, LOG_FILE))
  print(f'running pipeline {config.name!r} locally; logs from {config.data.input_base}')
  print(f'full log: {log_path}' + ('' if args.verbose else ' (--verbose streams it here)'))
  output = (contextlib.nullcontext(sys.stdout) if args.verbose
            else progress.quiet_output(log_path))
  error: Optional[Exception] = None
  busy: Optional[Exception] = None
  started = time.time()
  with output as terminal:
    # Imported here so that TensorFlow's import-time messages go to the log too.
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    from pipeline import local_runner, run_summary  # pylint: disable=g-import-not-at-top
    # TFX reports component starts and ends at INFO: they reach the log and the progress lines.
    absl_logging.set_verbosity(absl_logging.INFO)
    with progress.Progress(terminal, log_path):
      try:
        summary = local_runner.run_local(config, args.output, enable_cache=not args.no_cache)
      except local_runner.OutputDirBusy as e:
        busy = e
      except local_runner.PipelineRunError as e:
        error, summary = e, e.summary
  if busy is not None:
    print(f'mtlp: {busy}', file=sys.stderr)
    return 1
  if isinstance(error, local_runner.RunInterrupted):
    print(f'\ninterrupted after {time.time() - started:.0f} s; summary: '
          f'{summary["summary_path"]}; `mtlp run` with the same --output reuses the steps that '
          'finished', file=sys.stderr)
    return 130
  if summary.get('tasks'):
    print()
    print(run_summary.format_table(summary))
  if error is not None:
    print(f'\nrun failed after {time.time() - started:.0f} s: {summary.get("error")}\n'
          f'summary: {summary["summary_path"]}\nlog: {log_path}', file=sys.stderr)
    return 1
  ingestion = summary.get('ingestion', {})
  print(f'\ningested {ingestion.get("num_ingested")} records '
        f'(by split: {json.dumps(ingestion.get("examples_by_split", {}))}), '
        f'quarantined {ingestion.get("num_quarantined")} '
        f'{json.dumps(ingestion.get("reasons", {}))}')
  trained = summary.get('training', {})
  if trained.get('exported_epoch'):
    print(f'exported the weights of epoch {trained["exported_epoch"]}: '
          f'{trained.get("exported_because")}')
  baseline = summary.get('baseline')
  print('compared with served version ' + str(baseline['version']) if baseline else
        'nothing served yet: judged on absolute thresholds only')
  if baseline and baseline.get('missing_outputs'):
    print(f'not compared (the served version has no such output): '
          f'{", ".join(baseline["missing_outputs"])}')
  if summary['blessed']:
    print(f'model blessed; pushed version {summary["push"].get("version")} to '
          f'{summary["push"].get("path")} (labels {summary["push"].get("labels")})')
  else:
    print('model NOT blessed: ' + '; '.join(summary['not_blessed_because']))
  print(f'finished in {time.time() - started:.0f} s; summary: {summary["summary_path"]}')
  return 0


def _compile(args: argparse.Namespace) -> int:
  from pipeline.kubeflow import compiler  # pylint: disable=g-import-not-at-top
  path = compiler.compile_pipeline(load_config(args.config), args.output)
  print(f'wrote the Kubeflow Pipelines v2 spec to {path}')
  return 0


def _submit(args: argparse.Namespace) -> int:
  from pipeline.kubeflow import client  # pylint: disable=g-import-not-at-top
  result = client.submit(load_config(args.config), args.host, args.experiment)
  print(f'run {result["run_id"]} started: {result["url"]}')
  return 0


def _schedule(args: argparse.Namespace) -> int:
  from pipeline.kubeflow import client  # pylint: disable=g-import-not-at-top
  # schedule() checks the cron expression before anything is compiled or sent.
  result = client.schedule(load_config(args.config), args.host, args.cron, args.experiment)
  print(f'recurring run {result["recurring_run_id"]} created ({args.cron}, at most one run '
        'at a time, no catch-up)')
  return 0


def _unschedule(args: argparse.Namespace) -> int:
  from pipeline.kubeflow import client  # pylint: disable=g-import-not-at-top
  deleted = client.unschedule(load_config(args.config), args.host)
  print(f'deleted {deleted} recurring run(s)')
  return 0


def _serve_check(args: argparse.Namespace) -> int:
  from pipeline import serve_check  # pylint: disable=g-import-not-at-top
  if not args.verbose:
    _quiet_libraries()
  try:
    report = serve_check.serve_check(args.version_dir, tolerance=args.tolerance)
  except serve_check.ServeCheckError as e:
    print(f'mtlp: {e}', file=sys.stderr)
    return 2
  print(serve_check.format_report(report))
  return 0 if report['ok'] else 1


def _report(args: argparse.Namespace) -> int:
  from pipeline import report  # pylint: disable=g-import-not-at-top
  if not args.verbose:
    _quiet_libraries()
  try:
    path = report.write_report(args.run_dir)
  except report.ReportError as e:
    print(f'mtlp: {e}', file=sys.stderr)
    return 2
  print(f'wrote {path}')
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='mtlp', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--verbose', action='store_true', help='show tracebacks and full logs')
  sub = parser.add_subparsers(dest='command', required=True)
  examples = {line.split()[1]: line.strip() for line in __doc__.splitlines()
              if line.strip().startswith('mtlp ')}

  def add(name: str, **kwargs) -> argparse.ArgumentParser:
    return sub.add_parser(name, epilog=f'example:\n  {examples[name]}',
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

  gen = add('generate-logs', help='write a seeded sample impression log')
  gen.add_argument('--rows', type=int, default=20000)
  gen.add_argument('--days', type=int, default=3)
  gen.add_argument('--out', default='data/logs', help='log directory (day=YYYY-MM-DD/ inside)')
  gen.add_argument('--truth-out', default=None,
                   help='ground-truth directory (default: <out>_truth next to --out)')
  gen.add_argument('--seed', type=int, default=7)
  gen.add_argument('--start-date', default='2026-11-01')
  gen.add_argument('--no-gzip', action='store_true', help='write plain .jsonl files')
  gen.add_argument('--post-click-labels', choices=POST_CLICK_LABELS, default='absent',
                   help='conversion and dwell_seconds only on clicked impressions (absent), or '
                   'on every impression, 0 without a click (zero)')
  gen.set_defaults(func=_generate_logs)

  val = add('validate-config', help='check a config file and say what is wrong')
  val.add_argument('--config', required=True)
  val.set_defaults(func=_validate_config)

  schema = add('config-schema', help="print the config's JSON Schema (for editors)",
               description='Every key with its type, default, allowed values and description, '
               'from the rules `validate-config` applies. Point a YAML language server at it '
               '(docs/configuration.md, "Editor support").')
  schema.add_argument('--output', default=None, help='write to this file (default: stdout)')
  schema.set_defaults(func=_config_schema)

  run = add('run', help='run the whole pipeline locally (Beam DirectRunner)')
  run.add_argument('--config', required=True)
  run.add_argument('--output', default='runs/local',
                   help='run directory: pipeline root, metadata.sqlite, run_summary.json')
  run.add_argument('--logs', default=None, help='override data.input_base')
  run.add_argument('--push-dir', default=None, help='override serving.push_dir')
  run.add_argument('--train-steps', type=int, default=None, help='override training.train_steps')
  run.add_argument('--no-cache', action='store_true', help='re-run every component')
  run.set_defaults(func=_run)

  comp = add('compile', help='write the Kubeflow Pipelines v2 spec (YAML)')
  comp.add_argument('--config', required=True)
  comp.add_argument('--output', default='pipeline.yaml')
  comp.set_defaults(func=_compile)

  for name, func, text in (('submit', _submit, 'upload the pipeline and start a run'),
                           ('schedule', _schedule, 'create a recurring run'),
                           ('unschedule', _unschedule, 'delete the recurring run')):
    cmd = add(name, help=text)
    cmd.add_argument('--config', required=True)
    cmd.add_argument('--host', required=True, help='Kubeflow Pipelines API, e.g. http://host:8080')
    if name != 'unschedule':
      cmd.add_argument('--experiment', default=None, help='default: kubeflow.experiment')
    if name == 'schedule':
      cmd.add_argument('--cron', required=True,
                       help='6 fields, seconds first: "0 0 3 * * *" is daily at 03:00')
    cmd.set_defaults(func=func)

  check = add(
      'serve-check', help='load a pushed version as TF Serving would and replay its requests',
      description='Loads <push_dir>/<model_name>/<version> with the serve tag, replays its '
      'warmup requests, and checks a gRPC PredictRequest and a REST instances request '
      'against the Evaluator\'s predictions. Exit code 1 if a check fails.')
  check.add_argument('version_dir', help='a pushed version directory')
  check.add_argument('--tolerance', type=float, default=1e-5,
                     help='max absolute difference from the Evaluator\'s predictions')
  check.set_defaults(func=_serve_check)

  resc = add(
      'rescore', help="push the served model again with the config's new score weights",
      description='Re-exports a pushed version (default: the served one) with the weights of '
      "the config's serving.score, without retraining: the task outputs are unchanged, the "
      'score follows the new weights. The new SavedModel is serve-checked (its score against '
      'the formula on the recorded task outputs), then pushed as a new version. Exit code 1 '
      'if the check fails.')
  resc.add_argument('--config', required=True)
  resc.add_argument('--version', type=int, default=None,
                    help='the version to start from (default: the served one)')
  resc.add_argument('--no-push', action='store_true', help='check only, push nothing')
  resc.set_defaults(func=_rescore)

  rep = add(
      'report', help='write an HTML run report with plots into RUN_DIR/report/',
      description='Per-task metrics against thresholds and the served model, learned sigmas '
      'and loss weights, loss curves, calibration plots, ingestion counts and component times, '
      'from a local run directory (the --output of `mtlp run`).')
  rep.add_argument('run_dir', help='a local run directory holding run_summary.json')
  rep.set_defaults(func=_report)
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  if not args.verbose:
    # `run` sends everything to its log file instead; other commands keep TensorFlow's C++
    # messages (CUDA plugin registration and the like) off the terminal.
    if args.func is not _run:
      os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    logging.getLogger().setLevel(logging.WARNING)
    # Google client libraries warn at import about Python 3.10 support; TFX 1.16 needs 3.10.
    warnings.filterwarnings('ignore', category=FutureWarning)
  try:
    return args.func(args)
  except KeyboardInterrupt:
    print('mtlp: interrupted', file=sys.stderr)
    return 130
  except ConfigError as e:
    if args.verbose:
      raise
    print(f'mtlp: config error: {e}', file=sys.stderr)
    return 2
  except RuntimeError as e:
    from pipeline.kubeflow.client import KubeflowError  # pylint: disable=g-import-not-at-top
    if args.verbose or not isinstance(e, KubeflowError):
      raise
    print(f'mtlp: {e}', file=sys.stderr)
    return 1


if __name__ == '__main__':
  sys.exit(main())
