"""Provider ids: one normalized string per TTS service, derived or given."""

import re
from collections.abc import Callable, Mapping, Sequence

from pipecat.services.tts_service import TTSService

_SEPARATORS = re.compile(r"[\s\-_]+")
# Words that name the kind of class, not the provider ("CartesiaHttpTTSService").
_CLASS_SUFFIXES = re.compile(r"(Http|WebSocket|Websocket|WS)?(TTS)?Service$")

# What may stand for a provider's service in a dict of services: a function of
# no arguments that returns the service (called when the service is needed).
ServiceFactory = Callable[[], TTSService]


def normalize_provider_id(provider_id: str) -> str:
    """Normalize a provider id: lower case, trimmed, with ``-``, ``_`` and spaces folded to ``-``.

    Args:
        provider_id: The id as the user wrote it.

    Returns:
        The normalized id.

    Raises:
        TypeError: If the id is not a string.
        ValueError: If nothing is left once normalized.
    """
    if not isinstance(provider_id, str):
        raise TypeError(f"provider id must be a str, not {type(provider_id).__name__}")
    normalized = _SEPARATORS.sub("-", provider_id.strip().lower()).strip("-")
    if not normalized:
        raise ValueError(f"provider id {provider_id!r} is empty once normalized")
    return normalized


def provider_id_for(service: TTSService) -> str:
    """Derive a provider id from a service's class.

    ``CartesiaTTSService`` and ``CartesiaHttpTTSService`` give ``"cartesia"``;
    ``ElevenLabsTTSService`` gives ``"elevenlabs"``. A class that does not end
    in ``TTSService`` keeps its whole class name, normalized, so an unknown
    service is never given another provider's name.

    Args:
        service: The TTS service.

    Returns:
        The normalized provider id.
    """
    name = type(service).__name__
    stem = _CLASS_SUFFIXES.sub("", name) if name.endswith("TTSService") else name
    return normalize_provider_id(stem or name)


def resolve_services(
    services: Mapping[str, TTSService | ServiceFactory] | Sequence[TTSService],
) -> dict[str, TTSService | ServiceFactory]:
    """Validate the services given to FailoverTTSService and key them by provider id.

    Args:
        services: A mapping of id to service (or to a factory of the
            service), or a list of services in preference order.

    Returns:
        An ordered dict of normalized id to service or factory, in preference order.

    Raises:
        TypeError: If ``services`` is not a mapping or list, or holds something
            that is neither a pipecat ``TTSService`` nor, in a mapping, a
            callable that makes one.
        ValueError: If fewer than two services are given, an id repeats once
            normalized, or one service instance is given twice.
    """
    if isinstance(services, Mapping):
        pairs = [(normalize_provider_id(pid), svc) for pid, svc in services.items()]
    elif isinstance(services, Sequence) and not isinstance(services, (str, bytes)):
        pairs = [(None, svc) for svc in services]
    else:
        raise TypeError(
            "services must be a dict of id to TTSService or a list of TTSService, "
            f"not {type(services).__name__}"
        )
    for pid, svc in pairs:
        if isinstance(svc, TTSService):
            continue
        # A factory is a function, not a class (a class is callable, and is a mistake here).
        is_factory = callable(svc) and not isinstance(svc, type)
        if is_factory and pid:
            continue
        if is_factory:
            raise TypeError(
                "services holds a factory; a factory needs a provider id: pass a dict, "
                'e.g. {"cartesia": primary, "elevenlabs": make_backup}'
            )
        where = f"services[{pid!r}]" if pid else "services"
        raise TypeError(
            f"{where} holds {type(svc).__name__}, which is not a pipecat TTSService "
            "(nor, in a dict, a function that returns one)"
        )
    if len(pairs) < 2:
        raise ValueError(
            f"services needs at least two TTS services (a primary and a backup), got {len(pairs)}"
        )

    resolved: dict[str, TTSService | ServiceFactory] = {}
    for pid, svc in pairs:
        pid = pid or provider_id_for(svc)
        if pid in resolved:
            raise ValueError(
                f"services has the provider id {pid!r} twice; pass a dict to name them, "
                'e.g. {"cartesia-a": ..., "cartesia-b": ...}'
            )
        if any(svc is other for other in resolved.values()):
            raise ValueError(f"services holds the same {type(svc).__name__} instance twice")
        resolved[pid] = svc
    return resolved
