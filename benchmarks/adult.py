"""Adult benchmark: the pipeline against the models a user would pick instead, on real tabular
data and on exactly the pipeline's splits. (Not a test.)

UCI Adult (census income, 32,561 rows, CC BY 4.0; its README gives the source) as two binary
tasks, as is usual for multi-task work on census data: income above 50K, and never married
(marital status is then not a feature). For each seed:

1. the CSV becomes JSON lines, one per row, keeping the file's own values (`?`, missing, stays
   a category of its own); the split key is the row number salted by the seed, so each seed
   gives another train/eval split;
2. the whole local pipeline runs with `benchmarks/configs/adult.yaml` (a config only);
3. on the pipeline's own train split (read back from LogExampleGen's output) scikit-learn's
   HistGradientBoostingClassifier (native categorical support; learning rate and iterations
   chosen on a validation fifth of the train split, then refit on all of it) and a logistic
   regression (one-hot categoricals, scaled numerics) are trained per task, and every model's
   AUC is taken on the pipeline's eval split.

    .venv/bin/python benchmarks/adult.py [--data PATH] [--seeds 3]
        [--set model.type=ple] [--set features.numeric.buckets=16] ...
        [--baselines-cache baselines.json] [--out benchmarks/results/adult.json]

`--set PATH=VALUE` changes one key of the config (VALUE is read as YAML). In a list, a path
part selects the elements of that name or type, or `*` all of them:
`features.categorical.embedding_dim=auto`, `tasks.*.optimizer.weight_decay=0.01`,
`tasks.income.head_units=[64]`.

Prints a markdown table (mean and spread over the seeds) and writes every number as JSON.
`--compare A.json B.json ...` prints one table of several such runs (variants of the config)
instead of running anything.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pipeline  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS)
import numpy as np  # noqa: E402
import yaml  # noqa: E402
import tensorflow as tf  # noqa: E402
from ml_metadata.metadata_store import metadata_store  # noqa: E402
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler  # noqa: E402

from pipeline.config import load_config, parse_config  # noqa: E402
from pipeline.local_runner import metadata_config, run_local  # noqa: E402
from pipeline.run_summary import read_run  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'benchmarks', 'configs', 'adult.yaml')
DEFAULT_DATA = os.path.join(os.path.dirname(REPO), 'shared', 'data', 'adult', 'adult.data')
CATEGORICAL = ['workclass', 'education', 'occupation', 'relationship', 'race', 'sex',
               'native_country']
NUMERIC = ['age', 'fnlwgt', 'education_num', 'capital_gain', 'capital_loss', 'hours_per_week']
TASKS = ['income', 'never_married']
GRID = [{'learning_rate': lr, 'max_iter': it, 'max_leaf_nodes': leaves}
        for lr in (0.02, 0.05, 0.1) for it in (100, 200, 400) for leaves in (15, 31)]


def read_rows(path: str) -> List[Dict[str, Any]]:
  """The CSV's rows as log records (labels derived, marital status dropped)."""
  rows = []
  with open(path, newline='') as f:
    reader = csv.reader(f, skipinitialspace=True)
    header = [h.strip().replace('-', '_').lower() for h in next(reader)]
    for i, values in enumerate(reader):
      if not values:
        continue
      raw = dict(zip(header, (v.strip() for v in values)))
      record = {'row': str(i)}
      record.update({name: raw[name] for name in CATEGORICAL})
      record.update({name: float(raw[name]) for name in NUMERIC})
      record['income'] = int(raw['salary'] == '>50K')
      record['never_married'] = int(raw['marital_status'] == 'Never-married')
      rows.append(record)
  return rows


def write_logs(rows: List[Dict[str, Any]], directory: str, seed: int) -> None:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'adult.jsonl'), 'w') as f:
    for record in rows:
      f.write(json.dumps(dict(record, row=f'{seed}-{record["row"]}')) + '\n')


def pipeline_splits(config, run_dir: str) -> Dict[str, List[str]]:
  """{'train' | 'eval': [row ids]} as LogExampleGen wrote them."""
  store = metadata_store.MetadataStore(metadata_config(run_dir))
  [examples] = read_run(store, config.name)['nodes']['LogExampleGen']['outputs']['examples']
  splits = {}
  for split in ('train', 'eval'):
    files = tf.io.gfile.glob(os.path.join(examples.uri, f'Split-{split}', '*'))
    splits[split] = [
        tf.train.Example.FromString(r.numpy()).features.feature['row'].bytes_list.value[0]
        .decode() for r in tf.data.TFRecordDataset(files, compression_type='GZIP')]
  return splits


def _columns(rows: List[Dict[str, Any]]) -> Tuple[np.ndarray, np.ndarray]:
  categorical = np.array([[r[c] for c in CATEGORICAL] for r in rows], dtype=object)
  numeric = np.array([[r[n] for n in NUMERIC] for r in rows], dtype=np.float64)
  return categorical, numeric


def _codes(train_cat: np.ndarray, other_cat: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Ordinal codes per column from the train split; unseen values become NaN (missing)."""
  train_codes = np.zeros(train_cat.shape)
  other_codes = np.zeros(other_cat.shape)
  for j in range(train_cat.shape[1]):
    vocabulary = {v: k for k, v in enumerate(sorted(set(train_cat[:, j])))}
    train_codes[:, j] = [vocabulary[v] for v in train_cat[:, j]]
    other_codes[:, j] = [vocabulary.get(v, np.nan) for v in other_cat[:, j]]
  return train_codes, other_codes


def boosted_trees(train: List[Dict], evaluation: List[Dict], task: str, seed: int
                  ) -> Dict[str, Any]:
  """HistGradientBoostingClassifier: the grid's best on a validation fifth of train, refit on
  all of train, AUC on eval."""
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(train))
  fit_rows = [train[i] for i in order[len(train) // 5:]]
  valid_rows = [train[i] for i in order[:len(train) // 5]]

  def features(fit, other):
    fit_cat, fit_num = _columns(fit)
    other_cat, other_num = _columns(other)
    fit_codes, other_codes = _codes(fit_cat, other_cat)
    return np.hstack([fit_codes, fit_num]), np.hstack([other_codes, other_num])

  mask = [True] * len(CATEGORICAL) + [False] * len(NUMERIC)
  x_fit, x_valid = features(fit_rows, valid_rows)
  scores = []
  for params in GRID:
    model = HistGradientBoostingClassifier(categorical_features=mask, random_state=seed,
                                           early_stopping=False, **params)
    model.fit(x_fit, [r[task] for r in fit_rows])
    scores.append(roc_auc_score([r[task] for r in valid_rows],
                                model.predict_proba(x_valid)[:, 1]))
  best = GRID[int(np.argmax(scores))]
  x_train, x_eval = features(train, evaluation)
  model = HistGradientBoostingClassifier(categorical_features=mask, random_state=seed,
                                         early_stopping=False, **best)
  model.fit(x_train, [r[task] for r in train])
  return {'auc': float(roc_auc_score([r[task] for r in evaluation],
                                     model.predict_proba(x_eval)[:, 1])),
          'params': best, 'validation_auc': float(max(scores))}


def _log1p(values: np.ndarray) -> np.ndarray:
  return np.log1p(np.asarray(values, dtype=np.float64))


def logistic_regression(train: List[Dict], evaluation: List[Dict], task: str) -> Dict[str, Any]:
  numeric_index = list(range(len(CATEGORICAL), len(CATEGORICAL) + len(NUMERIC)))
  transform = ColumnTransformer([
      ('categorical', OneHotEncoder(handle_unknown='ignore'), list(range(len(CATEGORICAL)))),
      ('numeric', make_pipeline(FunctionTransformer(_log1p), StandardScaler()),
       numeric_index)])
  model = make_pipeline(transform, LogisticRegression(max_iter=3000))

  def matrix(rows):
    categorical, numeric = _columns(rows)
    return np.hstack([categorical, numeric.astype(object)])

  model.fit(matrix(train), [r[task] for r in train])
  return {'auc': float(roc_auc_score([r[task] for r in evaluation],
                                     model.predict_proba(matrix(evaluation))[:, 1]))}


def apply_setting(raw: Any, path: str, value: Any) -> None:
  """Sets `path` (dotted; in a list, a part selects elements by name or type, `*` all) to
  `value` in the raw config, in place."""
  head, _, rest = path.partition('.')
  if isinstance(raw, list):
    chosen = [e for e in raw if head == '*' or head in (e.get('name'), e.get('type'))]
    if not chosen:
      raise SystemExit(f'--set: no element {head!r} in the list (names and types: '
                       f'{sorted({e.get("name") for e in raw} | {e.get("type") for e in raw})})')
    for element in chosen:
      apply_setting(element, rest or path, value)
    return
  if not rest:
    raw[head] = value
    return
  if raw.get(head) is None:
    raw[head] = {}
  apply_setting(raw[head], rest, value)


def configured(settings: List[Tuple[str, Any]], seed: int, logs: str, push_dir: str):
  raw = json.loads(load_config(CONFIG, base_dir=REPO).to_json())
  raw['data']['input_base'] = logs
  raw['serving']['push_dir'] = push_dir
  raw['training']['seed'] = seed
  for path, value in settings:
    apply_setting(raw, path, value)
  return parse_config(raw)


def run_seed(rows: List[Dict[str, Any]], seed: int, root: str,
             settings: List[Tuple[str, Any]], baselines_cache: str = '') -> Dict[str, Any]:
  logs = os.path.join(root, f'seed-{seed}', 'logs')
  write_logs(rows, logs, seed)
  config = configured(settings, seed, logs, os.path.join(root, f'seed-{seed}', 'serving'))
  run_dir = os.path.join(root, f'seed-{seed}', 'run')
  started = time.time()
  summary = run_local(config, run_dir)
  pipeline_seconds = time.time() - started
  splits = pipeline_splits(config, run_dir)
  by_id = {f'{seed}-{r["row"]}': r for r in rows}
  train = [by_id[i] for i in splits['train']]
  evaluation = [by_id[i] for i in splits['eval']]
  result: Dict[str, Any] = {
      'seed': seed, 'train_rows': len(train), 'eval_rows': len(evaluation),
      'pipeline_seconds': round(pipeline_seconds, 1),
      'exported_epoch': summary['training'].get('exported_epoch'),
      'exported_because': summary['training'].get('exported_because'), 'tasks': {}}
  # The baselines depend only on the split (and the seed): variants of the config share them.
  split_text = '\n'.join(sorted(splits['train']) + ['--'] + sorted(splits['eval']))
  split_id = hashlib.sha256(split_text.encode()).hexdigest()[:16]
  cache = _read_json(baselines_cache) if baselines_cache else {}
  for task in TASKS:
    key = f'{seed}/{task}/{split_id}/{json.dumps(GRID)}'
    if key not in cache:
      started = time.time()
      trees = boosted_trees(train, evaluation, task, seed)
      trees['seconds'] = round(time.time() - started, 1)
      started = time.time()
      linear = logistic_regression(train, evaluation, task)
      linear['seconds'] = round(time.time() - started, 1)
      cache[key] = {'boosted_trees': trees, 'logistic_regression': linear}
    result['tasks'][task] = {'pipeline_auc': summary['tasks'][task]['metrics']['auc'],
                             **cache[key]}
  if baselines_cache:
    with open(baselines_cache, 'w') as f:
      json.dump(cache, f, indent=1)
  return result


def _read_json(path: str) -> Dict[str, Any]:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _stats(values: List[float]) -> str:
  return f'{np.mean(values):.4f} ± {np.std(values):.4f}'


def compare(paths: List[str]) -> str:
  """One markdown table of several runs: per task the pipeline's AUC and its gap to the
  boosted trees on the same splits (mean ± std over the seeds), and the exported epochs."""
  lines = ['| variant (`--set`) | ' + ' | '.join(
      f'{t} AUC | {t} - trees' for t in TASKS) + ' | exported epochs |',
           '| --- | ' + ' | '.join('--- | ---' for _ in TASKS) + ' | --- |']
  trees: Dict[str, List[float]] = {}
  for path in paths:
    with open(path) as f:
      run = json.load(f)
    cells = []
    for task in TASKS:
      ours = [s['tasks'][task]['pipeline_auc'] for s in run['seeds']]
      theirs = [s['tasks'][task]['boosted_trees']['auc'] for s in run['seeds']]
      trees.setdefault(task, theirs)
      gaps = [a - b for a, b in zip(ours, theirs)]
      cells += [_stats(ours), f'{np.mean(gaps):+.4f} ± {np.std(gaps):.4f}']
    name = ' '.join(run.get('settings') or []) or '(the config as shipped)'
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' | ' +
                 ', '.join(str(s['exported_epoch']) for s in run['seeds']) + ' |')
  lines.append('| boosted trees (tuned per task and seed) | ' + ' | '.join(
      f'{_stats(trees[t])} | ' for t in TASKS) + ' |')
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data', default=DEFAULT_DATA)
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--set', action='append', default=[], metavar='PATH=VALUE',
                      help='change one config key (see the module docstring); repeatable')
  parser.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results',
                                                    'adult.json'))
  parser.add_argument('--baselines-cache', default='', metavar='JSON',
                      help='keep the boosted trees and logistic regression results per seed '
                      'and split in this file, so variants of the config reuse them')
  parser.add_argument('--compare', nargs='+', metavar='JSON',
                      help='print one table of these result files and exit')
  args = parser.parse_args(argv)
  if args.compare:
    print(compare(args.compare))
    return 0
  settings = []
  for item in args.set:
    path, sep, value = item.partition('=')
    if not sep:
      parser.error(f'--set {item!r}: expected PATH=VALUE')
    settings.append((path, yaml.safe_load(value)))
  configured(settings, 0, 'logs', 'serving')  # a mistake stops here, naming the key
  rows = read_rows(args.data)
  results = []
  with tempfile.TemporaryDirectory(prefix='adult-') as root:
    for seed in range(args.seeds):
      results.append(run_seed(rows, seed, root, settings, args.baselines_cache))
      print(json.dumps(results[-1]), flush=True)
  print(f'\nAdult, {len(rows)} rows, {args.seeds} seeds of the split; pipeline: '
        f'benchmarks/configs/adult.yaml {" ".join("--set " + s for s in args.set)}; eval AUC, '
        'mean ± standard deviation over the seeds\n')
  print('| task | pipeline | boosted trees (tuned) | logistic regression | pipeline - trees |')
  print('| --- | --- | --- | --- | --- |')
  for task in TASKS:
    ours = [r['tasks'][task]['pipeline_auc'] for r in results]
    trees = [r['tasks'][task]['boosted_trees']['auc'] for r in results]
    linear = [r['tasks'][task]['logistic_regression']['auc'] for r in results]
    gaps = [a - b for a, b in zip(ours, trees)]
    print(f'| {task} | {_stats(ours)} | {_stats(trees)} | {_stats(linear)} | '
          f'{np.mean(gaps):+.4f} (min {min(gaps):+.4f}) |')
  print('\nexported epochs: ' + ', '.join(str(r['exported_epoch']) for r in results) +
        '; pipeline wall seconds per seed: ' +
        ', '.join(str(r['pipeline_seconds']) for r in results))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'rows': len(rows), 'settings': args.set, 'seeds': results}, f, indent=2)
  print(f'wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
