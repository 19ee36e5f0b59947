"""Base-model families FlexIP runs on: Stable Diffusion 1.5 and SDXL, one module each
(docs/decisions/families.md); `registry` lists them and finds a base model's family."""
