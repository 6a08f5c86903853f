"""The CPU demo: ``python -m gd2po_openrlhf.demo`` (``make demo``).

``task.py`` holds the task and its reward file; ``training.py`` trains a tiny policy with one estimator through
OpenRLHF's own classes and the plugin's experience maker; ``__main__.py`` runs every estimator and seed from the
command line; ``report.py`` writes the table and the figure; ``study.py`` (``make study``) runs the preregistered
study of docs/study-protocol.md on the same training loop and writes docs/study.md's tables.
"""
