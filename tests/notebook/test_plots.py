"""The analyst plots: right numbers on bars, titled and labelled, deterministic, clear errors."""
from __future__ import annotations

import io
import tempfile

import pandas as pd
import pytest
from matplotlib.figure import Figure

from toolkit.notebook import plots
from toolkit.errors import PlotInputError
from toolkit.notebook.terms import http_calls, planned_totals


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _titled_and_labelled(fig: Figure) -> None:
    title = fig._suptitle.get_text() if fig._suptitle is not None else ""
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert title or all(ax.get_title() or ax.get_title(loc="left") for ax in visible)
    for ax in visible:
        if ax.has_data():
            assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()


def _sync_to_sandbox(export, mapping):
    """(plan, report) of a whole sync of ``export`` under ``mapping`` to a fresh sandbox."""
    import toolkit
    from toolkit.sandbox import BrazeSandbox

    with BrazeSandbox() as sb, tempfile.TemporaryDirectory() as tmp:
        client = toolkit.BrazeClient.for_sandbox(sb)
        ledger = toolkit.Ledger(client, directory=tmp)
        plan = toolkit.plan(export, mapping, ledger, workspace=client, create_users=True)
        plan.approve(by="test")
        report = toolkit.apply(plan, client, ledger, progress=False)
        ledger.close()
        client.close()
    return plan, report


@pytest.fixture(scope="module")
def synced():
    """A real preview, plan and sync report of the bundled sample against the sandbox."""
    import toolkit
    from toolkit.notebook.wizard import bundled_samples

    export = toolkit.load(next(iter(bundled_samples().values())))
    mapping = toolkit.Mapping.from_export(export).set("vip_customer", send_as="both")
    plan, report = _sync_to_sandbox(export, mapping)
    return {"export": export, "preview": mapping.preview(export), "plan": plan,
            "report": report}


def test_audience_sizes_bars_are_member_counts_largest_on_top(export):
    fig = plots.audience_sizes(export)
    ax = fig.axes[0]
    bars = {t.get_text(): p.get_width() for t, p in zip(ax.get_yticklabels(), ax.patches)}
    members = {a: int(export.profiles[a].fillna(False).astype(bool).sum())
               for a in export.audiences}
    assert bars == members
    widths = [p.get_width() for p in ax.patches]
    assert widths == sorted(widths)  # barh draws bottom-up: largest ends on top
    assert "40 profiles" in ax.get_title()
    assert "19 (48%)" in _texts(fig)
    _titled_and_labelled(fig)


def test_audience_overlap_counts_profiles_in_both(export):
    fig = plots.audience_overlap(export)
    names = sorted(export.audiences)
    m = {a: export.profiles[a].fillna(False).astype(bool).to_numpy() for a in names}
    expected = [f"{int((m[a] & m[b]).sum()):,}" for a in names for b in names]
    assert _texts(fig) == expected
    shares = _texts(plots.audience_overlap(export, share=True))
    assert shares[0] == "100%" and all(s.endswith("%") for s in shares)
    # the diagonal (each audience's own size) is masked out of the colour scale, so the largest
    # overlap, not the largest audience, sets the darkest colour
    image = fig.axes[0].get_images()[0]
    data = image.get_array()
    assert data.mask.diagonal().all() and not data.mask[0, 1]
    off_diagonal = [int((m[a] & m[b]).sum()) for a in names for b in names if a != b]
    assert image.get_clim() == (0, max(off_diagonal))
    assert image.get_interpolation() == "nearest"
    _titled_and_labelled(fig)


def test_identifier_tiers_follow_the_planner_resolution_order(export):
    tiers = plots.identifier_tiers(export).value_counts()
    assert tiers["external_id (user_id)"] == 32
    assert tiers["email only (needs opt-in)"] == 4     # no user_id, an email
    assert tiers["anonymous only (needs alias)"] == 4  # no user_id, no email, an anonymous_id
    assert tiers["no identifier"] == 0
    fig = plots.identifier_coverage(export)
    assert "32 (80%)" in _texts(fig)
    _titled_and_labelled(fig)


def test_trait_distributions_draw_one_panel_per_trait_by_type(export):
    fig = plots.trait_distributions(export)
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_visible()]
    assert titles == ["last_order_at  (datetime)", "last_product_viewed_item  (string)",
                      "total_revenue_180_days  (number)"]
    text_panel = fig.axes[1]
    assert [t.get_text() for t in text_panel.get_yticklabels()] == ["sock", "shoe", "hat"]
    assert any("34 with a value · 6 missing" in t.get_text() for t in fig.axes[2].texts)
    _titled_and_labelled(fig)


def test_standard_traits_are_not_plotted_as_computed_traits(export):
    export.profiles["first_name"] = pd.array(["Ana"] * len(export.profiles), dtype="string")
    export.computations = pd.concat([export.computations, pd.DataFrame([{
        "key": "first_name", "kind": "trait", "computation_id": None, "value_type": "string",
        "name": "first_name"}])], ignore_index=True)
    assert "first_name" in export.traits and "first_name" not in plots.computed_traits(export)
    fig = plots.trait_distributions(export)
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_visible()]
    assert not any(t.startswith("first_name") for t in titles)
    assert fig._suptitle.get_text() == "Computed trait values"
    named = plots.trait_distributions(export, ["first_name"])   # still drawable by name
    assert named._suptitle.get_text() == "Trait values"


def test_trait_distributions_groups_the_long_tail(export):
    export.profiles["last_product_viewed_item"] = pd.array(
        [f"item {i % 13:02d}" for i in range(len(export.profiles))], dtype="string")
    fig = plots.trait_distributions(export, ["last_product_viewed_item"], top=5)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == "(other 8 values)" and len(labels) == 6


def test_unknown_trait_is_a_readable_error(export):
    with pytest.raises(PlotInputError) as info:
        plots.trait_distributions(export, ["lifetime_value"])
    assert info.value.field == "lifetime_value"
    assert "total_revenue_180_days" in info.value.hint


def test_an_export_without_audiences_says_so(export):
    export.computations = export.computations[export.computations["kind"] == "trait"]
    for fig in (plots.audience_sizes(export), plots.audience_overlap(export)):
        assert any("no audiences" in t for t in _texts(fig))


def test_plots_are_deterministic(export, synced):
    makers = [lambda: plots.audience_sizes(export), lambda: plots.audience_overlap(export),
              lambda: plots.identifier_coverage(export), lambda: plots.trait_distributions(export),
              lambda: plots.preview_sizes(synced["preview"]),
              lambda: plots.plan_composition(synced["plan"])]
    for make in makers:
        assert _png(make()) == _png(make())


def test_preview_sizes_match_the_preview(synced):
    preview = synced["preview"]
    fig = plots.preview_sizes(preview)
    left = fig.axes[0]
    frame = preview.to_frame()
    rec = frame[frame["recommended"]].drop_duplicates("key").sort_values("key")
    widths = [p.get_width() for p in left.patches]
    n = len(rec)
    assert widths[:n] == rec["engage_members"].tolist()
    assert widths[n:2 * n] == rec["filter_selects"].tolist()
    dropped_total = [t.get_text() for t in fig.axes[1].texts]
    assert dropped_total == [f"{int(v):,}" for v in rec["dropped"]]
    _titled_and_labelled(fig)


def test_plan_composition_counts_operations_and_data_points(synced):
    plan = synced["plan"]
    fig = plots.plan_composition(plan)
    totals = planned_totals(plan)
    assert fig._suptitle.get_text() == (
        f"Plan composition: {len(plan.operations):,} operations → {totals['objects']:,} objects "
        f"in {totals['requests']:,} requests")
    assert f"{plan.cost()['data_points']:,} in all" in fig.axes[1].get_title()
    vip = plan.operations[plan.operations["rule"] == "vip_customer"]
    assert f"{len(vip):,}" in [t.get_text() for t in fig.axes[0].texts]
    _titled_and_labelled(fig)


def test_an_empty_plan_says_nothing_to_send():
    empty = pd.DataFrame(columns=["computation", "change", "count", "data_points"])
    fig = plots.plan_composition(empty)
    assert any("Nothing to send" in t for t in _texts(fig))


def test_sync_throughput_shows_objects_and_requests(synced):
    report = synced["report"]
    fig = plots.sync_throughput(report)
    line = fig.axes[0].get_lines()[0]
    assert line.get_ydata()[-1] == report.summary()["acknowledged"] > 0
    assert list(line.get_ydata()) == sorted(line.get_ydata())
    assert f"{report.summary()['acknowledged']:,} objects acknowledged" in fig._suptitle.get_text()
    calls = http_calls(report)
    assert fig.axes[1].get_title() == (
        f"{calls['requests sent']:,} requests · {calls['HTTP calls']:,} HTTP calls\n(0 set-up, "
        "0 retries, 0 answered 429)")
    timeline = pd.DataFrame({"seconds": [0.5, 1.0, 2.0], "acknowledged": [75, 150, 160],
                             "requests": [1, 4, 5]})
    fig = plots.sync_throughput(timeline)
    line = fig.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [0.0, 0.5, 1.0, 2.0]
    assert list(line.get_ydata()) == [0, 75, 150, 160]
    assert "≈80 objects/s" in fig.axes[0].get_title()
    _titled_and_labelled(fig)


def test_sync_throughput_ends_at_the_report_totals_with_a_cohort(export):
    """The cohort phase can end between two timeline samples; the plot still shows the report's
    totals (issue 13: the plot left the cohort batch out)."""
    import toolkit

    mapping = toolkit.Mapping.from_export(export).set("vip_customer", send_as="cohort")
    plan, report = _sync_to_sandbox(export, mapping)
    assert any(b.kind == "cohort" for b in plan.batches())
    calls = http_calls(report)
    assert calls["set-up calls"] == 1                  # the cohort is created once
    fig = plots.sync_throughput(report)
    left, right = fig.axes[0].get_lines()[0], fig.axes[1].get_lines()[0]
    assert left.get_ydata()[-1] == report.counts["objects_acknowledged"] == \
        planned_totals(plan)["objects"]
    assert right.get_ydata()[-1] == calls["HTTP calls"] == calls["requests sent"] + 1
    assert f"{planned_totals(plan)['requests']:,} requests · " in fig.axes[1].get_title()


@pytest.mark.parametrize("fn", [plots.preview_sizes, plots.plan_composition,
                                plots.sync_throughput])
def test_wrong_objects_are_refused_with_a_hint(fn):
    with pytest.raises(PlotInputError) as info:
        fn(object())
    assert info.value.hint


def test_figures_are_not_kept_by_pyplot(export):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.audience_sizes(export)
    assert plt.get_fignums() == before
