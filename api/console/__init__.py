"""The web console (`/console`): a page and its assets, served by the API process from this package."""
