"""Video data: annotations, clip sampling, decoding, transforms, datasets and demo data.

Read a clip's path from top to bottom: ``annotations`` (which files, which labels) ->
``sampling`` (which frame indices) -> ``decoding`` (those frames as uint8, decord or PyAV)
-> ``transforms`` (scale, crop, flip, normalise) -> ``dataset`` (one item per view).
"""
