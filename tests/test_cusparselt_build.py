"""CPU checks of the cuSPARSELt library's sources as build.py sees them (no compiler run)."""

from __future__ import annotations

import re

from sparse24_jax_kernels.cusparselt import build


def _local_includes(path):
    return re.findall(r'^#include "([^"]+)"', path.read_text(), re.M)


def test_the_cache_key_hashes_every_unit_and_local_header():
    """A changed header must rebuild: every unit, and every file a unit or header
    includes from csrc/, is in the hashed tree (jaxlib's xla/ headers are hashed by name)."""
    tree = set(build._source_tree())
    units = build.sources()
    assert units and set(units) <= tree
    assert {p.suffix for p in units} == {".cu", ".cc"}
    for p in tree:
        for inc in _local_includes(p):
            if not inc.startswith("xla/"):
                assert p.parent / inc in tree, f"{p.name} includes {inc}, which the cache key misses"


def test_device_units_include_no_xla_header():
    """The .cu units are compiled for every architecture: they stay free of the
    heavy XLA FFI headers (which only the host-only .cc units include)."""
    for unit in (u for u in build.sources() if u.suffix == ".cu"):
        seen, todo = set(), [unit]
        while todo:
            p = todo.pop()
            for inc in _local_includes(p):
                assert not inc.startswith("xla/"), f"{unit.name} reaches {inc} through {p.name}"
                q = p.parent / inc
                if q not in seen:
                    seen.add(q)
                    todo.append(q)
