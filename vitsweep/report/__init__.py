"""``vitsweep report``: ``page`` (the command: sections, the HTML page, logging it to MLflow),
``figures`` (the plots), ``compute`` (compute spent against an unpruned sweep)."""
