"""The configs shipped inside the package (``medseg_attn/resources/configs/``, the same files as ``configs/``).

``--config ct_spleen`` (or ``ct_spleen.yaml``, or ``configs/ct_spleen.yaml`` outside a source checkout) names a
shipped config when no such file exists; ``medseg-attn config list|show NAME`` prints them with their comments.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from medseg_attn.errors import UserError

__all__ = ["shipped_configs", "shipped_config_text", "resolve_config_path"]

PACKAGE = "medseg_attn.resources.configs"


def shipped_configs() -> dict[str, str]:
    """{name: first comment line} of every shipped config, by name."""
    found = {}
    for entry in sorted(resources.files(PACKAGE).iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".yaml"):
            first = next((line.lstrip("# ").strip() for line in entry.read_text().splitlines()
                          if line.startswith("#")), "")
            found[entry.name[: -len(".yaml")]] = first
    return found


def _name(spec: str | Path) -> str:
    name = Path(spec).name
    return name[: -len(".yaml")] if name.endswith(".yaml") else name


def shipped_config_text(name: str) -> str:
    """The text (comments included) of a shipped config.

    Raises:
        ValueError: no shipped config of that name (the message lists them).
    """
    key = _name(name)
    names = shipped_configs()
    if key not in names:
        raise UserError(f"config {name!r}: no shipped config of that name; shipped: {', '.join(names)}")
    return resources.files(PACKAGE).joinpath(f"{key}.yaml").read_text()


def resolve_config_path(spec: str | Path) -> Path:
    """``spec`` when it is an existing file, else the installed copy of the shipped config it names.

    Names: ``ct_spleen``, ``ct_spleen.yaml`` or ``configs/ct_spleen.yaml`` (when that file is not there).
    Anything else comes back unchanged (the YAML reader reports the missing file).
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path
    parent = path.parent.name
    if parent not in ("", "configs") or path.suffix not in ("", ".yaml"):
        return path
    key = _name(path)
    if key not in shipped_configs():
        return path
    return Path(str(resources.files(PACKAGE).joinpath(f"{key}.yaml")))
