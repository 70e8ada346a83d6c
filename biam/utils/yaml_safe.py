"""YAML config files read as plain data, bounded: no aliases, no duplicate keys, a mapping, shallow.

``yaml.safe_load`` builds no objects, but it expands aliases (a 449-byte file of nested aliases
becomes gigabytes), silently keeps the last of a key set twice, and accepts any document. The
loader here refuses each of those with the line, before a config is merged.
"""

from __future__ import annotations

from typing import Any, Dict

import yaml

__all__ = ["YamlConfigError", "MAX_DEPTH", "MAX_BYTES", "load_yaml_mapping"]

# Configs are two or three levels deep and a few kilobytes; far beyond that is not a config.
MAX_DEPTH = 32
MAX_BYTES = 1 << 20


class YamlConfigError(yaml.YAMLError):
    """A YAML file that is not a plain config mapping (message names the line)."""


class _Loader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YamlConfigError(f"line {event.start_mark.line + 1}: alias *{event.anchor} refused (configs "
                                  "are plain values; write the value out)")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlConfigError(f"line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: Dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                raise YamlConfigError(f"line {key_node.start_mark.line + 1}: a key that is not a plain value") from None
            if first is not None:
                raise YamlConfigError(f"key {key!r} set twice: lines {first} and {key_node.start_mark.line + 1}")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Loader.construct_mapping)


def load_yaml_mapping(text: str) -> Dict[str, Any]:
    """``text`` (a YAML document) -> dict; an empty document is ``{}``.

    Raises :class:`YamlConfigError` (a ``yaml.YAMLError``) for an alias, a duplicate key, nesting
    deeper than :data:`MAX_DEPTH`, more than :data:`MAX_BYTES`, or a document that is not a mapping.
    """
    if len(text) > MAX_BYTES:
        raise YamlConfigError(f"{len(text)} characters; a config file holds at most {MAX_BYTES}")
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise YamlConfigError(f"the document is a {type(data).__name__}, not a mapping of config keys")
    return data
