"""The demo's timeline picture (matplotlib, Agg): a bar per sentence, coloured by provider.

One panel per call, on one time axis: the caller's lines in grey, each
sentence's audio coloured by the provider that spoke it, dead air shaded red,
and the moments the primary broke, failed over, was fixed and came back.
"""

import textwrap
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from pipecat_tts_failover.demo.script import BACKUP, PRIMARY
from pipecat_tts_failover.demo.timeline import CallView, Status, TimeOrigin

PROVIDER_COLORS = {"cartesia": "#1f77b4", "elevenlabs": "#ff7f0e"}
_OTHER_COLOR = "#7f7f7f"
_DEAD_AIR = "#d62728"
_CALLER = "#c7c7c7"
# kind: (colour, line style, label shown on the line)
_EVENT_LINES = {
    "break": ("#d62728", "-", True),
    "failover": ("#ff7f0e", "--", True),
    "switch": ("#ff7f0e", "--", True),
    "fix": ("#2ca02c", ":", True),
    "up": ("#2ca02c", "-", True),
    "back": ("#2ca02c", "--", True),
    "start": ("#9467bd", "--", True),
}
_SHORT = {
    "break": f"{PRIMARY} breaks",
    "failover": f"failover to {BACKUP}",
    "switch": f"switched to {BACKUP}",
    "fix": f"{PRIMARY} fixed",
    "up": f"{PRIMARY} back up (probe)",
    "back": f"call back on {PRIMARY}",
    "start": f"call starts on {BACKUP}",
}
_LABEL_CHARS = 44
_SUBTITLE_CHARS = 150
_SHOWN_DEAD_AIR = 0.3


def write_png(
    views: Sequence[CallView],
    path: Path,
    *,
    title: str,
    subtitle: str = "",
    origin: TimeOrigin | None = None,
) -> Path:
    """Draw the calls' timelines one above the other and save them as a PNG.

    The title and subtitle are also kept in the PNG's ``Title`` and
    ``Description`` text chunks.

    Args:
        views: The calls.
        path: Where to write the PNG.
        title: The figure's title.
        subtitle: A line under it (the settings that are not the defaults).
        origin: The clock the calls are drawn on; each call from its own start by default.

    Returns:
        The path.
    """
    figure = timeline_figure(views, title=title, subtitle=subtitle, origin=origin)
    figure.savefig(path, metadata={"Title": title, "Description": subtitle})
    return path


def timeline_figure(
    views: Sequence[CallView],
    *,
    title: str,
    subtitle: str = "",
    origin: TimeOrigin | None = None,
) -> Figure:
    """The figure :func:`write_png` saves."""
    origin = origin or TimeOrigin(tuple(0.0 for _ in views))
    offsets = origin.offsets
    rows = [len(v.sentences) + 1 for v in views]
    figure = Figure(
        figsize=(14, 1.3 + sum(0.34 * r + 0.9 for r in rows)), dpi=110, layout="constrained"
    )
    axes = figure.subplots(
        len(views), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": rows}
    )[:, 0]
    end = max(offset + _call_end(view) for view, offset in zip(views, offsets))
    for i, (ax, view, offset) in enumerate(zip(axes, views, offsets)):
        _draw_call(ax, view, offset, origin.start_note(i))
        ax.set_xlim(0, end + 0.5)
    axes[-1].set_xlabel(origin.axis_label())
    figure.suptitle(title, fontsize=13, fontweight="bold")
    if subtitle:
        # Above the first panel's title, where constrained layout makes room for it.
        axes[0].annotate(
            "\n".join(textwrap.wrap(subtitle, _SUBTITLE_CHARS)),
            (0, 1),
            xycoords="axes fraction",
            xytext=(0, 24),
            textcoords="offset points",
            ha="left",
            va="bottom",
            fontsize=9.5,
            color="#444444",
        )
    figure.legend(
        handles=_legend(views), loc="outside lower center", ncol=6, frameon=False, fontsize=9
    )
    return figure


def _call_end(view: CallView) -> float:
    ends = [view.length] + [c.end for c in view.callers] + [e.at for e in view.events]
    return max(ends)


def _draw_call(ax, view: CallView, offset: float, start_note: str):
    count = len(view.sentences)
    labels = ["caller"] + [f"{s.index + 1}. {_truncate(s.text)}" for s in view.sentences]
    ax.set_ylim(count + 0.6, -0.6)
    ax.set_yticks(range(count + 1), labels, fontsize=8)
    ax.grid(axis="x", color="#eeeeee", linewidth=0.8)
    ax.set_axisbelow(True)

    for line in view.callers:
        ax.barh(0, line.end - line.start, left=offset + line.start, height=0.6, color=_CALLER)
        ax.text(
            offset + (line.start + line.end) / 2, 0, "caller", ha="center", va="center", fontsize=7
        )

    for sentence in view.sentences:
        y = sentence.index + 1
        if sentence.dead_air and sentence.due is not None:
            ax.barh(
                y,
                sentence.dead_air,
                left=offset + sentence.due,
                height=0.6,
                color=_DEAD_AIR,
                alpha=0.3,
                hatch="///",
                edgecolor=_DEAD_AIR,
                linewidth=0,
            )
            if sentence.dead_air >= _SHOWN_DEAD_AIR:
                ax.text(
                    offset + sentence.due + sentence.dead_air / 2,
                    y - 0.42,
                    f"{sentence.dead_air:.1f} s",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color=_DEAD_AIR,
                    fontweight="bold",
                )
        for segment in sentence.segments:
            color = PROVIDER_COLORS.get(segment.provider, _OTHER_COLOR)
            silent = sentence.status == Status.SILENT
            ax.barh(
                y,
                segment.end - segment.start,
                left=offset + segment.start,
                height=0.6,
                color="white" if silent else color,
                edgecolor=color,
                hatch="xx" if silent else None,
                linewidth=0.8 if silent else 0,
            )
        if sentence.status in (Status.LOST, Status.SILENT):
            at = sentence.due if sentence.due is not None else sentence.sent
            if at is not None:
                ax.text(
                    offset + at + (sentence.dead_air or 0) + 0.1,
                    y,
                    "not heard" if sentence.status == Status.SILENT else "lost",
                    va="center",
                    fontsize=8,
                    color=_DEAD_AIR,
                    fontweight="bold",
                )

    probes = [e.at for e in view.events if e.kind == "probe"]
    if probes:
        ax.plot(
            [offset + at for at in probes],
            [count + 0.45] * len(probes),
            linestyle="none",
            marker="^",
            markersize=5,
            color="#9e9e9e",
        )
    for event in view.events:
        style = _EVENT_LINES.get(event.kind)
        if style is None:
            continue
        color, linestyle, _ = style
        x = offset + event.at
        ax.axvline(x, color=color, linestyle=linestyle, linewidth=1.3, alpha=0.9)
        ax.text(
            x + 0.08,
            count + 0.35,
            _SHORT.get(event.kind, event.kind),
            rotation=90,
            va="bottom",
            ha="left",
            fontsize=7.5,
            color=color,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
        )

    longest = view.longest_dead_air
    worst = f"{longest.dead_air:.1f} s" if longest and longest.dead_air is not None else "none"
    started = f"started on {view.first_provider}, " if view.first_provider else ""
    if started and start_note:
        started = f"started on {view.first_provider} {start_note}, "
    ax.set_title(
        f"{view.label}: {started}{view.heard}/{count} sentences heard, longest dead air {worst}",
        loc="left",
        fontsize=11,
    )


def _truncate(text: str) -> str:
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


def _legend(views: Sequence[CallView]) -> list:
    providers = []
    for view in views:
        for sentence in view.sentences:
            for pid in sentence.providers:
                if pid not in providers:
                    providers.append(pid)
    handles: list = [
        Patch(color=PROVIDER_COLORS.get(pid, _OTHER_COLOR), label=pid) for pid in providers
    ]
    handles.append(Patch(facecolor=_DEAD_AIR, alpha=0.3, hatch="///", label="dead air"))
    handles.append(Patch(color=_CALLER, label="caller speaking"))
    kinds = {e.kind for view in views for e in view.events}
    for kind, (color, linestyle, _) in _EVENT_LINES.items():
        if kind in kinds:
            handles.append(Line2D([], [], color=color, linestyle=linestyle, label=_SHORT[kind]))
    if "probe" in kinds:
        handles.append(
            Line2D([], [], color="#9e9e9e", marker="^", linestyle="none", label="failed probe")
        )
    return handles
