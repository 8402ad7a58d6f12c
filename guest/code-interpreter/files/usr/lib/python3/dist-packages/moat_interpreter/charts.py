"""A matplotlib Figure as the `chart` of the E2B client's types: the numbers behind a plot.

One axes gives one chart; several give a `superchart` whose elements are the axes' charts; a
figure without axes gives {}. Per axes, in this order of precedence:

- box_and_whisker: the statistics boxplot() drew (recorded by `record_boxplots`), one element
  per box: label, min, first_quartile, median, third_quartile, max, outliers;
- pie: its wedges: label, angle (degrees), radius;
- bar: every bar of every bar container: label (the category or x tick), group (the
  container's label), value (its height, or width for horizontal bars);
- scatter: the offsets of each point collection, as points [x, y];
- line: the data of each line, as points [x, y];
- otherwise `unknown` with the title.

2D charts carry x_label/y_label and x_unit/y_unit (a trailing "(unit)" or "[unit]" of the
label); line and scatter also x_ticks, x_tick_labels, x_scale and the same for y. Categorical
axes give their category names, date axes ISO dates (scale `datetime`).
"""

import math
import re

_UNIT = re.compile(r"[\(\[]([^\)\]]+)[\)\]]\s*$")
MAX_POINTS = 20_000  # per element; longer series are cut (an agent reads numbers, not pixels)


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _unit(label):
    m = _UNIT.search(label or "")
    return m.group(1).strip() if m else None


def _is_visible_label(label):
    return bool(label) and not str(label).startswith("_")


def record_boxplots_on_import():
    """record_boxplots as soon as matplotlib.axes is imported (at once if it is already): a
    kernel that never plots never imports matplotlib for it."""
    import importlib.abc
    import sys

    if "matplotlib.axes" in sys.modules:
        record_boxplots()
        return

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != "matplotlib.axes":
                return None
            import importlib.util

            sys.meta_path.remove(self)  # the real finders find it; we only follow the load
            spec = importlib.util.find_spec(fullname)
            if spec is None or spec.loader is None:
                return spec
            loader = spec.loader
            exec_module = loader.exec_module

            def exec_and_wrap(module):
                exec_module(module)
                try:
                    record_boxplots(module.Axes)
                except Exception:  # noqa: BLE001
                    pass

            loader.exec_module = exec_and_wrap
            return spec

    sys.meta_path.insert(0, Finder())


def record_boxplots(Axes=None):
    """Wraps Axes.bxp (what boxplot() draws with) to keep each box's statistics on its axes."""
    if Axes is None:
        try:
            from matplotlib.axes import Axes
        except ImportError:
            return
    if getattr(Axes.bxp, "_moat_wrapped", False):
        return
    original = Axes.bxp

    def bxp(self, bxpstats, *args, **kwargs):
        result = original(self, bxpstats, *args, **kwargs)
        try:
            stats = list(bxpstats)
            vert = kwargs.get("vert", args[2] if len(args) > 2 else True)
            self.__dict__.setdefault("_moat_boxes", []).append((stats, vert))
        except Exception:  # noqa: BLE001 - the plot matters more than its numbers
            pass
        return result

    bxp._moat_wrapped = True
    Axes.bxp = bxp


class _Axis:
    def __init__(self, ax, which):
        self.axis = ax.xaxis if which == "x" else ax.yaxis
        self.scale = self.axis.get_scale()
        self.categories = None
        units = getattr(self.axis, "units", None)
        mapping = getattr(units, "_mapping", None)
        if isinstance(mapping, dict) and mapping:
            self.categories = {int(v): str(k) for k, v in mapping.items()}
            self.scale = "categorical"
        self.dates = False
        try:
            import matplotlib.dates as mdates

            conv = self.axis.get_converter() if hasattr(self.axis, "get_converter") else (
                self.axis.converter)
            if isinstance(conv, (mdates.DateConverter, mdates._SwitchableDateConverter)):
                self.dates = True
                self.scale = "datetime"
        except Exception:  # noqa: BLE001
            pass

    def value(self, v):
        f = _num(v)
        if f is None and self.dates:
            try:
                import matplotlib.dates as mdates

                f = _num(mdates.date2num(v))
            except Exception:  # noqa: BLE001
                f = None
        if f is None:
            return None if v is None else str(v)
        if self.categories is not None and float(f).is_integer() and int(f) in self.categories:
            return self.categories[int(f)]
        if self.dates:
            try:
                import matplotlib.dates as mdates

                return mdates.num2date(f).isoformat()
            except (ValueError, OverflowError):
                return f
        return f

    def ticks(self):
        locs = [v for v in (_num(t) for t in self.axis.get_ticklocs()) if v is not None]
        labels = [t.get_text() for t in self.axis.get_ticklabels()]
        if len(labels) != len(locs) or not any(labels):
            try:
                labels = list(self.axis.get_major_formatter().format_ticks(locs))
            except Exception:  # noqa: BLE001
                labels = [str(v) for v in locs]
        return [self.value(v) for v in locs], [str(s) for s in labels]


def _axes_2d(ax, chart):
    xl, yl = ax.get_xlabel(), ax.get_ylabel()
    chart.update({"x_label": xl, "y_label": yl, "x_unit": _unit(xl), "y_unit": _unit(yl)})
    return chart


def _points_chart(ax, kind, series):
    x, y = _Axis(ax, "x"), _Axis(ax, "y")
    chart = _axes_2d(ax, {"type": kind, "title": ax.get_title()})
    xt, xtl = x.ticks()
    yt, ytl = y.ticks()
    chart.update({
        "x_ticks": xt, "x_tick_labels": xtl, "x_scale": x.scale,
        "y_ticks": yt, "y_tick_labels": ytl, "y_scale": y.scale,
    })
    elements = []
    for label, xs, ys in series:
        points = []
        for px, py in zip(xs, ys):
            if len(points) >= MAX_POINTS:
                break
            points.append([x.value(px), y.value(py)])
        elements.append({"label": str(label) if _is_visible_label(label) else "", "points": points})
    chart["elements"] = elements
    return chart


def _bar_chart(ax, containers):
    x = _Axis(ax, "x")
    y = _Axis(ax, "y")
    chart = _axes_2d(ax, {"type": "bar", "title": ax.get_title()})
    elements = []
    tick_cache = {}
    for c in containers:
        horizontal = getattr(c, "orientation", "vertical") == "horizontal"
        group = c.get_label() if _is_visible_label(c.get_label()) else ""
        for rect in c.patches:
            if horizontal:
                pos, value, axis = rect.get_y() + rect.get_height() / 2, rect.get_width(), y
            else:
                pos, value, axis = rect.get_x() + rect.get_width() / 2, rect.get_height(), x
            if len(elements) >= MAX_POINTS:
                break
            label = axis.value(round(pos, 9))
            if isinstance(label, float):
                if id(axis) not in tick_cache:
                    tick_cache[id(axis)] = axis.ticks()
                locs, labels = tick_cache[id(axis)]
                for loc, text in zip(locs, labels):
                    if isinstance(loc, float) and abs(loc - pos) < 1e-9:
                        label = text
                        break
            elements.append({"label": str(label), "group": group, "value": _num(value)})
    chart["elements"] = elements
    return chart


def _pie_chart(ax, wedges):
    elements = [
        {
            "label": w.get_label() if _is_visible_label(w.get_label()) else "",
            "angle": _num(w.theta2 - w.theta1),
            "radius": _num(w.r),
        }
        for w in wedges
    ]
    return {"type": "pie", "title": ax.get_title(), "elements": elements}


def _box_chart(ax, boxes):
    chart = _axes_2d(ax, {"type": "box_and_whisker", "title": ax.get_title()})
    elements = []
    for stats, vert in boxes:
        axis = _Axis(ax, "x" if vert else "y")
        _, labels = axis.ticks()
        for i, s in enumerate(stats):
            label = s.get("label")
            if label is None:
                label = labels[i] if i < len(labels) else str(i + 1)
            elements.append({
                "label": str(label),
                "min": _num(s.get("whislo")),
                "first_quartile": _num(s.get("q1")),
                "median": _num(s.get("med")),
                "third_quartile": _num(s.get("q3")),
                "max": _num(s.get("whishi")),
                "outliers": [v for v in (_num(f) for f in s.get("fliers", [])) if v is not None],
            })
    chart["elements"] = elements
    return chart


def axes_to_chart(ax):
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.patches import Wedge

    boxes = ax.__dict__.get("_moat_boxes")
    if boxes:
        return _box_chart(ax, boxes)
    wedges = [p for p in ax.patches if isinstance(p, Wedge)]
    if wedges:
        return _pie_chart(ax, wedges)
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    if bars:
        return _bar_chart(ax, bars)
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    if scatters:
        series = []
        for c in scatters:
            offsets = c.get_offsets()
            series.append((c.get_label(), [o[0] for o in offsets], [o[1] for o in offsets]))
        return _points_chart(ax, "scatter", series)
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 0]
    if lines:
        series = [(ln.get_label(), ln.get_xdata(), ln.get_ydata()) for ln in lines]
        return _points_chart(ax, "line", series)
    return {"type": "unknown", "title": ax.get_title(), "elements": []}


def figure_to_chart(fig):
    axes = [ax for ax in fig.get_axes() if ax.get_visible() and ax.get_label() != "<colorbar>"]
    if not axes:
        return {}
    charts = [axes_to_chart(ax) for ax in axes]
    if len(charts) == 1:
        return charts[0]
    title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    return {"type": "superchart", "title": title, "elements": charts}
