"""FlexIP's trainable parts: the two adapters, the gate, and the gated cross-attention."""

from .adapter import FlexIPAdapter, FlexIPConfig
from .attention import FlexIPAttnProcessor, FlexIPCondition
from .gate import MODALITIES, DynamicWeightGate

__all__ = ["MODALITIES", "DynamicWeightGate", "FlexIPAdapter", "FlexIPAttnProcessor", "FlexIPCondition", "FlexIPConfig"]
