"""Replay a Dockerfile's build and start steps outside Docker, under a folder that stands in for `/`.

What runs for real: every RUN of the chosen stages (with the stage's ARG and ENV values), every COPY from
the build context (filtered by .dockerignore) and between stages, WORKDIR, and the ENTRYPOINT and
HEALTHCHECK commands. What cannot run here is named, never skipped silently: RUN steps that change the
machine itself (`groupadd`/`useradd`, `apt-get`) are listed in SYSTEM_STEPS and refused if any other RUN would
touch an absolute path. Two differences from Docker, both for speed and both stated in the README: the
virtual environment the image creates is allowed to see this machine's installed packages (so nothing
is downloaded again; the project itself is still built and installed into it from the context), and the
stages share one root folder (the runtime's own files are checked, and the builder's /src removed).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.deploy.dockerfile import Dockerfile, Instruction, expand, split_assignments

SYSTEM_STEPS = ("groupadd ", "useradd ", "apt-get ", "rm -rf /var/lib/apt/lists/")  # root, this machine: Docker-only


def is_system_step(run: str) -> bool:
    """A RUN whose every `&&` part is one of SYSTEM_STEPS."""
    return all(part.strip().startswith(SYSTEM_STEPS) for part in run.split("&&"))


_ABSOLUTE = re.compile(r"(?:^|[\s=:'\"])/\w")


@dataclass
class StageState:
    env: dict[str, str]
    workdir: str = "/"
    entrypoint: list[str] = field(default_factory=list)
    healthcheck: Instruction | None = None
    user: str | None = None
    exposed: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # container paths this chain wrote (WORKDIR, COPY)
    skipped: list[str] = field(default_factory=list)  # RUN steps left to Docker (SYSTEM_STEPS)


class Replay:
    def __init__(self, dockerfile: Dockerfile, context: Path, root: Path, build_args: dict[str, str]) -> None:
        self.dockerfile, self.context, self.root = dockerfile, context, root
        self.build_args = dockerfile.global_args | build_args
        self.built: dict[str, StageState] = {}
        self.log: list[str] = []

    def host(self, container_path: str) -> Path:
        """Where a path of the image lies under the stand-in root."""
        return self.root / container_path.lstrip("/")

    def map_value(self, value: str) -> str:
        """ENV values that are absolute paths (or lists of them) point into the stand-in root."""
        parts = value.split(":")
        return ":".join(str(self.host(p)) for p in parts) if all(p.startswith("/") for p in parts) else value

    def build(self, target: str) -> StageState:
        if target in self.built:
            return self.built[target]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SM1_", "VIRTUAL_ENV", "PYTHON"))}
        state = StageState(env)
        for stage in self.dockerfile.chain(target, self.build_args):
            args: dict[str, str] = {}  # ARG values live in their own stage only
            for ins in stage.instructions:
                self._apply(ins, state, args)
        self.built[target] = state
        return state

    def _apply(self, ins: Instruction, state: StageState, args: dict[str, str]) -> None:
        scope = state.env | args
        if ins.keyword == "ARG":
            for name, default in split_assignments(ins.args).items():
                args[name] = self.build_args.get(name, expand(default, scope))
        elif ins.keyword == "ENV":
            for name, value in split_assignments(ins.args).items():
                raw = expand(value, scope)  # PATH gets its entries from variables already mapped
                state.env[name] = raw if name == "PATH" else self.map_value(raw)
                scope = state.env | args
        elif ins.keyword == "WORKDIR":
            state.workdir = expand(ins.args, scope)
            self.host(state.workdir).mkdir(parents=True, exist_ok=True)
            state.created.append(state.workdir)
        elif ins.keyword == "COPY":
            self._copy(ins, state, scope)
        elif ins.keyword == "RUN":
            self._run(ins, state, scope)
        elif ins.keyword == "USER":
            state.user = ins.args
        elif ins.keyword == "EXPOSE":
            state.exposed += ins.args.split()
        elif ins.keyword == "HEALTHCHECK":
            state.healthcheck = ins
        elif ins.keyword == "ENTRYPOINT":
            state.entrypoint = ins.exec_form()
        else:
            raise AssertionError(f"Dockerfile:{ins.line}: {ins.keyword} is not replayed; teach tests/deploy")

    def _copy(self, ins: Instruction, state: StageState, scope: dict[str, str]) -> None:
        *sources, dest = expand(ins.args, scope).split()
        dest_path = dest if dest.startswith("/") else f"{state.workdir.rstrip('/')}/{dest}"
        target = self.host(dest_path)
        if "from" in ins.flags:
            self.build(ins.flags["from"])
            assert len(sources) == 1 and sources[0] == dest_path, "replay shares one root: copy to the same path"
            assert target.exists(), f"Dockerfile:{ins.line}: {dest_path} was not built in stage {ins.flags['from']}"
            state.created.append(dest_path)
            return
        for src in sources:
            origin = self.context / src
            assert origin.exists(), f"Dockerfile:{ins.line}: COPY {src}: not in the build context"
            if origin.is_dir():
                shutil.copytree(origin, target, dirs_exist_ok=True)
            else:
                into = target / origin.name if dest.endswith("/") or len(sources) > 1 else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, into)
        state.created.append(dest_path)

    def _run(self, ins: Instruction, state: StageState, scope: dict[str, str]) -> None:
        if is_system_step(ins.args):
            state.skipped.append(ins.args)
            return
        assert not _ABSOLUTE.search(ins.args), f"Dockerfile:{ins.line}: RUN names an absolute path: {ins.args}"
        done = subprocess.run(
            ["sh", "-c", ins.args],
            cwd=self.host(state.workdir),
            env=scope,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.log.append(f"$ {ins.args}\n{done.stdout}{done.stderr}")
        assert done.returncode == 0, f"Dockerfile:{ins.line}: RUN {ins.args} failed:\n{done.stdout}{done.stderr}"
        self._share_installed_packages(scope)

    @staticmethod
    def _share_installed_packages(scope: dict[str, str]) -> None:
        """A venv the step created sees this machine's packages too, so the next steps download nothing."""
        cfg = Path(scope.get("VIRTUAL_ENV", "/nonexistent")) / "pyvenv.cfg"
        if cfg.exists():
            key = "include-system-site-packages"
            cfg.write_text(cfg.read_text().replace(f"{key} = false", f"{key} = true"))

    def prune_to(self, state: StageState) -> None:
        """Remove what only other stages wrote (the builder's /src), as the final image would not have it."""
        keep = {self.host(p) for p in state.created}
        for folder, dirs, files in os.walk(self.root):
            here = Path(folder)
            for name in list(dirs) + files:
                path = here / name
                if path in keep:
                    dirs[:] = [d for d in dirs if d != name]  # kept whole: no need to look inside
                elif not any(path in k.parents for k in keep):
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                    dirs[:] = [d for d in dirs if d != name]

    def command(self, argv: list[str], state: StageState) -> list[str]:
        """An exec-form command with the image's absolute paths pointed into the stand-in root."""
        return [str(self.host(a)) if a.startswith("/") else a for a in argv]
