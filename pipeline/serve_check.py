"""`mtlp serve-check VERSION_DIR`: checks a pushed version the way TF Serving would use it.

Without Docker or a model server: the SavedModel is loaded with the `serve` tag, as TF Serving
loads it, and requests built with the tensorflow-serving-api protos are dispatched to the
signature they name. Checks, each a row of the report:

1. every warmup request in `assets.extra/tf_serving_warmup_requests` parses as a
   `PredictionLog` and runs, giving finite outputs with one row per input example;
2. a gRPC `PredictRequest` on `serving_default` with the sample eval examples returns the
   Evaluator's predictions for them (`assets.extra/sample_predictions.json`) within tolerance;
3. a REST body (`{"signature_name": "predict_instances", "instances": [...]}`, through JSON)
   for the same examples returns the same predictions;
4. both signatures refuse a request whose numeric feature is NaN (what ingestion
   quarantines), with an error naming the feature (trainer/export.py, `input_checks`).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Dict, List

import numpy as np
import tensorflow as tf

from components import serving_requests
from trainer.export import INSTANCES_SIGNATURE, SERVING_SIGNATURE


class ServeCheckError(RuntimeError):
  """The directory is not a pushed model version this check can read."""


def _max_difference(outputs: Dict[str, np.ndarray], expected: Dict[str, List[List[float]]]
                    ) -> Dict[str, float]:
  differences = {}
  for name, values in expected.items():
    if name not in outputs:
      differences[name] = float('inf')
      continue
    got = np.asarray(outputs[name], dtype=np.float64).reshape(len(values), -1)
    differences[name] = float(np.max(np.abs(got - np.asarray(values, dtype=np.float64))))
  return differences


def serve_check(version_dir: str, tolerance: float = 1e-5) -> Dict[str, Any]:
  """Runs the checks; returns {'ok', 'model_name', 'version', 'checks': [{name, ok, detail}]}."""
  version_dir = os.path.abspath(version_dir.rstrip('/'))
  if not tf.io.gfile.exists(os.path.join(version_dir, 'saved_model.pb')):
    raise ServeCheckError(f'{version_dir} holds no saved_model.pb: give a version directory '
                          '<push_dir>/<model_name>/<version>')
  model_name = os.path.basename(os.path.dirname(version_dir))
  warmup_path = os.path.join(version_dir, serving_requests.WARMUP_FILE)
  sample_path = os.path.join(version_dir, serving_requests.SAMPLE_PREDICTIONS_FILE)
  for path in (warmup_path, sample_path):
    if not tf.io.gfile.exists(path):
      raise ServeCheckError(f'{path} is missing: was this version pushed by the pipeline?')
  loaded = tf.saved_model.load(version_dir, tags=['serve'])
  checks: List[Dict[str, Any]] = []

  logs = serving_requests.read_warmup(warmup_path)
  for i, log in enumerate(logs):
    request = log.predict_log.request
    name = f'warmup request {i + 1}/{len(logs)} ({request.model_spec.signature_name})'
    try:
      outputs = serving_requests.run_request(loaded, request)
      batch = len(next(iter(serving_requests.request_inputs(request).values())))
      bad = [k for k, v in outputs.items() if len(v) != batch or not np.all(np.isfinite(v))]
      checks.append({'name': name, 'ok': not bad,
                     'detail': f'batch {batch}, outputs {", ".join(sorted(outputs))}' +
                               (f'; wrong shape or non-finite: {bad}' if bad else '')})
    except Exception as e:  # pylint: disable=broad-except
      checks.append({'name': name, 'ok': False, 'detail': f'{type(e).__name__}: {e}'})
  if not logs:
    checks.append({'name': 'warmup requests', 'ok': False, 'detail': 'the file is empty'})

  with tf.io.gfile.GFile(sample_path) as f:
    sample = json.load(f)
  examples = [base64.b64decode(e) for e in sample['examples']]
  expected = sample['predictions']

  serving = loaded.signatures[SERVING_SIGNATURE]
  grpc_request = serving_requests.predict_request(
      model_name, SERVING_SIGNATURE, serving_requests.example_inputs(serving, examples))
  outputs = serving_requests.run_request(
      loaded, type(grpc_request).FromString(grpc_request.SerializeToString()))
  checks.append(_compare(f'gRPC Predict {SERVING_SIGNATURE} vs Evaluator predictions',
                         outputs, expected, tolerance, len(examples)))

  if INSTANCES_SIGNATURE in loaded.signatures:
    signature = loaded.signatures[INSTANCES_SIGNATURE]
    body = json.loads(json.dumps({
        'signature_name': INSTANCES_SIGNATURE,
        'instances': serving_requests.instances_from_examples(signature, examples)}))
    inputs = serving_requests.instances_to_inputs(signature, body['instances'])
    outputs = {k: v.numpy() for k, v in
               signature(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
    checks.append(_compare(f'REST {INSTANCES_SIGNATURE} vs Evaluator predictions',
                           outputs, expected, tolerance, len(examples)))
  else:
    checks.append({'name': f'REST {INSTANCES_SIGNATURE}', 'ok': False,
                   'detail': 'the model has no such signature'})
  checks.append(_refuses_non_finite(loaded, examples[0]))
  return {'ok': all(c['ok'] for c in checks), 'model_name': model_name,
          'version': os.path.basename(version_dir), 'checks': checks}


def _refused(call) -> str:
  """The error message of a request that must fail ('' if it succeeded)."""
  try:
    call()
  except (tf.errors.InvalidArgumentError, serving_requests.RestRequestError) as e:
    return e.message if hasattr(e, 'message') else str(e)
  return ''


def _refuses_non_finite(loaded, serialized: bytes) -> Dict[str, Any]:
  """A sample example with its first numeric feature set to NaN, through both signatures."""
  example = tf.train.Example.FromString(serialized)
  serving = loaded.signatures[SERVING_SIGNATURE]
  signature = loaded.signatures[INSTANCES_SIGNATURE]
  inputs = serving_requests.signature_inputs(signature)
  numeric = sorted(name for name, f in example.features.feature.items()
                   if f.HasField('float_list') and name in inputs)
  name = 'a NaN numeric feature is refused'
  if not numeric:
    return {'name': name, 'ok': True, 'detail': 'the model has no numeric feature'}
  feature = numeric[0]
  example.features.feature[feature].float_list.value[:] = [float('nan')]
  bad = [example.SerializeToString()]
  by_examples = _refused(lambda: serving_requests.run_request(
      loaded, serving_requests.predict_request(
          'check', SERVING_SIGNATURE, serving_requests.example_inputs(serving, bad))))
  body = json.loads(json.dumps(  # NaN as TF Serving's JSON parser takes it
      {'instances': serving_requests.instances_from_examples(signature, bad)}))
  by_instances = _refused(lambda: signature(**{
      k: tf.constant(v)
      for k, v in serving_requests.instances_to_inputs(signature, body['instances']).items()}))
  failures = [f'{signature_name} {"did not name it" if message else "accepted it"}'
              for signature_name, message in ((SERVING_SIGNATURE, by_examples),
                                               (INSTANCES_SIGNATURE, by_instances))
              if feature not in message]
  said = next((line.strip() for line in by_examples.splitlines() if feature in line), '')
  return {'name': f'{name} ({feature} = NaN, by both signatures)', 'ok': not failures,
          'detail': '; '.join(failures) if failures else f'refused: {said[:240]}'}


def _compare(name: str, outputs: Dict[str, np.ndarray], expected: Dict[str, Any],
             tolerance: float, count: int) -> Dict[str, Any]:
  differences = _max_difference(outputs, expected)
  worst = max(differences.values()) if differences else float('inf')
  return {'name': name, 'ok': bool(differences) and worst <= tolerance,
          'detail': f'{count} examples, max |difference| {worst:.2e} (tolerance {tolerance:g})'
                    + ''.join(f'; {k} {v:.2e}' for k, v in sorted(differences.items())
                              if v > tolerance)}


def format_report(report: Dict[str, Any]) -> str:
  lines = [f'model {report["model_name"]} version {report["version"]}']
  for check in report['checks']:
    lines.append(f'  [{"ok" if check["ok"] else "FAIL"}] {check["name"]}: {check["detail"]}')
  lines.append('serve-check passed' if report['ok'] else 'serve-check FAILED')
  return '\n'.join(lines)
