"""The wheel pgdoorman builds into: the package, the twistd plugin, the console script and
the licence (tox's own runs install the sdist)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WheelTests(TestCase):
    """C{pip wheel .}, offline."""

    def test_wheel(self):
        """The wheel holds the package (without the tests), twisted/plugins, the
        C{pgdoorman} console script, the [yaml] extra and LICENSE."""
        out = os.path.abspath(self.mktemp())
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, ROOT],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        self.assertEqual(build.returncode, 0, build.stderr)
        [name] = [n for n in os.listdir(out) if n.endswith(".whl")]
        with zipfile.ZipFile(os.path.join(out, name)) as wheel:
            names = wheel.namelist()
            meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
            metadata = wheel.read(meta).decode()
            entry_points = wheel.read(meta.replace("METADATA", "entry_points.txt")).decode()
        self.assertIn("twisted/plugins/pgdoorman_plugin.py", names)
        self.assertIn("pgdoorman/app/upgrade.py", names)
        self.assertFalse([n for n in names if n.startswith("tests/")])
        self.assertTrue([n for n in names if n.endswith("LICENSE")], names)
        self.assertIn("pgdoorman = pgdoorman.app.cli:main", entry_points)
        self.assertIn("Provides-Extra: yaml", metadata)
        self.assertIn("License: MIT", metadata)
