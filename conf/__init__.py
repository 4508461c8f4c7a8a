"""The Hydra config groups. The repository keeps them here, at its top level; pyproject.toml installs this folder as
the package ``lora_study.conf``, so an installed wheel and an editable install compose the same YAML, found through
``lora_study.config.conf_dir`` from any working directory."""
