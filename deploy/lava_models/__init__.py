"""Our fixed-point Lava process models: the same integers as Intel's, computed fast.

Each module defines one ``PyLoihiProcessModel`` for a stock ``lava.proc`` process (the network
still uses only Intel's process classes) and is selected per process instance through the run
configuration's ``exception_proc_model_map`` (:func:`deploy.lava_graph.process_models`), never
by editing Lava. :mod:`deploy.lava_models.arith` holds the exact numpy kernels (no Lava import);
``tests/test_lava_models.py`` proves every model equal to Intel's, step by step.

No module here has side effects at import (Lava's model discovery may execute every ``.py`` file
of a model's folder); Lava must be importable first (:func:`deploy.lava_compat.lava_ready`).
"""
