"""The explorer's services: one per router, each given validated references
(:mod:`cnnscope.server.refs`) and the compute core (:mod:`cnnscope.server.compute`)."""
