"""YAML configs (PgDoorman's recommended format): the same keys, checks and errors as
TOML, and the two mixed through C{include.files}."""

from __future__ import annotations

import os

import attrs
from twisted.trial.unittest import SynchronousTestCase

from pgdoorman.config import ConfigError, load

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def _plain(config) -> dict:
    """A config's values, without where it was read from."""
    values = attrs.asdict(config, recurse=False)
    for name in ("path", "warnings", "inactive"):
        values.pop(name, None)
    return values


class YamlTests(SynchronousTestCase):
    """tests/data/twin.yaml and its TOML twin."""

    def write(self, name: str, text: str) -> str:
        directory = self.mktemp()
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_twins(self):
        """A PgDoorman-style YAML file and its TOML twin load to identical configs (the
        empty C{include:} is no section, as PgDoorman reads it)."""
        yaml_config = load(os.path.join(DATA, "twin.yaml"))
        toml_config = load(os.path.join(DATA, "twin.toml"))
        self.assertEqual(_plain(yaml_config), _plain(toml_config))
        self.assertEqual(yaml_config.pools["other-db"].server_database, "other")
        self.assertEqual(
            [w.split(": ", 1)[1] for w in yaml_config.warnings],
            [w.split(": ", 1)[1] for w in toml_config.warnings],
        )

    def test_same_errors(self):
        """A bad value is the same C{file: key: problem} in YAML; a YAML syntax error and
        a key that is no string are one line each."""
        with open(os.path.join(DATA, "twin.yaml")) as f:
            text = f.read()
        path = self.write("bad.yaml", text.replace("pool_size: 40", 'pool_size: "forty"'))
        with self.assertRaises(ConfigError) as caught:
            load(path)
        self.assertEqual(
            str(caught.exception),
            f"{path}: pools.exampledb.users[0].pool_size: expected an integer, got 'forty'",
        )
        for broken, where in (
            ("general: [unclosed\n", "(syntax)"),
            ("general:\n  1: x\n", "general: key 1 is not a string"),
            ("- a list\n", "(syntax): the document is not a mapping"),
            (
                "general:\n  admin_password: 2026-12-03\n",
                "general.admin_password: date values are not understood",
            ),
        ):
            path = self.write("broken.yaml", broken)
            with self.assertRaises(ConfigError) as caught:
                load(path)
            message = str(caught.exception)
            self.assertEqual(len(message.splitlines()), 1, message)
            self.assertIn(where, message)

    def test_mixed_includes(self):
        """A TOML file includes a YAML one and the other way round."""
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(DATA, "twin.toml")) as f:
            # Its last pool section goes to the included YAML file.
            main = f.read().split('[pools."other-db"]')[0] + '[include]\nfiles = ["pools.yaml"]\n'
        with open(os.path.join(directory, "main.toml"), "w") as f:
            f.write(main)
        with open(os.path.join(directory, "pools.yaml"), "w") as f:
            f.write(
                'pools:\n  "other-db":\n    server_host: "/var/run/postgresql"\n    server_database: "other"\n'
                '    users:\n      - username: "app_user"\n'
                '        password: "md5dd9a0f26a4302744db881776a09bbfad"\n        pool_size: 5\n'
            )
        mixed = load(os.path.join(directory, "main.toml"))
        self.assertEqual(_plain(mixed), _plain(load(os.path.join(DATA, "twin.toml"))))
