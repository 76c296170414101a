"""YAML that cannot blow up: a size limit on the text and on the document once its aliases are expanded.

``yaml.safe_load`` never runs code, but a few hundred bytes of nested anchors and aliases (``&a [*b, *b, ...]``)
describe a value of billions of elements: anything that walks or prints it (a copy, an error message) takes
gigabytes. :func:`safe_load_bounded` composes the document, counts the nodes it would have with every alias
expanded (memoised, so the count itself is cheap) and refuses documents above :data:`MAX_NODES`.
"""

from __future__ import annotations

from typing import Any

import yaml

from medseg_attn.config.sections import ConfigError

__all__ = ["MAX_NODES", "MAX_TEXT", "safe_load_bounded"]

MAX_TEXT = 1 << 20  # characters of YAML text (1 MiB; a configuration is a few kB)
MAX_NODES = 100_000  # scalars, lists and mappings after alias expansion


def _expanded_size(node: yaml.Node, sizes: dict[int, int], limit: int) -> int:
    """Nodes in ``node`` with every alias expanded (a shared node counts each time it is used)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = limit + 1  # a node that contains itself expands forever
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [item for pair in node.value for item in pair]
    else:
        children = []
    for child in children:
        total += _expanded_size(child, sizes, limit)
        if total > limit:
            break
    sizes[id(node)] = total
    return total


def safe_load_bounded(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` with bounds on the text and the expanded document.

    Raises:
        ConfigError: text over :data:`MAX_TEXT` characters or a document over :data:`MAX_NODES` nodes once
            aliases are expanded (an alias bomb), naming ``where``.
        yaml.YAMLError: not valid YAML (the caller names the file and line).
    """
    if len(text) > MAX_TEXT:
        raise ConfigError(f"{where}: {len(text)} characters of YAML; a configuration is limited to {MAX_TEXT}")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, MAX_NODES) > MAX_NODES:
            raise ConfigError(f"{where}: the YAML expands to more than {MAX_NODES} values through its aliases "
                              f"(&anchor / *alias); refusing it (an alias bomb?)")
        return loader.construct_document(node)
    finally:
        loader.dispose()
