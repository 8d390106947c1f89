"""MLflow, and the only package that imports it: ``client`` (opening a store, :func:`quiet`),
``tags`` (every name vitsweep writes), ``runs`` (a sweep's parent and trial runs), ``registry``
(a promotion's runs and registered models), ``artifacts`` (checkpoints and the report page)."""
