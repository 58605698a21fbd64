"""Running notebooks: CLI, runner, notebook setup, HTML, index pages, provenance."""
