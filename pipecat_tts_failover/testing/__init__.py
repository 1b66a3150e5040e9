"""Local Cartesia and ElevenLabs emulators with fault injection, for tests and demos.

Each emulator serves its provider's real paths and message shapes, WebSocket
and HTTP, on one 127.0.0.1 port, so pipecat's services and the official SDKs
work against it with only a URL change. See :mod:`pipecat_tts_failover.testing.faults`
for the fault syntax.

Example::

    async with CartesiaEmulator(fault="error@2") as emu:
        tts = CartesiaTTSService(api_key="test-key", url=emu.websocket_url)
        ...
        assert emu.requests[1].fault == Fault.parse("error@2")
"""

from pipecat_tts_failover.testing._server import Emulator, SynthesisRequest
from pipecat_tts_failover.testing.cartesia import CartesiaEmulator
from pipecat_tts_failover.testing.elevenlabs import ElevenLabsEmulator
from pipecat_tts_failover.testing.faults import Fault, FaultKind

__all__ = [
    "CartesiaEmulator",
    "ElevenLabsEmulator",
    "Emulator",
    "Fault",
    "FaultKind",
    "SynthesisRequest",
]
