"""Data and checkpoint scripts (a regular package: devito installs a top-level ``scripts``
package that would otherwise shadow this folder)."""
