"""TimeSformer models, named variants and weight loading."""
from ired_video.models.registry import VARIANTS, create_model, list_models
from ired_video.models.timesformer import ForwardInfo, TimeSformer
from ired_video.models.weights import CheckpointError, load_checkpoint, load_weights, save_checkpoint

__all__ = ["VARIANTS", "CheckpointError", "ForwardInfo", "TimeSformer", "create_model", "list_models",
           "load_checkpoint", "load_weights", "save_checkpoint"]
