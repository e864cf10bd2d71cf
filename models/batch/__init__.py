"""Batch jobs over folders of images (and generated indices), offline: no gRPC here.

``store`` (inputs, manifest, atomic writes), ``tasks`` + ``image_tasks`` + ``generation_task``
(the per-task functions), ``engine`` (the local pipelined engine), ``ray_engine`` (Ray Data).
"""
