"""Quality benchmark: does the multi-task machinery learn what it should? (Not a test.)

Every experiment uses the project's own model builders, loss weighting and optimizer groups,
directly (1, 4) or through the whole local pipeline (2, 3):

1. Kendall reproduction: y1 = 2x + 8 + 10 eps, y2 = 3x + 3 + eps; uncertainty weighting must
   learn sigmas near 10 and 1.
2. Oracle gap: per task on the sample logs' eval split, the model's AUC (or RMSE) next to two
   oracles computed from the generator's ground truth for the same rows: the user's own
   probabilities, and the best a model can do for users unseen in training (the probabilities
   averaged over the individual part of a user of the row's segment). Each task on the rows
   of its space: click on every impression, conversion (pCVR) and dwell after a click.
3. Weighting and balancing: uncertainty, equal, fixed, DWA, GradNorm, uncertainty with PCGrad,
   and MMoE and DCN-V2 cross layers, dwell in raw seconds.
4. MMoE vs shared-bottom on the MMoE paper's synthetic tasks at correlations 1.0, 0.9, 0.5,
   at equal parameter counts (the shared-bottom trunk is sized to MMoE's count), 5 seeds;
   `gates`: MMoE alone at correlation 0.5, with its gate usage per task.

    .venv/bin/python benchmarks/quality.py [--quick] [--only kendall,mmoe,pipeline,gates]
        [--out benchmarks/results/quality.json]

Prints markdown tables and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import gzip
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pipeline  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline.config import parse_config, load_config  # noqa: E402
from trainer.model import MultiTaskModel  # noqa: E402
from trainer.models import build_network  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(config, features, labels, steps: int, batch_size: int, seed: int):
  tf.keras.utils.set_random_seed(seed)
  model = MultiTaskModel(build_network(config, {}), config)
  model.compile(optimizer=model.group_optimizers['trunk'])
  dataset = (tf.data.Dataset.from_tensor_slices((features, labels))
             .shuffle(10000, seed=seed).repeat().batch(batch_size))
  model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
  return model


def _numeric_config(names: List[str], tasks: List[Dict[str, Any]], model: Dict[str, Any],
                    training: Dict[str, Any]):
  return parse_config({
      'name': 'quality', 'data': {'input_base': '/unused', 'split_key': 'id'},
      'features': [{'name': n, 'type': 'numeric', 'scaling': 'none'} for n in names],
      'tasks': tasks, 'model': model, 'training': training})


# ---- 1. Kendall et al. reproduction ---------------------------------------------------------

def kendall(samples: int, steps: int) -> Dict[str, Any]:
  rng = np.random.default_rng(0)
  x = rng.normal(size=samples).astype(np.float32)
  y1 = (2 * x + 8 + 10 * rng.normal(size=samples)).astype(np.float32)
  y2 = (3 * x + 3 + 1 * rng.normal(size=samples)).astype(np.float32)
  config = _numeric_config(
      ['x'],
      [{'name': 'y1', 'label': 'y1', 'type': 'regression', 'head_units': [16],
        'optimizer': {'learning_rate': 0.01}},
       {'name': 'y2', 'label': 'y2', 'type': 'regression', 'head_units': [16],
        'optimizer': {'learning_rate': 0.01}}],
      {'trunk_units': [1024]},
      {'trunk_optimizer': {'learning_rate': 0.001},
       'loss_weights_optimizer': {'learning_rate': 0.01}, 'train_steps': steps})
  model = _train(config, {'x': x}, {'y1': y1, 'y2': y2}, steps, 256, seed=0)
  sigmas = {k: float(v) for k, v in model.loss_weighting.sigmas().items()}
  return {'samples': samples, 'steps': steps, 'true_sigma': {'y1': 10.0, 'y2': 1.0},
          'learned_sigma': sigmas,
          'relative_error': {'y1': abs(sigmas['y1'] - 10) / 10, 'y2': abs(sigmas['y2'] - 1)}}


# ---- 4. MMoE vs shared-bottom on the MMoE paper's synthetic data ----------------------------

def _mmoe_data(correlation: float, samples: int, seed: int, dim: int = 100, m: int = 10):
  """Ma et al. (KDD 2018), section 3.2: two regression tasks whose label correlation is set
  by the cosine similarity of their weight vectors, plus sinusoidal non-linearities."""
  rng = np.random.default_rng(seed)
  u1, u2 = np.linalg.qr(rng.normal(size=(dim, 2)))[0].T
  c = 1.0
  w1 = c * u1
  w2 = c * (correlation * u1 + np.sqrt(1 - correlation ** 2) * u2)
  alpha, beta = rng.normal(size=m), rng.normal(size=m)
  x = rng.normal(size=(samples, dim)).astype(np.float32)

  def label(w):
    z = x @ w
    return (z + np.sum(np.sin(alpha[None, :] * z[:, None] + beta[None, :]), axis=1) +
            rng.normal(scale=0.1, size=samples)).astype(np.float32)

  return x, label(w1), label(w2)


def _parameters(config) -> int:
  return int(sum(np.prod(v.shape) for v in build_network(config, {}).model.trainable_variables))


def _gate_usage(model, features, tasks) -> Dict[str, Any]:
  """Per task: the mean gate weight of each expert over the examples, and the mean entropy
  of one example's gate (log 4 = 1.386 for uniform gates over 4 experts, 0 for one expert)."""
  network = model.network  # the Keras functional model
  gates = tf.keras.Model(network.inputs,
                         [network.get_layer(f'{t}_gate').output for t in tasks])(features)
  usage = {}
  for task, weights in zip(tasks, gates):
    weights = weights.numpy()
    usage[task] = {'mean_weight': [round(float(w), 4) for w in weights.mean(axis=0)],
                   'entropy': float(np.mean(-np.sum(weights * np.log(weights + 1e-12),
                                                    axis=1)))}
  return usage


def mmoe_vs_shared_bottom(seeds: int, steps: int, samples: int = 12000,
                          correlations=(1.0, 0.9, 0.5),
                          architectures=('shared_bottom', 'mmoe')) -> Dict[str, Any]:
  names = [f'x{i}' for i in range(100)]
  tasks = [{'name': f't{i}', 'label': f't{i}', 'type': 'regression', 'head_units': [16],
            'optimizer': {'learning_rate': 0.001}} for i in (1, 2)]
  training = {'loss_weighting': 'equal', 'trunk_optimizer': {'learning_rate': 0.001},
              'train_steps': steps}
  mmoe = {'type': 'mmoe', 'num_experts': 4, 'expert_units': [32]}
  # The paper compares at equal parameter counts: the shared-bottom trunk width whose count is
  # closest to MMoE's.
  target = _parameters(_numeric_config(names, tasks, mmoe, training))
  def shared_bottom(h):
    return _parameters(_numeric_config(names, tasks, {'type': 'shared_bottom',
                                                      'trunk_units': [h]}, training))

  low, high = 1, 1024  # the count grows with the width: bisect, then take the closer end
  while high - low > 1:
    middle = (low + high) // 2
    low, high = (middle, high) if shared_bottom(middle) < target else (low, middle)
  width = min((low, high), key=lambda h: abs(shared_bottom(h) - target))
  models = {'shared_bottom': {'type': 'shared_bottom', 'trunk_units': [width]}, 'mmoe': mmoe}
  results = {}
  for correlation in correlations:
    for arch in architectures:
      model_cfg = models[arch]
      losses, gates = [], []
      for seed in range(seeds):
        x, y1, y2 = _mmoe_data(correlation, samples, seed)
        split = samples * 5 // 6
        features = {n: x[:split, i] for i, n in enumerate(names)}
        config = _numeric_config(names, tasks, model_cfg, training)
        model = _train(config, features, {'t1': y1[:split], 't2': y2[:split]}, steps, 128, seed)
        test = {n: x[split:, i] for i, n in enumerate(names)}
        out = model.network(test)
        losses.append([float(np.mean((out[t].numpy()[:, 0] - y[split:]) ** 2))
                       for t, y in (('t1', y1), ('t2', y2))])
        if arch == 'mmoe':
          gates.append(_gate_usage(model, test, ('t1', 't2')))
      mean, spread = np.mean(losses, axis=0), np.std(losses, axis=0)
      results[f'{correlation}/{arch}'] = {
          'correlation': correlation, 'model': arch, 'model_config': model_cfg,
          'parameters': _parameters(config), 'test_mse_t1': float(mean[0]),
          'test_mse_t2': float(mean[1]), 'test_mse_t1_std': float(spread[0]),
          'test_mse_t2_std': float(spread[1]), 'seeds': seeds, 'steps': steps,
          'per_seed': losses, **({'gates_per_seed': gates} if gates else {})}
  return results


# ---- 2 and 3: through the pipeline on the sample logs ----------------------------------------

def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
  order = np.argsort(scores, kind='mergesort')
  ranks = np.empty(len(scores))
  ranks[order] = np.arange(1, len(scores) + 1)
  positives = labels.sum()
  negatives = len(labels) - positives
  return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) /
               (positives * negatives))


def _eval_users(run_dir: str) -> set:
  pattern = os.path.join(run_dir, 'pipeline_root', 'LogExampleGen', 'examples', '*',
                         'Split-eval', '*.gz')
  users = set()
  for record in tf.data.TFRecordDataset(sorted(glob.glob(pattern)), compression_type='GZIP'):
    example = tf.train.Example.FromString(record.numpy())
    users.add(example.features.feature['user_id'].bytes_list.value[0].decode())
  return users


def _records(directory: str):
  """Every JSON object in the day partitions of a generated log or ground-truth directory."""
  for path in sorted(glob.glob(os.path.join(directory, '*', '*.gz'))):
    with gzip.open(path, 'rt') as f:
      yield from (json.loads(line) for line in f)


def _oracle(logs_dir: str, truth_dir: str, users: set) -> Dict[str, float]:
  """Both oracles' metrics on the eval rows of each task's space (the sample config's:
  click on every impression, conversion and dwell after a click): '' scores with the user's
  own truth, '_segment' with the segment's (what is knowable about a user never seen in
  training)."""
  rows = {r['impression_id']: r for r in _records(logs_dir) if r['user_id'] in users}
  truth = {t['impression_id']: t for t in _records(truth_dir) if t['impression_id'] in rows}
  ids = sorted(rows)
  clicked = sorted(i for i in ids if rows[i]['click'] == 1)
  click = np.array([rows[i]['click'] for i in ids])
  conversion = np.array([rows[i]['conversion'] for i in clicked])
  dwell = np.array([rows[i]['dwell_seconds'] for i in clicked])
  oracle = {'dwell_rmse_of_mean': float(np.std(dwell)), 'eval_rows': len(ids),
            'eval_rows_clicked': len(clicked)}
  # E[dwell | click] depends on the item and the device, not on the user: one truth for both.
  expected_dwell = np.array([truth[i]['dwell_given_click'] for i in clicked])
  for suffix in ('', '_segment'):
    def column(name, among):
      return np.array([truth[i][name + suffix] for i in among])
    oracle.update({
        'click_auc' + suffix: _auc(click, column('p_click', ids)),
        'conversion_auc' + suffix: _auc(conversion, column('p_cvr', clicked)),
        'dwell_rmse' + suffix: float(np.sqrt(np.mean((dwell - expected_dwell) ** 2))),
    })
  return oracle


def pipeline_experiments(rows: int, steps: int) -> Dict[str, Any]:
  from pipeline.local_runner import run_local  # pylint: disable=g-import-not-at-top
  from pipeline.sample_logs import generate_logs  # pylint: disable=g-import-not-at-top
  root = tempfile.mkdtemp(prefix='mtl-quality-')
  written = generate_logs(os.path.join(root, 'logs'), rows=rows, days=5, seed=7)
  base = load_config(os.path.join(REPO, 'schemas', 'impressions.yaml'), base_dir=REPO)
  base = base.with_overrides(data={'input_base': os.path.join(root, 'logs')},
                             training={'train_steps': steps})
  # Fixed weights that put the tasks on a comparable scale by hand (dwell's loss is in s^2).
  fixed = tuple(dataclasses.replace(t, loss_weight=0.005 if t.type == 'regression' else 1.0)
                for t in base.tasks)
  variants = {'uncertainty': base,
              'equal': base.with_overrides(training={'loss_weighting': 'equal'}),
              'fixed': dataclasses.replace(
                  base.with_overrides(training={'loss_weighting': 'fixed'}), tasks=fixed),
              'dwa': base.with_overrides(training={'loss_weighting': 'dwa'}),
              'gradnorm': base.with_overrides(training={'loss_weighting': 'gradnorm'}),
              'uncertainty + pcgrad': base.with_overrides(
                  training={'gradient_surgery': 'pcgrad'}),
              'mmoe (uncertainty)': base.with_overrides(model={'type': 'mmoe'}),
              'cross_layers 2 (uncertainty)': base.with_overrides(model={'cross_layers': 2})}
  run_dir = os.path.join(root, 'run')
  results: Dict[str, Any] = {'rows': rows, 'train_steps': steps, 'weighting': {}}
  for i, (name, config) in enumerate(variants.items()):
    config = config.with_overrides(serving={'push_dir': os.path.join(root, f'serving-{i}')})
    started = time.time()
    summary = run_local(config, run_dir)
    results['weighting'][name] = {
        task: {'auc': t['metrics'].get('auc'),
               'rmse': t['metrics'].get('root_mean_squared_error'),
               'sigma': t['sigma'], 'loss_weight': t['loss_weight']}
        for task, t in summary['tasks'].items()}
    results['weighting'][name]['wall_seconds'] = round(time.time() - started, 1)
  results['oracle'] = _oracle(os.path.join(root, 'logs'), written['truth_dir'],
                              _eval_users(run_dir))
  model = results['weighting']['uncertainty']
  oracle = results['oracle']
  results['oracle_gap'] = {
      task: {'model_auc': model[task]['auc'], 'oracle_auc': oracle[f'{task}_auc'],
             'ratio': model[task]['auc'] / oracle[f'{task}_auc'],
             'segment_oracle_auc': oracle[f'{task}_auc_segment'],
             'segment_ratio': model[task]['auc'] / oracle[f'{task}_auc_segment']}
      for task in ('click', 'conversion')}
  results['oracle_gap']['dwell'] = {
      'model_rmse': model['dwell']['rmse'], 'oracle_rmse': oracle['dwell_rmse'],
      'segment_oracle_rmse': oracle['dwell_rmse_segment'],
      'rmse_of_predicting_the_mean': oracle['dwell_rmse_of_mean']}
  return results


# ---- report ----------------------------------------------------------------------------------

def _fmt(value, digits=4):
  return 'n/a' if value is None else f'{value:.{digits}f}'


def report(results: Dict[str, Any]) -> str:
  return '\n'.join(_report_experiments(results) + _report_gates(results.get('mmoe_gates')))


def _report_gates(gates: Dict[str, Any]) -> List[str]:
  if not gates:
    return []
  run = next(iter(gates.values()))
  out = ['', f'### 4b. MMoE gates at correlation 0.5 ({run["steps"]} steps; mean gate weight '
         'per expert over the test rows, and the mean entropy of one row\'s gate)', '',
         '| seed | task 1 MSE | task 2 MSE | task 1 gate | entropy | task 2 gate | entropy |',
         '| --- | --- | --- | --- | --- | --- | --- |']
  for seed, (losses, usage) in enumerate(zip(run['per_seed'], run['gates_per_seed'])):
    cells = [f'{seed}', f'{losses[0]:.4f}', f'{losses[1]:.4f}']
    for task in ('t1', 't2'):
      cells += [' '.join(f'{w:.2f}' for w in usage[task]['mean_weight']),
                f'{usage[task]["entropy"]:.3f}']
    out.append('| ' + ' | '.join(cells) + ' |')
  return out


def _report_experiments(results: Dict[str, Any]) -> List[str]:
  out = []
  k = results.get('kendall')
  if k:
    out += ['### 1. Kendall et al. reproduction', '',
            f'{k["samples"]} samples, {k["steps"]} steps, 1024-unit trunk.', '',
            '| task | true sigma | learned sigma | relative error |', '| --- | --- | --- | --- |']
    for t in ('y1', 'y2'):
      out.append(f'| {t} | {k["true_sigma"][t]:g} | {k["learned_sigma"][t]:.3f} | '
                 f'{k["relative_error"][t]:.1%} |')
  if 'pipeline' in results:
    p = results['pipeline']
    g = p['oracle_gap']
    out += ['', '### 2. Oracle gap on the sample logs (eval split: users unseen in training)', '',
            f'{p["rows"]} rows over 5 days, {p["train_steps"]} steps, shared-bottom, '
            f'uncertainty weighting; {p["oracle"]["eval_rows"]} eval rows.', '',
            '| task | model | oracle: the user | model / oracle | oracle: unseen users (the '
            'segment) | model / oracle |', '| --- | --- | --- | --- | --- | --- |']
    for t in ('click', 'conversion'):
      out.append(f'| {t} AUC | {_fmt(g[t]["model_auc"])} | {_fmt(g[t]["oracle_auc"])} | '
                 f'{g[t]["ratio"]:.1%} | {_fmt(g[t].get("segment_oracle_auc"))} | '
                 f'{g[t].get("segment_ratio", float("nan")):.1%} |')
    out.append(f'| dwell RMSE (s) | {_fmt(g["dwell"]["model_rmse"], 2)} | '
               f'{_fmt(g["dwell"]["oracle_rmse"], 2)} | | '
               f'{_fmt(g["dwell"].get("segment_oracle_rmse"), 2)} | predicting the mean: '
               f'{_fmt(g["dwell"]["rmse_of_predicting_the_mean"], 2)} |')
    out += ['', '### 3. Loss weighting and balancing (dwell in raw seconds)', '',
            '| weighting | click AUC | conversion AUC | dwell RMSE | dwell weight |',
            '| --- | --- | --- | --- | --- |']
    for name, w in p['weighting'].items():
      out.append(f'| {name} | {_fmt(w["click"]["auc"])} | {_fmt(w["conversion"]["auc"])} | '
                 f'{_fmt(w["dwell"]["rmse"], 2)} | {_fmt(w["dwell"]["loss_weight"])} |')
  m = results.get('mmoe')
  if not m:
    return out
  out += ['', '### 4. MMoE vs shared-bottom (MMoE paper synthetic data, test MSE, mean ± std '
          f'over {next(iter(m.values()))["seeds"]} seeds)', '',
          '| correlation | model | parameters | task 1 MSE | task 2 MSE |',
          '| --- | --- | --- | --- | --- |']
  for r in m.values():
    out.append(f'| {r["correlation"]} | {r["model"]} | {r.get("parameters", "n/a")} | '
               f'{r["test_mse_t1"]:.4f} ± {r.get("test_mse_t1_std", float("nan")):.4f} | '
               f'{r["test_mse_t2"]:.4f} ± {r.get("test_mse_t2_std", float("nan")):.4f} |')
  # The spread above is mostly between the seeds' datasets; the paired difference on each
  # seed's dataset says more.
  out += ['', '| correlation | MMoE - shared-bottom, task 1 | task 2 | seeds where MMoE is '
          'better (task 1, task 2) |', '| --- | --- | --- | --- |']
  for correlation in sorted({r['correlation'] for r in m.values()}, reverse=True):
    pair = [m.get(f'{correlation}/{arch}', {}).get('per_seed') for arch in ('mmoe',
                                                                           'shared_bottom')]
    if not all(pair):
      continue
    difference = np.array(pair[0]) - np.array(pair[1])
    mean, spread = difference.mean(axis=0), difference.std(axis=0)
    wins = (difference < 0).sum(axis=0)
    out.append(f'| {correlation} | {mean[0]:+.4f} ± {spread[0]:.4f} | {mean[1]:+.4f} ± '
               f'{spread[1]:.4f} | {wins[0]}, {wins[1]} of {len(difference)} |')
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='smaller sizes, for a smoke run')
  parser.add_argument('--skip-pipeline', action='store_true', help='only experiments 1 and 4')
  parser.add_argument('--only', default='kendall,mmoe,pipeline',
                      help='comma-separated experiments to run (kendall, mmoe, pipeline, gates: '
                      "MMoE's gates at correlation 0.5); the others keep their numbers from "
                      '--out if it exists')
  parser.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results',
                                                    'quality.json'))
  args = parser.parse_args()
  only = set(args.only.split(','))
  results: Dict[str, Any] = {}
  if only != {'kendall', 'mmoe', 'pipeline'} and os.path.exists(args.out):
    with open(args.out) as f:
      results = json.load(f)
  started = time.time()
  os.makedirs(os.path.dirname(args.out), exist_ok=True)

  def save():  # after each experiment, so a late failure keeps the earlier numbers
    results['wall_seconds'] = round(time.time() - started, 1)
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=2, sort_keys=True)

  if 'kendall' in only:
    results['kendall'] = kendall(samples=2000 if args.quick else 20000,
                                 steps=500 if args.quick else 4000)
    save()
  if 'mmoe' in only:
    results['mmoe'] = mmoe_vs_shared_bottom(seeds=1 if args.quick else 5,
                                            steps=300 if args.quick else 2000)
    save()
  if 'gates' in only:  # MMoE alone at correlation 0.5, with its gates (section 4's question)
    results['mmoe_gates'] = mmoe_vs_shared_bottom(
        seeds=1 if args.quick else 5, steps=300 if args.quick else 2000, correlations=(0.5,),
        architectures=('mmoe',))
    save()
  if 'pipeline' in only and not args.skip_pipeline:
    results['pipeline'] = pipeline_experiments(rows=5000 if args.quick else 60000,
                                               steps=50 if args.quick else 800)
    save()
  print(report(results))
  print(f'\n(wrote {args.out}; {results["wall_seconds"]} s)')


if __name__ == '__main__':
  main()
