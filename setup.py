"""The one thing pyproject.toml cannot say: ship the top-level `models/` recipes inside the package.

`models/` stays at the top of the repository (the agreed layout); in a wheel its YAML files land in
`fgcli/_recipes/`, where `fgcli.config.recipe_folders()` finds them with `importlib.resources`. An editable
install or a source checkout reads `models/` itself.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["fgcli", "fgcli.*"]), "fgcli._recipes"],
    package_dir={"fgcli._recipes": "models"},
    package_data={"fgcli": ["py.typed"], "fgcli._recipes": ["*.yaml"]},
)
