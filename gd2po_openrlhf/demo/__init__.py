"""The CPU demo: ``python -m gd2po_openrlhf.demo`` (``make demo``).

``task.py`` holds the task and its reward file; ``__main__.py`` trains a tiny policy with each estimator
through OpenRLHF's own classes and the plugin's experience maker; ``report.py`` writes the table and the
figure.
"""
