"""Processors the VLA policy needs beyond what transformers registers on this machine.

Imported by the VLA loader for its side effect: where torchvision is missing (it does not import beside
the CPU torch wheel), Qwen2.5-VL's stock processor cannot be built, so an image-only one is registered for
its config class. A VLA only sees images; image handling is inherited unchanged.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin
from transformers.utils import is_torchvision_available

__all__ = ["Qwen2_5_VLImageOnlyProcessor"]


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor.

    Why: the stock processor requires a video processor, and every video processor needs torchvision, which
    cannot be installed beside the CPU torch here. A VLA only sees images, and image handling (patching,
    ``image_grid_thw``, ``<|image_pad|>`` expansion, ``mm_token_type_ids``) is inherited unchanged. The
    sub-processors are read off ``__init__``'s signature, so dropping the argument drops the video part from
    construction, ``save_pretrained`` and ``from_pretrained``.
    """

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any
    ):
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


# ``AutoProcessor.from_pretrained`` resolves ``processor_class`` through registered classes. Only claim the
# Qwen2.5-VL config where the stock processor cannot load anyway (no torchvision).
if not is_torchvision_available():
    AutoProcessor.register(Qwen2_5_VLConfig, Qwen2_5_VLImageOnlyProcessor, exist_ok=True)
