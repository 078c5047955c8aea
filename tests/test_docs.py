"""Docs that must not drift: the YAML reference is generated; every hook is documented."""

from pathlib import Path

import pipeline.hookspecs as hookspecs
from pipeline.introspect import markdown_reference
from pipeline.registry import Registry

DOCS = Path(__file__).parents[1] / "docs"


def test_yaml_reference_is_up_to_date():
    want = markdown_reference(Registry(entry_points=False).node_types) + "\n"
    have = (DOCS / "yaml.md").read_text()
    assert have == want, "docs/yaml.md is stale: run `make docs`"


def test_every_hook_is_documented():
    text = (DOCS / "plugins.md").read_text()
    hooks = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert hooks
    missing = [h for h in hooks if f"`{h}`" not in text]
    assert not missing, f"hooks missing from docs/plugins.md: {missing}"


def test_every_node_kind_has_docs_for_ports_and_params():
    for kind, cls in Registry(entry_points=False).node_types.items():
        assert cls.__doc__ and cls.__doc__.strip(), kind
        for p in cls.param_specs().values():
            assert p.doc, f"{kind}.{p.name} has no doc"
