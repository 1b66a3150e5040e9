"""The ``pipecat-tts-failover demo`` command: what the caller hears, the files, the errors.

The runs use the hidden ``--speed`` option: the emulators stream faster and
every timing of the call shrinks with them, so a 30-second call takes a few
seconds and looks the same.
"""

import io
import os
import re
import subprocess
import sys
import wave
from argparse import Namespace
from pathlib import Path

import pytest
from rich.console import Console

from pipecat_tts_failover.cli import main as cli_main
from pipecat_tts_failover.demo.plot import timeline_figure
from pipecat_tts_failover.demo.run import DemoError, DemoOptions, options_from, run_demo
from pipecat_tts_failover.demo.script import BACKUP, PRIMARY, sentences
from pipecat_tts_failover.demo.timeline import Status, TimeOrigin
from pipecat_tts_failover.testing.faults import Fault
from tests.support.emulators import free_port
from tests.support.redis_server import RedisServer, running

SPEED = 5.0
REPO = Path(__file__).resolve().parents[1]
TOTAL = len(sentences())


def run_cli(*args: str, timeout: float = 60.0, preamble: str = "") -> subprocess.CompletedProcess:
    """``pipecat-tts-failover ARGS`` in a process of its own, as a user runs it."""
    code = f"{preamble}import sys; from pipecat_tts_failover.cli import main; sys.exit(main({list(args)!r}))"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | {"COLUMNS": "120"},
    )


# What the demo sets to fit a short call, which a user must not take for the defaults.
NOT_DEFAULTS = [
    'return_to_primary="immediately" (default "next_call")',
    "cooldown=3.0 (default 30.0)",
    'probes={"cartesia": CartesiaProbe(...)}',
]


def png_text(path: Path) -> dict[str, str]:
    """The text chunks of a PNG."""
    from PIL import Image

    with Image.open(path) as image:
        return dict(image.text)


def wav_seconds(path: Path) -> tuple[float, wave._wave_params]:
    with wave.open(str(path), "rb") as wav:
        params = wav.getparams()
    return params.nframes / params.framerate, params


async def demo(out: Path, **options):
    """Run the demo in this process: its result and what it printed."""
    out.mkdir(parents=True, exist_ok=True)
    printed = io.StringIO()
    console = Console(file=printed, width=120, highlight=False)
    options = {"fault": Fault.parse("hang"), "speed": SPEED} | options
    result = await run_demo(DemoOptions(out=out, **options), console)
    return result, printed.getvalue()


def test_caller_hears_every_sentence_when_the_primary_hangs(tmp_path):
    done = run_cli("demo", "--speed", str(SPEED), "--out", str(tmp_path))

    assert done.returncode == 0, done.stderr
    assert re.search(rf"Sentences heard:\s+{TOTAL}/{TOTAL}", done.stdout), done.stdout
    assert f"failover {PRIMARY} → {BACKUP}: no first audio" in done.stdout
    assert f"Back on {PRIMARY}: from sentence" in done.stdout
    for name in ("demo.wav", "demo-timeline.png", "demo.log"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "demo-timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The settings that are not the defaults, in the header and under the picture's title.
    header = " ".join(done.stdout.split("FailoverTTSService  (started")[0].split())
    for setting in NOT_DEFAULTS:
        assert setting in header, header
    subtitle = png_text(tmp_path / "demo-timeline.png")["Description"]
    assert all(setting in subtitle for setting in NOT_DEFAULTS), subtitle
    seconds, params = wav_seconds(tmp_path / "demo.wav")
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, 24000)
    reported = float(re.search(r"demo\.wav \(([\d.]+) s\)", done.stdout).group(1))
    assert seconds == pytest.approx(reported, abs=0.05)
    # pipecat's logs went to demo.log, not the terminal
    assert "CartesiaTTSService" not in done.stdout + done.stderr
    assert "CartesiaTTSService" in (tmp_path / "demo.log").read_text()


async def test_wav_holds_what_the_caller_heard_with_its_silences(tmp_path):
    result, printed = await demo(tmp_path, fault=Fault.parse("error"))

    [(view, wav)] = result.calls
    assert view.heard == TOTAL
    assert wav is not None
    with wave.open(str(wav), "rb") as audio:
        frames = audio.getnframes()
        assert audio.getframerate() == view.sample_rate
    assert frames == round(view.length * view.sample_rate)
    spoken = [s for s in view.sentences if s.status == Status.HEARD]
    assert view.length >= spoken[-1].end > spoken[0].start
    assert f"{TOTAL}/{TOTAL}" in printed


async def test_compare_shows_service_switcher_losing_sentences(tmp_path):
    result, printed = await demo(tmp_path, compare=True)

    (failover, failover_wav), (switcher, switcher_wav) = result.calls
    assert (failover.label, switcher.label) == ("FailoverTTSService", "ServiceSwitcher")
    assert failover.heard == TOTAL
    assert switcher.heard < TOTAL
    assert any(s.status == Status.LOST for s in switcher.sentences)
    assert switcher.longest_dead_air.dead_air > failover.longest_dead_air.dead_air
    assert failover_wav.name == "demo.wav" and failover_wav.is_file()
    assert switcher_wav.name == "demo-switcher.wav" and switcher_wav.is_file()
    assert result.png.is_file()
    assert "ServiceSwitcher" in printed and f"{TOTAL}/{TOTAL}" in printed
    # One truth: the live progress bar and the summary count the same sentences heard.
    for view in (failover, switcher):
        bar = re.findall(rf"{view.label} [━╸╺ ]+ (\d+)/{TOTAL} sentences heard", printed)
        summary = re.search(
            rf"{view.label}\n(?:  .*\n)*?  Sentences heard:\s+(\d+)/{TOTAL}", printed
        )
        assert bar and summary, printed
        assert int(bar[-1]) == int(summary.group(1)) == view.heard
    not_heard = TOTAL - switcher.heard
    assert f"{switcher.heard}/{TOTAL} sentences heard ({not_heard} not heard)" in printed


def _statuses(*views) -> str:
    return "; ".join(
        f"{v.label}: "
        + ", ".join(f"{s.index + 1} {s.status} {s.seconds:.2f}s {s.providers}" for s in v.sentences)
        + f" events={[(round(e.at, 1), e.text) for e in v.events]}"
        for v in views
    )


def test_unknown_fault_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo", "--fault", "melt"])

    assert exit_info.value.code == 2
    assert "unknown kind 'melt'" in capsys.readouterr().err


def test_workers_need_redis(tmp_path, capsys):
    assert cli_main(["demo", "--workers", "2", "--out", str(tmp_path)]) == 2

    assert "--workers 2 needs --redis-url" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"workers": 0}, "--workers must be between 1 and 4"),
        ({"workers": 2, "redis_url": "redis://x", "compare": True}, "cannot be combined"),
    ],
)
def test_bad_argument_combinations_are_usage_errors(tmp_path, changes, message):
    defaults = {
        "fault": Fault.parse("hang"),
        "out": str(tmp_path),
        "compare": False,
        "redis_url": None,
        "workers": 1,
        "speed": 1.0,
    }
    args = Namespace(**(defaults | changes))

    with pytest.raises(DemoError, match=message) as error:
        options_from(args)
    assert error.value.status == 2


def test_out_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("")

    assert cli_main(["demo", "--out", str(target)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_unreachable_redis_is_a_clear_failure(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"

    done = run_cli("demo", "--redis-url", url, "--out", str(tmp_path), "--speed", str(SPEED))

    assert done.returncode == 1
    assert f"cannot reach Redis at {url}" in done.stderr


def test_missing_extra_names_what_to_install(tmp_path):
    done = run_cli(
        "demo", "--out", str(tmp_path), preamble="import sys; sys.modules['matplotlib'] = None; "
    )

    assert done.returncode == 1
    assert 'pip install "pipecat-tts-failover[demo]"' in done.stderr
    assert "matplotlib" in done.stderr


async def test_second_worker_starts_its_call_on_the_backup(tmp_path):
    with running(RedisServer(tmp_path / "redis")) as server:
        result, printed = await demo(tmp_path / "out", workers=2, redis_url=server.url)

    (first, first_wav), (second, second_wav) = result.calls
    assert (first.label, second.label) == ("worker 1", "worker 2")
    assert first.first_provider == PRIMARY
    assert any(e.kind == "down" for e in first.events)
    assert second.first_provider == BACKUP
    assert first.heard == second.heard == TOTAL, _statuses(first, second)
    assert first_wav.is_file() and second_wav.is_file()
    assert re.search(rf"worker 2\n  Started on:\s+{BACKUP}", printed)

    # One clock for both workers, in the live tables and in the picture, and said so.
    origin = TimeOrigin.of([first, second], SPEED)
    assert origin.shared and origin.first == "worker 1" and origin.offsets[1] > 1.0
    note = origin.start_note(1)
    assert f"worker 2  (started on {BACKUP} {note})" in printed
    rows = printed.split(f"worker 2  (started on {BACKUP}")[-1]
    first_row_t = float(re.search(r"^\s+([\d.]+) │", rows, re.MULTILINE).group(1))
    assert first_row_t >= origin.offsets[1] - 0.05
    figure = timeline_figure([first, second], title="t", origin=origin)
    bottom = figure.axes[1]
    assert note in bottom.get_title(loc="left")
    assert bottom.get_xlabel() == "seconds since worker 1's call started (as the callers hear it)"
    # Worker 2's first audio is drawn where its table puts it, not at its own zero.
    bars = [p.get_x() for p in bottom.patches if p.get_width() > 0 and p.get_facecolor()[3] == 1]
    assert min(bars) >= origin.offsets[1] - 0.05


def test_calls_that_start_together_are_each_shown_from_their_own_start():
    from pipecat_tts_failover.demo.timeline import CallView

    def view(label, started):
        return CallView(label, started, PRIMARY, [], [], [], 0.0, 24000)

    together = TimeOrigin.of([view("a", 100.0), view("b", 100.05)], SPEED)
    assert together.offsets == (0.0, 0.0) and not together.shared
    assert together.axis_label() == "seconds into each call (as the caller hears it)"
    assert together.start_note(1) == ""
    apart = TimeOrigin.of([view("a", 100.0), view("b", 102.0)], SPEED)
    assert apart.offsets == (0.0, 2.0 * SPEED) and apart.shared


def test_the_demo_modules_import_in_one_direction():
    code = (
        "import sys\n"
        "import pipecat_tts_failover.demo.fleet, pipecat_tts_failover.demo.stage\n"
        "assert 'pipecat_tts_failover.demo.run' not in sys.modules, 'fleet imports run'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
