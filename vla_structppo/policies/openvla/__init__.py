"""OpenVLA natively (no remote code, no timm): the model, its processor, its checkpoint files."""

from .modeling import IMAGE_TOKEN_ID, OpenVLAConfig, OpenVLAForActionPrediction
from .processing import OpenVLAImageProcessor, OpenVLAProcessor
from .weights import load_openvla, read_openvla_config, save_openvla

__all__ = ["IMAGE_TOKEN_ID", "OpenVLAConfig", "OpenVLAForActionPrediction", "OpenVLAImageProcessor",
           "OpenVLAProcessor", "load_openvla", "read_openvla_config", "save_openvla"]
