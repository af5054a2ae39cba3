"""Package list: pyproject.toml cannot map a directory outside the packages into one.

`fathom grafana push` reads the provisioning files in dashboards/; an installed wheel carries
them as fathom/dashboards, so the command works without a source checkout.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["fathom*", "sidecar*", "probes*"]), "fathom.dashboards"],
    package_dir={"fathom.dashboards": "dashboards"},
)
