"""The steps of the nightly retraining job, one typed function per step over paths and URIs.

``fetch`` (dataset from S3, a DVC repository or a folder), ``features`` (feature cache), ``train``, ``evaluate`` and
``register`` (MLflow model registry, champion/challenger). Each is a top-level function with plain arguments that
returns a small dict, so the same code runs from ``python -m components``, from ``dvc repro`` and inside a
Kubeflow pipeline. MLflow is imported only inside the functions that use it.
"""
