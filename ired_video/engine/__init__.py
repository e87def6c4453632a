"""Training and evaluation on accelerate (``train``, ``evaluate``) and their config."""
from ired_video.engine.config import TrainConfig, load_train_config
from ired_video.engine.evaluate import evaluate
from ired_video.engine.train import TrainingError, train

__all__ = ["TrainConfig", "TrainingError", "evaluate", "load_train_config", "train"]
