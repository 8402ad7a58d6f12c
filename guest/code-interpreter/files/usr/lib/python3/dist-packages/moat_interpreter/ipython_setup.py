"""The Python kernel's set-up (an IPython startup file calls `setup`): the extra MIME types the
E2B client reads, and, in the default context, the data stack imported and exercised before the
template's snapshot so that the first cell pays for none of it.

- `e2b/data`: a pandas DataFrame as {column: [values]} (dates in ISO form; NaN as null), for
  frames up to MAX_DATA_CELLS cells.
- `application/json`: dicts and lists (numpy values converted), up to MAX_JSON_BYTES.
- `e2b/chart`: a matplotlib Figure as the chart the client's types describe (charts.py).
"""

import json
import logging
import os
import sys

from IPython.core.formatters import JSONFormatter
from traitlets import ObjectName, Unicode

MAX_DATA_CELLS = 200_000
MAX_JSON_BYTES = 4 << 20


class DataFormatter(JSONFormatter):
    format_type = Unicode("e2b/data")
    print_method = ObjectName("_repr_e2b_data_")


class ChartFormatter(JSONFormatter):
    format_type = Unicode("e2b/chart")
    print_method = ObjectName("_repr_e2b_chart_")


def _plain(value):
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    return str(value)


def quiet(fn):
    """A formatter that fails returns nothing (logged): IPython would otherwise publish the
    failure as the cell's error, although the user's code ran fine."""

    def wrapper(value):
        try:
            return fn(value)
        except Exception:  # noqa: BLE001
            logging.getLogger("moat_interpreter").exception("formatting %s", type(value))
            return None

    return wrapper


@quiet
def dataframe_data(df):
    if df.size > MAX_DATA_CELLS:
        return None
    split = json.loads(df.to_json(orient="split", date_format="iso", default_handler=str))
    columns = [str(c) for c in split.get("columns", [])]
    rows = split.get("data", [])
    return {c: [row[i] for row in rows] for i, c in enumerate(columns)}


@quiet
def json_data(value):
    try:
        text = json.dumps(value, default=_plain, allow_nan=False)
    except (TypeError, ValueError):
        return None
    if len(text) > MAX_JSON_BYTES:
        return None
    return json.loads(text)


@quiet
def figure_chart(fig):
    from moat_interpreter.charts import figure_to_chart

    return figure_to_chart(fig)


def setup(ip):
    if ip is None:
        return
    formatters = ip.display_formatter.formatters
    data = DataFormatter(parent=ip.display_formatter)
    data.for_type_by_name("pandas.core.frame", "DataFrame", dataframe_data)
    formatters["e2b/data"] = data
    chart = ChartFormatter(parent=ip.display_formatter)
    chart.for_type_by_name("matplotlib.figure", "Figure", figure_chart)
    formatters["e2b/chart"] = chart

    def keep_chart_printer(*_):
        # Activating an inline backend (the first pyplot import) drops every formatter's Figure
        # printer (IPython's select_figure_formats); registered before the backend's own
        # post_execute hook, this puts ours back before the cell's figures are shown.
        module = sys.modules.get("matplotlib.figure")
        if module is not None and module.Figure not in chart.type_printers:
            chart.for_type(module.Figure, figure_chart)

    ip.events.register("pre_execute", keep_chart_printer)
    ip.events.register("post_execute", keep_chart_printer)
    # ... and at once when it happens, for a cell that imports pyplot and calls show().
    from IPython.core import pylabtools

    select = pylabtools.select_figure_formats

    def select_figure_formats(*args, **kwargs):
        select(*args, **kwargs)
        keep_chart_printer()

    pylabtools.select_figure_formats = select_figure_formats
    formatters["application/json"].for_type(dict, json_data)
    formatters["application/json"].for_type(list, json_data)
    from moat_interpreter import charts

    charts.record_boxplots_on_import()
    if os.environ.pop("MOAT_INTERPRETER_PRELOAD", None):
        _preload(ip, keep_chart_printer)


def _preload(ip, keep):
    """Imports the data stack and runs each path the first plot and table take once (the
    template's snapshot keeps the result)."""
    import io

    import matplotlib.pyplot as plt
    import numpy  # noqa: F401
    import pandas as pd
    import scipy  # noqa: F401

    df = pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5]})
    ip.display_formatter.format(df)
    ip.display_formatter.format({"a": [1, 2]})
    keep()
    fig, ax = plt.subplots()
    ax.plot(df["a"], df["b"], label="b")
    ax.set_title("warm-up")
    ax.legend()
    fig.canvas.print_png(io.BytesIO())
    ip.display_formatter.format(fig)
    plt.close(fig)
    keep()
