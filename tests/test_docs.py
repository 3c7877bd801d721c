"""The docs against the code: every config key is in the configuration reference."""

from __future__ import annotations

import os

import attrs
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.config import schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The classes of the config's sections, and the heading their keys are listed under.
SECTIONS = (
    (schema.General, "## `[general]`"),
    (schema.PoolConfig, "## `[pools.<name>]`"),
    (schema.UserConfig, "### `users`"),
    (schema.AuthQueryConfig, "### `auth_query`"),
    (schema.WebConfig, "## `[web]`"),
    (schema.TalosConfig, "## `[talos]`"),
    (schema.ManholeConfig, "## `[manhole]`"),
)


def keys(cls) -> list:
    """The TOML keys a section class declares (fields with a parser, or nested tables)."""
    return [f.name for f in attrs.fields(cls) if "parse" in f.metadata]


def undocumented(text: str) -> list:
    """The keys the reference C{text} does not name in their section."""
    missing = []
    for cls, heading in SECTIONS:
        start = text.find(heading)
        if start < 0:
            missing.append(heading)
            continue
        end = text.find("\n## ", start + len(heading))
        section = text[start : end if end > 0 else len(text)]
        missing += [f"{heading}: {name}" for name in keys(cls) if f"`{name}`" not in section]
    return missing


class ReferenceTests(SynchronousTestCase):
    """docs/configuration.md."""

    def test_every_key_is_documented(self):
        """Each key of each section is named in its section of the reference."""
        with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
            text = f.read()
        self.assertEqual(undocumented(text), [])

    def test_a_missing_key_is_seen(self):
        """A key taken out of the reference (or named only in another section) is seen."""
        with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
            text = f.read()
        self.assertIn("## `[manhole]`: host_key", undocumented(text.replace("`host_key`", "`hostkey`")))
        self.assertNotIn("name", keys(schema.PoolConfig))
