class PipelineError(Exception):
    """A problem with the user's input (files, ids, options): reported as one line, no traceback."""
