"""Generation with the preservation dial: `FlexIPPipeline` (SD1.5) and `FlexIPXLPipeline` (SDXL) in
`pipeline.py`, and FlexIP on stock diffusers pipelines (`stock.py`: `load_flexip`, `unload_flexip`)."""
