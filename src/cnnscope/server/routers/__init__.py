"""HTTP routes of the explorer: thin wrappers around :mod:`cnnscope.server.service`."""
