"""`mtlp rescore`: a served model with new ranking-score weights, without retraining.

The score's weights are a variable of the SavedModel (`trainer.export.RankingScore`). Rescoring
loads a pushed version, checks that it combines the same terms the same way as the config's
`serving.score`, assigns the config's weights, and saves it again: the task outputs, the
transform graph and its assets are the same; only the score changes. The new SavedModel gets
the old version's warmup requests, and sample predictions whose score is recomputed here from
the recorded task outputs with `score_values` (NumPy, not the graph), so that the serve-check
run on it before the push compares the graph's new score with the formula. It is then pushed
as a new version (labels and retention as the Pusher does), with `assets.extra/rescore.json`
saying where it came from.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from typing import Any, Dict, Mapping, Optional

import numpy as np
import tensorflow as tf

from components import serving_push, serving_requests
from pipeline.config import SCORE_PRODUCT_FLOOR, ConfigError, PipelineConfig, ScoreConfig
from pipeline.serve_check import serve_check

RESCORE_FILE = 'assets.extra/rescore.json'


def score_values(score: ScoreConfig, values: Mapping[str, Any]) -> np.ndarray:
  """The score's formula in float64 on each term's values ([n] or [n, 1]) -> [n]."""
  terms = {n: np.asarray(values[n], dtype=np.float64).reshape(-1) for n in score.weights}
  if score.combine == 'weighted_product':
    return np.exp(sum(w * np.log(np.maximum(terms[n], SCORE_PRODUCT_FLOOR))
                      for n, w in score.weights.items()))
  return sum(w * terms[n] for n, w in score.weights.items())


def example_values(serialized: bytes, names) -> Dict[str, float]:
  """The numeric values of some features of a serialized tf.Example (0 when absent, as the
  serving signature's parse spec defaults them)."""
  example = tf.train.Example.FromString(serialized)
  values = {}
  for name in names:
    feature = example.features.feature.get(name)
    listed = list(feature.float_list.value or feature.int64_list.value) if feature else []
    values[name] = float(listed[0]) if listed else 0.0
  return values


def _served_weights(loaded: Any, version_dir: str, score: ScoreConfig) -> Dict[str, float]:
  """The weights of the loaded model's score, which must combine the config's terms the
  config's way."""
  module = getattr(loaded, 'ranking_score', None)
  if module is None:
    raise ConfigError(f'serving.score: {version_dir} was exported without a ranking score; '
                      'train a model with serving.score set first')
  terms = [t.decode() for t in module.term_names.numpy()]
  combine = module.combine.numpy().decode()
  if terms != list(score.weights) or combine != score.combine:
    raise ConfigError(
        f'serving.score: {version_dir} computes {combine} of {", ".join(terms)}, the config '
        f'{score.combine} of {", ".join(score.weights)}: only the weights change without '
        'retraining (a new term or combination needs a pipeline run)')
  # float32 in the graph: the shortest decimal that is that float32 (0.1, not 0.10000000149).
  return dict(zip(terms, (float(str(w)) for w in module.term_weights.numpy())))


def _rescored_samples(sample: Dict[str, Any], config: PipelineConfig) -> Dict[str, Any]:
  score = config.serving.score
  examples = [base64.b64decode(e) for e in sample['examples']]
  features = [n for n in score.weights if n not in sample['predictions']]
  parsed = [example_values(e, features) for e in examples]
  values = {n: [row[n] for row in parsed] for n in features}
  values.update({n: sample['predictions'][n] for n in score.weights if n not in features})
  predictions = dict(sample['predictions'])
  predictions[score.name] = [[float(v)] for v in score_values(score, values)]
  return {**sample, 'predictions': predictions}


def rescore(config: PipelineConfig, version: Optional[int] = None, push: bool = True,
            tolerance: float = 1e-5) -> Dict[str, Any]:
  """Re-exports `version` (default: the served one) of the config's model with the config's
  score weights, serve-checks it, and pushes it as a new version unless `push` is False.
  Returns {'from_version', 'weights_before', 'weights', 'serve_check', and with a push
  'version', 'path', 'labels', 'deleted_versions'}."""
  score = config.serving.score
  if score is None:
    raise ConfigError('serving.score: not set; there is no score to re-export')
  serving = config.serving
  base = os.path.join(serving.push_dir, serving.model_name)
  version = version if version is not None else serving_push.served_version(
      serving.push_dir, serving.model_name)
  if version is None or version not in serving_push.list_versions(base):
    raise ConfigError(f'serving.push_dir: no version {version if version is not None else ""}'
                      f' to rescore under {base}')
  source = os.path.join(base, str(version))
  loaded = tf.saved_model.load(source, tags=['serve'])
  before = _served_weights(loaded, source, score)
  loaded.ranking_score.term_weights.assign([float(w) for w in score.weights.values()])
  staging_root = tempfile.mkdtemp(prefix='rescore-')
  try:
    # serve_check reads the model name from the parent directory, as in a push directory.
    staged = os.path.join(staging_root, serving.model_name, 'rescored')
    tf.saved_model.save(loaded, staged, signatures=dict(loaded.signatures))
    with tf.io.gfile.GFile(os.path.join(source, serving_requests.SAMPLE_PREDICTIONS_FILE)) as f:
      sample = json.load(f)
    tf.io.gfile.makedirs(os.path.join(staged, 'assets.extra'))
    tf.io.gfile.copy(os.path.join(source, serving_requests.WARMUP_FILE),
                     os.path.join(staged, serving_requests.WARMUP_FILE))
    with tf.io.gfile.GFile(os.path.join(staged, serving_requests.SAMPLE_PREDICTIONS_FILE),
                           'w') as f:
      json.dump(_rescored_samples(sample, config), f)
    record = {'from_version': version, 'weights_before': before,
              'weights': dict(score.weights), 'combine': score.combine}
    with tf.io.gfile.GFile(os.path.join(staged, RESCORE_FILE), 'w') as f:
      json.dump(record, f, indent=2, sort_keys=True)
    record['serve_check'] = serve_check(staged, tolerance=tolerance)
    if not record['serve_check']['ok'] or not push:
      return record
    result = serving_push.push_version(staged, serving.push_dir, serving.model_name,
                                       keep_versions=serving.keep_versions,
                                       canary=serving.canary)
    record.update(version=result.version, path=result.path, labels=result.labels,
                  deleted_versions=result.deleted_versions)
    return record
  finally:
    shutil.rmtree(staging_root, ignore_errors=True)
