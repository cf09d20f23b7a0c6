"""Conversion of models into runtime bundles. Needs the ``export`` extra; the runtime never imports it.

:mod:`metabgm_edge.export.cli` is the ``metabgm-edge export`` command group,
:func:`metabgm_edge.export.llm.export_llm` the library entry point, recipes are read by
:mod:`metabgm_edge.export.recipe`.
"""
