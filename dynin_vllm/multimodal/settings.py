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

#: Speech recognition. Audio reaches EMOVA S2U as 16 kHz mono; it makes one
#: unit per 40 ms (640 samples) before repeats are collapsed.
AUDIO_SAMPLE_RATE = 16000
SAMPLES_PER_UNIT = 640
#: Longest audio in one prompt: 512 units (20.48 s), upstream's
#: ``max_aud_length`` (its training pads the audio block to 512 + 1).
MAX_AUDIO_UNITS = 512
MAX_AUDIO_SAMPLES = MAX_AUDIO_UNITS * SAMPLES_PER_UNIT
MAX_AUDIO_SECONDS = MAX_AUDIO_SAMPLES / AUDIO_SAMPLE_RATE
#: The instruction of a transcription request without a ``prompt``: the first
#: of upstream's ``S2T_INSTRUCTION`` list.
ASR_INSTRUCTION = "Transcribe the given audio."
#: Answer slots of a speech-recognition request that does not bound
#: ``max_tokens``: upstream's ``validation/speech.py`` default.
ASR_ANSWER_LENGTH = 128
