"""`mtlp report RUN_DIR`: a static HTML page (with PNG plots) about one local run.

Everything comes from the run's own records: `run_summary.json` (metrics, thresholds, the
served baseline, ingestion counts, component times), the Trainer's `training_summary.json`
(per-epoch losses, sigmas and loss weights) and the Evaluator's TFMA calibration plots. The
page and its images go to `<run_dir>/report/`; open `index.html` in a browser.
"""

from __future__ import annotations

import html
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import matplotlib

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

from pipeline.config import SCORE_PRODUCT_FLOOR  # noqa: E402
from pipeline.run_summary import SUMMARY_FILE, judged_outputs  # noqa: E402

REPORT_DIR = 'report'
PAGE = 'index.html'


class ReportError(RuntimeError):
  """The run directory has nothing to report on."""


def load_summary(run_dir: str) -> Dict[str, Any]:
  path = os.path.join(run_dir, SUMMARY_FILE)
  if not os.path.exists(path):
    raise ReportError(f'{path} does not exist: give the --output directory of `mtlp run`')
  with open(path) as f:
    return json.load(f)


def calibration_buckets(evaluation_uri: str) -> Dict[str, List[Dict[str, float]]]:
  """{task: [{'low', 'high', 'count', 'label_sum', 'prediction_sum'}]} from TFMA's
  CalibrationPlot on the overall slice of the candidate model (empty buckets dropped)."""
  import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top
  result: Dict[str, List[Dict[str, float]]] = {}
  for per_slice in tfma.load_plots(evaluation_uri):
    if per_slice.slice_key.single_slice_keys:
      continue
    for kv in per_slice.plot_keys_and_values:
      if kv.key.model_name not in ('', 'candidate'):
        continue
      buckets = kv.value.calibration_histogram_buckets.buckets
      if not buckets:
        continue
      result[kv.key.output_name] = [
          {'low': b.lower_threshold_inclusive, 'high': b.upper_threshold_exclusive,
           'count': b.num_weighted_examples.value,
           'label_sum': b.total_weighted_label.value,
           'prediction_sum': b.total_weighted_refined_prediction.value}
          for b in buckets if b.num_weighted_examples.value > 0]
  return result


def _steps(values: List[float], train_steps: int) -> List[float]:
  """Training step at the end of each epoch (epochs split train_steps evenly)."""
  n = len(values)
  return [train_steps * (i + 1) / n for i in range(n)]


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return os.path.basename(path)


def plot_uncertainty(summary: Dict[str, Any], out_dir: str) -> Optional[str]:
  tasks = summary.get('tasks', {})
  if not any(t.get('sigma_by_epoch') for t in tasks.values()):
    return None
  train_steps = summary.get('training', {}).get('train_steps', 1)
  fig, (ax_sigma, ax_weight) = plt.subplots(1, 2, figsize=(10, 3.6))
  for name, task in tasks.items():
    if task.get('sigma_by_epoch'):
      ax_sigma.plot(_steps(task['sigma_by_epoch'], train_steps), task['sigma_by_epoch'],
                    marker='o', label=name)
      ax_weight.plot(_steps(task['loss_weight_by_epoch'], train_steps),
                     task['loss_weight_by_epoch'], marker='o', label=name)
  ax_sigma.set(title='learned uncertainty (sigma)', xlabel='training step', ylabel='sigma')
  ax_weight.set(title='effective loss weight', xlabel='training step', ylabel='weight',
                yscale='log')
  for ax in (ax_sigma, ax_weight):
    ax.legend()
    ax.grid(alpha=0.3)
  return _save(fig, os.path.join(out_dir, 'uncertainty.png'))


def plot_losses(summary: Dict[str, Any], out_dir: str) -> Optional[str]:
  tasks = {n: t for n, t in summary.get('tasks', {}).items() if t.get('train_loss_by_epoch')}
  if not tasks:
    return None
  train_steps = summary.get('training', {}).get('train_steps', 1)
  fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
  for ax, (name, task) in zip(axes[0], tasks.items()):
    ax.plot(_steps(task['train_loss_by_epoch'], train_steps), task['train_loss_by_epoch'],
            marker='o', label='train')
    if task.get('eval_loss_by_epoch'):
      ax.plot(_steps(task['eval_loss_by_epoch'], train_steps), task['eval_loss_by_epoch'],
              marker='s', label='eval')
    ax.set(title=f'{name} loss', xlabel='training step')
    ax.legend()
    ax.grid(alpha=0.3)
  return _save(fig, os.path.join(out_dir, 'losses.png'))


def plot_calibration(task: str, buckets: List[Dict[str, float]], out_dir: str) -> str:
  fig, (ax_cal, ax_hist) = plt.subplots(1, 2, figsize=(9, 3.6))
  predicted = [b['prediction_sum'] / b['count'] for b in buckets]
  observed = [b['label_sum'] / b['count'] for b in buckets]
  sizes = [20 + 200 * b['count'] / max(x['count'] for x in buckets) for b in buckets]
  top = max(predicted + observed + [0.05]) * 1.05
  ax_cal.plot([0, top], [0, top], color='grey', linestyle='--', label='perfect')
  ax_cal.scatter(predicted, observed, s=sizes, alpha=0.7, label='buckets')
  ax_cal.plot(predicted, observed, alpha=0.5)
  ax_cal.set(title=f'{task}: calibration', xlabel='mean prediction', ylabel='observed rate',
             xlim=(0, top), ylim=(0, top))
  ax_cal.legend()
  ax_cal.grid(alpha=0.3)
  lows = [max(b['low'], 0.0) for b in buckets]
  widths = [min(b['high'], 1.0) - max(b['low'], 0.0) for b in buckets]
  ax_hist.bar(lows, [b['count'] for b in buckets], width=widths, align='edge',
              edgecolor='white')
  ax_hist.set(title=f'{task}: distribution of predictions', xlabel='prediction',
              ylabel='eval examples', xlim=(0, 1))
  return _save(fig, os.path.join(out_dir, f'calibration_{task}.png'))


def plot_components(summary: Dict[str, Any], out_dir: str) -> Optional[str]:
  components = summary.get('components', {})
  if not components:
    return None
  names = list(reversed(list(components)))
  seconds = [components[n]['wall_seconds'] for n in names]
  colors = ['#9e9e9e' if components[n]['state'] == 'CACHED' else
            '#d9534f' if components[n]['state'] not in ('COMPLETE', 'CACHED') else '#4a90d9'
            for n in names]
  fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
  ax.barh(names, seconds, color=colors)
  ax.set(title='wall seconds per component (grey: cached)', xlabel='seconds')
  ax.grid(axis='x', alpha=0.3)
  return _save(fig, os.path.join(out_dir, 'components.png'))


def _fmt(value: Any) -> str:
  if value is None:
    return 'n/a'
  if isinstance(value, float):
    return f'{value:.4f}'
  return html.escape(str(value))


def _verdict(passed: Optional[bool]) -> str:
  if passed is None:
    return '<td class="na">n/a</td>'
  return '<td class="pass">pass</td>' if passed else '<td class="fail">FAIL</td>'


def score_formula(score: Dict[str, Any]) -> str:
  """'score = 1 x click + 4 x conversion' or 'score = click^1 x conversion^0.5'."""
  if score['combine'] == 'weighted_product':
    terms = ' x '.join(f'max({n}, {SCORE_PRODUCT_FLOOR:g})^{w:g}'
                       for n, w in score['weights'].items())
  else:
    terms = ' + '.join(f'{w:g} x {n}' for n, w in score['weights'].items())
  return f'{score["name"]} = {terms}'


def _score_section(summary: Dict[str, Any]) -> List[str]:
  score = summary.get('score')
  if not score:
    return []
  metrics = [m for m in ('auc', 'ndcg', 'mean_prediction', 'mean_label', 'example_count')
             if m in score['metrics']]
  rows = [[('NDCG@' + str(score['ndcg_k'])) if m == 'ndcg' else m, score['metrics'][m],
           score['baseline_metrics'].get(m)] for m in metrics]
  grouping = (f', NDCG@{score["ndcg_k"]} within each <code>{html.escape(score["group_by"])}'
              '</code> holding a positive label' if score.get('group_by') else '')
  return ['<h2>Ranking score</h2>',
          f'<p><code>{html.escape(score_formula(score))}</code>, evaluated against '
          f'<code>{html.escape(score["label"])}</code>{grouping}.</p>',
          _table(['metric', 'value', 'served model'], rows)]


def _task_rows(summary: Dict[str, Any]) -> str:
  rows = []
  for name, task in judged_outputs(summary).items():
    checks: List[Tuple[str, str, Any, str, Optional[bool]]] = []
    for metric, t in task.get('thresholds', {}).items():
      bound = ' and '.join(p for p in (f'&ge; {t["min"]:g}' if t['min'] is not None else '',
                                       f'&le; {t["max"]:g}' if t['max'] is not None else '')
                           if p)
      checks.append((metric, 'threshold', t['value'], t.get('undefined'), bound, t['passed']))
    for metric, c in task.get('vs_served', {}).items():
      served = (c.get('not_compared', 'nothing served') if c['passed'] is None else
                f'served {_fmt(c["baseline_value"])}, may regress {c["max_regression"]}')
      checks.append((metric, 'vs served', c['value'], c.get('undefined'), served, c['passed']))
    for metric, check, value, undefined, rule, passed in checks:
      shown = f'undefined: {html.escape(undefined)}' if undefined else _fmt(value)
      rows.append(f'<tr><td>{html.escape(name)}</td><td>{html.escape(metric)}</td>'
                  f'<td>{check}</td><td class="num">{shown}</td><td>{rule}</td>'
                  f'{_verdict(passed)}</tr>')
  return '\n'.join(rows)


def _space_table(summary: Dict[str, Any]) -> str:
  """Each task's space (where it is defined) and its training and eval rows there; ESMM's
  pCVR (`cvr`) on the conversion task's space, with its AUC."""
  rows = []
  for name, task in summary.get('tasks', {}).items():
    counts = task.get('rows') or {}
    rows.append([name, task.get('space') or 'every row', counts.get('train'),
                 counts.get('eval'), ''])
    cvr = task.get('cvr')
    if cvr:
      counts = cvr.get('rows') or {}
      rows.append([f'{name} (cvr)', task.get('space'), counts.get('train'), counts.get('eval'),
                   f'pCVR AUC {_fmt(cvr["metrics"].get("auc"))}'])
  return _table(['task', 'defined on', 'train rows', 'eval rows', ''], rows)


def _slice_rows(summary: Dict[str, Any]) -> str:
  """One row per task and slice: eval examples, each gated metric (else AUC or RMSE) next to
  the served model's, and the gate's verdict."""
  rows = []
  for name, task in judged_outputs(summary).items():
    shown = list(task.get('vs_served', {})) or [
        m for m in ('auc', 'root_mean_squared_error') if m in task.get('metrics', {})]
    for row in task.get('slices', []):
      values = '<br>'.join(
          f'{html.escape(m)} {_fmt(row["metrics"].get(m))}'
          + (f' (served {_fmt(row["baseline_metrics"].get(m))})'
             if row['baseline_metrics'] else '')
          + (f' undefined: {html.escape(row["undefined"][m])}' if m in row['undefined'] else '')
          for m in shown)
      rows.append(f'<tr><td>{html.escape(name)}</td><td>{html.escape(row["slice"])}</td>'
                  f'<td class="num">{_fmt(row["example_count"])}</td><td>{values}</td>'
                  f'<td>{"gated" if row["gated"] else "reported"}</td>'
                  f'{_verdict(row["passed"])}</tr>')
  return '\n'.join(rows)


def _table(headers: List[str], rows: List[List[Any]]) -> str:
  head = ''.join(f'<th>{html.escape(h)}</th>' for h in headers)
  body = '\n'.join('<tr>' + ''.join(f'<td>{_fmt(c)}</td>' for c in row) + '</tr>'
                   for row in rows)
  return f'<table><tr>{head}</tr>\n{body}</table>'


_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; }
td, th { border: 1px solid #ddd; padding: 4px 10px; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.pass { background: #dff0d8; } td.fail { background: #f2dede; font-weight: bold; }
td.na { color: #888; } .verdict { font-size: 1.3em; padding: 0.4em 0.8em; display: inline-block; }
.ok { background: #dff0d8; } .bad { background: #f2dede; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
"""


def render(summary: Dict[str, Any], images: Dict[str, Any]) -> str:
  blessed = summary.get('blessed')
  push = summary.get('push', {})
  baseline = summary.get('baseline')
  if blessed:
    verdict = (f'blessed and pushed as version {push.get("version")}' if push.get('pushed')
               else 'blessed')
  else:
    verdict = 'NOT blessed: ' + '; '.join(summary.get('not_blessed_because') or
                                          [summary.get('error', 'the run did not finish')])
  parts = [
      '<!DOCTYPE html><html><head><meta charset="utf-8">',
      f'<title>Run report: {html.escape(summary.get("pipeline", ""))}</title>',
      f'<style>{_STYLE}</style></head><body>',
      f'<h1>Run report: {html.escape(summary.get("pipeline", ""))}</h1>',
      f'<p>run <code>{html.escape(str(summary.get("run_id", "")))}</code>, model '
      f'{html.escape(str(summary.get("training", {}).get("model_type", "")))}, loss weighting '
      f'{html.escape(str(summary.get("training", {}).get("loss_weighting", "")))}, '
      f'{summary.get("total_wall_seconds", 0):.0f} s of component time</p>',
      f'<p class="verdict {"ok" if blessed else "bad"}">{html.escape(verdict)}</p>',
      (f'<p>Exported the weights of epoch {summary["training"]["exported_epoch"]}: '
       f'{html.escape(str(summary["training"].get("exported_because")))}.</p>'
       if summary.get('training', {}).get('exported_epoch') else ''),
      '<p>Compared with served version ' + html.escape(str(baseline['version'])) + '.</p>'
      if baseline else '<p>Nothing was served: judged on absolute thresholds only.</p>',
      '<h2>Tasks and their rows</h2>', _space_table(summary),
      '<h2>Per-task checks</h2>',
      '<table><tr><th>task</th><th>metric</th><th>check</th><th>value</th><th>rule</th>'
      '<th>result</th></tr>', _task_rows(summary), '</table>',
  ]
  parts += _score_section(summary)
  slices = _slice_rows(summary)
  if slices:
    parts += ['<h2>Slices</h2>',
              '<table><tr><th>task</th><th>slice</th><th>eval examples</th><th>metrics</th>'
              '<th>check</th><th>result</th></tr>', slices, '</table>']
  learned = [[name, t.get('sigma'), t.get('loss_weight')]
             for name, t in summary.get('tasks', {}).items()]
  parts += ['<h2>Learned uncertainty and loss weights</h2>',
            _table(['task', 'sigma', 'effective loss weight'], learned)]
  if images.get('uncertainty'):
    parts.append(f'<img src="{images["uncertainty"]}" alt="sigma and loss weight by step">')
  parts.append('<h2>Training and eval loss</h2>')
  parts.append(f'<img src="{images["losses"]}" alt="loss curves">' if images.get('losses')
               else '<p>No training history in this run.</p>')
  parts.append('<h2>Calibration and predictions (binary tasks)</h2>')
  if images.get('calibration'):
    for task, image in images['calibration'].items():
      parts.append(f'<img src="{image}" alt="calibration of {html.escape(task)}">')
  else:
    parts.append('<p>No calibration plots (the Evaluator did not run).</p>')
  ingestion = summary.get('ingestion', {})
  parts += ['<h2>Ingestion</h2>',
            _table(['ingested', 'quarantined', 'train examples', 'eval examples'],
                   [[ingestion.get('num_ingested'), ingestion.get('num_quarantined'),
                     ingestion.get('examples_by_split', {}).get('train'),
                     ingestion.get('examples_by_split', {}).get('eval')]])]
  reasons = sorted((ingestion.get('reasons') or {}).items(), key=lambda kv: -kv[1])
  parts.append(_table(['quarantine reason', 'records'], [list(r) for r in reasons])
               if reasons else '<p>No record was quarantined.</p>')
  if ingestion.get('quarantine_uri'):
    parts.append(f'<p>Quarantined records: <code>{html.escape(ingestion["quarantine_uri"])}'
                 '</code></p>')
  parts.append('<h2>Components</h2>')
  parts.append(_table(['component', 'state', 'wall seconds'],
                      [[n, c['state'], c['wall_seconds']]
                       for n, c in summary.get('components', {}).items()]))
  if images.get('components'):
    parts.append(f'<img src="{images["components"]}" alt="wall seconds per component">')
  parts.append('</body></html>')
  return '\n'.join(parts)


def write_report(run_dir: str) -> str:
  """Writes `<run_dir>/report/index.html` and its PNGs; returns the page's path."""
  summary = load_summary(run_dir)
  out_dir = os.path.join(run_dir, REPORT_DIR)
  os.makedirs(out_dir, exist_ok=True)
  images: Dict[str, Any] = {
      'uncertainty': plot_uncertainty(summary, out_dir),
      'losses': plot_losses(summary, out_dir),
      'components': plot_components(summary, out_dir),
      'calibration': {},
  }
  evaluation = summary.get('artifacts', {}).get('evaluation')
  if evaluation and os.path.isdir(evaluation):
    for task, buckets in calibration_buckets(evaluation).items():
      if buckets and task in summary.get('tasks', {}):
        images['calibration'][task] = plot_calibration(task, buckets, out_dir)
  path = os.path.join(out_dir, PAGE)
  with open(path, 'w') as f:
    f.write(render(summary, images))
  return path
