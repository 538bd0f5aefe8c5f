"""Credentials inherited from ``agentkeys run --fd``: an open memfd named by
``AGENTKEYS_FD_<SERVICE>=<fd>:<length>`` in the environment."""

from __future__ import annotations

import os

from ._credential import Credential
from ._errors import AgentkeysError
from ._memory import fd_kind


def fd_env_var(service: str) -> str:
    """The variable naming ``service``'s inherited descriptor: upper-cased, with ``-`` and
    ``.`` turned into ``_`` (``my-api.v2`` -> ``AGENTKEYS_FD_MY_API_V2``)."""
    return "AGENTKEYS_FD_" + service.upper().replace("-", "_").replace(".", "_")


def take_inherited(service: str) -> Credential | None:
    """The inherited credential for ``service``, or ``None`` if none was passed.

    The variable is removed at once: the descriptor is single-use, and children started
    later must not be told about a descriptor they do not have.
    """
    name = fd_env_var(service)
    value = os.environ.pop(name, None)
    if value is None:
        return None
    fd, length = _parse(name, value)
    try:
        inherited = os.get_inheritable(fd)
    except OSError:
        inherited = False
    if not inherited:
        # Close-on-exec (Python's default for every descriptor it opens): this process
        # opened it, so other code here owns it; it was not handed over by `run --fd`.
        raise AgentkeysError(
            f"{name} names descriptor {fd}, which this process opened itself (it is "
            "close-on-exec), not one it inherited: start the program with 'agentkeys run --fd'"
        )
    kind = fd_kind(fd)
    if kind is None:
        # Not ours to close: the number may now belong to an unrelated file, which the wipe
        # would otherwise overwrite.
        raise AgentkeysError(
            f"{name} names descriptor {fd}, which is not an open memfd: was the variable "
            "inherited without its descriptor? Start the program with 'agentkeys run --fd'"
        )
    os.set_inheritable(fd, False)  # programs we start must not inherit the secret
    return Credential(fd, service=service, length=length, kind=kind, mode="inherited")


def _parse(name: str, value: str) -> tuple[int, int]:
    fd_text, sep, length_text = value.partition(":")
    if not (sep and _is_decimal(fd_text) and _is_decimal(length_text)):
        raise AgentkeysError(f"{name} must be '<fd>:<length>', got {value!r}")
    return int(fd_text), int(length_text)


def _is_decimal(text: str) -> bool:
    return text.isascii() and text.isdigit()
