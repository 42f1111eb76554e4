"""MIDI ports through python-rtmidi: choosing the API, listing ports, opening an output or an input by name.

Where the OS has virtual ports (ALSA, JACK, CoreMIDI) the bridge creates its own, which the DAW then
sees as a MIDI device. Windows' MIDI API has none: there the bridge opens an existing port by name, e.g.
one made with loopMIDI, and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import rtmidi

APIS = {
    "auto": rtmidi.API_UNSPECIFIED,
    "alsa": rtmidi.API_LINUX_ALSA,
    "jack": rtmidi.API_UNIX_JACK,
    "coremidi": rtmidi.API_MACOSX_CORE,
    "winmm": rtmidi.API_WINDOWS_MM,
}
LOOPMIDI_HINT = (
    "Windows has no virtual MIDI ports: create one with loopMIDI "
    "(https://www.tobias-erichsen.de/software/loopmidi.html) and pass its name with --port"
)


class PortError(Exception):
    """A port that cannot be opened (or a MIDI system that cannot start); the message says which and why."""


@contextmanager
def _as_port_error() -> Iterator[None]:
    """rtmidi's own errors (no JACK server, no ALSA sequencer, a port gone) as PortError."""
    try:
        yield
    except rtmidi.RtMidiError as e:
        raise PortError(str(e)) from e


def api_names() -> list[str]:
    """The API names this build of python-rtmidi can use (always including 'auto')."""
    compiled = set(rtmidi.get_compiled_api())
    return [name for name, api in APIS.items() if api == rtmidi.API_UNSPECIFIED or api in compiled]


def _api(name: str) -> int:
    if name not in api_names():
        raise PortError(f"MIDI API {name!r} is not available here; choose one of {', '.join(api_names())}")
    return APIS[name]


def has_virtual_ports(midi: rtmidi.MidiOut | rtmidi.MidiIn) -> bool:
    return midi.get_current_api() != rtmidi.API_WINDOWS_MM


def list_ports(api: str = "auto") -> tuple[list[str], list[str]]:
    """(outputs, inputs): the names of the ports other programs offer."""
    with _as_port_error():
        return rtmidi.MidiOut(rtapi=_api(api)).get_ports(), rtmidi.MidiIn(rtapi=_api(api)).get_ports()


def find_port(ports: list[str], wanted: str) -> int | None:
    """Index of the port called `wanted`: an exact name first, else the one port whose name contains it."""
    if wanted in ports:
        return ports.index(wanted)
    matches = [i for i, p in enumerate(ports) if wanted.lower() in p.lower()]
    if len(matches) > 1:
        raise PortError(f"{wanted!r} matches several ports ({', '.join(ports[i] for i in matches)}); be more precise")
    return matches[0] if matches else None


def _available(kind: str, ports: list[str]) -> str:
    return f"{kind} ports here: {', '.join(repr(p) for p in ports)}" if ports else f"there are no {kind} ports here"


def open_output(name: str, api: str = "auto", client: str = "sm1-bridge", existing: bool = False) -> tuple[Any, str]:
    """A MIDI output and a line saying what was opened: a new virtual port `name`, or (on Windows, or with
    `existing`) the existing port whose name matches."""
    with _as_port_error():
        return _open_output(name, api, client, existing)


def _open_output(name: str, api: str, client: str, existing: bool) -> tuple[Any, str]:
    out = rtmidi.MidiOut(rtapi=_api(api), name=client)
    if not existing and has_virtual_ports(out):
        out.open_virtual_port(name)
        return out, f"virtual MIDI output {name!r} ({rtmidi.get_api_display_name(out.get_current_api())})"
    ports = out.get_ports()
    index = find_port(ports, name)
    if index is None:
        hint = "" if has_virtual_ports(out) else f". {LOOPMIDI_HINT}"
        raise PortError(f"no MIDI output port named {name!r}; {_available('output', ports)}{hint}")
    out.open_port(index)
    note = "" if has_virtual_ports(out) else " (Windows has no virtual ports: using this existing one)"
    return out, f"existing MIDI output {ports[index]!r}{note}"


def open_input(
    name: str,
    callback: Callable[[list[int], float], None],
    api: str = "auto",
    client: str = "sm1-bridge-in",
    timing: bool = False,
) -> tuple[Any, str]:
    """A MIDI input calling `callback(message, seconds_since_previous)` from rtmidi's thread: the existing
    port whose name matches, else (where the OS allows) a new virtual port `name` a DAW can send to.
    `timing`: also deliver MIDI clock messages (for following the DAW's tempo)."""
    with _as_port_error():
        return _open_input(name, callback, api, client, timing)


def _open_input(
    name: str, callback: Callable[[list[int], float], None], api: str, client: str, timing: bool
) -> tuple[Any, str]:
    inp = rtmidi.MidiIn(rtapi=_api(api), name=client)
    inp.ignore_types(sysex=True, timing=not timing, active_sense=True)
    ports = inp.get_ports()
    index = find_port(ports, name)
    if index is not None:
        inp.open_port(index)
        what = f"existing MIDI input {ports[index]!r}"
    elif has_virtual_ports(inp):
        inp.open_virtual_port(name)
        what = f"virtual MIDI input {name!r}"
    else:
        raise PortError(f"no MIDI input port named {name!r}; {_available('input', ports)}")
    inp.set_callback(lambda event, _data: callback(event[0], event[1]))
    return inp, what
