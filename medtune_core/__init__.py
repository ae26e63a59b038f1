"""medtune core library: record formats, safe data I/O, models and the logic every flow calls.

This package is plain Python. It never imports Prefect, ``tasks`` or ``flows`` so that everything
here can be used and tested without an orchestration server.
"""

__version__ = "0.1.0"
