"""ired_video: TimeSformer video transformers with spatiotemporal token reducers."""
from ired_video.config import DataConfig, ModelConfig

__version__ = "0.1.0"

__all__ = ["DataConfig", "ModelConfig", "__version__"]
