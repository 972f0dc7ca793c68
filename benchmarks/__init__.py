"""tokenrelay's benchmark suite: ``python -m benchmarks [--quick] [--only 1,3] [--out DIR]``.

Each scenario (``s1_*`` .. ``s7_*``) measures the pipeline (producer → Celery → worker →
Redis Stream → reader) next to an in-process reference measured in the same run, and returns
table rows; `common` holds the shared stack, statistics and report writers.
"""
