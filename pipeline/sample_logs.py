"""Seeded sample impression logs drawn from a known latent model, with a separate ground truth.

Layout written by `generate_logs(out_dir, ...)`:

    <out_dir>/day=YYYY-MM-DD/impressions.jsonl.gz     the log: one JSON object per impression
    <truth_dir>/day=YYYY-MM-DD/truth.jsonl.gz         per impression_id: true probabilities

The latent model: users belong to segments (logged as `user_segment`) and take their bias and
4-d taste factors from the segment plus a small individual part, so what a model learns about a
segment carries over to users it has never seen (the eval split holds other users); items have
bias terms and factors and belong to categories; the context (device, hour, position) shifts the
click logit. A click happens with
p_click = sigmoid(click logit); a conversion only after a click, with p_cvr from the user, item
and price; dwell seconds only after a click, log-normal around a per-item mean. The ground-truth
file holds p_click, p_conversion = p_click * p_cvr and expected_dwell = p_click * E[dwell |
click], never written into the log, so benchmarks can compute oracle metrics.
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import json
import os
from typing import Dict, Optional

import numpy as np

DEVICES = ('ios', 'android', 'web')
_DEVICE_CLICK_EFFECT = np.array([0.25, 0.0, -0.35])
_FACTOR_DIM = 4
_DWELL_SIGMA = 0.5


@dataclasses.dataclass(frozen=True)
class World:
  """The latent parameters; fixed by the seed, independent of how many rows are drawn."""
  user_segment: np.ndarray
  user_bias: np.ndarray
  user_factors: np.ndarray
  user_popularity: np.ndarray
  item_bias: np.ndarray
  item_factors: np.ndarray
  item_cvr_factors: np.ndarray
  item_popularity: np.ndarray
  item_category: np.ndarray
  item_price: np.ndarray
  item_dwell_log_mean: np.ndarray
  category_bias: np.ndarray


def make_world(seed: int, num_users: int = 2000, num_items: int = 500,
               num_categories: int = 12, num_segments: int = 8) -> World:
  rng = np.random.default_rng(seed)
  segment = rng.integers(0, num_segments, num_users)
  segment_bias = rng.normal(0.0, 0.5, num_segments)
  segment_factors = rng.normal(0.0, 0.7, (num_segments, _FACTOR_DIM))

  def popularity(n, exponent):  # Zipf-like: some users and items are seen much more often
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(weights / weights.sum())

  return World(
      user_segment=segment,
      user_bias=segment_bias[segment] + rng.normal(0.0, 0.2, num_users),
      user_factors=segment_factors[segment] + rng.normal(0.0, 0.25, (num_users, _FACTOR_DIM)),
      user_popularity=popularity(num_users, 0.5),
      item_bias=rng.normal(0.0, 0.5, num_items),
      item_factors=rng.normal(0.0, 0.6, (num_items, _FACTOR_DIM)),
      item_cvr_factors=rng.normal(0.0, 0.6, (num_items, _FACTOR_DIM)),
      item_popularity=popularity(num_items, 0.8),
      item_category=rng.integers(0, num_categories, num_items),
      item_price=np.round(rng.lognormal(3.0, 0.8, num_items), 2),
      item_dwell_log_mean=rng.normal(3.2, 0.35, num_items),
      category_bias=rng.normal(0.0, 0.4, num_categories),
  )


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def draw_day(world: World, rows: int, day: datetime.date, rng: np.random.Generator
             ) -> Dict[str, np.ndarray]:
  """Draws one day of impressions as column arrays (including the ground-truth columns)."""
  users = rng.choice(len(world.user_bias), rows, p=world.user_popularity)
  items = rng.choice(len(world.item_bias), rows, p=world.item_popularity)
  devices = rng.choice(len(DEVICES), rows, p=[0.45, 0.4, 0.15])
  seconds = np.sort(rng.integers(0, 86400, rows))
  hours = seconds // 3600
  positions = rng.integers(1, 11, rows)

  affinity = np.sum(world.user_factors[users] * world.item_factors[items], axis=1)
  click_logit = (-1.6 + world.user_bias[users] + world.item_bias[items] +
                 world.category_bias[world.item_category[items]] +
                 _DEVICE_CLICK_EFFECT[devices] + 0.3 * np.sin(2 * np.pi * (hours - 14) / 24) -
                 0.12 * (positions - 1) + 1.5 * affinity)
  p_click = _sigmoid(click_logit)
  cvr_logit = (-0.3 + 1.2 * np.sum(world.user_factors[users] * world.item_cvr_factors[items],
                                   axis=1) - 0.9 * (np.log(world.item_price[items]) - 3.0))
  p_cvr = _sigmoid(cvr_logit)
  dwell_log_mean = world.item_dwell_log_mean[items] + 0.2 * (devices == 2)
  expected_dwell_given_click = np.exp(dwell_log_mean + _DWELL_SIGMA ** 2 / 2)

  click = rng.random(rows) < p_click
  conversion = click & (rng.random(rows) < p_cvr)
  dwell = np.where(click, rng.lognormal(dwell_log_mean, _DWELL_SIGMA), 0.0)
  day_start = datetime.datetime(day.year, day.month, day.day,
                                tzinfo=datetime.timezone.utc).timestamp()
  return {
      'ts': (day_start + seconds).astype(np.int64),
      'user': users, 'item': items, 'device': devices, 'hour': hours, 'position': positions,
      'click': click.astype(np.int64), 'conversion': conversion.astype(np.int64),
      'dwell': np.round(dwell, 2),
      'p_click': p_click, 'p_conversion': p_click * p_cvr,
      'expected_dwell': p_click * expected_dwell_given_click,
  }


def generate_logs(out_dir: str, rows: int, days: int = 1, seed: int = 7,
                  start_date: str = '2026-11-01', truth_dir: Optional[str] = None,
                  compress: bool = True) -> Dict[str, object]:
  """Writes `rows` impressions spread over `days` daily partitions; returns what was written."""
  if rows < 1 or days < 1:
    raise ValueError('rows and days must be at least 1')
  truth_dir = truth_dir or os.path.join(os.path.dirname(os.path.abspath(out_dir)),
                                        os.path.basename(os.path.abspath(out_dir)) + '_truth')
  world = make_world(seed)
  rng = np.random.default_rng(seed + 1)
  first = datetime.date.fromisoformat(start_date)
  suffix = '.jsonl.gz' if compress else '.jsonl'
  opener = gzip.open if compress else open
  files = []
  for d in range(days):
    day = first + datetime.timedelta(days=d)
    day_rows = rows // days + (1 if d < rows % days else 0)
    cols = draw_day(world, day_rows, day, rng)
    partition = f'day={day.isoformat()}'
    log_path = os.path.join(out_dir, partition, 'impressions' + suffix)
    truth_path = os.path.join(truth_dir, partition, 'truth.jsonl.gz')
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    os.makedirs(os.path.dirname(truth_path), exist_ok=True)
    with opener(log_path, 'wt') as log, gzip.open(truth_path, 'wt') as truth:
      for i in range(day_rows):
        impression_id = f'{day.strftime("%Y%m%d")}-{i:07d}'
        item = int(cols['item'][i])
        log.write(json.dumps({
            'impression_id': impression_id,
            'ts': int(cols['ts'][i]),
            'user_id': f'u{int(cols["user"][i]):05d}',
            'user_segment': f's{int(world.user_segment[cols["user"][i]])}',
            'item_id': f'i{item:05d}',
            'item_category': f'c{int(world.item_category[item]):02d}',
            'item_price': float(world.item_price[item]),
            'device': DEVICES[int(cols['device'][i])],
            'hour': int(cols['hour'][i]),
            'position': int(cols['position'][i]),
            'click': int(cols['click'][i]),
            'conversion': int(cols['conversion'][i]),
            'dwell_seconds': float(cols['dwell'][i]),
        }) + '\n')
        truth.write(json.dumps({
            'impression_id': impression_id,
            'p_click': round(float(cols['p_click'][i]), 6),
            'p_conversion': round(float(cols['p_conversion'][i]), 6),
            'expected_dwell': round(float(cols['expected_dwell'][i]), 4),
        }) + '\n')
    files.append(log_path)
  return {'rows': rows, 'days': days, 'log_files': files, 'truth_dir': truth_dir}
