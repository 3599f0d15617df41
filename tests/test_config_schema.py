"""The config's JSON Schema (`mtlp config-schema`): what an editor checks is what the validator
checks, because both read each field's rule (pipeline/config_rules.py)."""

import copy
import dataclasses
import io
import json
import os
from contextlib import redirect_stdout

import jsonschema
import pytest
import yaml

from conftest import REPO, SAMPLE_CONFIG
from pipeline import config as config_module
from pipeline.cli import main
from pipeline.config import ConfigError, json_schema, load_config, parse_config
from pipeline.config_rules import check_documented
from test_config import MISTAKES

SHIPPED = os.path.join(REPO, 'schemas', 'config.schema.json')
CONFIGS = [SAMPLE_CONFIG, os.path.join(REPO, 'benchmarks', 'configs', 'adult.yaml')]

# Mistakes that relate one value to another, which JSON Schema cannot express (it compares a
# value with constants only): the validator alone refuses them.
BETWEEN_VALUES = (
    'is a task label',                   # data.split_key against the tasks' labels
    'is a numeric feature',              # data.split_key, evaluation.slices against features
    'is above',                          # a min (label_min) against its max (label_max)
    'is already used by',                # a label against the features and other labels
    'is listed twice',                   # a name against the other entries' names
    'is neither loss (the total) nor a task',  # early_stopping.monitor against the tasks
    'is not a feature',                  # evaluation.slices against the features
    'is not one of the tasks',           # inputs_from, esmm and score terms against the tasks
    'is not one of the binary tasks',    # serving.score.label against the tasks
    'is already a model output',         # serving.score.name against the tasks
    'is not a feature of the examples',  # serving.score.group_by against the features
    'is not a value of binary label',    # a task space's condition against the tasks' types
    'is neither a binary task label',    # a task space's condition against tasks and features
    "is the task's own label",           # a task space's condition against its task
    'is a label, a categorical feature',  # tasks[].weight against the other fields
    'that ingestion writes for its space',  # a task's weight column against the fields
    'the esmm click task is trained',    # a task space against model.esmm_click_task
)


@pytest.fixture(scope='module')
def validator():
  schema = json_schema()
  jsonschema.Draft202012Validator.check_schema(schema)
  return jsonschema.Draft202012Validator(schema)


def _raw(path=SAMPLE_CONFIG):
  with open(path) as f:
    return yaml.safe_load(f)


def test_the_shipped_schema_is_the_command_output():
  """schemas/config.schema.json is what `mtlp config-schema` prints (regenerate it with
  `mtlp config-schema --output schemas/config.schema.json`)."""
  out = io.StringIO()
  with redirect_stdout(out):
    assert main(['config-schema']) == 0
  with open(SHIPPED) as f:
    assert f.read() == out.getvalue()
  assert json.loads(out.getvalue()) == json_schema()


def test_every_key_has_a_rule_a_description_and_its_default(validator):
  assert not check_documented(config_module.PipelineConfig)
  data = validator.schema['properties']['data']
  assert data['properties']['eval_fraction']['default'] == 0.2
  assert data['required'] == ['input_base']
  feature = validator.schema['properties']['features']['items']
  assert feature['properties']['scaling']['enum'] == ['z_score', 'log', 'none']
  assert feature['properties']['scaling']['description']
  training = validator.schema['properties']['training']['anyOf'][0]
  assert training['properties']['loss_weights_optimizer']['default']['learning_rate'] == 0.05
  assert training['properties']['batch_size'] == {
      'type': 'integer', 'minimum': 1, 'description': 'Per-replica batch size.', 'default': 256}


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_the_shipped_configs_and_their_round_trip_pass(validator, path):
  raw = _raw(path)
  validator.validate(raw)
  # The JSON every component receives (to_json) spells out every key, nulls included.
  validator.validate(json.loads(load_config(path).to_json()))


@pytest.mark.parametrize('mutate, expected', MISTAKES)
def test_the_schema_refuses_what_the_validator_refuses(validator, mutate, expected):
  raw = copy.deepcopy(_raw())
  mutate(raw)
  with pytest.raises(ConfigError):
    parse_config(raw)
  if any(kind in expected for kind in BETWEEN_VALUES):
    assert validator.is_valid(raw), 'the schema now catches this: take it off BETWEEN_VALUES'
  else:
    errors = [e.json_path for e in validator.iter_errors(raw)]
    assert errors, f'the schema accepts a config the validator refuses: {expected}'


# Values tried in every field: types, bounds, the edges of ranges, names, percentages, lists.
VALUES = [None, True, False, 0, 1, 2, 3, -1, 0.5, 0.07, 0.125, 2.5, 100, 20000, 1e6,
          float('inf'), '', 'x', 'A b', 'auto', 'device', '2%', '150%', 'two%', 'gs://b/x',
          '--flag=1', '8Gi', 'adam', 'binary', 'esmm', [], [1], [64, 32], ['device'],
          [['device', 'hour']], [['device', 'device']], ['DATASET_LOW_NUM_EXAMPLES'], {},
          {'min': 0.5}, {'auc': {'min': 0.5}}, {'auc': 0.02}, {'patience': 0}]


def _entries(raw):
  """(description, the mapping holding the fields, the dataclass) for every kind of entry of
  the sample config: each section, a categorical and a numeric feature, a binary and a
  regression task, the optimizers, a threshold, early stopping and the ranking score."""
  features = {f['type']: f for f in raw['features']}
  tasks = {t['type']: t for t in raw['tasks']}
  tasks['binary'].setdefault('optimizer', {})
  tasks['binary']['thresholds'].setdefault('auc', {'min': 0.5})
  raw['training']['early_stopping'] = {'patience': 2}
  raw['training'].setdefault('loss_weights_optimizer', {})
  raw['serving']['score'] = {'weights': {'click': 1.0}, 'label': 'click', 'group_by': 'user_id',
                             'thresholds': {'ndcg': {'min': 0.1}}}
  yield 'top level', raw, config_module.PipelineConfig
  for section in ('data', 'model', 'training', 'serving', 'evaluation', 'beam', 'kubeflow'):
    raw.setdefault(section, {})
    field = next(f for f in dataclasses.fields(config_module.PipelineConfig)
                 if f.name == section)
    yield section, raw[section], field.metadata['rule'].cls
  yield 'categorical feature', features['categorical'], config_module.FeatureConfig
  yield 'numeric feature', features['numeric'], config_module.FeatureConfig
  yield 'binary task', tasks['binary'], config_module.TaskConfig
  yield 'regression task', tasks['regression'], config_module.TaskConfig
  yield 'task optimizer', tasks['binary']['optimizer'], config_module.OptimizerConfig
  yield 'trunk optimizer', raw['training']['trunk_optimizer'], config_module.OptimizerConfig
  yield ('loss weights optimizer', raw['training']['loss_weights_optimizer'],
         config_module.OptimizerConfig)
  yield 'threshold', tasks['binary']['thresholds']['auc'], config_module.Threshold
  yield 'score', raw['serving']['score'], config_module.ScoreConfig
  yield 'early stopping', raw['training']['early_stopping'], config_module.EarlyStoppingConfig


def test_the_schema_and_the_validator_agree_on_every_value_of_every_key(validator):
  """Every key of every kind of entry set to each of VALUES: the schema accepts exactly what
  the validator accepts, except mistakes between values."""
  base = _raw()
  disagreements, tried = [], 0
  for what, entry, cls in _entries(copy.deepcopy(base)):
    for f in dataclasses.fields(cls):
      for value in VALUES:
        raw = copy.deepcopy(base)
        target = {w: e for w, e, _ in _entries(raw)}[what]
        target[f.name] = copy.deepcopy(value)
        try:
          parse_config(raw)
          accepted, message = True, ''
        except ConfigError as e:
          accepted, message = False, str(e)
        if not accepted and any(kind in message for kind in BETWEEN_VALUES):
          continue
        tried += 1
        if validator.is_valid(raw) != accepted:
          disagreements.append(f'{what}.{f.name} = {value!r}: validator '
                               f'{"accepts" if accepted else "refuses (" + message + ")"}, '
                               f'schema {"refuses" if accepted else "accepts"}')
  assert tried > 3000
  assert not disagreements, '\n'.join(disagreements)
