"""The sample log generator: seeded, daily partitions, labels consistent, truth kept apart."""

import gzip
import json
import os

from pipeline.sample_logs import generate_logs


def _read(path):
  with gzip.open(path, 'rt') as f:
    return [json.loads(line) for line in f]


def test_layout_determinism_and_label_rules(tmp_path):
  a = generate_logs(str(tmp_path / 'a' / 'logs'), rows=3001, days=3, seed=5)
  b = generate_logs(str(tmp_path / 'b' / 'logs'), rows=3001, days=3, seed=5)
  assert [os.path.relpath(p, tmp_path / 'a') for p in a['log_files']] == [
      f'logs/day=2026-11-0{d}/impressions.jsonl.gz' for d in (1, 2, 3)]
  rows_a = [r for p in a['log_files'] for r in _read(p)]
  rows_b = [r for p in b['log_files'] for r in _read(p)]
  assert rows_a == rows_b and len(rows_a) == 3001

  assert not any(r['conversion'] and not r['click'] for r in rows_a)
  assert all((r['dwell_seconds'] > 0) == bool(r['click']) for r in rows_a)
  assert 0.05 < sum(r['click'] for r in rows_a) / len(rows_a) < 0.4
  assert all(0 <= r['hour'] < 24 and 1 <= r['position'] <= 10 for r in rows_a)

  truth = [t for day in sorted(os.listdir(a['truth_dir']))
           for t in _read(os.path.join(a['truth_dir'], day, 'truth.jsonl.gz'))]
  assert [t['impression_id'] for t in truth] == [r['impression_id'] for r in rows_a]
  assert not {'p_click', 'p_conversion', 'expected_dwell'} & set(rows_a[0])
  assert all(t['p_conversion'] <= t['p_click'] for t in truth)
  # The truth is informative: clicked impressions had a higher true click probability.
  clicked = [t['p_click'] for t, r in zip(truth, rows_a) if r['click']]
  unclicked = [t['p_click'] for t, r in zip(truth, rows_a) if not r['click']]
  assert sum(clicked) / len(clicked) > 1.5 * sum(unclicked) / len(unclicked)


def test_different_seeds_differ(tmp_path):
  a = generate_logs(str(tmp_path / 'a'), rows=200, seed=1)
  b = generate_logs(str(tmp_path / 'b'), rows=200, seed=2)
  assert _read(a['log_files'][0]) != _read(b['log_files'][0])
