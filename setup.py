"""Packaging for pgdoorman."""

import re

from setuptools import find_packages, setup

with open("pgdoorman/__init__.py") as f:
    version = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

with open("README.md") as f:
    long_description = f.read()

setup(
    name="pgdoorman",
    version=version,
    description="PostgreSQL connection pooler on Twisted, compatible with PgDoorman",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(exclude=["tests", "tests.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/pgdoorman_plugin.py"]},
    install_requires=[
        "twisted[tls,conch]>=23.10",
        "service-identity",
        "pyopenssl",
        "attrs>=23.1",
        "tomli",
        "prometheus_client",
    ],
    extras_require={"yaml": ["pyyaml"]},
    entry_points={"console_scripts": ["pgdoorman = pgdoorman.app.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Database",
    ],
)
