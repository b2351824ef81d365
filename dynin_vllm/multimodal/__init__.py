"""Media codecs for Dynin-Omni: MAGVIT-v2 images/video and EMOVA speech.

Pure-torch re-implementations whose ``state_dict`` names and shapes equal the
upstream checkpoints (``snu-aidas/magvitv2``, ``snu-aidas/emova_speech_tokenizer_hf``),
so the real weight files load without renaming.

Importing this package is cheap: the submodules (which import torch, PIL, cv2,
soundfile, ...) are loaded only when used:

* :mod:`dynin_vllm.multimodal.ids` -- image/speech code <-> vocabulary id mapping.
* :mod:`dynin_vllm.multimodal.media` -- image, video and audio loading and
  pre/post-processing (:class:`~dynin_vllm.multimodal.media.MediaError`).
* :mod:`dynin_vllm.multimodal.magvit2` -- the MAGVIT-v2 network.
* :mod:`dynin_vllm.multimodal.image_tokenizer` -- images/video -> codes -> images.
* :mod:`dynin_vllm.multimodal.emova` -- the EMOVA speech tokenizer
  (speech -> units -> 22.05 kHz waveform).
* :mod:`dynin_vllm.multimodal.loading` -- checkpoint resolution and strict loading.
"""
