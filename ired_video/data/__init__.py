"""Video data: annotations, clip sampling, decoding, transforms, datasets and demo data.

Read a clip's path from top to bottom: ``annotations`` (which files, which labels) ->
``sampling`` (which frame indices) -> ``decoding`` (those frames as uint8, decord or PyAV)
-> ``transforms`` (scale, crop, flip, normalise) -> ``dataset`` (one item per view).
``checking`` finds bad files offline; ``demo`` writes the generated dataset; ``video_io``
writes MP4 files.
"""
from ired_video.data.annotations import Annotations, VideoRecord, load_annotations
from ired_video.data.checking import load_check_report
from ired_video.data.dataset import BadFileTracker, VideoDataset
from ired_video.data.decoding import DecodeError, read_clip
from ired_video.data.sampling import ClipSample, DenseSampler, SegmentSampler, make_sampler
from ired_video.data.video_io import write_video

__all__ = ["Annotations", "BadFileTracker", "ClipSample", "DecodeError", "DenseSampler",
           "SegmentSampler", "VideoDataset", "VideoRecord", "load_annotations",
           "load_check_report", "make_sampler", "read_clip", "write_video"]
