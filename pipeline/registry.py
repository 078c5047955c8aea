"""The plugin registry: loads built-in families, entry-point plugins and local modules."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .node import Node

ENTRY_POINT_GROUP = "voip_pipeline"

# Built-in families register through the same hooks as third-party plugins.
BUILTIN_PLUGINS = (
    "plugins.generators",
    "plugins.basic",
    "plugins.mixer",
    "plugins.resample",
    "plugins.files",
    "plugins.codecs",
    "plugins.rtp",
    "plugins.devices",
    "plugins.video",
    "plugins.conference",
    "plugins.aec",
    "plugins.jitterbuffer",
    "plugins.sip",
)


class Registry:
    """Node types, codecs and RTP payload formats from every plugin, with the plugin each
    node type came from."""

    def __init__(self, *, entry_points: bool = True, builtins: bool = True) -> None:
        self.pm = pluggy.PluginManager("voip_pipeline")
        self.pm.add_hookspecs(hookspecs)
        self.node_types: dict[str, type[Node]] = {}
        self.codecs: dict[str, Any] = {}
        self.payload_formats: dict[str, Any] = {}
        self._loaded_files: set[str] = set()
        if builtins:
            for modname in BUILTIN_PLUGINS:
                self.register(importlib.import_module(modname), modname)
        if entry_points:
            self._load_entry_points()
        self.pm.check_pending()

    def _load_entry_points(self) -> None:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.get_plugin(ep.name) is not None:
                continue
            try:
                module = ep.load()
            except Exception as e:  # a broken third-party plugin must name itself
                raise PluginError(
                    f"plugin '{ep.name}' ({ep.value}) failed to load: {e}",
                    hint=f"fix or uninstall the package providing '{ep.name}'",
                ) from e
            self.register(module, ep.name)

    def register(self, module: Any, name: str) -> None:
        """Register a plugin module (or object) and collect what it provides."""
        if self.pm.get_plugin(name) is not None:
            return
        self.pm.register(module, name=name)
        for cls in self._provided(self.pm.hook.register_node_types, name):
            self._add_node_type(cls, name)
        for codec in self._provided(self.pm.hook.register_codecs, name):
            self.codecs[codec.name] = codec
        for fmt in self._provided(self.pm.hook.register_payload_formats, name):
            self.payload_formats[fmt.name] = fmt

    @staticmethod
    def _provided(hook: Any, name: str) -> list[Any]:
        """What plugin `name`'s implementation of `hook` returns (nothing if it has none)."""
        impl = next((i for i in hook.get_hookimpls() if i.plugin_name == name), None)
        return list(impl.function() or []) if impl is not None else []

    def _add_node_type(self, cls: type[Node], plugin: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Node)) or not cls.kind:
            raise PluginError(
                f"plugin '{plugin}' registered {cls!r}, which is not a Node class with a kind",
                hint="return subclasses of pipeline.node.Node that set `kind`",
            )
        old = self.node_types.get(cls.kind)
        if old is not None and old is not cls:
            raise PluginError(
                f"node kind '{cls.kind}' is registered by both plugin '{old.plugin}' and "
                f"plugin '{plugin}'",
                hint="rename the kind in one of the plugins, or uninstall one",
            )
        cls.plugin = plugin
        self.node_types[cls.kind] = cls

    def load_file(self, path: str | Path) -> None:
        """Import a local plugin module named by a YAML graph's `plugins:` list."""
        path = Path(path).resolve()
        key = str(path)
        if key in self._loaded_files:
            return
        if not path.is_file():
            raise PluginError(f"plugin module '{path}' not found",
                              hint="check the path under plugins: (relative to the YAML file)")
        modname = f"_voip_local_{path.stem}_{abs(hash(key)) % 10**8}"
        spec = importlib.util.spec_from_file_location(modname, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise PluginError(f"plugin module '{path}' failed to import: {e}",
                              hint="run it with python to see the full error") from e
        self._loaded_files.add(key)
        self.register(module, path.stem)

    def node_type(self, kind: str) -> type[Node]:
        try:
            return self.node_types[kind]
        except KeyError:
            raise PluginError(f"unknown node type '{kind}'", hint=self.suggest(kind)) from None

    def suggest(self, kind: str) -> str:
        close = difflib.get_close_matches(kind, self.node_types, n=1)
        if close:
            return f"did you mean '{close[0]}'? ('pipeline inspect' lists node types)"
        return "'pipeline inspect' lists node types"


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (built on first use)."""
    global _default
    if _default is None:
        _default = Registry()
    return _default
