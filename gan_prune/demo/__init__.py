"""The demo pipeline: the whole method on the bundled teacher (`gan-prune demo`). Nothing else imports this package."""
