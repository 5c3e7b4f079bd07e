"""Running the specs: evaluation (:mod:`.evaluate`: ``run_test``), training (:mod:`.train`: ``fit``) and the
distributed plumbing they share (:mod:`.distributed`)."""
