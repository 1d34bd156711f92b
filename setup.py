"""Packaging that setup.cfg cannot declare: the repository's top-level ``agents/`` folder installs
as ``matchenv.agents``, so that matchenv coexists with other distributions that install a
top-level ``agents`` package (e.g. the OpenAI Agents SDK). Everything else is in setup.cfg."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["matchenv", "matchenv.*"])
    + ["matchenv." + name for name in find_packages(include=["agents", "agents.*"])],
    package_dir={"matchenv.agents": "agents"},
)
