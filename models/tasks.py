"""The one registry of tasks: name -> task object (models/task.py), an explicit table.

A new task is its module (models/<task>.py, defining the task object) and one line here.
"""

from __future__ import annotations

from models.captioning import CAPTIONING
from models.classification import CLASSIFICATION
from models.detection import DETECTION
from models.generation import GENERATION
from models.registry import Registry
from models.segmentation import SEGMENTATION
from models.task import Task

TASKS: Registry[Task] = Registry("task")
for _task in (DETECTION, SEGMENTATION, CAPTIONING, GENERATION, CLASSIFICATION):
    TASKS.add(_task.name, _task)


def get_task(name: str) -> Task:
    """The task called ``name``; UnknownModelError lists the known ones."""
    return TASKS.get(name)
