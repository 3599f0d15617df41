"""The sample log generator: seeded, daily partitions, labels consistent, truth kept apart."""

import gzip
import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline import sample_logs
from pipeline.sample_logs import generate_logs, make_world, segment_probabilities


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

  # Conversion and dwell are logged after a click only, as real logs hold them.
  assert all(('conversion' in r) == ('dwell_seconds' in r) == bool(r['click']) for r in rows_a)
  assert all(r['dwell_seconds'] > 0 for r in rows_a if r['click'])
  assert 0.05 < sum(r['click'] for r in rows_a) / len(rows_a) < 0.4
  assert all(0 <= r['hour'] < 24 and 1 <= r['position'] <= 10 for r in rows_a)

  truth = [t for day in sorted(os.listdir(a['truth_dir']))
           for t in _read(os.path.join(a['truth_dir'], day, 'truth.jsonl.gz'))]
  assert [t['impression_id'] for t in truth] == [r['impression_id'] for r in rows_a]
  assert not {'p_click', 'p_conversion', 'expected_dwell', 'p_cvr'} & set(rows_a[0])
  assert all(t['p_conversion'] <= t['p_click'] for t in truth)
  # After a click: p_cvr is p_conversion / p_click, E[dwell | click] is expected_dwell / p_click.
  # (Up to the truth file's rounding to 6 decimals, or 4 for the dwell.)
  for t in truth[:200]:
    assert t['p_cvr'] * t['p_click'] == pytest.approx(t['p_conversion'], abs=2e-6)
    assert t['p_cvr_segment'] * t['p_click_segment'] == pytest.approx(
        t['p_conversion_segment'], abs=2e-6)
    assert t['dwell_given_click'] * t['p_click'] == pytest.approx(t['expected_dwell'],
                                                                  abs=2e-4)
  # The truth is informative: clicked impressions had a higher true click probability.
  clicked = [t['p_click'] for t, r in zip(truth, rows_a) if r['click']]
  unclicked = [t['p_click'] for t, r in zip(truth, rows_a) if not r['click']]
  assert sum(clicked) / len(clicked) > 1.5 * sum(unclicked) / len(unclicked)


def test_post_click_labels_on_every_impression(tmp_path):
  """`post_click_labels='zero'`: conversion and dwell on every line, 0 without a click."""
  written = generate_logs(str(tmp_path / 'logs'), rows=500, seed=5, post_click_labels='zero')
  rows = [r for p in written['log_files'] for r in _read(p)]
  assert all(r['conversion'] == 0 and r['dwell_seconds'] == 0 for r in rows if not r['click'])
  assert not any(r['conversion'] and not r['click'] for r in rows)
  absent = generate_logs(str(tmp_path / 'absent'), rows=500, seed=5)
  assert [{k: v for k, v in r.items() if k not in ('conversion', 'dwell_seconds')}
          for r in rows] == [
              {k: v for k, v in r.items() if k not in ('conversion', 'dwell_seconds')}
              for p in absent['log_files'] for r in _read(p)]


def test_different_seeds_differ(tmp_path):
  a = generate_logs(str(tmp_path / 'a'), rows=200, seed=1)
  b = generate_logs(str(tmp_path / 'b'), rows=200, seed=2)
  assert _read(a['log_files'][0]) != _read(b['log_files'][0])


def test_segment_truth_is_the_user_truth_averaged_over_the_individual_part():
  """The segment probabilities (Gauss-Hermite over the individual part) against Monte Carlo:
  draw many users of the segment the way make_world draws them, compute each one's
  probabilities with the formula the log is drawn with, and average."""
  world = make_world(3)
  rng = np.random.default_rng(0)
  users = 400_000
  spreads = []
  for case in range(12):
    segment, item = case % 8, int(rng.integers(0, 500))
    device, hour, position = int(rng.integers(0, 3)), int(rng.integers(0, 24)), case % 10 + 1
    bias = world.segment_bias[segment] + rng.normal(0.0, 0.2, users)
    factors = world.segment_factors[segment] + rng.normal(0.0, 0.25, (users, 4))
    one = lambda value: np.full(users, value)  # noqa: E731
    p_click = sample_logs._sigmoid(sample_logs._click_logit(
        world, bias, factors, one(item), one(device), one(hour), one(position)))
    p_conversion = p_click * sample_logs._sigmoid(sample_logs._cvr_logit(world, factors,
                                                                        one(item)))
    expected = segment_probabilities(world, *(np.array([v]) for v in
                                              (segment, item, device, hour, position)))
    # Within 5 Monte Carlo standard errors (the quadrature's own error is far smaller): a
    # variance term left out (the bias's, or the click-conversion covariance) moves the
    # expectation by more than that on some of these rows.
    for name, draws in (('p_click', p_click), ('p_conversion', p_conversion)):
      tolerance = 5 * draws.std() / np.sqrt(users)
      assert abs(expected[name][0] - draws.mean()) < tolerance, (case, name)
    spreads.append(p_click.std())
  # Averaging does not reproduce one user's probability: the individual part matters.
  assert np.mean(spreads) > 0.01


def test_segment_truth_ranks_worse_than_the_user_truth_and_better_than_chance(tmp_path):
  written = generate_logs(str(tmp_path / 'logs'), rows=20000, seed=7)
  rows = _read(written['log_files'][0])
  truth = _read(os.path.join(written['truth_dir'], 'day=2026-11-01', 'truth.jsonl.gz'))
  click = np.array([r['click'] for r in rows])
  users = roc_auc_score(click, [t['p_click'] for t in truth])
  segments = roc_auc_score(click, [t['p_click_segment'] for t in truth])
  assert 0.6 < segments < users
  # The same segment, item and context give the same segment truth, whoever the user is.
  keyed = {}
  for r, t in zip(rows, truth):
    key = (r['user_segment'], r['item_id'], r['device'], r['hour'], r['position'])
    keyed.setdefault(key, set()).add(t['p_click_segment'])
  assert all(len(values) == 1 for values in keyed.values())
  assert any(len({r['user_id'] for r in rows if (r['user_segment'], r['item_id'], r['device'],
                                                  r['hour'], r['position']) == key}) > 1
             for key in keyed)
