"""The sans-IO boundary: the codec, the config package and the session core must not import
Twisted."""

import json
import os
import pkgutil
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import pgdoorman
import pgdoorman.config
import pgdoorman.protocol
import pgdoorman.session

#: The sans-IO packages: every module under each must import without Twisted.
_PACKAGES = (pgdoorman.protocol, pgdoorman.config, pgdoorman.session)

_CHECK = (
    "import importlib, json, sys\n"
    "importlib.import_module(sys.argv[1])\n"
    "print(json.dumps(sorted(n for n in sys.modules"
    " if n == 'twisted' or n.startswith('twisted.'))))\n"
)


def _sansio_modules() -> list:
    """Every sans-IO package and every module under it."""
    names = []
    for package in _PACKAGES:
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    return names


def _twisted_imported_by(module: str) -> list:
    """Import C{module} in a fresh interpreter and return the Twisted modules it pulled in."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(pgdoorman.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", _CHECK, module],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=60,
    )
    if result.returncode:
        raise AssertionError(f"importing {module} failed:\n{result.stderr}")
    return json.loads(result.stdout)


class SansIOBoundaryTests(SynchronousTestCase):
    """Each sans-IO module imports without Twisted."""

    def test_discovery(self) -> None:
        """Module discovery finds the codec modules, so the boundary check is not vacuous."""
        names = _sansio_modules()
        for expected in (
            "pgdoorman.protocol.startup",
            "pgdoorman.protocol.framing",
            "pgdoorman.protocol.messages",
            "pgdoorman.config.schema",
            "pgdoorman.config.loader",
            "pgdoorman.session.client_input",
            "pgdoorman.session.client_login",
            "pgdoorman.session.lease",
            "pgdoorman.session.parameters",
            "pgdoorman.session.server_login",
            "pgdoorman.session.state",
        ):
            self.assertIn(expected, names)

    def test_noTwisted(self) -> None:
        """Importing each sans-IO module alone loads no C{twisted} module."""
        offenders = {}
        for name in _sansio_modules():
            loaded = _twisted_imported_by(name)
            if loaded:
                offenders[name] = loaded
        self.assertEqual(offenders, {})

    def test_detectsTwisted(self) -> None:
        """The check itself sees Twisted when a module does import it."""
        self.assertIn("twisted", _twisted_imported_by("twisted.python.compat"))
