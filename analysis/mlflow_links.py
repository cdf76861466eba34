"""Links from the report's phase diagram to the trials' runs in the MLflow UI.

Every trial's run carries the tag `cell` (the key of its config without the seed), so one
heatmap cell of the phase diagram is one search of the sweep's experiment: `tags.cell = '<key>'`.
`runs_url` writes the UI address of that search; `phase_areas` finds, for each heatmap cell,
where it lands in the saved phase.png (savefig with bbox_inches="tight" crops and shifts the
figure, so the positions come from the figure's own transforms and its tight bounding box at
the saving dpi); `image_map` turns both into an HTML `<map>` for the embedded image.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pandas as pd

from sweeps.fit.phase_fit import fmt

from .phase import position, sorted_values
from .plots import _groups

UI_PORT = 5000  # what `minima ui` serves on by default (minima/cli.py), bound to 127.0.0.1
LOCAL_UI = f"http://127.0.0.1:{UI_PORT}"
# MLflow 3's UI opens on its GenAI view unless the address asks for the other (minima/cluster_cli.py UI_START)
WORKFLOW = "workflowType=machine_learning"
SAVE_DPI = 130  # analysis.plots.save
RUN_NAME_ORDER = "tags.`mlflow.runName`"  # the UI's own key for "Sort: Run Name"


def ui_base(tracking_uri: str | None) -> str:
    """Where the MLflow UI for a tracking store is: an http(s) tracking server serves it itself
    (its address without any user:password@, query or fragment); a local store (sqlite, file,
    a path) is what `minima ui` serves, on 127.0.0.1:5000."""
    parts = urlsplit(tracking_uri or "")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return LOCAL_UI
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"  # an IPv6 literal keeps its brackets
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


def search_filter(cell: str) -> str:
    """The MLflow search that finds a cell's trial runs. A cell key is 12 hex digits; anything
    that would need quoting inside the filter is refused rather than escaped."""
    if not cell or "'" in cell or "\\" in cell:
        raise ValueError(f"{cell!r}: not a cell key")
    return f"tags.cell = '{cell}'"


def _url(ui_base: str, experiment_id: str, search: str) -> str:
    # Sorted by run name: with the UI's default sort (Created) and a filter, MLflow also fetches
    # the parent run and folds the matching runs under it, collapsed; sorted by any other key it
    # lists just the runs that match.
    return (f"{ui_base.rstrip('/')}/#/experiments/{quote(str(experiment_id), safe='')}/runs"
            f"?searchFilter={quote(search, safe='')}&orderByKey={quote(RUN_NAME_ORDER, safe='')}&orderByAsc=true"
            f"&{WORKFLOW}")


def runs_url(ui_base: str, experiment_id: str, cell: str) -> str:
    """The MLflow UI address that opens an experiment's runs table filtered to one cell's runs
    (MLflow 3.17: the hash route /experiments/<id>/runs with its `searchFilter` query parameter;
    sorted by run name, so the runs are listed flat, not folded under the sweep's parent run;
    and workflowType=machine_learning, so the UI shows training runs, not its GenAI view)."""
    return _url(ui_base, experiment_id, search_filter(cell))


def run_ids_url(ui_base: str, experiment_id: str, run_ids: list[str]) -> str:
    """`runs_url` for a set of runs by id: for a heatmap cell that pools several config cells
    (MLflow's search has no OR, and no IN for tags, but `attributes.run_id IN (...)`)."""
    if not run_ids or any(not r.isalnum() for r in run_ids):
        raise ValueError(f"{run_ids!r}: not MLflow run ids")
    return _url(ui_base, experiment_id, f"attributes.run_id IN ({', '.join(repr(str(r)) for r in run_ids)})")


def _local_store_missing(tracking_uri: str) -> bool:
    """A sqlite or file store whose file is not there: MLflow's client would create an empty one."""
    parts = urlsplit(tracking_uri)
    scheme = parts.scheme.lower()
    if scheme.startswith("sqlite"):
        path = unquote(tracking_uri.split(":///", 1)[1]) if ":///" in tracking_uri else ""
        return path not in ("", ":memory:") and not Path(path).exists()
    if scheme == "file":
        return not Path(unquote(parts.path)).exists()
    if scheme == "" or (len(scheme) == 1 and tracking_uri[1:3] in (":\\", ":/")):  # a plain path (or C:\...)
        return not Path(tracking_uri).exists()
    return False


def experiment_id(tracking_uri: str | None, sweep_name: str) -> str | None:
    """The id of the sweep's experiment in the tracking store; None when the store cannot be
    reached or holds no such experiment (a report is still written, without links). A local
    store that does not exist is not created."""
    if not tracking_uri or _local_store_missing(tracking_uri):
        return None
    try:
        from sweeps.tracking.mlflow_runs import quick_client

        experiment = quick_client(tracking_uri, max_retries=0, timeout_s=10).get_experiment_by_name(sweep_name)
    except Exception:  # unreachable, refused, not a store: the links are a convenience
        return None
    return None if experiment is None else str(experiment.experiment_id)


@dataclass(frozen=True)
class CellArea:
    """One heatmap cell of the phase diagram: its coordinates, where it is in the saved PNG
    (pixels, origin top left: left, top, right, bottom; the right and bottom edges are the next
    cell's left and top), the config cells (`cell` keys) whose trials it shows, most trials
    first (one when x, y and by cover every axis the sweep varies), and its trials' MLflow run
    ids when the export found them all (else empty)."""

    by: dict[str, Any]
    y: Any
    x: Any
    box: tuple[int, int, int, int]
    cells: tuple[str, ...] = field(default=())
    run_ids: tuple[str, ...] = field(default=())

    def label(self, x: str, y: str) -> str:
        return ", ".join([*(f"{k}={fmt(v)}" for k, v in self.by.items()), f"{y}={fmt(self.y)}", f"{x}={fmt(self.x)}"])


def _key(values) -> tuple[str, ...]:
    return tuple(fmt(v) for v in values)


def cell_members(labelled: pd.DataFrame, x: str, y: str, by: list[str]
                 ) -> dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]]:
    """(by..., y, x) as labels (`fmt`) -> (the `cell` keys of the trials there, most trials
    first; their `mlflow_run_id`s, sorted, or () unless every trial there has one)."""
    if "cell" not in labelled.columns:
        return {}
    out = {}
    for values, rows in labelled.groupby([*by, y, x], dropna=False):
        counts = rows["cell"].dropna().value_counts()
        cells = tuple(sorted(counts.index, key=lambda c: (-counts[c], c)))
        ids = rows["mlflow_run_id"] if "mlflow_run_id" in rows else pd.Series([None] * len(rows))
        run_ids = tuple(sorted(ids)) if ids.notna().all() else ()
        out[_key(values if isinstance(values, tuple) else (values,))] = (cells, run_ids)
    return out


@contextmanager
def _at_dpi(fig, dpi: float):
    old = fig.dpi
    fig.set_dpi(dpi)
    try:
        yield
    finally:
        fig.set_dpi(old)


def saved_pixels(fig, dpi: float = SAVE_DPI, pad_inches: float | None = None):
    """A function from display coordinates (at `dpi`) to pixels of the PNG that
    `fig.savefig(dpi=dpi, bbox_inches="tight")` writes (origin top left), and that PNG's size
    (width, height). Draws the figure at `dpi`, as savefig does, to find the tight box."""
    import matplotlib as mpl

    pad = mpl.rcParams["savefig.pad_inches"] if pad_inches is None else pad_inches
    if not hasattr(fig.canvas, "get_renderer"):  # a closed pyplot figure: draw it with Agg, as savefig would
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    with _at_dpi(fig, dpi):
        fig.canvas.draw()
        tight = fig.get_tightbbox(fig.canvas.get_renderer()).padded(pad)
    x0, y0, height = tight.x0 * dpi, tight.y0 * dpi, tight.height * dpi

    def to_pixels(xd: float, yd: float) -> tuple[float, float]:
        return xd - x0, height - (yd - y0)

    return to_pixels, (int(tight.width * dpi), int(height))


def phase_areas(fig, labelled: pd.DataFrame, cells: pd.DataFrame, x: str, y: str, by: list[str],
                dpi: float = SAVE_DPI) -> list[CellArea]:
    """Where each heatmap cell of `analysis.plots.phase_figure(labelled, cells, ..., x, y, by, ...)`
    lands in the PNG `analysis.plots.save` writes of it, with the cell keys of its trials.

    Recomputes the figure's layout as phase_figure made it: one panel per `by` group, in
    groupby order, first in fig.axes; rows the sorted y labels, columns the sorted x values,
    cell (i, j) centred on data point (j, i). Call it before `save` (which closes the figure;
    its transforms still work after).
    """
    x_values = sorted_values(labelled[x])
    y_labels = [fmt(v) for v in sorted_values(labelled[y])]
    groups = [values for values, _ in _groups(labelled, by)]
    members = cell_members(labelled, x, y, by)
    to_pixels, (width, height) = saved_pixels(fig, dpi)
    with _at_dpi(fig, dpi):
        transforms = [ax.transData.frozen() for ax in fig.axes[:len(groups)]]
    out = []
    for transform, by_values in zip(transforms, groups):
        sub = cells
        for k, v in by_values.items():
            sub = sub[sub[k].map(fmt) == fmt(v)]
        for _, c in sub.iterrows():
            i, j = y_labels.index(fmt(c[y])), position(x_values, c[x])
            corners = transform.transform([(j - 0.5, i - 0.5), (j + 0.5, i + 0.5)])
            (ax0, ay0), (ax1, ay1) = (to_pixels(*p) for p in corners)
            left, right = sorted((ax0, ax1))
            top, bottom = sorted((ay0, ay1))
            # whole pixels inside the cell, and inside the image
            box = (max(0, int(round(left))), max(0, int(round(top))),
                   min(width, int(round(right))), min(height, int(round(bottom))))
            key = _key([*(by_values[k] for k in by), c[y], c[x]])
            cells_here, run_ids = members.get(key, ((), ()))
            out.append(CellArea(dict(by_values), c[y], c[x], box, cells_here, run_ids))
    return out


def area_title(area: CellArea, x: str, y: str) -> str:
    """What a cell's link opens, for its tooltip."""
    if len(area.cells) <= 1:
        return f"{area.label(x, y)}: its runs in MLflow"
    if area.run_ids:
        return f"{area.label(x, y)}: the {len(area.run_ids)} runs of its {len(area.cells)} config cells in MLflow"
    return (f"{area.label(x, y)}: {len(area.cells)} config cells pooled here; the link opens the runs of the "
            f"first ({area.cells[0]}) only, as their run ids are not in the export")


def image_map(areas: list[CellArea], href_of_cell: Callable[[CellArea], str | None], x: str, y: str,
              name: str = "phase-map") -> str:
    """An HTML `<map>` with one `<area shape="rect">` per heatmap cell that has a link; its
    coordinates are the saved PNG's pixels, so the `<img usemap="#name">` must be shown at its
    natural size (see `linked_image`)."""
    rows = []
    for area in areas:
        href = href_of_cell(area)
        if not href:
            continue
        title = html.escape(area_title(area, x, y))
        left, top, right, bottom = area.box
        rows.append(f'<area shape="rect" coords="{left},{top},{right},{bottom}" href="{html.escape(href)}" '
                    f'target="_blank" rel="noopener" title="{title}" alt="{title}">')
    return f'<map name="{html.escape(name)}">\n' + "\n".join(rows) + "\n</map>"


def cell_href(ui_base: str, experiment_id: str, area: CellArea) -> str | None:
    """A heatmap cell's runs: its one cell's, all its runs by id when it pools several config
    cells, or (no run ids) the first cell's; None when it has no cell key."""
    if not area.cells:
        return None
    if len(area.cells) > 1 and area.run_ids:
        return run_ids_url(ui_base, experiment_id, list(area.run_ids))
    return runs_url(ui_base, experiment_id, area.cells[0])


def mlflow_hrefs(tracking_uri: str | None, sweep_name: str) -> Callable[[CellArea], str | None] | None:
    """href_of_cell for `image_map`: a cell's runs in the sweep's experiment, or None when the
    experiment cannot be found (no links)."""
    found = experiment_id(tracking_uri, sweep_name)
    if found is None:
        return None
    base = ui_base(tracking_uri)
    return lambda area: cell_href(base, found, area)


def linked_image(png: Path, areas: list[CellArea], href_of_cell: Callable[[CellArea], str | None] | None,
                 x: str, y: str, name: str = "phase-map") -> str:
    """The PNG embedded as a data URI, with the cells' map when there are links. An image map's
    coordinates are not scaled with the image, so a linked image is shown at its natural width
    in a box that scrolls sideways instead of shrinking it."""
    import base64

    data = base64.b64encode(Path(png).read_bytes()).decode()
    alt = html.escape(Path(png).stem)
    if href_of_cell is None or not any(href_of_cell(a) for a in areas):
        return f'<img alt="{alt}" src="data:image/png;base64,{data}">'
    return (f'<div style="overflow-x:auto"><img alt="{alt}" usemap="#{html.escape(name)}" style="max-width:none" '
            f'src="data:image/png;base64,{data}"></div>\n' + image_map(areas, href_of_cell, x, y, name))
