"""Matplotlib plots for analysts: audiences, identifiers, traits, plan composition and sync speed.

Every function returns a `matplotlib.figure.Figure` built without pyplot, so figures are not kept
alive by pyplot's registry and a notebook shows each one exactly once (as the cell's value). Plots
are titled and labelled, sorted deterministically (counts descending, then names), and never use
randomness, so the same input draws the same picture.
"""
from __future__ import annotations

from typing import Iterable

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from toolkit.braze.payload_rules import WRITABLE_PROFILE_FIELDS, standard_field
from toolkit.errors import PlotInputError
from toolkit.notebook.terms import http_calls, planned_totals
from toolkit.preview import REASONS

__all__ = [
    "audience_sizes",
    "audience_overlap",
    "identifier_coverage",
    "trait_distributions",
    "preview_sizes",
    "plan_composition",
    "sync_throughput",
    "identifier_tiers",
    "computed_traits",
]

# Colour-blind-safe palette (Okabe–Ito) with fixed roles so colours mean the same in every plot.
GOOD = "#009E73"       # Braze can receive / member / sent
MAYBE = "#E69F00"      # receivable only with an opt-in (alias, email) / exits
BAD = "#D55E00"        # dropped / rejected
NEUTRAL = "#0072B2"    # plain counts
MUTED = "#999999"      # missing / unchanged
ACCENT = "#CC79A7"     # retries

_TITLE_SIZE = 13


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # a canvas makes savefig/print_png work without pyplot
    return fig


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=MUTED)
    ax.set_xticks([])
    ax.set_yticks([])


def _label_bars(ax, bars, values: Iterable[float], *, fmt: str = "{:,.0f}",
                horizontal: bool) -> None:
    for bar, value in zip(bars, values):
        if horizontal:
            ax.annotate(fmt.format(value), (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                        xytext=(3, 0), textcoords="offset points", va="center", fontsize=9)
        else:
            ax.annotate(fmt.format(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        xytext=(0, 2), textcoords="offset points", ha="center", fontsize=9)


def _membership(export) -> pd.DataFrame:
    """Boolean frame: one column per audience, True for current members (NA counts as not)."""
    audiences = list(export.audiences)
    if not audiences:
        return pd.DataFrame(index=export.profiles.index)
    cols = {a: export.profiles[a].fillna(False).astype(bool).to_numpy() for a in audiences}
    return pd.DataFrame(cols, index=export.profiles.index)


# -- export plots ------------------------------------------------------------------------------

def audience_sizes(export, *, title: str | None = None) -> Figure:
    """Members per audience (largest first), with the share of all profiles on each bar."""
    members = _membership(export).sum().astype(int)
    total = len(export.profiles)
    fig = _figure(8, 0.9 + 0.5 * max(len(members), 1))
    ax = fig.add_subplot()
    ax.set_title(title or f"Audience sizes ({total:,} profiles)", fontsize=_TITLE_SIZE)
    if members.empty:
        _empty(ax, "This export has no audiences.")
        return fig
    members = members.sort_index().sort_values(ascending=True, kind="stable")  # largest on top
    bars = ax.barh(members.index, members.to_numpy(), color=NEUTRAL)
    for bar, value in zip(bars, members.to_numpy()):
        share = value / total if total else 0
        ax.annotate(f"{value:,} ({share:.0%})",
                    (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    xytext=(3, 0), textcoords="offset points", va="center", fontsize=9)
    ax.set_xlabel("members (profiles in the audience)")
    ax.set_ylabel("audience")
    ax.set_xlim(0, max(int(members.max()), 1) * 1.25)
    ax.grid(axis="x", alpha=0.3)
    return fig


def audience_overlap(export, *, share: bool = False) -> Figure:
    """Profiles in both audiences for every pair; the diagonal (each audience's own size) is
    printed in grey and left out of the colour scale, so the overlaps carry the colour.

    With ``share=True`` each cell is the share of the row's audience also in the column's one.
    """
    m = _membership(export)
    names = sorted(m.columns)
    n = max(len(names), 2)
    fig = _figure(2.6 + 0.9 * n, 1.5 + 0.62 * n)
    ax = fig.add_subplot()
    what = " (share of the row's audience)" if share else " (profiles in both)"
    ax.set_title("Audience overlap" + what, fontsize=_TITLE_SIZE - 1)
    if not names:
        _empty(ax, "This export has no audiences.")
        return fig
    x = m[names].to_numpy(dtype=np.int64)
    both = x.T @ x
    values = both.astype(float)
    if share:
        sizes = np.diag(both).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(sizes[:, None] > 0, both / sizes[:, None], 0.0)
    off = ~np.eye(len(names), dtype=bool)
    top = max(float(values[off].max()) if off.any() else 0.0, 1e-9)
    shown = np.ma.masked_array(values, mask=~off)
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#eeeeee")
    image = ax.imshow(shown, cmap=cmap, vmin=0, vmax=top, interpolation="nearest")
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=9)
    ax.set_yticks(range(len(names)), names, fontsize=9)
    for i in range(len(names)):
        for j in range(len(names)):
            text = f"{values[i, j]:.0%}" if share else f"{int(both[i, j]):,}"
            colour = ("#555555" if i == j else
                      "white" if values[i, j] > top * 0.6 else "black")
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color=colour,
                    fontstyle="italic" if i == j else "normal")
    ax.set_xlabel("audience")
    ax.set_ylabel("audience")
    fig.colorbar(image, ax=ax, label="share" if share else "profiles in both", shrink=0.8)
    return fig


# Best identifier per profile, in the planner's resolution order, and whether Braze receives it.
_TIERS = (
    ("external_id (user_id)", GOOD),
    ("braze_id", GOOD),
    ("email only (needs opt-in)", MAYBE),
    ("anonymous only (needs alias)", MAYBE),
    ("no identifier", BAD),
)


def identifier_tiers(export) -> pd.Series:
    """The best identifier each profile offers Braze, as an ordered categorical Series."""
    p = export.profiles

    def has(col: str) -> np.ndarray:
        return p[col].notna().to_numpy() if col in p else np.zeros(len(p), dtype=bool)

    labels = [t for t, _ in _TIERS]
    tier = np.select(
        [has("user_id"), has("braze_id"), has("email"), has("anonymous_id")],
        labels[:4], default=labels[4])
    return pd.Series(pd.Categorical(tier, categories=labels, ordered=True), index=p.index,
                     name="identifier")


def identifier_coverage(export) -> Figure:
    """Who Braze can receive: each profile's best identifier, and how often each one is present."""
    p = export.profiles
    total = len(p)
    tiers = identifier_tiers(export).value_counts(sort=False)
    fig = _figure(11, 3.6)
    left, right = fig.subplots(1, 2, width_ratios=[1.25, 1])
    fig.suptitle(f"Identifier coverage — who Braze can receive ({total:,} profiles)",
                 fontsize=_TITLE_SIZE)

    labels = [t for t, _ in _TIERS][::-1]
    values = [int(tiers.get(t, 0)) for t in labels]
    colors = [c for _, c in _TIERS][::-1]
    bars = left.barh(labels, values, color=colors)
    for bar, value in zip(bars, values):
        share = value / total if total else 0
        left.annotate(f"{value:,} ({share:.0%})",
                      (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                      xytext=(3, 0), textcoords="offset points", va="center", fontsize=9)
    left.set_title("best identifier per profile (green: sent by default)", fontsize=10)
    left.set_xlabel("profiles")
    left.set_ylabel("best identifier")
    left.set_xlim(0, max(max(values), 1) * 1.3)
    left.grid(axis="x", alpha=0.3)

    idents = [c for c in ("user_id", "braze_id", "email", "anonymous_id") if c in p]
    present = [int(p[c].notna().sum()) for c in idents]
    bars = right.bar(idents, present, color=NEUTRAL)
    _label_bars(right, bars, present, horizontal=False)
    right.set_title("profiles carrying each identifier (overlapping)", fontsize=10)
    right.set_ylabel("profiles")
    right.set_xlabel("identifier")
    right.set_ylim(0, max(max(present, default=0), 1) * 1.15)
    right.grid(axis="y", alpha=0.3)
    return fig


def _top_values(values: pd.Series, top: int) -> pd.Series:
    counts = values.astype(str).value_counts()
    # deterministic order: count descending, then value ascending
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    head = pd.Series(dict(order[:top]), dtype="int64")
    rest = sum(v for _, v in order[top:])
    if rest:
        head[f"(other {len(order) - top:,} values)"] = rest
    return head


def _draw_trait(ax, series: pd.Series, value_type: str, *, top: int, bins: int) -> None:
    present = series.dropna()
    missing = len(series) - len(present)
    ax.set_ylabel("profiles")
    if present.empty:
        _empty(ax, "no profile has a value")
    elif value_type == "number":
        numbers = pd.to_numeric(present, errors="coerce").dropna().astype(float).to_numpy()
        ax.hist(numbers, bins=bins, color=NEUTRAL, edgecolor="white")
        ax.set_xlabel("value")
        ax.axvline(float(np.median(numbers)), color=BAD, linestyle="--", linewidth=1,
                   label=f"median {np.median(numbers):,.2f}")
        ax.legend(fontsize=8, loc="upper right")
    elif value_type == "datetime":
        stamps = pd.to_datetime(present, utc=True, errors="coerce").dropna()
        # matplotlib plots naive datetimes; the export's times are UTC
        ax.hist(stamps.dt.tz_localize(None).to_numpy(), bins=bins, color=NEUTRAL, edgecolor="white")
        ax.set_xlabel("date (UTC)")
        for label in ax.get_xticklabels():
            label.set_rotation(30)
            label.set_ha("right")
    elif value_type == "boolean":
        counts = present.astype(bool).value_counts()
        labels = ["true", "false"]
        values = [int(counts.get(True, 0)), int(counts.get(False, 0))]
        bars = ax.bar(labels, values, color=[GOOD, MUTED])
        _label_bars(ax, bars, values, horizontal=False)
        ax.set_xlabel("value")
    else:
        if value_type in ("list", "object"):
            present = present.map(lambda v: ", ".join(map(str, v)) if isinstance(v, (list, tuple))
                                  else str(v))
        counts = _top_values(present, top).iloc[::-1]
        bars = ax.barh(counts.index, counts.to_numpy(), color=NEUTRAL)
        _label_bars(ax, bars, counts.to_numpy(), horizontal=True)
        ax.set_xlim(0, max(int(counts.max()), 1) * 1.2)
        ax.set_xlabel("profiles")
        ax.set_ylabel("value")
        ax.tick_params(axis="y", labelsize=8)
    ax.text(0.99, 1.01, f"{len(present):,} with a value · {missing:,} missing",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="#555555")


def computed_traits(export) -> list[str]:
    """The export's traits except Segment standard traits that land in Braze profile fields
    (firstName → first_name, …): those are profile data, not computations."""
    return [k for k in export.traits
            if standard_field(k) is None and k not in WRITABLE_PROFILE_FIELDS]


def trait_distributions(export, keys: Iterable[str] | None = None, *, top: int = 10,
                        bins: int = 20) -> Figure:
    """One panel per computed trait (`computed_traits` unless ``keys`` names others):
    histograms for numbers and dates, top values for text."""
    wanted = list(keys) if keys is not None else computed_traits(export)
    known = set(export.computations["key"])
    unknown = [k for k in wanted if k not in known]
    if unknown:
        raise PlotInputError(f"no computation named {', '.join(map(repr, unknown))} in this export",
                             field=unknown[0],
                             hint=f"use one of: {', '.join(export.computations['key'])}")
    ncols = 2 if len(wanted) > 1 else 1
    nrows = max(1, -(-len(wanted) // ncols))
    fig = _figure(6 * ncols, 3.4 * nrows)
    fig.suptitle("Computed trait values" if keys is None else "Trait values",
                 fontsize=_TITLE_SIZE)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    if not wanted:
        _empty(axes[0], "This export has no computed traits.")
        return fig
    for ax, key in zip(axes, wanted):
        comp = export.computation(key)
        ax.set_title(f"{key}  ({comp['value_type']})", fontsize=10, loc="left")
        _draw_trait(ax, export.profiles[key], str(comp["value_type"]), top=top, bins=bins)
    for ax in axes[len(wanted):]:
        ax.set_visible(False)
    return fig


# -- preview, plan and sync plots ---------------------------------------------------------------

def _preview_frame(preview) -> pd.DataFrame:
    """key, engage_members, braze_selected, dropped_<reason>… from a Preview's recommended
    check per computation."""
    if isinstance(preview, pd.DataFrame):
        return preview
    to_frame = getattr(preview, "to_frame", None)
    if not callable(to_frame):
        raise PlotInputError(f"cannot draw preview sizes from a {type(preview).__name__}",
                             hint="pass the Preview returned by mapping.preview(export)")

    frame = to_frame()
    frame = frame[frame["recommended"].astype(bool)].drop_duplicates("key", keep="first")
    out = pd.DataFrame({"key": frame["key"].astype(str).to_numpy(),
                        "engage_members": frame["engage_members"].to_numpy(),
                        "braze_selected": frame["filter_selects"].to_numpy()})
    for reason in REASONS:
        if reason in frame and int(frame[reason].sum()):
            out[f"dropped_{reason}"] = frame[reason].to_numpy()
    return out


def _plan_frame(plan) -> pd.DataFrame:
    """computation, change, count, data_points from a Plan's operations."""
    if isinstance(plan, pd.DataFrame):
        return plan
    summary = getattr(plan, "summary", None)
    if not callable(summary) or not hasattr(plan, "operations"):
        raise PlotInputError(f"cannot draw a plan composition from a {type(plan).__name__}",
                             hint="pass the Plan returned by toolkit.plan(export, mapping)")
    table = summary()
    if table.empty:
        return pd.DataFrame(columns=["computation", "change", "count", "data_points"])
    billed = table["op"].isin(["attribute", "event"])
    return pd.DataFrame({"computation": table["rule"].astype(str),
                         "change": table["change"].astype(str),
                         "count": table["operations"].astype(int),
                         "data_points": table["operations"].where(billed, 0).astype(int)})


def _sync_frame(report) -> tuple[pd.DataFrame, dict]:
    """The sync's timeline (seconds since sending began, cumulative objects acknowledged,
    cumulative HTTP calls) and its totals, from a SyncReport or a timeline frame.

    The report's counts are the truth: when the timeline's last point falls short of them (it is
    sampled at most every 0.1 s, and the cohort phase may end between samples), it is closed
    with a point at the end of sending holding the report's totals, so the plot and the report
    show the same numbers."""
    if isinstance(report, pd.DataFrame):
        return report, {}
    if not (callable(getattr(report, "throughput_frame", None))
            and callable(getattr(report, "summary", None))):
        raise PlotInputError(f"cannot draw sync throughput from a {type(report).__name__}",
                             hint="pass the SyncReport returned by toolkit.apply(plan, client)")

    c = report.counts
    calls = http_calls(report)
    totals = {"requests": int(c.get("batches", 0) or 0),
              "requests sent": calls["requests sent"], "HTTP calls": calls["HTTP calls"],
              "set-up calls": calls["set-up calls"], "retries": calls["retries"],
              "429s": calls["answered 429"],
              "acknowledged": int(c.get("objects_acknowledged", 0) or 0),
              "rejected": int(c.get("objects_rejected", 0) or 0)}
    frame = report.throughput_frame()
    last = frame.iloc[-1] if len(frame) else None
    if last is None or last["acknowledged"] < totals["acknowledged"] or \
            last["requests"] < totals["HTTP calls"]:
        sending = float(report.elapsed_s) - float((report.timings or {}).get("checks_s", 0.0))
        end = max(sending, float(last["seconds"]) if last is not None else 0.0)
        if totals["acknowledged"] or totals["HTTP calls"]:
            frame = pd.concat([frame, pd.DataFrame({
                "seconds": [round(end, 4)], "acknowledged": [totals["acknowledged"]],
                "requests": [totals["HTTP calls"]]})], ignore_index=True)
    return frame, totals


def preview_sizes(preview) -> Figure:
    """Per computation, Engage members beside the users the Braze filter selects, and who is
    dropped by reason.

    Takes a `toolkit.Preview` (its recommended filter per computation) or a DataFrame with
    columns ``key``, ``engage_members``, ``braze_selected`` and optional ``dropped_<reason>``.
    """
    frame = _preview_frame(preview)
    needed = {"key", "engage_members", "braze_selected"}
    if not needed <= set(frame.columns):
        raise PlotInputError(f"preview table lacks columns {sorted(needed - set(frame.columns))}",
                             hint="pass the Preview returned by mapping.preview(export)")
    frame = frame.sort_values("key", kind="stable").reset_index(drop=True)
    drop_cols = sorted(c for c in frame.columns if c.startswith("dropped_"))
    fig = _figure(11, 1.2 + 0.75 * max(len(frame), 1))
    left, right = fig.subplots(1, 2, width_ratios=[1.3, 1])
    fig.suptitle("Engage audiences vs the Braze segments that select them", fontsize=_TITLE_SIZE)
    y = np.arange(len(frame))
    h = 0.38
    engage = frame["engage_members"].astype(int).to_numpy()
    braze = frame["braze_selected"].astype(int).to_numpy()
    b1 = left.barh(y + h / 2, engage, h, color=NEUTRAL, label="Engage members")
    b2 = left.barh(y - h / 2, braze, h, color=GOOD, label="selected by the Braze filter")
    _label_bars(left, b1, engage, horizontal=True)
    _label_bars(left, b2, braze, horizontal=True)
    left.set_yticks(y, frame["key"])
    left.invert_yaxis()
    left.set_xlabel("users")
    left.set_ylabel("computation")
    left.set_xlim(0, max(int(max(engage.max(initial=0), braze.max(initial=0))), 1) * 1.25)
    left.legend(fontsize=8, loc="lower right")
    left.set_title("sizes side by side", fontsize=10)

    right.set_title("Engage members not selected, by reason", fontsize=10)
    if drop_cols:
        bottom = np.zeros(len(frame))
        palette = [BAD, MAYBE, MUTED, ACCENT, NEUTRAL]
        for i, col in enumerate(drop_cols):
            values = frame[col].fillna(0).astype(int).to_numpy()
            right.barh(y, values, left=bottom, color=palette[i % len(palette)],
                       label=col.removeprefix("dropped_").replace("_", " "))
            bottom += values
        for yi, total in zip(y, bottom):
            right.annotate(f"{int(total):,}", (total, yi), xytext=(3, 0),
                           textcoords="offset points", va="center", fontsize=9)
        right.set_yticks(y, frame["key"])
        right.invert_yaxis()
        right.set_xlim(0, max(bottom.max(initial=0), 1) * 1.3)
        right.set_xlabel("users dropped")
        right.set_ylabel("computation")
        right.legend(fontsize=8, loc="lower right")
    else:
        _empty(right, "nobody dropped")
    return fig


_CHANGE_COLORS = {"add": GOOD, "enter": GOOD, "exit": MAYBE, "change": NEUTRAL, "set": NEUTRAL}


def plan_composition(plan) -> Figure:
    """Planned changes per computation (adds, exits, changed values) and the data points they cost.

    Takes a `toolkit.Plan` or a DataFrame with columns
    ``computation``, ``change`` and ``count`` and optionally ``data_points``.
    """
    frame = _plan_frame(plan)
    needed = {"computation", "change", "count"}
    if not needed <= set(frame.columns):
        raise PlotInputError(f"plan table lacks columns {sorted(needed - set(frame.columns))}",
                             hint="pass the Plan returned by toolkit.plan(export, mapping)")
    fig = _figure(11, 1.4 + 0.6 * max(frame["computation"].nunique(), 1))
    left, right = fig.subplots(1, 2, width_ratios=[1.4, 1])
    total = int(frame["count"].sum())
    title = f"Plan composition: {total:,} operations"
    if not isinstance(plan, pd.DataFrame):
        t = planned_totals(plan)
        title += f" → {t['objects']:,} objects in {t['requests']:,} requests"
    fig.suptitle(title, fontsize=_TITLE_SIZE)
    if frame.empty or total == 0:
        _empty(left, "Nothing to send: Braze already holds these values.")
        _empty(right, "0 data points")
        return fig
    table = frame.pivot_table(index="computation", columns="change", values="count",
                              aggfunc="sum", fill_value=0).sort_index()
    order = [c for c in ("add", "enter", "exit", "change", "set") if c in table.columns]
    order += sorted(c for c in table.columns if c not in order)
    y = np.arange(len(table))
    left_edge = np.zeros(len(table))
    for change in order:
        values = table[change].to_numpy()
        left.barh(y, values, left=left_edge, color=_CHANGE_COLORS.get(change, MUTED), label=change)
        left_edge += values
    for yi, v in zip(y, left_edge):
        left.annotate(f"{int(v):,}", (v, yi), xytext=(3, 0), textcoords="offset points",
                      va="center", fontsize=9)
    left.set_yticks(y, table.index)
    left.invert_yaxis()
    left.set_xlim(0, max(left_edge.max(), 1) * 1.2)
    left.set_xlabel("operations (one per user and field or event)")
    left.set_ylabel("computation")
    left.set_title("operations per computation", fontsize=10)
    left.legend(fontsize=8, loc="lower right")

    if "data_points" in frame.columns:
        points = frame.groupby("computation")["data_points"].sum().reindex(table.index).fillna(0)
        bars = right.barh(y, points.to_numpy(), color=ACCENT)
        _label_bars(right, bars, points.to_numpy(), horizontal=True)
        right.set_yticks(y, table.index)
        right.invert_yaxis()
        right.set_xlim(0, max(points.max(), 1) * 1.25)
        right.set_title(f"data points ({int(points.sum()):,} in all)", fontsize=10)
        right.set_xlabel("data points")
        right.set_ylabel("computation")
    else:
        _empty(right, "no data-point estimate")
    return fig


def sync_throughput(report) -> Figure:
    """Objects Braze acknowledged over the sync's duration (the slope is the throughput), and
    HTTP calls (requests, retries and set-up calls) against the requests planned.

    Takes a `toolkit.SyncReport` or a DataFrame timeline with columns ``seconds`` (since the sync
    started), ``acknowledged`` and ``requests`` (both cumulative).
    """
    frame, totals = _sync_frame(report)
    needed = {"seconds", "acknowledged", "requests"}
    if not needed <= set(frame.columns):
        raise PlotInputError(f"the timeline lacks columns {sorted(needed - set(frame.columns))}",
                             hint="pass the SyncReport returned by toolkit.apply(plan, client)")
    fig = _figure(11, 3.6)
    left, right = fig.subplots(1, 2, width_ratios=[1.5, 1])
    frame = frame.sort_values("seconds", kind="stable")
    seconds = frame["seconds"].astype(float).to_numpy()
    acknowledged = frame["acknowledged"].astype(int).to_numpy()
    requests = frame["requests"].astype(int).to_numpy()
    total = int(acknowledged[-1]) if len(frame) else 0
    fig.suptitle(f"Sync throughput ({total:,} objects acknowledged)", fontsize=_TITLE_SIZE)
    if frame.empty:
        _empty(left, "nothing was sent")
        _empty(right, "no requests")
        return fig
    span = max(float(seconds[-1]), 1e-3)
    xs = np.concatenate([[0.0], seconds])
    ys = np.concatenate([[0], acknowledged])
    # a step line: its slope is the throughput, flat stretches are waits (rate limits, retries)
    left.fill_between(xs, ys, step="post", color=GOOD, alpha=0.25)
    left.step(xs, ys, where="post", color=GOOD, label="objects acknowledged (cumulative)")
    rejected = totals.get("rejected", 0)
    left.set_title(f"{total:,} objects in {span:.2f} s (≈{total / span:,.0f} objects/s)"
                   + (f"; {rejected:,} rejected" if rejected else ""), fontsize=10)
    left.set_xlabel("seconds since the sync started")
    left.set_ylabel("objects (cumulative)")
    left.set_ylim(0, max(total, 1) * 1.15)
    left.set_xlim(0, span * 1.02)
    left.legend(fontsize=8, loc="upper left")
    left.grid(axis="y", alpha=0.3)

    right.step(np.concatenate([[0.0], seconds]), np.concatenate([[0], requests]), where="post",
               color=NEUTRAL, label="HTTP calls (cumulative)")
    batches = totals.get("requests")
    if batches:
        right.axhline(batches, color=MUTED, linestyle="--", linewidth=1,
                      label=f"requests planned ({batches:,})")
        right.set_title(f"{totals['requests sent']:,} requests · {int(requests[-1]):,} HTTP "
                        f"calls\n({totals['set-up calls']:,} set-up, {totals['retries']:,} "
                        f"retries, {totals['429s']:,} answered 429)", fontsize=10)
    else:
        right.set_title(f"{int(requests[-1]):,} HTTP calls", fontsize=10)
    right.set_xlabel("seconds since the sync started")
    right.set_ylabel("HTTP calls (cumulative)")
    right.set_xlim(0, span * 1.02)
    right.set_ylim(0, max(int(requests[-1]), batches or 0, 1) * 1.15)
    right.legend(fontsize=8, loc="lower right")
    right.grid(alpha=0.3)
    return fig
