"""Recipes: scripts that build things with `flexip` (the demo model set in `recipes/demo/`), run from the
repository root as `python -m recipes.<name>.<module>`. Not part of the installed package; the library never
imports them."""
