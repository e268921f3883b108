"""The network as a NIR graph (``model.nir``): the export of an :class:`~xoresnet.network.XOResNet`
(:mod:`.export`), a float interpreter of NIR graphs with the graph helpers the later stages share
(:mod:`.interpreter`), and the neuron-by-neuron check of the interpreter against PyTorch (:mod:`.check`).

Kept beside the model, the way Norse keeps its NIR export: the first stage after training, read by
calibration.
"""
