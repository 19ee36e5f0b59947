"""The kinds of denoiser FlexIP joins, one module each (docs/decisions/denoisers.md): the UNet with
cross-attention of Stable Diffusion 1.5 and SDXL, and FLUX.1's transformer. `registry` lists them;
`denoiser.py` is the interface."""
