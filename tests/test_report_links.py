"""The report's links to MLflow (a real SQLite store) and the phase diagram's image map (a real
saved PNG), and the dose-response figure, on small generated tables."""

import itertools
import re
from urllib.parse import parse_qs, urlsplit

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib import colormaps
from scipy import ndimage

from analysis.dose_response import dose_response_figure, write_dose_response
from analysis.mlflow_links import (LOCAL_UI, experiment_id, image_map, linked_image, mlflow_hrefs, phase_areas,
                                   run_ids_url, runs_url, ui_base)
from analysis.phase import cell_table
from analysis.plots import phase_figure, save
from sweeps.design.keys import cell_key
from sweeps.fit.phase_fit import fmt, label_phases
from trainables.config import make_config

X = "pretrain_epochs"


@pytest.fixture
def quick_mlflow(monkeypatch):
    """The report's lookups fail fast (quick_client sets these only if unset; undone after the test)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real SQLite tracking store: experiment 'linked', runs of two cells (two seeds each) and a parent."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("linked")
    runs = {}
    client.create_run(exp, tags={"sweep": "linked", "minima.role": "parent"})
    for cell, seed in itertools.product(["aaaaaaaaaaaa", "bbbbbbbbbbbb"], [0, 1]):
        run = client.create_run(exp, tags={"sweep": "linked", "cell": cell, "seed": str(seed)})
        runs.setdefault(cell, []).append(run.info.run_id)
    return uri, exp, runs


def _search(uri, exp, filter_string):
    from mlflow.tracking import MlflowClient

    return sorted(r.info.run_id for r in MlflowClient(uri).search_runs([exp], filter_string))


def _fragment(url):
    """(route, query) of an MLflow UI address: the UI routes inside the URL's fragment."""
    route, _, query = urlsplit(url).fragment.partition("?")
    return route, {k: v[0] for k, v in parse_qs(query).items()}


def test_experiment_id_is_found_and_none_when_missing(store, tmp_path, quick_mlflow):
    uri, exp, _ = store
    assert experiment_id(uri, "linked") == exp
    assert experiment_id(uri, "no-such-sweep") is None
    absent = tmp_path / "absent.db"
    assert experiment_id(f"sqlite:///{absent}", "linked") is None
    assert not absent.exists()  # looking did not create an empty store
    assert experiment_id("http://127.0.0.1:9/", "linked") is None  # nothing listens there: refused, no exception
    assert experiment_id(None, "linked") is None


def test_runs_url_opens_the_cells_runs_without_credentials(store):
    uri, exp, runs = store
    base = ui_base("https://alice:s3cret@mlflow.example.org:8443/mlflow/?token=x#top")
    assert base == "https://mlflow.example.org:8443/mlflow"
    url = runs_url(base, exp, "aaaaaaaaaaaa")
    assert "alice" not in url and "s3cret" not in url and "@" not in url and "token" not in url
    assert url.startswith("https://mlflow.example.org:8443/mlflow/#/")
    route, query = _fragment(url)
    assert route == f"/experiments/{exp}/runs"
    assert query["searchFilter"] == "tags.cell = 'aaaaaaaaaaaa'" and query["workflowType"] == "machine_learning"
    assert query["orderByKey"] == "tags.`mlflow.runName`"  # listed flat, not folded under the parent run
    # the filter the link carries, run against the store, finds exactly that cell's runs
    assert _search(uri, exp, query["searchFilter"]) == sorted(runs["aaaaaaaaaaaa"])
    ids = runs["aaaaaaaaaaaa"][:1] + runs["bbbbbbbbbbbb"][:1]
    _, query = _fragment(run_ids_url(base, exp, ids))
    assert _search(uri, exp, query["searchFilter"]) == sorted(ids)
    assert ui_base("http://user:pw@[::1]:5005") == "http://[::1]:5005"
    for local in (uri, "sqlite:///mlflow.db", "file:///tmp/mlruns", "mlruns", None):
        assert ui_base(local) == LOCAL_UI == "http://127.0.0.1:5000"
    with pytest.raises(ValueError):
        runs_url(base, exp, "x' OR '1")


def synthetic_labelled(hot: dict, seeds=(0, 1), axes=None) -> pd.DataFrame:
    """Trials over pretraining x weight decay x augmentation, drops of about 1 point except the
    `hot` config (a far larger drop: the diagram's darkest cell); all good at delta = 0.5."""
    axes = axes or {X: [0, 10, 100], "weight_decay": [0.0, 1e-4], "augmentation": ["none", "shift"]}
    rows = []
    rng = np.random.default_rng(0)
    run_ids = iter(range(1, 10_000))
    for values in itertools.product(*axes.values()):
        config = dict(zip(axes, values))
        for seed in seeds:
            full = make_config({**config, "seed": seed}).to_dict()
            drop = 0.0 if config[X] == 0 else (0.4 if config == hot else 0.01 + rng.normal(0, 0.002))
            rows.append({**full, "status": "ok", "reached_global_min": True, "train_acc": 1.0,
                         "test_acc": 0.9 - drop, "cell": cell_key({**config, "seed": seed}),
                         "mlflow_run_id": f"{next(run_ids):032x}", "trial_id": f"{values}-{seed}"})
    return label_phases(pd.DataFrame(rows), delta=0.5)


def _boxes_overlap(a, b):
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def _hot_region(png):
    """Independently of the figure's transforms: the largest patch of the saved PNG in the
    colormap's top colour (the hot cell; the colorbar's top is a thin sliver). Its bounding box."""
    rgb = mpimg.imread(png)[..., :3]
    target = np.asarray(colormaps["RdBu_r"](1.0)[:3])
    mask = np.abs(rgb - target).max(axis=2) < 0.03
    labels, n = ndimage.label(mask)
    assert n >= 1
    biggest = 1 + int(np.argmax(ndimage.sum(mask, labels, range(1, n + 1))))
    ys, xs = np.nonzero(labels == biggest)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("by", [[], ["augmentation"]])
def test_image_map_areas_sit_on_their_cells_in_the_saved_png(tmp_path, by):
    hot = {X: 100, "weight_decay": 1e-4, "augmentation": "shift"}
    labelled = synthetic_labelled(hot)
    if not by:  # one panel: keep one augmentation, so that each heatmap cell is one config cell
        labelled = labelled[labelled["augmentation"] == "shift"]
    cells = cell_table(labelled, X, "weight_decay", by)
    fig = phase_figure(labelled, cells, [], X, "weight_decay", by, 0.5)
    areas = phase_areas(fig, labelled, cells, X, "weight_decay", by)
    png = save(fig, tmp_path / "phase")[0]
    height, width = mpimg.imread(png).shape[:2]
    panels = 2 if by else 1
    assert len(areas) == len(cells) == panels * 2 * 3
    for area in areas:
        left, top, right, bottom = area.box
        assert 0 <= left < right <= width and 0 <= top < bottom <= height, (area, width, height)
        assert 30 < right - left and 30 < bottom - top  # a cell, not a sliver
    for a, b in itertools.combinations(areas, 2):
        assert not _boxes_overlap(a.box, b.box), (a, b)
    # the hot cell's area holds the hot patch's centre, and is that patch (within a pixel or two)
    found = _hot_region(png)
    centre = ((found[0] + found[2]) / 2, (found[1] + found[3]) / 2)
    [hot_area] = [a for a in areas if a.x == 100 and a.y == 1e-4 and a.by.get("augmentation", "shift") == "shift"]
    left, top, right, bottom = hot_area.box
    assert left <= centre[0] <= right and top <= centre[1] <= bottom
    assert np.abs(np.subtract(hot_area.box, found)).max() <= 2, (hot_area.box, found)
    # its cell key is the hot config's
    assert hot_area.cells == (cell_key({**hot, "seed": 0}),)
    assert hot_area.run_ids and len(hot_area.run_ids) == 2


def test_a_pooled_cell_links_to_all_its_runs_or_says_it_cannot(tmp_path):
    labelled = synthetic_labelled({})
    cells = cell_table(labelled, X, "weight_decay", [])  # augmentation pooled: two config cells per heatmap cell
    fig = phase_figure(labelled, cells, [], X, "weight_decay", [], 0.5)
    areas = phase_areas(fig, labelled, cells, X, "weight_decay", [])
    assert all(len(a.cells) == 2 and len(a.run_ids) == 4 for a in areas)
    hrefs = lambda a: run_ids_url("http://127.0.0.1:5000", "7", list(a.run_ids)) if a.run_ids else None  # noqa: E731
    html = image_map(areas, hrefs, X, "weight_decay")
    assert html.count("<area ") == len(areas) == 6 and "4 runs of its 2 config cells" in html
    coords = [tuple(map(int, c.split(","))) for c in re.findall(r'coords="([^"]+)"', html)]
    assert coords == [a.box for a in areas]
    # one trial without a run id: no run-id filter, the first cell's runs, and the title says so
    labelled.loc[labelled.index[0], "mlflow_run_id"] = None
    areas = phase_areas(fig, labelled, cells, X, "weight_decay", [])
    from analysis.mlflow_links import area_title, cell_href

    first = next(a for a in areas if not a.run_ids)
    assert "searchFilter=tags.cell" in cell_href("http://h", "7", first)
    assert "first" in area_title(first, X, "weight_decay")


def test_linked_image_with_the_store(store, tmp_path, quick_mlflow):
    """The report's path end to end: the sweep's experiment found, one area per heatmap cell,
    each opening its cell's runs; no experiment, no map."""
    uri, exp, _ = store
    labelled = synthetic_labelled({}, axes={X: [0, 10], "weight_decay": [0.0, 1e-4]})
    cells = cell_table(labelled, X, "weight_decay", [])
    fig = phase_figure(labelled, cells, [], X, "weight_decay", [], 0.5)
    areas = phase_areas(fig, labelled, cells, X, "weight_decay", [])
    png = save(fig, tmp_path / "phase")[0]
    page = linked_image(png, areas, mlflow_hrefs(uri, "linked"), X, "weight_decay")
    assert 'usemap="#phase-map"' in page and page.count("<area ") == 4
    for area in areas:
        assert runs_url(LOCAL_UI, exp, area.cells[0]).replace("&", "&amp;") in page
    plain = linked_image(png, areas, mlflow_hrefs(uri, "no-such-sweep"), X, "weight_decay")
    assert "<map" not in plain and plain.startswith("<img")


def dose_table() -> pd.DataFrame:
    """A labelled table with known drops: x pretraining (log-spaced), weight decay (3 seeds at 0,
    2 at 1e-4), clipping (none or 1; clipping adds 50 points, so pooling over it would show)."""
    rows = []
    for x, wd, clip in itertools.product([0, 3, 10, 30, 100], [0.0, 1e-4], [None, 1.0]):
        for seed in range(3 if wd == 0 else 2):
            drop = 0.0 if x == 0 else (0.01 * np.log1p(x) + (0.002 * seed) + (0.5 if clip else 0.0) - (0.01 if wd else 0))
            rows.append({X: x, "weight_decay": wd, "clip_norm": clip, "seed": seed, "status": "ok",
                         "test_acc": 0.9 - drop, "acc_drop": drop, "phase": "good"})
    rows.append({X: 10, "weight_decay": 0.0, "clip_norm": None, "seed": 7, "status": "ok", "test_acc": 0.9,
                 "acc_drop": np.nan, "phase": "unfinished"})  # no baseline: no drop, no seed counted
    rows.append({X: 10, "weight_decay": 0.0, "clip_norm": None, "seed": 8, "status": "diverged", "test_acc": 0.1,
                 "acc_drop": 0.8, "phase": "diverged"})  # not status ok: left out
    return pd.DataFrame(rows)


def _lines(ax):
    handles, labels = ax.get_legend_handles_labels()
    return {label: h for h, label in zip(handles, labels)}


def test_dose_response_holds_the_other_axes_at_their_reference(tmp_path):
    df = dose_table()
    fig = dose_response_figure(df, X, ["weight_decay", "clip_norm"], delta=0.05)
    wd_panel, clip_panel = fig.axes
    lines = _lines(wd_panel)
    assert set(lines) == {"weight_decay=0 (n=3)", "weight_decay=0.0001 (n=2)", "bad: drop >= 5 pts"}
    assert "clip_norm=none" in wd_panel.get_title()
    line = lines["weight_decay=0 (n=3)"]
    xs = [0, 3, 10, 30, 100]
    assert np.allclose(line.get_xdata(), np.log1p(xs))  # a log-spaced x: on log(1 + x)
    expected = [0.0 if x == 0 else 100 * (0.01 * np.log1p(x) + 0.002) for x in xs]  # clip none, mean of seeds 0..2
    assert np.allclose(line.get_ydata(), expected)
    assert np.allclose(lines["bad: drop >= 5 pts"].get_ydata(), 5) and lines["bad: drop >= 5 pts"].get_linestyle() == "--"
    clip_lines = _lines(clip_panel)
    assert {"clip_norm=none (n=3)", "clip_norm=1 (n=3)"} <= set(clip_lines)  # weight decay held at 0: 3 seeds
    assert np.allclose(clip_lines["clip_norm=1 (n=3)"].get_ydata()[1:] - clip_lines["clip_norm=none (n=3)"].get_ydata()[1:], 50)
    assert all(p.exists() for p in write_dose_response(df, X, ["weight_decay"], tmp_path, delta=0.05))
    assert {p.suffix for p in tmp_path.iterdir()} == {".png", ".svg"}


def test_dose_response_pools_when_the_reference_has_no_trial():
    df = dose_table()
    df.loc[df["clip_norm"].isna(), "status"] = "diverged"  # nothing at clip_norm = none (the reference) is ok
    fig = dose_response_figure(df, X, ["weight_decay", "clip_norm"])
    wd_panel, clip_panel = fig.axes
    assert "pooled over clip_norm" in wd_panel.get_title()
    lines = _lines(wd_panel)
    assert set(lines) == {"weight_decay=0 (n=3)", "weight_decay=0.0001 (n=2)"}  # no delta line asked for
    assert (lines["weight_decay=0 (n=3)"].get_ydata()[1:] > 50).all()  # clipped trials only
    assert set(_lines(clip_panel)) == {"clip_norm=1 (n=3)"} and "clip_norm=none" in clip_panel.get_title()


def test_dose_response_without_other_axes_and_on_a_linear_axis():
    df = dose_table()
    df = df[(df["weight_decay"] == 0) & df["clip_norm"].isna() & df[X].isin([0, 10, 20])]
    df = pd.concat([df, df[df[X] == 10].assign(**{X: 20})])
    fig = dose_response_figure(df, X, [])
    [ax] = fig.axes
    [(label, line)] = _lines(ax).items()
    assert label == "all trials (n=3)" and np.allclose(line.get_xdata(), [0, 10, 20])  # evenly spaced: linear
    assert [t.get_text() for t in ax.get_xticklabels()] == [fmt(v) for v in (0, 10, 20)]
