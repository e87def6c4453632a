"""TimeSformer models, named variants and weight loading (``ired_video.build.create_model`` builds
them with their reducers)."""
from ired_video.models.registry import VARIANTS, list_models
from ired_video.models.timesformer import ForwardInfo, TimeSformer
from ired_video.models.weights import CheckpointError, load_checkpoint, load_weights, save_checkpoint

__all__ = ["VARIANTS", "CheckpointError", "ForwardInfo", "TimeSformer", "list_models",
           "load_checkpoint", "load_weights", "save_checkpoint"]
