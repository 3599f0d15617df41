"""The pipeline's config: one YAML file lists the features, the tasks and how to train and serve.

The file is parsed and validated once, here. Every error names the key that is wrong and, where
the key takes one of a fixed set of values, the values allowed. Components receive the parsed
config as JSON (`PipelineConfig.to_json`) and rebuild it with `PipelineConfig.from_json`;
nothing else re-derives the feature or task list.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml
from tensorflow_metadata.proto.v0 import anomalies_pb2

FEATURE_TYPES = ('categorical', 'numeric')
NUMERIC_SCALINGS = ('z_score', 'log', 'none')
TASK_TYPES = ('binary', 'regression')
MODEL_TYPES = ('shared_bottom', 'mmoe', 'esmm', 'ple')
BEAM_RUNNERS = ('direct', 'dataflow', 'flink', 'spark')
DIRECT_RUNNING_MODES = ('in_memory', 'multi_threading', 'multi_processing')
ENVIRONMENT_TYPES = ('DOCKER', 'EXTERNAL', 'PROCESS', 'LOOPBACK')
LOSS_WEIGHTINGS = ('uncertainty', 'fixed', 'equal', 'dwa', 'gradnorm')
GRADIENT_SURGERIES = ('none', 'pcgrad')
AUTO = 'auto'  # features[].embedding_dim: a width from the embedding's row count
OPTIMIZERS = ('adam', 'sgd', 'adagrad')
LR_SCHEDULES = ('constant', 'cosine', 'exponential')
# Metric names are TFMA's; these are the ones each task type computes and may be thresholded on.
TASK_METRICS = {
    'binary': ('auc', 'binary_crossentropy', 'calibration', 'mean_prediction', 'mean_label'),
    'regression': ('root_mean_squared_error', 'mean_absolute_error', 'mean_prediction',
                   'mean_label'),
}
# TFDV anomaly kinds that data.accept_anomalies may list.
ANOMALY_KINDS = tuple(name for name in anomalies_pb2.AnomalyInfo.Type.keys()
                      if name != 'UNKNOWN_TYPE')
# Metrics a new model may be compared on against the served one, and which way is better.
METRIC_DIRECTIONS = {
    'auc': 'higher',
    'binary_crossentropy': 'lower',
    'root_mean_squared_error': 'lower',
    'mean_absolute_error': 'lower',
}
DEFAULT_MAX_REGRESSION = {
    'binary': {'auc': 0.01},
    'regression': {'root_mean_squared_error': '2%'},
}


# The train/eval split hashes the split key into this many buckets (components/log_example_gen.py).
SPLIT_BUCKETS = 100
# A numeric feature's quantile bucket is fed to the network as `<feature>__bucket`.
BUCKET_SUFFIX = '__bucket'
PIECE_SUFFIX = '__piece'  # <feature>__piece<t>: bin t of a numeric feature's piecewise_linear


class ConfigError(ValueError):
  """A config that cannot be used; the message names the key."""


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  name: str
  type: str
  # categorical
  top_k: Optional[int] = None
  frequency_threshold: int = 0
  oov_buckets: int = 1
  # The embedding width: a number, or 'auto' for min(64, round(1.6 * rows ** 0.56)) from the
  # embedding's row count (vocabulary plus OOV buckets, or buckets), after fast.ai's rule.
  embedding_dim: Union[int, str] = 8
  # numeric
  scaling: str = 'z_score'
  # numeric: also a learned embedding (embedding_dim) of the value's quantile bucket among this
  # many (quantiles of the train split), beside the scaled value; 0: the scaled value alone
  buckets: int = 0
  # numeric: also a periodic embedding of the scaled value (Gorishniy et al. 2022, PLR):
  # ReLU(Dense(embedding_dim)([sin(2 pi c x), cos(2 pi c x)])) with this many trainable
  # frequencies c, initialised from N(0, periodic_scale^2); 0: none
  periodic: int = 0
  periodic_scale: float = 0.1
  # numeric: also a piecewise-linear encoding of the value over this many quantile bins
  # (Gorishniy et al. 2022, PLE: bin t gives 0 below it, 1 above it, the position inside it),
  # then ReLU(Dense(embedding_dim)); 0: none
  piecewise_linear: int = 0
  # numeric: ingestion quarantines a value below min or above max (out_of_range:<name>)
  min: Optional[float] = None
  max: Optional[float] = None
  # Validation against the previous span's statistics (drift) and of the train split against
  # the eval split (skew): L-infinity distance for categorical features, Jensen-Shannon
  # divergence for numeric ones; above the threshold the run stops before Transform.
  max_drift: Optional[float] = None
  max_skew: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Threshold:
  min: Optional[float] = None
  max: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The optimizer of one parameter group (the trunk, a task's head, or the loss weights)."""
  type: str = 'adam'
  learning_rate: float = 0.003
  schedule: str = 'constant'  # constant | cosine | exponential, over training.train_steps
  decay_rate: float = 0.1     # exponential: the learning rate's factor at the last step
  # Decoupled weight decay (Loshchilov & Hutter; AdamW for adam): each step every kernel and
  # embedding table of the group shrinks by learning_rate * weight_decay; biases are not decayed.
  weight_decay: float = 0.0


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  name: str
  label: str
  type: str
  head_units: Sequence[int] = (32,)
  optimizer: OptimizerConfig = OptimizerConfig()
  thresholds: Mapping[str, Threshold] = dataclasses.field(default_factory=dict)
  # Other tasks whose estimates this task's head takes as inputs, under stop_gradient.
  inputs_from: Sequence[str] = ()
  loss_weight: float = 1.0  # used by training.loss_weighting: fixed
  # Against the served model: how much worse each metric may get, in the metric's own units
  # (a number) or relative to the served value (a string such as '2%'). Empty: the defaults,
  # DEFAULT_MAX_REGRESSION[type].
  max_regression: Mapping[str, Union[float, str]] = dataclasses.field(default_factory=dict)
  # regression: ingestion quarantines a label below label_min or above label_max
  # (out_of_range:<label>); a binary label must be 0 or 1 anyway.
  label_min: Optional[float] = None
  label_max: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class DataConfig:
  input_base: str
  file_pattern: str = '*/*.jsonl*'
  split_key: str = 'user_id'
  eval_fraction: float = 0.2
  max_rejected_fraction: float = 0.01
  schema: Optional[str] = None  # curated schema (pbtxt); SchemaGen infers one when absent
  window_spans: int = 1  # with {SPAN} or {YYYY}-{MM}-{DD} in file_pattern: how many recent spans
  # Categorical values (and the split key) longer than this in UTF-8 bytes are quarantined
  # (string_too_long:<name>).
  max_string_bytes: int = 1024
  # Anomaly kinds (TFDV names, e.g. COMPARATOR_L_INFTY_HIGH) reported but not stopping the run.
  accept_anomalies: Sequence[str] = ()


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  type: str = 'shared_bottom'
  trunk_units: Sequence[int] = (128, 64)  # shared_bottom, esmm: shared dense layers
  dropout: float = 0.0                    # shared_bottom, esmm: after each trunk layer
  embedding_dropout: float = 0.0          # every architecture: on each embedding's output
  head_dropout: float = 0.0               # every architecture: after each task-head layer
  cross_layers: int = 0                   # every architecture: DCN-V2 cross layers on the input
  num_experts: int = 4                    # mmoe
  expert_units: Sequence[int] = (64,)     # mmoe: each expert's dense layers; ple: one level each
  num_shared_experts: int = 2             # ple: shared experts per level
  num_task_experts: int = 1               # ple: each task's own experts per level
  esmm_click_task: Optional[str] = None   # esmm: the task playing the click (CTR) role
  esmm_conversion_task: Optional[str] = None  # esmm: the conversion task, trained as CTCVR


@dataclasses.dataclass(frozen=True)
class EarlyStoppingConfig:
  """Watch a validation loss each epoch; stop after `patience` epochs without an improvement
  of more than `min_delta`; export the best epoch's weights."""
  monitor: str = 'loss'   # 'loss' (the total) or a task name (that task's loss)
  patience: int = 2       # epochs without improvement before stopping
  min_delta: float = 0.0  # smaller improvements do not count


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  train_steps: int = 1000
  eval_steps: int = 50
  batch_size: int = 256
  trunk_optimizer: OptimizerConfig = OptimizerConfig()
  loss_weights_optimizer: OptimizerConfig = OptimizerConfig(learning_rate=0.05)
  loss_weighting: str = 'uncertainty'
  # uncertainty: a floor on each s = log sigma^2, keeping the loss bounded below (a task whose
  # loss goes to 0 would otherwise drive s, and the total loss, to minus infinity).
  min_log_variance: Optional[float] = None
  # On the shared trunk's per-task gradients, with any loss_weighting: none | pcgrad.
  gradient_surgery: str = 'none'
  dwa_temperature: float = 2.0  # dwa: T in K softmax(L(t-1) / L(t-2) / T)
  gradnorm_alpha: float = 1.5   # gradnorm: the asymmetry alpha
  seed: int = 42
  # Distributed training (MultiWorkerMirroredStrategy when more than 1): locally the Trainer
  # starts this many worker processes on 127.0.0.1; with kubeflow.trainer trainjob or tfjob,
  # this many pods.
  workers: int = 1
  # How long a worker waits for every other worker to be reachable before failing.
  worker_start_timeout_seconds: int = 300
  # Local workers: how many times the group is restarted, resuming from the last backup, after
  # a worker is killed or loses a peer; any other worker error fails the Trainer at once.
  worker_restarts: int = 2
  # None: train every step and export the last epoch.
  early_stopping: Optional[EarlyStoppingConfig] = None


@dataclasses.dataclass(frozen=True)
class ServingConfig:
  model_name: str = 'mtl_model'
  push_dir: str = 'serving'
  compare_with_served: bool = True  # bless only if no task is worse than the served model
  keep_versions: int = 5            # versions kept in the push directory (older are deleted)
  canary: bool = False              # label the newest version canary, the previous stable
  warmup_examples: int = 16         # eval examples written as TF Serving warmup requests


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
  # Every task's metrics are also computed per value of each of these categorical features, or
  # per pair of values of two features (a cross, given as a list of two names).
  slices: Sequence[Tuple[str, ...]] = ()
  # With a served model: a slice with at least this many eval examples must not regress on any
  # metric with a max_regression by more than the task allows overall. None: slices are
  # reported, never gated.
  slice_gate_min_examples: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class BeamConfig:
  """How Beam-based components (ExampleGen, StatisticsGen, Transform, Evaluator) execute."""
  runner: str = 'direct'
  direct_running_mode: str = 'in_memory'  # direct: in_memory | multi_threading | multi_processing
  direct_num_workers: int = 1              # direct: 0 means one per core
  project: Optional[str] = None            # dataflow
  region: Optional[str] = None             # dataflow
  temp_location: Optional[str] = None      # dataflow: gs://...
  job_endpoint: Optional[str] = None       # flink, spark: the portable job server, host:port
  environment_type: str = 'DOCKER'         # flink, spark: DOCKER (the pipeline image) | EXTERNAL
  environment_config: Optional[str] = None  # flink, spark: EXTERNAL worker pool address
  extra_args: Sequence[str] = ()


@dataclasses.dataclass(frozen=True)
class KubeflowConfig:
  image: str = 'mtl-pipeline:latest'       # the pipeline image (deploy/Dockerfile)
  pipeline_root: str = 'gs://CHANGE-ME/mtl-pipeline'
  experiment: str = 'mtl-pipeline'
  # Where steps keep what outlives a run and is not an artifact (each span's validated
  # statistics, for the drift check), opened with tf.io.gfile: gs:// or a mounted path.
  # Default: <pipeline_root>/state, which needs a gs:// pipeline root.
  state_dir: Optional[str] = None
  # How the Trainer step trains: `pod` (in its own pod, with training.workers processes),
  # `trainjob` (a Kubeflow Trainer v2 TrainJob of training.workers nodes on the runtime
  # `training_runtime`; each node derives its TF_CONFIG from its JobSet pod) or `tfjob` (a
  # Kubeflow Training Operator v1 TFJob of training.workers pods; the operator sets TF_CONFIG).
  # docs/distributed.md says which to choose.
  trainer: str = 'pod'
  # trainjob and tfjob: the job's namespace (default: the step's own), and each worker pod's
  # CPU and memory (request and limit) and nvidia.com/gpu limit.
  namespace: Optional[str] = None
  service_account: Optional[str] = None    # tfjob: the worker pods' service account
  worker_cpu: str = '2'
  worker_memory: str = '8Gi'
  worker_gpus: int = 0
  tfjob_backoff_limit: int = 3             # tfjob: pod restarts before the TFJob fails
  tfjob_timeout_seconds: int = 86400       # tfjob: activeDeadlineSeconds, and the step's wait
  # trainjob: the ClusterTrainingRuntime (deploy/trainer-runtime.yaml ships this one).
  training_runtime: str = 'mtl-pipeline-tensorflow'
  trainjob_timeout_seconds: int = 86400    # trainjob: activeDeadlineSeconds, and the step's wait
  # trainjob: how long every node may take to be running (a missing runtime, quota, no node
  # with the resources, an image that cannot be pulled) before the step fails with the
  # TrainJob's conditions.
  trainjob_start_timeout_seconds: int = 1800


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  name: str
  data: DataConfig
  features: Sequence[FeatureConfig]
  tasks: Sequence[TaskConfig]
  model: ModelConfig = ModelConfig()
  training: TrainingConfig = TrainingConfig()
  serving: ServingConfig = ServingConfig()
  evaluation: EvaluationConfig = EvaluationConfig()
  beam: BeamConfig = BeamConfig()
  kubeflow: KubeflowConfig = KubeflowConfig()

  @property
  def categorical_features(self) -> List[FeatureConfig]:
    return [f for f in self.features if f.type == 'categorical']

  @property
  def numeric_features(self) -> List[FeatureConfig]:
    return [f for f in self.features if f.type == 'numeric']

  def task(self, name: str) -> TaskConfig:
    for task in self.tasks:
      if task.name == name:
        return task
    raise KeyError(name)

  def data_view(self) -> 'PipelineConfig':
    """Only what ingestion and Transform read: data, features, and each task's label, type and
    label range.

    They receive this view, so changing the model, training or serving sections, or the
    validation settings (drift, skew, accepted anomalies), leaves their ML Metadata cache keys
    unchanged and a rerun reuses their outputs.
    """
    return PipelineConfig(name=self.name,
                          data=dataclasses.replace(self.data, accept_anomalies=()),
                          features=tuple(dataclasses.replace(
                              f, max_drift=None, max_skew=None,
                              embedding_dim=FeatureConfig.embedding_dim,
                              periodic=FeatureConfig.periodic,
                              periodic_scale=FeatureConfig.periodic_scale)
                              for f in self.features),
                          tasks=tuple(TaskConfig(name=t.name, label=t.label, type=t.type,
                                                 label_min=t.label_min, label_max=t.label_max)
                                      for t in self.tasks))

  def ingestion_view(self) -> 'PipelineConfig':
    """What ingestion reads: `data_view` without how Transform encodes the features
    (vocabulary limits, scaling, buckets), so changing those re-runs Transform, not
    LogExampleGen."""
    view = self.data_view()
    return dataclasses.replace(view, features=tuple(
        FeatureConfig(name=f.name, type=f.type, min=f.min, max=f.max) for f in view.features))

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> 'PipelineConfig':
    return parse_config(json.loads(text))

  def with_overrides(self, **sections: Mapping[str, Any]) -> 'PipelineConfig':
    """Returns a validated copy with some keys of some sections replaced.

    Example: `config.with_overrides(data={'input_base': 'other/logs'})`.
    """
    raw = self.to_dict()
    for section, values in sections.items():
      if section not in raw or not isinstance(raw[section], dict):
        raise ConfigError(f'{section}: not a config section that can be overridden')
      raw[section].update(values)
    return parse_config(raw)


# ---------------------------------------------------------------------------------------------
# Parsing. Each helper takes the dotted path of the value it reads, for error messages.


def _require_mapping(value: Any, path: str) -> Mapping[str, Any]:
  if not isinstance(value, Mapping):
    raise ConfigError(f'{path}: expected a mapping, got {type(value).__name__}')
  return value


def _check_keys(raw: Mapping[str, Any], path: str, allowed: Sequence[str],
                required: Sequence[str] = ()) -> None:
  for key in raw:
    if key not in allowed:
      raise ConfigError(f'{path}.{key}: unknown key; allowed keys are {", ".join(allowed)}'
                        if path else f'{key}: unknown key; allowed keys are '
                        f'{", ".join(allowed)}')
  for key in required:
    if key not in raw or raw[key] is None:
      raise ConfigError(f'{path}.{key}: required key is missing' if path else
                        f'{key}: required key is missing')


def _choice(value: Any, path: str, allowed: Sequence[str]) -> str:
  if value not in allowed:
    raise ConfigError(f'{path}: {value!r} is not one of {", ".join(allowed)}')
  return value


def _number(value: Any, path: str, kind: type = float, minimum: Optional[float] = None,
            maximum: Optional[float] = None, exclusive_min: bool = False,
            also_allowed: str = '') -> Any:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      kind is int and not float(value).is_integer()):
    raise ConfigError(f'{path}: expected {"an integer" if kind is int else "a number"}'
                      f'{" or " + also_allowed if also_allowed else ""}, got {value!r}')
  value = kind(value)
  if minimum is not None and (value <= minimum if exclusive_min else value < minimum):
    raise ConfigError(f'{path}: {value} must be {">" if exclusive_min else ">="} {minimum}')
  if maximum is not None and value > maximum:
    raise ConfigError(f'{path}: {value} must be <= {maximum}')
  return value


def _name(value: Any, path: str) -> str:
  if not isinstance(value, str) or not value or not value.replace('_', '').isalnum():
    raise ConfigError(f'{path}: {value!r} must be a non-empty name of letters, digits and _')
  return value


def _units(value: Any, path: str) -> tuple:
  if not isinstance(value, (list, tuple)) or not value:
    raise ConfigError(f'{path}: expected a non-empty list of layer sizes, got {value!r}')
  return tuple(_number(v, f'{path}[{i}]', int, minimum=1) for i, v in enumerate(value))


def _section(raw: Mapping[str, Any], key: str, cls: type, parse_field) -> Any:
  section = _require_mapping(raw.get(key) or {}, key)
  fields = [f.name for f in dataclasses.fields(cls)]
  required = [f.name for f in dataclasses.fields(cls)
              if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
  _check_keys(section, key, fields, required)
  return cls(**{k: parse_field(k, v, f'{key}.{k}') for k, v in section.items()})


def _parse_feature(raw: Any, path: str) -> FeatureConfig:
  raw = _require_mapping(raw, path)
  _check_keys(raw, path, [f.name for f in dataclasses.fields(FeatureConfig)], ['name', 'type'])
  ftype = _choice(raw['type'], f'{path}.type', FEATURE_TYPES)
  only_for = {'categorical': ('top_k', 'frequency_threshold', 'oov_buckets'),
              'numeric': ('scaling', 'min', 'max', 'buckets', 'periodic', 'periodic_scale',
                          'piecewise_linear')}
  defaults = {f.name: f.default for f in dataclasses.fields(FeatureConfig)}
  for other_type, keys in only_for.items():
    for key in keys:
      # A default value is harmless (and is what a round trip through to_dict carries).
      if other_type != ftype and key in raw and raw[key] != defaults[key]:
        raise ConfigError(f'{path}.{key}: only applies to {other_type} features, '
                          f'this one is {ftype}')
  kwargs: Dict[str, Any] = {'name': _name(raw['name'], f'{path}.name'), 'type': ftype}
  if raw.get('top_k') is not None:
    kwargs['top_k'] = _number(raw['top_k'], f'{path}.top_k', int, minimum=1)
  if 'frequency_threshold' in raw:
    kwargs['frequency_threshold'] = _number(raw['frequency_threshold'],
                                            f'{path}.frequency_threshold', int, minimum=0)
  if 'oov_buckets' in raw:
    kwargs['oov_buckets'] = _number(raw['oov_buckets'], f'{path}.oov_buckets', int, minimum=1)
  if 'embedding_dim' in raw:
    kwargs['embedding_dim'] = (AUTO if raw['embedding_dim'] == AUTO else _number(
        raw['embedding_dim'], f'{path}.embedding_dim', int, minimum=1,
        also_allowed=f"'{AUTO}'"))
  if 'scaling' in raw:
    kwargs['scaling'] = _choice(raw['scaling'], f'{path}.scaling', NUMERIC_SCALINGS)
  if raw.get('buckets'):
    kwargs['buckets'] = _number(raw['buckets'], f'{path}.buckets', int, minimum=2,
                                maximum=10000)
  if raw.get('periodic'):
    kwargs['periodic'] = _number(raw['periodic'], f'{path}.periodic', int, minimum=1,
                                 maximum=1024)
  if 'periodic_scale' in raw:
    kwargs['periodic_scale'] = _number(raw['periodic_scale'], f'{path}.periodic_scale',
                                       minimum=0.0, exclusive_min=True)
  if raw.get('piecewise_linear'):
    kwargs['piecewise_linear'] = _number(raw['piecewise_linear'], f'{path}.piecewise_linear',
                                         int, minimum=2, maximum=256)
  if (ftype == 'numeric' and not any(kwargs.get(k) for k in ('buckets', 'periodic',
                                                              'piecewise_linear'))
      and 'embedding_dim' in raw and raw['embedding_dim'] != defaults['embedding_dim']):
    raise ConfigError(f'{path}.embedding_dim: applies to categorical features and to numeric '
                      'ones with buckets, periodic or piecewise_linear')
  if kwargs['name'].endswith(BUCKET_SUFFIX):
    raise ConfigError(f'{path}.name: {kwargs["name"]!r} ends with {BUCKET_SUFFIX!r}, which '
                      "names a numeric feature's bucket")
  if re.search(PIECE_SUFFIX + r'\d+$', kwargs['name']):
    raise ConfigError(f'{path}.name: {kwargs["name"]!r} ends with {PIECE_SUFFIX!r} and a '
                      "number, which names a bin of a numeric feature's piecewise_linear")
  for key in ('min', 'max'):
    if raw.get(key) is not None:
      kwargs[key] = _number(raw[key], f'{path}.{key}')
      if not -float('inf') < kwargs[key] < float('inf'):
        raise ConfigError(f'{path}.{key}: must be a finite number, got {raw[key]!r}')
  if kwargs.get('min') is not None and kwargs.get('max') is not None and (
      kwargs['min'] > kwargs['max']):
    raise ConfigError(f'{path}.min: {kwargs["min"]} is above max {kwargs["max"]}')
  for key in ('max_drift', 'max_skew'):
    if raw.get(key) is not None:
      kwargs[key] = _number(raw[key], f'{path}.{key}', minimum=0.0, maximum=1.0,
                            exclusive_min=True)
  return FeatureConfig(**kwargs)


def _parse_optimizer(raw: Any, path: str, default: OptimizerConfig) -> OptimizerConfig:
  raw = _require_mapping(raw, path)
  _check_keys(raw, path, [f.name for f in dataclasses.fields(OptimizerConfig)])
  kwargs: Dict[str, Any] = {}
  if 'type' in raw:
    kwargs['type'] = _choice(raw['type'], f'{path}.type', OPTIMIZERS)
  if 'learning_rate' in raw:
    # 0 is allowed: it freezes the group (e.g. one task's head) while the others train.
    kwargs['learning_rate'] = _number(raw['learning_rate'], f'{path}.learning_rate', minimum=0.0)
  if 'schedule' in raw:
    kwargs['schedule'] = _choice(raw['schedule'], f'{path}.schedule', LR_SCHEDULES)
  if 'decay_rate' in raw:
    kwargs['decay_rate'] = _number(raw['decay_rate'], f'{path}.decay_rate', minimum=0.0,
                                   maximum=1.0, exclusive_min=True)
  if 'weight_decay' in raw:
    kwargs['weight_decay'] = _number(raw['weight_decay'], f'{path}.weight_decay', minimum=0.0,
                                     maximum=1.0)
  return dataclasses.replace(default, **kwargs)


def _parse_task(raw: Any, path: str) -> TaskConfig:
  raw = _require_mapping(raw, path)
  _check_keys(raw, path, [f.name for f in dataclasses.fields(TaskConfig)],
              ['name', 'label', 'type'])
  ttype = _choice(raw['type'], f'{path}.type', TASK_TYPES)
  kwargs: Dict[str, Any] = {
      'name': _name(raw['name'], f'{path}.name'),
      'label': _name(raw['label'], f'{path}.label'),
      'type': ttype,
  }
  if 'head_units' in raw:
    kwargs['head_units'] = _units(raw['head_units'], f'{path}.head_units')
  if 'optimizer' in raw:
    kwargs['optimizer'] = _parse_optimizer(raw['optimizer'], f'{path}.optimizer',
                                           OptimizerConfig())
  if 'loss_weight' in raw:
    kwargs['loss_weight'] = _number(raw['loss_weight'], f'{path}.loss_weight', minimum=0.0)
  if raw.get('inputs_from'):
    inputs_from = raw['inputs_from']
    if not isinstance(inputs_from, (list, tuple)) or not all(
        isinstance(n, str) for n in inputs_from):
      raise ConfigError(f'{path}.inputs_from: expected a list of task names, got {inputs_from!r}')
    kwargs['inputs_from'] = tuple(inputs_from)
  thresholds = {}
  for metric, bounds in _require_mapping(raw.get('thresholds') or {},
                                         f'{path}.thresholds').items():
    metric_path = f'{path}.thresholds.{metric}'
    _choice(metric, metric_path + ' (metric)', TASK_METRICS[ttype])
    bounds = _require_mapping(bounds, metric_path)
    _check_keys(bounds, metric_path, ['min', 'max'])
    if not bounds:
      raise ConfigError(f'{metric_path}: give min, max or both')
    threshold = Threshold(**{k: _number(v, f'{metric_path}.{k}') for k, v in bounds.items()
                             if v is not None})
    if threshold.min is None and threshold.max is None:
      raise ConfigError(f'{metric_path}: give min, max or both')
    if threshold.min is not None and threshold.max is not None and threshold.min > threshold.max:
      raise ConfigError(f'{metric_path}: min {threshold.min} is above max {threshold.max}')
    thresholds[metric] = threshold
  kwargs['thresholds'] = thresholds
  max_regression = {}
  for metric, tolerance in _require_mapping(raw.get('max_regression') or {},
                                            f'{path}.max_regression').items():
    metric_path = f'{path}.max_regression.{metric}'
    _choice(metric, metric_path + ' (metric)', list(METRIC_DIRECTIONS))
    if metric not in TASK_METRICS[ttype]:
      raise ConfigError(f'{metric_path}: not a metric of a {ttype} task '
                        f'({", ".join(m for m in TASK_METRICS[ttype] if m in METRIC_DIRECTIONS)})')
    max_regression[metric] = parse_tolerance(tolerance, metric_path)
  kwargs['max_regression'] = max_regression
  for key in ('label_min', 'label_max'):
    if raw.get(key) is not None:
      if ttype != 'regression':
        raise ConfigError(f'{path}.{key}: only applies to regression tasks (a binary label '
                          'must be 0 or 1)')
      kwargs[key] = _number(raw[key], f'{path}.{key}')
      if not -float('inf') < kwargs[key] < float('inf'):
        raise ConfigError(f'{path}.{key}: must be a finite number, got {raw[key]!r}')
  if kwargs.get('label_min') is not None and kwargs.get('label_max') is not None and (
      kwargs['label_min'] > kwargs['label_max']):
    raise ConfigError(f'{path}.label_min: {kwargs["label_min"]} is above label_max '
                      f'{kwargs["label_max"]}')
  return TaskConfig(**kwargs)


def parse_tolerance(value: Any, path: str) -> Union[float, str]:
  """A regression tolerance: a non-negative number, or a percentage string such as '2%'."""
  if isinstance(value, str) and value.endswith('%'):
    try:
      percent = float(value[:-1])
    except ValueError:
      raise ConfigError(f'{path}: {value!r} is not a percentage such as "2%"') from None
    if not 0 <= percent < 100:
      raise ConfigError(f'{path}: {value!r} must be between 0% and 100%')
    return value
  return _number(value, path, minimum=0.0)


def regression_tolerances(task: TaskConfig) -> Dict[str, Union[float, str]]:
  """The task's max_regression, or the defaults for its type when none is configured."""
  return dict(task.max_regression) or dict(DEFAULT_MAX_REGRESSION[task.type])


def _parse_data_field(key: str, value: Any, path: str) -> Any:
  if key in ('input_base', 'file_pattern', 'split_key', 'schema'):
    if value is None and key == 'schema':
      return None
    if not isinstance(value, str) or not value:
      raise ConfigError(f'{path}: expected a non-empty string, got {value!r}')
    return value
  if key == 'eval_fraction':
    fraction = _number(value, path, minimum=0.0, maximum=0.9, exclusive_min=True)
    if abs(fraction * SPLIT_BUCKETS - round(fraction * SPLIT_BUCKETS)) > 1e-9:
      raise ConfigError(f'{path}: {fraction} is not a whole percentage: the split hashes '
                        f'data.split_key into {SPLIT_BUCKETS} buckets (use 0.01 to 0.9 in '
                        'steps of 0.01)')
    return fraction
  if key == 'max_rejected_fraction':
    return _number(value, path, minimum=0.0, maximum=1.0)
  if key == 'window_spans':
    return _number(value, path, int, minimum=1)
  if key == 'max_string_bytes':
    return _number(value, path, int, minimum=1)
  if key == 'accept_anomalies':
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f'{path}: expected a list of anomaly kinds, got {value!r}')
    for i, kind in enumerate(value):
      _choice(kind, f'{path}[{i}]', ANOMALY_KINDS)
    return tuple(value)
  raise AssertionError(key)


def _parse_model_field(key: str, value: Any, path: str) -> Any:
  if key == 'type':
    return _choice(value, path, MODEL_TYPES)
  if key in ('trunk_units', 'expert_units'):
    return _units(value, path)
  if key in ('dropout', 'embedding_dropout', 'head_dropout'):
    return _number(value, path, minimum=0.0, maximum=0.9)
  if key in ('num_experts', 'num_shared_experts', 'num_task_experts'):
    return _number(value, path, int, minimum=1)
  if key == 'cross_layers':
    return _number(value, path, int, minimum=0, maximum=8)
  if key in ('esmm_click_task', 'esmm_conversion_task'):
    return _optional_string(value, path)
  raise AssertionError(key)


def _parse_training_field(key: str, value: Any, path: str) -> Any:
  if key in ('train_steps', 'eval_steps', 'batch_size'):
    return _number(value, path, int, minimum=1)
  if key == 'seed':
    return _number(value, path, int, minimum=0)
  if key in ('trunk_optimizer', 'loss_weights_optimizer'):
    spec = _parse_optimizer(value, path, getattr(TrainingConfig(), key))
    if key == 'loss_weights_optimizer' and spec.weight_decay:
      raise ConfigError(f'{path}.weight_decay: the loss weights (log-variances) are not '
                        'decayed; weight decay applies to the trunk and the task heads')
    return spec
  if key == 'loss_weighting':
    return _choice(value, path, LOSS_WEIGHTINGS)
  if key == 'min_log_variance':
    return None if value is None else _number(value, path)
  if key == 'gradient_surgery':
    return _choice(value, path, GRADIENT_SURGERIES)
  if key == 'dwa_temperature':
    return _number(value, path, minimum=0.0, exclusive_min=True)
  if key == 'gradnorm_alpha':
    return _number(value, path, minimum=0.0)
  if key == 'workers':
    return _number(value, path, int, minimum=1)
  if key == 'worker_restarts':
    return _number(value, path, int, minimum=0, maximum=100)
  if key == 'worker_start_timeout_seconds':
    return _number(value, path, int, minimum=1)
  if key == 'early_stopping':
    return _parse_early_stopping(value, path)
  raise AssertionError(key)


def _parse_early_stopping(value: Any, path: str) -> Optional[EarlyStoppingConfig]:
  if value is None or value is False:
    return None
  if value is True:
    return EarlyStoppingConfig()
  raw = _require_mapping(value, path)
  _check_keys(raw, path, [f.name for f in dataclasses.fields(EarlyStoppingConfig)])
  kwargs: Dict[str, Any] = {}
  if 'monitor' in raw:
    kwargs['monitor'] = _name(raw['monitor'], f'{path}.monitor')
  if 'patience' in raw:
    kwargs['patience'] = _number(raw['patience'], f'{path}.patience', int, minimum=1)
  if 'min_delta' in raw:
    kwargs['min_delta'] = _number(raw['min_delta'], f'{path}.min_delta', minimum=0.0)
  return EarlyStoppingConfig(**kwargs)


def _parse_serving_field(key: str, value: Any, path: str) -> Any:
  if key == 'model_name':
    return _name(value, path)
  if key == 'push_dir':
    if not isinstance(value, str) or not value:
      raise ConfigError(f'{path}: expected a non-empty path, got {value!r}')
    return value
  if key in ('compare_with_served', 'canary'):
    if not isinstance(value, bool):
      raise ConfigError(f'{path}: expected true or false, got {value!r}')
    return value
  if key == 'keep_versions':
    return _number(value, path, int, minimum=1)
  if key == 'warmup_examples':
    return _number(value, path, int, minimum=0, maximum=1000)
  raise AssertionError(key)


def _parse_evaluation_field(key: str, value: Any, path: str) -> Any:
  if key == 'slices':
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f'{path}: expected a list of feature names or [feature, feature] '
                        f'crosses, got {value!r}')
    slices = []
    for i, entry in enumerate(value):
      names = [entry] if isinstance(entry, str) else entry
      if not isinstance(names, (list, tuple)) or not 1 <= len(names) <= 2:
        raise ConfigError(f'{path}[{i}]: expected a feature name or a list of two, got '
                          f'{entry!r}')
      slices.append(tuple(_name(n, f'{path}[{i}]' + (f'[{j}]' if len(names) > 1 else ''))
                          for j, n in enumerate(names)))
    return tuple(slices)
  if key == 'slice_gate_min_examples':
    return None if value is None else _number(value, path, int, minimum=1)
  raise AssertionError(key)


def _check_evaluation(evaluation: EvaluationConfig, features: Sequence[FeatureConfig]) -> None:
  """Slices are by categorical features, each slicing (or cross) listed once."""
  types = {f.name: f.type for f in features}
  seen = set()
  for i, names in enumerate(evaluation.slices):
    for j, name in enumerate(names):
      path = f'evaluation.slices[{i}]' + (f'[{j}]' if len(names) > 1 else '')
      if name not in types:
        categorical = ', '.join(n for n, t in types.items() if t == 'categorical')
        raise ConfigError(f'{path}: {name!r} is not a feature; slices are by categorical '
                          f'features ({categorical})')
      if types[name] != 'categorical':
        raise ConfigError(f'{path}: {name!r} is a numeric feature; slices are by categorical '
                          'features (a slice per distinct number would be one per example)')
    if len(set(names)) != len(names):
      raise ConfigError(f'evaluation.slices[{i}]: a cross of {names[0]!r} with itself')
    if frozenset(names) in seen:
      raise ConfigError(f'evaluation.slices[{i}]: {list(names)!r} is listed twice')
    seen.add(frozenset(names))


def _optional_string(value: Any, path: str) -> Optional[str]:
  if value is None:
    return None
  if not isinstance(value, str) or not value:
    raise ConfigError(f'{path}: expected a non-empty string, got {value!r}')
  return value


def _parse_beam_field(key: str, value: Any, path: str) -> Any:
  if key == 'runner':
    return _choice(value, path, BEAM_RUNNERS)
  if key == 'direct_running_mode':
    return _choice(value, path, DIRECT_RUNNING_MODES)
  if key == 'direct_num_workers':
    return _number(value, path, int, minimum=0)
  if key == 'environment_type':
    return _choice(value, path, ENVIRONMENT_TYPES)
  if key == 'extra_args':
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(a, str) and a.startswith('--') for a in value):
      raise ConfigError(f'{path}: expected a list of --flag=value strings, got {value!r}')
    return tuple(value)
  return _optional_string(value, path)


KUBEFLOW_TRAINERS = ('pod', 'trainjob', 'tfjob')
# Kubernetes resource quantities ('2', '500m', '8Gi', '1.5') and names (DNS-1123 labels).
_QUANTITY = re.compile(r'^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$')
_DNS_LABEL = re.compile(r'^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')


def _parse_kubeflow_field(key: str, value: Any, path: str) -> Any:
  if key == 'trainer':
    return _choice(value, path, KUBEFLOW_TRAINERS)
  if key == 'state_dir':
    return _optional_string(value, path)
  if key in ('namespace', 'service_account', 'training_runtime'):
    if value is None and key != 'training_runtime':
      return None
    if not isinstance(value, str) or not _DNS_LABEL.match(value):
      raise ConfigError(f'{path}: {value!r} is not a Kubernetes name (lower-case letters, '
                        'digits and -, at most 63 characters)')
    return value
  if key in ('worker_cpu', 'worker_memory'):
    value = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(value, str) or not _QUANTITY.match(value):
      raise ConfigError(f'{path}: {value!r} is not a Kubernetes quantity such as '
                        f'{"2 or 500m" if key == "worker_cpu" else "8Gi"}')
    return value
  if key == 'worker_gpus':
    return _number(value, path, int, minimum=0)
  if key == 'tfjob_backoff_limit':
    return _number(value, path, int, minimum=0)
  if key in ('tfjob_timeout_seconds', 'trainjob_timeout_seconds',
             'trainjob_start_timeout_seconds'):
    return _number(value, path, int, minimum=60)
  if not isinstance(value, str) or not value:
    raise ConfigError(f'{path}: expected a non-empty string, got {value!r}')
  return value


def span_specs(pattern: str) -> Tuple[bool, bool]:
  """Whether a file pattern has a {SPAN} (or {SPAN:width}) spec, and whether it has all of
  the {YYYY} {MM} {DD} date specs: how TFX's ExampleGen driver finds spans."""
  return (bool(re.search(r'\{SPAN(:[^}]*)?\}', pattern)),
          all(spec in pattern for spec in ('{YYYY}', '{MM}', '{DD}')))


_REMOTE = re.compile(r'^[a-z][a-z0-9+.-]*://')
_PATTERN_SPECS = re.compile(r'\{(SPAN|VERSION)(:[^}]*)?\}|\{YYYY\}|\{MM\}|\{DD\}')


def check_inputs(config: PipelineConfig) -> List[str]:
  """Checks, before a run starts, that what it reads is there: the input directory
  (`data.input_base`), at least one file matching `data.file_pattern` in it (its span and
  date specs as wildcards), and the curated schema (`data.schema`). Raises ConfigError naming
  the key. Remote storage (gs://, s3://) is left to the run itself: returns a note per such
  path, saying it was not checked."""
  data = config.data
  notes = []
  if _REMOTE.match(data.input_base):
    notes.append(f'data.input_base {data.input_base} is remote: not checked')
  elif not os.path.isdir(data.input_base):
    raise ConfigError(f'data.input_base: {data.input_base} is not a directory'
                      + ('' if os.path.exists(data.input_base) else ' (it does not exist)'))
  else:
    wildcard = _PATTERN_SPECS.sub('*', data.file_pattern)
    if not glob.glob(os.path.join(data.input_base, wildcard)):
      raise ConfigError(f'data.file_pattern: no file under data.input_base '
                        f'{data.input_base} matches {data.file_pattern!r} (as the glob '
                        f'{wildcard!r})')
  if data.schema:
    if _REMOTE.match(data.schema):
      notes.append(f'data.schema {data.schema} is remote: not checked')
    elif not os.path.isfile(data.schema):
      raise ConfigError(f'data.schema: {data.schema} does not exist (remove the key to let '
                        'SchemaGen infer a schema)')
  return notes


def _check_task_inputs(tasks: Sequence[TaskConfig]) -> None:
  """inputs_from names other tasks and has no cycle."""
  names = [t.name for t in tasks]
  for i, task in enumerate(tasks):
    for producer in task.inputs_from:
      if producer == task.name:
        raise ConfigError(f'tasks[{i}].inputs_from: a task cannot take its own estimate')
      if producer not in names:
        raise ConfigError(f'tasks[{i}].inputs_from: {producer!r} is not one of the tasks '
                          f'({", ".join(names)})')
  order_tasks(tasks)


def order_tasks(tasks: Sequence[TaskConfig]) -> List[TaskConfig]:
  """Tasks with every producer of `inputs_from` before its consumers; a cycle is an error."""
  by_name = {t.name: t for t in tasks}
  ordered: List[TaskConfig] = []
  visiting: List[str] = []

  def visit(task: TaskConfig) -> None:
    if task in ordered:
      return
    if task.name in visiting:
      cycle = ' -> '.join(visiting[visiting.index(task.name):] + [task.name])
      raise ConfigError(f'tasks: inputs_from forms a cycle: {cycle}')
    visiting.append(task.name)
    for producer in task.inputs_from:
      visit(by_name[producer])
    visiting.pop()
    ordered.append(task)

  for task in tasks:
    visit(task)
  return ordered


def _checked_training(training: TrainingConfig, tasks: Sequence[TaskConfig]) -> TrainingConfig:
  stopping = training.early_stopping
  names = [t.name for t in tasks]
  if stopping is not None and stopping.monitor != 'loss' and stopping.monitor not in names:
    raise ConfigError(f'training.early_stopping.monitor: {stopping.monitor!r} is neither loss '
                      f'(the total) nor a task ({", ".join(names)})')
  return training


def _check_model(model: ModelConfig, tasks: Sequence[TaskConfig]) -> None:
  if model.type != 'esmm':
    for key in ('esmm_click_task', 'esmm_conversion_task'):
      if getattr(model, key) is not None:
        raise ConfigError(f'model.{key}: only applies when model.type is esmm')
    return
  by_name = {t.name: t for t in tasks}
  for key in ('esmm_click_task', 'esmm_conversion_task'):
    name = getattr(model, key)
    if name is None:
      raise ConfigError(f'model.{key}: required when model.type is esmm')
    if name not in by_name:
      raise ConfigError(f'model.{key}: {name!r} is not one of the tasks ({", ".join(by_name)})')
    if by_name[name].type != 'binary':
      raise ConfigError(f'model.{key}: task {name!r} must be binary for esmm')
    if by_name[name].inputs_from:
      raise ConfigError(f'model.{key}: the esmm task {name!r} cannot also use inputs_from')
  if model.esmm_click_task == model.esmm_conversion_task:
    raise ConfigError('model.esmm_conversion_task: must differ from model.esmm_click_task')


def _check_beam(beam: BeamConfig) -> None:
  needed = {'dataflow': ('project', 'region', 'temp_location'),
            'flink': ('job_endpoint',), 'spark': ('job_endpoint',)}
  for key in needed.get(beam.runner, ()):
    if getattr(beam, key) is None:
      raise ConfigError(f'beam.{key}: required when beam.runner is {beam.runner}')


def parse_config(raw: Any) -> PipelineConfig:
  """Validates a config given as plain data (as loaded from YAML or JSON)."""
  raw = _require_mapping(raw, 'config')
  _check_keys(raw, '', [f.name for f in dataclasses.fields(PipelineConfig)],
              ['name', 'data', 'features', 'tasks'])
  name = raw['name']
  if not isinstance(name, str) or not name.replace('-', '').replace('_', '').isalnum():
    raise ConfigError(f'name: {name!r} must be letters, digits, - and _')

  features_raw = raw['features']
  if not isinstance(features_raw, (list, tuple)) or not features_raw:
    raise ConfigError('features: expected a non-empty list of features')
  features = [_parse_feature(f, f'features[{i}]') for i, f in enumerate(features_raw)]
  tasks_raw = raw['tasks']
  if not isinstance(tasks_raw, (list, tuple)) or not tasks_raw:
    raise ConfigError('tasks: expected a non-empty list of tasks')
  tasks = [_parse_task(t, f'tasks[{i}]') for i, t in enumerate(tasks_raw)]

  seen: Dict[str, str] = {}
  for i, feature in enumerate(features):
    if feature.name in seen:
      raise ConfigError(f'features[{i}].name: {feature.name!r} is listed twice')
    seen[feature.name] = f'features[{i}]'
  task_names = set()
  for i, task in enumerate(tasks):
    if task.name in task_names:
      raise ConfigError(f'tasks[{i}].name: task {task.name!r} is listed twice')
    task_names.add(task.name)
    if task.label in seen:
      raise ConfigError(f'tasks[{i}].label: column {task.label!r} is already used by '
                        f'{seen[task.label]}; a label cannot also be a feature or another '
                        'task\'s label')
    seen[task.label] = f'tasks[{i}]'

  _check_task_inputs(tasks)
  data = _section(raw, 'data', DataConfig, _parse_data_field)
  if data.window_spans > 1 and not any(span_specs(data.file_pattern)):
    raise ConfigError(f'data.window_spans: {data.window_spans} spans need {{SPAN}} or '
                      f'{{YYYY}}-{{MM}}-{{DD}} in data.file_pattern ({data.file_pattern!r})')
  if data.split_key in {t.label for t in tasks}:
    raise ConfigError(f'data.split_key: {data.split_key!r} is a task label; split by an id '
                      'such as the user id')
  if data.split_key in {f.name for f in features if f.type == 'numeric'}:
    raise ConfigError(f'data.split_key: {data.split_key!r} is a numeric feature, which the '
                      'split cannot hash (TFX hashes text or integer ids); split by an id such '
                      'as the user id')
  beam = _section(raw, 'beam', BeamConfig, _parse_beam_field)
  _check_beam(beam)
  model = _section(raw, 'model', ModelConfig, _parse_model_field)
  _check_model(model, tasks)
  evaluation = _section(raw, 'evaluation', EvaluationConfig, _parse_evaluation_field)
  _check_evaluation(evaluation, features)
  return PipelineConfig(
      name=name,
      data=data,
      features=tuple(features),
      tasks=tuple(tasks),
      model=model,
      training=_checked_training(_section(raw, 'training', TrainingConfig,
                                          _parse_training_field), tasks),
      serving=_section(raw, 'serving', ServingConfig, _parse_serving_field),
      evaluation=evaluation,
      beam=beam,
      kubeflow=_section(raw, 'kubeflow', KubeflowConfig, _parse_kubeflow_field),
  )


def _absolute(path: Optional[str], base_dir: str) -> Optional[str]:
  if path is None or '://' in path or os.path.isabs(path):
    return path
  return os.path.normpath(os.path.join(base_dir, path))


class _UniqueKeyLoader(yaml.SafeLoader):
  """YAML's safe loader, refusing a key written twice in one mapping: YAML itself would keep
  the last value and drop the first without a word."""

  def construct_mapping(self, node, deep=False):
    if isinstance(node, yaml.MappingNode):
      seen = {}
      for key_node, _ in node.value:
        if key_node.tag == 'tag:yaml.org,2002:merge':
          continue  # `<<:` merges may override on purpose
        key = self.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if isinstance(key, str) and key in seen:
          raise ConfigError(f'duplicate key {key!r} on lines {seen[key]} and {line}: only '
                            'the last would be kept')
        seen[key] = line
    return super().construct_mapping(node, deep=deep)


def load_config(path: str, base_dir: Optional[str] = None) -> PipelineConfig:
  """Reads and validates a YAML config file.

  Relative paths in it (logs, schema, push directory) are taken relative to `base_dir`,
  the current directory by default, and returned absolute.
  """
  try:
    with open(path) as f:
      raw = yaml.load(f, Loader=_UniqueKeyLoader)  # a safe loader
  except FileNotFoundError:
    raise ConfigError(f'config file {path} does not exist') from None
  except yaml.YAMLError as e:
    raise ConfigError(f'{path}: not valid YAML: {e}') from None
  except ConfigError as e:
    raise ConfigError(f'{path}: {e}') from None
  try:
    config = parse_config(raw)
  except ConfigError as e:
    raise ConfigError(f'{path}: {e}') from None
  base_dir = base_dir or os.getcwd()
  data = dataclasses.replace(config.data,
                             input_base=_absolute(config.data.input_base, base_dir),
                             schema=_absolute(config.data.schema, base_dir))
  serving = dataclasses.replace(config.serving,
                                push_dir=_absolute(config.serving.push_dir, base_dir))
  return dataclasses.replace(config, data=data, serving=serving)
