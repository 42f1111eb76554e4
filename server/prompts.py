"""Prompts (a base64 MIDI file, an uploaded file, or note events) -> token ids, within the server's limits."""

from __future__ import annotations

import base64
import binascii

from server.errors import BadPrompt, PromptTooLarge
from server.settings import Settings
from sm1.events import NoteEvent
from sm1.midi import MidiError, MidiLimits, read_midi
from sm1.tokenizer import Tokenizer


def decode_base64(data: str, what: str, max_bytes: int) -> bytes:
    if len(data) > max_bytes * 4 // 3 + 4:
        raise PromptTooLarge(f"{what} is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadPrompt(f"{what} is not valid base64 ({e})") from e


def midi_events(data: bytes, settings: Settings, name: str = "prompt") -> list[NoteEvent]:
    if len(data) > settings.max_prompt_bytes:
        raise PromptTooLarge(f"{name} is {len(data)} bytes, more than max_prompt_bytes {settings.max_prompt_bytes}")
    try:
        return read_midi(data, MidiLimits(max_bytes=settings.max_prompt_bytes), name=name)
    except MidiError as e:
        raise BadPrompt(str(e)) from e


def prompt_events(prompt: str | list[NoteEvent] | None, settings: Settings) -> list[NoteEvent]:
    """The notes of a prompt as sent in JSON: base64 of a MIDI file, or the notes themselves."""
    if prompt is None:
        return []
    if isinstance(prompt, str):
        return midi_events(decode_base64(prompt, "prompt", settings.max_prompt_bytes), settings)
    return prompt


def prompt_tokens(events: list[NoteEvent], tokenizer: Tokenizer, settings: Settings) -> list[int] | None:
    """Token ids to prefill (None: no prompt, an empty piece)."""
    if not events:
        return None
    tokens = tokenizer.encode(events)
    if len(tokens) > settings.max_prompt_tokens:
        raise PromptTooLarge(
            f"prompt is {len(tokens)} tokens, more than max_prompt_tokens {settings.max_prompt_tokens}"
        )
    return tokens
