"""Planning a study: its arms (``arms``), its members and their placement (``planning``) and the validation
search for each arm's learning rate (``lr_search``). Nothing here trains; the runs are ``lora_study.run``'s."""
