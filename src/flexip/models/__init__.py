"""FlexIP's trainable parts: the two adapters, the gate, and the gated cross-attention."""

from .adapter import FlexIPAdapter
from .condition import FlexIPCondition
from .config import FlexIPConfig
from .gate import MODALITIES, DynamicWeightGate
from .processor import FlexIPAttnProcessor

__all__ = ["MODALITIES", "DynamicWeightGate", "FlexIPAdapter", "FlexIPAttnProcessor", "FlexIPCondition", "FlexIPConfig"]
