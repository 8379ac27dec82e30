"""``python -m common segment-archive``: segment a whole archive with a bundle, resumably, on Ray or in process.

- :mod:`.cases`: the cases of an archive (a folder tree, or studies found on a PACS over DICOMweb) and shards;
- :mod:`.manifest`: the run's commit log (``manifest.jsonl``), its fingerprint (``run.json``) and lock;
- :mod:`.worker`: one worker, holding the bundle loaded once, segmenting one case at a time;
- :mod:`.local_engine` and :mod:`.ray_engine`: the same worker in this process, or as Ray actors;
- :mod:`.command`: the command line.
"""
