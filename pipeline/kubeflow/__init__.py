"""Kubeflow Pipelines: the compiled spec (`compiler`), the container entrypoint every step of
it runs (`entrypoint`), and uploading, running and scheduling it (`client`).

What each piece adapts, and why, with the backend code it answers to: docs/kubeflow.md.
"""
