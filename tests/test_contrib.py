"""What contrib/ ships for running pgdoorman: the container image, the systemd unit, the
logrotate rules and the Kubernetes manifests, checked without Docker, systemd or a
cluster running."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.trial.unittest import SkipTest, TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def contrib(name: str) -> str:
    """The text of contrib/C{name}."""
    with open(os.path.join(ROOT, "contrib", name)) as f:
        return f.read()


class DockerfileTests(TestCase):
    """contrib/Dockerfile (docker build needs a registry this machine cannot reach)."""

    def instructions(self) -> dict:
        """Each instruction to its arguments (the last one of a kind)."""
        found = {}
        logical = contrib("Dockerfile").replace("\\\n", " ")
        for line in logical.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                word, _, rest = line.partition(" ")
                found[word.upper()] = rest.strip()
        return found

    def test_image(self):
        """A Debian-based Python image; pgdoorman installed from the source; a non-root
        user; the config as a volume; a healthcheck; twistd in the foreground."""
        found = self.instructions()
        self.assertEqual(found["FROM"], "python:3.11-slim-bookworm")
        self.assertIn("pip install --no-cache-dir /src", contrib("Dockerfile"))
        self.assertEqual(found["USER"], "pgdoorman")
        self.assertIn("/etc/pgdoorman", found["VOLUME"])
        self.assertEqual(found["EXPOSE"], "6432")
        self.assertIn("CMD", found["HEALTHCHECK"])
        self.assertEqual(found["ENTRYPOINT"], '["twistd", "-n", "--pidfile=", "pgdoorman"]')
        self.assertEqual(found["CMD"], '["--config", "/etc/pgdoorman/pg_doorman.toml"]')


class SystemdTests(TestCase):
    """contrib/pg_doorman.service, as systemd reads it."""

    def test_verify(self):
        """systemd-analyze verify accepts the unit (with the commands pointed at this
        environment's twistd and pgdoorman)."""
        analyze = shutil.which("systemd-analyze")
        bindir = os.path.dirname(sys.executable)
        commands = [os.path.join(bindir, name) for name in ("twistd", "pgdoorman")]
        if analyze is None or not all(os.path.exists(command) for command in commands):
            raise SkipTest("no systemd-analyze, or pgdoorman is not installed beside this interpreter")
        unit = contrib("pg_doorman.service")
        unit = unit.replace("/usr/bin/twistd", os.path.join(bindir, "twistd"))
        unit = unit.replace("/usr/bin/pgdoorman", os.path.join(bindir, "pgdoorman"))
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "pg_doorman.service")
        with open(path, "w") as f:
            f.write(unit)
        result = subprocess.run(
            [analyze, "verify", path], capture_output=True, text=True, timeout=60, check=False
        )
        problems = [
            line for line in (result.stdout + result.stderr).splitlines() if "pg_doorman.service" in line
        ]
        self.assertEqual(problems, [])


class LogrotateTests(TestCase):
    """contrib/pgdoorman.logrotate."""

    def test_rules(self):
        """Rotates the log directory and has twistd reopen its file (SIGUSR1), not SIGUSR2
        (a binary upgrade) or SIGHUP (a reload)."""
        text = contrib("pgdoorman.logrotate")
        self.assertIn("/var/log/pgdoorman/*.log {", text)
        self.assertIn("kill -USR1", text)
        self.assertNotIn("USR2", text.split("postrotate")[1])
        self.assertEqual(text.count("{"), text.count("}"))


class KubernetesTests(TestCase):
    """contrib/kubernetes: a Deployment, its Service and the ConfigMap with the config."""

    def load(self, name: str):
        import yaml

        return yaml.safe_load(contrib(os.path.join("kubernetes", name)))

    def test_manifests(self):
        """The Deployment runs the image as non-root with the config mounted and probes on
        the client port and /metrics; the Service exposes both; the ConfigMap's config
        passes the checks and listens where the probes look."""
        from pgdoorman.config import loads

        deployment = self.load("deployment.yaml")
        service = self.load("service.yaml")
        configmap = self.load("configmap.yaml")
        self.assertEqual(
            (deployment["kind"], service["kind"], configmap["kind"]), ("Deployment", "Service", "ConfigMap")
        )
        pod = deployment["spec"]["template"]["spec"]
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        [container] = pod["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        self.assertEqual(container["readinessProbe"]["tcpSocket"]["port"], "postgres")
        self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/metrics")
        self.assertEqual(container["volumeMounts"][0]["mountPath"], "/etc/pgdoorman")
        self.assertEqual(pod["volumes"][0]["configMap"]["name"], configmap["metadata"]["name"])
        self.assertEqual({p["targetPort"] for p in service["spec"]["ports"]}, set(ports))
        self.assertEqual(service["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"])
        config = loads(configmap["data"]["pg_doorman.toml"], "pg_doorman.toml")
        self.assertEqual((config.general.port, config.web.port), (ports["postgres"], ports["metrics"]))
