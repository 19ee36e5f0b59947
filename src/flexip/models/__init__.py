"""FlexIP's trainable parts: the two adapters, the gate, and the gated cross-attention, one concept a module."""
