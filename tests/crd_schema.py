"""Validates Kubernetes manifests against the official CRDs (tests/data/kubeflow_crds/) with a
JSON Schema validator, as the Kubernetes API server validates a custom resource.

The API server checks a custom resource against its CRD's `openAPIV3Schema` (an OpenAPI v3.0
schema; Kubernetes docs, "Extend the Kubernetes API with CustomResourceDefinitions",
sections "Validation" and "Field pruning"). Two of its rules are not JSON Schema and are
applied here by rewriting the schema before validating:
- unknown fields: a CRD schema is structural, and a field it does not specify is pruned, or
  refused under strict field validation (`kubectl apply`'s default, `--validate=strict`), unless
  the object says `x-kubernetes-preserve-unknown-fields: true`. Strict is what a manifest must
  pass, so every object schema with `properties` (or none, and no `additionalProperties`) and
  without that flag gets `additionalProperties: false`;
- `nullable: true` (OpenAPI) allows null besides the type.
`metadata` is checked by the API server as an ObjectMeta, not by the CRD (the CRD says only
`type: object`); CEL rules (`x-kubernetes-validations`) are not evaluated here.
"""

from __future__ import annotations

import copy
import functools
import gzip
import os
from typing import Any, Dict, List

import jsonschema
import yaml

CRD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'kubeflow_crds')
CRD_FILES = {
    ('trainer.kubeflow.org/v1alpha1', 'TrainJob'): 'v2.3.0-trainer.kubeflow.org_trainjobs.yaml.gz',
    ('trainer.kubeflow.org/v1alpha1', 'ClusterTrainingRuntime'):
        'v2.3.0-trainer.kubeflow.org_clustertrainingruntimes.yaml.gz',
    ('kubeflow.org/v1', 'TFJob'): 'v1.9.4-kubeflow.org_tfjobs.yaml.gz',
}


def _strict(schema: Dict[str, Any], top: bool = True, strict: bool = True) -> Dict[str, Any]:
  schema = dict(schema)
  if schema.get('nullable') and 'type' in schema:
    schema['type'] = [schema['type'], 'null']
  if 'properties' in schema:
    schema['properties'] = {
        key: ({'type': 'object'} if top and key == 'metadata' else _strict(value, False, strict))
        for key, value in schema['properties'].items()}
  if isinstance(schema.get('additionalProperties'), dict):
    schema['additionalProperties'] = _strict(schema['additionalProperties'], False, strict)
  if isinstance(schema.get('items'), dict):
    schema['items'] = _strict(schema['items'], False, strict)
  for key in ('allOf', 'anyOf', 'oneOf'):
    if key in schema:
      schema[key] = [_strict(s, False, strict) for s in schema[key]]
  if (strict and schema.get('type') == 'object' and 'additionalProperties' not in schema
      and not schema.get('x-kubernetes-preserve-unknown-fields')):
    schema['additionalProperties'] = False
  return schema


@functools.lru_cache(maxsize=None)
def _validator(api_version: str, kind: str, strict: bool) -> jsonschema.Draft7Validator:
  file_name = CRD_FILES[(api_version, kind)]
  with gzip.open(os.path.join(CRD_DIR, file_name), 'rt', encoding='utf-8') as f:
    crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
  group, version = api_version.rsplit('/', 1)
  assert crd['spec']['group'] == group and crd['spec']['names']['kind'] == kind, file_name
  served = [v for v in crd['spec']['versions'] if v['name'] == version and v.get('served')]
  assert served, f'{file_name} serves no version {version}'
  schema = _strict(copy.deepcopy(served[0]['schema']['openAPIV3Schema']), strict=strict)
  jsonschema.Draft7Validator.check_schema(schema)
  return jsonschema.Draft7Validator(schema)


def crd_errors(manifest: Dict[str, Any], strict: bool = True) -> List[str]:
  """Every way `manifest` fails its CRD's schema, as 'path: message' (empty when valid).
  `strict=False`: unknown fields pass (the API server's default for API clients prunes them
  with a warning, fieldValidation=Warn); types, enums and required fields are still checked."""
  validator = _validator(manifest.get('apiVersion'), manifest.get('kind'), strict)
  return sorted(f'{"/".join(str(p) for p in error.absolute_path) or "(root)"}: {error.message}'
                for error in validator.iter_errors(manifest))
