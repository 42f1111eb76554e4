"""Read the Dockerfile and .dockerignore the way Docker does, so tests can replay the image's steps.

Covers what this project's Dockerfile uses: logical lines with `\\` continuations, comments, global ARGs,
stages chosen by a build arg (`FROM torch-${VARIANT}`), `$VAR` / `${VAR}` / `${VAR:-x}` / `${VAR:+x}`,
exec-form JSON arrays, and .dockerignore patterns with `*`, `**`, `?` and `!` exceptions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

_VAR = re.compile(r"\$(?:\{(\w+)(?::([-+])([^}]*))?\}|(\w+))")
_FLAG = re.compile(r"--([\w-]+)=(\S+)\s+")


def expand(text: str, env: dict[str, str]) -> str:
    """Substitute variables as Docker does in ENV, ARG, FROM, COPY and WORKDIR (unset: empty)."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        value = env.get(name, "")
        if m.group(2) == "-":
            return value or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if value else ""
        return value

    return _VAR.sub(sub, text)


def split_assignments(text: str) -> dict[str, str]:
    """`A=1 B="x y"` (ENV and ARG; an ARG may have no value) -> {"A": "1", "B": "x y"}."""
    out = {}
    for token in re.findall(r'(?:[^\s"]|"[^"]*")+', text):
        name, _, value = token.partition("=")
        out[name] = value.replace('"', "")
    return out


@dataclass(frozen=True)
class Instruction:
    keyword: str  # FROM, RUN, COPY, ... (upper case)
    args: str  # the rest of the logical line, flags removed, continuations joined
    flags: dict[str, str]  # --from=builder, --interval=30s, ...
    line: int  # first physical line, 1-based

    def exec_form(self) -> list[str]:
        """The JSON array of CMD, ENTRYPOINT or HEALTHCHECK CMD (shell form is not used by this project)."""
        body = self.args.removeprefix("CMD").strip() if self.keyword == "HEALTHCHECK" else self.args
        return json.loads(body)


@dataclass
class Stage:
    base: str  # the FROM argument as written
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def first(self, keyword: str) -> Instruction | None:
        return next((i for i in self.instructions if i.keyword == keyword), None)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


class Dockerfile:
    def __init__(self, text: str) -> None:
        self.global_args: dict[str, str] = {}
        self.stages: list[Stage] = []
        for ins in _instructions(text):
            if ins.keyword == "FROM":
                base, _, name = ins.args.partition(" AS ")
                self.stages.append(Stage(base.strip(), name.strip() or None))
            elif not self.stages:
                if ins.keyword == "ARG":
                    self.global_args |= split_assignments(ins.args)
            else:
                self.stages[-1].instructions.append(ins)

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        return cls(path.read_text())

    def instructions(self) -> list[Instruction]:
        return [i for s in self.stages for i in s.instructions]

    def stage(self, name: str) -> Stage:
        found = [s for s in self.stages if s.name == name]
        assert found, f"no stage {name!r} in the Dockerfile"
        return found[0]

    def chain(self, target: str, build_args: dict[str, str] | None = None) -> list[Stage]:
        """The stages `target` is built from, the first one resting on an image, the last one `target`."""
        args = self.global_args | (build_args or {})
        names = {s.name for s in self.stages}
        chain = [self.stage(target)]
        while (base := expand(chain[0].base, args)) in names:
            chain.insert(0, self.stage(base))
        return chain

    def image(self, target: str, build_args: dict[str, str] | None = None) -> str:
        """The external image the target rests on."""
        return expand(self.chain(target, build_args)[0].base, self.global_args | (build_args or {}))


def _instructions(text: str) -> list[Instruction]:
    out, pending, start = [], "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments end nothing: Docker drops them even inside a continued line
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        flags = {}
        while m := _FLAG.match(rest.strip() + " "):
            flags[m.group(1)] = m.group(2)
            rest = rest.strip()[m.end() :]
        out.append(Instruction(keyword.upper(), " ".join(rest.split()), flags, start))
        pending = ""
    return out


# ---- .dockerignore ------------------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern:
    parts, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts) + r"\Z")


class DockerIgnore:
    """Docker's rule: the last pattern that matches a path or one of its parent folders decides."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, str, re.Pattern]] = []  # (an exception "!...", pattern, its regex)
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            pattern = line.lstrip("!").strip("/")
            self.rules.append((line.startswith("!"), pattern, _pattern_regex(pattern)))

    def excluded(self, relpath: str) -> bool:
        parts = relpath.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for keep, _, rx in self.rules:
            if any(rx.match(p) for p in prefixes):
                excluded = not keep
        return excluded

    def _may_keep_inside(self, reldir: str) -> bool:
        return any(keep and (p.startswith(reldir + "/") or p.startswith("**")) for keep, p, _ in self.rules)

    def build_context(self, root: Path, dest: Path) -> list[str]:
        """Copy the files Docker would send as the build context from `root` to `dest`; return their paths."""
        sent = []
        for folder, dirs, files in os.walk(root):
            here = Path(folder).relative_to(root)
            dirs[:] = [
                d
                for d in dirs
                if not (self.excluded((here / d).as_posix()) and not self._may_keep_inside((here / d).as_posix()))
            ]
            for name in files:
                rel = (here / name).as_posix()
                if not self.excluded(rel) and not (root / rel).is_symlink():
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(root / rel, dest / rel)
                    sent.append(rel)
        return sorted(sent)
