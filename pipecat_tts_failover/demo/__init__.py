"""``pipecat-tts-failover demo``: a support call that keeps talking through a TTS outage.

The demo runs the Cartesia and ElevenLabs emulators in-process, puts a
``FailoverTTSService`` around pipecat's real ``CartesiaTTSService`` and
``ElevenLabsTTSService`` pointed at them, plays a scripted call, breaks the
primary in the middle and fixes it later, and shows what the caller heard:
live in the terminal, then as ``demo.wav`` and ``demo-timeline.png``.

Modules:
    script    the call's script, when the primary breaks and is fixed, timings
    timeline  what the caller heard: play-out of the audio as it arrived, dead air
    call      one call through a real pipecat pipeline, driven by the script
    render    the header, the live terminal view and the summary (rich)
    plot      the timeline picture (matplotlib)
    stage     what every run stands on: options, emulators, store, breaker, live view
    run       the command: header, calls in this process, outputs
    fleet     ``--workers N``: the calls in worker processes
    worker    one worker process of ``--workers N``
"""
