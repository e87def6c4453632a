"""ired_video: TimeSformer video transformers with spatiotemporal token reducers."""
from ired_video.config import ConfigError, DataConfig, ModelConfig
from ired_video.models import (CheckpointError, ForwardInfo, TimeSformer, create_model, list_models,
                               load_weights, save_checkpoint)

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "DataConfig", "ForwardInfo", "ModelConfig", "TimeSformer",
           "create_model", "list_models", "load_weights", "save_checkpoint", "__version__"]
