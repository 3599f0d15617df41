"""The ranking score (`serving.score`): its formula in the exported graph (both signatures),
TFMA's metrics of it against scikit-learn and a direct NDCG, the run summary and report, and
`mtlp rescore` (new weights, nothing else changed) on the shared run's served model."""

import base64
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import yaml
from sklearn.metrics import roc_auc_score

from components import serving_push, serving_requests
from conftest import eval_rows
from pipeline.cli import main
from pipeline.config import (SCORE_COMBINATIONS, SCORE_PRODUCT_FLOOR, ConfigError,
                             PipelineConfig, ScoreConfig)
from pipeline.report import render, score_formula
from pipeline.rescore import RESCORE_FILE, rescore, score_values
from pipeline.run_summary import format_table
from trainer.export import INSTANCES_SIGNATURE, SERVING_SIGNATURE, RankingScore


def _served_dir(e2e_run):
  version = e2e_run['summary']['push']['version']
  return str(e2e_run['root'] / 'serving' / e2e_run['config'].serving.model_name / str(version))


def _eval_rows(e2e_run):
  """The eval split's serialized examples, with each one's user and click label."""
  records, values = eval_rows(e2e_run, ('user_id', 'click'))
  return records, values['user_id'], values['click']


def _predict(model_dir, records):
  loaded = tf.saved_model.load(model_dir)
  outputs = [loaded.signatures[SERVING_SIGNATURE](examples=tf.constant(records[i:i + 512]))
             for i in range(0, len(records), 512)]
  return {name: np.concatenate([o[name].numpy().reshape(-1) for o in outputs])
          for name in outputs[0]}


def _ndcg(predictions, gains, k):
  """NDCG@k of one ranked list (Jarvelin & Kekalainen 2002, log2 discounts), ties broken by
  position as a stable sort does."""
  order = np.argsort(-predictions, kind='stable')
  discounts = 1.0 / np.log2(np.arange(2, k + 2))
  dcg = np.sum(gains[order][:k] * discounts[:min(k, len(gains))])
  ideal = np.sum(np.sort(gains)[::-1][:k] * discounts[:min(k, len(gains))])
  return dcg / ideal


@pytest.mark.parametrize('combine', SCORE_COMBINATIONS)
def test_the_graph_computes_the_formula(combine):
  """RankingScore (the exported graph's op) against the formula in NumPy, task outputs and a
  raw feature as terms, values at and below the product's floor included; a new weight
  assigned to the variable changes the score as the formula says."""
  score = ScoreConfig(weights={'click': 1.5, 'conversion': -0.5, 'item_price': 0.25},
                      label='click', combine=combine)
  rng = np.random.default_rng(3)
  values = {'click': rng.uniform(0, 1, (64, 1)), 'conversion': rng.uniform(0, 0.2, (64, 1)),
            'item_price': rng.uniform(0, 500, (64, 1))}
  values['conversion'][:3] = [[0.0], [SCORE_PRODUCT_FLOOR / 10], [-1.0]]
  module = RankingScore(score)
  got = module({k: tf.constant(v, tf.float32) for k, v in values.items()}).numpy()
  assert got.shape == (64, 1)
  np.testing.assert_allclose(got.reshape(-1), score_values(score, values), rtol=2e-5)
  module.term_weights.assign([1.0, 2.0, 0.0])
  reweighted = ScoreConfig(weights={'click': 1.0, 'conversion': 2.0, 'item_price': 0.0},
                           label='click', combine=combine)
  np.testing.assert_allclose(
      module({k: tf.constant(v, tf.float32) for k, v in values.items()}).numpy().reshape(-1),
      score_values(reweighted, values), rtol=2e-5)


def test_both_signatures_serve_the_score_as_its_formula(e2e_run):
  """The pushed model's score output, through serving_default and predict_instances (a REST
  body), equals the formula on the task outputs it served."""
  config = e2e_run['config']
  records = _eval_rows(e2e_run)[0][:200]
  served = _predict(_served_dir(e2e_run), records)
  assert set(served) == {'click', 'conversion', 'dwell', config.serving.score.name}
  np.testing.assert_allclose(served['score'], score_values(config.serving.score, served),
                             atol=1e-5)
  loaded = tf.saved_model.load(_served_dir(e2e_run))
  signature = loaded.signatures[INSTANCES_SIGNATURE]
  body = json.loads(json.dumps({'instances': serving_requests.instances_from_examples(
      signature, records)}))
  inputs = serving_requests.instances_to_inputs(signature, body['instances'])
  rest = signature(**{k: tf.constant(v) for k, v in inputs.items()})
  np.testing.assert_allclose(rest['score'].numpy().reshape(-1), served['score'], atol=1e-6)


def test_tfma_score_metrics_equal_sklearn_and_a_direct_ndcg(e2e_run):
  """The run summary's score AUC (TFMA) against scikit-learn on the eval split, and its NDCG@k
  per user against NDCG computed here over the users with a click."""
  config, summary = e2e_run['config'], e2e_run['summary']
  score = config.serving.score
  records, users, clicks = _eval_rows(e2e_run)
  predicted = _predict(_served_dir(e2e_run), records)['score']
  metrics = summary['score']['metrics']
  assert metrics['example_count'] == len(records)
  assert metrics['mean_label'] == pytest.approx(clicks.mean(), abs=1e-6)
  # TFMA's AUC integrates over 10,000 thresholds: equal up to that discretisation.
  assert metrics['auc'] == pytest.approx(roc_auc_score(clicks, predicted), abs=2e-3)
  per_user = [_ndcg(predicted[users == u], clicks[users == u].astype(float), score.ndcg_k)
              for u in np.unique(users) if clicks[users == u].max() > 0]
  assert len(per_user) > 50
  # Equal but for the order of tied predictions within a user (the same item in the same
  # context), which TFMA leaves to its sort and to the order Beam groups the examples in.
  assert metrics['ndcg'] == pytest.approx(np.mean(per_user), abs=1e-3)
  # A model that ranks by chance scores lower: the metric sees the ranking.
  shuffled = [_ndcg(np.random.default_rng(i).permutation(predicted[users == u]),
                    clicks[users == u].astype(float), score.ndcg_k)
              for i, u in enumerate(np.unique(users)) if clicks[users == u].max() > 0]
  assert np.mean(shuffled) < metrics['ndcg'] - 0.02


def test_the_summary_table_and_report_show_the_score(e2e_run):
  summary = e2e_run['summary']
  score = summary['score']
  assert score['weights'] == {'click': 1.0, 'conversion': 0.1}
  assert score['label'] == 'click' and score['group_by'] == 'user_id'
  assert score['thresholds']['auc']['passed'] is True
  assert score['vs_served']['auc']['passed'] is None  # nothing was served before this run
  assert {row['slice'] for row in score['slices']} == {
      'device=android', 'device=ios', 'device=web'}
  table = format_table(summary)
  assert any(line.split()[:2] == ['score', 'auc'] for line in table.splitlines()), table
  assert any(line.split()[:2] == ['score', 'ndcg'] for line in table.splitlines()), table
  page = render(summary, {})
  assert '<h2>Ranking score</h2>' in page
  assert score_formula(score) == 'score = 1 x click + 0.1 x conversion'
  assert score_formula(score) in page


def _with_weights(config: PipelineConfig, push_dir, weights) -> PipelineConfig:
  score = json.loads(config.to_json())['serving']['score']
  return config.with_overrides(serving={'push_dir': str(push_dir),
                                        'score': dict(score, weights=weights)})


def test_rescore_changes_the_score_and_nothing_else(e2e_run, tmp_path):
  """New weights in the config, one command: a new version whose task outputs are those of the
  served one, bit for bit, and whose score follows the new weights; serve-checked, labelled
  stable, recorded; the served version is untouched."""
  push_dir = tmp_path / 'serving'
  shutil.copytree(e2e_run['root'] / 'serving', push_dir)
  config = _with_weights(e2e_run['config'], push_dir, {'click': 0.5, 'conversion': 10.0})
  served = e2e_run['summary']['push']['version']
  base = push_dir / config.serving.model_name
  config_file = tmp_path / 'rescore.yaml'
  config_file.write_text(yaml.safe_dump(json.loads(config.to_json())))

  assert main(['rescore', '--config', str(config_file), '--no-push']) == 0
  assert serving_push.list_versions(str(base)) == [served]  # checked only

  result = rescore(config)
  assert result['serve_check']['ok'], result['serve_check']
  assert result['from_version'] == served and result['version'] > served
  assert result['weights_before'] == {'click': 1.0, 'conversion': 0.1}
  assert result['labels'] == {'stable': result['version']}
  assert serving_push.served_version(str(push_dir), config.serving.model_name) == (
      result['version'])
  with open(os.path.join(result['path'], RESCORE_FILE)) as f:
    assert json.load(f)['weights'] == {'click': 0.5, 'conversion': 10.0}

  records = _eval_rows(e2e_run)[0][:300]
  before = _predict(str(base / str(served)), records)
  after = _predict(result['path'], records)
  for task in ('click', 'conversion', 'dwell'):
    np.testing.assert_array_equal(after[task], before[task])
  np.testing.assert_allclose(after['score'], score_values(config.serving.score, after),
                             atol=1e-5)
  assert np.abs(after['score'] - before['score']).max() > 0.1
  # The new version's sample predictions hold the new score (serve-check compared them).
  with open(os.path.join(result['path'], serving_requests.SAMPLE_PREDICTIONS_FILE)) as f:
    sample = json.load(f)
  examples = [base64.b64decode(e) for e in sample['examples']]
  np.testing.assert_allclose(np.array(sample['predictions']['score']).reshape(-1),
                             _predict(result['path'], examples)['score'], atol=1e-5)


def test_rescore_refuses_what_needs_retraining(e2e_run, tmp_path):
  push_dir = tmp_path / 'serving'
  shutil.copytree(e2e_run['root'] / 'serving', push_dir)
  dropped = _with_weights(e2e_run['config'], push_dir, {'click': 1.0})
  with pytest.raises(ConfigError, match='only the weights change without retraining'):
    rescore(dropped)
  no_score = e2e_run['config'].with_overrides(serving={'push_dir': str(push_dir),
                                                        'score': None})
  with pytest.raises(ConfigError, match='serving.score: not set'):
    rescore(no_score)
  nothing_served = _with_weights(e2e_run['config'], tmp_path / 'empty', {'click': 1.0,
                                                                           'conversion': 1.0})
  with pytest.raises(ConfigError, match='no version'):
    rescore(nothing_served)


@pytest.fixture(scope='module')
def renamed_score_run(e2e_run, tmp_path_factory):
  """The shared run's config with its score renamed: the served model has no such output. In a
  copy of the shared run (ingestion and Transform cached) and of its serving directory."""
  from conftest import copy_e2e_run  # pylint: disable=g-import-not-at-top
  from pipeline.local_runner import run_local  # pylint: disable=g-import-not-at-top
  root = copy_e2e_run(e2e_run, tmp_path_factory.mktemp('renamed') / 'copy')
  score = json.loads(e2e_run['config'].to_json())['serving']['score']
  config = e2e_run['config'].with_overrides(
      serving={'push_dir': str(root / 'serving'), 'score': dict(score, name='blend')})
  return config, run_local(config, str(root / 'run'))


def test_an_output_the_served_model_lacks_is_evaluated_not_compared(renamed_score_run, e2e_run):
  """A score (or task) added to a config while an older model is served: TFMA would fail
  looking for it among the served model's predictions. It is evaluated for the new model
  alone, its thresholds apply, and the summary says it was not compared; the tasks still
  are."""
  config, summary = renamed_score_run
  assert summary['baseline']['version'] == e2e_run['summary']['push']['version']
  assert summary['baseline']['missing_outputs'] == ['blend']
  score = summary['score']
  assert score['name'] == 'blend' and score['metrics']['auc'] > 0.55
  assert score['baseline_metrics'] == {}
  assert score['thresholds']['auc']['passed'] is True
  assert score['vs_served']['auc']['passed'] is None
  assert score['vs_served']['auc']['not_compared'] == "the served version has no output 'blend'"
  for task in config.tasks:
    assert summary['tasks'][task.name]['baseline_metrics'], task.name
    assert all(c['passed'] is not None for c in summary['tasks'][task.name]['vs_served'].values())
  assert not any('blend' in reason for reason in summary['not_blessed_because'])
  assert 'the served version has no output' in render(summary, {})
