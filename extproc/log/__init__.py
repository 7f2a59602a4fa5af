"""The log's lifecycle: sequence + WAL (appender), publish (publisher)."""
