"""Attention visualisation: maps from each method's `attention()`, drawn over the original image, scored.

Modules: `geometry` (input crop <-> original image), `maps` (attention() -> per-image records), `render` and
`panels` (matplotlib figures), `scoring` (pointing game, energy inside a mask), `html` (the contact sheet),
`run` (the `fgcli attention-viz` pipeline: `fgcli.tasks.attention_viz.attention_viz`).
"""
