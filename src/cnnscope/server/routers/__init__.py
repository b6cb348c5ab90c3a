"""HTTP routes of the explorer: checks in :mod:`.deps`, answers from :mod:`cnnscope.server.services`."""
