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
click], and for the impressions' clicked part p_cvr and dwell_given_click = E[dwell | click],
never written into the log, so benchmarks can compute oracle metrics. Conversion and dwell
are written only after a click, as real logs hold them (`post_click_labels='zero'`: on every
impression, 0 without a click).

The ground truth comes twice: for the user (the probabilities the row was drawn with), and for
the user's segment (`*_segment`: the same probabilities averaged over the individual part of a
user of that segment). A model scoring a user it never saw in training knows the segment, the
item and the context, not the individual part: the segment truth is the best it can do, so its
AUC is the ceiling for unseen users.
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
# A user's bias and factors: the segment's plus N(0, sd^2) of their own.
_USER_BIAS_SD = 0.2
_USER_FACTOR_SD = 0.25
_CLICK_AFFINITY = 1.5   # weight of user . item factors in the click logit
_CVR_AFFINITY = 1.2     # weight of user . item conversion factors in the conversion logit


@dataclasses.dataclass(frozen=True)
class World:
  """The latent parameters; fixed by the seed, independent of how many rows are drawn."""
  user_segment: np.ndarray
  segment_bias: np.ndarray
  segment_factors: np.ndarray
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
      segment_bias=segment_bias,
      segment_factors=segment_factors,
      user_bias=segment_bias[segment] + rng.normal(0.0, _USER_BIAS_SD, num_users),
      user_factors=segment_factors[segment] + rng.normal(0.0, _USER_FACTOR_SD,
                                                         (num_users, _FACTOR_DIM)),
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


def _click_logit(world: World, user_bias: np.ndarray, user_factors: np.ndarray,
                 items: np.ndarray, devices: np.ndarray, hours: np.ndarray,
                 positions: np.ndarray) -> np.ndarray:
  affinity = np.sum(user_factors * world.item_factors[items], axis=1)
  return (-1.6 + user_bias + world.item_bias[items] +
          world.category_bias[world.item_category[items]] + _DEVICE_CLICK_EFFECT[devices] +
          0.3 * np.sin(2 * np.pi * (hours - 14) / 24) - 0.12 * (positions - 1) +
          _CLICK_AFFINITY * affinity)


def _cvr_logit(world: World, user_factors: np.ndarray, items: np.ndarray) -> np.ndarray:
  return (-0.3 + _CVR_AFFINITY * np.sum(user_factors * world.item_cvr_factors[items], axis=1) -
          0.9 * (np.log(world.item_price[items]) - 3.0))


def segment_probabilities(world: World, segments: np.ndarray, items: np.ndarray,
                          devices: np.ndarray, hours: np.ndarray, positions: np.ndarray,
                          nodes: int = 12, chunk: int = 65536) -> Dict[str, np.ndarray]:
  """E[p_click] and E[p_click * p_cvr] over the individual part of a user of each row's segment.

  The individual part (b, f) ~ N(0, diag(sb^2, sf^2 I)) enters the click logit as
  b + 1.5 f.v and the conversion logit as 1.2 f.w (v, w: the item's factors), so the two
  shifts are jointly normal with a 2x2 covariance per row; the expectations are taken by
  Gauss-Hermite quadrature on that normal (nodes x nodes points), in chunks of rows.
  """
  x, weight = np.polynomial.hermite_e.hermegauss(nodes)  # for the weight exp(-x^2 / 2)
  grid_1, grid_2 = (g.ravel() for g in np.meshgrid(x, x, indexing='ij'))
  grid_weight = np.outer(weight, weight).ravel() / (2 * np.pi)
  p_click = np.empty(len(items))
  p_conversion = np.empty(len(items))
  for start in range(0, len(items), chunk):
    rows = slice(start, start + chunk)
    s, i = segments[rows], items[rows]
    mean_click = _click_logit(world, world.segment_bias[s], world.segment_factors[s], i,
                              devices[rows], hours[rows], positions[rows])
    mean_cvr = _cvr_logit(world, world.segment_factors[s], i)
    v, w = world.item_factors[i], world.item_cvr_factors[i]
    var_click = _USER_BIAS_SD ** 2 + (_CLICK_AFFINITY * _USER_FACTOR_SD) ** 2 * np.sum(v * v, 1)
    var_cvr = (_CVR_AFFINITY * _USER_FACTOR_SD) ** 2 * np.sum(w * w, 1)
    cov = _CLICK_AFFINITY * _CVR_AFFINITY * _USER_FACTOR_SD ** 2 * np.sum(v * w, 1)
    l11 = np.sqrt(var_click)  # Cholesky factor of [[var_click, cov], [cov, var_cvr]]
    l21 = cov / l11
    l22 = np.sqrt(np.maximum(var_cvr - l21 ** 2, 0.0))
    click = _sigmoid(mean_click[:, None] + l11[:, None] * grid_1[None, :])
    cvr = _sigmoid(mean_cvr[:, None] + l21[:, None] * grid_1[None, :] +
                   l22[:, None] * grid_2[None, :])
    p_click[rows] = click @ grid_weight
    p_conversion[rows] = (click * cvr) @ grid_weight
  return {'p_click': p_click, 'p_conversion': p_conversion}


def draw_day(world: World, rows: int, day: datetime.date, rng: np.random.Generator
             ) -> Dict[str, np.ndarray]:
  """Draws one day of impressions as column arrays (including the ground-truth columns)."""
  users = rng.choice(len(world.user_bias), rows, p=world.user_popularity)
  items = rng.choice(len(world.item_bias), rows, p=world.item_popularity)
  devices = rng.choice(len(DEVICES), rows, p=[0.45, 0.4, 0.15])
  seconds = np.sort(rng.integers(0, 86400, rows))
  hours = seconds // 3600
  positions = rng.integers(1, 11, rows)

  p_click = _sigmoid(_click_logit(world, world.user_bias[users], world.user_factors[users],
                                  items, devices, hours, positions))
  p_cvr = _sigmoid(_cvr_logit(world, world.user_factors[users], items))
  dwell_log_mean = world.item_dwell_log_mean[items] + 0.2 * (devices == 2)
  expected_dwell_given_click = np.exp(dwell_log_mean + _DWELL_SIGMA ** 2 / 2)
  segment = segment_probabilities(world, world.user_segment[users], items, devices, hours,
                                  positions)

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
      'p_click_segment': segment['p_click'], 'p_conversion_segment': segment['p_conversion'],
      'expected_dwell_segment': segment['p_click'] * expected_dwell_given_click,
      # After a click: what a task defined on clicked impressions predicts at best.
      'p_cvr': p_cvr, 'p_cvr_segment': segment['p_conversion'] / segment['p_click'],
      'dwell_given_click': expected_dwell_given_click,
  }


POST_CLICK_LABELS = ('zero', 'absent')


def generate_logs(out_dir: str, rows: int, days: int = 1, seed: int = 7,
                  start_date: str = '2026-11-01', truth_dir: Optional[str] = None,
                  compress: bool = True, post_click_labels: str = 'absent') -> Dict[str, object]:
  """Writes `rows` impressions spread over `days` daily partitions; returns what was written.

  `post_click_labels`: `absent` writes `conversion` and `dwell_seconds` only on clicked
  impressions, as real logs have them (the fields are left out of the others), for tasks
  defined where click == 1 (tasks[].space); `zero` on every impression (0 without a click)."""
  if rows < 1 or days < 1:
    raise ValueError('rows and days must be at least 1')
  if post_click_labels not in POST_CLICK_LABELS:
    raise ValueError(f'post_click_labels must be one of {POST_CLICK_LABELS}, got '
                     f'{post_click_labels!r}')
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
        clicked = bool(cols['click'][i])
        record = {
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
        }
        if clicked or post_click_labels == 'zero':
          record['conversion'] = int(cols['conversion'][i])
          record['dwell_seconds'] = float(cols['dwell'][i])
        log.write(json.dumps(record) + '\n')
        truth.write(json.dumps({
            'impression_id': impression_id,
            'p_click': round(float(cols['p_click'][i]), 6),
            'p_conversion': round(float(cols['p_conversion'][i]), 6),
            'expected_dwell': round(float(cols['expected_dwell'][i]), 4),
            'p_click_segment': round(float(cols['p_click_segment'][i]), 6),
            'p_conversion_segment': round(float(cols['p_conversion_segment'][i]), 6),
            'expected_dwell_segment': round(float(cols['expected_dwell_segment'][i]), 4),
            'p_cvr': round(float(cols['p_cvr'][i]), 6),
            'p_cvr_segment': round(float(cols['p_cvr_segment'][i]), 6),
            'dwell_given_click': round(float(cols['dwell_given_click'][i]), 4),
        }) + '\n')
    files.append(log_path)
  return {'rows': rows, 'days': days, 'log_files': files, 'truth_dir': truth_dir}
