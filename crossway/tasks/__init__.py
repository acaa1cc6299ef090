"""Tasks: what goes in and comes out of a model. Each module satisfies training.task.Task; `TASKS` maps the
configuration's `task` to its class, whose constructor reads and checks the data: Task(cfg, codecs, log)."""

from crossway.tasks.image_text import ImageTextTask
from crossway.tasks.pretrain import PretrainTask
from crossway.tasks.segmentation import SegmentationTask
from crossway.tasks.speech import SpeechTask
from crossway.tasks.text import TextTask

TASKS = {"text": TextTask, "segmentation": SegmentationTask, "image_to_text": ImageTextTask,
         "speech": SpeechTask, "pretrain": PretrainTask}

__all__ = ["TASKS", "ImageTextTask", "PretrainTask", "SegmentationTask", "SpeechTask", "TextTask"]
