# Importing any utils module registers the ${asset:...} resolver the problem configs use
# (utils/paths.py), so every entry point that composes configs can resolve them.
from utils import paths as _paths  # noqa: F401
