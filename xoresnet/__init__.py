"""XOResNet: deep spiking ResNets with OR-ADD shortcuts and XOR meta-residuals, built for Loihi 2.

``xoresnet`` holds the model (neurons, spike logic, blocks, networks), data and training; the
deployment pipeline lives in the sibling packages ``calibration``, ``deploy`` and ``hw_targets``.
"""

__version__ = "0.1.0"
