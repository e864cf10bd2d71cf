"""Batch jobs over folders of images (and generated indices), offline: no gRPC here.

``store`` (inputs, manifest, atomic writes), ``job`` (a task object bound to a model and the
job's options: what every engine runs), ``engine`` (the local pipelined engine), ``ray_engine``
(Ray Data). What is specific to a task lives in its task object (models/<task>.py).
"""
