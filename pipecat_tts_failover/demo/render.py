"""The demo in the terminal (rich): a live table per call while it runs, then a summary."""

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from pipecat_tts_failover.demo.script import PRIMARY
from pipecat_tts_failover.demo.timeline import CallView, SentenceView, Status, TimeOrigin

PROVIDER_STYLES = {"cartesia": "cyan", "elevenlabs": "magenta"}
_STATUS_MARKS = {
    Status.SPEAKING: ("▶", "bold"),
    Status.HEARD: ("✓", "green"),
    Status.CUT: ("✂", "yellow"),
    Status.SILENT: ("∅", "red"),
    Status.LOST: ("✗", "bold red"),
}
_EVENT_MARKS = {
    "break": ("!", "bold red"),
    "fix": ("✚", "green"),
    "failover": ("→", "yellow"),
    "switch": ("→", "yellow"),
    "down": ("✖", "red"),
    "probe": ("·", "dim"),
    "up": ("✔", "green"),
    "back": ("↩", "bold green"),
    "start": ("☎", "yellow"),
}
_NOT_HEARD = (Status.LOST, Status.SILENT, Status.CUT)
# Dead air worth a colour: noticeable, and bad.
_NOTICEABLE, _BAD = 0.3, 0.8
# Wide enough for two tables side by side.
_SIDE_BY_SIDE_WIDTH = 150


def provider_text(providers: Sequence[str]) -> Text:
    """Provider names, coloured, joined by arrows."""
    text = Text()
    for i, pid in enumerate(providers):
        if i:
            text.append(" → ", style="dim")
        text.append(pid, style=PROVIDER_STYLES.get(pid, "white"))
    return text


def dead_air_text(seconds: float | None) -> Text:
    """Dead air in seconds, coloured by how bad it is."""
    if seconds is None:
        return Text("")
    style = "bold red" if seconds >= _BAD else "yellow" if seconds >= _NOTICEABLE else "dim"
    return Text(f"{seconds:.2f} s", style=style)


def settings_text(settings: Sequence[str]) -> str:
    """The demo's settings that differ from FailoverTTSService's defaults, as one line."""
    if not settings:
        return "FailoverTTSService with its default settings"
    return "Not the defaults, to fit a short call: " + ", ".join(settings)


def print_header(console: Console, title: str, settings: Sequence[str]):
    """What the demo runs, and with which settings other than the defaults."""
    console.print(Text(title, style="bold"))
    console.print(Text(settings_text(settings), style="yellow"))
    console.print()


class LiveView:
    """What the terminal shows while the calls run: one table per call and a progress bar each.

    A bar counts the sentences heard in full, as the summary does (``CallView.heard``).

    Args:
        sources: For each call, a function returning its latest timeline (None before it starts).
        totals: Sentences in each call's script.
        console: Where it is drawn.
        speed: How many times faster than real time the calls run.
    """

    def __init__(
        self,
        sources: Mapping[str, Callable[[], CallView | None]],
        totals: Sequence[int],
        console: Console,
        *,
        speed: float = 1.0,
    ):
        self._console = console
        self._sources = dict(sources)
        self._speed = speed
        self.progress = Progress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("sentences heard{task.fields[missed]}  {task.fields[clock]}"),
            console=console,
            auto_refresh=False,
        )
        self._tasks = {
            label: self.progress.add_task(label, total=total, start=False, clock="", missed="")
            for label, total in zip(self._sources, totals)
        }

    def _progress(self, label: str, view: CallView):
        task = self._tasks[label]
        if not self.progress.tasks[task].started:
            self.progress.start_task(task)
        missed = sum(s.status in _NOT_HEARD for s in view.sentences)
        self.progress.update(
            task,
            completed=view.heard,
            missed=f" ({missed} not heard)" if missed else "",
            clock=f"{view.length:5.1f} s of call",
        )
        if view.finished:
            self.progress.stop_task(task)

    def __rich__(self) -> RenderableType:
        views = {label: source() for label, source in self._sources.items()}
        shown = [(label, view) for label, view in views.items() if view is not None]
        origin = TimeOrigin.of([view for _, view in shown], self._speed)
        tables = []
        for i, (label, view) in enumerate(shown):
            self._progress(label, view)
            tables.append(call_table(view, origin.offsets[i], origin.start_note(i)))
        if len(tables) > 1 and self._console.width >= _SIDE_BY_SIDE_WIDTH:
            grid = Table.grid(expand=True, padding=(0, 2))
            for _ in tables:
                grid.add_column(ratio=1)
            grid.add_row(*tables)
            body: RenderableType = grid
        else:
            body = Group(*tables)
        return Group(body, self.progress)


def call_table(view: CallView, offset: float = 0.0, start_note: str = "") -> Table:
    """One call's timeline as a table: sentences, the caller's lines and events, in time order.

    Args:
        view: The call.
        offset: Seconds added to every time: where the call starts on a clock shared with others.
        start_note: Where the call starts on that clock, for the title.
    """
    started = f"started on {view.first_provider}" if view.first_provider else "starting"
    if start_note:
        started += f" {start_note}"
    table = Table(
        title=f"{view.label}  [dim]({started})[/dim]",
        title_justify="left",
        expand=True,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("t", justify="right", style="dim", width=6, no_wrap=True)
    table.add_column("", width=1, no_wrap=True)
    table.add_column("what was said / what happened", ratio=1, overflow="ellipsis", no_wrap=True)
    table.add_column("voice", no_wrap=True)
    table.add_column("dead air", justify="right", no_wrap=True)

    rows: list[tuple[float, int, tuple]] = []
    for line in view.callers:
        at = offset + line.start
        rows.append((at, 0, (_t(at), "", Text(f"Caller: {line.text}", style="italic dim"), "", "")))
    for sentence in view.sentences:
        if sentence.status == Status.WAITING:
            continue
        rows.append((offset + _sentence_time(sentence), 1, _sentence_row(sentence, offset)))
    for event in view.events:
        mark, style = _EVENT_MARKS.get(event.kind, ("•", ""))
        at = offset + event.at
        rows.append(
            (at, 2, (_t(at), Text(mark, style=style), Text(event.text, style=style), "", ""))
        )
    for _, _, row in sorted(rows, key=lambda r: (r[0], r[1])):
        table.add_row(*row)
    return table


def _sentence_time(sentence: SentenceView) -> float:
    for at in (sentence.start, sentence.due, sentence.sent):
        if at is not None:
            return at
    return 0.0


def _sentence_row(sentence: SentenceView, offset: float) -> tuple:
    mark, style = _STATUS_MARKS.get(sentence.status, ("", ""))
    what = Text(f"{sentence.index + 1:>2}. {sentence.text}")
    if sentence.status in _NOT_HEARD:
        what.append(f"  ({sentence.status})", style=style)
    return (
        _t(offset + _sentence_time(sentence)),
        Text(mark, style=style),
        what,
        provider_text(sentence.providers),
        dead_air_text(sentence.dead_air),
    )


def _t(seconds: float) -> str:
    return f"{seconds:5.1f}"


def summary_lines(view: CallView, wav: Path | None) -> list[Text]:
    """A call's summary: sentences heard, the longest dead air, failovers, its audio file."""
    total = len(view.sentences)
    rows: list[tuple[str, Text | str]] = []
    if view.first_provider:
        rows.append(("Started on", provider_text([view.first_provider])))
    heard_style = "green" if view.heard == total else "bold red"
    rows.append(("Sentences heard", Text(f"{view.heard}/{total}", style=heard_style)))
    longest = view.longest_dead_air
    if longest is not None and longest.dead_air is not None:
        rows.append(
            (
                "Longest dead air",
                Text.assemble(
                    dead_air_text(longest.dead_air), f" (before sentence {longest.index + 1})"
                ),
            )
        )
    missing = [str(s.index + 1) for s in view.sentences if s.status in _NOT_HEARD]
    if missing:
        rows.append(("Not heard in full", Text(f"sentence {', '.join(missing)}", style="red")))
    moves = [e.text for e in view.events if e.kind in ("failover", "switch")]
    rows.append(
        (
            "Failovers",
            f"{len(moves)}" + (f" ({moves[0].removeprefix('failover ')})" if moves else ""),
        )
    )
    back = next((e for e in view.events if e.kind == "back"), None)
    if back is not None:
        at = next(
            (s.index + 1 for s in view.sentences if s.start is not None and s.start >= back.at),
            None,
        )
        rows.append((f"Back on {PRIMARY}", f"from sentence {at}" if at else "yes"))
    elif any(e.kind in ("failover", "switch", "start") for e in view.events):
        rows.append((f"Back on {PRIMARY}", Text("no", style="yellow")))
    if wav is not None:
        rows.append(("Audio", f"{wav.name} ({view.length:.1f} s)"))
    width = max(len(name) for name, _ in rows) + 2
    lines = [Text(view.label, style="bold")]
    for name, value in rows:
        lines.append(Text.assemble(f"  {name + ':':<{width}}", value))
    return lines


def print_summary(
    console: Console,
    views: Sequence[tuple[CallView, Path | None]],
    files: Sequence[Path],
    out: Path,
):
    """Print each call's summary and where the files are."""
    console.print()
    for view, wav in views:
        for line in summary_lines(view, wav):
            console.print(line)
        console.print()
    console.print(Text.assemble("Files in ", (str(out), "bold"), ":"))
    for path in files:
        console.print(f"  {path.name}")
