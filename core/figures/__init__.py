"""Plotly figure builders: data in, go.Figure out (no Streamlit here). Drawing
only: images are converted in core.images, tap names shortened by core.probe."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.data.images import to_uint8
from core.models.probe import short_names

CKA_SCALE = "Viridis"
FONT = "Inter, Helvetica, Arial, sans-serif"


def _stages(layers: Sequence[str]) -> list[str]:
    """The stage of each tap: the stage of its block (layer1 of layer1.0.conv1, block1
    of block1.layer.2.bn1, layer.0 of layer.0.block.3.conv_0, features of features.3),
    'stem' before the first block, 'head' after the last (pool, final activation,
    logits)."""
    stages: list[str] = []
    for layer in layers:
        found = re.match(r"(.*?)\.(\d+)(\.|$)", layer)
        if re.fullmatch(r"(layer|block)\d+", layer):        # a stage module itself
            stages.append(layer)
        elif found is None:
            stages.append("head" if any(s not in ("stem", "head") for s in stages) else "stem")
        elif re.search(r"\d", found.group(1)):
            stages.append(re.sub(r"\.(layer|block)$", "", found.group(1)))
        elif layer[found.end(2):].startswith(".block"):     # DeepMind's layer.N.block.M
            stages.append(f"{found.group(1)}.{found.group(2)}")
        else:
            stages.append(found.group(1))
    return stages


def _ticks(layers: Sequence[str]) -> tuple[list[float], list[str], list[float]]:
    """Tick positions and labels for an axis of taps: every tap when there are few,
    else one label per stage (the full name is in the hover); stage boundaries."""
    stages = _stages(layers)
    bounds = [i - 0.5 for i in range(1, len(layers)) if stages[i] != stages[i - 1]]
    if len(layers) <= 16:
        return list(range(len(layers))), short_names(layers), bounds
    edges = [-0.5] + bounds + [len(layers) - 0.5]
    mids = [(lo + hi) / 2 for lo, hi in zip(edges, edges[1:])]
    names = [stages[int(lo + 0.5)] for lo in edges[:-1]]
    return mids, names, bounds


def click_layer(xs: Sequence, ys: Sequence, customdata: np.ndarray, hovertemplate: str,
                size: float) -> go.Scatter:
    """Near-invisible square markers on every cell: Streamlit selects scatter points on
    click (not heatmap cells), so the cells become clickable; customdata[:2] = (row, col)."""
    return go.Scatter(x=list(xs), y=list(ys), mode="markers", customdata=customdata,
                      marker=dict(symbol="square", size=size, opacity=0.01, color="#000"),
                      hovertemplate=hovertemplate, showlegend=False,
                      selected=dict(marker=dict(opacity=0.01)),
                      unselected=dict(marker=dict(opacity=0.01)))


def _centred(title: str) -> dict:
    """A figure title centred over the figure: Streamlit's theme anchors titles at their
    left end, so x=0.5 alone starts them mid-figure and runs long ones past its edge."""
    return dict(text=title, x=0.5, xanchor="center")


@dataclass(frozen=True)
class Scale:
    """A similarity matrix's colours: the measure's name, a fixed range, and whether
    low values are the similar ones (a distance: its colours run the other way)."""
    label: str = "CKA"
    low: float = 0.0
    high: float = 1.0
    distance: bool = False


def cka_heatmap(matrix: np.ndarray, layers_a: Sequence[str], layers_b: Sequence[str],
                title: str = "", name_a: str = "model A", name_b: str = "model B",
                spread: np.ndarray | None = None, selected: tuple[int, int] | None = None,
                big: bool = False, height: int | None = None, scale: Scale = Scale()
                ) -> go.Figure:
    """Layer x layer CKA (or another measure, `scale`): model A's layers on y (first
    layer at the bottom), model B's on x, a fixed colour scale, layer names in the hover;
    a click on a cell selects it (customdata[:2] of the selected point = row, column)."""
    fig = go.Figure()
    trace = _cka_trace(matrix, layers_a, layers_b, name_a, name_b, spread, scale=scale)
    trace.hoverinfo, trace.hovertemplate = "skip", None  # the click layer hovers instead
    fig.add_trace(trace)
    m = np.asarray(matrix, dtype=float)
    sp = np.full_like(m, np.nan) if spread is None else np.asarray(spread, dtype=float)
    ii, jj = (g.ravel() for g in np.meshgrid(range(len(layers_a)), range(len(layers_b)),
                                            indexing="ij"))
    custom = np.stack([ii, jj, np.array(layers_a, dtype=object)[ii],
                       np.array(layers_b, dtype=object)[jj], m.ravel(), sp.ravel()], axis=1)
    fig.add_trace(click_layer(
        jj, ii, custom,
        f"{name_a}: %{{customdata[2]}}<br>{name_b}: %{{customdata[3]}}<br>"
        f"{scale.label} %{{customdata[4]:.3f}} ± %{{customdata[5]:.3f}}<extra></extra>",
        size=max(4.0, (height or (600 if big else 420)) * 0.8 / max(len(layers_a), len(layers_b)))))
    _style_cka(fig, layers_a, layers_b, name_a, name_b, title, big)
    if height:
        fig.update_layout(height=height)
    if selected is not None:
        i, j = selected
        fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                      line=dict(color="#ef4444", width=3))
    return fig


def _cka_trace(matrix, layers_a, layers_b, name_a, name_b, spread, showscale=True,
               scale: Scale = Scale()) -> go.Heatmap:
    m = np.asarray(matrix, dtype=float)
    sp = np.full_like(m, np.nan) if spread is None else np.asarray(spread, dtype=float)
    custom = np.dstack([np.broadcast_to(np.array(layers_a, dtype=object)[:, None], m.shape),
                        np.broadcast_to(np.array(layers_b, dtype=object)[None, :], m.shape),
                        sp])
    return go.Heatmap(
        z=m, x=list(range(len(layers_b))), y=list(range(len(layers_a))),
        zmin=scale.low, zmax=scale.high, colorscale=CKA_SCALE, reversescale=scale.distance,
        customdata=custom, showscale=showscale,
        colorbar=dict(title=scale.label.replace(" ", "<br>", 1), thickness=14),
        hovertemplate=(f"{name_a}: %{{customdata[0]}}<br>{name_b}: %{{customdata[1]}}"
                       f"<br>{scale.label} %{{z:.3f}} ± %{{customdata[2]:.3f}}<extra></extra>"))


def _style_cka(fig, layers_a, layers_b, name_a, name_b, title, big, row=None, col=None):
    kw = {} if row is None else {"row": row, "col": col}
    xv, xt, xb = _ticks(layers_b)
    yv, yt, yb = _ticks(layers_a)
    fig.update_xaxes(title_text=name_b, tickmode="array", tickvals=xv, ticktext=xt,
                     tickangle=-60 if len(layers_b) <= 16 else 0, constrain="domain",
                     constraintoward="right" if row is None else "center",
                     range=[-0.5, len(layers_b) - 0.5], showgrid=False, zeroline=False, **kw)
    fig.update_yaxes(title_text=name_a, tickmode="array", tickvals=yv, ticktext=yt,
                     scaleanchor="x" if row is None else None, constrain="domain",
                     range=[-0.5, len(layers_a) - 0.5], showgrid=False, zeroline=False, **kw)
    line = dict(color="rgba(255,255,255,0.55)", width=1)
    ref = {} if row is None else {"xref": f"x{col if col > 1 else ''}",
                                  "yref": f"y{col if col > 1 else ''}"}
    for b in xb:
        fig.add_shape(type="line", x0=b, x1=b, y0=-0.5, y1=len(layers_a) - 0.5, line=line, **ref)
    for b in yb:
        fig.add_shape(type="line", y0=b, y1=b, x0=-0.5, x1=len(layers_b) - 0.5, line=line, **ref)
    size = 20 if big else 13
    top = (50 + size * 1.4 * title.count("<br>")) if title else 20   # a line per <br>
    fig.update_layout(title=_centred(title), font=dict(family=FONT, size=size),
                      margin=dict(l=10, r=10, t=top, b=10), height=720 if big else 520)


def cka_panels(panels: list[dict], big: bool = False, height: int | None = None,
               scale: Scale = Scale()) -> go.Figure:
    """The paper view: several CKA (or `scale`'s measure) matrices side by side with one
    colour bar. Each panel: {matrix, layers_a, layers_b, title, name_a, name_b, spread}."""
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p["title"] for p in panels],
                        horizontal_spacing=0.06)
    for k, p in enumerate(panels, start=1):
        fig.add_trace(_cka_trace(p["matrix"], p["layers_a"], p["layers_b"], p["name_a"],
                                 p["name_b"], p.get("spread"), showscale=k == len(panels),
                                 scale=scale),
                      row=1, col=k)
        _style_cka(fig, p["layers_a"], p["layers_b"], p["name_a"], p["name_b"], "", big,
                   row=1, col=k)
        if k > 1 and list(p["layers_a"]) == list(panels[0]["layers_a"]):
            # same rows as the first panel: its labels serve all, and a square panel's
            # own labels would sit over its left neighbour (the subtitle names the models)
            fig.update_yaxes(showticklabels=False, title_text="", row=1, col=k)
    fig.update_layout(height=height or (560 if big else 430), margin=dict(l=10, r=10, t=60, b=10),
                      font=dict(family=FONT, size=18 if big else 12))
    return fig


def diagonal_profile(series: list[tuple[str, Sequence[str], np.ndarray]], big: bool = False,
                     height: int | None = None) -> go.Figure:
    """CKA of each layer with the same layer of another model (the diagonal)."""
    fig = go.Figure()
    for name, layers, values in series:
        fig.add_trace(go.Scatter(x=short_names(layers), y=values,
                                 mode="lines+markers", name=name))
    fig.update_layout(yaxis=dict(range=[0, 1.02], title="CKA"), xaxis_title="layer",
                      height=height or (360 if not big else 480),
                      font=dict(family=FONT, size=18 if big else 12),
                      margin=dict(l=10, r=10, t=30, b=10),
                      # above the plot: below it, in a narrow column, it covers the x axis
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


def matrix_heatmap(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str = "",
                   zmin: float = 0.0, zmax: float = 1.0, fmt: str = ".0%", colorscale: str = "RdYlGn",
                   hover: np.ndarray | None = None, big: bool = False,
                   selected: tuple[int, int] | None = None, height: int | None = None) -> go.Figure:
    """A labelled grid with the value written in each cell (stitching matrix)."""
    v = np.asarray(values, dtype=float)
    text = [[("–" if np.isnan(x) else format(x, fmt)) for x in row] for row in v]
    fig = go.Figure(go.Heatmap(
        z=v, x=list(cols), y=list(rows), zmin=zmin, zmax=zmax, colorscale=colorscale,
        text=text, texttemplate="%{text}", textfont=dict(size=18 if big else 12),
        hoverinfo="skip", colorbar=dict(thickness=14, tickformat=fmt)))
    ii, jj = (g.ravel() for g in np.meshgrid(range(len(rows)), range(len(cols)), indexing="ij"))
    tips = np.array(text, dtype=object).ravel() if hover is None else np.asarray(hover, dtype=object).ravel()
    custom = np.stack([ii, jj, tips], axis=1)
    fig.add_trace(click_layer(np.array(cols, dtype=object)[jj], np.array(rows, dtype=object)[ii],
                              custom, "%{y} → %{x}<br>%{customdata[2]}<extra></extra>",
                              size=44 if big else 34))
    # explicit categories: the grid and its labels show even before any cell is computed
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=list(cols),
                     range=[-0.5, len(cols) - 0.5])
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=list(rows),
                     range=[len(rows) - 0.5, -0.5])
    fig.update_layout(plot_bgcolor="#f3f4f6")
    fig.update_layout(title=_centred(title), height=height or max(260, 70 * len(rows) + 140),
                      font=dict(family=FONT, size=18 if big else 12),
                      margin=dict(l=10, r=10, t=50 if title else 20, b=10))
    if selected is not None:
        i, j = selected
        fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                      line=dict(color="#111827", width=3))
    return fig


def curve(xs: Sequence[float], ys: dict[str, Sequence[float]], x_title: str, y_title: str,
          log_y: bool = False, big: bool = False, height: int | None = None) -> go.Figure:
    fig = go.Figure()
    for name, y in ys.items():
        fig.add_trace(go.Scatter(x=list(xs), y=list(y), mode="lines", name=name))
    fig.update_layout(xaxis_title=x_title, yaxis_title=y_title,
                      height=height or (300 if not big else 420),
                      yaxis_type="log" if log_y else None, font=dict(family=FONT, size=18 if big else 12),
                      margin=dict(l=10, r=10, t=30, b=10),
                      # above the plot: below it, in a narrow column, it covers the x axis
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


def upscale(img, factor: int = 6, most: int = 512) -> np.ndarray:
    """An image drawn `factor` times larger (at most `most` px, never smaller),
    nearest-neighbour, so that 32x32 images stay crisp on a projector."""
    a = to_uint8(img)
    factor = max(1, min(factor, most // max(a.shape[:2])))
    return a.repeat(factor, axis=0).repeat(factor, axis=1)
