"""The documentation runs as written: every Python and shell example, and the site builds.

Every fenced block of README.md and docs/*.md says what it is. ``python`` and
``bash`` blocks are examples and run here; ``text`` and ``json`` blocks are
output or a synopsis and are shown only. A block that cannot run here says so
to the reader, on the line before it::

    *Not run by the docs test: it installs from PyPI.*

How the examples run, so they need nothing real:

- Python blocks of a page run in order in one namespace (as a reader pastes
  them), top-level ``await`` allowed. The names a page leaves to the reader's
  bot (``CARTESIA_KEY``, ``VOICE``, ``cartesia``, ``transport``, ``llm``...)
  are provided: placeholder keys and real pipecat services pointed at the
  emulators; a fresh one for each block that uses it. An async ``test_*``
  function a block defines is run. ``$REDIS_URL`` is a redis-server this
  module starts, in which two workers registered ``cartesia`` and ``elevenlabs``.
- Shell blocks run line by line, in a temporary directory, with the
  package's commands on PATH (``.venv/bin/`` is this interpreter's directory). ``demo`` runs with a
  hidden ``--speed 20`` and ``--out`` in a temporary directory; the ports of
  ``emulate --port N`` examples become free ports, those emulators run for the
  page's other commands (which reach them on ``127.0.0.1:N``), and must start,
  print where they listen and exit 0 on SIGTERM. ``curl`` fails on an HTTP error.
"""

import ast
import asyncio
import builtins
import inspect
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer, free_port, running

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"python": "python", "py": "python", "bash": "shell", "sh": "shell", "shell": "shell"}
SHOWN = {"text", "json", "toml", "yaml"}
NOT_RUN = re.compile(r"^\*Not run by the docs test: (?P<reason>[^*]+)\.\*$")
# Kept few on purpose: an example that cannot run is one nobody checks.
MOST_NOT_RUN = 3
BIN = Path(sys.executable).parent
EXAMPLE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Example:
    """One fenced block of a page."""

    page: str
    line: int
    language: str
    code: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(path: Path) -> Iterator[Example]:
    """The fenced blocks of a Markdown page, with the not-run note before each (if any)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    i = 0
    note: str | None = None
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^(`{3,})(.*)$", line)
        if fence is None:
            if line.strip():
                match = NOT_RUN.match(line.strip())
                note = match["reason"] if match else None
            i += 1
            continue
        ticks, info = fence.groups()
        start = i + 1
        i += 1
        while i < len(lines) and lines[i].strip() != ticks:
            i += 1
        language = info.strip().split(" ")[0].lower() if info.strip() else ""
        yield Example(name, start, language, "\n".join(lines[start:i]), note)
        note = None
        i += 1


def examples(kind: str) -> list[Example]:
    return [b for page in PAGES for b in blocks(page) if RUN.get(b.language) == kind]


def pages_with(kind: str) -> list[str]:
    return sorted({e.page for e in examples(kind) if e.not_run is None})


# -- the blocks themselves ----------------------------------------------------------


def test_every_block_says_what_it_is_and_few_are_not_run():
    unlabelled = [b.where for p in PAGES for b in blocks(p) if b.language not in {*RUN, *SHOWN}]
    assert unlabelled == [], "a fence needs a language: python/bash to run, text/json to show"
    not_run = [(b.where, b.not_run) for p in PAGES for b in blocks(p) if b.not_run]
    assert len(not_run) <= MOST_NOT_RUN, not_run
    shown_marked = [b.where for p in PAGES for b in blocks(p) if b.not_run and b.language in SHOWN]
    assert shown_marked == [], "only examples that would run can be marked as not run"


def test_the_block_parser_finds_notes_and_languages(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Intro.\n\n*Not run by the docs test: it needs a GPU.*\n\n```bash\nnvidia-smi\n```\n\n"
        '```python title="x"\nprint(1)\n```\n'
    )
    found = [(b.language, b.code, b.not_run) for b in blocks(page)]
    assert found == [("bash", "nvidia-smi", "it needs a GPU"), ("python", "print(1)", None)]


def test_a_name_read_only_inside_a_handler_still_counts():
    code = (
        "from loguru import logger as log\n"
        "@tts.event_handler('on_failover')\n"
        "async def on_failover(processor, reason):\n"
        "    logger.warning(reason)\n"
        "    log.info(processor)\n"
    )
    assert unbound_names(code, {"tts": object()}) == {"logger"}


# -- what the examples run against ----------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A fleet's Redis, where two workers' calls registered their providers."""
    from pipecat_tts_failover.store.redis import RedisHealthStore

    with running(RedisServer(tmp_path_factory.mktemp("docs-redis"))) as server:

        async def register():
            store = RedisHealthStore(server.url)
            try:
                assert await store.connect(), "the docs' Redis did not answer"
                await store.register_providers(["cartesia", "elevenlabs"])
            finally:
                await store.close()

        asyncio.run(register())
        yield server.url


class _Transport:
    """Stands in for a transport: ``input()`` and ``output()`` processors."""

    def input(self):
        from pipecat.processors.filters.identity_filter import IdentityFilter

        return IdentityFilter()

    def output(self):
        from pipecat.processors.filters.identity_filter import IdentityFilter

        return IdentityFilter()


def reader_names(cartesia_emu, elevenlabs_emu) -> dict[str, object]:
    """Fresh objects for the names the examples leave to the reader's bot."""
    from pipecat.processors.filters.identity_filter import IdentityFilter
    from pipecat.services.cartesia.tts import CartesiaTTSService
    from pipecat.services.elevenlabs.tts import ElevenLabsTTSService

    from pipecat_tts_failover import FailoverTTSService

    def cartesia():
        return CartesiaTTSService(
            api_key="test-key",
            url=cartesia_emu.websocket_url,
            settings=CartesiaTTSService.Settings(voice="voice-1"),
        )

    def elevenlabs():
        return ElevenLabsTTSService(
            api_key="test-key",
            url=elevenlabs_emu.ws_url,
            settings=ElevenLabsTTSService.Settings(voice="voice-2"),
        )

    async def page_on_call(event):
        pass

    return {
        "CARTESIA_KEY": "test-key",
        "ELEVENLABS_KEY": "test-key",
        "ELEVEN_KEY": "test-key",
        "VOICE": "voice-1",
        "VOICE_2": "voice-2",
        "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/placeholder",
        "page_on_call": page_on_call,
        "cartesia": cartesia(),
        "elevenlabs": elevenlabs(),
        "services": {"cartesia": cartesia(), "elevenlabs": elevenlabs()},
        "tts": FailoverTTSService(services=[cartesia(), elevenlabs()]),
        "transport": _Transport(),
        "stt": IdentityFilter(),
        "user_agg": IdentityFilter(),
        "llm": IdentityFilter(),
        "assistant_agg": IdentityFilter(),
        "emu": cartesia_emu,
    }


def unbound_names(code: str, namespace: dict[str, object]) -> set[str]:
    """Names the code reads that nothing binds: not it, not the namespace, not a builtin.

    Catches what running alone would miss in a function the example only
    defines, such as a ``logger`` never imported in an event handler.
    """
    tree = ast.parse(code)
    read: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return read - bound - set(namespace) - set(dir(builtins))


async def run_python(example: Example, namespace: dict[str, object]):
    code = compile(
        example.code, example.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    before = dict(namespace)
    unbound = unbound_names(example.code, namespace)
    assert not unbound, f"{example.where} uses names it never defines: {sorted(unbound)}"
    async with asyncio.timeout(EXAMPLE_TIMEOUT):
        result = eval(code, namespace)
        if inspect.iscoroutine(result):
            await result
        for name, value in list(namespace.items()):
            new = name.startswith("test_") and before.get(name) is not value
            if new and inspect.iscoroutinefunction(value):
                await value()


# -- the examples --------------------------------------------------------------------


@pytest.mark.parametrize("page", pages_with("python"))
async def test_python_examples_run(page, redis_url, monkeypatch):
    from pipecat_tts_failover.testing import CartesiaEmulator, ElevenLabsEmulator

    monkeypatch.setenv("REDIS_URL", redis_url)
    async with CartesiaEmulator() as cartesia_emu, ElevenLabsEmulator() as elevenlabs_emu:
        namespace: dict[str, object] = {"__name__": f"docs:{page}"}
        provided: dict[str, object] = {}
        for example in examples("python"):
            if example.page != page or example.not_run:
                continue
            # A fresh provided object for each block, unless the page made its own.
            for name, value in reader_names(cartesia_emu, elevenlabs_emu).items():
                if name not in namespace or namespace[name] is provided.get(name):
                    namespace[name] = provided[name] = value
            try:
                await run_python(example, namespace)
            except AssertionError:
                raise
            except Exception as e:  # noqa: BLE001 - reported with the example's place
                pytest.fail(f"{example.where}: {type(e).__name__}: {e}\n{example.code}")


@dataclass
class _Background:
    command: str
    process: subprocess.Popen
    output: list[str]


def shell_env(redis_url: str) -> dict[str, str]:
    return os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "REDIS_URL": redis_url,
        "COLUMNS": "120",
        "NO_COLOR": "1",
    }


def commands(code: str) -> list[str]:
    """The command lines of a shell block, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [
        line.strip()
        for line in joined.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def start_emulator(command: str, env: dict[str, str], cwd: Path) -> _Background:
    process = subprocess.Popen(
        command,
        shell=True,
        executable="/bin/bash",
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:  # the emulator prints where it listens, then serves
        output.append(line)
        if "listening on" in line:
            break
    else:
        process.wait(timeout=EXAMPLE_TIMEOUT)
        pytest.fail(f"{command!r} exited {process.returncode}:\n{''.join(output)}")
    return _Background(command, process, output)


def stop_emulator(background: _Background):
    process = background.process
    os.killpg(process.pid, signal.SIGTERM)
    rest, _ = process.communicate(timeout=EXAMPLE_TIMEOUT)
    assert process.returncode == 0, (
        f"{background.command!r} exited {process.returncode} on SIGTERM:\n"
        + "".join(background.output)
        + rest
    )


@pytest.mark.parametrize("page", pages_with("shell"))
def test_shell_examples_run(page, redis_url, tmp_path):
    env = shell_env(redis_url)
    lines = [
        (example, line)
        for example in examples("shell")
        if example.page == page and not example.not_run
        for line in commands(example.code)
    ]
    ports: dict[str, str] = {}
    for _, line in lines:
        if " emulate " in f" {line}":
            port = re.search(r"--port (\d+)", line)
            assert port, f"{line!r}: an emulate example names its port"
            ports[port[1]] = str(free_port())

    def placed(line: str) -> str:
        line = re.sub(r"(^|\s)\.venv/bin/", rf"\g<1>{BIN}/", line)
        for documented, free in ports.items():
            line = re.sub(rf"(--port |127\.0\.0\.1:){documented}\b", rf"\g<1>{free}", line)
        if line.startswith("curl "):  # an HTTP error is a failed example too
            line = "curl --fail-with-body --silent --show-error " + line.removeprefix("curl ")
        if re.search(r"pipecat-tts-failover demo\b", line):
            command = line.partition(" #")[0]
            line = f"{command.rstrip()} --speed 20 --out {tmp_path / 'demo'}"
        return line

    emulators = [
        start_emulator(placed(line), env, tmp_path)
        for _, line in lines
        if " emulate " in f" {line}"
    ]
    try:
        done: set[str] = set()
        for example, line in lines:
            command = placed(line)
            if " emulate " in f" {line}" or command in done:
                continue
            done.add(command)
            result = subprocess.run(
                command,
                shell=True,
                executable="/bin/bash",
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=EXAMPLE_TIMEOUT * 2,
                check=False,
            )
            assert result.returncode == 0, (
                f"{example.where}: {line!r} exited {result.returncode}\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
    finally:
        failures = []
        for background in emulators:
            try:
                stop_emulator(background)
            except AssertionError as e:
                failures.append(str(e))
        assert failures == [], failures


def test_docs_site_builds_strict(tmp_path):
    result = subprocess.run(  # noqa: PLW1510 - the exit code is asserted with the output
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "configuration" / "index.html").exists()
