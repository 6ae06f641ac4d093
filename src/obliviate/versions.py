"""Refuse, in one line, to run on a dependency older than the floor obliviate declares.

The floors are read from the installed package's metadata (``pyproject.toml``'s
``dependencies``), so this file holds no version numbers of its own; CI installs exactly these
floors (``make test-lowest``, ``.ci/lowest.txt``) and runs the suite on them.
"""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from obliviate.errors import UserError

__all__ = ["check_versions", "declared_requirements"]


def declared_requirements(distribution: str = "obliviate") -> list[Requirement]:
    """The unconditional requirements of ``distribution`` (extras left out); [] if it is not installed."""
    try:
        lines = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return []
    requirements = []
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            requirements.append(requirement)
    return requirements


def _short(version: str) -> str:
    """``5.17.0`` -> ``5.17``: the form people write; local labels such as ``+cpu`` are kept."""
    try:
        parsed = Version(version)
    except InvalidVersion:
        return version
    release = list(parsed.release)
    while len(release) > 2 and release[-1] == 0:
        release.pop()
    return ".".join(map(str, release)) + (f"+{parsed.local}" if parsed.local else "")


def _floor(requirement: Requirement) -> str | None:
    for spec in requirement.specifier:
        if spec.operator in (">=", "==", "~="):
            return spec.version
    return None


def check_versions(distribution: str = "obliviate") -> None:
    """Raise a one-line :class:`UserError` naming the first installed dependency outside its
    declared range, with the ``pip install`` that fixes it; missing packages are reported too."""
    for requirement in declared_requirements(distribution):
        name = requirement.name
        spec = ",".join(sorted((str(s) for s in requirement.specifier), key=lambda s: not s.startswith(">")))
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise UserError(f"{name} is not installed but {distribution} needs it: pip install '{name}{spec}'") from None
        if not spec or requirement.specifier.contains(installed, prereleases=True):
            continue
        floor = _floor(requirement)
        try:
            too_old = floor is not None and Version(installed) < Version(floor)
        except InvalidVersion:
            too_old = False
        if too_old:
            raise UserError(
                f"{name} {_short(installed)} is older than {distribution} needs ({spec}): pip install '{name}{spec}'"
            )
        raise UserError(
            f"{name} {_short(installed)} is outside the versions {distribution} supports ({spec}): "
            f"pip install '{name}{spec}'"
        )
