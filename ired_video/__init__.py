"""ired_video: TimeSformer video transformers with spatiotemporal token reducers."""
from ired_video.config import ConfigError, DataConfig, ModelConfig, ReducerConfig
from ired_video.models import (
                               CheckpointError,
                               ForwardInfo,
                               TimeSformer,
                               create_model,
                               list_models,
                               load_weights,
                               save_checkpoint,
)
from ired_video.reducers import REDUCERS, apply_reducer

__version__ = "0.1.0"

__all__ = ["REDUCERS", "CheckpointError", "ConfigError", "DataConfig", "ForwardInfo", "ModelConfig",
           "ReducerConfig", "TimeSformer", "apply_reducer", "create_model", "list_models", "load_weights",
           "save_checkpoint", "__version__"]
