"""``make bench``: clustr_aio against nginx, the machine's physical limit, on the same bytes.

Run with ``python -m bench.run``; see ``bench/run.py`` for what is measured and how.
"""
