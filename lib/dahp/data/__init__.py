"""Per-dataset modules: one module per dataset that a setting of :mod:`dahp.data.settings` reads.

Each module provides

- its loader(s), ``load_*(root: Path) -> SplitData``, which read the files the user supplies under
  the data directory, check their format before use and raise
  :class:`dahp.data.settings.MissingDataError` (naming the file, what is wrong and where the real data
  comes from) when they are malformed;
- its model factory (a freshly initialised model, as ``Setting.make_model`` expects);
- ``write_fixture(root: Path) -> None``, which writes tiny files in exactly the real format and
  layout under ``root``, so that ``DAHP_DATA_DIR=root`` makes the setting load (for tests and
  smoke runs without the real data).

The settings themselves are registered in :mod:`dahp.data.settings`, which imports these modules at
module level. A dataset module therefore imports ``SplitData`` and ``MissingDataError`` from
:mod:`dahp.data.settings` inside its functions (a module-level import would be circular).
"""
