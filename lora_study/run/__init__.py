"""One run: build, train and measure (``runner.execute``), the training loop (``train``), what is measured after
training (``post_training``: truncation, intruder scaling, latency), whether the run learned (``learning``) and
runs over several processes (``distributed``, ``worker``)."""
