"""Figures for files, without pyplot: the caller's matplotlib backend is never switched.

`matplotlib.use("Agg")` inside a library call turns off inline plots in a notebook for the rest
of the session; an object-oriented Figure with its own Agg canvas draws the same PNG and touches
no global state.
"""

from jaxrec import files


def figure(figsize=(6.0, 3.5)):
  """A matplotlib Figure with its own Agg canvas (not registered with pyplot)."""
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  fig = figure_lib.Figure(figsize=figsize)
  backend_agg.FigureCanvasAgg(fig)
  return fig


def save_png(fig, path: str, dpi: int = 100) -> str:
  """Writes fig to path as PNG atomically (temp name, then rename); returns path."""
  files.write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
  return path
