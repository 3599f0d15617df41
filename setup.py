"""mtl-pipeline: a TFX / Kubeflow pipeline for multi-task recommendation models."""

from setuptools import find_packages, setup

setup(
    name='mtl-pipeline',
    version='0.1.0',
    description='Batch training pipeline for multi-task recommendation models (TFX, KFP).',
    python_requires='>=3.10,<3.11',
    packages=find_packages(include=['pipeline', 'pipeline.*', 'components', 'components.*',
                                    'trainer', 'trainer.*']),
    package_data={'': ['*.yaml', '*.pbtxt']},
    # Exact versions live in requirements/lock.txt; these are the direct dependencies.
    install_requires=[
        'tfx[kfp]==1.16.0',
        'apache-beam[gcp]==2.59.0',
        'tensorflow-serving-api==2.16.1',
        'pyyaml',
    ],
    entry_points={'console_scripts': ['mtlp=pipeline.cli:main']},
)
