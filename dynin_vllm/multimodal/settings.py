"""Media-understanding settings: ``mm_processor_kwargs`` keys and defaults.

Set per server with ``--mm-processor-kwargs``, per request with
``mm_processor_kwargs`` (see ``dynin_vllm.multimodal.processor``). Kept apart
so that the engine's config hook reads them without importing the processor.
"""

from __future__ import annotations

#: Image resolution (square, multiple of 16): upstream's 336 (441 codes).
RESOLUTION_KEY = "image_resolution"
DEFAULT_RESOLUTION = 336
MAX_RESOLUTION = 512
#: Video frame resolution: 224 (196 codes per frame), as upstream's v2t.
VIDEO_RESOLUTION_KEY = "video_resolution"
DEFAULT_VIDEO_RESOLUTION = 224
#: Frames sampled per video, as upstream's ``_load_video_tokens``.
VIDEO_FRAMES_KEY = "video_num_frames"
DEFAULT_VIDEO_FRAMES = 5
MAX_VIDEO_FRAMES = 32
